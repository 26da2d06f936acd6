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
from musicguide.schedules import Schedule, schedule_for


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


class LatentModel(nn.Module):
    """What the pipeline reads of a latent diffusion model, whatever its family: the DiT under
    `model.model`, the autoencoder under `pretransform.model`, and a config with sample_rate,
    audio_channels, sample_size, objective and an autoencoder with latent_dim and
    downsampling_ratio. LatentDiffusion (Stable Audio Open) and models.sa3.SA3Model build on it."""

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.config.audio_channels

    @property
    def latent_channels(self) -> int:
        return self.config.autoencoder.latent_dim

    @property
    def downsampling_ratio(self) -> int:
        """Audio samples per latent frame."""
        return self.config.autoencoder.downsampling_ratio

    @property
    def max_frames(self) -> int:
        """Latent frames in the window the DiT was trained on (sample_size samples)."""
        return self.config.sample_size // self.downsampling_ratio

    @property
    def objective(self) -> str:
        return self.config.objective

    @property
    def schedule(self) -> Schedule:
        return schedule_for(self.objective)

    @property
    def dit(self) -> nn.Module:
        """The diffusion transformer (state-dict prefix `model.model.`, as in the reference)."""
        return self.model.model

    @property
    def vae(self) -> nn.Module:
        """The autoencoder (state-dict prefix `pretransform.model.`)."""
        return self.pretransform.model

    @property
    def device(self) -> torch.device:
        return self.dit.preprocess_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.preprocess_conv.weight.dtype

    def encoder_leak_frames(self) -> int:
        """How many latent frames next to a boundary the encoder carries across it (`measure_encoder_leak`)."""
        if getattr(self, "_leak_frames", None) is None:
            self._leak_frames = measure_encoder_leak(self)
        return self._leak_frames

    def _check_audio(self, audio: Tensor) -> None:
        if audio.ndim != 3 or audio.shape[1] != self.audio_channels:
            raise ValueError(f"expected audio [batch, {self.audio_channels}, samples], got {list(audio.shape)}")
        if audio.shape[-1] % self.downsampling_ratio:
            raise ValueError(f"audio length {audio.shape[-1]} is not a multiple of the VAE's "
                             f"{self.downsampling_ratio} samples per latent frame; pad it first")

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 3 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [batch, {self.latent_channels}, frames], got {list(latents.shape)}")

    def _time_and_timing(self, x: Tensor, t: Tensor | float, seconds_start: float | Tensor,
                         seconds_total: float | Tensor | None) -> tuple[Tensor, Callable[[str], Tensor]]:
        """`denoise`'s inputs checked: t as float32 [B], and embedding(cond_id) -> [B, cond_dim], the
        number conditioner's embedding of seconds_start or seconds_total (the window's own length
        unless given)."""
        batch = x.shape[0]
        self._check_latents(x)
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t
        if t.shape != (batch,):
            raise ValueError(f"t must be a float or a tensor of shape [{batch}], got {list(t.shape)}")
        if seconds_total is None:
            seconds_total = x.shape[-1] * self.downsampling_ratio / self.sample_rate
        timing = {"seconds_start": seconds_start, "seconds_total": seconds_total}

        def embedding(cond_id: str) -> Tensor:
            if cond_id not in timing:
                raise ValueError(f"this model is conditioned on {cond_id!r}, which musicguide does not provide")
            values = torch.as_tensor(timing[cond_id], dtype=torch.float32, device=x.device)
            return self.conditioner.conditioners[cond_id](values.expand(batch) if values.ndim == 0 else values)

        return t, embedding


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
LEAK_THRESHOLD = 0.1
MAX_LEAK_FRAMES = 4


def measure_encoder_leak(model) -> int:
    """How many latent frames next to a boundary a model's encoder carries across it. Measured on
    seeded noise: encode 24 frames, mute the audio after (then before) the middle, and count the
    frames on the kept side that move by more than LEAK_THRESHOLD of the latent std, walking outward
    from the boundary (at most MAX_LEAK_FRAMES). Edits treat that many frames next to each boundary
    as free, so y never holds what was behind the boundary (the replaced audio, or the silence after
    a song's end)."""
    hop, frames, mid = model.downsampling_ratio, 24, 12
    gen = torch.Generator().manual_seed(0)
    audio = (0.1 * torch.randn(1, model.audio_channels, frames * hop, generator=gen)).to(model.device)
    leak = 0
    with torch.no_grad():
        full = model.encode(audio)
        scale = full.std().clamp(min=1e-8)
        for side in ("after", "before"):
            muted = audio.clone()
            if side == "after":
                muted[..., mid * hop:] = 0
            else:
                muted[..., : mid * hop] = 0
            moved = (model.encode(muted) - full).abs().mean(dim=(0, 1)) / scale
            kept = moved[:mid].flip(0) if side == "after" else moved[mid:]
            n = 0
            while n < MAX_LEAK_FRAMES and kept[n] > LEAK_THRESHOLD:
                n += 1
            leak = max(leak, n)
    return leak
