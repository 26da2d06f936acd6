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

Every number is checked as it is read, against its kind and range in `NUMBER_RANGES`, so that a
zero, a NaN or an absurd size is refused here, naming the key, rather than failing (or allocating)
somewhere inside the model.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from musicguide.errors import UserError, one_line

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

    kind = "t5"  # what musicguide/text.py loads: T5EncoderModel, run in float16 as the reference does
    padding_mode = "zero"  # the padded positions' tokens are zero

    @property
    def encoder_name(self) -> str:
        """The `[text_encoders."NAME"]` table of checkpoints.toml that pins the encoder."""
        return self.t5_model_name


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

    @property
    def cond_dim(self) -> int:
        return self.conditioning.cond_dim

    def cross_attention_texts(self) -> tuple[TextConditionerConfig, ...]:
        """The text conditioners whose tokens the DiT's cross-attention reads, in its order."""
        texts = (self.conditioning.text(i) for i in self.diffusion.cross_attention_cond_ids)
        return tuple(t for t in texts if t is not None)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """The Stable Audio Open config in `path` (`models.folder.read_model_config` reads either
        family's)."""
        data = read_config_json(path)
        if is_sa3_config(data):
            raise UserError(f"{path} is a Stable Audio 3 config", hint="read it with models.folder.read_model_config")
        with config_errors_name(path):
            return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:

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



def read_config_json(path: str | Path) -> Any:
    """The JSON in a model folder's config file, read with every failure a one-line UserError."""
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
        return json.loads(raw)
    # ValueError covers bad UTF-8 and integers longer than Python will convert (thousands of
    # digits) as well as bad syntax; RecursionError, brackets nested thousands deep.
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path} is not valid JSON: {one_line(err)}") from None


@contextmanager
def config_errors_name(path: str | Path) -> Iterator[None]:
    """A config's errors, prefixed with the file they are in."""
    try:
        yield
    except UserError as err:
        raise UserError(f"{path}: {err.message}", hint=err.hint) from None


def is_sa3_config(data) -> bool:
    """A Stable Audio 3 config: its autoencoder is SAME."""
    try:
        return data["model"]["pretransform"]["config"]["encoder"]["type"] == "same"
    except (KeyError, TypeError):
        return False


# ---- reading a model_config.json: every key checked as it is read, every number against its kind
# and range (`NUMBER_RANGES`), and the settings checked against each other


_IGNORED_TOP_LEVEL = {"training", "demo"}  # trainer settings that ship in published configs
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class NumberRange:
    """The values one numeric setting may take: an int or any finite number, from low to high."""

    kind: type  # int (bools refused) or float (ints accepted)
    low: float
    high: float

    def check(self, name: str, value: Any) -> None:
        kinds = (int, float) if self.kind is float else (int,)
        is_kind = isinstance(value, kinds) and not isinstance(value, bool)
        # NaN fails both comparisons and the bounds are finite, so NaN and infinities are refused too.
        if not (is_kind and self.low <= value <= self.high):
            raise UserError(f"{name} must be {self.describe()}, not {_shown(value)}")

    def describe(self) -> str:
        if self.kind is int:
            return f"an integer from {self.low} to {self.high}"
        return f"a number from {self.low:g} to {self.high:g}"


MAX_WINDOW_SECONDS = 600  # the longest window (sample_size / sample_rate) a config may ask for
# Latent tokens the DiT attends over in one window: 16 x Stable Audio Open 1.0's 1024, which already
# costs 256 x its attention, since that grows with the square of the token count.
MAX_WINDOW_TOKENS = 16384
_SAMPLE_RATES = NumberRange(int, 8000, 384000)
_AUDIO_CHANNELS = NumberRange(int, 1, 8)
_WIDTH = NumberRange(int, 1, 16384)  # channel counts and embedding widths; SAO 1.0's widest is 2048
_OPTIONAL_WIDTH = NumberRange(int, 0, 65536)  # 0 = "no such input"; global_cond_dim is cond_dim x ids
_STAGE_FACTOR = NumberRange(int, 1, 64)  # one VAE stage's stride or channel multiplier
_MAX_STAGES = 16  # entries in strides and c_mults
_CONDITIONER_VALUE = NumberRange(float, -1e6, 1e6)

