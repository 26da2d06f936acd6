"""Improve the demo model in one GPU call of about ten minutes; keep the result only if it is better.

    PYTHONUNBUFFERED=1 python3 bench/train_demo.py --data .data/corpus --out "$OUT"        # on the GPU
    python bench/train_demo.py --smoke --data .data/corpus --out /tmp/demo-smoke           # CPU, ~2 minutes
    python bench/train_demo.py --evaluate-only --data .data/corpus --out /tmp/demo-eval     # what ships, no training
    PYTHONUNBUFFERED=1 python3 bench/train_demo.py --measure-vae 1024:32:32 512:32:32 256:32:32 \\
        --data .data/corpus --out "$OUT"                                                    # choosing the VAE

A run decodes the corpus (scripts/build_corpus.py's folder; its manifest gives the held-out
split) in a pool of processes, evaluates the model it starts from (--init, by default the
committed musicguide/weights/demo) on clips of the held-out tracks, fine-tunes that model's VAE
for --vae-minutes and then its DiT on the new VAE's latents until --deadline-minutes leaves just
enough time to evaluate the result the same way, and writes to --out at most 5 files, each at
most 16 MiB (the GPU machine returns 8; its own logs take the rest):

    summary.txt                     every target before and after, the verdict, throughput and the
                                    time split of a training step, and every other file with its
                                    size and sha256
    train_log.json                  both stages' logs, the runs the weights have had so far, and the
                                    evaluation (before, after, verdict); paths relative to the run
    model_config.json, model-1-of-2.safetensors, model-2-of-2.safetensors
                                    the new fp16 weights in as few parts as 16 MiB allows: only if
                                    the evaluation improved (or with --write always)

    python bench/train_demo.py --merge FILES_AT --out musicguide/weights/demo

checks every file against the sums in its summary.txt and merges the parts into a model folder.

The evaluation (the targets of issue 11, on the held-out clips, with the commands' own code):
VAE round-trip MR over each clip's 2 s gap against the linear crossfade's MR there (target: at
most half); `generate` of 10 s (the CLI's settings, 8 seeds): median RMS within 4 dB of the
held-out clips' median and spectral centroid within a factor of 1.5 of theirs; infill of the 2 s
gap (the CLI's default settings): RMS within 3 dB of the original's, every 0.5 s stretch within
6 dB. A result is "better" if its summed shortfall from the targets (each in units of its target)
falls by at least --min-gain of the starting model's, and no target moves away by more than
--tolerance of its own size.

--measure-vae trains each VAE variant (ratio:latent channels:width) from scratch for the same
minutes and reports its round-trip MR ratio and the DiT tokens per window it would cost; it
writes no weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicguide import edit  # noqa: E402
from musicguide.api import Editor  # noqa: E402
from musicguide.audio import load_audio, rms_db  # noqa: E402
from musicguide.edit import SamplerSettings  # noqa: E402
from musicguide.evaluate import (  # noqa: E402
    Clip,
    Protocol,
    build_cases,
    cut_clips,
    linear_crossfade_fill,
    mel_distance,
    model_method,
    round_trip,
)
from musicguide.evaluate.baselines import copy_fill, silence_fill  # noqa: E402
from musicguide.evaluate.metrics import frame_rate_comb_db, onset_strength  # noqa: E402
from musicguide.models import ModelConfig, build_model, load_model_folder  # noqa: E402
from musicguide.errors import UserError  # noqa: E402
from musicguide.models.folder import VAE_PREFIXES, WEIGHTS_FILE, merge_parts, save_model_folder, save_weights, split_weights  # noqa: E402
from musicguide.models.presets import SAMPLE_RATE, vae_variant  # noqa: E402
from musicguide.cache import file_sha256 as sha256  # noqa: E402
from musicguide.splice import fade_samples  # noqa: E402
from musicguide.train import (  # noqa: E402
    CONFIG_FILE,
    LOG_FILE,
    LONG_STFT_SIZES,
    VAE_WEIGHTS_FILE,
    Corpus,
    DiTTrainConfig,
    TrainProgress,
    TrainResult,
    VAETrainConfig,
    calibrate_output_gain,
    load_corpus,
    load_vae,
    nearest_upsample_decoder,
    read_manifest,
    train_dit,
    train_vae,
)

MAX_FILE_BYTES = 16 << 20  # what the GPU machine returns per file
# It returns 8 files; the run's own stdout/stderr logs and a margin take the other 3.
MAX_FILES = 5
SUMMARY_FILE = "summary.txt"
STORED_EVALUATION = "evaluation.json"  # beside a model folder's weights: their evaluation, to reuse
DEFAULT_INIT = REPO / "musicguide" / "weights" / "demo"
STAGE_OVERHEAD_MIN = 0.5  # per stage, outside its training budget: encoding, final validation, export
SMOKE_OVERHEAD_MIN = 0.15  # the same for the smoke run's seconds of audio
UNBOUNDED_STEPS = 10**9  # the time budget ends each stage, and the learning rate's cosine follows it
GENERATE_SECONDS = 10.0
STRETCH_SECONDS = 0.5


@dataclass(frozen=True)
class Target:
    """The values that meet a target: at least `low`, at most `high` (either may be open)."""

    low: float | None = None
    high: float | None = None

    def shortfall(self, value: float) -> float:
        """How far `value` is from the target, in units of the bound it misses (0 when met)."""
        if self.low is not None and value < self.low:
            return (self.low - value) / abs(self.low)
        if self.high is not None and value > self.high:
            return (value - self.high) / abs(self.high)
        return 0.0

    def __str__(self) -> str:
        if self.low is None:
            return f"<= {self.high:g}"
        if self.high is None:
            return f">= {self.low:g}"
        return f"+-{self.high:g}" if self.low == -self.high else f"{self.low:g}..{self.high:g}"


# Issue 11's targets, then issue 29's (what the VAE does to the sound; the infill against the plain
# baselines). Medians over the held-out clips, except where a mean says so.
TARGETS = {
    "vae_mr_ratio": Target(high=0.5),  # round-trip MR over the gap / the linear crossfade's (means)
    "generate_level_gap_db": Target(high=4.0),
    "generate_centroid_factor": Target(high=1.5),
    "infill_level_error_db": Target(high=3.0),  # mean
    "infill_worst_stretch_db": Target(high=6.0),  # mean
    "vae_comb_db": Target(high=6.0),  # round trip: the frame-rate comb (music itself: about 1 dB)
    "vae_onsets_kept": Target(low=0.8),  # round trip's onset strength / the original's
    "vae_level_change_db": Target(-1.0, 1.0),
    "zeros_comb_db": Target(high=10.0),  # decoding all-zero latents: the decoder's own pattern
    "infill_mr_ratio": Target(high=0.8),  # infill MR over the gap / the best plain baseline's (means)
    "infill_onset_ratio": Target(0.5, 2.0),  # the gap's onset strength / the original gap's
    # The README's edit (battle 0:08-0:11), where ../shared/audio is beside the repository.
    "readme_gap_onset_ratio": Target(0.5, 2.0),
    "readme_gap_comb_db": Target(high=6.0),
}
README_EDIT = (REPO.parent / "shared" / "audio" / "battle_60s.ogg", 8.0, 11.0)
PLAIN_BASELINES = {"silence": silence_fill, "linear crossfade": linear_crossfade_fill, "copy neighbour": copy_fill}
ZEROS_SECONDS = 12.0
CALIBRATION_EXCERPTS = 24
# Clips for the tiny preset (the smoke run's): its window is 1.5 s, too short for the 6 s / 2 s protocol.
TINY_PROTOCOL = Protocol(clip_seconds=3.0, gap_seconds=0.5, clips_per_file=1)
SMOKE_TRAIN = (20.0, 6.0)  # (start, seconds) of each training excerpt: past the intros
SMOKE_HELD_OUT = (10.0, 4.0)
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


def minutes_left(deadline_minutes: float) -> float:
    return deadline_minutes - (time.monotonic() - STARTED) / 60


def show(event: TrainProgress) -> None:
    if event.val_loss is not None:
        say(f"{event.stage} step {event.step}: validation loss {event.val_loss:.4f}")
    else:
        say(f"{event.stage} step {event.step}  loss {event.loss:.4f}  lr {event.lr:.2e}  {event.elapsed_s:.0f}s")


# --- Evaluation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings:
    protocol: Protocol
    clips: int  # held-out clips (each gives one VAE round trip and one infill)
    steps: int  # sampling steps of infill and generate
    generations: int  # 10 s generations (seeds 0, 1, ...)


def spectral_centroid_hz(audio: torch.Tensor, n_fft: int = 2048) -> float:
    """The magnitude-weighted mean frequency of the channel mean, over the whole clip."""
    mono = audio.float().mean(0)
    spectrum = torch.stft(mono, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    frequencies = torch.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    return float((frequencies[:, None] * spectrum).sum() / spectrum.sum().clamp_min(1e-12))


def stretch_errors_db(made: torch.Tensor, original: torch.Tensor) -> list[float]:
    """|level difference| of each 0.5 s stretch of a gap (a shorter gap is one stretch)."""
    length = round(STRETCH_SECONDS * SAMPLE_RATE)
    pieces = list(zip(made.split(length, dim=-1), original.split(length, dim=-1)))
    if len(pieces) > 1 and pieces[-1][0].shape[-1] < length // 2:
        pieces.pop()  # a sliver at the end says little about a level
    return [abs(rms_db(a) - rms_db(b)) for a, b in pieces]


def held_out_clips(data: Path, corpus: Corpus, settings: EvalSettings) -> list[Clip]:
    clips, _ = cut_clips([data / name for name in corpus.holdout], settings.protocol, SAMPLE_RATE, 2, settings.clips)
    if not clips:
        raise SystemExit("no held-out clips: the corpus needs held-out tracks longer than a clip")
    return clips


def frame_hz(model) -> float:
    return SAMPLE_RATE / model.downsampling_ratio


def vae_scores(model, clips: list[Clip], protocol: Protocol) -> dict:
    """Round trips of the clips: MR over each clip's gap against the linear crossfade's there, and
    over the whole clip the frame-rate comb, the onset strength kept and the level change."""
    fade = fade_samples(SAMPLE_RATE)
    vae, crossfade, comb, heldout_comb, onsets, level = [], [], [], [], [], []
    for case in build_cases(clips, protocol, SAMPLE_RATE)["infill"]:
        gap = slice(case.start, case.end)
        original, trip = case.original, round_trip(model, case.original)
        vae.append(mel_distance(trip[:, gap], original[:, gap], SAMPLE_RATE))
        crossfade.append(mel_distance(linear_crossfade_fill(case, fade).audio[:, gap], original[:, gap], SAMPLE_RATE))
        comb.append(frame_rate_comb_db(trip, SAMPLE_RATE, frame_hz(model)))
        heldout_comb.append(frame_rate_comb_db(original, SAMPLE_RATE, frame_hz(model)))
        onsets.append(onset_strength(trip, SAMPLE_RATE) / max(onset_strength(original, SAMPLE_RATE), 1e-9))
        level.append(rms_db(trip) - rms_db(original))
    frames = round(ZEROS_SECONDS * SAMPLE_RATE / model.downsampling_ratio)
    with torch.no_grad():
        zeros = model.decode(torch.zeros(1, model.latent_channels, frames, device=model.device))[0].float().cpu()
    return {"vae_mr": statistics.mean(vae), "crossfade_mr": statistics.mean(crossfade),
            "vae_mr_ratio": statistics.mean(vae) / statistics.mean(crossfade),
            "vae_comb_db": statistics.median(comb), "vae_onsets_kept": statistics.median(onsets),
            "vae_level_change_db": statistics.median(level),
            "heldout_comb_db": statistics.median(heldout_comb),
            "zeros_comb_db": frame_rate_comb_db(zeros, SAMPLE_RATE, frame_hz(model)), "zeros_level_db": rms_db(zeros)}


def infill_scores(model, clips: list[Clip], settings: EvalSettings) -> dict:
    """The infill (the CLI's default settings) of each clip's gap: its level, its MR against the
    best plain baseline's, and its onset strength against the original gap's."""
    infill = model_method(Editor.from_model(model), SamplerSettings(steps=settings.steps, seed=0), settings.protocol)
    fade = fade_samples(SAMPLE_RATE)
    level, worst, mr, onsets = [], [], [], []
    baselines: dict[str, list[float]] = {name: [] for name in PLAIN_BASELINES}
    for case in build_cases(clips, settings.protocol, SAMPLE_RATE)["infill"]:
        gap = slice(case.start, case.end)
        made, original = infill(case).audio[:, gap], case.original[:, gap]
        level.append(abs(rms_db(made) - rms_db(original)))
        worst.append(max(stretch_errors_db(made, original)))
        mr.append(mel_distance(made, original, SAMPLE_RATE))
        onsets.append(onset_strength(made, SAMPLE_RATE) / max(onset_strength(original, SAMPLE_RATE), 1e-9))
        for name, fill in PLAIN_BASELINES.items():
            baselines[name].append(mel_distance(fill(case, fade).audio[:, gap], original, SAMPLE_RATE))
    best = min(baselines, key=lambda name: statistics.mean(baselines[name]))
    return {"infill_level_error_db": statistics.mean(level), "infill_worst_stretch_db": statistics.mean(worst),
            "infill_mr": statistics.mean(mr), "best_baseline_mr": statistics.mean(baselines[best]),
            "best_baseline": best, "infill_mr_ratio": statistics.mean(mr) / max(statistics.mean(baselines[best]), 1e-9),
            "infill_onset_ratio": statistics.median(onsets)}


def readme_edit_scores(model, settings: EvalSettings) -> dict:
    """The README's infill (battle_60s.ogg, 0:08-0:11, the CLI's defaults, seed 1): the gap's onset
    strength against the original gap's, and the comb in the gap's spectrum (the original's too)."""
    path, start, end = README_EDIT
    window_seconds = model.max_frames * model.downsampling_ratio / SAMPLE_RATE
    if not path.is_file() or window_seconds < 3 * (end - start):  # the tiny preset's 1.5 s window
        return {}
    song, _ = load_audio(path, SAMPLE_RATE)  # as the CLI reads it
    gap = slice(round(start * SAMPLE_RATE), round(end * SAMPLE_RATE))
    settings_ = SamplerSettings(steps=settings.steps, seed=1)
    made = edit.infill(model, song, round(start * SAMPLE_RATE), round(end * SAMPLE_RATE), settings_).songs[0]
    return {"readme_gap_onset_ratio": onset_strength(made[:, gap], SAMPLE_RATE) / onset_strength(song[:, gap], SAMPLE_RATE),
            "readme_gap_comb_db": frame_rate_comb_db(made[:, gap], SAMPLE_RATE, frame_hz(model)),
            "readme_original_gap_comb_db": frame_rate_comb_db(song[:, gap], SAMPLE_RATE, frame_hz(model))}


def generate_scores(model, clips: list[Clip], settings: EvalSettings) -> dict:
    """`musicguide generate`'s settings (no guidance), against the held-out clips' level and brightness."""
    seconds = min(GENERATE_SECONDS, model.max_frames * model.downsampling_ratio / SAMPLE_RATE)
    plain = SamplerSettings(steps=settings.steps, seed=0, guidance=0.0, consistency=False)
    songs = edit.generate(model, seconds, plain, variations=settings.generations).songs
    level = statistics.median(rms_db(song) for song in songs)
    centroid = statistics.median(spectral_centroid_hz(song) for song in songs)
    held_level = statistics.median(rms_db(clip.audio) for clip in clips)
    held_centroid = statistics.median(spectral_centroid_hz(clip.audio) for clip in clips)
    return {"generate_seconds": seconds, "generate_level_db": level, "heldout_level_db": held_level,
            "generate_level_gap_db": abs(level - held_level), "generate_centroid_hz": centroid,
            "heldout_centroid_hz": held_centroid,
            "generate_centroid_factor": max(centroid, held_centroid) / max(min(centroid, held_centroid), 1e-9)}


def evaluate_folder(folder: Path, clips: list[Clip], settings: EvalSettings, device: str) -> dict:
    """Every target's value for the model folder (as it ships: fp16 weights), and how long it took."""
    started = time.monotonic()
    model = load_model_folder(folder, device=device)
    scores = {}
    for name, part in (("VAE round trips", lambda: vae_scores(model, clips, settings.protocol)),
                       ("infills", lambda: infill_scores(model, clips, settings)),
                       ("generations", lambda: generate_scores(model, clips, settings)),
                       ("the README's edit", lambda: readme_edit_scores(model, settings))):
        begun = time.monotonic()
        scores.update(part())
        say(f"  {name}: {time.monotonic() - begun:.0f} s")
    return {**scores, "clips": len(clips), "seconds": round(time.monotonic() - started, 1)}


def evaluation_key(settings: EvalSettings, device: str) -> dict:
    """What an evaluation's numbers depend on besides the weights: the clips, steps and generations,
    the targets measured, whether the README's clip was there, and the kind of device."""
    return {"protocol": asdict(settings.protocol), "clips": settings.clips, "steps": settings.steps,
            "generations": settings.generations, "targets": sorted(TARGETS),
            "readme_edit": README_EDIT[0].is_file(), "device": torch.device(device).type}


def stored_evaluation(folder: Path, settings: EvalSettings, device: str) -> dict | None:
    """The evaluation stored beside `folder`'s weights (STORED_EVALUATION) for these very weights
    (their sha256) and these settings, or None: measuring them again would spend minutes of a short
    GPU lease on numbers already known."""
    path, weights = folder / STORED_EVALUATION, folder / WEIGHTS_FILE
    if not (path.is_file() and weights.is_file()):
        return None
    records = json.loads(path.read_text()).get("evaluations", [])
    digest, key = sha256(weights), evaluation_key(settings, device)
    return next((r["scores"] for r in records if r["weights_sha256"] == digest and r["settings"] == key), None)


def store_evaluation(folder: Path, scores: dict, key: dict) -> None:
    """Keep `scores` beside `folder`'s weights, keyed by their sha256 and the settings (replacing an
    older record with the same key; records for other weights are dropped, they are stale)."""
    path, digest = folder / STORED_EVALUATION, sha256(folder / WEIGHTS_FILE)
    records = json.loads(path.read_text()).get("evaluations", []) if path.is_file() else []
    records = [r for r in records if r["weights_sha256"] == digest and r["settings"] != key]
    records.append({"weights_sha256": digest, "settings": key, "scores": scores})
    path.write_text(json.dumps({"evaluations": records}, indent=1) + "\n")


def shortfalls(scores: dict) -> dict[str, float]:
    """How far each target is from met, in units of the target (0 when met); the targets measured."""
    return {name: target.shortfall(scores[name]) for name, target in TARGETS.items() if name in scores}


def verdict(before: dict, after: dict, min_gain: float, tolerance: float) -> tuple[bool, str]:
    was, now = shortfalls(before), shortfalls(after)
    both = [name for name in TARGETS if name in was and name in now]
    worse = [name for name in both if now[name] > was[name] + tolerance]
    total_was, total_now = sum(was[n] for n in both), sum(now[n] for n in both)
    summary = f"summed shortfall {total_was:.3f} -> {total_now:.3f}"
    if worse:
        return False, f"not better: {', '.join(worse)} moved away from the target ({summary})"
    if total_was == 0:
        return False, f"every target was already met; nothing to gain ({summary})"
    if total_now > total_was * (1 - min_gain):
        return False, f"not better by {min_gain:.0%} ({summary})"
    return True, f"better ({summary})"


DETAILS = ("vae_mr", "crossfade_mr", "heldout_comb_db", "zeros_level_db", "infill_mr", "best_baseline_mr",
           "readme_original_gap_comb_db", "generate_level_db", "heldout_level_db", "generate_centroid_hz",
           "heldout_centroid_hz")


def score_lines(before: dict | None, after: dict, column: str = "after") -> list[str]:
    """The targets' table: `before` (or '-') and `after`, whose column is headed `column`."""
    lines = [f"{'target':26} {'goal':>9} {'before':>9} {column:>9}"]
    for name, target in TARGETS.items():
        if name not in after:
            continue
        was = f"{before[name]:9.3f}" if before and name in before else f"{'-':>9}"
        met = "met" if target.shortfall(after[name]) == 0 else ""
        lines.append(f"{name:26} {str(target):>9} {was} {after[name]:9.3f}  {met}")
    for name in DETAILS:
        if name in after:
            was = f"{before[name]:9.2f}" if before and name in before else f"{'-':>9}"
            lines.append(f"  {name:24} {'':9} {was} {after[name]:9.2f}")
    return lines


# --- Training -------------------------------------------------------------------------------------

def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".data" / "corpus", help="scripts/build_corpus.py's folder")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "demo-out")))
    parser.add_argument("--work", type=Path, default=None, help="checkpoints and fp32 weights (default: a temp dir)")
    parser.add_argument("--init", default=str(DEFAULT_INIT), help="model folder to start from, or 'none'")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--vae-minutes", type=float, default=3.0, help="0: keep the starting model's VAE")
    parser.add_argument("--dit-minutes", type=float, default=3.0)
    parser.add_argument("--deadline-minutes", type=float, default=8.5, help="the whole script, start to end")
    parser.add_argument("--warmup-steps", type=int, default=100,
                        help="learning-rate warm-up of each stage (the optimiser state starts fresh)")
    parser.add_argument("--vae-batch", type=int, default=None)
    parser.add_argument("--dit-batch", type=int, default=None)
    parser.add_argument("--vae-lr", type=float, default=None)
    parser.add_argument("--dit-lr", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile both losses (CUDA only)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train the VAE's decoder alone (spectral loss up to 8192-sample windows) and no DiT: "
                             "the latents stay as they are, so the DiT stays valid")
    parser.add_argument("--mel-weight", type=float, default=0.0,
                        help="with --decoder-only: weight of the evaluation's MR as a loss term")
    parser.add_argument("--nearest-upsample", action="store_true",
                        help="first convert --init's decoder to repeat-then-convolve upsampling (no frame-rate buzz)")
    parser.add_argument("--eval-clips", type=int, default=30)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--min-gain", type=float, default=0.05)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--write", choices=("if-better", "always"), default="if-better",
                        help="always: also weights that did not evaluate better (to continue a new lineage)")
    parser.add_argument("--measure-vae", nargs="+", metavar="RATIO:LATENT:WIDTH", default=None)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="only measure --init on the targets (what ships, e.g. on a CPU); no training")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--merge", type=Path, metavar="FILES_AT", default=None,
                        help="check a run's returned files against its summary.txt and merge its weights into --out")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny preset from scratch on part of the corpus, a few steps: checks the script on a CPU")
    args = parser.parse_args(argv)
    args.init = None if args.init == "none" else Path(args.init)
    args.overhead_minutes = STAGE_OVERHEAD_MIN
    if args.smoke:
        args.preset, args.init, args.write, args.overhead_minutes = "tiny", None, "always", SMOKE_OVERHEAD_MIN
        args.warmup_steps = None  # from scratch: the preset's own
        args.vae_minutes, args.dit_minutes = min(args.vae_minutes, 0.5), min(args.dit_minutes, 0.3)
        args.deadline_minutes = min(args.deadline_minutes, 2.0)
        args.eval_clips, args.eval_steps, args.generations = min(args.eval_clips, 4), min(args.eval_steps, 5), 2
    if not (args.vae_minutes >= 0 and args.dit_minutes > 0 and args.deadline_minutes > 0):
        parser.error("--vae-minutes must be >= 0, --dit-minutes and --deadline-minutes above 0")
    if args.vae_minutes == 0 and args.init is None:
        parser.error("--vae-minutes 0 keeps the starting model's VAE: it needs --init")
    if (args.decoder_only or args.nearest_upsample) and (args.init is None or args.vae_minutes == 0):
        parser.error("--decoder-only and --nearest-upsample change --init's VAE: they need --init and --vae-minutes")
    if args.evaluate_only and (args.init is None or args.measure_vae):
        parser.error("--evaluate-only measures the --init model: it needs one, and no --measure-vae")
    return args


