"""The samplers on a problem with an exact answer.

Data x0 ~ N(mu, Sigma) over 8 "latent frames" (one channel). For x_t = a x0 + s eps the posterior
mean E[x0 | x_t] is linear in x_t, so the ideal denoiser is exact, and for a mask A the conditional
x0_free | A x0 = y is a known Gaussian. With the exact likelihood -log p(y | x_t) as the loss and the
matching step size, guided DDIM/DDPM are exact conditional samplers: their samples must match the
conditional mean and variance up to Monte-Carlo error (N samples) and discretisation error (steps).
"""

import pytest
import torch

from musicguide.losses import l1, latent_loss
from musicguide.measurement import free_range_mask
from musicguide.sampling import guided_ddim, guided_ddpm, paste_known, predict
from musicguide.schedules import RectifiedFlow, VCosine, timesteps

T = 8
N = 4000
IDX = torch.arange(T, dtype=torch.float64)
SIGMA = 0.8 ** (IDX[:, None] - IDX[None, :]).abs()
MU = torch.linspace(-1, 1, T, dtype=torch.float64)
EYE = torch.eye(T, dtype=torch.float64)
MASK = free_range_mask(T, (2, T - 2))
Y = torch.tensor([0.5, -0.3, 0.2, 0.9], dtype=torch.float64).view(1, 1, 4)
SCHEDULES = [VCosine(), RectifiedFlow()]


