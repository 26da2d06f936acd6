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
import torch.nn.functional as F
from torch import Tensor, nn

from musicguide.models.vae import WNConv1d


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


# ---- the transformer block ----------------------------------------------------------------------------


class DynamicTanh(nn.Module):
    """DyT: gamma · tanh(alpha · x) + beta, a normalisation without statistics."""

    def __init__(self, dim: int, init_alpha: float = 4.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), init_alpha))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.tanh(self.alpha * x) + self.beta


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, x.shape[-1:], weight=self.gamma, eps=self.eps)


def norm(dim: int, dyt: bool) -> nn.Module:
    return DynamicTanh(dim) if dyt else RMSNorm(dim, eps=1e-3)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Rotary(nn.Module):
    """Rotary position angles for `dim` of a head's channels (the rest pass unrotated)."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, length: int) -> Tensor:
        angles = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)[:, None] * self.inv_freq
        return torch.cat([angles, angles], dim=-1)


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """x [..., n, d] with its first angles.shape[-1] channels rotated (in float32)."""
    width = angles.shape[-1]
    head, rest = x[..., :width].float(), x[..., width:]
    first, second = head.chunk(2, dim=-1)
    turned = torch.cat([-second, first], dim=-1)
    rotated = head * angles.cos() + turned * angles.sin()
    return torch.cat([rotated.to(x.dtype), rest], dim=-1)


class Attention(nn.Module):
    """Self-attention; `differential` subtracts a second attention map's output (same values)."""

    def __init__(self, dim: int, dim_heads: int, *, dyt: bool, differential: bool, feat_scale: bool):
        super().__init__()
        self.heads, self.differential = dim // dim_heads, differential
        self.to_qkv = nn.Linear(dim, dim * (5 if differential else 3), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.q_norm = DynamicTanh(dim_heads) if dyt else RMSNorm(dim_heads, eps=1e-3)
        self.k_norm = DynamicTanh(dim_heads) if dyt else RMSNorm(dim_heads, eps=1e-3)
        self.feat_scale = feat_scale
        if feat_scale:
            self.lambda_dc = nn.Parameter(torch.zeros(dim))
            self.lambda_hf = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, angles: Tensor, window: tuple[int, int] | None) -> Tensor:
        b, n, _ = x.shape
        parts = [p.reshape(b, n, self.heads, -1).transpose(1, 2) for p in self.to_qkv(x).chunk(5 if self.differential else 3, dim=-1)]
        q, k, v = parts[:3]
        mask = None if window is None else band_mask(n, window, x.device, x.dtype)
        queries, keys = [q, *parts[3:4]], [k, *parts[4:5]]
        outs = []
        for query, key in zip(queries, keys):
            query, key = rotate(self.q_norm(query), angles).to(v.dtype), rotate(self.k_norm(key), angles).to(v.dtype)
            outs.append(F.scaled_dot_product_attention(query, key, v, attn_mask=mask))
        out = outs[0] - outs[1] if self.differential else outs[0]
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        if self.feat_scale:
            dc = out.mean(dim=-2, keepdim=True)
            out = out + self.lambda_dc * dc + self.lambda_hf * (out - dc)
        return out


def band_mask(n: int, window: tuple[int, int], device, dtype) -> Tensor:
    """0 where key j is within (left, right) tokens of query i, -inf elsewhere."""
    offset = torch.arange(n, device=device)[None, :] - torch.arange(n, device=device)[:, None]
    inside = (offset >= -window[0]) & (offset <= window[1])
    return torch.zeros((n, n), device=device, dtype=dtype).masked_fill(~inside, float("-inf"))


class GLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, sinusoidal: bool):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.sinusoidal = sinusoidal

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * (torch.sin(3.14159265359 * gate) if self.sinusoidal else F.silu(gate))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, sinusoidal: bool):
        super().__init__()
        inner = int(dim * mult)
        # the reference's Sequential(GLU, Identity, Linear, Identity): parameters at 0 and 2
        self.ff = nn.Sequential(GLU(dim, inner, sinusoidal), nn.Identity(), nn.Linear(inner, dim), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, config: SAMEConfig, sinusoidal: bool):
        super().__init__()
        dim_heads = min(config.dim_heads, dim)
        self.pre_norm = norm(dim, config.dyt)
        self.self_attn = Attention(dim, dim_heads, dyt=config.dyt, differential=config.differential,
                                   feat_scale=config.feat_scale)
        self.self_attn_scale = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.ff_norm = norm(dim, config.dyt)
        self.ff = FeedForward(dim, config.ff_mult, sinusoidal)
        self.ff_scale = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.rope = Rotary(dim_heads // 2)

    def forward(self, x: Tensor, window: tuple[int, int] | None = None) -> Tensor:
        angles = self.rope(x.shape[-2])
        x = x + self.self_attn_scale(self.self_attn(self.pre_norm(x), angles, window))
        return x + self.ff_scale(self.ff(self.ff_norm(x)))


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
        self.transformers = nn.ModuleList(TransformerBlock(dim, config, sinusoidal=depth - i < sinusoidal_blocks)
                                          for i in range(depth))
        self.new_tokens = nn.Parameter(1e-5 * torch.randn(1, 1 if encoder else stride, dim))
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
                x = block(x, self.window)
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