def smoke_subset(data: Path, into: Path) -> Path:
    """A small corpus for the smoke run: 6 s of the first training file of each package and 4 s of
    four held-out files, as WAV, with a manifest that places them in their tracks."""
    manifest = read_manifest(data)
    firsts: dict[str, dict] = {}
    for entry in manifest.values():
        if entry["split"] == "train":
            firsts.setdefault(entry["package"], entry)
    held_out = [entry for entry in manifest.values() if entry["split"] == "holdout"][:4]
    chosen = []
    for entry, (start, seconds) in [(e, SMOKE_TRAIN) for e in firsts.values()] + [(e, SMOKE_HELD_OUT) for e in held_out]:
        start = max(0.0, min(start, entry["seconds"] - seconds))  # short files: their end
        audio, rate = sf.read(data / entry["file"], dtype="float32")
        excerpt = audio[round(start * rate): round((start + seconds) * rate)]
        file = str(Path(entry["file"]).with_suffix(".wav"))
        (into / file).parent.mkdir(parents=True, exist_ok=True)
        sf.write(into / file, excerpt, rate, subtype="FLOAT")
        chosen.append({**entry, "file": file, "offset_s": entry["offset_s"] + start, "seconds": len(excerpt) / rate})
    (into / "manifest.json").write_text(json.dumps({"tracks": chosen}))
    return into


