"""The Oobleck variational autoencoder of Stable Audio (stable-audio-tools' OobleckEncoder/Decoder).

    audio [B, 2, N] --encoder--> [B, 2 * latent_dim, N / ratio] --VAE bottleneck--> latents [B, latent_dim, N / ratio]
    latents --decoder--> audio

The encoder is a stack of blocks (three dilated residual units, then a strided convolution); the
decoder mirrors it with transposed convolutions. Every convolution is weight-normalised and every
nonlinearity is a Snake (or ELU where a config turns Snake off). Module and parameter names follow
the reference exactly (`layers.<i>.layers.<j>.weight_g`, ...), so its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicguide.models.config import AutoencoderConfig, OobleckDecoderConfig, OobleckEncoderConfig
from musicguide.models.layers import WNConv1d, WNConvTranspose1d


class Snake(nn.Module):
    """x + sin^2(alpha x) / beta per channel: a periodic nonlinearity that suits waveforms.

    The reference (BigVGAN's SnakeBeta) stores log alpha and log beta when `logscale` is set, as
    Oobleck always does, so that the stored parameters can be zero-initialised."""

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__()
        self.logscale = logscale
        initial = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(initial.clone())
        self.beta = nn.Parameter(initial.clone())

    def forward(self, x: Tensor) -> Tensor:
        alpha, beta = self.alpha[:, None], self.beta[:, None]
        if self.logscale:
            alpha, beta = alpha.exp(), beta.exp()
        # The reciprocal is taken on the per-channel vector, not the signal: cheaper, and the
        # reference's order of operations, so results agree to the last bit.
        scale = 1.0 / (beta + 1e-9)
        if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
            return x + scale * torch.sin(x * alpha).pow(2)
        # Without a graph to keep (encoding, decoding): the same operations on one temporary the
        # size of the signal instead of four, in place. Products and sums are taken in the other
        # order, which IEEE arithmetic leaves bit for bit the same; about a tenth of a decode.
        wave = x * alpha
        return wave.sin_().square_().mul_(scale).add_(x)


def activation(channels: int, use_snake: bool) -> nn.Module:
    return Snake(channels) if use_snake else nn.ELU()


class ResidualUnit(nn.Module):
    """x + conv1x1(act(conv7_dilated(act(x)))): dilations 1, 3, 9 in a block widen the receptive field."""

    def __init__(self, channels: int, dilation: int, use_snake: bool):
        super().__init__()
        self.layers = nn.Sequential(
            activation(channels, use_snake),
            WNConv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            activation(channels, use_snake),
            WNConv1d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """Three residual units, then a strided convolution that divides the rate by `stride`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool):
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(in_channels, 1, use_snake),
            ResidualUnit(in_channels, 3, use_snake),
            ResidualUnit(in_channels, 9, use_snake),
            activation(in_channels, use_snake),
            WNConv1d(in_channels, out_channels, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class RepeatAndPad(nn.Module):
    """Each sample `stride` times (nearest-neighbour upsampling), then zeros for a convolution of
    kernel 2 x stride to keep the length: stride - 1 on the left, stride on the right, as torch's
    padding="same" pads an even kernel (the reference's choice), without its warning."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x.repeat_interleave(self.stride, dim=-1), (self.stride - 1, self.stride))


def nearest_upsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """A repeat, then a bias-free convolution of kernel 2 x stride, as the reference's
    `use_nearest_upsample` builds it and with its parameter names (`1.weight_g`, ...).

    A constant input stays constant, so the stage cannot add a pattern that repeats every input
    sample. A transposed convolution does: its kernel of twice its stride overlaps itself unevenly,
    and its kernel and bias land on every output period alike; chained over the stages, that is a
    buzz at the latent frame rate."""
    return nn.Sequential(RepeatAndPad(stride), WNConv1d(in_channels, out_channels, 2 * stride, bias=False))


class DecoderBlock(nn.Module):
    """An upsampling that multiplies the rate by `stride` (a transposed convolution, or a repeat and
    a convolution), then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool,
                 use_nearest_upsample: bool = False):
        super().__init__()
        upsample = (nearest_upsample(in_channels, out_channels, stride) if use_nearest_upsample else
                    WNConvTranspose1d(in_channels, out_channels, 2 * stride, stride=stride,
                                      padding=math.ceil(stride / 2)))
        self.layers = nn.Sequential(
            activation(in_channels, use_snake),
            upsample,
            ResidualUnit(out_channels, 1, use_snake),
            ResidualUnit(out_channels, 3, use_snake),
            ResidualUnit(out_channels, 9, use_snake),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class OobleckEncoder(nn.Module):
    def __init__(self, cfg: OobleckEncoderConfig):
        super().__init__()
        widths = [cfg.channels] + [m * cfg.channels for m in cfg.c_mults]
        self.layers = nn.Sequential(
            WNConv1d(cfg.in_channels, widths[0], 7, padding=3),
            *(EncoderBlock(widths[i], widths[i + 1], s, cfg.use_snake) for i, s in enumerate(cfg.strides)),
            activation(widths[-1], cfg.use_snake),
            WNConv1d(widths[-1], cfg.latent_dim, 3, padding=1),
        )

    def forward(self, audio: Tensor) -> Tensor:
        return self.layers(audio)


class OobleckDecoder(nn.Module):
    def __init__(self, cfg: OobleckDecoderConfig):
        super().__init__()
        widths = [cfg.channels] + [m * cfg.channels for m in cfg.c_mults]
        blocks = [DecoderBlock(widths[i + 1], widths[i], cfg.strides[i], cfg.use_snake, cfg.use_nearest_upsample)
                  for i in reversed(range(len(cfg.strides)))]
        self.layers = nn.Sequential(
            WNConv1d(cfg.latent_dim, widths[-1], 7, padding=3),
            *blocks,
            activation(widths[0], cfg.use_snake),
            WNConv1d(widths[0], cfg.out_channels, 7, padding=3, bias=False),
            nn.Tanh() if cfg.final_tanh else nn.Identity(),
        )

    def forward(self, latents: Tensor) -> Tensor:
        return self.layers(latents)


def vae_kl(mean: Tensor, scale: Tensor) -> Tensor:
    """KL(N(mean, stdev^2) || N(0, 1)) summed over channels, averaged over batch and time, as the
    reference trains it; stdev = softplus(scale) + 1e-4 keeps the variance positive."""
    stdev = F.softplus(scale) + 1e-4
    var = stdev * stdev
    return (mean * mean + var - var.log() - 1).sum(1).mean()


class OobleckVAE(nn.Module):
    """Encoder + VAE bottleneck + decoder (stable-audio-tools' AudioAutoencoder with a "vae" bottleneck)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.encoder = OobleckEncoder(cfg.encoder)
        self.decoder = OobleckDecoder(cfg.decoder)

    def encode(self, audio: Tensor, sample: bool = False, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The posterior mean (or a sample from the posterior) of each latent frame, optionally with
        its KL term. The mean is deterministic, which editing needs: the same song always maps to the
        same latents."""
        mean, scale = self.encoder(audio).chunk(2, dim=1)
        latents = mean
        if sample:
            latents = mean + torch.randn_like(mean) * (F.softplus(scale) + 1e-4)
        return (latents, vae_kl(mean, scale)) if return_kl else latents

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)
