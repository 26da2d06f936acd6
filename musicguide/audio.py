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
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from musicguide.atomic import check_writable, write_atomically
from musicguide.errors import UserError
from musicguide.timespec import MAX_SECONDS

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


# A header that claims 1 Hz would make the resampler ask for 124 GB: refuse rates no music has.
MIN_INPUT_RATE, MAX_INPUT_RATE = 4000, 768_000
BLOCK_FRAMES = 1 << 16  # frames per block when audio is streamed
# Formats whose seek lands on the exact sample that sequential decoding gives; anything else
# (Ogg, MP3, ...) is decoded once, in order, into a scratch file before it is read by ranges.
EXACT_SEEK_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC", "CAF", "AU"}


def _open_sound(file: Path) -> sf.SoundFile:
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


def _info(file: Path, sound: sf.SoundFile) -> AudioInfo:
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
        notes.append(_to_channels(np.zeros((1, info.channels), np.float32), channels)[1])
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
            block = _to_channels(block, channels)[0]
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
    with _open_sound(file) as sound:
        info = _info(file, sound)
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
        sound = _open_sound(self.path)
        info = _info(self.path, sound)
        self.info = replace(info, conversions=_conversion_notes(info, sample_rate, channels))
        self.length = _converted_length(info, sample_rate)
        if info.format in EXACT_SEEK_FORMATS and not self.info.conversions:
            self._sound = sound
            return
        try:
            self._sound = self._convert(sound)
        finally:
            sound.close()

    def _convert(self, sound: sf.SoundFile) -> sf.SoundFile:
        import tempfile

        folder = Path(tempfile.gettempdir())
        needed = self.length * self.channels * 4
        if needed > shutil.disk_usage(folder).free:
            raise UserError(f"converting {self.path} to {self.sample_rate} Hz needs {needed / 1e9:.1f} GB of "
                            f"scratch space in {folder}, more than is free", hint="set TMPDIR to a larger disk")
        handle, name = tempfile.mkstemp(prefix="musicguide-", suffix=".wav", dir=folder)
        os.close(handle)
        self._scratch = Path(name)
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
    if len(channels) != 1 or sum(_piece_length(p) for p in pieces) == 0:
        raise ValueError("expected non-empty pieces with one channel count")
    peak, clipped = 0.0, 0
    with sf.SoundFile(path, "w", sample_rate, channels.pop(), subtype=subtype, format=container) as out:
        for block in _piece_blocks(pieces):
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            if subtype in PCM_BITS:
                block, count = _quantise(block, PCM_BITS[subtype])
                clipped += count
            out.write(block)
    return SavedAudio(path=str(named), sample_rate=sample_rate, subtype=subtype, peak=peak, clipped=clipped)


def _piece_length(piece: Piece) -> int:
    return piece.shape[-1] if isinstance(piece, Tensor) else piece[2] - piece[1]


def _piece_blocks(pieces: list[Piece]) -> Iterator[np.ndarray]:
    for piece in pieces:
        if isinstance(piece, Tensor):
            frames_first = piece.detach().cpu().float().numpy().T
            for at in range(0, len(frames_first), BLOCK_FRAMES):
                yield np.ascontiguousarray(frames_first[at : at + BLOCK_FRAMES])
        else:
            song, start, stop = piece
            yield from song.blocks(start, stop)


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
    subtype = subtype or DEFAULT_SUBTYPE
    check_output_format(file, subtype)
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected non-empty [channels, samples] audio, got shape {tuple(audio.shape)}")
    check_writable(file, overwrite=overwrite)
    saved: list[SavedAudio] = []
    try:
        write_atomically(file, lambda temporary: saved.append(write_song(temporary, [audio], sample_rate, subtype, named=file)))
    except (sf.SoundFileError, OSError) as error:
        raise UserError(f"cannot write {file}: {error}") from error
    return saved[0]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (through links, `..`, case-insensitive mounts, ...).

    The CLI uses it to refuse writing the output over its own input, which `overwrite` alone
    would allow.
    """
    first, second = Path(a), Path(b)
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()
