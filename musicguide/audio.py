"""Reading sound files (with `writing`, the only modules that touch audio on disk).

Everything inside musicguide works on float32 tensors shaped [channels, samples] at the model's
rate (44.1 kHz stereo). This module gets real files into that form: a 44.1 kHz stereo file is
returned exactly as stored (16- and 24-bit PCM are exact in float32), anything else is converted
and the conversion recorded; `SongFile` reads ranges of a song of any length.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from musicguide.errors import UserError
from musicguide.defaults import MAX_SECONDS

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


def to_channels(audio: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
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


# A header that claims 1 Hz would make the resampler ask for 124 GB: refuse rates no music has.
MIN_INPUT_RATE, MAX_INPUT_RATE = 4000, 768_000
BLOCK_FRAMES = 1 << 16  # frames per block when audio is streamed
# Formats whose seek lands on the exact sample that sequential decoding gives; anything else
# (Ogg, MP3, ...) is decoded once, in order, into a scratch file before it is read by ranges.
EXACT_SEEK_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC", "CAF", "AU"}


def open_sound(file: Path) -> sf.SoundFile:
    """Open an input for reading, every failure a UserError naming the file."""
    try:
        if not file.exists():
            raise UserError(f"no such file: {file}")
        if not file.is_file():
            raise UserError(f"not a file: {file}")
        return sf.SoundFile(file)
    except OSError as error:  # a symbolic link loop, a name too long, no permission, ...
        raise UserError(f"cannot read {file}: {error.strerror or error}") from error
    except sf.SoundFileError as error:
        raise UserError(f"cannot read {file} as audio: {_libsndfile_reason(error)}") from error


def sound_info(file: Path, sound: sf.SoundFile) -> AudioInfo:
    if sound.frames <= 0:
        raise UserError(f"{file} contains no audio (0 samples)")
    if not MIN_INPUT_RATE <= sound.samplerate <= MAX_INPUT_RATE:
        raise UserError(f"{file} claims a sample rate of {sound.samplerate} Hz, which is not audio "
                        f"(musicguide reads {MIN_INPUT_RATE} to {MAX_INPUT_RATE} Hz)")
    if sound.frames > MAX_SECONDS * sound.samplerate:
        raise UserError(f"{file} is {sound.frames / sound.samplerate / 3600:.0f} hours long; musicguide reads at most "
                        f"{MAX_SECONDS / 3600:.0f}")
    return AudioInfo(path=str(file), sample_rate=sound.samplerate, channels=sound.channels, frames=sound.frames,
                     format=sound.format, subtype=sound.subtype)


def _converted_length(info: AudioInfo, sample_rate: int) -> int:
    return info.frames if info.sample_rate == sample_rate else math.ceil(info.frames * sample_rate / info.sample_rate)


def _conversion_notes(info: AudioInfo, sample_rate: int, channels: int) -> tuple[str, ...]:
    notes = []
    if info.channels != channels:
        notes.append(to_channels(np.zeros((1, info.channels), np.float32), channels)[1])
    if info.sample_rate != sample_rate:
        notes.append(f"resampled {info.sample_rate} Hz -> {sample_rate} Hz (soxr VHQ)")
    return tuple(notes)


def _converted_blocks(file: Path, sound: sf.SoundFile, sample_rate: int, channels: int) -> Iterator[np.ndarray]:
    """The whole file as [frames, channels] float32 blocks at `sample_rate`, decoded in order.

    Streamed resampling gives the same samples as resampling the whole signal at once, so every
    reader (a whole-file load, a scratch copy, a streamed output) sees identical values."""
    resampler = None
    if sound.samplerate != sample_rate:
        resampler = soxr.ResampleStream(sound.samplerate, sample_rate, channels, dtype="float32", quality="VHQ")
    sound.seek(0)
    try:
        for block in sound.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise UserError(f"{file} contains NaN or infinite samples")
            block = to_channels(block, channels)[0]
            yield block if resampler is None else resampler.resample_chunk(block)
    except sf.SoundFileError as error:
        raise UserError(f"cannot read {file} as audio: {_libsndfile_reason(error)}") from error
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True)


def check_memory(needed: int, what: str) -> None:
    """Refuse up front what cannot fit in memory, rather than fail deep inside an allocator."""
    available = available_memory()
    if available is not None and needed > available:
        raise UserError(f"{what} needs about {needed / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB "
                        "are available")


def available_memory() -> int | None:
    """Bytes of memory this process can still use (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load_audio(path: str | os.PathLike, sample_rate: int = 44100, channels: int = 2) -> tuple[Tensor, AudioInfo]:
    """Read any file libsndfile can (WAV, FLAC, OGG, AIFF, MP3, ...) as float32 [channels, samples].

    Files already at `sample_rate` with `channels` channels come back sample-exact; anything else
    is converted (channel mapping, then soxr VHQ resampling) and the conversion is recorded in
    `AudioInfo.conversions` so the CLI can say what it did. For long songs, `SongFile` reads
    ranges without holding the whole song.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    file = Path(path)
    with open_sound(file) as sound:
        info = sound_info(file, sound)
        frames = _converted_length(info, sample_rate)
        check_memory(2 * frames * channels * 4, f"reading {file} ({frames / sample_rate / 60:.0f} min at {sample_rate} Hz)")
        data = np.concatenate(list(_converted_blocks(file, sound, sample_rate, channels)))
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    return audio, replace(info, conversions=_conversion_notes(info, sample_rate, channels))


class SongFile:
    """A song on disk at the model's rate, read by sample ranges.

    An edit needs the window around it in memory, not the song: a 1-hour input costs no more
    memory than a 1-minute one. Files that seek exactly at the model's rate and channel count are
    read in place; anything else is decoded and converted once, in order, into a float32 scratch
    file, so that ranges read later equal a whole-file `load_audio` sample for sample."""

    def __init__(self, path: str | os.PathLike, sample_rate: int = 44100, channels: int = 2):
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.channels = channels
        self._scratch: Path | None = None
        self.peak = 0.0  # the largest |sample| read so far (a float file may hold far more than 1)
        sound = open_sound(self.path)
        try:
            info = sound_info(self.path, sound)
            self.info = replace(info, conversions=_conversion_notes(info, sample_rate, channels))
            self.length = _converted_length(info, sample_rate)
            if info.format in EXACT_SEEK_FORMATS and not self.info.conversions:
                self._sound = sound
                return
            self._sound = self._convert(sound)
        except BaseException:  # a bad sample, a full disk, Ctrl-C: no `close()` will come, so clean up here
            if self._scratch is not None:
                self._scratch.unlink(missing_ok=True)
            sound.close()
            raise
        sound.close()

    def _convert(self, sound: sf.SoundFile) -> sf.SoundFile:
        import tempfile

        folder = Path(tempfile.gettempdir())
        needed = self.length * self.channels * 4
        if needed > shutil.disk_usage(folder).free:
            raise UserError(f"converting {self.path} to {self.sample_rate} Hz needs {needed / 1e9:.1f} GB of "
                            f"scratch space in {folder}, more than is free", hint="set TMPDIR to a larger disk")
        # named before it exists, so that a signal between its creation and the assignment cannot leak it
        self._scratch = folder / f"musicguide-{secrets.token_hex(8)}.wav"
        os.close(os.open(self._scratch, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        length = 0
        with sf.SoundFile(self._scratch, "w", self.sample_rate, self.channels, subtype="FLOAT", format="WAV") as scratch:
            for block in _converted_blocks(self.path, sound, self.sample_rate, self.channels):
                scratch.write(block)
                length += len(block)
        self.length = length
        return sf.SoundFile(self._scratch)

    def __enter__(self) -> "SongFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._sound.close()
        if self._scratch is not None:
            self._scratch.unlink(missing_ok=True)

    def blocks(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Samples [start, stop) as [frames, channels] float32 blocks."""
        if not 0 <= start <= stop <= self.length:
            raise ValueError(f"range [{start}, {stop}) outside the song's {self.length} samples")
        self._sound.seek(start)
        left = stop - start
        while left > 0:
            block = self._sound.read(min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)
            if len(block) == 0:
                raise UserError(f"{self.path} ended early, at sample {stop - left} of {self.length}")
            if not np.isfinite(block).all():
                raise UserError(f"{self.path} contains NaN or infinite samples")
            self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))
            left -= len(block)
            yield block

    def read(self, start: int, stop: int) -> Tensor:
        """Samples [start, stop) as float32 [channels, samples]."""
        data = np.concatenate(list(self.blocks(start, stop)) or [np.zeros((0, self.channels), np.float32)])
        return torch.from_numpy(np.ascontiguousarray(data.T))


