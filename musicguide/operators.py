"""Measurement operators: which part of a latent window an edit must reproduce.

An operator is linear with `forward` (A) and `transpose` (Aᵀ). Masks act on the time axis of
a latent tensor [B, C, T]: A selects the known frames, so y = A(x) is [B, C, K] with K known
frames and Aᵀ puts them back in place with zeros elsewhere. A selection has AAᵀ = I, so the
data-consistency projection Aᵀ(AAᵀ)⁻¹(y − Ax) of the method note is "paste y into the known
frames", and I − AᵀA keeps only the free frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TimeMask:
    """A = keep the frames where `known` is True (a bool vector over the T latent frames)."""

    known: Tensor

    @classmethod
    def from_ranges(cls, frames: int, known: list[tuple[int, int]]) -> "TimeMask":
        """Known frames as half-open ranges [a, b), clipped to [0, frames); a range that clips to
        nothing (b <= 0, say, when a margin reaches past the song's start) marks nothing. Both ends
        are clipped before slicing: a negative end would count from the back in Python."""
        mask = torch.zeros(frames, dtype=torch.bool)
        for a, b in known:
            a, b = max(a, 0), min(b, frames)
            if a < b:
                mask[a:b] = True
        return cls(mask)

    @property
    def frames(self) -> int:
        return int(self.known.numel())

    @property
    def n_known(self) -> int:
        return int(self.known.sum())

    def _index(self, x: Tensor) -> Tensor:
        return self.known.to(x.device).nonzero().squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(-1, self._index(x))

    def transpose(self, y: Tensor) -> Tensor:
        out = y.new_zeros(*y.shape[:-1], self.frames)
        return out.index_copy(-1, self._index(y), y)

    def keep_free(self, x: Tensor) -> Tensor:
        """(I − AᵀA) x: x with the known frames zeroed."""
        return x * (~self.known).to(device=x.device, dtype=x.dtype)

    def paste(self, x: Tensor, y: Tensor) -> Tensor:
        """x + Aᵀ(y − A x): x with its known frames replaced by y (data consistency)."""
        return self.keep_free(x) + self.transpose(y)

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)


@dataclass(frozen=True)
class SampleMask:
    """The same selection on the sample axis of decoded audio [B, channels, N]: measures an edit
    in waveform space, after the VAE decoder (the `--loss-space audio` option)."""

    known: Tensor

    def forward(self, audio: Tensor) -> Tensor:
        return audio[..., self.known.to(audio.device)]

    def __call__(self, audio: Tensor) -> Tensor:
        return self.forward(audio)
