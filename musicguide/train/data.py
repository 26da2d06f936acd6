"""The training audio: which files, which are held out, their decoded samples, and crops of them.

A `Corpus` lists every file of a folder with its length (read from the file headers) and the
held-out split; its audio is decoded on demand, so that under torchrun each process decodes only
the files of its own shard (see shard.py). A `TrackBank` joins tracks end to end on the training
device, so that a batch of crops is one gather there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor

from musicguide.audio import load_audio
from musicguide.errors import UserError
from musicguide.models.presets import SAMPLE_RATE

AUDIO_SUFFIXES = (".ogg", ".opus", ".wav", ".flac")
MANIFEST_FILE = "manifest.json"
SMALL_CORPUS_SECONDS = 600.0  # decoded in this process: faster than starting a pool of spawned workers


def audio_files(data_dir: str | os.PathLike) -> list[Path]:
    """Every .ogg/.wav/.flac file under `data_dir` (recursively), in a stable order."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder {root} not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"no audio files under {root}", hint=f"training reads {', '.join(AUDIO_SUFFIXES)} files")
    return files


def holdout_names(names: Sequence[str], fraction: float) -> list[str]:
    """The files to hold out: the `fraction` whose names hash lowest. Depends on the names only, so
    the VAE and the DiT stage (and an evaluation) agree without sharing a list, and adding files to
    a folder moves few others across the split. At least one file when there are two or more."""
    if fraction <= 0 or len(names) < 2:
        return []
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    return sorted(sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:count])


def _match_holdout(names: Sequence[str], requested: Sequence[str]) -> list[str]:
    """Explicit held-out files, named by relative path, file name or stem."""
    chosen = []
    for item in requested:
        hits = [n for n in names if item in (n, Path(n).name, Path(n).stem)]
        if not hits:
            raise UserError(f"held-out file {item!r} is not in the data folder")
        chosen.extend(hits)
    if len(set(chosen)) == len(names):
        raise UserError("every file is held out: nothing is left to train on")
    return sorted(set(chosen))


@dataclass
class Corpus:
    """The files of a folder and, once decoded, their audio (float16, [2, samples] at 44.1 kHz)."""

    names: list[str]  # paths relative to the data folder
    tracks: list[Tensor | None]  # None: not decoded in this process
    holdout: list[str]
    # name -> (seconds into its original track, the original's length), for excerpts (manifest.json)
    placements: dict[str, tuple[float, float]] = field(default_factory=dict)
    durations: list[float] | None = None  # seconds of each file; by default those of the decoded tracks
    root: Path | None = None  # where the files are, for decoding later

    def __post_init__(self):
        if self.durations is None:
            self.durations = [t.shape[-1] / SAMPLE_RATE for t in self.tracks]

    def indices(self, held_out: bool) -> list[int]:
        return [i for i, n in enumerate(self.names) if (n in self.holdout) == held_out]

    def split(self, held_out: bool) -> tuple[list[str], list[Tensor | None]]:
        chosen = self.indices(held_out)
        return [self.names[i] for i in chosen], [self.tracks[i] for i in chosen]

    def track_timing(self, index: int) -> tuple[float, float]:
        """(offset, track length) in seconds of a file: a whole file sits at 0 of itself."""
        track = self.tracks[index]
        length = self.durations[index] if track is None else track.shape[-1] / SAMPLE_RATE
        return self.placements.get(self.names[index], (0.0, length))

    def timing(self, held_out: bool) -> list[tuple[float, float]]:
        return [self.track_timing(i) for i in self.indices(held_out)]

    @property
    def seconds(self) -> float:
        return sum(self.durations)

    def decode(self, indices: Iterable[int], workers: int | None = None) -> None:
        """Decode the files at `indices` that are not in memory yet."""
        missing = sorted({i for i in indices if self.tracks[i] is None})
        if not missing:
            return
        if self.root is None:
            raise ValueError("this corpus has no folder to decode its files from")
        files = [self.root / self.names[i] for i in missing]
        if workers is None:  # starting a process costs seconds: only worth it for a real corpus
            seconds = sum(self.durations[i] for i in missing)
            # torchrun's processes on this node (LOCAL_WORLD_SIZE) share its cores
            cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            workers = 1 if seconds < SMALL_CORPUS_SECONDS else max(1, cores)
        for i, audio in zip(missing, _decode_all(files, workers)):
            self.tracks[i] = torch.from_numpy(audio)


def _decode_half(path: str) -> np.ndarray:
    audio, _ = load_audio(path, sample_rate=SAMPLE_RATE, channels=2)
    return audio.numpy().astype(np.float16)


