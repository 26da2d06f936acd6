"""Reading and writing sound files: the only module that touches audio on disk.

Everything inside musicguide works on float32 tensors shaped [channels, samples] at the model's
rate (44.1 kHz stereo). This module gets real files into that form and back out again, and it is
careful about two things a producer will notice:

* Sample exactness. A 44.1 kHz stereo file is returned exactly as stored (16- and 24-bit PCM are
  exact in float32), and writing it back with the input's PCM subtype reproduces the original
  integers, so the part of a song that an edit leaves alone is bit-identical in the output.
* Never losing work. Files are written to a temporary name in the target folder and moved into
  place with `os.replace`, existing files are only replaced when asked, and nothing partial is
  left behind when a write fails.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from musicguide.atomic import write_atomically
from musicguide.errors import UserError

# Extension -> libsndfile container. WAV and FLAC are lossless and universally read by DAWs.
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
OUTPUT_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
# Generated audio is float. 24-bit PCM keeps quantisation noise near -144 dBFS, far below anything
# audible or anything the model produces, at 3/4 the size of 32-bit float, and (unlike FLOAT) it is
# also what FLAC can store, so one default serves both containers. Callers that know the input's
# subtype pass it instead (see `output_subtype`) so untouched audio stays bit-identical.
DEFAULT_SUBTYPE = "PCM_24"
PCM_BITS = {"PCM_16": 16, "PCM_24": 24}
# Weights for an ITU-R BS.775 5.1 -> stereo downmix in the WAV/FLAC channel order
# L, R, C, LFE, Ls, Rs (the LFE channel is dropped, as BS.775 does).
ITU_CENTRE_GAIN = ITU_SURROUND_GAIN = 1 / math.sqrt(2)
ITU_NORMALISATION = 1 / (1 + ITU_CENTRE_GAIN + ITU_SURROUND_GAIN)
SILENCE_FLOOR_DB = -200.0


@dataclass(frozen=True)
class AudioInfo:
    """Where a loaded signal came from and what was done to it, for messages and the JSON sidecar."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    conversions: tuple[str, ...] = field(default=())

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def to_dict(self) -> dict:
        return {**asdict(self), "conversions": list(self.conversions), "duration": self.duration}


@dataclass(frozen=True)
class SavedAudio:
    """What `save_audio` wrote; `clipped` lets the caller warn instead of us normalising quietly."""

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


def amplitude_to_db(amplitude: float) -> float:
    """dBFS of a linear amplitude, with a finite floor so silence can go into JSON."""
    return max(20 * math.log10(amplitude), SILENCE_FLOOR_DB) if amplitude > 0 else SILENCE_FLOOR_DB


def rms_db(audio: Tensor) -> float:
    """Root-mean-square level over all channels and samples, in dBFS."""
    return amplitude_to_db(audio.double().pow(2).mean().sqrt().item())


def peak_db(audio: Tensor) -> float:
    """Largest absolute sample value, in dBFS."""
    return amplitude_to_db(audio.abs().max().item())


def check_not_silent(audio: Tensor, threshold_db: float = -80.0, what: str = "the input") -> None:
    """Refuse audio whose RMS is below `threshold_db`: editing silence is almost surely a mistake.

    RMS rather than peak, so that a lone click in a silent file still counts as silent. -80 dBFS
    is above the dither noise of a 16-bit file (about -101 dBFS) yet far below any quiet music.
    """
    level = rms_db(audio)
    if level < threshold_db:
        raise UserError(
            f"{what} is silent (RMS {level:.1f} dBFS, below {threshold_db:g} dBFS)",
            hint="check the file, or the start/end times you gave",
        )


def resample(audio: Tensor, from_rate: int, to_rate: int) -> Tensor:
    """Change the sample rate of [channels, samples] audio with soxr's very-high-quality filter."""
    if from_rate == to_rate:
        return audio
    frames_first = np.ascontiguousarray(audio.detach().cpu().numpy().T, dtype=np.float32)
    resampled = soxr.resample(frames_first, from_rate, to_rate, quality="VHQ")
    return torch.from_numpy(np.ascontiguousarray(resampled.T))