def loss_line(name: str, result: TrainResult | None, log_dir: Path) -> str:
    if result is None:
        return f"{name}: did not run or did not finish (see the console)"
    log = json.loads((log_dir / LOG_FILE).read_text())
    history = log["history"]
    first, last = (f"{history[0]['loss']:.4f} (step {history[0]['step']})", f"{history[-1]['loss']:.4f}") if history \
        else ("-", "-")
    return (f"{name}: {result.step} steps in {result.seconds:.0f} s (stopped: {result.stopped}), "
            f"{result.step / max(result.seconds, 1e-9):.2f} steps/s, {result.examples_per_s:.1f} examples/s; "
            f"training loss {first} -> {last}; validation loss {result.val_loss}\n"
            f"  {profile_line(log.get('step_profile'))}")


def profile_line(profile: dict | None) -> str:
    """Where a training step's time goes (the loop's profiled steps, device synchronised)."""
    if not profile:
        return "one step: not profiled (the stage ended before its profiled steps)"
    step = profile["step_s"]
    shares = ", ".join(f"{phase} {profile[phase + '_s'] * 1000:.1f} ms ({profile[phase + '_s'] / step:.0%})"
                       for phase in ("data", "forward", "backward", "optimizer"))
    return (f"one step ({profile['steps']} profiled): {step * 1000:.1f} ms = {shares}; "
            f"{profile['examples_per_s']:.1f} examples/s")


