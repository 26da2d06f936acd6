"""`musicguide evaluate`: the paper's evaluation protocol (docs/method.md) on held-out clips.

Deterministic clips are cut from every audio file in a folder. Each clip goes through four tasks —
infill, regeneration, continuation and transition (pairs of clips from different files) — done by
every *method*: plain baselines that need no model, the model sampled under a few settings (the
`MODEL_VARIANTS` table), the VAE round trip alone, and the untouched original. Each result is
judged three ways:

* MR: the multi-resolution log-mel L1 distance to the original over the generated region
  (VampNet/DAC style; none for transitions, which have no original);
* seams: `splice.seam_report`'s level jump and spectral distance at each boundary of the region,
  and the fraction of boundaries that change more than the original music does almost anywhere;
* FD: the Fréchet distance between musicnn (MSD) embeddings of the results and of the original
  clips, an FAD-like measure on musicnn rather than VGGish embeddings.

`evaluate` returns an `EvalReport`; `write_report` writes it as Markdown and JSON; `run_evaluate`
and `register` are the command line's way in. Docs: docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import __version__, edit
from .atomic import write_text_atomically
from .audio import load_audio, rms_db
from .edit import SamplerSettings
from .errors import UserError
from .splice import SeamMetric, fade_samples, seam_report, splice
from .tasks import DEFAULT_STRENGTH, join_with_crossfade

TASKS = ("infill", "regeneration", "continuation", "transition")
MAX_CLIPS = 10_000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus")

# Sampling variants: name -> overrides of SamplerSettings. All share the step count and, per clip,
# the seed (seed + clip index), so their differences come from the settings and not from the noise.
MODEL_VARIANTS: dict[str, dict] = {
    "replacement only": {"sampler": "ddim", "loss_space": "latent", "guidance": 0.0, "consistency": True},
    "guided DDIM, latent loss": {"sampler": "ddim", "loss_space": "latent", "consistency": True},
    "guided DDIM, waveform loss": {"sampler": "ddim", "loss_space": "audio", "consistency": True},
    "guided DDPM, latent loss": {"sampler": "ddpm", "loss_space": "latent", "consistency": True},
}
# The paper's Table 1 configuration: the variant the verdicts compare with the baselines.
PRIMARY_VARIANT = "guided DDIM, latent loss"
ORIGINAL = "original (no edit)"
ROUND_TRIP = "VAE round trip"

# ---- MR: multi-resolution mel distance ---------------------------------------------------------

# DAC's MelSpectrogramLoss, which VampNet reports as its mel distance: seven STFTs with Hann windows
# of 32 ... 2048 samples (hop a quarter of the window), 5 ... 320 slaney mel bands over 0 Hz to
# Nyquist on the magnitude, log10 after clamping at 1e-5, L1 over bins, frames and channels, and
# the seven distances *summed*, so values are on the scale VampNet and the paper print.
MR_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MR_MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
MR_CLAMP = 1e-5


# The slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per
# factor 6.4). Built here with numpy, as librosa.filters.mel(norm="slaney") builds it, because
# importing librosa.filters pulls in scipy.signal and costs seconds.
_SLANEY_HZ_PER_MEL = 200 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27


def _hz_to_slaney(hz: np.ndarray) -> np.ndarray:
    linear = hz / _SLANEY_HZ_PER_MEL
    above = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL + np.log(np.maximum(hz, 1e-10) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, above, linear)


def _slaney_to_hz(mel: np.ndarray) -> np.ndarray:
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    return np.where(mel >= break_mel, _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - break_mel)), mel * _SLANEY_HZ_PER_MEL)


@lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, bands: int) -> Tensor:
    """[bands, n_fft // 2 + 1] triangles evenly spaced on the slaney mel scale from 0 Hz to Nyquist,
    each scaled to 2 / (its width in Hz) so all have the same area: librosa.filters.mel's defaults. At 2048/320
    (and 32/5) some bands fall between FFT bins and stay empty; they are 0 for both signals, clamp to
    the same floor and add nothing to the distance."""
    edges = _slaney_to_hz(np.linspace(0, _hz_to_slaney(np.array(sample_rate / 2)), bands + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    rising = (bins - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights).float()


def _log_mel(audio: Tensor, sample_rate: int, n_fft: int, bands: int) -> Tensor:
    """[channels, N] -> [channels, bands, frames] log10 mel magnitudes."""
    spectrum = torch.stft(audio.float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                          center=True, pad_mode="reflect", return_complex=True).abs()
    return (mel_filterbank(sample_rate, n_fft, bands) @ spectrum).clamp(min=MR_CLAMP).log10()


def mel_distance(a: Tensor, b: Tensor, sample_rate: int) -> float:
    """MR between two [channels, N] signals of the same shape (0 for identical, symmetric)."""
    if a.shape != b.shape:
        raise ValueError(f"mel distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] <= max(MR_WINDOWS) // 2:
        raise ValueError(f"mel distance needs more than {max(MR_WINDOWS) // 2} samples, got {a.shape[-1]}")
    a, b = a.detach().cpu(), b.detach().cpu()
    return float(sum((_log_mel(a, sample_rate, w, m) - _log_mel(b, sample_rate, w, m)).abs().mean()
                     for w, m in zip(MR_WINDOWS, MR_MEL_BANDS)))


# ---- FD: Fréchet distance between embedding sets -----------------------------------------------


def _psd_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix with rounding noise removed: eigenvalues below
    numpy's matrix_rank tolerance are zero. Without this, a rank-deficient covariance's ~1e-13
    "eigenvalues" become ~3e-7 square roots, and hundreds of them bias FD visibly."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    tolerance = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(values.dtype).eps
    return np.where(values > tolerance, values, 0.0), vectors


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = _psd_eigh(matrix)
    return (vectors * np.sqrt(values)) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 − mu2|² + tr(S1 + S2 − 2 (S1 S2)^½) between two Gaussians given by their parameters
    (sets of embeddings go through `embedding_fd`, which never forms the covariances).

    tr (S1 S2)^½ is taken as tr (S1^½ S2 S1^½)^½: the two matrices have the same eigenvalues, and the
    second is symmetric positive semi-definite, so `eigh` gets it right even when both covariances
    are singular, where scipy's sqrtm of the non-symmetric S1 S2 can go complex."""
    root = _psd_sqrt(cov1)
    middle = root @ cov2 @ root
    trace_root = np.sqrt(_psd_eigh(middle)[0]).sum()
    distance = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)
    return max(distance, 0.0)  # below 0 only by rounding


