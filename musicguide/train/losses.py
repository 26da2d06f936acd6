"""What each stage minimises: the VAE's reconstruction (+ KL), the DiT's v-prediction error.

Both are means over the examples of a batch, so the mean of N processes' losses on N equal parts
of a batch is the loss of the whole batch, and DDP's averaged gradients are its gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from musicguide.errors import UserError
from musicguide.evaluate.metrics import mel_distance_tensor
from musicguide.models.presets import SAMPLE_RATE
from musicguide.models.vae import vae_kl
from musicguide.train.data import Crops
from musicguide.train.settings import STFT_SIZES, VAETrainConfig

if TYPE_CHECKING:
    from musicguide.models.latent_diffusion import LatentDiffusion


def _magnitudes(x: Tensor, n_fft: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return (spec.real.square() + spec.imag.square() + 1e-8).sqrt()  # eps: finite gradient at zero


def _stereo_views(x: Tensor) -> Tensor:
    x = x.float()
    left, right = x[:, 0], x[:, 1]
    return torch.cat([left, right, (left + right) / 2, (left - right) / 2])


def stft_loss(pred: Tensor, target: Tensor, sizes: Sequence[int] = STFT_SIZES) -> Tensor:
    """Multi-resolution STFT loss on stereo [B, 2, N]: spectral convergence + log-magnitude L1, on
    left, right, mid and side (side errors are what make a stereo image smear), averaged over sizes."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _stereo_views(pred), _stereo_views(target)
        total = pred.new_zeros(())
        for n_fft in sizes:
            p, t = _magnitudes(pred, n_fft), _magnitudes(target, n_fft)
            convergence = (t - p).norm(dim=(-2, -1)) / t.norm(dim=(-2, -1))
            log_magnitude = (t.log() - p.log()).abs().mean()
            total = total + convergence.mean() + log_magnitude
        return total / len(sizes)


def vae_loss(model: LatentDiffusion, audio: Tensor, config: VAETrainConfig,
             noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Reconstruction through a posterior sample, plus the KL term that keeps the latents near N(0, 1).

    The sample is mean + noise * stdev (as `OobleckVAE.encode(sample=True)` draws it), with `noise`
    [B, latent_channels, frames] given by the caller so that each example's draw is its own."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and config.train_encoder):
        mean, scale = model.vae.encoder(audio.to(model.dtype)).chunk(2, dim=1)
    noise = torch.randn_like(mean) if noise is None else noise.to(mean.dtype)
    decoded = model.vae.decode(mean + noise * (F.softplus(scale) + 1e-4)).to(audio.dtype)
    kl = vae_kl(mean, scale).float()
    spectral = stft_loss(decoded, audio, config.stft_sizes)
    l1 = (decoded.float() - audio).abs().mean()
    loss = spectral + config.l1_weight * l1 + config.kl_weight * kl
    parts = {"stft": spectral.detach(), "l1": l1.detach(), "kl": kl.detach()}
    if config.mel_weight > 0:
        with torch.autocast(audio.device.type, enabled=False):
            mel = mel_distance_tensor(decoded.float(), audio.float(), SAMPLE_RATE)
        loss = loss + config.mel_weight * mel
        parts["mel"] = mel.detach()
    return loss, parts


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