def stage_configs(args: argparse.Namespace, vae_minutes: float,
                  dit_minutes: float) -> tuple[VAETrainConfig, DiTTrainConfig]:
    """Both stages' settings: the preset's, stopped by the time budget alone."""
    shared = dict(steps=UNBOUNDED_STEPS, warmup_steps=args.warmup_steps, compile=args.compile)
    decoder = (dict(train_encoder=False, stft_sizes=LONG_STFT_SIZES, mel_weight=args.mel_weight) if args.decoder_only
               else {})
    return (VAETrainConfig.for_preset(args.preset, max_minutes=vae_minutes, batch_size=args.vae_batch, lr=args.vae_lr,
                                      **shared, **decoder),
            DiTTrainConfig.for_preset(args.preset, max_minutes=dit_minutes, batch_size=args.dit_batch, lr=args.dit_lr,
                                      **shared))


def run_history(init: Path | None, this_run: dict) -> list[dict]:
    """The runs the weights have had (the starting model's log lists them, or is one run's), and this one."""
    log_path = init / LOG_FILE if init else None
    if log_path is None or not log_path.is_file():
        return [this_run]
    old = json.loads(log_path.read_text())
    if "runs" in old:
        earlier = old["runs"]
    elif "result" in old:  # one stage's folder
        earlier = [{old["stage"]: old["result"]}]
    else:  # both stages' logs, as bench/train_demo.py wrote them before it kept a list
        earlier = [{stage: part["result"] for stage, part in old.items() if "result" in part}]
    return earlier + [this_run]


