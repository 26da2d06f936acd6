"""The window's level: brought to the model's working level before encoding, and back after decoding.

A latent diffusion model has learnt music at the levels of its training set, and its VAE renders
them best there. A song far from them gets a result far from the song: at -60 dBFS an infill came
out 17.6 dB louder than its context, a +9 dBFS float file got a 10 dB hole, a DC offset vanished
inside the gap, and a gap in digital silence was filled with the decoder's -42 dBFS noise floor.
So the window's audio is shifted first (its DC offset removed, then one gain), sampled, and the
decoded window is shifted back. Only when the level is far from the working range: a normal song
is not touched at all, so its result stays bit-identical.

The level is measured on what the edit may look at: the known context for an infill (the gap is
hidden from the model), the whole window for the edits that start from the original (regenerate,
transition, restyle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Mixed music sits between about -30 and -8 dBFS RMS; the range is wider, so that only songs
# plainly outside it are shifted, and they go to its middle.
WORKING_RANGE_DB = (-45.0, -3.0)
WORKING_LEVEL_DB = -20.0
# A DC offset above -40 dBFS (1% of full scale) is audible as a step at the seams once it is lost.
MAX_DC = 0.01
# Below this RMS (after the DC is removed) the context is digital silence: 24-bit PCM cannot be
# quieter and still hold a sample, so only a float file (or exact zeros) gets here.
SILENCE_DB = -150.0


@dataclass(frozen=True)
class LevelShift:
    """audio → (audio − dc) · gain before encoding; decoded → decoded · undo_gain + dc after.
    `undo_gain` is 1/gain, or 0 when the context is digital silence: the answer is silence."""

    dc: Tensor  # [channels, 1]
    gain: float
    undo_gain: float

    def apply(self, audio: Tensor) -> Tensor:
        return (audio - self.dc.to(audio)) * self.gain

    def undo(self, audio: Tensor) -> Tensor:
        return audio * self.undo_gain + self.dc.to(audio)

    def to_dict(self) -> dict:
        return {"dc_removed": [round(float(v), 6) for v in self.dc.flatten()],
                "gain_db": None if self.undo_gain == 0 else round(20 * math.log10(self.gain), 2),
                "silent_context": self.undo_gain == 0}


def working_level(audio: Tensor, measured: Tensor) -> LevelShift | None:
    """The shift that brings `audio` [B, channels, N] to the working level, measured on the samples
    where `measured` [N] is True; None when it is there already (nothing is to change)."""
    if not bool(measured.any()):
        return None
    part = audio[..., measured].double()
    dc = part.mean(dim=(0, -1)).unsqueeze(-1)  # per channel
    if float(dc.abs().max()) <= MAX_DC:
        dc = torch.zeros_like(dc)
    rms = float((part - dc).pow(2).mean().sqrt())
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < SILENCE_DB:
        return LevelShift(dc.float(), 1.0, 0.0)
    if WORKING_RANGE_DB[0] <= level <= WORKING_RANGE_DB[1]:
        return None if not dc.any() else LevelShift(dc.float(), 1.0, 1.0)
    gain = 10 ** ((WORKING_LEVEL_DB - level) / 20)
    return LevelShift(dc.float(), gain, 1 / gain)