def embedding_fd(x: np.ndarray, y: np.ndarray) -> float:
    """FD between two sets of embeddings, [n, dim] each (n >= 2), with sample means and covariances.

    With A, B the centred sets divided by √(n − 1), S1 = AᵀA and S2 = BᵀB, and the eigenvalues of
    S1 S2 are the squared singular values of A Bᵀ: tr (S1 S2)^½ is the sum of those singular values.
    No matrix square root at all, so a rank-deficient covariance (fewer clips than the 200
    dimensions, the usual case here) is handled exactly, and A Bᵀ is only as big as the sets. QR
    first (A = Q R) keeps it small for large sets too."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FD needs at least 2 embeddings per set, got {len(x)} and {len(y)}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    cross = np.linalg.qr(a, mode="r") @ np.linalg.qr(b, mode="r").T
    trace_root = np.linalg.svd(cross, compute_uv=False).sum()
    distance = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(a**2) + np.sum(b**2) - 2 * trace_root
    return max(float(distance), 0.0)  # below 0 only by rounding


# ---- clips -------------------------------------------------------------------------------------


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


# ---- cases: one task on one clip ---------------------------------------------------------------


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


# ---- methods: how each row produces its output for a case --------------------------------------


@dataclass
class Output:
    audio: Tensor  # the whole output, case.length samples
    seams: list[int] | None  # boundaries to measure; None where seams mean nothing (the VAE round trip)
    measured: list[SeamMetric] | None = None  # the seams already measured (the edit commands do it)


Method = Callable[[Case], Output]


def nominal_seams(case: Case, fade: int) -> list[int]:
    """Where a splice with full fades reports its seams: the middle of each fade."""
    seams = [case.start - fade // 2] if case.start > 0 else []
    return seams + ([case.end + fade // 2] if case.end < case.length else [])


def _spliced(case: Case, window: Tensor, at: int, fade: int) -> Output:
    done = splice(case.song, window, at, case.start, case.end, fade)
    return Output(done.audio, done.seams)


# Baselines use only audio the clip has. Where their source would need audio from before the clip
# starts (or after it ends), the window starts (ends) at the region and splice's fade shrinks to a
# hard cut: that is what the baseline can do with this clip, and the seam metrics show it.


def silence_fill(case: Case, fade: int) -> Output:
    at = max(case.start - fade, 0)
    stop = min(case.end + fade, case.length)
    return _spliced(case, case.song.new_zeros(case.song.shape[0], stop - at), at, fade)


def copy_fill(case: Case, fade: int) -> Output:
    """The stretch of the same length just before the region, played again in it."""
    shift = case.end - case.start
    if case.start < shift:
        raise ValueError("copying needs as much audio before the region as the region is long")
    at, stop = max(case.start - fade, shift), min(case.end + fade, case.song.shape[-1])
    return _spliced(case, case.song[:, at - shift : stop - shift], at, fade)


def linear_crossfade_fill(case: Case, fade: int) -> Output:
    """Across the region, a linear crossfade from the audio before it (shifted forward by the region's
    length) to the audio after it (shifted back)."""
    shift, n = case.end - case.start, case.song.shape[-1]
    at, stop = max(case.start - fade, shift), min(case.end + fade, n - shift)
    if case.start < shift or stop < case.end:
        raise ValueError("a crossfade across the region needs a region's length of audio on both sides")
    t = torch.arange(at, stop)
    weight = ((t - case.start + 0.5) / shift).clamp(0, 1).to(case.song.dtype)
    window = (1 - weight) * case.song[:, t - shift] + weight * case.song[:, t + shift]
    return _spliced(case, window, at, fade)


def loop_fill(case: Case, fade: int) -> Output:
    """Continuation by repeating the whole context (the song so far) until the clip's end."""
    period = case.song.shape[-1]
    t = torch.arange(case.start, case.end)
    return _spliced(case, case.song[:, (t - case.start) % period], case.start, fade)


