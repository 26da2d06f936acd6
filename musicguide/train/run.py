"""One stage's training state: the model and what of it is trained, the optimizer, the EMA, the
log. The loop (`loop.py`) advances it; checkpoints (`checkpoint.py`) save and restore it."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the run holds what its stage built
    from musicguide.distributed import World
    from musicguide.models.latent_diffusion import LatentDiffusion
    from musicguide.train.settings import ProgressCallback, TrainConfig

# The parts of a step the loop times apart (data, forward, backward, optimizer).
PHASES = ("data", "forward", "backward", "optimizer")


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


@dataclass
class TrainingRun:
    """One stage's training state: what is trained, how, where it is saved and what has been logged."""

    stage: str
    model: LatentDiffusion
    prefixes: tuple[str, ...]  # state_dict keys this stage trains
    config: TrainConfig
    out_dir: Path
    device: torch.device
    world: World
    progress_callback: ProgressCallback | None
    ema: EMA | None = None
    step: int = 0
    progress: float = 0.0
    bad_steps: int = 0
    log: dict = field(default_factory=dict)
    first_step: int = 0  # of this call: a resumed run starts past 0
    phase_seconds: dict[str, list[float]] = field(default_factory=lambda: {phase: [] for phase in PHASES})

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

    @property
    def examples_per_step(self) -> int:
        return self.config.batch_size  # global: all processes together

    def autocast(self):
        if self.config.mixed_precision and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def trained_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(self.prefixes)}

    def averaged(self):
        return self.ema.swapped_in() if self.ema else nullcontext()