def write_weights(out: Path, model_dir: Path) -> list[Path]:
    """The model as it would ship (fp16) in as few parts as MAX_FILE_BYTES allows, with its config."""
    parts = split_weights(model_dir, out, MAX_FILE_BYTES)
    (out / CONFIG_FILE).write_text((model_dir / CONFIG_FILE).read_text())
    return [out / CONFIG_FILE, *parts]


def stage_log(folder: Path) -> dict:
    """A stage's log, its paths (relative to its own folder there) made absolute again, so that
    `portable` names them from this run's point of view (WORK/vae, musicguide/weights/demo)."""
    log = json.loads((folder / LOG_FILE).read_text())
    for key in ("init", "vae_dir"):
        if log.get(key):
            log[key] = str((folder / log[key]).resolve())
    if "result" in log:
        log["result"]["out_dir"] = str(folder.resolve())
    return log


def portable(text: str, roots: dict[str, Path]) -> str:
    """`text` with this machine's folders named by what they are (`roots`: a label for each, e.g.
    WORK for the work folder; the repository becomes relative to itself), so that a log or summary
    that travels or is committed names no folder of the machine that wrote it. Longer roots first:
    the work folder may lie in the temp folder, --out in the repository."""
    named = {**{label: Path(folder).resolve() for label, folder in roots.items()},
             "TMP": Path(tempfile.gettempdir()).resolve()}
    for label, folder in sorted(named.items(), key=lambda item: -len(str(item[1]))):
        if label == ".":
            text = text.replace(f"{folder}/", "").replace(str(folder), ".")
        else:
            text = text.replace(str(folder), label)
    return text