def plain_crossfade(case: Case, fade: int) -> Output:
    """The transition's target itself: the two clips' constant-power crossfade."""
    return Output(case.song, nominal_seams(case, fade))


def unedited(case: Case, fade: int) -> Output:
    """The original clip, measured at the same boundaries: what no discontinuity looks like."""
    return Output(case.original, nominal_seams(case, fade))


# name -> {task: fill}. The linear crossfade and the copy are the infill baselines of the issue; the
# loop is continuation's "copy", the plain crossfade the transition's.
BASELINES: dict[str, dict[str, Callable[[Case, int], Output]]] = {
    "silence": {task: silence_fill for task in TASKS},
    "linear crossfade": {"infill": linear_crossfade_fill, "regeneration": linear_crossfade_fill},
    "copy neighbour": {"infill": copy_fill, "regeneration": copy_fill},
    "loop context": {"continuation": loop_fill},
    "plain crossfade": {"transition": plain_crossfade},
}


def _context(model, protocol: Protocol) -> int | None:
    return None if protocol.context_seconds is None else round(protocol.context_seconds * model.sample_rate)


def _run_model(model, case: Case, settings: SamplerSettings, protocol: Protocol) -> edit.EditResult:
    context = _context(model, protocol)
    if case.task == "infill":
        return edit.infill(model, case.song, case.start, case.end, settings, context=context)
    if case.task == "regeneration":
        return edit.regenerate(model, case.song, case.start, case.end, settings, strength=protocol.strength, context=context)
    if case.task == "continuation":
        return edit.continue_song(model, case.song, (case.end - case.start) / model.sample_rate, settings, context=context)
    first, second = case.pair
    return edit.transition(model, first, second, case.end - case.start, settings, strength=protocol.strength, context=context)


def model_method(model, settings: SamplerSettings, protocol: Protocol) -> Method:
    def run(case: Case) -> Output:
        result = _run_model(model, case, replace(settings, seed=settings.seed + case.index), protocol)
        seams = result.seams[0]  # measured against case.song, as score_case would
        return Output(result.songs[0][:, : case.length], [s.position for s in seams], seams)

    return run


def round_trip(model, audio: Tensor) -> Tensor:
    """decode(encode(audio)), padded to whole latent frames and cut back."""
    hop, n = model.downsampling_ratio, audio.shape[-1]
    padded = torch.nn.functional.pad(audio, (0, -n % hop))[None].to(next(model.parameters()).device)
    with torch.no_grad():
        return model.decode(model.encode(padded))[0, :, :n].float().cpu()


def round_trip_method(model) -> Method:
    done: dict[int, Tensor] = {}  # per clip: infill, regeneration and continuation share it

    def run(case: Case) -> Output:
        if case.index not in done:
            done[case.index] = round_trip(model, case.original)
        return Output(done[case.index], None)

    return run