class GaussianDenoiser:
    """The exact network output for a Gaussian prior; remembers the last t for the likelihood."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.t = None

    def x0(self, x_t, t):
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        gain = a * SIGMA @ torch.linalg.inv(a * a * SIGMA + s * s * EYE)
        return MU + (x_t - a * MU) @ gain.T

    def __call__(self, x, t):
        t0 = t[0].double()
        self.t = t0
        a, s = self.schedule.alpha(t0), self.schedule.sigma(t0)
        x0 = self.x0(x.squeeze(1), t0).unsqueeze(1)
        # invert the schedule's x0_hat: v = (a x - x0)/s for v-prediction, u = (x - x0)/s for flow
        return (a * x - x0) / s if self.schedule.name == "v" else (x - x0) / s

    def posterior_cov(self):
        a, s = self.schedule.alpha(self.t), self.schedule.sigma(self.t)
        return SIGMA - a * a * SIGMA @ torch.linalg.inv(a * a * SIGMA + s * s * EYE) @ SIGMA


def exact_conditional():
    k, u = MASK.known, ~MASK.known
    s_uk, s_kk = SIGMA[u][:, k], SIGMA[k][:, k]
    mean = MU[u] + s_uk @ torch.linalg.solve(s_kk, Y.view(-1) - MU[k])
    cov = SIGMA[u][:, u] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)
    return mean, cov


def exact_nll(den):
    """-log p(y | x_t) = ½ rᵀ (A P_t Aᵀ)⁻¹ r with r = y - A x̂0 and P_t = Cov[x0 | x_t]."""

    def loss(x0):
        c = den.posterior_cov()[MASK.known][:, MASK.known]
        r = (Y - MASK(x0)).squeeze(1)
        return 0.5 * (r @ torch.linalg.inv(c) * r).sum()

    return loss


def noise(seed=1):
    return torch.randn(N, 1, T, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def noised_start(schedule, t_max):
    """x_T: noise in the free frames, y noised to t_max in the known ones (as measurement.from_noise)."""
    z = noise()
    t = torch.as_tensor(t_max, dtype=torch.float64)
    return MASK.paste(z, schedule.alpha(t) * Y + schedule.sigma(t) * MASK(z))


def mc_tol(var, n=N, k=5.0):
    """k Monte-Carlo standard errors of a mean (var) and of a variance estimate (var·sqrt(2/n))."""
    return k * (var / n) ** 0.5, k * var * (2 / n) ** 0.5


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("sampler", ["ddim", "ddim_eta1", "ddpm"])
def test_unguided_samplers_reproduce_the_prior(schedule, sampler):
    den = GaussianDenoiser(schedule)
    g = torch.Generator().manual_seed(2)
    if sampler == "ddpm":
        out, _ = guided_ddpm(den, schedule, noise(), timesteps(100), generator=g)
    else:
        out, _ = guided_ddim(den, schedule, noise(), timesteps(100), eta=1.0 if sampler == "ddim_eta1" else 0.0, generator=g)
    out = out.squeeze(1)
    mean_tol, var_tol = mc_tol(1.0)
    assert (out.mean(0) - MU).abs().max() < mean_tol
    assert (torch.cov(out.T) - SIGMA).abs().max() < 2 * var_tol  # off-diagonals: 1+ρ² ≤ 2


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guided_sampler_with_exact_likelihood_samples_the_exact_posterior(schedule, sampler):
    den = GaussianDenoiser(schedule)
    a, s = schedule.alpha, schedule.sigma

    def xi_ddim(t, s_):  # guided DDIM == conditional-score DDIM (none needed on the last step)
        return a(s_) * s(t) / (a(t) * s(s_)) - 1 if s_ > 0 else torch.zeros((), dtype=torch.float64)

    def xi_ddpm(t, s_):  # the posterior mean's shift from x̂0 → E[x0 | x_t, y]
        return a(s_) * (s(t) ** 2 - (a(t) / a(s_)) ** 2 * s(s_) ** 2) / a(t)

    ts = timesteps(100, t_max=0.999)  # xi has 1/α_t: stay off α = 0
    x_start = noised_start(schedule, ts[0])
    kwargs = dict(loss=exact_nll(den), consistency=paste_known(MASK, Y, schedule))
    if sampler == "ddim":
        out, _ = guided_ddim(den, schedule, x_start, ts, guidance=xi_ddim, **kwargs)
    else:
        out, _ = guided_ddpm(den, schedule, x_start, ts, guidance=xi_ddpm, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(MASK(out), Y.expand(N, 1, 4)), "the known part must equal y exactly"
    free = out.squeeze(1)[:, ~MASK.known]
    mean, cov = exact_conditional()
    mean_tol, var_tol = mc_tol(cov.diag().max().item())
    assert (free.mean(0) - mean).abs().max() < mean_tol
    assert (free.var(0) - cov.diag()).abs().max() < var_tol


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_replacement_alone_is_not_the_posterior(schedule):
    """Pasting the known part without a gradient (RePaint-style) is biased on correlated data:
    this is why the guidance gradient matters, and it shows the test above can fail."""
    den = GaussianDenoiser(schedule)
    out, _ = guided_ddim(den, schedule, noised_start(schedule, 1.0), timesteps(100),
                      consistency=paste_known(MASK, Y, schedule))
    mean, cov = exact_conditional()
    mean_tol, _ = mc_tol(cov.diag().max().item())
    assert (out.squeeze(1)[:, ~MASK.known].mean(0) - mean).abs().max() > 2 * mean_tol


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_guidance_gradient_points_downhill(schedule):
    den = GaussianDenoiser(schedule)
    loss = latent_loss(MASK, Y, "l1")
    x = noise()[:16]
    for t in (0.9, 0.5, 0.1):
        tt = torch.tensor(t, dtype=torch.float64)
        p = predict(den, schedule, x, tt, loss)
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        moved = predict(den, schedule, x - 1e-3 * p.grad, tt)
        assert loss(moved.x0) < p.loss


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_larger_step_size_fits_the_measurement_better(schedule, sampler):
    """Constant ξ and an L1 loss, no data consistency: from the same noise, the fit to y improves
    monotonically with ξ (DDIM moves x by ξσ_sσ_t g, DDPM by ξ g, hence the different scales)."""
    den = GaussianDenoiser(schedule)
    loss = latent_loss(MASK, Y, "l1")
    z = noise()[:256]
    xis = [0.0, 0.03, 0.3, 1.0] if sampler == "ddim" else [0.0, 0.003, 0.03, 0.1]
    fits = []
    for xi in xis:
        if sampler == "ddim":
            out, _ = guided_ddim(den, schedule, z, timesteps(50), loss=loss, guidance=xi)
        else:
            out, _ = guided_ddpm(den, schedule, z, timesteps(50), loss=loss, guidance=xi, generator=torch.Generator().manual_seed(4))
        fits.append(l1(Y, MASK(out)).item())
    assert fits == sorted(fits, reverse=True) and len(set(fits)) == len(fits)
    assert fits[-1] < 0.1 * fits[0]


def test_callback_sees_every_step_and_the_loss():
    den = GaussianDenoiser(VCosine())
    seen = []
    guided_ddim(den, VCosine(), noise()[:4], timesteps(7), loss=latent_loss(MASK, Y), guidance=0.03, callback=seen.append)
    assert [s.i for s in seen] == list(range(7))
    assert all(s.loss is not None and s.steps == 7 for s in seen)
    assert seen[0].t == 1.0 and seen[-1].t == pytest.approx(1 / 7)


def test_seeded_sampling_is_bit_reproducible():
    den = GaussianDenoiser(VCosine())
    runs = [guided_ddpm(den, VCosine(), noise()[:8], timesteps(20), loss=latent_loss(MASK, Y), guidance=1e-3,
                        generator=torch.Generator().manual_seed(9))[0] for _ in range(2)]
    assert torch.equal(*runs)