_ENCODER, _DECODER = "model.pretransform.config.encoder.config", "model.pretransform.config.decoder.config"
# Every number a config may hold, by key path ("[]" stands for any list index). `_Section.take`
# looks each number up here, so a setting added without a range fails every test until it has one.
NUMBER_RANGES: dict[str, NumberRange] = {
    "sample_rate": _SAMPLE_RATES,
    "sample_size": NumberRange(int, 1, MAX_WINDOW_SECONDS * _SAMPLE_RATES.high),  # refined in _validate
    "audio_channels": _AUDIO_CHANNELS,
    "model.io_channels": _WIDTH,
    # Latents are divided by the scale; training stores their standard deviation here.
    "model.pretransform.scale": NumberRange(float, 1e-6, 1e6),
    f"{_ENCODER}.in_channels": _AUDIO_CHANNELS,
    f"{_ENCODER}.channels": _WIDTH,
    f"{_ENCODER}.latent_dim": _WIDTH,
    f"{_ENCODER}.c_mults[]": _STAGE_FACTOR,
    f"{_ENCODER}.strides[]": _STAGE_FACTOR,
    f"{_DECODER}.out_channels": _AUDIO_CHANNELS,
    f"{_DECODER}.channels": _WIDTH,
    f"{_DECODER}.latent_dim": _WIDTH,
    f"{_DECODER}.c_mults[]": _STAGE_FACTOR,
    f"{_DECODER}.strides[]": _STAGE_FACTOR,
    "model.pretransform.config.latent_dim": _WIDTH,
    "model.pretransform.config.downsampling_ratio": NumberRange(int, 1, 65536),
    "model.pretransform.config.io_channels": _AUDIO_CHANNELS,
    "model.conditioning.cond_dim": _WIDTH,
    "model.conditioning.configs[].config.min_val": _CONDITIONER_VALUE,
    "model.conditioning.configs[].config.max_val": _CONDITIONER_VALUE,
    "model.conditioning.configs[].config.max_length": NumberRange(int, 1, 4096),  # T5 tokens
    "model.diffusion.config.io_channels": _WIDTH,
    "model.diffusion.config.embed_dim": _WIDTH,
    "model.diffusion.config.depth": NumberRange(int, 1, 256),
    "model.diffusion.config.num_heads": NumberRange(int, 1, 1024),
    "model.diffusion.config.patch_size": NumberRange(int, 1, 64),
    "model.diffusion.config.cond_token_dim": _OPTIONAL_WIDTH,
    "model.diffusion.config.global_cond_dim": _OPTIONAL_WIDTH,
    # embed_dim is at least 32 (one rotary head), so the feed-forward keeps at least one unit.
    "model.diffusion.config.ff_kwargs.mult": NumberRange(float, 1 / 32, 64),
    "model.diffusion.config.norm_kwargs.eps": NumberRange(float, 1e-12, 0.1),
}