def _to_channels(audio: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
    """Map [frames, k] to [frames, channels]; returns the data and a note when anything changed."""
    have = audio.shape[1]
    if have == channels:
        return audio, None
    if have == 1:
        return np.repeat(audio, channels, axis=1), f"mono duplicated to {channels} channels"
    if have == 6 and channels == 2:
        left, right, centre, _lfe, left_surround, right_surround = audio.T
        shared = ITU_CENTRE_GAIN * centre
        stereo = np.stack(
            [
                left + shared + ITU_SURROUND_GAIN * left_surround,
                right + shared + ITU_SURROUND_GAIN * right_surround,
            ],
            axis=1,
        )
        note = "5.1 downmixed to stereo (ITU-R BS.775, LFE dropped, assuming L R C LFE Ls Rs order)"
        return (stereo * ITU_NORMALISATION).astype(np.float32), note
    # Without a known layout there is no left or right to keep: a plain average is the honest mix.
    mono = audio.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return np.repeat(mono, channels, axis=1), f"{have} channels averaged to {channels}"


def load_audio(path: str | os.PathLike, sample_rate: int = 44100, channels: int = 2) -> tuple[Tensor, AudioInfo]:
    """Read any file libsndfile can (WAV, FLAC, OGG, AIFF, MP3, ...) as float32 [channels, samples].

    Files already at `sample_rate` with `channels` channels come back sample-exact; anything else
    is converted (channel mapping, then soxr VHQ resampling) and the conversion is recorded in
    `AudioInfo.conversions` so the CLI can say what it did.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    file = Path(path)
    if not file.exists():
        raise UserError(f"no such file: {file}")
    if not file.is_file():
        raise UserError(f"not a file: {file}")
    try:
        with sf.SoundFile(file) as sound:
            data = sound.read(dtype="float32", always_2d=True)
            info = AudioInfo(
                path=str(file),
                sample_rate=sound.samplerate,
                channels=sound.channels,
                frames=len(data),
                format=sound.format,
                subtype=sound.subtype,
            )
    except sf.SoundFileError as error:
        raise UserError(f"cannot read {file} as audio: {_libsndfile_reason(error)}") from error
    if info.frames == 0:
        raise UserError(f"{file} contains no audio (0 samples)")
    if not np.isfinite(data).all():
        raise UserError(f"{file} contains NaN or infinite samples")

    data, channel_note = _to_channels(data, channels)
    notes = [channel_note] if channel_note else []
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    if info.sample_rate != sample_rate:
        audio = resample(audio, info.sample_rate, sample_rate)
        notes.append(f"resampled {info.sample_rate} Hz -> {sample_rate} Hz (soxr VHQ)")
    return audio, replace(info, conversions=tuple(notes))


def _libsndfile_reason(error: sf.SoundFileError) -> str:
    """libsndfile's own words ("Format not recognised.") without the repeated file name."""
    reason = getattr(error, "error_string", None) or str(error)
    return reason.rstrip(".")


def output_subtype(input_subtype: str | None, path: str | os.PathLike) -> str:
    """The subtype to write `path` with so that audio read from an `input_subtype` file survives.

    16- and 24-bit PCM inputs are written back at their own depth (bit-identical where unedited);
    float inputs stay float in WAV; everything else (lossy, 8/32-bit, unknown) gets the default.
    """
    container = _container_for(Path(path))
    if input_subtype in PCM_BITS:
        return input_subtype
    if input_subtype in ("FLOAT", "DOUBLE") and container == "WAV":
        return "FLOAT"
    return DEFAULT_SUBTYPE


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


def save_audio(
    path: str | os.PathLike,
    audio: Tensor,
    sample_rate: int,
    *,
    subtype: str | None = None,
    overwrite: bool = False,
) -> SavedAudio:
    """Write [channels, samples] audio to a .wav or .flac file, atomically.

    `subtype` is PCM_16, PCM_24 or FLOAT (default DEFAULT_SUBTYPE). Samples beyond ±1 are clipped
    when writing PCM and counted in the result so the caller can warn; nothing is normalised.
    """
    file = Path(path)
    container = _container_for(file)
    subtype = subtype or DEFAULT_SUBTYPE
    if subtype not in OUTPUT_SUBTYPES:
        raise UserError(f"unsupported sample format {subtype!r} (use one of {', '.join(OUTPUT_SUBTYPES)})")
    if container == "FLAC" and subtype == "FLOAT":
        raise UserError(f"FLAC cannot store 32-bit float samples: {file}", hint="use .wav, or PCM_24")
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected non-empty [channels, samples] audio, got shape {tuple(audio.shape)}")
    if file.exists() and not overwrite:
        raise UserError(f"{file} exists; pass --overwrite to replace it")
    if not file.parent.is_dir():
        raise UserError(f"cannot write {file}: folder {file.parent} does not exist")

    frames_first = np.ascontiguousarray(audio.detach().cpu().float().numpy().T)
    if not np.isfinite(frames_first).all():
        raise UserError(
            f"refusing to write NaN or infinite samples to {file}",
            hint="the sampler diverged; try a smaller guidance step",
        )
    peak = float(np.abs(frames_first).max())
    if subtype in PCM_BITS:
        data, clipped = _quantise(frames_first, PCM_BITS[subtype])
    else:
        data, clipped = frames_first, 0

    try:
        write_atomically(file, lambda path: sf.write(path, data, sample_rate, subtype=subtype, format=container))
    except (sf.SoundFileError, OSError) as error:
        raise UserError(f"cannot write {file}: {error}") from error
    return SavedAudio(path=str(file), sample_rate=sample_rate, subtype=subtype, peak=peak, clipped=clipped)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (through links, `..`, case-insensitive mounts, ...).

    The CLI uses it to refuse writing the output over its own input, which `overwrite` alone
    would allow.
    """
    first, second = Path(a), Path(b)
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()
