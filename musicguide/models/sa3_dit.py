"""The diffusion transformer of Stable Audio 3 (stable-audio-3's DiTWrapper / DiffusionTransformer).

    x [B, io_channels, T] (+ input-concat conditioning, e.g. the inpainting mask and masked latents)
      -> 1x1 conv (residual) -> tokens, `patch_size` frames each -> project_in
      -> [prepended global token] -> transformer blocks (adaLN from the timestep and the global
         conditioning, cross-attention to the conditioning tokens) -> project_out -> frames
      -> 1x1 conv (residual) -> the network's output [B, io_channels, T]

The timestep t ∈ [0, 1] (or its normalised log-SNR) goes through Fourier features and an MLP; the
global conditioning (the seconds) is projected and added to it. What the output means (velocity,
or the denoised latents for `rf_denoiser`) is the sampler's business (`diffusion_objective`).
Parameter names follow the reference (`model.model.…` inside its DiTWrapper); the block is
sa3_transformer.TransformerBlock. Classifier-free guidance is the caller's: this is one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicguide.models.sa3_transformer import BlockOptions, Rotary, TransformerBlock


@dataclass(frozen=True)
class SA3DiTConfig:
    """The reference's DiffusionTransformer arguments, with its defaults (a config leaves most out)."""

    io_channels: int = 32
    patch_size: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 8
    cond_token_dim: int = 0
    project_cond_tokens: bool = True
    global_cond_dim: int = 0
    project_global_cond: bool = True
    input_concat_dim: int = 0
    global_cond_type: str = "prepend"  # the global vector as a token before the sequence, or "adaLN"
    timestep_features_type: str = "learned"  # or "expo"
    timestep_features_dim: int = 256
    timestep_features_logsnr: bool = False
    diffusion_objective: str = "v"
    rotary_pos_emb: bool = True
    sliding_window: tuple[int, int] | None = None
    block: BlockOptions = field(default_factory=BlockOptions)

    def __post_init__(self):
        if self.global_cond_type not in ("adaLN", "prepend"):
            raise ValueError(f"global_cond_type must be 'adaLN' or 'prepend', got {self.global_cond_type!r}")
        if self.timestep_features_type not in ("learned", "expo"):
            raise ValueError(f"timestep_features_type must be 'learned' or 'expo', got {self.timestep_features_type!r}")


class FourierFeatures(nn.Module):
    """cos and sin of 2π t W for a fixed random W (a buffer): the reference's learned-type features."""

    def __init__(self, in_features: int, out_features: int, std: float = 16.0):
        super().__init__()
        # drawn and scaled on the CPU, then moved to the default device: arithmetic on `meta` (a
        # model built to be loaded) imports torch._dynamo, about a second (layers.inverse_frequencies)
        weight = torch.randn(out_features // 2, in_features, device="cpu") * std
        self.register_buffer("weight", weight.to(torch.empty(0).device))

    def forward(self, x: Tensor) -> Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class ExpoFourierFeatures(nn.Module):
    """cos and sin of 2π t f for frequencies spaced evenly in log from 0.5 to 10000 (no weights)."""

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 10000.0):
        super().__init__()
        self.dim, self.min_freq, self.max_freq = dim, min_freq, max_freq

    def forward(self, t: Tensor) -> Tensor:
        dtype = t.dtype
        t = t.float()
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        ramp = torch.linspace(0, 1, self.dim // 2, device=t.device, dtype=torch.float32)
        low, high = math.log(self.min_freq), math.log(self.max_freq)
        args = t * torch.exp(ramp * (high - low) + low) * 2 * math.pi
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)


def _mlp(dim_in: int, dim_out: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out, bias=bias), nn.SiLU(), nn.Linear(dim_out, dim_out, bias=bias))


