"""An edit's options as a user gives them (the CLI's flags, the API's keywords), each with its
range, and what they choose: the sampler settings, the device and number format, and the inputs'
headers. Imports nothing heavy at the top: the CLI builds its parser from here."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import BadArgument, UserError
from .timespec import check_seconds

MAX_SEED = 2**32 - 1  # continue and evaluate add chunk/clip indices to it; torch takes up to 2**64 - 1
MAX_STEPS = 10_000
MAX_VARIATIONS = 256
MAX_CFG = 100.0
# the beat grid's options, for edits whose times may be bars
BEAT_OPTIONS = ("bpm", "downbeat", "beats_per_bar", "snap")


@dataclass(frozen=True)
class EditOptions:
    """The options every edit takes, by the names the API takes them as keywords (the CLI's flags
    are the same names). Where and how a result is written, and the model, device and precision,
    are not an edit's: the Editor holds the model, and `Result.save` or the CLI write."""

    steps: int = 50
    guidance: float | None = None
    sampler: str = "auto"
    eta: float = 0.0
    seed: int | None = None
    variations: int = 1
    loss_space: str = "latent"
    consistency: bool = True
    context: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg: float | None = None

    def check(self) -> None:
        """Refuse bad values before any work: every number has a range."""
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise BadArgument(f"`seed` must be a whole number from 0 to {MAX_SEED}, got {_short(self.seed)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise BadArgument(f"`steps` must be from 1 to {MAX_STEPS}, got {_short(self.steps)}")
        if not 1 <= self.variations <= MAX_VARIATIONS:
            raise BadArgument(f"`variations` must be from 1 to {MAX_VARIATIONS}, got {_short(self.variations)}")
        if self.context is not None and not check_seconds(self.context, "`context`") > 0:
            raise BadArgument(f"`context` must be a positive number of seconds, got {self.context:g}")
        if self.prompt is None and (self.negative_prompt is not None or self.cfg is not None):
            raise BadArgument("`negative_prompt` and `cfg` need `prompt`")
        if self.cfg is not None and not (math.isfinite(self.cfg) and 0 <= self.cfg <= MAX_CFG):
            raise BadArgument(f"`cfg` must be a number from 0 to {MAX_CFG:g}, got {self.cfg:g}")
        if self.eta and self.sampler in ("ddpm", "pingpong"):
            raise BadArgument(f"`eta` applies to the ddim sampler only; {self.sampler} draws fresh noise every step",
                            hint="drop `eta`, or use `sampler` ddim")


# the keyword arguments of every Editor method, besides its own
EDIT_OPTIONS = tuple(f.name for f in fields(EditOptions))


def check_strength(strength: float, what: str = "`strength`") -> float:
    """How much noise a start holds: 0 < k ≤ 1 (the one check)."""
    if not 0 < strength <= 1:
        raise BadArgument(f"{what} must be in (0, 1], got {strength}")
    return strength


def check_style_target(like: list, toward: list, away_from: list) -> None:
    """A restyle needs something to steer toward (the one check; the CLI calls it before any work)."""
    if not (like or toward or away_from):
        raise BadArgument("restyle needs a target: `like` CLIP, `toward` TAG or `away_from` TAG")


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}…({len(text)} digits)"


def settings_for(common: EditOptions):
    from .edit import SamplerSettings

    seed = common.seed if common.seed is not None else secrets.randbelow(2**31)
    return SamplerSettings(sampler=common.sampler, steps=common.steps, guidance=common.guidance, eta=common.eta,
                           loss_space=common.loss_space, consistency=common.consistency, seed=seed)


def probe_input(path: Path):
    """Read a song's header (not its audio): readable, not empty, at least a second long."""
    from .audio import sound_info, open_sound

    with open_sound(path) as sound:
        info = sound_info(path, sound)
    if info.frames < info.sample_rate:
        raise UserError(f"{path} is shorter than one second; give the model some music to work with")
    return info


def pick_device(choice: str):
    import torch

    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here", hint="use --device cpu")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here", hint="use --device cpu")
    return torch.device(choice)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_dtype(precision: str, device):
    """--precision: auto is bf16 on CUDA cards that have it, else fp16 on CUDA, and fp32 on CPU and
    MPS (their half-precision kernels are slow or missing). The sampler's own arithmetic stays in
    fp32/fp64 either way: the model computes in its dtype and answers in the caller's."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
