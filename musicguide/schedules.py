"""Noise schedules: how x_t mixes data and noise, and how to read x̂0 and ε̂ off a model output.

Every sampler in `sampling.py` is written against this small interface, so the same guided
DDIM/DDPM code drives a v-prediction cosine model (Stable Audio Open 1.0, the paper's models)
and a rectified-flow model (Stable Audio Open Small):

    x_t = alpha(t) * x0 + sigma(t) * eps,   t in [0, 1], t = 1 is pure noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def broadcast(t: Tensor | float, like: Tensor) -> Tensor:
    """A per-batch (or scalar) time as a tensor that broadcasts against `like`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim)) if t.ndim else t


@dataclass(frozen=True)
class VCosine:
    """v-prediction with alpha = cos(pi t / 2), sigma = sin(pi t / 2); model output v = alpha eps - sigma x0."""

    name: str = "v"

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.cos(torch.as_tensor(t, dtype=torch.float64) * math.pi / 2)

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sin(torch.as_tensor(t, dtype=torch.float64) * math.pi / 2)

    def x0_hat(self, x_t: Tensor, out: Tensor, t: Tensor | float) -> Tensor:
        a, s = broadcast(self.alpha(t), x_t), broadcast(self.sigma(t), x_t)
        return a * x_t - s * out

    def eps_hat(self, x_t: Tensor, out: Tensor, t: Tensor | float) -> Tensor:
        a, s = broadcast(self.alpha(t), x_t), broadcast(self.sigma(t), x_t)
        return s * x_t + a * out

    def model_target(self, x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """What the network is trained to output at time t (used by training)."""
        a, s = broadcast(self.alpha(t), x0), broadcast(self.sigma(t), x0)
        return a * eps - s * x0


@dataclass(frozen=True)
class LogSNRShift:
    """Stable Audio 3's sampling grid (stable-audio-3's LogSNRShift, as `build_schedule` applies it):
    t spaced evenly from t_max to 0, each mapped to sigmoid(−logSNR) with logSNR = end − t (end −
    start), then t[0] = t_max. start = anchor_logsnr − rate · log2(frames / anchor_length): with the
    published default rate 0 the grid does not depend on the length."""

    anchor_logsnr: float = -6.2
    logsnr_end: float = 2.0
    rate: float = 0.0
    anchor_length: float = 2000.0

    def times(self, steps: int, t_max: float, frames: int | None = None) -> Tensor:
        check_steps(steps)
        start = self.anchor_logsnr
        if self.rate:
            start -= self.rate * math.log2(max(frames or 1, 1) / self.anchor_length)
        # float32, as the reference computes it: the grid is then the reference's to the last bit
        t = torch.linspace(t_max, 0, steps + 1, dtype=torch.float32)
        shifted = torch.sigmoid(-(self.logsnr_end - t * (self.logsnr_end - start)))
        shifted = torch.where(t <= 0, torch.zeros_like(shifted), shifted)
        shifted = torch.where(t >= 1, torch.ones_like(shifted), shifted)
        shifted[0] = t_max
        return shifted.double()


@dataclass(frozen=True)
class RectifiedFlow:
    """alpha = 1 - t, sigma = t; model output is the velocity u = eps - x0 (stable-audio-tools'
    "rectified_flow" and "rf_denoiser" objectives, whose samplers read x̂0 = x_t - t u). `shift`:
    Stable Audio 3's own sampling grid; None, stable-audio-tools' (`rf_timesteps`)."""

    name: str = "rectified_flow"
    shift: LogSNRShift | None = None

    def alpha(self, t: Tensor | float) -> Tensor:
        return 1 - torch.as_tensor(t, dtype=torch.float64)

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def x0_hat(self, x_t: Tensor, out: Tensor, t: Tensor | float) -> Tensor:
        return x_t - broadcast(self.sigma(t), x_t) * out

    def eps_hat(self, x_t: Tensor, out: Tensor, t: Tensor | float) -> Tensor:
        return x_t + broadcast(self.alpha(t), x_t) * out

    def model_target(self, x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        return eps - x0


Schedule = VCosine | RectifiedFlow


def schedule_for(objective: str) -> Schedule:
    """The schedule of a model's `diffusion_objective` as written in its model_config.json."""
    if objective == "v":
        return VCosine()
    if objective in ("rectified_flow", "rf_denoiser"):
        return RectifiedFlow(name=objective)
    raise ValueError(f"unknown diffusion objective {objective!r} (expected 'v', 'rectified_flow' or 'rf_denoiser')")


def check_steps(steps: int) -> None:
    """A grid needs a step (the API refuses fewer with its own message first: `options.EditOptions`)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")


def timesteps(steps: int, t_max: float = 1.0) -> Tensor:
    """`steps + 1` times from t_max down to 0, evenly spaced (float64, so the schedule is exact)."""
    check_steps(steps)
    return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)


def rf_timesteps(steps: int, t_max: float = 1.0) -> Tensor:
    """stable-audio-tools' grid for rectified-flow models (`sample_rf`): t = sigmoid(−logSNR) with
    logSNR evenly spaced from log((1 − t_max)/t_max) (−6 at t_max = 1) up to 2, then t[0] = t_max
    and t[−1] = 0. It spends the steps where a flow model's output changes most, which matters for
    few-step distilled models such as Stable Audio Open Small (8 steps)."""
    check_steps(steps)
    logsnr_max = math.log((1 - t_max) / t_max + 1e-6) if t_max < 1 else -6.0
    t = torch.sigmoid(-torch.linspace(logsnr_max, 2.0, steps + 1, dtype=torch.float64))
    t[0], t[-1] = t_max, 0.0
    return t


def sampling_times(schedule: Schedule, steps: int, t_max: float = 1.0, frames: int | None = None) -> Tensor:
    """The time grid a model's own sampler uses: even in t for v-prediction, the logSNR grid for
    flows (Stable Audio 3's, which may depend on the latent `frames`, where the schedule has it)."""
    if not isinstance(schedule, RectifiedFlow):
        return timesteps(steps, t_max)
    return rf_timesteps(steps, t_max) if schedule.shift is None else schedule.shift.times(steps, t_max, frames)