class ContinuousTransformer(nn.Module):
    def __init__(self, config: SA3DiTConfig, dim_in: int, dim_out: int, cond_dim: int | None, adaln: bool):
        super().__init__()
        dim, dim_heads = config.embed_dim, config.embed_dim // config.num_heads
        self.project_in = nn.Linear(dim_in, dim, bias=False)
        self.project_out = nn.Linear(dim, dim_out, bias=False)
        self.rotary_pos_emb = Rotary(max(dim_heads // 2, 32)) if config.rotary_pos_emb else None
        if adaln:
            self.global_cond_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim * 6))
        self.window = config.sliding_window
        self.layers = nn.ModuleList(TransformerBlock(dim, dim_heads, config.block, dim_context=cond_dim, adaln=adaln)
                                    for _ in range(config.depth))

    def forward(self, x: Tensor, *, prepend: Tensor | None, context: Tensor | None, global_cond: Tensor | None) -> Tensor:
        x = self.project_in(x)
        if prepend is not None:
            x = torch.cat([prepend, x], dim=-2)
        angles = None if self.rotary_pos_emb is None else self.rotary_pos_emb(x.shape[1])
        if global_cond is not None and hasattr(self, "global_cond_embedder"):
            global_cond = self.global_cond_embedder(global_cond)
        for layer in self.layers:
            x = layer(x, context=context, angles=angles, global_cond=global_cond, window=self.window)
        return self.project_out(x)