def _decode_all(files: Sequence[Path], workers: int) -> list[np.ndarray]:
    """Decode in a pool of processes (one file each) when given more than one worker."""
    workers = min(len(files), workers)
    if workers == 1:
        return [_decode_half(str(p)) for p in files]
    # spawn, not fork: the parent may already hold CUDA or OpenMP threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_decode_half, map(str, files)))


def _duration(path: Path) -> float:
    """Seconds of a file once decoded at 44.1 kHz, from its header."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as error:
        raise UserError(f"cannot read {path} as audio: {error}") from error
    frames = info.frames if info.samplerate == SAMPLE_RATE else math.ceil(info.frames * SAMPLE_RATE / info.samplerate)
    return frames / SAMPLE_RATE


def read_manifest(data_dir: str | os.PathLike) -> dict[str, dict]:
    """The entries of the folder's manifest.json by file (relative path), or none without one."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return {entry["file"]: entry for entry in json.loads(path.read_text())["tracks"]}
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a corpus manifest ({error})") from error


def load_corpus(data_dir: str | os.PathLike, *, holdout: Sequence[str] | None = None, val_fraction: float = 0.15,
                workers: int | None = None, decode: bool = True) -> Corpus:
    """Every audio file under `data_dir`, decoded unless `decode` is False (then `Corpus.decode`
    reads what is needed). Held out: `holdout` (names) if given, else the manifest's "holdout"
    files if the folder has a manifest.json, else the `holdout_names` rule."""
    root = Path(data_dir)
    files = audio_files(root)
    names = [p.relative_to(root).as_posix() for p in files]
    manifest = read_manifest(root)
    placements = {n: (float(manifest[n]["offset_s"]), float(manifest[n]["track_seconds"]))
                  for n in names if n in manifest}
    if holdout:
        held_out = _match_holdout(names, holdout)
    elif manifest:
        held_out = [n for n in names if manifest.get(n, {}).get("split") == "holdout"]
    else:
        held_out = holdout_names(names, val_fraction)
    corpus = Corpus(names, [None] * len(names), held_out, placements, [_duration(p) for p in files], root)
    if decode:
        corpus.decode(range(len(names)), workers)
    return corpus


@dataclass
class Crops:
    x: Tensor  # [B, channels, length]
    seconds_start: Tensor  # [B] where each crop starts in its track
    seconds_total: Tensor  # [B] its track's duration


class TrackBank:
    """Tracks ([channels, length] audio or latents) joined end to end on one device, so that a batch
    of crops is one gather. Tracks shorter than `min_length` are padded with silence."""

    def __init__(self, tracks: Sequence[Tensor], rate: float, min_length: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, timing: Sequence[tuple[float, float]] | None = None):
        """`timing`: each track's (offset, length) in seconds within the song it is an excerpt of;
        by default each track is a whole song."""
        if not tracks:
            raise ValueError("a TrackBank needs at least one track")
        padded = [F.pad(t, (0, max(0, min_length - t.shape[-1]))) for t in tracks]
        self.lengths = torch.tensor([p.shape[-1] for p in padded])
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        timing = timing or [(0.0, t.shape[-1] / rate) for t in tracks]
        self.song_offsets = torch.tensor([offset for offset, _ in timing], dtype=torch.float64)
        self.durations = torch.tensor([length for _, length in timing])
        self.rate = rate
        self.data = torch.cat(padded, dim=-1).to(device=device, dtype=dtype)

    def __len__(self) -> int:
        return len(self.lengths)

    def crops(self, track: Tensor, start: Tensor, length: int) -> Crops:
        device = self.data.device
        index = (self.offsets[track] + start).to(device)[:, None] + torch.arange(length, device=device)
        x = self.data[:, index].transpose(0, 1).float()
        seconds_start = self.song_offsets[track] + start / self.rate
        return Crops(x, seconds_start.float().to(device), self.durations[track].to(device))

    def crops_at(self, track: Tensor, fraction: Tensor, length: int) -> Crops:
        """Crops of `length` starting `fraction` (in [0, 1)) of the way through each track's crop positions."""
        positions = (self.lengths[track] - length + 1).clamp_min(1)
        start = (fraction * positions).long().clamp(max=positions - 1)
        return self.crops(track, start, length)

    def spread_crops(self, length: int, count: int) -> tuple[Tensor, Tensor]:
        """`count` fixed crop positions (track, start) spread evenly over the bank: the validation set."""
        positions = [(i, s) for i, n in enumerate(self.lengths.tolist()) for s in range(0, n - length + 1, length)]
        pick = np.linspace(0, len(positions) - 1, min(count, len(positions))).round().astype(int)
        track, start = zip(*(positions[i] for i in sorted(set(pick))))
        return torch.tensor(track), torch.tensor(start)
