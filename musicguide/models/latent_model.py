"""What the pipeline reads of a latent diffusion model, whatever its family (Stable Audio Open's
`latent_diffusion.LatentDiffusion`, Stable Audio 3's `sa3.SA3Model`): its shape, its schedule, its
parts under the reference's state-dict names, and how far its encoder sees across a boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from musicguide.schedules import Schedule, schedule_for


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

    # Set by the folder loader: recall(model, measure) -> what `measure()` gave before on the same
    # weights file (musicguide.cache), or measures and remembers it. None for a model built in memory.
    leak_memory: Callable[[LatentModel, Callable[[], int]], int] | None = None

    def encoder_leak_frames(self) -> int:
        """How many latent frames next to a boundary the encoder carries across it
        (`measure_encoder_leak`): measured once per process, and for a model loaded from a folder
        once per weights file, device kind and dtype (the measurement costs a few encodes)."""
        if getattr(self, "_leak_frames", None) is None:
            measure = lambda: measure_encoder_leak(self)  # noqa: E731
            self._leak_frames = measure() if self.leak_memory is None else self.leak_memory(self, measure)
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
