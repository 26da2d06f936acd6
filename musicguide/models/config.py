"""The model's configuration, read from (and written back to) a Stable Audio Open `model_config.json`.

The file is stable-audio-tools' own layout, so a folder holding a published checkpoint can be used
as it is:

    {"model_type": "diffusion_cond", "sample_size": ..., "sample_rate": ..., "audio_channels": ...,
     "model": {"pretransform": {"type": "autoencoder", "config": {encoder, decoder, bottleneck, ...}},
               "conditioning": {"configs": [...], "cond_dim": ...},
               "diffusion": {"type": "dit", "config": {...}, "cross_attention_cond_ids": [...], ...},
               "io_channels": ...}}

Every setting that changes what the weights compute is either implemented or refused with a
`UserError` naming the field: a setting we silently ignored would give wrong audio from the right
weights. Settings that only change how the reference trains or schedules its work
(`INERT_SETTINGS`) are accepted and not kept. Defaults are the reference's constructor defaults, so
a missing key means what it means to stable-audio-tools.

Every number is checked as it is read, against its kind and range in `config_reading.NUMBER_RANGES`, so that a
zero, a NaN or an absurd size is refused here, naming the key, rather than failing (or allocating)
somewhere inside the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from musicguide.errors import UserError

OBJECTIVES = ("v", "rectified_flow", "rf_denoiser")

# Accepted and dropped: they choose training behaviour, initialisation, precision or memory-saving
# execution strategies of the reference, never the function the weights compute.
INERT_SETTINGS = {
    "model.pretransform": {"iterate_batch", "model_half", "chunked"},
    "model.pretransform.config.encoder": {"requires_grad"},
    "model.pretransform.config.decoder": {"requires_grad"},
    "model.diffusion.config": {"zero_init_branch_outputs"},
    "model.conditioning.configs[t5].config": {"enable_grad"},
}

# A model_config.json is a few kilobytes; anything much larger is not one, and is not read into memory.


@dataclass(frozen=True)
class OobleckEncoderConfig:
    """`model.pretransform.config.encoder.config`: waveform -> 2 * latent channels (mean, scale)."""

    in_channels: int = 2
    channels: int = 128
    latent_dim: int = 32
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    strides: tuple[int, ...] = (2, 4, 8, 8)
    use_snake: bool = False


@dataclass(frozen=True)
class OobleckDecoderConfig:
    """`model.pretransform.config.decoder.config`: latents -> waveform."""

    out_channels: int = 2
    channels: int = 128
    latent_dim: int = 32
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    strides: tuple[int, ...] = (2, 4, 8, 8)
    use_snake: bool = False
    final_tanh: bool = True
    # The reference's option for each stage's upsampling: nearest-neighbour repeat, then a
    # convolution, instead of a transposed convolution. A transposed convolution whose kernel is
    # twice its stride turns a constant input into a pattern that repeats every stride, and chained
    # over the stages, a buzz at the latent frame rate; a repeat and a convolution keep a constant
    # constant (docs/training.md, "The decoder's buzz").
    use_nearest_upsample: bool = False


@dataclass(frozen=True)
class AutoencoderConfig:
    """`model.pretransform`: the Oobleck VAE that maps audio to the diffusion model's latents."""

    encoder: OobleckEncoderConfig
    decoder: OobleckDecoderConfig
    latent_dim: int
    downsampling_ratio: int
    io_channels: int
    scale: float = 1.0  # latents are divided by it after encoding and multiplied before decoding


@dataclass(frozen=True)
class NumberConditionerConfig:
    """A float (seconds_start, seconds_total) clamped to [min_val, max_val], embedded to cond_dim."""

    id: str
    min_val: float = 0.0
    max_val: float = 1.0


@dataclass(frozen=True)
class TextConditionerConfig:
    """A T5 prompt encoder: run for --prompt (musicguide/text.py); without a prompt the model gets
    the null conditioning (see LatentDiffusion.denoise)."""

    id: str
    t5_model_name: str = "t5-base"
    max_length: int = 128
    project_out: bool = False


@dataclass(frozen=True)
class ConditioningConfig:
    """`model.conditioning`."""

    cond_dim: int
    numbers: tuple[NumberConditionerConfig, ...] = ()
    texts: tuple[TextConditionerConfig, ...] = ()
    order: tuple[str, ...] = ()  # ids in file order, so to_dict writes them back as they were read

    def text(self, cond_id: str) -> TextConditionerConfig | None:
        return next((c for c in self.texts if c.id == cond_id), None)


