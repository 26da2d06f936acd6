"""Train the model family on a folder of audio: first the VAE, then the DiT on the VAE's latents.

    vae = train_vae("songs/", "runs/vae", VAETrainConfig.for_preset("demo"))
    dit = train_dit("songs/", "runs/vae", "runs/model", DiTTrainConfig.for_preset("demo"))
    # runs/model is a model folder: musicguide --model runs/model ...

The VAE learns to reconstruct random segments (multi-resolution STFT + waveform L1 + a small KL
term, as stable-audio-tools trains Oobleck, without its adversarial stage). The DiT then learns
v-prediction on the VAE's latents, encoded once up front, with the timing conditioning the family
uses (where the crop starts in its track, how long the track is) and the null text conditioning
that `LatentDiffusion.denoise` samples with. Both stages share one loop: AdamW, warmup then cosine
learning rate, gradient clipping, bf16 autocast on CUDA, a wall-clock budget, validation on
held-out files, a resumable `checkpoint.pt` and a JSON log. Published weights are safetensors only.

A run can also start from the weights of a model folder (`init=`, e.g. the shipped demo model):
fp16 weights are enough, since the optimiser state starts fresh under the warm-up anyway. A folder
with a `manifest.json` (scripts/build_corpus.py writes one) gives the held-out split and where each
excerpt sits in its original track, so the timing conditioning stays that of the whole track.

Every setting is checked when a config is made, and `--out` before any work: a bad value is a
`UserError` and nothing is written. The output folder is made when its first file is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from musicguide.audio import load_audio
from musicguide.atomic import write_atomically
from musicguide.errors import UserError
from musicguide.models import LatentDiffusion, ModelConfig, build_model, load_model_folder, save_model_folder

AUDIO_SUFFIXES = (".ogg", ".opus", ".wav", ".flac")
SAMPLE_RATE = 44100
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.json"
VAE_WEIGHTS_FILE = "vae.safetensors"
CONFIG_FILE = "model_config.json"
MANIFEST_FILE = "manifest.json"
VAE_PREFIXES = ("pretransform.",)
DIT_PREFIXES = ("model.", "conditioner.")
# Window sizes of the spectral loss (75 % overlap), as stable-audio-tools uses for Oobleck minus
# its 32-sample one: large windows resolve pitch, small ones transients.
STFT_SIZES = (2048, 1024, 512, 256, 128, 64)
SMALL_CORPUS_SECONDS = 600.0  # decoded in this process: faster than starting a pool of spawned workers
MAX_BAD_STEPS = 50  # consecutive non-finite losses before a run gives up


# --- Model presets --------------------------------------------------------------------------------

def _family_config(*, sample_size: int, channels: int, c_mults: Sequence[int], strides: Sequence[int],
                   latent_dim: int, width: int, depth: int, heads: int, cond_dim: int,
                   text_conditioning: bool = False) -> ModelConfig:
    """A model_config.json of the Stable Audio Open family, read back through ModelConfig's checks.

    Without `text_conditioning` the DiT has no cross-attention at all: we train with the null text
    conditioning, under which cross-attention adds exactly zero, so its weights would never learn."""
    timing = [{"id": name, "type": "number", "config": {"min_val": 0, "max_val": 512}}
              for name in ("seconds_start", "seconds_total")]
    conditioners = timing
    cross_ids: list[str] = []
    if text_conditioning:
        conditioners = [{"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                        *timing]
        cross_ids = ["prompt", "seconds_start", "seconds_total"]
    oobleck = {"channels": channels, "c_mults": list(c_mults), "strides": list(strides), "use_snake": True}
    return ModelConfig.from_dict({
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": SAMPLE_RATE,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "config": {
                "encoder": {"type": "oobleck", "config": {**oobleck, "in_channels": 2, "latent_dim": 2 * latent_dim}},
                "decoder": {"type": "oobleck", "config": {**oobleck, "out_channels": 2, "latent_dim": latent_dim,
                                                          "final_tanh": False}},
                "bottleneck": {"type": "vae"},
                "latent_dim": latent_dim, "downsampling_ratio": math.prod(strides), "io_channels": 2}},
            "conditioning": {"cond_dim": cond_dim, "configs": conditioners},
            "diffusion": {
                "type": "dit", "diffusion_objective": "v",
                "cross_attention_cond_ids": cross_ids,
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "config": {"io_channels": latent_dim, "embed_dim": width, "depth": depth, "num_heads": heads,
                           "cond_token_dim": cond_dim if text_conditioning else 0,
                           "project_cond_tokens": False,
                           "global_cond_dim": 2 * cond_dim,
                           "transformer_type": "continuous_transformer"}},
            "io_channels": latent_dim,
        },
    })


# The shapes of each preset's model (arguments of _family_config).
PRESET_SHAPES: dict[str, dict] = {
    "tiny": dict(sample_size=65536, channels=8, c_mults=(1, 2, 4, 8), strides=(4, 4, 8, 8),
                 latent_dim=8, width=64, depth=2, heads=2, cond_dim=16),
    "demo": dict(sample_size=524288, channels=32, c_mults=(1, 2, 4, 8), strides=(4, 4, 8, 8),
                 latent_dim=32, width=256, depth=8, heads=4, cond_dim=64),
    "sao": dict(sample_size=2097152, channels=128, c_mults=(1, 2, 4, 8, 16), strides=(2, 4, 4, 8, 8),
                latent_dim=64, width=1536, depth=24, heads=24, cond_dim=768, text_conditioning=True),
}
PRESETS = tuple(PRESET_SHAPES)
TIMESTEP_SAMPLERS = ("uniform", "logit_normal")
# Encoder strides for each samples-per-latent-frame ratio of a VAE variant (four stages, as demo's).
VARIANT_STRIDES = {256: (2, 4, 4, 8), 512: (4, 4, 4, 8), 1024: (4, 4, 8, 8), 2048: (4, 4, 8, 16)}


def preset_config(name: str) -> ModelConfig:
    """The model a preset trains.

    tiny: trains in CPU seconds; for tests. demo: what the project ships, ~11M parameters (2.6M VAE,
    8.7M DiT; 22 MB in fp16), 1024x VAE with 32 latent channels (64x compression, as SAO 1.0) and
    an 11.9 s window. sao: Stable Audio Open 1.0's shapes (1.2B parameters), for real hardware."""
    if name not in PRESET_SHAPES:
        raise UserError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}")
    return _family_config(**PRESET_SHAPES[name])


