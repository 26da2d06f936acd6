"""What a training run is told: the settings of each stage, checked when made, and what it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from musicguide.errors import UserError
from musicguide.models.presets import PRESETS, check_preset, is_whole

LOG_FILE = "train_log.json"
TIMESTEP_SAMPLERS = ("uniform", "logit_normal")
MAX_BAD_STEPS = 50  # consecutive non-finite losses before a run gives up

# How a setting is named in messages: its command-line option where it has one.
_OPTIONS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "max_minutes": "--max-minutes"}


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    """What both stages share. `steps` and `max_minutes` both stop a run; the learning rate follows
    a cosine over whichever runs out first.

    `batch_size` is the GLOBAL batch: under torchrun each of the N processes takes batch_size / N
    examples of every step (N must divide it), and the gradients are averaged, so a run does the
    same optimisation whatever N is, with the same learning rate (docs/scaling.md)."""

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
        check_preset(self.preset)
        for name in ("steps", "batch_size", "val_every", "val_examples", "log_every", "checkpoint_every"):
            self._require(name, is_whole(getattr(self, name), 1), "a whole number of at least 1")
        self._require("warmup_steps", is_whole(self.warmup_steps, 0), "a whole number of at least 0")
        self._require("seed", is_whole(self.seed, 0) and self.seed < 2**32, "a whole number in [0, 2^32)")
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


# Window sizes of the spectral loss (75 % overlap), as stable-audio-tools uses for Oobleck minus
# its 32-sample one: large windows resolve pitch, small ones transients.
STFT_SIZES = (2048, 1024, 512, 256, 128, 64)
# With 4096 and 8192 as well (5.4 Hz bins at 8192, where 2048's are 21.5 Hz): the decoder fine-tuning
# of issue 29 uses them, as the experiment in ../shared/docs/vae-round-trip.md did. On a toy check
# they did not make a 43 Hz comb cost more than equal-energy noise; what removed the buzz is the
# decoder's upsampling (docs/training.md, "The decoder's buzz").
LONG_STFT_SIZES = (8192, 4096, *STFT_SIZES)


@dataclass(frozen=True)
class VAETrainConfig(TrainConfig):
    segment_samples: int = 65536  # 1.49 s: longer than the largest STFT window and the receptive field
    l1_weight: float = 1.0
    kl_weight: float = 1e-4  # the family's weight: a light pull toward N(0, 1) that keeps latents smooth
    stft_sizes: tuple[int, ...] = STFT_SIZES
    # False: train the decoder alone, on the frozen encoder's latents, so that a DiT trained on them
    # stays valid.
    train_encoder: bool = True
    # Weight of the evaluation's MR (DAC's multi-resolution log-mel L1, evaluate.metrics) as a loss
    # term, as DAC trains with it: the log-mel bands weigh the low end as the ear and MR do.
    mel_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self._require("segment_samples", is_whole(self.segment_samples, 1), "a whole number of at least 1")
        for name in ("l1_weight", "kl_weight", "mel_weight"):
            self._require(name, _is_finite(getattr(self, name)) and getattr(self, name) >= 0, "a finite number >= 0")
        sizes = self.stft_sizes
        self._require("stft_sizes", isinstance(sizes, tuple) and len(sizes) > 0
                      and all(is_whole(n, 16) and n & (n - 1) == 0 and n <= self.segment_samples for n in sizes),
                      "powers of two from 16 to segment_samples")
        self._require("train_encoder", isinstance(self.train_encoder, bool), "True or False")


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
        self._require("window_frames", self.window_frames is None or is_whole(self.window_frames, 1),
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