def method_table(model, variants: Mapping[str, SamplerSettings], protocol: Protocol, fade: int) -> dict[str, dict[str, Method]]:
    """Every row of the report: name -> {task: method}, in the table's order."""
    bind = lambda fill: lambda case: fill(case, fade)  # noqa: E731
    rows = {name: {task: bind(fill) for task, fill in fills.items()} for name, fills in BASELINES.items()}
    for name, settings in variants.items():
        method = model_method(model, settings, protocol)
        rows[name] = {task: method for task in TASKS}
    rows[ROUND_TRIP] = dict.fromkeys(TASKS[:3], round_trip_method(model))
    rows[ORIGINAL] = {task: bind(unedited) for task in TASKS[:3]}
    return rows


def model_variants(steps: int, seed: int, table: Mapping[str, dict] = MODEL_VARIANTS) -> dict[str, SamplerSettings]:
    return {name: SamplerSettings(**{"steps": steps, "seed": seed, **overrides}) for name, overrides in table.items()}


# ---- scores ------------------------------------------------------------------------------------


@dataclass
class CaseScore:
    mr: float | None
    level_error_db: float | None  # |RMS level of the generated region − the original's there|, dB
    level_jump_db: float | None  # mean over the case's seams
    spectral_distance_db: float | None
    flagged: float | None  # fraction of the case's seams flagged
    seams: int


@dataclass
class Scores:
    """One row on one task, over all its cases. Lower is better everywhere. Per-case values are
    kept (same case order in every row) so that rows can be compared pair by pair."""

    n: int
    mr: float | None
    level_jump_db: float | None
    spectral_distance_db: float | None
    flagged: float | None
    seams: int
    fd: float | None
    per_case: dict[str, list[float]]
    level_error_db: float | None = None  # last, with a default: older reports' JSON has none

    def to_dict(self) -> dict:
        return asdict(self)


METRICS = ("mr", "level_error_db", "level_jump_db", "spectral_distance_db", "flagged", "fd")
METRIC_NAMES = {"mr": "MR", "level_error_db": "level error dB", "level_jump_db": "level jump dB",
                "spectral_distance_db": "spectral dB", "flagged": "flagged", "fd": "FD"}
# metrics averaged over cases (FD is over the set, flagged over all seams)
CASE_METRICS = METRICS[:5]


def score_case(case: Case, output: Output, sample_rate: int) -> CaseScore:
    """MR and seam measures of one output (its embedding is taken in batches, see `Embedder`)."""
    if output.audio.shape[-1] != case.length:
        raise ValueError(f"{case.task} output has {output.audio.shape[-1]} samples, expected {case.length}")
    mr = level_error = None
    if case.original is not None:
        made, was = output.audio[:, case.start : case.end], case.original[:, case.start : case.end]
        mr = mel_distance(made, was, sample_rate)
        level_error = abs(rms_db(made) - rms_db(was))
    level = spectral = flagged = None
    seams = output.measured
    if seams is None:
        seams = seam_report(output.audio, sample_rate, output.seams, reference=case.song) if output.seams else []
    if seams:
        level = float(np.mean([s.level_jump_db.value for s in seams]))
        spectral = float(np.mean([s.spectral_distance_db.value for s in seams]))
        flagged = float(np.mean([s.flagged for s in seams]))
    return CaseScore(mr, level_error, level, spectral, flagged, len(seams))


class Embedder:
    """musicnn (MSD) embeddings, [n, 200], of equally long clips, a batch at a time (a batch of 8
    costs about a third as much per clip as one at a time on a CPU)."""

    BATCH = 8

    def __init__(self, device: torch.device, sample_rate: int):
        from .musicnn import load_musicnn

        self.net, self.device, self.sample_rate = load_musicnn("MSD_musicnn", device=device), device, sample_rate

    def __call__(self, clips: Sequence[Tensor]) -> np.ndarray:
        batches = [torch.stack(list(clips[i : i + self.BATCH])) for i in range(0, len(clips), self.BATCH)]
        with torch.no_grad():
            return np.concatenate([self.net.embedding(b.to(self.device), self.sample_rate).double().cpu().numpy()
                                   for b in batches])


def _mean(values: list[float | None]) -> float | None:
    return None if not values or values[0] is None else float(np.mean(values))