class _Section:
    """A dict being read: remembers its path for error messages and which keys were used."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise UserError(f"{path or 'the config'} must be a JSON object, not {type(data).__name__}")
        self.data, self.path, self.used = data, path, set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, default: Any) -> Any:
        """`key`'s value (or `default`) if it is of the default's kind; a number also in its range."""
        self.used.add(key)
        name, value = self._name(key), self.data.get(key, default)
        if _is_number(default):
            NUMBER_RANGES[_range_key(name)].check(name, value)
        elif _is_number_list(default):
            _check_number_list(name, value)
        elif default is not None and value is not None and not _same_kind(value, default):
            raise UserError(f"{name} must be {type(default).__name__}, not {_shown(value)}")
        return tuple(value) if isinstance(value, list) else value

    def require(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise UserError(f"missing {self._name(key)}")
        return self.take(key, kind())

    def section(self, key: str) -> _Section:
        if key not in self.data:
            raise UserError(f"missing {self._name(key)}")
        self.used.add(key)
        return _Section(self.data[key], self._name(key))

    def choice(self, key: str, default: Any, allowed: tuple[Any, ...]) -> Any:
        """One of `allowed`, matched by kind as well as value: 1 is not True, and 0.0 is not 0."""
        self.used.add(key)
        value = self.data.get(key, default)
        if value is None and None not in allowed:
            raise UserError(f"missing {self._name(key)}")
        if not any(value == option and _same_kind(value, option) for option in allowed):
            raise UserError(f"unsupported {self._name(key)} = {_shown(value)} "
                            f"(supported: {', '.join(map(_shown, allowed))})")
        return value

    def finish(self, ignore: set[str] = frozenset(), inert_key: str | None = None) -> None:
        """Refuse keys nobody read: an unknown setting might change what the weights compute."""
        inert = INERT_SETTINGS.get(inert_key or self.path, set())
        unknown = [k for k in self.data if k not in self.used | ignore | inert]
        if unknown:
            key = unknown[0] if unknown[0].isprintable() else json.dumps(unknown[0])  # keep the message one line
            raise UserError(f"unsupported setting {self._name(key)}",
                            hint="musicguide implements the Stable Audio Open family; this key would change the model")


def _same_kind(value: Any, default: Any) -> bool:
    if default is None:
        return value is None
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_list(default: Any) -> bool:
    return isinstance(default, tuple) and bool(default) and all(map(_is_number, default))


def _range_key(name: str) -> str:
    """`model.conditioning.configs[2].config.min_val` -> `model.conditioning.configs[].config.min_val`."""
    return re.sub(r"\[\d+\]", "[]", name)


def _check_number_list(name: str, value: Any) -> None:
    """strides and c_mults: one positive integer per VAE stage."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= _MAX_STAGES:
        found = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else _shown(value)
        raise UserError(f"{name} must be a list of 1 to {_MAX_STAGES} integers, not {found}")
    for index, item in enumerate(value):
        NUMBER_RANGES[_range_key(name) + "[]"].check(f"{name}[{index}]", item)