def vae_variant(preset: str, ratio: int, latent_dim: int, channels: int) -> ModelConfig:
    """The preset's model with another VAE: `ratio` audio samples per latent frame, `latent_dim`
    numbers per frame, `channels` wide in its first stage. Compression is 2 * ratio / latent_dim
    (demo: 2 * 1024 / 32 = 64x). For choosing the VAE by measurement (bench/train_demo.py)."""
    if ratio not in VARIANT_STRIDES:
        raise UserError(f"no VAE variant with ratio {ratio}", hint=f"choose one of {sorted(VARIANT_STRIDES)}")
    if not (_is_whole(latent_dim, 1) and _is_whole(channels, 1)):
        raise UserError(f"a VAE variant needs whole numbers of latent channels and width, got {latent_dim}, {channels}")
    shapes = {**PRESET_SHAPES[preset], "strides": VARIANT_STRIDES[ratio], "latent_dim": latent_dim, "channels": channels}
    return _family_config(**shapes)


# --- Training settings ----------------------------------------------------------------------------

# How a setting is named in messages: its command-line option where it has one.
_OPTIONS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "max_minutes": "--max-minutes"}


def _is_whole(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    """What both stages share. `steps` and `max_minutes` both stop a run; the learning rate follows
    a cosine over whichever runs out first."""

    preset: str = "demo"
    steps: int = 20000
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_minutes: float | None = None  # wall-clock budget of this call's training loop
    val_fraction: float = 0.15  # share of files held out, chosen by name (see holdout_names)
    val_every: int = 500
    val_examples: int = 32
    log_every: int = 50
    checkpoint_every: int = 1000
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast; CUDA only
    compile: bool = False  # torch.compile the loss on CUDA (costs a minute of compiling up front)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}", hint=f"choose one of {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "val_every", "val_examples", "log_every", "checkpoint_every"):
            self._require(name, _is_whole(getattr(self, name), 1), "a whole number of at least 1")
        self._require("warmup_steps", _is_whole(self.warmup_steps, 0), "a whole number of at least 0")
        self._require("seed", _is_whole(self.seed, 0) and self.seed < 2**32, "a whole number in [0, 2^32)")
        self._require("lr", _is_finite(self.lr) and self.lr > 0, "a finite number above 0")
        self._require("grad_clip", _is_finite(self.grad_clip) and self.grad_clip > 0, "a finite number above 0")
        self._require("weight_decay", _is_finite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0")
        self._require("max_minutes", self.max_minutes is None or (_is_finite(self.max_minutes) and self.max_minutes > 0),
                      "a finite number of minutes above 0")
        self._require("val_fraction", _is_finite(self.val_fraction) and 0 <= self.val_fraction < 1, "in [0, 1)")

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{_OPTIONS.get(name, name)} must be {what}, got {getattr(self, name)!r}")

    @classmethod
    def for_preset(cls, preset: str, **overrides):
        """The preset's defaults with `overrides` (None values are ignored, so CLI options pass through)."""
        defaults = _TRAIN_DEFAULTS.get((cls.__name__, preset))
        if defaults is None:
            raise UserError(f"unknown preset {preset!r}", hint=f"choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting {unknown[0]!r}")
        return replace(cls(preset=preset, **defaults), **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class VAETrainConfig(TrainConfig):
    segment_samples: int = 65536  # 1.49 s: longer than the largest STFT window and the receptive field
    l1_weight: float = 1.0
    kl_weight: float = 1e-4  # the family's weight: a light pull toward N(0, 1) that keeps latents smooth

    def __post_init__(self):
        super().__post_init__()
        self._require("segment_samples", _is_whole(self.segment_samples, 1), "a whole number of at least 1")
        for name in ("l1_weight", "kl_weight"):
            self._require(name, _is_finite(getattr(self, name)) and getattr(self, name) >= 0, "a finite number >= 0")


@dataclass(frozen=True)
class DiTTrainConfig(TrainConfig):
    window_frames: int | None = None  # latent frames per crop; None = the model's sample_size
    short_crops: float = 0.25  # share of steps on shorter crops, so edits of short windows work too
    ema_decay: float = 0.999  # the exported weights are this average of the trained ones
    timestep_sampler: str = "uniform"  # or "logit_normal" (sigmoid of a standard normal)
    gradient_checkpointing: bool = False
    stereo_flip: bool = True  # also train on every track with left and right swapped

    def __post_init__(self):
        super().__post_init__()
        self._require("window_frames", self.window_frames is None or _is_whole(self.window_frames, 1),
                      "a whole number of at least 1")
        self._require("short_crops", _is_finite(self.short_crops) and 0 <= self.short_crops <= 1, "in [0, 1]")
        self._require("ema_decay", _is_finite(self.ema_decay) and 0 <= self.ema_decay < 1, "in [0, 1)")
        self._require("timestep_sampler", self.timestep_sampler in TIMESTEP_SAMPLERS,
                      f"one of {', '.join(TIMESTEP_SAMPLERS)}")


_TRAIN_DEFAULTS: dict[tuple[str, str], dict] = {
    ("VAETrainConfig", "tiny"): dict(steps=40, batch_size=2, segment_samples=8192, lr=2e-3, warmup_steps=4,
                                     val_every=20, val_examples=4, log_every=5, checkpoint_every=20),
    # lr: in 150-step CPU trials on real music, 6e-4 beat 2e-4 and 1.5e-3 beat both after one spike.
    ("VAETrainConfig", "demo"): dict(steps=20000, batch_size=16, segment_samples=65536, lr=8e-4,
                                     warmup_steps=200),
    ("VAETrainConfig", "sao"): dict(steps=500000, batch_size=8, segment_samples=65536, lr=1e-4,
                                    warmup_steps=1000, val_every=2000, checkpoint_every=2000),
    ("DiTTrainConfig", "tiny"): dict(steps=40, batch_size=4, lr=2e-3, warmup_steps=4, val_every=20,
                                     val_examples=4, log_every=5, checkpoint_every=20, ema_decay=0.9),
    ("DiTTrainConfig", "demo"): dict(steps=20000, batch_size=64, lr=5e-4, warmup_steps=300, weight_decay=0.01),
    ("DiTTrainConfig", "sao"): dict(steps=500000, batch_size=8, lr=5e-5, warmup_steps=2000, weight_decay=1e-3,
                                    ema_decay=0.9999, gradient_checkpointing=True, val_every=2000,
                                    checkpoint_every=2000),
}


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback gets: after every `log_every` steps, and after each validation."""

    stage: str
    step: int
    steps: int
    loss: float | None  # mean training loss since the last report
    lr: float
    elapsed_s: float
    val_loss: float | None = None


@dataclass(frozen=True)
class TrainResult:
    stage: str
    out_dir: Path
    step: int
    stopped: str  # "steps", "time", or what interrupted the run
    train_loss: float | None
    val_loss: float | None
    seconds: float  # of training loop in this call
    examples_per_s: float


ProgressCallback = Callable[[TrainProgress], None]


# --- Data -----------------------------------------------------------------------------------------

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
    """Every file of a folder, decoded once into memory (float16, [2, samples] at 44.1 kHz)."""

    names: list[str]  # paths relative to the data folder
    tracks: list[Tensor]
    holdout: list[str]
    # name -> (seconds into its original track, the original's length), for excerpts (manifest.json)
    placements: dict[str, tuple[float, float]] = field(default_factory=dict)

    def split(self, held_out: bool) -> tuple[list[str], list[Tensor]]:
        chosen = [(n, t) for n, t in zip(self.names, self.tracks) if (n in self.holdout) == held_out]
        return [n for n, _ in chosen], [t for _, t in chosen]

    def timing(self, held_out: bool) -> list[tuple[float, float]]:
        """(offset, track length) in seconds of each file of the split: a whole file sits at 0 of itself."""
        names, tracks = self.split(held_out)
        return [self.placements.get(n, (0.0, t.shape[-1] / SAMPLE_RATE)) for n, t in zip(names, tracks)]

    @property
    def seconds(self) -> float:
        return sum(t.shape[-1] for t in self.tracks) / SAMPLE_RATE


def _decode_half(path: str) -> np.ndarray:
    audio, _ = load_audio(path, sample_rate=SAMPLE_RATE, channels=2)
    return audio.numpy().astype(np.float16)


def read_manifest(data_dir: str | os.PathLike) -> dict[str, dict]:
    """The entries of the folder's manifest.json by file (relative path), or none without one."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return {entry["file"]: entry for entry in json.loads(path.read_text())["tracks"]}
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a corpus manifest ({error})") from error


def _decode_all(files: Sequence[Path], workers: int | None) -> list[np.ndarray]:
    """Decode in a pool of processes (one file each), unless the corpus is too short to be worth it."""
    if workers is None:  # starting a process costs seconds: only worth it for a real corpus
        seconds = sum(sf.info(str(p)).duration for p in files)
        workers = 1 if seconds < SMALL_CORPUS_SECONDS else os.cpu_count() or 1
    workers = min(len(files), workers)
    if workers == 1:
        return [_decode_half(str(p)) for p in files]
    # spawn, not fork: the parent may already hold CUDA or OpenMP threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_decode_half, map(str, files)))


def load_corpus(data_dir: str | os.PathLike, *, holdout: Sequence[str] | None = None, val_fraction: float = 0.15,
                workers: int | None = None) -> Corpus:
    """Decode every audio file under `data_dir`. Held out: `holdout` (names) if given, else the
    manifest's "holdout" files if the folder has a manifest.json, else the `holdout_names` rule."""
    files = audio_files(data_dir)
    names = [p.relative_to(data_dir).as_posix() for p in files]
    manifest = read_manifest(data_dir)
    placements = {n: (float(manifest[n]["offset_s"]), float(manifest[n]["track_seconds"]))
                  for n in names if n in manifest}
    if holdout:
        held_out = _match_holdout(names, holdout)
    elif manifest:
        held_out = [n for n in names if manifest.get(n, {}).get("split") == "holdout"]
    else:
        held_out = holdout_names(names, val_fraction)
    arrays = _decode_all(files, workers)
    return Corpus(names, [torch.from_numpy(a) for a in arrays], held_out, placements)


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

    def random_crops(self, batch: int, length: int, generator: torch.Generator) -> Crops:
        """Uniform over every crop position in the bank (so long tracks are seen in proportion)."""
        positions = (self.lengths - length + 1).clamp_min(1)
        track = torch.multinomial(positions.double(), batch, replacement=True, generator=generator)
        start = (torch.rand(batch, generator=generator, dtype=torch.float64) * positions[track]).long()
        return self.crops(track, start, length)

    def spread_crops(self, length: int, count: int) -> tuple[Tensor, Tensor]:
        """`count` fixed crop positions (track, start) spread evenly over the bank: the validation set."""
        positions = [(i, s) for i, n in enumerate(self.lengths.tolist()) for s in range(0, n - length + 1, length)]
        pick = np.linspace(0, len(positions) - 1, min(count, len(positions))).round().astype(int)
        track, start = zip(*(positions[i] for i in sorted(set(pick))))
        return torch.tensor(track), torch.tensor(start)


# --- Losses ---------------------------------------------------------------------------------------

def _magnitudes(x: Tensor, n_fft: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return (spec.real.square() + spec.imag.square() + 1e-8).sqrt()  # eps: finite gradient at zero


def stft_loss(pred: Tensor, target: Tensor, sizes: Sequence[int] = STFT_SIZES) -> Tensor:
    """Multi-resolution STFT loss on stereo [B, 2, N]: spectral convergence + log-magnitude L1, on
    left, right, mid and side (side errors are what make a stereo image smear), averaged over sizes."""
    with torch.autocast(pred.device.type, enabled=False):
        def channels(x: Tensor) -> Tensor:
            x = x.float()
            left, right = x[:, 0], x[:, 1]
            return torch.cat([left, right, (left + right) / 2, (left - right) / 2])

        pred, target = channels(pred), channels(target)
        total = pred.new_zeros(())
        for n_fft in sizes:
            p, t = _magnitudes(pred, n_fft), _magnitudes(target, n_fft)
            convergence = (t - p).norm(dim=(-2, -1)) / t.norm(dim=(-2, -1))
            log_magnitude = (t.log() - p.log()).abs().mean()
            total = total + convergence.mean() + log_magnitude
        return total / len(sizes)


def vae_loss(model: LatentDiffusion, audio: Tensor, config: VAETrainConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Reconstruction through a posterior sample, plus the KL term that keeps the latents near N(0, 1)."""
    latents, kl = model.encode(audio, sample=True, return_kl=True)
    decoded = model.decode(latents)
    spectral = stft_loss(decoded, audio)
    l1 = (decoded.float() - audio).abs().mean()
    loss = spectral + config.l1_weight * l1 + config.kl_weight * kl.float()
    return loss, {"stft": spectral.detach(), "l1": l1.detach(), "kl": kl.detach().float()}


def v_loss(model: LatentDiffusion, x0: Tensor, t: Tensor, noise: Tensor, crops: Crops) -> Tensor:
    """The diffusion objective: MSE between the network output at x_t and the schedule's target
    (v = alpha eps - sigma x0 for a "v" model), with the crops' timing conditioning."""
    schedule = model.schedule
    alpha = schedule.alpha(t).to(x0.dtype)[:, None, None]
    sigma = schedule.sigma(t).to(x0.dtype)[:, None, None]
    x_t = alpha * x0 + sigma * noise
    target = schedule.model_target(x0, noise, t)
    out = model.denoise(x_t, t, seconds_start=crops.seconds_start, seconds_total=crops.seconds_total)
    return F.mse_loss(out.float(), target.float())


def sample_timesteps(batch: int, sampler: str, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    if sampler == "uniform":
        return torch.rand(batch, device=device, generator=generator)
    if sampler == "logit_normal":
        return torch.sigmoid(torch.randn(batch, device=device, generator=generator))
    raise UserError(f"unknown timestep sampler {sampler!r}", hint="use 'uniform' or 'logit_normal'")


# --- The training loop shared by both stages --------------------------------------------------------

class EMA:
    """An exponential moving average of named parameters; its decay ramps up so early steps count less."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.shadow.values()), [p.float() for p in self.params.values()], 1 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in place of the trained ones, for validation and export."""
        trained = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(trained[name])


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then a cosine from lr down to lr / 10 as `progress` goes from 0 to 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


class _Clock:
    """Progress through a run: the larger of the step fraction and the time-budget fraction. A
    resumed run with a budget stretches what was left of the schedule over the new budget."""

    def __init__(self, config: TrainConfig, start_progress: float):
        self.steps, self.start_progress = config.steps, start_progress
        self.budget_s = config.max_minutes * 60 if config.max_minutes else None
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, step: int) -> float:
        by_steps = step / self.steps
        if self.budget_s is None:
            return by_steps
        by_time = self.start_progress + (1 - self.start_progress) * self.elapsed / self.budget_s
        return min(1.0, max(by_steps, by_time))

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed >= self.budget_s


@dataclass
class _Run:
    """One stage's training state: what is trained, how, where it is saved and what has been logged."""

    stage: str
    model: LatentDiffusion
    prefixes: tuple[str, ...]  # state_dict keys this stage trains
    config: TrainConfig
    out_dir: Path
    device: torch.device
    examples_per_step: int
    progress_callback: ProgressCallback | None
    ema: EMA | None = None
    step: int = 0
    progress: float = 0.0
    log: dict = field(default_factory=dict)

    def __post_init__(self):
        self.named_params = {n: p for n, p in self.model.named_parameters() if n.startswith(self.prefixes)}
        self.params = list(self.named_params.values())
        matrices = [p for p in self.params if p.ndim >= 2]  # weight decay on weights, not gains and biases
        others = [p for p in self.params if p.ndim < 2]
        betas = (0.8, 0.99) if self.stage == "vae" else (0.9, 0.99)  # (0.8, 0.99): Oobleck's own
        # fused: one kernel for the whole update instead of several per tensor (CUDA only)
        self.optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": self.config.weight_decay},
                                            {"params": others, "weight_decay": 0.0}],
                                           lr=self.config.lr, betas=betas, fused=self.device.type == "cuda")
        self.log.setdefault("history", [])
        self.log.setdefault("validation", [])

    def autocast(self):
        if self.config.mixed_precision and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def trained_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(self.prefixes)}

    def averaged(self):
        return self.ema.swapped_in() if self.ema else nullcontext()


def _save_checkpoint(run: _Run) -> None:
    state = {
        "stage": run.stage,
        "step": run.step,
        "progress": run.progress,
        "model_config": json.dumps(run.model.config.to_dict()),
        "trained": run.trained_state(),
        "optimizer": run.optimizer.state_dict(),
        "ema": run.ema.shadow if run.ema else {},
        "log": json.dumps(run.log),
    }
    write_atomically(run.out_dir / CHECKPOINT_FILE, lambda p: torch.save(state, p))


def _load_checkpoint(out_dir: Path, stage: str) -> dict:
    path = out_dir / CHECKPOINT_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("stage") != stage:
        raise UserError(f"{path} is a {state.get('stage')} checkpoint, not a {stage} one")
    return state


def _restore(run: _Run, state: dict) -> None:
    missing, unexpected = run.model.load_state_dict(state["trained"], strict=False)
    missing = [k for k in missing if k.startswith(run.prefixes)]
    if missing or unexpected:
        raise UserError(f"{run.out_dir / CHECKPOINT_FILE} does not match the model "
                        f"({(missing + unexpected)[0]} differs)")
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema and state["ema"]:
        run.ema.shadow = {name: s.to(run.device) for name, s in state["ema"].items()}
    run.step, run.progress = state["step"], state["progress"]
    earlier = json.loads(state["log"])  # keep its curves; this call's settings replace the old ones
    run.log.update(history=earlier["history"], validation=earlier["validation"],
                   resumed_at=earlier.get("resumed_at", []) + [run.step])




def _write_log(run: _Run) -> None:
    write_atomically(run.out_dir / LOG_FILE, lambda p: p.write_text(json.dumps(run.log, indent=1) + "\n"))


def _report(run: _Run, clock: _Clock, loss: float | None, val_loss: float | None = None) -> None:
    if run.progress_callback:
        lr = run.optimizer.param_groups[0]["lr"]
        run.progress_callback(TrainProgress(run.stage, run.step, run.config.steps, loss, lr, clock.elapsed, val_loss))


def _validate(run: _Run, validate: Callable[[], dict[str, float]], clock: _Clock) -> float | None:
    run.model.eval()
    with torch.no_grad(), run.autocast(), run.averaged():
        parts = validate()
    run.model.train()
    if not parts:
        return None
    run.log["validation"].append({"step": run.step, "elapsed_s": round(clock.elapsed, 2), **parts})
    _report(run, clock, None, parts["loss"])
    return parts["loss"]


def _train(run: _Run, step_loss: Callable[[int], tuple[Tensor, dict[str, Tensor]]],
           validate: Callable[[], dict[str, float]], export: Callable[[], None]) -> TrainResult:
    """Step until `steps` or the time budget; validate, log and checkpoint on the way. Whatever
    stops the run (the end, the budget, Ctrl-C, an error), what was trained is saved and exported."""
    config, clock = run.config, _Clock(run.config, run.progress)
    run.out_dir.mkdir(parents=True, exist_ok=True)  # only now: every check and all set-up are behind us
    torch.manual_seed(config.seed + run.step)  # noise draws: a resumed run does not replay old ones
    run.model.train()
    first_step, stopped = run.step, "steps"
    window: list[float] = []
    parts_sum: dict[str, Tensor] = {}
    bad_steps = 0
    try:
        while run.step < config.steps:
            if clock.out_of_time():
                stopped = "time"
                break
            run.progress = clock.progress(run.step)
            for group in run.optimizer.param_groups:
                group["lr"] = learning_rate(config, run.step, run.progress)
            with run.autocast():
                loss, parts = step_loss(run.step)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
            loss_value = loss.item()
            if not (math.isfinite(loss_value) and torch.isfinite(grad_norm)):
                bad_steps += 1  # a bf16 overflow now and then is skipped; a diverged run is stopped
                if bad_steps >= MAX_BAD_STEPS:
                    raise FloatingPointError(f"{bad_steps} non-finite losses in a row at step {run.step}")
                continue
            bad_steps = 0
            run.optimizer.step()
            if run.ema:
                run.ema.update(run.step)
            run.step += 1
            window.append(loss_value)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0) + v
            if run.step % config.log_every == 0:
                _log_window(run, clock, window, parts_sum, first_step)
                window, parts_sum = [], {}
            if run.step % config.val_every == 0:
                _validate(run, validate, clock)
                _write_log(run)
            if run.step % config.checkpoint_every == 0:
                _save_checkpoint(run)
    except BaseException as error:
        stopped = "interrupted" if isinstance(error, KeyboardInterrupt) else f"error: {type(error).__name__}: {error}"
        try:
            _finish(run, clock, stopped, first_step, export, validate=None)
        except Exception as save_error:  # report the first failure, not the one it caused
            error.add_note(f"saving what was trained also failed: {save_error!r}")
        raise
    if window:
        _log_window(run, clock, window, parts_sum, first_step)
    return _finish(run, clock, stopped, first_step, export, validate)


def _log_window(run: _Run, clock: _Clock, losses: list[float], parts: dict[str, Tensor], first_step: int) -> None:
    loss = sum(losses) / len(losses)
    entry = {"step": run.step, "elapsed_s": round(clock.elapsed, 2), "loss": loss,
             "lr": run.optimizer.param_groups[0]["lr"],
             "examples_per_s": round((run.step - first_step) * run.examples_per_step / max(clock.elapsed, 1e-9), 2)}
    entry.update({k: float(v) / len(losses) for k, v in parts.items()})
    run.log["history"].append(entry)
    _report(run, clock, loss)


def _finish(run: _Run, clock: _Clock, stopped: str, first_step: int, export: Callable[[], None],
            validate: Callable[[], dict[str, float]] | None) -> TrainResult:
    """Final validation (unless the run failed), checkpoint, log and exported weights."""
    seconds = clock.elapsed
    val_loss = _validate(run, validate, clock) if validate and run.step > first_step else None
    if val_loss is None and run.log["validation"]:
        val_loss = run.log["validation"][-1]["loss"]
    train_loss = run.log["history"][-1]["loss"] if run.log["history"] else None
    result = TrainResult(run.stage, run.out_dir, run.step, stopped, train_loss, val_loss, seconds,
                         (run.step - first_step) * run.examples_per_step / max(seconds, 1e-9))
    run.log["result"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    _save_checkpoint(run)
    export()
    _write_log(run)
    return result


# --- Stage 1: the VAE -----------------------------------------------------------------------------

def _device(device: str | torch.device | None) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once
    return device


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that cannot become a folder, before any work: a file, a path under a file,
    or a place we may not write."""
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == out_dir else f"is under {existing}, which is a file"
        raise UserError(f"--out {out_dir} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out_dir}: no permission to write in {existing}")


def _prepare(out_dir: Path, stage: str, resume: bool, init: str | os.PathLike | None) -> dict | None:
    """Check --out, and return the checkpoint to resume from if asked. Writes nothing: the folder
    is made together with its first file (see _train), so a run refused later leaves no trace."""
    check_out_dir(out_dir)
    if resume and init is not None:
        raise UserError("--resume continues the run in --out; init starts a new one from a model's weights: "
                        "pass one of them")
    has_checkpoint = (out_dir / CHECKPOINT_FILE).is_file()
    if resume and not has_checkpoint:
        raise UserError(f"nothing to resume: {out_dir / CHECKPOINT_FILE} does not exist")
    if has_checkpoint and not resume:
        raise UserError(f"{out_dir} already holds a training run",
                        hint="pass --resume to continue it, or choose another --out")
    return _load_checkpoint(out_dir, stage) if resume else None


def _start_from(model: LatentDiffusion, state: dict[str, Tensor], prefixes: tuple[str, ...],
                source: str | os.PathLike) -> None:
    """Copy the `prefixes` part of `state` (e.g. a shipped model's fp16 weights) into `model`,
    which must have exactly those tensors in those shapes."""
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    theirs = {k: v for k, v in state.items() if k.startswith(prefixes)}
    differs = sorted(k for k in ours.keys() | theirs.keys()
                     if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if differs:
        raise UserError(f"the weights in {source} do not fit this run's model ({differs[0]} differs)",
                        hint="start from a model of the same preset and VAE")
    with torch.no_grad():
        for key, value in theirs.items():
            ours[key].copy_(value)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _save_weights(state: dict[str, Tensor], path: Path) -> None:
    """safetensors, written atomically and with the permissions every other file gets (0644
    under the usual umask; safetensors itself creates 0600)."""
    def write(temporary: Path) -> None:
        save_file(state, str(temporary), metadata={"format": "pt"})
        os.chmod(temporary, 0o666 & ~_umask())

    write_atomically(path, write)


def _compiled(loss: Callable, config: TrainConfig, device: torch.device) -> Callable:
    """The loss through torch.compile when asked and on CUDA; elsewhere (where a C++ toolchain may
    be missing and the gain is small) the plain function."""
    return torch.compile(loss) if config.compile and device.type == "cuda" else loss


def _corpus(data: str | os.PathLike | Corpus, config: TrainConfig, holdout: Sequence[str] | None) -> Corpus:
    if isinstance(data, Corpus):
        return data
    return load_corpus(data, holdout=holdout, val_fraction=config.val_fraction)


def _data_log(corpus: Corpus, config: TrainConfig, device: torch.device, model_config: ModelConfig) -> dict:
    train_names, _ = corpus.split(held_out=False)
    return {"train_config": asdict(config), "model_config": model_config.to_dict(), "device": str(device),
            "corpus_seconds": round(corpus.seconds, 1), "train_files": train_names, "holdout_files": corpus.holdout}


def train_vae(data: str | os.PathLike | Corpus, out_dir: str | os.PathLike, config: VAETrainConfig | None = None, *,
              device: str | torch.device | None = None, resume: bool = False, holdout: Sequence[str] | None = None,
              progress: ProgressCallback | None = None, init: str | os.PathLike | None = None,
              model_config: ModelConfig | None = None) -> TrainResult:
    """Train the preset's VAE on random segments of the files under `data` (or a loaded Corpus).

    `init`: start from the VAE of this folder (a model folder, or a `train_vae` one) instead of
    random weights. `model_config`: train this model's VAE instead of the preset's (a variant of
    another compression, say; the preset still gives the training settings).

    Writes to `out_dir`: model_config.json (the preset's model), vae.safetensors (the VAE's weights,
    float32), checkpoint.pt (to resume) and train_log.json. `train_dit` reads this folder."""
    config = config or VAETrainConfig.for_preset("demo")
    out_dir, device = Path(out_dir), _device(device)
    checkpoint = _prepare(out_dir, "vae", resume, init)
    wanted = model_config or preset_config(config.preset)
    model_config = ModelConfig.from_dict(json.loads(checkpoint["model_config"])) if checkpoint else wanted
    if model_config.to_dict() != wanted.to_dict():
        raise UserError(f"{out_dir} was trained with another model than this run's (preset {config.preset!r})")
    ratio = model_config.autoencoder.downsampling_ratio
    if config.segment_samples % ratio:
        raise UserError(f"segment_samples must be a multiple of the VAE's {ratio} samples per latent frame")
    corpus = _corpus(data, config, holdout)
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    if init is not None:
        _start_from(model, load_vae(init)[1], VAE_PREFIXES, init)
    model.pretransform.requires_grad_(True)

    _, train_tracks = corpus.split(held_out=False)
    _, val_tracks = corpus.split(held_out=True)
    bank = TrackBank(train_tracks, SAMPLE_RATE, config.segment_samples, device, torch.float16)
    val_bank = TrackBank(val_tracks, SAMPLE_RATE, config.segment_samples, device, torch.float16) if val_tracks else None
    run = _Run("vae", model, VAE_PREFIXES, config, out_dir, device, config.batch_size, progress,
               log={"stage": "vae", **_data_log(corpus, config, device, model_config),
                    "init": None if init is None else str(init)})
    if checkpoint:
        _restore(run, checkpoint)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + run.step)
    loss_fn = _compiled(vae_loss, config, device)

    def step_loss(step: int) -> tuple[Tensor, dict[str, Tensor]]:
        audio = bank.random_crops(config.batch_size, config.segment_samples, generator).x
        # Polarity and channel order carry no musical meaning: flip both at random.
        sign = torch.randint(0, 2, (len(audio), 1, 1), generator=generator).to(device) * 2 - 1
        swap = torch.rand(len(audio), generator=generator).to(device) < 0.5
        audio = torch.where(swap[:, None, None], audio.flip(1), audio) * sign
        return loss_fn(model, audio, config)

    validate = _vae_validation(model, val_bank, config)

    def export() -> None:
        config_dict = model.config.to_dict()
        write_atomically(out_dir / CONFIG_FILE, lambda p: p.write_text(json.dumps(config_dict, indent=2) + "\n"))
        state = {k: v.detach().float().cpu().contiguous() for k, v in run.trained_state().items()}
        _save_weights(state, out_dir / VAE_WEIGHTS_FILE)

    return _train(run, step_loss, validate, export)


def _vae_validation(model: LatentDiffusion, bank: TrackBank | None, config: VAETrainConfig) -> Callable[[], dict[str, float]]:
    """Reconstruction loss of fixed held-out segments through the posterior mean (what editing uses)."""
    if bank is None:
        return dict
    track, start = bank.spread_crops(config.segment_samples, config.val_examples)

    def validate() -> dict[str, float]:
        totals = {"stft": 0.0, "l1": 0.0}
        for i in range(0, len(track), config.batch_size):
            audio = bank.crops(track[i:i + config.batch_size], start[i:i + config.batch_size], config.segment_samples).x
            decoded = model.decode(model.encode(audio))
            totals["stft"] += stft_loss(decoded, audio).item() * len(audio)
            totals["l1"] += (decoded.float() - audio).abs().mean().item() * len(audio)
        parts = {k: v / len(track) for k, v in totals.items()}
        return {"loss": parts["stft"] + config.l1_weight * parts["l1"], **parts}

    return validate


# --- Stage 2: the DiT -----------------------------------------------------------------------------

def load_vae(vae_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, Tensor]]:
    """The model config and the VAE weights (`pretransform.*`) of a `train_vae` folder, or of any
    complete model folder (so a new DiT can be trained on a published model's VAE)."""
    folder = Path(vae_dir)
    if (folder / VAE_WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        config = ModelConfig.from_json(folder / CONFIG_FILE)
        return config, load_file(str(folder / VAE_WEIGHTS_FILE), device=str(device))
    if (folder / "model.safetensors").is_file():
        model = load_model_folder(folder, device=device)
        return model.config, {k: v for k, v in model.state_dict().items() if k.startswith(VAE_PREFIXES)}
    raise UserError(f"{folder} holds no VAE", hint="pass the --out folder of `musicguide train vae`, or a model folder")


def compose_config(vae_config: ModelConfig, dit_config: ModelConfig, latent_scale: float = 1.0) -> ModelConfig:
    """The VAE (pretransform) of one config with the conditioning, DiT and window of another; the
    DiT's channels follow the VAE's latent size. `latent_scale` is stored as the pretransform scale."""
    data = dit_config.to_dict()
    data["model"]["pretransform"] = vae_config.to_dict()["model"]["pretransform"]
    data["model"]["pretransform"]["scale"] = float(latent_scale)
    latent_dim = vae_config.autoencoder.latent_dim
    data["model"]["diffusion"]["config"]["io_channels"] = latent_dim
    data["model"]["io_channels"] = latent_dim
    return ModelConfig.from_dict(data)


@torch.no_grad()
def encode_track(model: LatentDiffusion, audio: Tensor, chunk_frames: int = 2048, context_frames: int = 32) -> Tensor:
    """Latents [latent_channels, frames] of a whole track [2, N], encoded in chunks that each see
    `context_frames` of their neighbours (silence beyond the track's ends), so chunk edges look
    like the rest: the encoder is convolutional, and 32 frames exceed its receptive field.

    Every chunk of a track has the same length (a power of two for short tracks), so cuDNN tunes
    its convolutions for a handful of shapes instead of one per track."""
    ratio = model.downsampling_ratio
    frames = -(-audio.shape[-1] // ratio)
    chunk = min(chunk_frames, 1 << (frames - 1).bit_length())
    chunks = -(-frames // chunk)
    pad_end = (chunks * chunk + context_frames) * ratio - audio.shape[-1]
    audio = F.pad(audio.float(), (context_frames * ratio, pad_end))
    pieces = []
    for first in range(0, chunks * chunk, chunk):
        window = audio[None, :, first * ratio: (first + chunk + 2 * context_frames) * ratio]
        latents = model.encode(window.to(model.device))[0]
        pieces.append(latents[:, context_frames: context_frames + chunk].float())
    return torch.cat(pieces, dim=-1)[:, :frames]


def _encode_corpus(model: LatentDiffusion, corpus: Corpus, held_out: bool,
                   flip: bool) -> tuple[list[Tensor], list[tuple[float, float]]]:
    """The latents of one split's tracks (and of their left/right-swapped copies, with `flip`),
    with each track's timing."""
    _, tracks = corpus.split(held_out)
    timing = corpus.timing(held_out)
    latents = [encode_track(model, t) for t in tracks]
    if flip:
        return latents + [encode_track(model, t.flip(0)) for t in tracks], timing + timing
    return latents, timing


def train_dit(data: str | os.PathLike | Corpus, vae_dir: str | os.PathLike, out_dir: str | os.PathLike,
              config: DiTTrainConfig | None = None, *, device: str | torch.device | None = None, resume: bool = False,
              holdout: Sequence[str] | None = None, progress: ProgressCallback | None = None,
              export_dtype: torch.dtype = torch.float16, init: str | os.PathLike | None = None) -> TrainResult:
    """Train the preset's DiT on latents of the files under `data`, encoded once by the VAE in `vae_dir`.

    `init`: start from the DiT of this model folder (same preset and latent size) instead of
    random weights; its latent scale is not kept, since `vae_dir`'s VAE may have moved on.

    Writes to `out_dir` a complete model folder (model_config.json + model.safetensors with the VAE
    copied in and the EMA of the DiT, in `export_dtype`), plus checkpoint.pt and train_log.json.
    The pretransform scale is set to the latents' standard deviation, so the DiT sees unit-variance data."""
    config = config or DiTTrainConfig.for_preset("demo")
    out_dir, device = Path(out_dir), _device(device)
    checkpoint = _prepare(out_dir, "dit", resume, init)
    vae_config, vae_state = load_vae(vae_dir, device)
    initial = load_model_folder(init).state_dict() if init is not None else None
    corpus = _corpus(data, config, holdout)

    torch.manual_seed(config.seed)
    model = build_model(compose_config(vae_config, preset_config(config.preset))).to(device)
    _load_vae_weights(model, vae_state, vae_dir)
    train_latents, train_timing = _encode_corpus(model, corpus, held_out=False, flip=config.stereo_flip)
    val_latents, val_timing = _encode_corpus(model, corpus, held_out=True, flip=False)
    if checkpoint:
        model_config = ModelConfig.from_dict(json.loads(checkpoint["model_config"]))
        scale = model_config.autoencoder.scale  # the scale the DiT was trained with
        if compose_config(vae_config, preset_config(config.preset), scale).to_dict() != model_config.to_dict():
            raise UserError(f"{out_dir} was trained with another preset or VAE than this run's")
    else:
        scale = torch.cat([z.flatten() for z in train_latents]).std().item()
        model_config = compose_config(vae_config, preset_config(config.preset), scale)
    model.config, model.pretransform.scale = model_config, scale  # from now on encode() gives unit-variance latents
    if initial is not None:
        _start_from(model, initial, DIT_PREFIXES, init)
    else:
        _zero_init_branches(model)
    model.model.requires_grad_(True)
    model.conditioner.requires_grad_(True)
    model.set_gradient_checkpointing(config.gradient_checkpointing)

    window = config.window_frames or model.max_frames
    patch = model_config.diffusion.dit.patch_size
    rate = SAMPLE_RATE / model.downsampling_ratio
    bank = TrackBank([z / scale for z in train_latents], rate, window, device, timing=train_timing)
    val_bank = (TrackBank([z / scale for z in val_latents], rate, window, device, timing=val_timing)
                if val_latents else None)

    run = _Run("dit", model, DIT_PREFIXES, config, out_dir, device, config.batch_size, progress,
               log={"stage": "dit", **_data_log(corpus, config, device, model_config), "latent_scale": scale,
                    "vae_dir": str(vae_dir), "init": None if init is None else str(init),
                    "latent_frames": int(bank.lengths.sum())})
    run.ema = EMA(run.named_params, config.ema_decay)
    if checkpoint:
        _restore(run, checkpoint)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + run.step)
    loss_fn = _compiled(v_loss, config, device)

    def step_loss(step: int) -> tuple[Tensor, dict[str, Tensor]]:
        length = window
        if torch.rand((), generator=generator) < config.short_crops:  # 1/4 .. 7/8 of the window: few shapes
            length = window * int(torch.randint(2, 8, (), generator=generator)) // 8
        length = max(patch, length // patch * patch)
        crops = bank.random_crops(config.batch_size, length, generator)
        t = sample_timesteps(config.batch_size, config.timestep_sampler, device)
        return loss_fn(model, crops.x, t, torch.randn_like(crops.x), crops), {}

    validate = _dit_validation(model, val_bank, window, config)

    def export() -> None:
        with run.averaged():
            save_model_folder(model, out_dir, dtype=export_dtype)
        os.chmod(out_dir / "model.safetensors", 0o666 & ~_umask())  # safetensors creates it 0600

    return _train(run, step_loss, validate, export)


def _load_vae_weights(model: LatentDiffusion, vae_state: dict[str, Tensor], vae_dir: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(vae_state, strict=False)
    missing = [k for k in missing if k.startswith(VAE_PREFIXES)]
    if missing or unexpected:
        raise UserError(f"the VAE weights in {vae_dir} do not match its model_config.json "
                        f"({(missing + unexpected)[0]})")


def _zero_init_branches(model: LatentDiffusion) -> None:
    """Start every residual branch of the DiT at zero (the reference's zero_init_branch_outputs):
    the untrained network is then the identity plus embeddings, and early steps stay stable."""
    for block in model.model.model.transformer.layers:
        torch.nn.init.zeros_(block.self_attn.to_out.weight)
        torch.nn.init.zeros_(block.ff.ff[2].weight)
        if block.cross_attend:
            torch.nn.init.zeros_(block.cross_attn.to_out.weight)


def _dit_validation(model: LatentDiffusion, bank: TrackBank | None, window: int,
                    config: DiTTrainConfig) -> Callable[[], dict[str, float]]:
    """v-prediction loss on fixed held-out windows with fixed noise and evenly spread t, so that
    numbers from different steps (and runs) compare. Run with the EMA weights, which are exported."""
    if bank is None:
        return dict
    track, start = bank.spread_crops(window, config.val_examples)
    generator = torch.Generator().manual_seed(1234)
    noise = torch.randn((len(track), bank.data.shape[0], window), generator=generator)
    t = torch.linspace(0.02, 0.98, len(track))[torch.randperm(len(track), generator=generator)]

    def validate() -> dict[str, float]:
        total = 0.0
        for i in range(0, len(track), config.batch_size):
            part = slice(i, i + config.batch_size)
            crops = bank.crops(track[part], start[part], window)
            n = noise[part].to(crops.x.device)
            total += v_loss(model, crops.x, t[part].to(crops.x.device), n, crops).item() * len(n)
        return {"loss": total / len(track)}

    return validate


# --- Shipping the weights in parts -----------------------------------------------------------------

def split_weights(model_dir: str | os.PathLike, out_dir: str | os.PathLike, max_bytes: int = 16 << 20,
                  dtype: torch.dtype = torch.float16) -> list[Path]:
    """Cut a model folder's weights into `vae.safetensors` and `dit.safetensors` (or `dit-1`, `dit-2`,
    ... when a part would exceed `max_bytes`), in `dtype`. `merge_parts` puts them back together."""
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out, written = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for name, prefixes in (("vae", VAE_PREFIXES), ("dit", DIT_PREFIXES)):
        chunks = _chunks({k: v for k, v in state.items() if k.startswith(prefixes)}, max_bytes)
        for i, chunk in enumerate(chunks, start=1):
            path = out / (f"{name}.safetensors" if len(chunks) == 1 else f"{name}-{i}.safetensors")
            _save_weights(chunk, path)
            written.append(path)
    return written


def _chunks(state: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    """Consecutive groups of tensors whose files stay under max_bytes (a tensor larger than that
    gets a file of its own). The file header lists every tensor: about its name + 80 bytes each."""
    chunks: list[dict[str, Tensor]] = [{}]
    size = 1024
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size() + len(key) + 80
        if chunks[-1] and size + nbytes > max_bytes:
            chunks.append({})
            size = 1024
        chunks[-1][key] = tensor
        size += nbytes
    return chunks


def merge_parts(parts: Sequence[str | os.PathLike], config: str | os.PathLike, out_dir: str | os.PathLike,
                dtype: torch.dtype = torch.float16) -> Path:
    """One model folder from weight parts (e.g. `split_weights`' vae + dit files) and a
    model_config.json, checked by loading it back strictly."""
    state: dict[str, Tensor] = {}
    for part in parts:
        tensors = load_file(str(part))
        overlap = set(state) & set(tensors)
        if overlap:
            raise UserError(f"{part} repeats {sorted(overlap)[0]}, which an earlier part already holds")
        state.update(tensors)
    model_config = ModelConfig.from_json(config)
    with torch.device("meta"):
        model = LatentDiffusion(model_config)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise UserError(f"the parts do not make up the model in {config}: "
                        + (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"))
    model.load_state_dict(state, strict=True, assign=True)
    save_model_folder(model, out_dir, dtype=dtype)
    os.chmod(Path(out_dir) / "model.safetensors", 0o666 & ~_umask())  # safetensors creates it 0600
    load_model_folder(out_dir)  # fails loudly if the folder would not load
    return Path(out_dir)
