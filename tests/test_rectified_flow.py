"""Rectified flow as stable-audio-tools samples it: the logSNR time grid and ping-pong sampling.

Fast and self-contained; bench/conformance.py checks the same two against the reference itself.
The toy problem is the one of tests/test_sampling.py: Gaussian data x0 ~ N(mu, Sigma) over 8
latent frames, for which the ideal denoiser is exact and linear.
"""

import math

import pytest
import torch

from musicguide.losses import latent_loss
from musicguide.sampling import guided_pingpong
from musicguide.schedules import RectifiedFlow, VCosine, rf_timesteps, sampling_times, timesteps

from test_sampling import EYE, MASK, MU, SIGMA, T, Y

N = 256
FLOW = RectifiedFlow(name="rf_denoiser")


class GaussianDenoiser:
    """The exact flow velocity u = (x_t − E[x0 | x_t]) / t for the Gaussian prior."""

    def __call__(self, x, t):
        t0 = t[0].double()
        a, s = FLOW.alpha(t0), FLOW.sigma(t0)
        gain = a * SIGMA @ torch.linalg.inv(a * a * SIGMA + s * s * EYE)
        x0 = (MU + (x.squeeze(1) - a * MU) @ gain.T).unsqueeze(1)
        return (x - x0) / s


def noise(seed=1):
    return torch.randn(N, 1, T, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def pingpong(x, ts, seed):
    return guided_pingpong(GaussianDenoiser(), FLOW, x, ts, generator=torch.Generator().manual_seed(seed))[0]


@pytest.mark.parametrize("t_max", [1.0, 0.7])
def test_rf_timesteps_is_the_reference_logsnr_grid(t_max):
    steps = 8
    ts = rf_timesteps(steps, t_max)
    lo = -6.0 if t_max == 1.0 else math.log((1 - t_max) / t_max + 1e-6)
    # sample_rf: t = sigmoid(−logSNR), logSNR evenly spaced from lo to 2, then the ends pinned
    closed = [t_max] + [1 / (1 + math.exp(lo + (2 - lo) * i / steps)) for i in range(1, steps)] + [0.0]
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert ts[0].item() == t_max and ts[-1].item() == 0.0
    assert (ts[1:] < ts[:-1]).all()
    assert torch.allclose(ts, torch.tensor(closed, dtype=torch.float64), rtol=1e-12, atol=0)


def test_the_grid_spends_its_steps_near_the_data_unlike_the_uniform_one():
    ts = rf_timesteps(8)
    assert ts[-2].item() == pytest.approx(1 / (1 + math.exp(1.0)))  # logSNR 1 before the last step
    assert (ts - timesteps(8)).abs().max() > 0.3


def test_sampling_times_picks_each_models_own_grid():
    assert torch.equal(sampling_times(FLOW, 8, 1.0), rf_timesteps(8, 1.0))
    assert torch.equal(sampling_times(VCosine(), 8, 0.5), timesteps(8, 0.5))


def test_unguided_pingpong_is_the_reference_update_and_reproducible():
    ts = rf_timesteps(8)
    out = pingpong(noise(), ts, seed=7)
    assert torch.equal(out, pingpong(noise(), ts, seed=7)), "same seed, same sample, bit for bit"
    assert not torch.allclose(out, pingpong(noise(), ts, seed=8)), "the generator must drive the fresh noise"

    # stable-audio-tools' sample_flow_pingpong, written out: x̂0 = x − t u, x ← (1 − s) x̂0 + s z
    g, x, den = torch.Generator().manual_seed(7), noise(), GaussianDenoiser()
    for t, s in zip(ts[:-1], ts[1:]):
        x0 = x - t * den(x, t.expand(N))
        x = (1 - s) * x0 + (s * torch.randn(x.shape, generator=g, dtype=x.dtype) if s > 0 else 0)
    assert torch.allclose(out, x, rtol=0, atol=1e-12)


def test_guided_pingpong_moves_the_sample_toward_the_measurement():
    # ξ of order 1: the move −ξ σ_s σ_t g bites only on the grid's last steps, where x̂0 depends on
    # x_t strongly but σ_s σ_t ≤ 0.2 (and the last step, s = 0, does not move at all)
    ts = rf_timesteps(8)
    misfit = []
    for xi in (0.0, 0.5, 1.0):
        out, _ = guided_pingpong(GaussianDenoiser(), FLOW, noise(), ts, loss=latent_loss(MASK, Y), guidance=xi,
                              generator=torch.Generator().manual_seed(7))
        assert torch.isfinite(out).all()
        misfit.append((MASK(out) - Y).abs().mean().item())
    assert misfit[0] > misfit[1] > misfit[2], misfit
    assert misfit[2] < 0.8 * misfit[0], misfit