def aggregate(scores: list[CaseScore], embeddings: np.ndarray, reference_embeddings: np.ndarray) -> Scores:
    per_case = {m: [getattr(s, m) for s in scores] for m in CASE_METRICS}
    seams = sum(s.seams for s in scores)
    flagged = None if not seams else sum(s.flagged * s.seams for s in scores if s.seams) / seams
    fd = embedding_fd(embeddings, reference_embeddings) if len(scores) >= 2 else None
    return Scores(n=len(scores), mr=_mean(per_case["mr"]), level_error_db=_mean(per_case["level_error_db"]),
                  level_jump_db=_mean(per_case["level_jump_db"]),
                  spectral_distance_db=_mean(per_case["spectral_distance_db"]), flagged=flagged, seams=seams, fd=fd,
                  per_case={m: v for m, v in per_case.items() if v and v[0] is not None})


def score_method(method: Method, cases: Sequence[Case], sample_rate: int, embed: Embedder, originals: np.ndarray,
                 tick: Callable[[], None]) -> Scores:
    """Run one row's method on every case of a task and score the outputs."""
    scored, excerpts = [], []
    for case in cases:
        output = method(case)
        scored.append(score_case(case, output, sample_rate))
        excerpts.append(output.audio[:, case.excerpt[0] : case.excerpt[1]])
        tick()
    return aggregate(scored, embed(excerpts), originals)


# ---- the report --------------------------------------------------------------------------------


