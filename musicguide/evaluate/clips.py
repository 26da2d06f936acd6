"""The protocol's material: which tasks, which clips (cut deterministically from a folder of audio
files), and the cases built from them (one task on one clip or pair), with what a method makes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from torch import Tensor

from ..audio import load_audio, rms_db
from ..errors import UserError
from ..splice import SeamMetric
from ..defaults import DEFAULT_STRENGTH
from ..measurement import join_with_crossfade

TASKS = ("infill", "regeneration", "continuation", "transition")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus")


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """`tasks` in the protocol's order, or a UserError naming the first unknown one."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise UserError(f"unknown task {unknown[0]!r}" if unknown else "no task to run", hint=f"choose from: {', '.join(TASKS)}")
    return [t for t in TASKS if t in tasks]


@dataclass(frozen=True)
class Protocol:
    """The evaluation's lengths (the paper's by default) and how clips are cut."""

    clip_seconds: float = 6.0
    gap_seconds: float = 2.0  # infill and regeneration: the middle of the clip
    continuation_context_seconds: float = 2.4  # continuation: keep this much, generate to clip end
    transition_overlap_seconds: float = 2.5
    strength: float = DEFAULT_STRENGTH  # regeneration and transition
    clips_per_file: int = 4
    context_seconds: float | None = None  # context per side for the model; None: the whole clip
    # A clip any third of which is quieter than this is skipped: a silent gap makes silence win.
    silence_db: float = -50.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---- clips -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    file: str
    start: int  # sample in the file
    audio: Tensor = field(repr=False)

    def to_dict(self, sample_rate: int) -> dict:
        return {"file": self.file, "start_s": self.start / sample_rate, "seconds": self.audio.shape[-1] / sample_rate}


def audio_files(clips_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    """The folder's audio files, by name; with `only`, those whose stem is a listed track or starts
    with it and "_" (knolls matches knolls.ogg and knolls_100s.ogg, battle not battle-epic.ogg)."""
    if not clips_dir.is_dir():
        raise UserError(f"no such folder: {clips_dir}")
    files = sorted(p for p in clips_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if only is not None:
        files = [p for p in files if any(p.stem == name or p.stem.startswith(name + "_") for name in only)]
    if not files:
        which = "" if only is None else " of the listed tracks"
        raise UserError(f"{clips_dir} holds no audio files{which}", hint=f"looked for {', '.join(AUDIO_SUFFIXES)}")
    return files


def read_track_list(path: Path) -> list[str]:
    """Track names, one a line; blank lines and '#' comments ignored (eval/holdout.txt)."""
    if not path.is_file():
        raise UserError(f"no such track list: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def clip_starts(length: int, clip: int, count: int) -> list[int]:
    """Up to `count` non-overlapping clip starts, each centred in one of equal parts of the file."""
    count = min(count, length // clip)
    return [min(max(round((i + 0.5) * length / count - clip / 2), 0), length - clip) for i in range(count)]


def is_near_silent(audio: Tensor, threshold_db: float) -> bool:
    thirds = audio.chunk(3, dim=-1)
    return any(rms_db(part) < threshold_db for part in thirds)


def cut_clips(files: Sequence[Path], protocol: Protocol, sample_rate: int, channels: int,
              n_clips: int) -> tuple[list[Clip], list[dict]]:
    """The first `n_clips` usable clips taken in turn from each file (first clip of every file,
    then the second, ...), so a small n still spans many files; and the ones skipped, with why."""
    length = round(protocol.clip_seconds * sample_rate)
    per_file, skipped = [], []
    for path in files:
        song, _ = load_audio(path, sample_rate, channels)
        starts = clip_starts(song.shape[-1], length, protocol.clips_per_file)
        if not starts:
            skipped.append({"file": path.name, "reason": f"shorter than {protocol.clip_seconds:g} s"})
        usable = []
        for start in starts:
            audio = song[:, start : start + length].clone()
            if is_near_silent(audio, protocol.silence_db):
                skipped.append({"file": path.name, "start_s": start / sample_rate, "reason": "near-silent"})
            else:
                usable.append(Clip(path.name, start, audio))
        per_file.append(usable)
    in_turn = [clips[i] for i in range(max(map(len, per_file), default=0)) for clips in per_file if i < len(clips)]
    return in_turn[:n_clips], skipped


def transition_pairs(clips: Sequence[Clip]) -> list[tuple[int, int]]:
    """Each clip followed by the next clip (cyclically) that comes from another file."""
    pairs = []
    for i, clip in enumerate(clips):
        later = [(i + k) % len(clips) for k in range(1, len(clips))]
        other = next((j for j in later if clips[j].file != clip.file), None)
        if other is not None:
            pairs.append((i, other))
    return pairs


# ---- cases: one task on one clip, and what a method makes of it --------------------------------


@dataclass(frozen=True)
class Case:
    """One task on one clip (or pair): what the edit starts from and what it is judged against.

    `song` is what the edit gets (the clip, its opening alone, or the crossfaded pair); the output
    has `length` samples and [start, end) is generated. `original` is the ground truth over the
    output (None for transitions) and `excerpt` the clip-length stretch of the output that is
    embedded for FD. Seams are flagged against `song`'s own statistics, as the edit commands do:
    what the user gave is what "ordinary change" means."""

    task: str
    index: int
    label: str
    song: Tensor = field(repr=False)
    start: int
    end: int
    length: int
    original: Tensor | None = field(repr=False)
    excerpt: tuple[int, int]
    pair: tuple[Tensor, Tensor] | None = field(default=None, repr=False)


@dataclass
class Output:
    audio: Tensor  # the whole output, case.length samples
    seams: list[int] | None  # boundaries to measure; None where seams mean nothing (the VAE round trip)
    measured: list[SeamMetric] | None = None  # the seams already measured (the edit commands do it)


# How a row of the report produces its output for a case.
Method = Callable[[Case], Output]


def _clip_label(clip: Clip, sample_rate: int) -> str:
    return f"{clip.file}@{clip.start / sample_rate:.1f}s"


def build_cases(clips: Sequence[Clip], protocol: Protocol, sample_rate: int) -> dict[str, list[Case]]:
    seconds = lambda s: round(s * sample_rate)  # noqa: E731
    cases: dict[str, list[Case]] = {task: [] for task in TASKS}
    for i, clip in enumerate(clips):
        n, label = clip.audio.shape[-1], _clip_label(clip, sample_rate)
        start = (n - seconds(protocol.gap_seconds)) // 2
        end = start + seconds(protocol.gap_seconds)
        for task in ("infill", "regeneration"):
            cases[task].append(Case(task, i, label, clip.audio, start, end, n, clip.audio, (0, n)))
        keep = seconds(protocol.continuation_context_seconds)
        cases["continuation"].append(Case("continuation", i, label, clip.audio[:, :keep], keep, n, n, clip.audio, (0, n)))
    overlap = seconds(protocol.transition_overlap_seconds)
    for k, (i, j) in enumerate(transition_pairs(clips)):
        a, b = clips[i].audio, clips[j].audio
        joined = join_with_crossfade(a, b, overlap)
        start = a.shape[-1] - overlap
        centre, half = start + overlap // 2, a.shape[-1] // 2
        label = f"{_clip_label(clips[i], sample_rate)} -> {_clip_label(clips[j], sample_rate)}"
        cases["transition"].append(Case("transition", k, label, joined, start, start + overlap, joined.shape[-1], None,
                                        (centre - half, centre - half + a.shape[-1]), pair=(a, b)))
    return cases