class SA3DiT(nn.Module):
    """forward(x, t, cross_attn_cond=None, global_cond=None, input_concat_cond=None) -> [B, io, T]."""

    def __init__(self, config: SA3DiTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        features = config.timestep_features_dim
        self.timestep_features = (ExpoFourierFeatures(features) if config.timestep_features_type == "expo"
                                  else FourierFeatures(1, features))
        self.to_timestep_embed = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        cond_dim = None
        if config.cond_token_dim > 0:
            cond_dim = dim if config.project_cond_tokens else config.cond_token_dim
            self.to_cond_embed = _mlp(config.cond_token_dim, cond_dim, bias=False)
        if config.global_cond_dim > 0:
            self.to_global_embed = _mlp(config.global_cond_dim, dim if config.project_global_cond else config.global_cond_dim,
                                        bias=False)
        dim_in = config.io_channels + config.input_concat_dim
        self.transformer = ContinuousTransformer(config, dim_in * config.patch_size, config.io_channels * config.patch_size,
                                                 cond_dim, adaln=config.global_cond_type == "adaLN")
        self.preprocess_conv = nn.Conv1d(dim_in, dim_in, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(config.io_channels, config.io_channels, 1, bias=False)

    def _timestep_input(self, t: Tensor) -> Tensor:
        if not self.config.timestep_features_logsnr:
            return t
        # log-SNR of rectified flow, clamped to [-12, 5] and mapped to [0, 1] (t = 0 -> 0, t = 1 -> 1)
        clamped = t.float().clamp(1e-7, 1 - 1e-7)
        logsnr = torch.log((1 - clamped) / clamped).clamp(-12.0, 5.0)
        return ((5.0 - logsnr) / 17.0).to(t.dtype)

    def forward(self, x: Tensor, t: Tensor, *, cross_attn_cond: Tensor | None = None, global_cond: Tensor | None = None,
                input_concat_cond: Tensor | None = None) -> Tensor:
        dtype = next(self.parameters()).dtype
        x, t = x.to(dtype), t.float()  # t stays float32: its log-SNR amplifies low-precision errors near 1
        context = None if cross_attn_cond is None else self.to_cond_embed(cross_attn_cond.to(dtype))
        global_embed = None if global_cond is None else self.to_global_embed(global_cond.to(dtype))
        if input_concat_cond is not None:
            input_concat_cond = input_concat_cond.to(dtype)
            if input_concat_cond.shape[2] != x.shape[2]:
                input_concat_cond = F.interpolate(input_concat_cond, (x.shape[2],), mode="nearest")
            x = torch.cat([x, input_concat_cond], dim=1)
        timestep = self.to_timestep_embed(self.timestep_features(self._timestep_input(t).to(x.dtype)[:, None]))
        global_embed = timestep if global_embed is None else global_embed + timestep
        prepend = global_embed.unsqueeze(1) if self.config.global_cond_type == "prepend" else None
        x = self.preprocess_conv(x) + x
        x = x.transpose(1, 2)  # b c t -> b t c
        p = self.config.patch_size
        if p > 1:  # "b (t p) c -> b t (c p)"
            x = x.reshape(x.shape[0], -1, p, x.shape[-1]).transpose(2, 3).reshape(x.shape[0], -1, x.shape[-1] * p)
        out = self.transformer(x, prepend=prepend, context=context,
                               global_cond=global_embed if self.config.global_cond_type == "adaLN" else None)
        out = out.transpose(1, 2)[:, :, 0 if prepend is None else 1:]
        if p > 1:  # "b (c p) t -> b c (t p)"
            b, cp, frames = out.shape
            out = out.reshape(b, cp // p, p, frames).transpose(2, 3).reshape(b, cp // p, frames * p)
        return self.postprocess_conv(out) + out


# ---- the published config format ---------------------------------------------------------------------------

_DIT_KEYS = {"io_channels", "patch_size", "embed_dim", "depth", "num_heads", "cond_token_dim", "project_cond_tokens",
             "global_cond_dim", "project_global_cond", "input_concat_dim", "global_cond_type",
             "timestep_features_type", "timestep_features_dim", "timestep_features_logsnr", "rotary_pos_emb",
             "sliding_window"}
_BLOCK_KEYS = {"norm_type", "layer_scale", "add_rope", "attn_kwargs", "ff_kwargs", "norm_kwargs", "zero_init_branch_outputs"}
# options the reference has and the published models (as far as they can be reconstructed) do not use
_DIT_FIXED = {"transformer_type": "continuous_transformer", "timestep_cond_type": "global", "prepend_cond_dim": 0,
              "local_add_cond_dim": None, "modular_local_cond_configs": None, "conformer": False,
              "cross_attn_rotary_pos_emb": False, "num_memory_tokens": 0, "use_sinusoidal_emb": False,
              "use_abs_pos_emb": False, "final_cross_attn_ix": -1, "causal": False}


def sa3_dit_config_from_dict(diffusion: dict) -> SA3DiTConfig:
    """An SA3DiTConfig from a model config's `model.diffusion` (its `config` and `diffusion_objective`).
    Raises ValueError naming anything it would not build as the reference does."""
    data = diffusion["config"]
    unknown = set(data) - _DIT_KEYS - _BLOCK_KEYS - set(_DIT_FIXED)
    if unknown:
        raise ValueError(f"SA3 DiT: unsupported options {sorted(unknown)}")
    for key, value in _DIT_FIXED.items():
        if data.get(key, value) not in (value, [] if value is None else value):
            raise ValueError(f"SA3 DiT: {key}={data[key]!r} is not supported")
    if diffusion.get("modular_local_cond_configs"):
        raise ValueError("SA3 DiT: modular local conditioning is not supported")
    attn, ff = dict(data.get("attn_kwargs", {})), dict(data.get("ff_kwargs", {}))
    for name, given, known in (("attn_kwargs", attn, {"qk_norm", "qk_norm_eps", "differential", "feat_scale"}),
                               ("ff_kwargs", ff, {"mult", "no_bias", "glu"}),
                               ("norm_kwargs", data.get("norm_kwargs", {}), {"eps"})):
        if set(given) - known:
            raise ValueError(f"SA3 DiT: unsupported {name} {sorted(set(given) - known)}")
    if not ff.get("glu", True):
        raise ValueError("SA3 DiT: a feed-forward without GLU is not supported")
    block = BlockOptions(norm_type=data.get("norm_type", "layer_norm"),
                         norm_eps=data.get("norm_kwargs", {}).get("eps", 1e-5),
                         differential=attn.get("differential", False), qk_norm=attn.get("qk_norm", "none"),
                         qk_norm_eps=attn.get("qk_norm_eps", 1e-6), feat_scale=attn.get("feat_scale", False),
                         ff_mult=ff.get("mult", 4), ff_bias=not ff.get("no_bias", False),
                         layer_scale=data.get("layer_scale", False), add_rope=data.get("add_rope", False))
    fields = {key: data[key] for key in _DIT_KEYS if key in data}
    if fields.get("sliding_window") is not None:
        fields["sliding_window"] = tuple(fields["sliding_window"])
    return SA3DiTConfig(**fields, block=block, diffusion_objective=diffusion.get("diffusion_objective", "v"))
