"""SAME, the transformer autoencoder of Stable Audio 3 (stable-audio-3's SAMEEncoder/SAMEDecoder).

    audio [B, 2, N] --patch--> [B, 2·P, N/P] --encoder--> [B, latent_dim, N/(P·∏strides)] --soft norm--> latents
    latents --soft norm⁻¹--> --decoder--> [B, 2·P, N/P] --unpatch--> audio

The patch folds P consecutive samples of each channel into channels. Each encoder level maps its
channels (a 1x1 weight-normalised convolution), then lets `stride` input tokens and one learnt
"new" token attend to each other (and to their neighbours) in transformer blocks, and keeps the new
token: a downsampling by `stride` learnt by attention, not by a convolution. A decoder level does
the reverse: one token and `stride` new ones, of which the new ones are kept. Attention reaches
across groups of tokens in one of two ways:

* **chunks** (SAME-S): fixed chunks of `chunk_size` input tokens, and with `chunk_midpoint_shift`
  the second half of the blocks sees chunks moved by half a chunk (the sequence padded at both
  ends with its own first and last half chunk), so no boundary is fixed for every block;
* **a sliding window** (SAME-L): every token sees `sliding_window = (left, right)` groups around it.

Blocks are pre-norm (DyT, a learnt tanh, or RMS norm) with rotary positions on half of each head,
differential attention (the difference of two softmax attentions over the same values), optional
per-feature DC/HF scaling of the attention output, and a GLU feed-forward (SiLU, or sin(πx) in the
decoder's last `sinusoidal_blocks`). Parameter names follow the reference, so its checkpoints load
unchanged; only what the published models use is built (no conformer, cross-attention or stride
override), and a config that asks for more is refused by `SAMEConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from musicguide.models.sa3_transformer import BlockOptions, TransformerBlock
from musicguide.models.layers import WNConv1d


@dataclass(frozen=True)
class SAMEConfig:
    """One SAME autoencoder (the reference's encoder/decoder config, shared by both halves)."""

    io_channels: int = 2
    patch_size: int = 16  # samples of each channel folded into channels before the encoder
    channels: int = 128
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    strides: tuple[int, ...] = (2, 4, 8, 8)
    transformer_depths: tuple[int, ...] = (3, 3, 3, 3)
    latent_dim: int = 256
    sliding_window: tuple[int, int] | None = None  # (left, right) groups; None: chunks
    chunk_size: int = 128
    chunk_midpoint_shift: bool = False
    dim_heads: int = 128
    differential: bool = True
    feat_scale: bool = False
    ff_mult: float = 3
    mapping_bias: bool = True
    conv_mapping: bool = False
    dyt: bool = True
    layer_scale: bool = False
    decoder_sinusoidal_blocks: tuple[int, ...] = (0, 0, 0, 0)
    bottleneck_auto_scale: bool = False  # the soft-norm bottleneck's running_std
    soft_clip: bool = False

    def __post_init__(self):
        levels = len(self.c_mults)
        if not (len(self.strides) == len(self.transformer_depths) == len(self.decoder_sinusoidal_blocks) == levels):
            raise ValueError("SAME: c_mults, strides, transformer_depths and sinusoidal_blocks need one entry per level")
        if self.sliding_window is None and any(self.chunk_size % s for s in self.strides):
            raise ValueError(f"SAME: every stride must divide chunk_size {self.chunk_size}")

    @property
    def downsampling_ratio(self) -> int:
        return self.patch_size * math.prod(self.strides)


def block_options(config: SAMEConfig) -> BlockOptions:
    """SAME's blocks: DyT (or RMS norm) before each branch and on q/k, rotary positions of their own."""
    kind = "dyt" if config.dyt else "rms"
    return BlockOptions(norm_type="dyt" if config.dyt else "rms_norm", norm_eps=1e-3, differential=config.differential,
                        qk_norm=kind, qk_norm_eps=1e-3, feat_scale=config.feat_scale, ff_mult=config.ff_mult,
                        layer_scale=config.layer_scale, add_rope=True)


# ---- the resampling level -------------------------------------------------------------------------------


def pad_to_multiple(x: Tensor, size: int, dim: int) -> Tensor:
    missing = (-x.shape[dim]) % size
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class ResamplingBlock(nn.Module):
    """One level: groups of `stride` tokens (encoder) or one token (decoder), each followed by the
    learnt new tokens it turns into; transformer blocks over the groups; the new tokens kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, depth: int, config: SAMEConfig, *,
                 encoder: bool, sinusoidal_blocks: int = 0):
        super().__init__()
        self.encoder, self.stride, self.config = encoder, stride, config
        dim = out_channels if encoder else in_channels
        self.mapping = (WNConv1d(in_channels, out_channels, 3 if config.conv_mapping else 1,
                                 padding=1 if config.conv_mapping else 0, bias=config.mapping_bias)
                        if in_channels != out_channels else nn.Identity())
        self.transformers = nn.ModuleList(TransformerBlock(dim, config.dim_heads, block_options(config),
                                                           sinusoidal=depth - i < sinusoidal_blocks) for i in range(depth))
        # on the CPU, then to the default device: no arithmetic on `meta` (layers.inverse_frequencies)
        initial = 1e-5 * torch.randn(1, 1 if encoder else stride, dim, device="cpu")
        self.new_tokens = nn.Parameter(initial.to(torch.empty(0).device))
        # tokens per group: the inputs, then the new ones
        self.inputs, self.outputs = (stride, 1) if encoder else (1, stride)
        self.window = (None if config.sliding_window is None
                       else tuple(w * (stride + 1) for w in config.sliding_window))

    def forward(self, x: Tensor) -> Tensor:
        batch, chunked = x.shape[0], self.config.sliding_window is None
        if self.encoder:
            if self.transformers:
                x = pad_to_multiple(x, self.config.chunk_size if chunked else self.inputs, dim=-1)
            x = self.mapping(x)
        if self.transformers:
            x = x.transpose(1, 2)
            if not self.encoder:
                x = pad_to_multiple(x, self.config.chunk_size // self.stride if chunked else self.inputs, dim=-2)
            groups = x.reshape(-1, self.inputs, x.shape[-1])
            groups = torch.cat([groups, self.new_tokens.expand(groups.shape[0], -1, -1)], dim=-2)
            x = groups.reshape(batch, -1, x.shape[-1])
            x = self._attend(x)
            x = x.reshape(-1, self.stride + 1, x.shape[-1])[:, -self.outputs:]
            x = x.reshape(batch, -1, x.shape[-1]).transpose(1, 2)
        if not self.encoder:
            x = self.mapping(x)
        return x

    def _attend(self, x: Tensor) -> Tensor:
        """The blocks over x [B, tokens, D]: in a sliding window, or in chunks (the second half of
        the blocks on chunks moved by half a chunk, with `chunk_midpoint_shift`)."""
        if self.window is not None:
            for block in self.transformers:
                x = block(x, window=self.window)
            return x
        chunk = self.config.chunk_size + self.config.chunk_size // self.stride
        split = len(self.transformers) // 2 if self.config.chunk_midpoint_shift else len(self.transformers)
        x = self._in_chunks(x, self.transformers[:split], chunk)
        if split == len(self.transformers):
            return x
        shift = chunk // 2  # whole groups: the halves of the first and last chunk pad the ends
        x = torch.cat([x[:, :shift], x, x[:, -shift:]], dim=1)
        return self._in_chunks(x, self.transformers[split:], chunk)[:, shift:-shift]

    @staticmethod
    def _in_chunks(x: Tensor, blocks, chunk: int) -> Tensor:
        batch, length, dim = x.shape
        x = x.reshape(-1, chunk, dim)
        for block in blocks:
            x = block(x)
        return x.reshape(batch, length, dim)


# ---- the autoencoder --------------------------------------------------------------------------------------


class Transpose(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(-1, -2)


class SAMEEncoder(nn.Module):
    def __init__(self, config: SAMEConfig):
        super().__init__()
        dims = [config.io_channels * config.patch_size] + [m * config.channels for m in config.c_mults]
        self.layers = nn.ModuleList([
            *(ResamplingBlock(dims[i], dims[i + 1], config.strides[i], config.transformer_depths[i], config, encoder=True)
              for i in range(len(config.c_mults))),
            Transpose(), nn.Linear(dims[-1], config.latent_dim), Transpose(),
        ])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SAMEDecoder(nn.Module):
    def __init__(self, config: SAMEConfig):
        super().__init__()
        dims = [config.io_channels * config.patch_size] + [m * config.channels for m in config.c_mults]
        levels = len(config.c_mults)
        self.layers = nn.ModuleList([
            Transpose(), nn.Linear(config.latent_dim, dims[-1]), Transpose(),
            *(ResamplingBlock(dims[i], dims[i - 1], config.strides[i - 1], config.transformer_depths[i - 1], config,
                              encoder=False, sinusoidal_blocks=config.decoder_sinusoidal_blocks[i - 1])
              for i in range(levels, 0, -1)),
        ])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SoftNormBottleneck(nn.Module):
    """latents = (encoder output · scaling_factor + bias) / running_std: a learnt per-channel affine map."""

    def __init__(self, dim: int, auto_scale: bool):
        super().__init__()
        self.scaling_factor = nn.Parameter(torch.ones(1, dim, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1))
        self.noise_scaling_factor = nn.Parameter(torch.ones(1, 0, 1))  # for noise channels the published models do not add
        self.running_std = nn.Parameter(torch.ones(1), requires_grad=False) if auto_scale else None

    def encode(self, x: Tensor) -> Tensor:
        x = x * self.scaling_factor + self.bias
        return x if self.running_std is None else x / self.running_std

    def decode(self, x: Tensor) -> Tensor:
        return x if self.running_std is None else x * self.running_std


class SAME(nn.Module):
    """encode: audio [B, io_channels, N] -> latents [B, latent_dim, ceil(N / ratio)]; decode: back."""

    def __init__(self, config: SAMEConfig):
        super().__init__()
        self.config = config
        self.encoder = SAMEEncoder(config)
        self.decoder = SAMEDecoder(config)
        self.bottleneck = SoftNormBottleneck(config.latent_dim, config.bottleneck_auto_scale)

    def encode(self, audio: Tensor) -> Tensor:
        patched = pad_to_multiple(audio, self.config.patch_size, dim=-1)
        b, c, n = patched.shape
        # "b c (l h) -> b (c h) l": each channel's P consecutive samples become P channels
        patched = patched.reshape(b, c, n // self.config.patch_size, self.config.patch_size).permute(0, 1, 3, 2)
        return self.bottleneck.encode(self.encoder(patched.reshape(b, c * self.config.patch_size, -1)))

    def decode(self, latents: Tensor) -> Tensor:
        x = self.decoder(self.bottleneck.decode(latents))
        b, _, length = x.shape
        x = x.reshape(b, self.config.io_channels, self.config.patch_size, length).permute(0, 1, 3, 2)
        x = x.reshape(b, self.config.io_channels, length * self.config.patch_size)
        return torch.tanh(x) if self.config.soft_clip else x


# ---- the published config format -------------------------------------------------------------------------

# The encoder/decoder options the published models leave at these values; anything else is refused,
# not silently built differently (the reference's own defaults, where it has them).
_FIXED = {"conformer": False, "cross_attn": False, "variable_stride": False, "mask_noise": 0.0, "causal": False}
_SHARED = ("channels", "c_mults", "strides", "transformer_depths", "latent_dim", "sliding_window", "chunk_size",
           "chunk_midpoint_shift", "dim_heads", "differential", "feat_scale", "ff_mult", "mapping_bias", "conv_mapping",
           "dyt", "layer_scale")
_IGNORED = {"checkpointing", "freeze_backbone", "in_channels", "out_channels", "sinusoidal_blocks"}


def same_config_from_dict(data: dict) -> SAMEConfig:
    """A SAMEConfig from the reference's autoencoder config (SAME-S/L's `model`, or a full SA3
    model's `model.pretransform.config`). Raises ValueError naming what it does not support."""
    encoder, decoder = data["encoder"]["config"], data["decoder"]["config"]
    patched, bottleneck = data["pretransform"]["config"], data["bottleneck"]["config"]
    defaults = SAMEConfig()
    for side, block in (("encoder", encoder), ("decoder", decoder)):
        unknown = set(block) - set(_SHARED) - set(_FIXED) - _IGNORED
        if unknown:
            raise ValueError(f"SAME {side}: unsupported options {sorted(unknown)}")
        for key, value in _FIXED.items():
            if block.get(key, value) != value:
                raise ValueError(f"SAME {side}: {key}={block[key]!r} is not supported (the published models use {value!r})")
    shared = {}
    for key in _SHARED:
        value = encoder.get(key, getattr(defaults, key))
        if decoder.get(key, getattr(defaults, key)) != value:
            raise ValueError(f"SAME: the encoder's and the decoder's {key} differ; one SAMEConfig holds both")
        shared[key] = tuple(value) if isinstance(value, list) else value
    if patched.get("oversampling", 1) != 1 or patched.get("postfilter_channels", 0):
        raise ValueError("SAME: an oversampled or post-filtered patch is not supported (the reference cannot run it either)")
    if bottleneck.get("noise_augment_dim", 0) or bottleneck.get("noise_regularize", False):
        raise ValueError("SAME: a bottleneck that adds noise when decoding is not supported")
    if bottleneck.get("dim", shared["latent_dim"]) != shared["latent_dim"]:
        raise ValueError("SAME: the bottleneck's dim differs from latent_dim")
    io = patched["channels"]
    patch = patched["patch_size"]
    if encoder.get("in_channels", io * patch) != io * patch or decoder.get("out_channels", io * patch) != io * patch:
        raise ValueError("SAME: the encoder's in_channels and the decoder's out_channels must be channels x patch_size")
    levels = len(shared["c_mults"])
    return SAMEConfig(io_channels=io, patch_size=patch, **shared,
                      decoder_sinusoidal_blocks=tuple(decoder.get("sinusoidal_blocks", [0] * levels)),
                      bottleneck_auto_scale=bool(bottleneck.get("auto_scale", False)),
                      soft_clip=bool(data["decoder"].get("soft_clip", False)))
