"""Guidance losses d(y, A(x̂0)): plain functions of tensors.

Reconstruction losses are *summed* over the measured elements (and the batch, whose items are
independent so each gets its own gradient). With a sum, one latent element's gradient does not
shrink as the window grows, so the step size ξ means the same thing at every window length — the
paper's ξ = 3e-2 is stated per element in this sense. The waveform-space loss divides by the
number of samples per latent frame so that one frame's worth of audio weighs like one frame.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def l1(y: Tensor, y_hat: Tensor) -> Tensor:
    return (y - y_hat).abs().sum()


def l2(y: Tensor, y_hat: Tensor) -> Tensor:
    return (y - y_hat).square().sum()


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"l1": l1, "l2": l2}


def latent_loss(operator, y: Tensor, distance: str = "l1") -> Callable[[Tensor], Tensor]:
    """d(y, A(x̂0)) measured on latents."""
    dist = DISTANCES[distance]
    return lambda x0: dist(y, operator(x0))


def audio_loss(decode: Callable[[Tensor], Tensor], operator, y_audio: Tensor, samples_per_frame: int,
               distance: str = "l1") -> Callable[[Tensor], Tensor]:
    """d(y, A(decode(x̂0))) measured on the waveform: exact at the sample level, costs a decoder
    forward and backward per step."""
    dist = DISTANCES[distance]
    return lambda x0: dist(y_audio, operator(decode(x0))) / samples_per_frame


def embedding_l2(target: Tensor, embedding: Tensor) -> Tensor:
    """Squared distance between embeddings (restyle toward a reference clip)."""
    return (embedding - target).square().sum()


def class_bce(probs: Tensor, toward: Tensor, away: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Binary cross-entropy pushing the named classes' probabilities toward 1 (`toward`, a bool or
    weight vector over classes) and optionally others toward 0 (`away`). Summed over classes and
    time patches."""
    probs = probs.clamp(eps, 1 - eps)
    loss = -(toward * probs.log()).sum()
    if away is not None:
        loss = loss - (away * (1 - probs).log()).sum()
    return loss


def combine(*terms: tuple[float, Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    """Weighted sum of losses of the same x̂0; terms with weight 0 are skipped."""
    live = [(w, f) for w, f in terms if w]
    return lambda x0: sum(w * f(x0) for w, f in live)
