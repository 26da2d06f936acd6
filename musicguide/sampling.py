"""Guided samplers (the method note's Algorithms 1 and 2): small functions over a denoiser.

    denoiser(x_t, t) -> raw network output (v, or a flow velocity; `schedule` reads x̂0, ε̂ off it)
    loss(x̂0) -> scalar d(y, A(x̂0))      the guidance gradient is ∇_{x_t} of it, through the denoiser
    consistency(x_s, t, noise) -> x_s    optional data consistency: paste the known part, noised to s

No I/O, no model loading: the samplers see tensors and callables only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from .schedules import Schedule, _bcast

Denoiser = Callable[[Tensor, Tensor], Tensor]
Loss = Callable[[Tensor], Tensor]
# The step size ξ: a constant (the paper's choice), or a function of the step (t, s) — with
# the exact likelihood as the loss, ξ(t, s) = α_s σ_t / (α_t σ_s) − 1 turns guided DDIM into exact
# conditional DDIM, which is how the tests check the sampler against a known posterior.
StepSize = float | Callable[[Tensor, Tensor], Tensor]


class Consistency(Protocol):
    def __call__(self, x_s: Tensor, s: Tensor, noise: Tensor) -> Tensor: ...


@dataclass
class Step:
    """What a callback sees after each step."""

    i: int
    steps: int
    t: float
    x: Tensor
    x0: Tensor
    loss: float | None


@dataclass
class Prediction:
    x0: Tensor
    eps: Tensor
    grad: Tensor | None
    loss: Tensor | None


def predict(denoiser: Denoiser, schedule: Schedule, x: Tensor, t: Tensor, loss: Loss | None = None) -> Prediction:
    """x̂0 and ε̂ at (x, t) and, with a loss, g = ∇_x d(y, A(x̂0(x))) taken through the denoiser."""
    tb = t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    if loss is None:
        with torch.no_grad():
            out = denoiser(x, tb)
            return Prediction(schedule.x0_hat(x, out, t), schedule.eps_hat(x, out, t), None, None)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        out = denoiser(x_in, tb)
        x0 = schedule.x0_hat(x_in, out, t)
        d = loss(x0)
        (grad,) = torch.autograd.grad(d, x_in)
    out, x0 = out.detach(), x0.detach()
    return Prediction(x0, schedule.eps_hat(x, out, t), grad, d.detach())


def guided_ddim(denoiser: Denoiser, schedule: Schedule, x: Tensor, ts: Tensor, *, loss: Loss | None = None,
                guidance: StepSize = 0.0, eta: float = 0.0, consistency: Consistency | None = None,
                generator: torch.Generator | None = None, callback: Callable[[Step], None] | None = None) -> Tensor:
    """DDIM from ts[0] down to ts[-1], guided: ε̂ ← ε̂ − ξ σ_t g keeps x̂0 and moves x_s by −ξ σ_s σ_t g,
    downhill on d. eta = 0 is deterministic; eta = 1 is ancestral sampling."""
    use_loss = loss if guidance else None
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        p = predict(denoiser, schedule, x, t, use_loss)
        a_s, s_s = schedule.alpha(s), schedule.sigma(s)
        a_t, s_t = schedule.alpha(t), schedule.sigma(t)
        eps = p.eps if p.grad is None else p.eps - _bcast(_xi(guidance, t, s) * s_t, x) * p.grad
        c = eta * _posterior_std(a_t, s_t, a_s, s_s)
        noise_scale = (s_s**2 - c**2).clamp(min=0).sqrt()
        x = _bcast(a_s, x) * p.x0 + _bcast(noise_scale, x) * eps
        if eta and s > 0:
            x = x + _bcast(c, x) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if consistency is not None:
            x = consistency(x, s, eps)
        if callback is not None:
            callback(Step(i, len(ts) - 1, float(t), x, p.x0, None if p.loss is None else float(p.loss)))
    return x


def guided_ddpm(denoiser: Denoiser, schedule: Schedule, x: Tensor, ts: Tensor, *, loss: Loss | None = None,
                guidance: StepSize = 0.0, consistency: Consistency | None = None,
                generator: torch.Generator | None = None, callback: Callable[[Step], None] | None = None) -> Tensor:
    """Ancestral DDPM: x_s ~ q(x_s | x_t, x̂0), then x_s −= ξ g."""
    use_loss = loss if guidance else None
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        p = predict(denoiser, schedule, x, t, use_loss)
        a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
        # q(x_t | x_s) = N(a_ts x_s, v_ts I) with a_ts = a_t/a_s, v_ts = s_t² − a_ts² s_s²; its posterior:
        a_ts = a_t / a_s
        v_ts = s_t**2 - a_ts**2 * s_s**2
        mean = _bcast(a_s * v_ts / s_t**2, x) * p.x0 + _bcast(a_ts * s_s**2 / s_t**2, x) * x
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + _bcast(_posterior_std(a_t, s_t, a_s, s_s), x) * z if s > 0 else mean
        if p.grad is not None:
            x = x - _bcast(_xi(guidance, t, s), x) * p.grad
        if consistency is not None:
            x = consistency(x, s, z)
        if callback is not None:
            callback(Step(i, len(ts) - 1, float(t), x, p.x0, None if p.loss is None else float(p.loss)))
    return x


def _xi(guidance: StepSize, t: Tensor, s: Tensor) -> Tensor:
    return torch.as_tensor(guidance(t, s) if callable(guidance) else guidance, dtype=torch.float64)


def _posterior_std(a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> Tensor:
    """Std of q(x_s | x_t, x0) for x_t = a x0 + s ε: sqrt(s_s²/s_t² · (s_t² − (a_t/a_s)² s_s²))."""
    return ((s_s**2 / s_t**2) * (s_t**2 - (a_t / a_s) ** 2 * s_s**2)).clamp(min=0).sqrt()


def paste_known(operator, y: Tensor, schedule: Schedule) -> Consistency:
    """Data consistency for a mask: the known part of x_s is y noised to level s with the step's
    own noise (ε̂ for DDIM, so the trajectory stays deterministic; the fresh z for DDPM). At s = 0
    this is y exactly."""

    def consistency(x_s: Tensor, s: Tensor, noise: Tensor) -> Tensor:
        known = _bcast(schedule.alpha(s), y) * y + _bcast(schedule.sigma(s), y) * operator(noise)
        return operator.paste(x_s, known)

    return consistency


SAMPLERS = {"ddim": guided_ddim, "ddpm": guided_ddpm}