def _shown(value: Any) -> str:
    """A value as JSON writes it, on one short line: a 4000-digit number is described, not printed."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {round(value.bit_length() * math.log10(2))} digits"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # from_dict called from Python with something JSON cannot hold
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _read_oobleck(side: _Section, cls: type) -> Any:
    side.choice("type", None, ("oobleck",))
    cfg = side.section("config")
    defaults = cls()
    values = {name: cfg.take(name, getattr(defaults, name)) for name in defaults.__dataclass_fields__}
    # Options of the reference Oobleck that SAO does not use; refuse rather than compute without them.
    cfg.choice("antialias_activation", False, (False,))
    cfg.finish()
    side.finish()
    return cls(**values)


def _read_autoencoder(pre: _Section) -> AutoencoderConfig:
    pre.choice("type", None, ("autoencoder",))
    scale = float(pre.take("scale", 1.0))
    cfg = pre.section("config")
    encoder = _read_oobleck(cfg.section("encoder"), OobleckEncoderConfig)
    decoder = _read_oobleck(cfg.section("decoder"), OobleckDecoderConfig)
    cfg.section("bottleneck").choice("type", None, ("vae",))
    ae = AutoencoderConfig(
        encoder=encoder,
        decoder=decoder,
        latent_dim=cfg.require("latent_dim", int),
        downsampling_ratio=cfg.require("downsampling_ratio", int),
        io_channels=cfg.require("io_channels", int),
        scale=scale,
    )
    cfg.finish()
    pre.finish()
    return ae


def _read_conditioning(cond: _Section) -> ConditioningConfig:
    cond_dim = cond.require("cond_dim", int)
    numbers, texts, order = [], [], []
    for i, raw in enumerate(cond.take("configs", ())):
        item = _Section(raw, f"{cond.path}.configs[{i}]")
        cond_id = item.require("id", str)
        kind = item.choice("type", None, ("number", "t5"))
        cfg = item.section("config") if "config" in raw else _Section({}, f"{item.path}.config")
        if kind == "number":
            numbers.append(NumberConditionerConfig(cond_id, float(cfg.take("min_val", 0.0)),
                                                   float(cfg.take("max_val", 1.0))))
            cfg.finish()
        else:
            texts.append(TextConditionerConfig(cond_id, cfg.take("t5_model_name", "t5-base"),
                                               cfg.take("max_length", 128), cfg.take("project_out", False)))
            cfg.finish(inert_key="model.conditioning.configs[t5].config")
        item.finish()
        order.append(cond_id)
    if len(set(order)) != len(order):
        raise UserError(f"{cond.path}.configs has duplicate ids: {order}")
    cond.finish()
    return ConditioningConfig(cond_dim, tuple(numbers), tuple(texts), tuple(order))


def _read_diffusion(diff: _Section) -> DiffusionConfig:
    diff.choice("type", None, ("dit",))
    objective = diff.choice("diffusion_objective", "v", OBJECTIVES)
    cross_ids = diff.take("cross_attention_cond_ids", ())
    global_ids = diff.take("global_cond_ids", ())
    for key in ("input_concat_ids", "prepend_cond_ids"):
        if diff.take(key, ()):
            raise UserError(f"unsupported {diff.path}.{key} "
                            "(musicguide's DiT takes cross-attention and global conditioning only)")
    shift = _read_shift_options(diff)
    cfg = diff.section("config")
    defaults = DiTConfig()
    dit = DiTConfig(
        io_channels=cfg.take("io_channels", defaults.io_channels),
        embed_dim=cfg.take("embed_dim", defaults.embed_dim),
        depth=cfg.take("depth", defaults.depth),
        num_heads=cfg.take("num_heads", defaults.num_heads),
        patch_size=cfg.take("patch_size", defaults.patch_size),
        cond_token_dim=cfg.take("cond_token_dim", defaults.cond_token_dim),
        project_cond_tokens=cfg.take("project_cond_tokens", defaults.project_cond_tokens),
        global_cond_dim=cfg.take("global_cond_dim", defaults.global_cond_dim),
        project_global_cond=cfg.take("project_global_cond", defaults.project_global_cond),
        qk_norm=_kwargs(cfg, "attn_kwargs", {"qk_norm": (defaults.qk_norm, ("none", "ln", "l2"))})["qk_norm"],
        **_ff_and_norm(cfg, defaults),
    )
    # The reference's alternatives to what SAO uses; each would change the network.
    cfg.choice("transformer_type", "continuous_transformer", ("continuous_transformer",))
    cfg.choice("global_cond_type", "prepend", ("prepend",))
    cfg.choice("timestep_cond_type", "global", ("global",))
    cfg.choice("input_concat_dim", 0, (0,))
    cfg.choice("prepend_cond_dim", 0, (0,))
    cfg.choice("rotary_pos_emb", True, (True,))
    for off in ("causal", "conformer", "use_sinusoidal_emb", "use_abs_pos_emb", "layer_scale", "remove_norms",
                "add_rope"):
        cfg.choice(off, False, (False,))
    cfg.choice("num_memory_tokens", 0, (0,))
    cfg.choice("final_cross_attn_ix", -1, (-1,))
    cfg.choice("sliding_window", None, (None,))
    cfg.finish()
    diff.finish()
    return DiffusionConfig(dit, objective, cross_ids, global_ids, shift)


def _read_shift_options(diff: _Section) -> dict[str, Any] | None:
    """Kept verbatim for samplers, never used by the network; its numbers must still be finite."""
    options = diff.take("distribution_shift_options", None)
    if options is None:
        return None
    name = f"{diff.path}.distribution_shift_options"
    if not isinstance(options, dict):
        raise UserError(f"{name} must be a JSON object, not {_shown(options)}")
    for key, value in options.items():
        if _is_number(value) and not math.isfinite(value):
            raise UserError(f"{name}.{key} must be a finite number, not {_shown(value)}")
    return options


def _kwargs(cfg: _Section, key: str, known: dict[str, tuple[Any, tuple[Any, ...] | None]]) -> dict[str, Any]:
    """A nested kwargs dict (attn_kwargs, ff_kwargs, norm_kwargs) with its own allowed keys."""
    sub = cfg.section(key) if key in cfg.data else _Section({}, f"{cfg.path}.{key}")
    out = {name: (sub.choice(name, default, allowed) if allowed else sub.take(name, default))
           for name, (default, allowed) in known.items()}
    sub.finish()
    return out


def _ff_and_norm(cfg: _Section, defaults: DiTConfig) -> dict[str, Any]:
    ff = _kwargs(cfg, "ff_kwargs", {"mult": (defaults.ff_mult, None), "no_bias": (defaults.ff_no_bias, None),
                                    "glu": (True, (True,)), "use_conv": (False, (False,))})
    norm = _kwargs(cfg, "norm_kwargs", {"eps": (defaults.norm_eps, None), "bias": (False, (False,)),
                                        "fix_scale": (False, (False,)), "force_fp32": (False, (False, True))})
    return {"ff_mult": ff["mult"], "ff_no_bias": ff["no_bias"], "norm_eps": float(norm["eps"])}


def _validate(config: ModelConfig, io_channels: int) -> None:
    """Cross-field checks: shapes that must agree for the checkpoint to load and the model to run."""
    _check_window(config, io_channels)
    _check_autoencoder(config, io_channels)
    _check_dit(config, io_channels)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_window(config: ModelConfig, io_channels: int) -> None:
    """The window's length and token count, and the number conditioners' ranges."""
    ae, cond, dit = config.autoencoder, config.conditioning, config.diffusion.dit
    window_seconds = config.sample_size / config.sample_rate
    _check(window_seconds <= MAX_WINDOW_SECONDS,
          f"sample_size {config.sample_size} is {window_seconds:.1f} s at sample_rate {config.sample_rate}; "
          f"a window may be at most {MAX_WINDOW_SECONDS} s")
    tokens = config.sample_size // (ae.downsampling_ratio * dit.patch_size)
    _check(tokens <= MAX_WINDOW_TOKENS,
          f"sample_size {config.sample_size} is {tokens} tokens for the DiT (downsampling_ratio x patch_size = "
          f"{ae.downsampling_ratio * dit.patch_size} samples each); musicguide allows at most {MAX_WINDOW_TOKENS}")
    for number in cond.numbers:  # the conditioner divides by max_val - min_val
        _check(number.min_val < number.max_val,
              f"model.conditioning.configs[{cond.order.index(number.id)}].config.max_val ({number.max_val:g}) "
              f"must be greater than min_val ({number.min_val:g})")


def _check_autoencoder(config: ModelConfig, io_channels: int) -> None:
    """The VAE's strides, widths and channels against each other and the DiT."""
    ae, dit = config.autoencoder, config.diffusion.dit
    enc, dec = ae.encoder, ae.decoder
    _check(math.prod(enc.strides) == ae.downsampling_ratio,
          f"model.pretransform.config.encoder.config.strides {list(enc.strides)} multiply to "
          f"{math.prod(enc.strides)}, not downsampling_ratio {ae.downsampling_ratio}")
    _check(math.prod(dec.strides) == ae.downsampling_ratio,
          f"model.pretransform.config.decoder.config.strides {list(dec.strides)} multiply to "
          f"{math.prod(dec.strides)}, not downsampling_ratio {ae.downsampling_ratio}")
    for side, cfg in (("encoder", enc), ("decoder", dec)):
        _check(len(cfg.strides) == len(cfg.c_mults),
              f"model.pretransform.config.{side}.config: strides ({len(cfg.strides)} stages) and c_mults "
              f"({len(cfg.c_mults)}) differ in length")
    _check(enc.latent_dim == 2 * ae.latent_dim,
          f"model.pretransform.config.encoder.config.latent_dim must be 2 x latent_dim (mean and scale), "
          f"got {enc.latent_dim}")
    _check(dec.latent_dim == ae.latent_dim,
          f"model.pretransform.config.decoder.config.latent_dim ({dec.latent_dim}) must equal latent_dim "
          f"({ae.latent_dim})")
    _check(enc.in_channels == dec.out_channels == ae.io_channels == config.audio_channels,
          f"audio_channels ({config.audio_channels}), the autoencoder's io_channels ({ae.io_channels}) and the "
          f"encoder/decoder channels ({enc.in_channels}/{dec.out_channels}) must agree")
    _check(dit.io_channels == io_channels == ae.latent_dim,
          f"model.diffusion.config.io_channels ({dit.io_channels}) and model.io_channels ({io_channels}) "
          f"must equal the autoencoder's latent_dim ({ae.latent_dim})")