def file_lines(files: list[Path]) -> list[str]:
    """summary.txt's list of what the run wrote: name, size and sha256 (`merge_run` checks them)."""
    lines = [f"files ({len(files) + 1} with {SUMMARY_FILE}; name, bytes, sha256):"]
    lines += [f"  {f.name}  {f.stat().st_size}  {sha256(f)}" for f in files]
    if len(files) + 1 > MAX_FILES:
        lines.append(f"warning: {len(files) + 1} files, more than the {MAX_FILES} a GPU call can be sure to return")
    return lines


def listed_files(summary: str) -> dict[str, tuple[int, str]]:
    """The files a summary.txt lists: name -> (bytes, sha256)."""
    listed = {}
    for line in summary.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) == 3 and parts[1].isdigit() and len(parts[2]) == 64:
            listed[parts[0]] = (int(parts[1]), parts[2])
    return listed


def merge_run(files_at: Path, into: Path) -> Path:
    """A run's returned files as a model folder in `into`: every file that its summary.txt lists is
    checked against its size and sha256 first (a part left behind or cut short stops the merge,
    naming it), then the weight parts are merged and the train log copied."""
    summary = files_at / SUMMARY_FILE
    if not summary.is_file():
        raise UserError(f"{summary} does not exist: is {files_at} the folder a run's files came back to?")
    listed = listed_files(summary.read_text())
    parts = sorted(name for name in listed if name.endswith(".safetensors"))
    if not parts:
        raise UserError(f"{summary} lists no weights: the run kept none (see its verdict)")
    for name, (size, digest) in listed.items():
        path = files_at / name
        if not path.is_file():
            raise UserError(f"{name} is listed in {summary} but did not come back")
        if path.stat().st_size != size or sha256(path) != digest:
            raise UserError(f"{name} does not match the size and sha256 in {summary}: it came back damaged")
    merge_parts([files_at / name for name in parts], files_at / CONFIG_FILE, into)
    if "train_log.json" in listed:
        log = (files_at / "train_log.json").read_text()
        (into / "train_log.json").write_text(log)
        evaluation = json.loads(log).get("evaluation", {})
        if evaluation.get("after") and evaluation.get("settings"):  # the next run starting here reuses it
            store_evaluation(into, evaluation["after"], evaluation["settings"])
    return into