@dataclass
class EvalReport:
    rows: dict[str, dict[str, Scores]]  # row -> task -> scores; a task a row does not do is absent
    variants: dict[str, dict]  # sampling variant -> SamplerSettings as a dict
    primary: str | None
    protocol: dict
    model: dict
    seed: int
    steps: int
    clips: list[dict]
    skipped: list[dict]
    cases: dict[str, list[str]]  # task -> case labels, in per-case order
    fd_floor: float | None  # FD between two halves of the originals: FD's own noise at this n
    verdicts: dict[str, str]
    embedding_model: str = "musicnn MSD_musicnn, 200-d penultimate layer, mean over 3 s patches"
    elapsed_s: float = 0.0
    musicguide: str = __version__
    tasks: list[str] = field(default_factory=lambda: list(TASKS))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = {row: {task: s.to_dict() for task, s in tasks.items()} for row, tasks in self.rows.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        rows = {row: {task: Scores(**s) for task, s in tasks.items()} for row, tasks in data["rows"].items()}
        return cls(**{**data, "rows": rows})


Progress = Callable[[int, int, str], None]


def evaluate(model, clips_dir: Path, *, variants: Mapping[str, SamplerSettings] | None = None, steps: int = 50,
             n_clips: int = 24, seed: int = 0, protocol: Protocol = Protocol(), tracks: Sequence[str] | None = None,
             model_info: dict | None = None, progress: Progress | None = None,
             tasks: Sequence[str] = TASKS) -> EvalReport:
    """Run the protocol with `model` (on its own device) on clips cut from the files in `clips_dir`
    (only `tracks`, when given). `variants` defaults to MODEL_VARIANTS with `steps` and `seed`;
    clip k samples with seed + k. progress(done, total, what) is called after every output. `tasks`
    runs a subset of the protocol's tasks (a sweep of one setting needs only some)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise UserError(f"unknown task {unknown[0]!r}" if unknown else "no task to run", hint=f"choose from: {', '.join(TASKS)}")
    tasks = [t for t in TASKS if t in tasks]
    started = time.perf_counter()
    variants = dict(model_variants(steps, seed) if variants is None else variants)
    sr = model.sample_rate
    clips, skipped = cut_clips(audio_files(clips_dir, tracks), protocol, sr, model.audio_channels, n_clips)
    if len(clips) < 2 or len({c.file for c in clips}) < 2:
        raise UserError(f"need at least 2 usable {protocol.clip_seconds:g} s clips from 2 different files, found "
                        f"{len(clips)}", hint="add audio files, or allow more clips with --clips")
    cases = build_cases(clips, protocol, sr)
    embed = Embedder(next(model.parameters()).device, sr)
    originals = embed([c.audio for c in clips])
    table = {name: {t: m for t, m in methods.items() if t in tasks}
             for name, methods in method_table(model, variants, protocol, fade_samples(sr)).items()}
    table = {name: methods for name, methods in table.items() if methods}
    total = sum(len(cases[task]) for methods in table.values() for task in methods)
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total, what)

    rows = {name: {task: score_method(method, cases[task], sr, embed, originals, lambda: tick(f"{name}: {task}"))
                   for task, method in methods.items()}
            for name, methods in table.items()}
    primary = _primary(variants)
    return EvalReport(
        rows=rows, variants={n: s.to_dict() for n, s in variants.items()}, primary=primary,
        protocol=protocol.to_dict(), model=model_info or {}, seed=seed, steps=steps,
        clips=[c.to_dict(sr) for c in clips], skipped=skipped,
        cases={task: [c.label for c in task_cases] for task, task_cases in cases.items()},
        fd_floor=split_half_fd(originals), verdicts=verdicts(rows, primary, variants, tasks),
        elapsed_s=round(time.perf_counter() - started, 1), tasks=list(tasks),
    )


def split_half_fd(embeddings: np.ndarray) -> float | None:
    """FD between the even- and odd-numbered clips' embeddings: how far apart two sets of original
    music already are, a rough scale of FD's sampling noise (the halves are smaller than the sets
    the rows compare, so if anything it overstates the noise)."""
    halves = embeddings[0::2], embeddings[1::2]
    return embedding_fd(*halves) if min(map(len, halves)) >= 2 else None


def _primary(variants: Mapping[str, SamplerSettings]) -> str | None:
    if PRIMARY_VARIANT in variants:
        return PRIMARY_VARIANT
    return next((name for name, s in variants.items() if s.guidance > 0), None)


# ---- verdicts: where guided sampling does not beat a baseline ----------------------------------


def _paired_noise(a: list[float], b: list[float]) -> float:
    """Two standard errors of the mean per-case difference (0 with fewer than 2 cases)."""
    differences = np.asarray(a) - np.asarray(b)
    return 0.0 if len(differences) < 2 else float(2 * differences.std(ddof=1) / math.sqrt(len(differences)))


def _value(value: float, metric: str) -> str:
    return f"{100 * value:.0f}%" if metric == "flagged" else f"{value:.3g}"


def _comparisons(guided: Scores, baseline: Scores) -> tuple[list[str], list[str]]:
    """Metrics on which `guided` does not beat `baseline`, and those it beats only within noise."""
    losses, within_noise = [], []
    for metric in METRICS:
        g, b = getattr(guided, metric), getattr(baseline, metric)
        if g is None or b is None:
            continue
        text = f"{METRIC_NAMES[metric]} ({_value(g, metric)} vs {_value(b, metric)})"
        if g >= b:
            losses.append(text)
        elif metric in guided.per_case and b - g < _paired_noise(guided.per_case[metric], baseline.per_case[metric]):
            within_noise.append(text)
    return losses, within_noise


def verdict(task: str, rows: dict[str, dict[str, Scores]], primary: str, baselines: Sequence[str]) -> str:
    """One sentence: the baselines and metrics where `primary` is not better (ties count against it),
    then those where it is better by less than two standard errors of the paired difference."""
    guided = rows[primary][task]
    losses, noisy = [], []
    for name in baselines:
        if task in rows.get(name, {}):
            lost, close = _comparisons(guided, rows[name][task])
            losses += [f"{name} on {', '.join(lost)}"] if lost else []
            noisy += [f"{name} on {', '.join(close)}"] if close else []
    if losses:
        sentence = f"{task.capitalize()}: {primary} does not beat " + "; ".join(losses) + "."
    else:
        sentence = f"{task.capitalize()}: {primary} beats every baseline on every metric."
    if noisy:
        sentence += " It beats " + "; ".join(noisy) + " by less than two standard errors of the paired per-clip difference."
    return sentence + f" (n = {guided.n}, lower is better, ties count as not beating.)"


def verdicts(rows: dict[str, dict[str, Scores]], primary: str | None, variants: Mapping[str, SamplerSettings],
             tasks: Sequence[str] = TASKS) -> dict[str, str]:
    if primary is None:
        return {task: f"{task}: no guided variant was run." for task in tasks}
    baselines = list(BASELINES) + [name for name, s in variants.items() if s.guidance == 0]
    return {task: verdict(task, rows, primary, baselines) for task in tasks}


PAIRED_METRICS = ("mr", "level_error_db", "level_jump_db")


def paired_differences(report: EvalReport, task: str, row: str, baseline: str) -> str:
    """A Markdown table of `row` − `baseline` clip by clip (negative: `row` is better), with the
    mean, two standard errors of it, and how many clips `row` wins."""
    ours, theirs = report.rows[row][task], report.rows[baseline][task]
    metrics = [m for m in PAIRED_METRICS if m in ours.per_case and m in theirs.per_case]
    lines = [f"| {task} clip | " + " | ".join(f"Δ {METRIC_NAMES[m]}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    diffs = {m: np.asarray(ours.per_case[m]) - np.asarray(theirs.per_case[m]) for m in metrics}
    for i, label in enumerate(report.cases[task]):
        lines.append(f"| {label} | " + " | ".join(f"{diffs[m][i]:+.2f}" for m in metrics) + " |")
    lines.append("| **mean ± 2 SE** | " + " | ".join(
        f"**{diffs[m].mean():+.2f} ± {_paired_noise(ours.per_case[m], theirs.per_case[m]):.2f}**" for m in metrics) + " |")
    lines.append(f"| {row} better on | " + " | ".join(f"{int((diffs[m] < 0).sum())} of {len(diffs[m])}" for m in metrics) + " |")
    return "\n".join(lines)


# ---- writing -----------------------------------------------------------------------------------

# a transition has no original to compare with: no MR, no level error
TABLE_METRICS = {task: METRICS if task != "transition" else METRICS[2:] for task in TASKS}


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if metric == "flagged" else f"{value:.3g}" if metric == "fd" else f"{value:.2f}"


def markdown_table(report: EvalReport) -> str:
    """Rows = methods, columns = task × metric (lower is better in every column)."""
    columns = [(task, metric) for task in report.tasks for metric in TABLE_METRICS[task]]
    header = "| method | " + " | ".join(f"{task} {METRIC_NAMES[m]}" for task, m in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, tasks in report.rows.items():
        cells = [_cell(getattr(tasks[t], m), m) if t in tasks else "–" for t, m in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _variant_line(name: str, settings: dict) -> str:
    loss = "waveform" if settings["loss_space"] == "audio" else settings["loss_space"]
    guidance = "no gradient" if not settings["guidance"] else f"ξ = {settings['guidance']:g}, {loss}-space loss"
    consistency = "replacement on" if settings["consistency"] else "replacement off"
    return f"- {name}: {settings['sampler'].upper()}, {guidance}, {consistency}"


def render_markdown(report: EvalReport) -> str:
    model = report.model.get("name", "?")
    revision = report.model.get("revision")
    files = sorted({c["file"] for c in report.clips})
    protocol = report.protocol
    floor = "–" if report.fd_floor is None else f"{report.fd_floor:.3g}"
    parts = [
        f"# Evaluation: {model}" + (f" @ {revision}" if revision else ""),
        "",
        f"{len(report.clips)} clips of {protocol['clip_seconds']:g} s from {len(files)} files ({', '.join(files)}); "
        f"{len(report.cases['transition'])} transition pairs (tasks run: {', '.join(report.tasks)}). Infill and regeneration (strength {protocol['strength']:g}) "
        f"redo the middle {protocol['gap_seconds']:g} s; continuation keeps {protocol['continuation_context_seconds']:g} s; "
        f"transitions regenerate a {protocol['transition_overlap_seconds']:g} s constant-power crossfade. "
        f"{report.steps} sampling steps; clip k samples with seed {report.seed} + k.",
        "",
        *[_variant_line(name, settings) for name, settings in report.variants.items()],
        "",
        markdown_table(report),
        "",
        "Lower is better in every column.",
        "",
        "- Level error: |RMS level of the generated region − the original's there| in dB, per clip (a hole or a "
        "blow-up shows here).",
        "- MR: multi-resolution log-mel L1 distance to the original over the generated region (7 STFTs of 32 to "
        "2048 samples, 5 to 320 mel bands, summed). Regeneration starts from 15 % of the original, so its MR is "
        "not comparable with infill's.",
        "- Level jump, spectral: mean over seams of `seam_report`'s measures (46 ms either side); flagged: the "
        "share of seams above the 95th percentile of the same measure all over the edit's input. Baselines whose "
        "source would lie outside the clip meet the original with a hard cut instead of a 30 ms fade.",
        "- FD: Fréchet distance between musicnn (MSD, 200-d penultimate layer) embeddings of the results and of "
        "the original clips: an FAD-like measure, not VGGish FAD. Transitions are embedded over a clip-length "
        f"stretch centred on the overlap. With {len(report.clips)} clips in 200 dimensions the covariances are "
        "rank-deficient and FD is biased upward; two halves of the originals are already FD "
        f"{floor} apart, a rough scale of its sampling noise.",
        "",
        "## Where guided sampling does not beat a baseline",
        "",
        *[f"- {report.verdicts[task]}" for task in report.tasks],
        "",
    ]
    references = [n for n, v in report.variants.items() if not v["guidance"] and n != report.primary]
    for task in [t for t in report.tasks if t != "transition"]:
        for baseline in references:
            if report.primary and task in report.rows.get(baseline, {}):
                parts += [f"### Paired per-clip differences, {task}: {report.primary} − {baseline}", "",
                          paired_differences(report, task, report.primary, baseline), ""]
    return "\n".join(parts)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_report(report: EvalReport, out_md: Path, out_json: Path, *, overwrite: bool = True) -> None:
    """The JSON first (it holds every number), then the Markdown, published together. If the JSON
    cannot be written (a full disk), the numbers go to a file in the temporary folder, or else to
    stdout, and the error says where: hours of evaluation are never lost to a write."""
    from .atomic import Outputs

    text = json.dumps(_finite_or_none(report.to_dict()), indent=2, allow_nan=False) + "\n"
    with Outputs([out_json, out_md], overwrite=overwrite) as outputs:
        outputs.reserve()
        try:
            outputs.write(out_json, lambda path: path.write_text(text))
            outputs.write(out_md, lambda path: path.write_text(render_markdown(report)))
            outputs.publish()
        except UserError as error:
            raise UserError(f"{error}; the evaluation's numbers are in {_rescue(text)}") from error


def _rescue(text: str) -> str:
    import tempfile

    try:
        handle, name = tempfile.mkstemp(prefix="musicguide-evaluate-", suffix=".json")
        with os.fdopen(handle, "w") as f:
            f.write(text)
        return name
    except OSError:
        print(text)
        return "the JSON printed on stdout"


# ---- command line ------------------------------------------------------------------------------


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise UserError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    if not available[name]:
        raise UserError(f"--device {name} is not available here", hint="use --device cpu")
    return torch.device(name)


def report_paths(out: Path) -> tuple[Path, Path]:
    if out.suffix.lower() != ".md":
        raise UserError(f"--out must be a Markdown file (.md), got {out}")
    return out, out.with_suffix(".json")


def run_evaluate(clips_dir: Path, model: str, out: Path, steps: int = 50, n_clips: int = 24, seed: int = 0,
                 device: str = "auto", quiet: bool = False, *, tracks: Path | None = None, overwrite: bool = False,
                 protocol: Protocol = Protocol(), progress: Progress | None = None,
                 variant_names: Sequence[str] | None = None, tasks: Sequence[str] = TASKS) -> EvalReport:
    """Load the model, evaluate, write OUT (Markdown) and OUT with .json; returns the report.
    `variant_names` picks some of MODEL_VARIANTS (the primary one is always run: the verdicts use it)."""
    from .registry import load_model

    from .atomic import check_writable
    from .runner import MAX_SEED, MAX_STEPS

    out_md, out_json = report_paths(out)
    for path in (out_md, out_json):
        check_writable(path, overwrite=overwrite)
    if not clips_dir.is_dir():
        raise UserError(f"no such folder: {clips_dir}")
    if not (1 <= steps <= MAX_STEPS and 2 <= n_clips <= MAX_CLIPS and 0 <= seed <= MAX_SEED):
        raise UserError(f"need --steps from 1 to {MAX_STEPS}, --clips from 2 to {MAX_CLIPS} and --seed from 0 to "
                        f"{MAX_SEED}, got {steps}, {n_clips} and {seed}")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise UserError(f"unknown task {unknown[0]!r}" if unknown else "no task to run", hint=f"choose from: {', '.join(TASKS)}")
    names = None if tracks is None else read_track_list(tracks)
    variants = None
    if variant_names:
        unknown = sorted(set(variant_names) - set(MODEL_VARIANTS))
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r}", hint=f"choose from: {', '.join(MODEL_VARIANTS)}")
        keep = {PRIMARY_VARIANT, *variant_names}
        variants = {name: v for name, v in model_variants(steps, seed).items() if name in keep}
    net, resolved = load_model(model, device=_pick_device(device), dtype=torch.float32)
    net.eval().requires_grad_(False)
    info = {"name": resolved.name, "kind": resolved.kind, "repo": resolved.repo, "revision": resolved.revision,
            "folder": None if resolved.folder is None else str(resolved.folder), "objective": net.objective,
            "device": str(next(net.parameters()).device), "tracks": names}
    report = evaluate(net, clips_dir, variants=variants, steps=steps, n_clips=n_clips, seed=seed, protocol=protocol,
                      tracks=names, model_info=info, progress=None if quiet else progress, tasks=tasks)
    write_report(report, out_md, out_json, overwrite=overwrite)
    return report
