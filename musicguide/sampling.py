"""Guided samplers (the method note's Algorithms 1 and 2): small functions over a denoiser.

    denoiser(x_t, t) -> raw network output (v, or a flow velocity; `schedule` reads x̂0, ε̂ off it)
    loss(x̂0) -> scalar d(y, A(x̂0))      the guidance gradient is ∇_{x_t} of it, through the denoiser
    consistency                          optional data consistency (`PasteKnown`): after each step
                                         the known frames are y noised to level s, carrying the
                                         same mix of old and fresh noise as the free frames

Every sampler moves x_s by −ξ σ_t σ_s g per step (DDPM: −ξ g), downhill on d, and returns
(x at the last time, d at the last guided step or None).
No I/O, no model loading: the samplers see tensors and callables only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .schedules import Schedule, broadcast

Denoiser = Callable[[Tensor, Tensor], Tensor]
Loss = Callable[[Tensor], Tensor]
# The step size ξ: a constant (the paper's choice), or a function of the step (t, s) — with
# the exact likelihood as the loss, ξ(t, s) = α_s σ_t / (α_t σ_s) − 1 turns guided DDIM into exact
# conditional DDIM, which is how the tests check the sampler against a known posterior.
StepSize = float | Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class PasteKnown:
    """Data consistency for a mask A (RePaint-style, done so the known frames look like the rest).

    The known frames of x_t are y noised to level t: x_t = α_t y + σ_t n. `noise(x_t, t)` reads n
    back off them (exactly, not through the network, so neither the model's error nor the guidance
    gradient ever reaches them), and `paste(x_s, s, mixed)` writes α_s y + A(mixed) after a step,
    where `mixed` is the same combination of n and fresh noise that the sampler gave the free
    frames. Deterministic DDIM therefore keeps one noise draw in the known frames all the way down,
    exactly as DDIM on a known x0 would, and they never drift towards clean, rescaled y."""

    operator: object
    y: Tensor
    schedule: Schedule

    def noise(self, x_t: Tensor, t: Tensor) -> Tensor:
        known = self.operator(x_t)
        n = (known - broadcast(self.schedule.alpha(t), known) * self.y) / broadcast(self.schedule.sigma(t), known)
        return self.operator.transpose(n)

    def paste(self, x_s: Tensor, s: Tensor, mixed: Tensor) -> Tensor:
        return self.operator.paste(x_s, broadcast(self.schedule.alpha(s), self.y) * self.y + self.operator(mixed))


@dataclass
class Step:
    """What a callback sees after each step: step `i` of `steps`, in sampling run `run` of the
    `runs` that the edit makes (a long continuation or restyle samples one window after another)."""

    i: int
    steps: int
    t: float
    x: Tensor
    x0: Tensor
    loss: float | None
    run: int = 0
    runs: int = 1


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
                guidance: StepSize = 0.0, eta: float = 0.0, consistency: PasteKnown | None = None,
                generator: torch.Generator | None = None, callback: Callable[[Step], None] | None = None
                ) -> tuple[Tensor, float | None]:
    """DDIM from ts[0] down to ts[-1], guided: ε̂ ← ε̂ − ξ σ_t g keeps x̂0 and moves x_s by −ξ σ_s σ_t g,
    downhill on d. eta = 0 is deterministic; eta = 1 is ancestral sampling."""
    return _sample(denoiser, schedule, x, ts, loss, guidance, consistency, generator, callback,
                   lambda a_t, s_t, a_s, s_s: eta * _posterior_std(a_t, s_t, a_s, s_s))


def guided_pingpong(denoiser: Denoiser, schedule: Schedule, x: Tensor, ts: Tensor, *, loss: Loss | None = None,
                    guidance: StepSize = 0.0, consistency: PasteKnown | None = None,
                    generator: torch.Generator | None = None, callback: Callable[[Step], None] | None = None
                    ) -> tuple[Tensor, float | None]:
    """Ping-pong sampling (stable-audio-tools' `sample_flow_pingpong`, for distilled few-step models
    such as Stable Audio Open Small): x_s = α_s x̂0 + σ_s z with fresh noise every step. Guided, it
    moves x_s by −ξ σ_s σ_t g like DDIM (ε̂ does not enter, so the move goes to x̂0 instead)."""
    return _sample(denoiser, schedule, x, ts, loss, guidance, consistency, generator, callback,
                   lambda a_t, s_t, a_s, s_s: s_s, guide_x0=True)


def _sample(denoiser, schedule, x, ts, loss, guidance, consistency, generator, callback, fresh_std,
            guide_x0: bool = False) -> tuple[Tensor, float | None]:
    """The DDIM family: x_s = α_s x̂0 + sqrt(σ_s² − c²) ε̂ + c z, with c = fresh_std(α_t, σ_t, α_s, σ_s)."""
    use_loss, last = loss if guidance else None, None
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        p = predict(denoiser, schedule, x, t, use_loss)
        a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
        known_noise = consistency.noise(x, t) if consistency is not None else None
        c = torch.as_tensor(fresh_std(a_t, s_t, a_s, s_s), dtype=torch.float64)
        keep = (s_s**2 - c**2).clamp(min=0).sqrt()
        x0, eps = p.x0, p.eps
        if p.grad is not None:
            move = broadcast(_xi(guidance, t, s) * s_t, x) * p.grad  # ε̂ ← ε̂ − ξ σ_t g
            if guide_x0:  # no ε̂ in the update: the same −ξ σ_s σ_t g, carried by x̂0
                x0 = x0 - broadcast(s_s / a_s if a_s > 0 else 0.0, x) * move
            else:
                eps = eps - move
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if c > 0 and s > 0 else None
        x = broadcast(a_s, x) * x0 + broadcast(keep, x) * eps
        if z is not None:
            x = x + broadcast(c, x) * z
        if consistency is not None:
            mixed = broadcast(keep, x) * known_noise + (broadcast(c, x) * z if z is not None else 0)
            x = consistency.paste(x, s, mixed)
        last = None if p.loss is None else float(p.loss)
        if callback is not None:
            callback(Step(i, len(ts) - 1, float(t), x, p.x0, last))
    return x, last


def guided_ddpm(denoiser: Denoiser, schedule: Schedule, x: Tensor, ts: Tensor, *, loss: Loss | None = None,
                guidance: StepSize = 0.0, consistency: PasteKnown | None = None,
                generator: torch.Generator | None = None, callback: Callable[[Step], None] | None = None
                ) -> tuple[Tensor, float | None]:
    """Ancestral DDPM: x_s ~ q(x_s | x_t, x̂0), then x_s −= ξ g. With consistency the known frames
    are drawn from q(x_s | x_t, y), the exact posterior step of the forward process."""
    use_loss, last = loss if guidance else None, None
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        p = predict(denoiser, schedule, x, t, use_loss)
        a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
        known_noise = consistency.noise(x, t) if consistency is not None else None
        # q(x_t | x_s) = N(a_ts x_s, v_ts I) with a_ts = a_t/a_s, v_ts = s_t² − a_ts² s_s²; its posterior:
        a_ts = a_t / a_s
        v_ts = s_t**2 - a_ts**2 * s_s**2
        mean = broadcast(a_s * v_ts / s_t**2, x) * p.x0 + broadcast(a_ts * s_s**2 / s_t**2, x) * x
        std = _posterior_std(a_t, s_t, a_s, s_s)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + broadcast(std, x) * z if s > 0 else mean
        if p.grad is not None:
            x = x - broadcast(_xi(guidance, t, s), x) * p.grad
        if consistency is not None:
            # the posterior mean's coefficient on x_t is a_ts s_s²/s_t², so the old noise n enters
            # with weight a_ts s_s² / s_t = sqrt(σ_s² − std²): the same mix as a DDIM step with c = std
            mixed = broadcast(a_ts * s_s**2 / s_t, x) * known_noise + (broadcast(std, x) * z if s > 0 else 0)
            x = consistency.paste(x, s, mixed)
        last = None if p.loss is None else float(p.loss)
        if callback is not None:
            callback(Step(i, len(ts) - 1, float(t), x, p.x0, last))
    return x, last


def _xi(guidance: StepSize, t: Tensor, s: Tensor) -> Tensor:
    return torch.as_tensor(guidance(t, s) if callable(guidance) else guidance, dtype=torch.float64)


def _posterior_std(a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> Tensor:
    """Std of q(x_s | x_t, x0) for x_t = a x0 + s ε: sqrt(s_s²/s_t² · (s_t² − (a_t/a_s)² s_s²))."""
    return ((s_s**2 / s_t**2) * (s_t**2 - (a_t / a_s) ** 2 * s_s**2)).clamp(min=0).sqrt()


def paste_known(operator, y: Tensor, schedule: Schedule) -> PasteKnown:
    return PasteKnown(operator, y, schedule)


SAMPLERS = {"ddim": guided_ddim, "ddpm": guided_ddpm, "pingpong": guided_pingpong}