@dataclass(frozen=True)
class DiTConfig:
    """`model.diffusion.config` of type "dit" with transformer_type "continuous_transformer"."""

    io_channels: int = 32
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 8
    patch_size: int = 1
    cond_token_dim: int = 0
    project_cond_tokens: bool = True
    global_cond_dim: int = 0
    project_global_cond: bool = True
    qk_norm: str = "none"  # attn_kwargs.qk_norm: "none" | "ln" | "l2"
    ff_mult: float = 4.0  # ff_kwargs.mult
    ff_no_bias: bool = False  # ff_kwargs.no_bias
    norm_eps: float = 1e-5  # norm_kwargs.eps

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """The reference rotates the first max(head_dim / 2, 32) channels of every head."""
        return max(self.head_dim // 2, 32)


@dataclass(frozen=True)
class DiffusionConfig:
    """`model.diffusion`."""

    dit: DiTConfig
    objective: str = "v"
    cross_attention_cond_ids: tuple[str, ...] = ()
    global_cond_ids: tuple[str, ...] = ()
    # Timestep shift the reference applies to its sampling and training schedules (not to the
    # network); kept verbatim for samplers that want to follow it.
    distribution_shift_options: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A whole latent diffusion model: window, VAE, conditioners, DiT."""

    sample_size: int
    sample_rate: int
    audio_channels: int
    autoencoder: AutoencoderConfig
    conditioning: ConditioningConfig
    diffusion: DiffusionConfig

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """The config in `path`: a ModelConfig, or for a Stable Audio 3 model (its autoencoder is
        SAME) a models.sa3.SA3Config."""
        from musicguide.models.config_reading import _MAX_CONFIG_BYTES, _one_line

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} not found", hint="a model folder holds model_config.json and model.safetensors")
        try:
            size = path.stat().st_size
            if size > _MAX_CONFIG_BYTES:
                raise UserError(f"{path} is {size} bytes, too large for a model config (at most {_MAX_CONFIG_BYTES})")
            raw = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        try:
            data = json.loads(raw)
        # ValueError covers bad UTF-8 and integers longer than Python will convert (thousands of
        # digits) as well as bad syntax; RecursionError, brackets nested thousands deep.
        except (ValueError, RecursionError) as err:
            raise UserError(f"{path} is not valid JSON: {_one_line(err)}") from None
        try:
            if _is_sa3(data):
                from musicguide.models.sa3 import sa3_config_from_dict

                try:
                    return sa3_config_from_dict(data)
                except (ValueError, KeyError, TypeError) as err:
                    raise UserError(f"a Stable Audio 3 config musicguide cannot build: {_one_line(err)}") from None
            return cls.from_dict(data)
        except UserError as err:
            raise UserError(f"{path}: {err.message}", hint=err.hint) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        from musicguide.models.config_reading import (_IGNORED_TOP_LEVEL, _read_autoencoder, _read_conditioning,
                                                      _read_diffusion, _Section, _validate)

        top = _Section(data, "")
        model_type = top.take("model_type", "diffusion_cond")
        if model_type != "diffusion_cond":
            raise UserError(f"unsupported model_type {model_type!r} (only 'diffusion_cond' models are supported)")
        sample_size = top.require("sample_size", int)
        sample_rate = top.require("sample_rate", int)
        audio_channels = top.take("audio_channels", 2)
        model = top.section("model")
        top.finish(ignore=_IGNORED_TOP_LEVEL)

        autoencoder = _read_autoencoder(model.section("pretransform"))
        conditioning = _read_conditioning(model.section("conditioning"))
        diffusion = _read_diffusion(model.section("diffusion"))
        io_channels = model.take("io_channels", diffusion.dit.io_channels)
        model.finish()

        config = cls(sample_size, sample_rate, audio_channels, autoencoder, conditioning, diffusion)
        _validate(config, io_channels)
        return config

    @property
    def objective(self) -> str:
        return self.diffusion.objective

    def to_dict(self) -> dict[str, Any]:
        from musicguide.models.config_reading import _plain

        """The model_config.json layout stable-audio-tools' create_model_from_config reads."""
        ae, cond, diff, dit = self.autoencoder, self.conditioning, self.diffusion, self.diffusion.dit
        decoder = _plain(asdict(ae.decoder))
        if not ae.decoder.use_nearest_upsample:
            del decoder["use_nearest_upsample"]  # written only where set: published configs come back as read
        pretransform: dict[str, Any] = {
            "type": "autoencoder",
            "config": {
                "encoder": {"type": "oobleck", "config": _plain(asdict(ae.encoder))},
                "decoder": {"type": "oobleck", "config": decoder},
                "bottleneck": {"type": "vae"},
                "latent_dim": ae.latent_dim,
                "downsampling_ratio": ae.downsampling_ratio,
                "io_channels": ae.io_channels,
            },
        }
        if ae.scale != 1.0:
            pretransform["scale"] = ae.scale
        conditioners = {c.id: {"id": c.id, "type": "number", "config": {"min_val": c.min_val, "max_val": c.max_val}}
                        for c in cond.numbers}
        conditioners.update({c.id: {"id": c.id, "type": "t5", "config": {
            "t5_model_name": c.t5_model_name, "max_length": c.max_length, "project_out": c.project_out}}
            for c in cond.texts})
        dit_dict: dict[str, Any] = {
            "io_channels": dit.io_channels, "patch_size": dit.patch_size, "embed_dim": dit.embed_dim,
            "depth": dit.depth, "num_heads": dit.num_heads, "cond_token_dim": dit.cond_token_dim,
            "project_cond_tokens": dit.project_cond_tokens, "global_cond_dim": dit.global_cond_dim,
            "project_global_cond": dit.project_global_cond, "transformer_type": "continuous_transformer",
            "attn_kwargs": {"qk_norm": dit.qk_norm},
            "ff_kwargs": {"mult": dit.ff_mult, "no_bias": dit.ff_no_bias},
            "norm_kwargs": {"eps": dit.norm_eps},
        }
        diffusion: dict[str, Any] = {
            "type": "dit",
            "diffusion_objective": diff.objective,
            "cross_attention_cond_ids": list(diff.cross_attention_cond_ids),
            "global_cond_ids": list(diff.global_cond_ids),
            "config": dit_dict,
        }
        if diff.distribution_shift_options is not None:
            diffusion["distribution_shift_options"] = dict(diff.distribution_shift_options)
        return {
            "model_type": "diffusion_cond",
            "sample_size": self.sample_size,
            "sample_rate": self.sample_rate,
            "audio_channels": self.audio_channels,
            "model": {
                "pretransform": pretransform,
                "conditioning": {"configs": [conditioners[i] for i in cond.order or conditioners],
                                 "cond_dim": cond.cond_dim},
                "diffusion": diffusion,
                "io_channels": dit.io_channels,
            },
        }

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")



def _is_sa3(data) -> bool:
    try:
        return data["model"]["pretransform"]["config"]["encoder"]["type"] == "same"
    except (KeyError, TypeError):
        return False