def _check_dit(config: ModelConfig, io_channels: int) -> None:
    """The DiT's patching, heads and conditioning inputs against the conditioners."""
    ae, cond, diff, dit = config.autoencoder, config.conditioning, config.diffusion, config.diffusion.dit
    _check(config.sample_size % (ae.downsampling_ratio * dit.patch_size) == 0,
          f"sample_size ({config.sample_size}) must be a multiple of downsampling_ratio x patch_size "
          f"({ae.downsampling_ratio} x {dit.patch_size})")
    _check(dit.embed_dim % dit.num_heads == 0,
          f"model.diffusion.config.embed_dim ({dit.embed_dim}) must be a multiple of num_heads ({dit.num_heads})")
    _check(dit.head_dim >= dit.rotary_dim,
          f"model.diffusion.config: heads of {dit.head_dim} channels are narrower than the reference's "
          f"32-channel rotary embedding; use embed_dim / num_heads >= 32")
    known = set(cond.order)
    for name, ids in (("cross_attention_cond_ids", diff.cross_attention_cond_ids),
                      ("global_cond_ids", diff.global_cond_ids)):
        missing = [i for i in ids if i not in known]
        _check(not missing, f"model.diffusion.{name} names {missing[0] if missing else ''!r}, "
                           "which model.conditioning does not define")
    texts_in_global = [i for i in diff.global_cond_ids if cond.text(i)]
    _check(not texts_in_global, "model.diffusion.global_cond_ids may only name number conditioners")
    if diff.cross_attention_cond_ids:
        _check(dit.cond_token_dim == cond.cond_dim,
              f"model.diffusion.config.cond_token_dim ({dit.cond_token_dim}) must equal "
              f"model.conditioning.cond_dim ({cond.cond_dim})")
        cond_embed_dim = dit.embed_dim if dit.project_cond_tokens else dit.cond_token_dim
        _check(cond_embed_dim % dit.head_dim == 0 and dit.num_heads % (cond_embed_dim // dit.head_dim) == 0,
              "model.diffusion.config: the cross-attention context width must be a whole number of heads "
              "that divides num_heads")
    if diff.global_cond_ids:
        _check(dit.project_global_cond or dit.global_cond_dim == dit.embed_dim,
              "model.diffusion.config.global_cond_dim must equal embed_dim when project_global_cond is false")
        _check(dit.global_cond_dim == cond.cond_dim * len(diff.global_cond_ids),
              f"model.diffusion.config.global_cond_dim ({dit.global_cond_dim}) must be cond_dim x "
              f"{len(diff.global_cond_ids)} global conditioners ({cond.cond_dim * len(diff.global_cond_ids)})")
