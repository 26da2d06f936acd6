"""Writing sound files: WAV/FLAC at the input's PCM depth, streamed from pieces, exact where untouched.

An output is a list of pieces, generated tensors and ranges of input songs (`audio.SongFile`),
written block by block, so a 1-hour output never sits in memory. Float audio that came from a PCM
file of the same depth goes back to the same integers: the part of a song an edit leaves alone is
bit-identical. Samples beyond ±1 are clipped when writing PCM and counted, never normalised.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from musicguide.audio import BLOCK_FRAMES, AudioInfo, amplitude_to_db
from musicguide.errors import UserError

if TYPE_CHECKING:
    from musicguide.audio import SongFile

# Extension -> libsndfile container. WAV and FLAC are lossless and universally read by DAWs.
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
OUTPUT_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
# Generated audio is float. 24-bit PCM keeps quantisation noise near -144 dBFS, far below anything
# audible or anything the model produces, at 3/4 the size of 32-bit float, and (unlike FLOAT) it is
# also what FLAC can store, so one default serves both containers. Callers that know the input's
# inputs pass them instead (see `output_subtype`) so untouched audio stays bit-identical.
DEFAULT_SUBTYPE = "PCM_24"
PCM_BITS = {"PCM_16": 16, "PCM_24": 24}


@dataclass(frozen=True)
class SavedAudio:
    """What `write_song` wrote; `clipped` lets the caller warn instead of us normalising quietly."""

    path: str
    sample_rate: int
    subtype: str
    peak: float
    clipped: int

    @property
    def peak_db(self) -> float:
        return amplitude_to_db(self.peak)

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_db": self.peak_db}



def output_subtype(inputs: Sequence[AudioInfo], path: str | os.PathLike) -> str:
    """The subtype to write `path` with so that audio read from the `inputs` survives.

    Unconverted 16- and 24-bit PCM inputs are written back at their depth (the deeper one of a
    transition's two; bit-identical where unedited). A converted input (resampled, or remixed to
    stereo) holds values between its PCM steps, so it gets at least 24 bits: the untouched audio
    then stays within half a 24-bit step of the converted input. Float inputs stay float in WAV;
    everything else (lossy, 8/32-bit PCM, no input at all) gets the default.
    """
    container = _container_for(Path(path))
    if container == "WAV" and any(info.subtype in ("FLOAT", "DOUBLE") for info in inputs):
        return "FLOAT"
    if not inputs or any(info.subtype not in PCM_BITS for info in inputs):
        return DEFAULT_SUBTYPE
    if any(info.conversions for info in inputs):
        return DEFAULT_SUBTYPE
    return max((info.subtype for info in inputs), key=PCM_BITS.get)


def _container_for(path: Path) -> str:
    container = OUTPUT_FORMATS.get(path.suffix.lower())
    if container is None:
        supported = ", ".join(OUTPUT_FORMATS)
        raise UserError(f"cannot write {path}: unsupported extension '{path.suffix}' (use one of {supported})")
    return container


def _quantise(frames_first: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Float in [-1, 1) -> integers for PCM of `bits` bits, clipping; returns (ints, clipped count).

    The scale 2**(bits-1) is the one libsndfile reads PCM with, so float32 that came from a PCM
    file of the same depth maps back to exactly the same integers. Doing the conversion here
    (instead of inside libsndfile) makes that exactness, and the clip count, independent of the
    libsndfile version. No dither: it would alter the untouched samples too.
    """
    full_scale = 2 ** (bits - 1)
    scaled = np.rint(frames_first.astype(np.float64) * full_scale)
    clipped = int(np.count_nonzero((scaled < -full_scale) | (scaled > full_scale - 1)))
    ints = np.clip(scaled, -full_scale, full_scale - 1)
    if bits == 16:
        return ints.astype(np.int16), clipped
    # libsndfile stores the top 24 bits of each int32 in a PCM_24 file.
    return ints.astype(np.int32) << (32 - bits), clipped


# One piece of an output song: generated audio [channels, samples], or a range of an input song.
Piece = Union[Tensor, tuple["SongFile", int, int]]


def check_output_format(path: Path, subtype: str) -> str:
    """The container for `path`, after refusing a subtype it cannot hold."""
    container = _container_for(path)
    if subtype not in OUTPUT_SUBTYPES:
        raise UserError(f"unsupported sample format {subtype!r} (use one of {', '.join(OUTPUT_SUBTYPES)})")
    if container == "FLAC" and subtype == "FLOAT":
        raise UserError(f"FLAC cannot store 32-bit float samples: {path}", hint="use .wav, or PCM_24")
    return container


def write_song(path: Path, pieces: list[Piece], sample_rate: int, subtype: str, *, named: Path | None = None) -> SavedAudio:
    """Write the pieces, in order, as one file at `path`, streaming the input ranges block by block.

    `named` is the file this becomes (its extension picks the container; `path` may be a
    temporary name). Generated pieces must be finite; samples beyond ±1 are clipped when writing
    PCM and counted in the result so the caller can warn; nothing is normalised."""
    named = named or path
    container = check_output_format(named, subtype)
    for piece in pieces:
        if isinstance(piece, Tensor) and not torch.isfinite(piece).all():
            raise UserError(f"refusing to write NaN or infinite samples to {named}",
                            hint="the sampler diverged; try a smaller guidance step")
    channels = {piece.shape[0] if isinstance(piece, Tensor) else piece[0].channels for piece in pieces}
    if len(channels) != 1 or sum(piece_length(p) for p in pieces) == 0:
        raise ValueError("expected non-empty pieces with one channel count")
    peak, clipped = 0.0, 0
    with sf.SoundFile(path, "w", sample_rate, channels.pop(), subtype=subtype, format=container) as out:
        for block in piece_blocks(pieces):
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            if subtype in PCM_BITS:
                block, count = _quantise(block, PCM_BITS[subtype])
                clipped += count
            out.write(block)
    return SavedAudio(path=str(named), sample_rate=sample_rate, subtype=subtype, peak=peak, clipped=clipped)


def piece_length(piece: Piece) -> int:
    return piece.shape[-1] if isinstance(piece, Tensor) else piece[2] - piece[1]


def piece_blocks(pieces: list[Piece]) -> Iterator[np.ndarray]:
    for piece in pieces:
        if isinstance(piece, Tensor):
            frames_first = piece.detach().cpu().float().numpy().T
            for at in range(0, len(frames_first), BLOCK_FRAMES):
                yield np.ascontiguousarray(frames_first[at : at + BLOCK_FRAMES])
        else:
            song, start, stop = piece
            yield from song.blocks(start, stop)