def _libsndfile_reason(error: sf.SoundFileError) -> str:
    """libsndfile's own words ("Format not recognised.") without the repeated file name."""
    reason = getattr(error, "error_string", None) or str(error)
    return reason.rstrip(".")


class SongArray:
    """A song given as an array, with the interface of `SongFile` (`length`, `read`, `blocks`,
    `info`, `peak`), so that every edit runs on it as on a file.

    `audio` is [channels, samples] (or [samples] for mono), float, any rate from 4 to 768 kHz; it
    is mapped to `channels` and resampled to `sample_rate` once, as a file would be. `name` is how
    messages and the sidecar refer to it."""

    def __init__(self, audio, source_rate: int, sample_rate: int = 44100, channels: int = 2, name: str = "the audio"):
        data = np.asarray(audio.detach().cpu() if isinstance(audio, Tensor) else audio)
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2 or data.shape[-1] == 0 or not np.issubdtype(data.dtype, np.number):
            raise UserError(f"{name} must be a non-empty [channels, samples] array of numbers, got shape {data.shape}")
        if data.shape[0] > 8:
            raise UserError(f"{name} has {data.shape[0]} channels; give it as [channels, samples], not [samples, channels]")
        if isinstance(source_rate, bool) or not isinstance(source_rate, (int, np.integer)) or \
                not MIN_INPUT_RATE <= source_rate <= MAX_INPUT_RATE:
            raise UserError(f"the sample rate of {name} must be a whole number of Hz from {MIN_INPUT_RATE} to "
                            f"{MAX_INPUT_RATE}, got {source_rate!r}")
        frames_first = np.ascontiguousarray(data.T, dtype=np.float32)
        if not np.isfinite(frames_first).all():
            raise UserError(f"{name} contains NaN or infinite samples")
        self.path = Path(name)
        self.sample_rate, self.channels = sample_rate, channels
        self.digest = hashlib.sha256(frames_first.tobytes()).hexdigest()
        info = AudioInfo(path=name, sample_rate=int(source_rate), channels=data.shape[0], frames=data.shape[1],
                         format="array", subtype=str(data.dtype))
        self.info = replace(info, conversions=_conversion_notes(info, sample_rate, channels))
        frames_first, _ = to_channels(frames_first, channels)
        converted = torch.from_numpy(np.ascontiguousarray(frames_first.T))
        self.audio = resample(converted, int(source_rate), sample_rate)
        self.length = self.audio.shape[-1]
        self.peak = float(self.audio.abs().max())

    def __enter__(self) -> "SongArray":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self, start: int, stop: int) -> Tensor:
        if not 0 <= start <= stop <= self.length:
            raise ValueError(f"range [{start}, {stop}) outside the song's {self.length} samples")
        return self.audio[:, start:stop].clone()

    def blocks(self, start: int, stop: int) -> Iterator[np.ndarray]:
        frames_first = self.read(start, stop).numpy().T
        for at in range(0, len(frames_first), BLOCK_FRAMES):
            yield np.ascontiguousarray(frames_first[at : at + BLOCK_FRAMES])
