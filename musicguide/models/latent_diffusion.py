"""A latent diffusion model of the Stable Audio Open family: Oobleck VAE + conditioners + DiT.

The three parts sit where stable-audio-tools puts them, so that `state_dict()` has the published
checkpoint's key names with no renaming:

    model.model.…              the DiT            (reference: DiTWrapper.model)
    conditioner.conditioners.… number embedders  (reference: MultiConditioner.conditioners)
    pretransform.model.…       the VAE            (reference: AutoencoderPretransform.model)

The pipeline talks to it through `encode`, `decode`, `denoise` and a few properties.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from musicguide.models.config import AutoencoderConfig, ConditioningConfig, DiTConfig, ModelConfig
from musicguide.models.dit import DiffusionTransformer, NumberConditioner
from musicguide.models.vae import OobleckVAE
from musicguide.models.latent_model import LatentModel


class AutoencoderPretransform(nn.Module):
    """The VAE under the name `model`, plus the config's latent scale."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.model = OobleckVAE(cfg)
        self.scale = cfg.scale


class DiTWrapper(nn.Module):
    """The DiT under the name `model`."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.model = DiffusionTransformer(cfg)


class MultiConditioner(nn.Module):
    """The number conditioners by id. Text (T5) conditioners are not built here: the reference
    keeps the T5 encoder outside its checkpoint too. Without a prompt the DiT runs on the null text
    conditioning; with one, `text.py` encodes it and `denoise` takes its tokens (`text_tokens`)."""

    def __init__(self, cfg: ConditioningConfig):
        super().__init__()
        self.conditioners = nn.ModuleDict({c.id: NumberConditioner(c, cfg.cond_dim) for c in cfg.numbers})


class LatentDiffusion(LatentModel):
    """Stable Audio Open: its `vae` is the Oobleck VAE, whose latents are scaled by
    `pretransform.scale` before the DiT sees them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DiTWrapper(config.diffusion.dit)
        self.conditioner = MultiConditioner(config.conditioning)
        self.pretransform = AutoencoderPretransform(config.autoencoder)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer block in the backward pass: less memory, about a third more time."""
        self.dit.transformer.gradient_checkpointing = enabled

    def encode(self, audio: Tensor, sample: bool = False, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """audio [B, audio_channels, N], N a multiple of downsampling_ratio -> latents [B, latent_channels, N / ratio].

        The posterior mean unless `sample`; with `return_kl`, also the VAE's KL term (for training).
        Like decode and denoise, it computes in the model's dtype and answers in the caller's."""
        self._check_audio(audio)
        encoded = self.vae.encode(audio.to(self.dtype), sample=sample, return_kl=return_kl)
        latents, kl = encoded if return_kl else (encoded, None)
        latents = (latents / self.pretransform.scale).to(audio.dtype)
        return (latents, kl) if return_kl else latents

    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, latent_channels, T] -> audio [B, audio_channels, T * downsampling_ratio]."""
        self._check_latents(latents)
        return self.vae.decode(latents.to(self.dtype) * self.pretransform.scale).to(latents.dtype)

    def denoise(self, x: Tensor, t: Tensor | float, *, seconds_start: float | Tensor = 0.0,
                seconds_total: float | Tensor | None = None, text_tokens: Tensor | None = None) -> Tensor:
        """The raw network output at (x_t, t): v for a "v" model, the flow velocity for rectified flow.

        x [B, latent_channels, T]; t [B] or a float in [0, 1]. seconds_start / seconds_total are the
        timing conditioning (seconds_total defaults to the window's own length). Differentiable in x.

        Without `text_tokens` the model is run on the null text conditioning, which is what it saw
        in training whenever the prompt was dropped for classifier-free guidance, and what the
        reference's sampler uses for the unconditional half of CFG: stable-audio-tools replaces the
        *whole* cross-attention input (prompt tokens and the timing tokens alike) by zeros and keeps
        the global conditioning (timing + timestep) as it is. Zero tokens contribute exactly nothing
        in this network: the token MLP and the key/value projections have no bias, so every key and
        value is zero and cross-attention adds 0. We therefore skip cross-attention, which is the
        same function, computed faster (checked against the reference in bench/conformance.py).

        `text_tokens` [B, N, cond_dim] are a text encoder's output (T5 for Stable Audio Open); they
        are placed where the config's text conditioner goes, next to the timing tokens.
        """
        dtype = self.dtype
        t, embedding = self._time_and_timing(x, t, seconds_start, seconds_total)
        diffusion = self.config.diffusion
        global_cond = None
        if diffusion.global_cond_ids:
            global_cond = torch.cat([embedding(i) for i in diffusion.global_cond_ids], dim=-1)
        cross_attn_cond = None
        if text_tokens is not None:
            cross_attn_cond = self._cross_attention_tokens(text_tokens.to(dtype), embedding)
        out = self.dit(x.to(dtype), t.to(dtype), cross_attn_cond=cross_attn_cond, global_cond=global_cond)
        return out.to(x.dtype)

    def _cross_attention_tokens(self, text_tokens: Tensor, embedding: Callable[[str], Tensor]) -> Tensor:
        """The cross-attention input in config order: text tokens, then one token per number."""
        conditioning = self.config.conditioning
        ids = self.config.diffusion.cross_attention_cond_ids
        if not any(conditioning.text(i) for i in ids):
            raise ValueError("text_tokens given, but this model has no text conditioner in its cross-attention")
        if text_tokens.ndim != 3 or text_tokens.shape[-1] != conditioning.cond_dim:
            raise ValueError(f"text_tokens must be [batch, tokens, {conditioning.cond_dim}], "
                             f"got {list(text_tokens.shape)}")
        return torch.cat([text_tokens if conditioning.text(i) else embedding(i)[:, None] for i in ids], dim=1)


def build_model(config: ModelConfig) -> LatentDiffusion:
    """A freshly initialised model (random weights from torch's global RNG), in eval mode with its
    parameters frozen: inference needs gradients with respect to x only. Train with
    `model.train().requires_grad_(True)`.

    Unlike the reference, no output layer is zero-initialised, so that a random model (tiny-random)
    is a genuinely nonlinear function whose guidance gradients exercise every layer.
    Build on `torch.device("meta")` to get shapes without allocating."""
    return LatentDiffusion(config).eval().requires_grad_(False)


# A known latent frame "sees across" an edit boundary when muting the audio on the other side
# changes it by more than this fraction of the latents' std.
