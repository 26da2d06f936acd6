"""Model shapes of the Stable Audio Open family: the training presets and the CI-sized random model.

    preset_config("demo")            # what `musicguide train --preset demo` trains (and ships)
    vae_variant("demo", 512, 32, 64) # the same model with another VAE compression
    tiny_random_config()             # small enough that guided samplers run through it in CI

Every config is read back through `ModelConfig`'s checks, so a preset is a valid model_config.json.
"""

from __future__ import annotations

import math
from typing import Sequence

from musicguide.errors import UserError
from musicguide.models.config import ModelConfig

SAMPLE_RATE = 44100


def _timing_conditioners() -> list[dict]:
    return [{"id": name, "type": "number", "config": {"min_val": 0, "max_val": 512}}
            for name in ("seconds_start", "seconds_total")]


def _oobleck(oobleck: dict, latent_dim: int, encoder_latent_dim: int, strides: Sequence[int]) -> dict:
    """The pretransform section: an Oobleck encoder/decoder pair with a VAE bottleneck."""
    return {"type": "autoencoder", "config": {
        "encoder": {"type": "oobleck", "config": {**oobleck, "in_channels": 2, "latent_dim": encoder_latent_dim}},
        "decoder": {"type": "oobleck", "config": {**oobleck, "out_channels": 2, "latent_dim": latent_dim,
                                                  "final_tanh": False}},
        "bottleneck": {"type": "vae"},
        "latent_dim": latent_dim, "downsampling_ratio": math.prod(strides), "io_channels": 2}}


def _family_config(*, sample_size: int, channels: int, c_mults: Sequence[int], strides: Sequence[int],
                   latent_dim: int, width: int, depth: int, heads: int, cond_dim: int,
                   text_conditioning: bool = False) -> ModelConfig:
    """A model_config.json of the Stable Audio Open family, read back through ModelConfig's checks.

    Without `text_conditioning` the DiT has no cross-attention at all: we train with the null text
    conditioning, under which cross-attention adds exactly zero, so its weights would never learn."""
    conditioners, cross_ids = _timing_conditioners(), []
    if text_conditioning:
        conditioners = [{"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                        *conditioners]
        cross_ids = ["prompt", "seconds_start", "seconds_total"]
    oobleck = {"channels": channels, "c_mults": list(c_mults), "strides": list(strides), "use_snake": True}
    return ModelConfig.from_dict({
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": SAMPLE_RATE,
        "audio_channels": 2,
        "model": {
            "pretransform": _oobleck(oobleck, latent_dim, 2 * latent_dim, strides),
            "conditioning": {"cond_dim": cond_dim, "configs": conditioners},
            "diffusion": {
                "type": "dit", "diffusion_objective": "v",
                "cross_attention_cond_ids": cross_ids,
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "config": {"io_channels": latent_dim, "embed_dim": width, "depth": depth, "num_heads": heads,
                           "cond_token_dim": cond_dim if text_conditioning else 0,
                           "project_cond_tokens": False,
                           "global_cond_dim": 2 * cond_dim,
                           "transformer_type": "continuous_transformer"}},
            "io_channels": latent_dim,
        },
    })


# The shapes of each preset's model (arguments of _family_config).
PRESET_SHAPES: dict[str, dict] = {
    "tiny": dict(sample_size=65536, channels=8, c_mults=(1, 2, 4, 8), strides=(4, 4, 8, 8),
                 latent_dim=8, width=64, depth=2, heads=2, cond_dim=16),
    "demo": dict(sample_size=524288, channels=32, c_mults=(1, 2, 4, 8), strides=(4, 4, 8, 8),
                 latent_dim=32, width=256, depth=8, heads=4, cond_dim=64),
    "sao": dict(sample_size=2097152, channels=128, c_mults=(1, 2, 4, 8, 16), strides=(2, 4, 4, 8, 8),
                latent_dim=64, width=1536, depth=24, heads=24, cond_dim=768, text_conditioning=True),
}
PRESETS = tuple(PRESET_SHAPES)
# Encoder strides for each samples-per-latent-frame ratio of a VAE variant (four stages, as demo's).
VARIANT_STRIDES = {256: (2, 4, 4, 8), 512: (4, 4, 4, 8), 1024: (4, 4, 8, 8), 2048: (4, 4, 8, 16)}


def is_whole(value, minimum: int) -> bool:
    """An int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_preset(name: str) -> None:
    if name not in PRESET_SHAPES:
        raise UserError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}")


def preset_config(name: str) -> ModelConfig:
    """The model a preset trains.

    tiny: trains in CPU seconds; for tests. demo: what the project ships, ~11M parameters (2.6M VAE,
    8.7M DiT; 22 MB in fp16), 1024x VAE with 32 latent channels (64x compression, as SAO 1.0) and
    an 11.9 s window. sao: Stable Audio Open 1.0's shapes (1.2B parameters), for real hardware."""
    check_preset(name)
    return _family_config(**PRESET_SHAPES[name])


def vae_variant(preset: str, ratio: int, latent_dim: int, channels: int) -> ModelConfig:
    """The preset's model with another VAE: `ratio` audio samples per latent frame, `latent_dim`
    numbers per frame, `channels` wide in its first stage. Compression is 2 * ratio / latent_dim
    (demo: 2 * 1024 / 32 = 64x). For choosing the VAE by measurement (bench/train_demo.py)."""
    if ratio not in VARIANT_STRIDES:
        raise UserError(f"no VAE variant with ratio {ratio}", hint=f"choose one of {sorted(VARIANT_STRIDES)}")
    if not (is_whole(latent_dim, 1) and is_whole(channels, 1)):
        raise UserError(f"a VAE variant needs whole numbers of latent channels and width, got {latent_dim}, {channels}")
    check_preset(preset)
    shapes = {**PRESET_SHAPES[preset], "strides": VARIANT_STRIDES[ratio], "latent_dim": latent_dim, "channels": channels}
    return _family_config(**shapes)


def tiny_random_config() -> ModelConfig:
    """A model of the same family, small enough that guided samplers run through it in CI.

    Same structure as Stable Audio Open 1.0 (Oobleck VAE with Snake, VAE bottleneck, DiT with
    rotary self-attention, cross-attention and timing conditioning prepended as a global token,
    v-prediction), but a 1024x VAE with 8 latent channels and a 2-layer, 64-wide DiT. The VAE's
    full-rate stage, which dominates the cost of decoding 12 s, is 4 channels wide and its first
    stride is 16, so one DiT pass + decode + backward stays well under a second on 2 CPU cores.
    Its weights are random: it produces noise, not music.
    """
    strides = (16, 4, 4, 4)
    oobleck = {"channels": 4, "c_mults": [2, 4, 8, 16], "strides": list(strides), "use_snake": True}
    return ModelConfig.from_dict({
        "model_type": "diffusion_cond",
        "sample_size": 524288,
        "sample_rate": SAMPLE_RATE,
        "audio_channels": 2,
        "model": {
            "pretransform": _oobleck(oobleck, 8, 16, strides),
            "conditioning": {"cond_dim": 32, "configs": _timing_conditioners()},
            "diffusion": {
                "type": "dit", "diffusion_objective": "v",
                "cross_attention_cond_ids": ["seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "config": {"io_channels": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
                           "cond_token_dim": 32, "global_cond_dim": 64, "project_cond_tokens": False,
                           "transformer_type": "continuous_transformer"}},
            "io_channels": 8,
        },
    })
