"""The edits of the paper's Table 2 as measurement problems on one latent window.

Each builder takes the window's latents x̄ (the VAE encoding of the original audio there) and
the free frames, and returns what the sampler needs: the operator A (a time mask), the target
y = A x̄ and the start sample x_T. Pure tensor code: windows, files and models live in `edit.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .operators import TimeMask
from .splice import crossfade

from .defaults import DEFAULT_STRENGTH


@dataclass(frozen=True)
class EditProblem:
    """A (mask), y and x_T for one window."""

    mask: TimeMask
    y: Tensor
    x_start: Tensor


def free_range_mask(frames: int, free: tuple[int, int], margin: int = 0, known_until: int | None = None) -> TimeMask:
    """Known = every frame outside [free[0] − margin, free[1] + margin): A_L alone when the free
    range reaches the end (continuation), A_R alone when it starts at 0, [A_L; A_R] otherwise.

    The margin exists because the VAE encoder sees across a boundary: the last known frames before
    an edit partly encode the audio being replaced (or, in a continuation, the silence padded after
    the song, which would pin a fade-out). Those frames are sampled freely and not measured; the
    splice still keeps the original audio up to the edit's edges.

    `known_until`: frames from there on are free too (a variable-length model's headroom past the
    audio's end, which it generates and the splice drops)."""
    a, b = free
    if not 0 <= a < b <= frames:
        raise ValueError(f"free frames [{a}, {b}) must lie inside [0, {frames})")
    end = frames if known_until is None else min(known_until, frames)
    return TimeMask.from_ranges(frames, [(0, min(a - margin, end)), (b + margin, end)])


def _noised_known(mask: TimeMask, y: Tensor, noise: Tensor, schedule) -> Tensor:
    """The known frames of x_T: y noised to the start level t = 1, α_1 y + σ_1 A z (pure noise for
    both schedules). Starting from the clean y instead hands the model clean, rescaled context at
    the high-noise steps, where the structure of the result is decided."""
    t = torch.ones((), dtype=torch.float64)
    return schedule.alpha(t).to(y) * y + schedule.sigma(t).to(y) * mask(noise)


def from_noise(x_bar: Tensor, free: tuple[int, int], noise: Tensor, schedule, margin: int = 0,
               known_until: int | None = None) -> EditProblem:
    """Continuation and infill: the free frames start as noise z, the known ones as y noised to t = 1.
    `margin` frames next to each boundary are left out of y (see `free_range_mask`)."""
    mask = free_range_mask(x_bar.shape[-1], free, margin, known_until)
    y = mask(x_bar)
    return EditProblem(mask, y, mask.paste(noise, _noised_known(mask, y, noise, schedule)))


def from_mix(x_bar: Tensor, free: tuple[int, int], noise: Tensor, schedule, strength: float = DEFAULT_STRENGTH,
             margin: int = 0, known_until: int | None = None) -> EditProblem:
    """Regeneration (and transition, where x̄ is the crossfaded pair): the free region starts from
    k z + (1 − k) x̄, so the result varies the original instead of replacing it; the known frames
    start as y noised to t = 1."""
    mask = free_range_mask(x_bar.shape[-1], free, margin, known_until)
    y = mask(x_bar)
    start = strength * noise + (1 - strength) * x_bar
    return EditProblem(mask, y, mask.paste(start, _noised_known(mask, y, noise, schedule)))


def join_with_crossfade(a: Tensor, b: Tensor, overlap: int) -> Tensor:
    """Track a, then track b, overlapping by `overlap` samples through `splice.crossfade` (equal
    power for unrelated tracks): the transition's target and the plain-crossfade baseline.
    Length len(a) + len(b) − overlap."""
    if not 0 < overlap <= min(a.shape[-1], b.shape[-1]):
        raise ValueError(f"overlap {overlap} must be positive and no longer than either track")
    mixed = crossfade(a[..., -overlap:], b[..., :overlap])
    return torch.cat([a[..., :-overlap], mixed, b[..., overlap:]], dim=-1)