def vae_start(args: argparse.Namespace, work: Path) -> tuple[Path | None, ModelConfig | None]:
    """The VAE the VAE stage starts from, and its model: --init's, or with --nearest-upsample its
    decoder converted to repeat-then-convolve upsampling (train.nearest_upsample_decoder)."""
    if args.init is None:
        return None, None
    config, state = load_vae(args.init)
    if not args.nearest_upsample or config.autoencoder.decoder.use_nearest_upsample:
        return args.init, config  # its own model: a converted decoder is not the preset's
    config, state = nearest_upsample_decoder(config, {k: v.float() for k, v in state.items()})
    folder = work / "converted"
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / CONFIG_FILE)
    save_weights(state, folder / VAE_WEIGHTS_FILE)
    return folder, config


def training_excerpts(corpus: Corpus, count: int = CALIBRATION_EXCERPTS, seconds: float = 6.0) -> list[torch.Tensor]:
    """`seconds` from the middle of up to `count` training tracks, spread over the corpus."""
    names, tracks = corpus.split(held_out=False)
    step = max(1, len(tracks) // count)
    length = round(seconds * SAMPLE_RATE)
    return [t[:, max(0, (t.shape[-1] - length) // 2):][:, :length] for t in tracks[::step][:count]
            if t is not None and t.shape[-1] >= SAMPLE_RATE]


def with_new_decoder(init: Path, vae_dir: Path, into: Path, excerpts: list[torch.Tensor]) -> float:
    """--init's model (its DiT untouched) with the VAE of `vae_dir` and its output gain calibrated
    on training excerpts (train.calibrate_output_gain), as a model folder in fp16; the gain in dB."""
    config, vae = load_vae(vae_dir)
    model = load_model_folder(init).float()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(VAE_PREFIXES)}
    shipped = build_model(config)
    shipped.load_state_dict({**state, **vae}, strict=True)
    gain_db = calibrate_output_gain(shipped, excerpts)
    save_model_folder(shipped, into, dtype=torch.float16)
    return gain_db


def improve(args: argparse.Namespace, corpus: Corpus, clips: list[Clip], settings: EvalSettings, device: str,
            work: Path) -> tuple[list[str], dict]:
    """Evaluate the starting model, fine-tune VAE then DiT, evaluate again, keep what is better.
    With --decoder-only: the decoder alone, and no DiT stage (the latents do not change)."""
    lines, report = [], {"settings": evaluation_key(settings, device)}
    before = stored_evaluation(args.init, settings, device) if args.init else None
    if before:
        lines.append(f"starting model's evaluation reused from its {STORED_EVALUATION} (same weights and settings; "
                     f"measuring it took {before['seconds']} s)")
        say(lines[-1])
    elif args.init:
        before = evaluate_folder(args.init, clips, settings, device)
        say(f"starting model evaluated in {before['seconds']} s")
    report["before"] = before
    # The second evaluation takes as long as the first (a bit more for safety).
    reserve = before["seconds"] / 60 * 1.3 if before else 0.5
    vae_dir, dit_dir = work / "vae", work / "dit"
    vae_result = None
    training = minutes_left(args.deadline_minutes) - reserve - 2 * args.overhead_minutes
    dit_share = 0.0 if args.decoder_only else args.dit_minutes
    vae_minutes = min(args.vae_minutes, training * args.vae_minutes / (args.vae_minutes + dit_share))
    if args.vae_minutes > 0:
        vae_config, _ = stage_configs(args, max(vae_minutes, 0.1), 1.0)
        vae_init, vae_model = vae_start(args, work)
        vae_result = train_vae(corpus, vae_dir, vae_config, device=device, progress=show, init=vae_init,
                               model_config=vae_model)
        lines.append(loss_line("VAE", vae_result, vae_dir))
        say(lines[-1])
    if args.decoder_only:
        gain_db = with_new_decoder(args.init, vae_dir, dit_dir, training_excerpts(corpus))
        lines.append(f"decoder output gain, calibrated on training excerpts: {gain_db:+.2f} dB")
        say(lines[-1])
    else:
        dit_minutes = min(args.dit_minutes, minutes_left(args.deadline_minutes) - reserve - args.overhead_minutes)
        _, dit_config = stage_configs(args, 1.0, max(dit_minutes, 0.1))
        say(f"DiT budget {dit_config.max_minutes:.2f} min")
        dit_result = train_dit(corpus, vae_dir if vae_result else args.init, dit_dir, dit_config, device=device,
                               progress=show, init=args.init)
        lines.append(loss_line("DiT", dit_result, dit_dir))
        say(lines[-1])

    after = evaluate_folder(dit_dir, clips, settings, device)
    report["after"] = after
    say(f"trained model evaluated in {after['seconds']} s")
    better, why = (verdict(before, after, args.min_gain, args.tolerance) if before
                   else (False, "no starting model to compare with"))
    report["verdict"] = {"better": better, "why": why, "targets": {n: str(t) for n, t in TARGETS.items()},
                         "min_gain": args.min_gain,
                         "tolerance": args.tolerance}
    lines += score_lines(before, after) + [f"verdict: {why}"]
    logs = {stage: stage_log(d) for stage, d in (("vae", vae_dir), ("dit", dit_dir)) if (d / LOG_FILE).is_file()}
    this_run = {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **{stage: log["result"] for stage, log in logs.items()}, "evaluation": after, "kept": better}
    logs["runs"] = run_history(args.init, this_run)
    weights: list[Path] = []
    if better or args.write == "always":
        weights = write_weights(args.out, dit_dir)
    else:
        lines.append("weights not written: keep the committed ones")
    return lines, report, logs, weights


def measure_vaes(args: argparse.Namespace, corpus: Corpus, clips: list[Clip], settings: EvalSettings, device: str,
                 work: Path) -> tuple[list[str], dict]:
    """Each VAE variant from scratch for the same minutes, and its round-trip MR ratio."""
    lines, report, logs = [], {}, {}
    if args.init:
        model = load_model_folder(args.init, device=device)
        report["starting model"] = vae_scores(model, clips, settings.protocol)
        lines.append(f"starting model's VAE: MR ratio {report['starting model']['vae_mr_ratio']:.3f}")
    for i, spec in enumerate(args.measure_vae):
        ratio, latent_dim, channels = (int(x) for x in spec.split(":"))
        config = vae_variant(args.preset, ratio, latent_dim, channels)
        share = (minutes_left(args.deadline_minutes) - 0.5) / (len(args.measure_vae) - i) - args.overhead_minutes
        vae_config, _ = stage_configs(args, max(min(args.vae_minutes, share), 0.1), 1.0)
        folder = work / f"vae-{ratio}-{latent_dim}-{channels}"
        result = train_vae(corpus, folder, vae_config, device=device, progress=show, model_config=config)
        trained_config, state = load_vae(folder, device)
        model = build_model(trained_config).to(device).eval()
        model.load_state_dict(state, strict=False)  # the VAE's part; the DiT stays untrained and unused
        scores = vae_scores(model, clips, settings.protocol)
        tokens = config.sample_size // config.autoencoder.downsampling_ratio
        report[spec] = {**scores, "compression": 2 * ratio / latent_dim, "dit_tokens_per_window": tokens,
                        "parameters": sum(p.numel() for n, p in model.pretransform.named_parameters()),
                        "steps": result.step, "seconds": result.seconds, "examples_per_s": result.examples_per_s,
                        "val_loss": result.val_loss}
        logs[spec] = stage_log(folder)
        lines.append(f"VAE {spec}: {2 * ratio / latent_dim:.0f}x compression, {tokens} DiT tokens per window, "
                     f"{result.step} steps in {result.seconds:.0f} s; MR ratio {scores['vae_mr_ratio']:.3f} "
                     f"(MR {scores['vae_mr']:.3f} vs crossfade {scores['crossfade_mr']:.3f}); "
                     f"validation loss {result.val_loss}\n  {profile_line(logs[spec].get('step_profile'))}")
        say(lines[-1])
    return lines, report, logs, []


def evaluate_only(args: argparse.Namespace, corpus: Corpus, clips: list[Clip], settings: EvalSettings, device: str,
                  work: Path) -> tuple[list[str], dict]:
    """The targets' values for the --init model, as the GPU run's "before" measures them."""
    scores = evaluate_folder(args.init, clips, settings, device)
    return score_lines(None, scores, column="now"), {"settings": evaluation_key(settings, device), "before": scores}, {}, []


def describe_machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, {os.cpu_count()} CPUs)"
    return f"CPU (torch {torch.__version__}, {os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> int:
    global STARTED
    STARTED = time.monotonic()  # the deadline counts from here
    args = arguments(argv)
    if args.merge:
        say(f"merged into {merge_run(args.merge, args.out)}")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        torch.set_num_threads(1)  # a tiny model is all per-op overhead: a second thread only adds waiting
    work = args.work or Path(tempfile.mkdtemp(prefix="musicguide-train-"))
    args.out.mkdir(parents=True, exist_ok=True)
    roots = {"WORK": work, "OUT": args.out, ".": REPO}
    summary = [portable(f"preset {args.preset} on {describe_machine(device)}, starting from "
                        f"{args.init or 'scratch'}", roots)]
    say(summary[0])
    report: dict = {}
    logs: dict = {}
    written: list[Path] = []
    failed = False
    try:
        data = smoke_subset(args.data, work / "smoke-corpus") if args.smoke else args.data
        # evaluating reads only the held-out files (cut_clips), so it skips decoding the corpus
        corpus = load_corpus(data, workers=args.workers, decode=not args.evaluate_only)
        summary.append(f"corpus: {len(corpus.names)} files, {corpus.seconds / 60:.1f} min; "
                       f"held out: {len(corpus.holdout)} files")
        say(summary[-1])
        settings = EvalSettings(TINY_PROTOCOL if args.preset == "tiny" else Protocol(), args.eval_clips,
                                args.eval_steps, args.generations)
        clips = held_out_clips(data, corpus, settings)
        task = measure_vaes if args.measure_vae else evaluate_only if args.evaluate_only else improve
        lines, report, logs, written = task(args, corpus, clips, settings, device, work)
        summary += lines
    except Exception:
        failed = True
        summary.append("failed:\n" + traceback.format_exc())
        say(summary[-1])
    finally:
        log = args.out / LOG_FILE
        log.write_text(portable(json.dumps({**logs, "evaluation": report}, indent=1), roots) + "\n")
        summary.append(f"total {time.monotonic() - STARTED:.0f} s")
        summary += file_lines([log, *written])
        (args.out / SUMMARY_FILE).write_text(portable("\n".join(summary), roots) + "\n")
        say("summary:\n" + "\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
