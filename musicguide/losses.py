"""Guidance losses d(y, A(x̂0)): plain functions of tensors.

Reconstruction losses are *summed* over the measured elements (and the batch, whose items are
independent so each gets its own gradient). With a sum, one latent element's gradient does not
shrink as the window grows, so the step size ξ means the same thing at every window length — the
paper's ξ = 3e-2 is stated per element in this sense, and its waveform ξ = 3e-3 per sample.
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


def audio_loss(decode: Callable[[Tensor], Tensor], operator, y_audio: Tensor,
               distance: str = "l1") -> Callable[[Tensor], Tensor]:
    """d(y, A(decode(x̂0))) measured on the waveform, summed over samples as the paper's waveform
    loss is (so its ξ = 3e-3 means the same here): exact at the sample level, costs a decoder
    forward and backward per step."""
    dist = DISTANCES[distance]
    return lambda x0: dist(y_audio, operator(decode(x0)))


def embedding_l2(target: Tensor, embedding: Tensor) -> Tensor:
    """Squared distance between embeddings (restyle toward a reference clip)."""
    return (embedding - target).square().sum()


def tag_bce(tagger, toward: list[int], away: list[int], sample_rate: int) -> Callable[[Tensor], Tensor]:
    """Classifier guidance: BCE on the tagger's logits pushing `toward` tags up and `away` tags down,
    summed over tags and 3 s patches (logits, not probabilities: a saturated sigmoid keeps a gradient)."""

    def loss(audio: Tensor) -> Tensor:
        logits = tagger.tag_logits(audio, sample_rate)
        total = logits.new_zeros(())
        if toward:
            total = total + torch.nn.functional.softplus(-logits[..., toward]).sum()
        if away:
            total = total + torch.nn.functional.softplus(logits[..., away]).sum()
        return total

    return loss


def embedding_distance(tagger, target: Tensor, sample_rate: int) -> Callable[[Tensor], Tensor]:
    """Embedding guidance: squared L2 between the tagger's time-averaged penultimate layer and
    `target` (the mean embedding of the reference clips)."""
    return lambda audio: embedding_l2(target, tagger.embedding(audio, sample_rate))


def log_mel_envelope(tagger, sample_rate: int, pool: int = 8) -> Callable[[Tensor], Tensor]:
    """The input's structure for `--keep`: its log-mel (the tagger's front end) averaged over `pool`
    frames (~128 ms), which keeps rhythm, dynamics and register but not timbre detail."""
    def structure(audio: Tensor) -> Tensor:
        mel = tagger.mono_log_mel(audio, sample_rate)
        return torch.nn.functional.avg_pool1d(mel.transpose(1, 2), pool, ceil_mode=True)

    return structure
