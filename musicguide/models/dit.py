"""The diffusion transformer (DiT) of Stable Audio Open, and its number conditioners.

    latents x [B, C, T], time t [B], conditioning
      -> 1x1 conv (residual) -> tokens [B, T, C] -> linear to width D
      -> prepend one global token: MLP(timing embeddings) + MLP(Fourier features of t)
      -> depth x [pre-norm self-attention with rotary positions, pre-norm cross-attention to the
                  conditioning tokens, pre-norm SwiGLU feed-forward], each residual
      -> linear to C, drop the global token -> 1x1 conv (residual) -> output [B, C, T]

This is stable-audio-tools' DiffusionTransformer + ContinuousTransformer at the settings the Stable
Audio Open models use; module and parameter names follow the reference so that its checkpoints load
unchanged. What the output means (v, or a flow velocity) is the schedule's business, not the net's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from musicguide.models.config import DiTConfig, NumberConditionerConfig
from musicguide.models.layers import inverse_frequencies


class FourierFeatures(nn.Module):
    """[cos, sin](2 pi t W) with random (learned) frequencies W: the timestep embedding's input."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        # empty + normal_ draws the same numbers as randn, and is skipped when loading (layers.uninitialized)
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(out_features // 2, in_features)))

    def forward(self, t: Tensor) -> Tensor:
        f = 2 * math.pi * t @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class LayerNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias.

    The reference keeps the bias as a (persistent) buffer, so it is part of the checkpoint; we keep
    it the same way and use whatever the checkpoint holds."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary position angles for the first `dim` channels of each head (the rest are left alone).

    `inv_freq` is a persistent buffer in the reference, hence in the checkpoint."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(dim, base))

    def forward(self, seq_len: int) -> Tensor:
        """Angles [seq_len, dim]: each frequency twice, matching the half-split rotation below."""
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.float()[None]
        return torch.cat([freqs, freqs], dim=-1)


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + dim/2) of x[..., :dim] by `angles`, in float32 for accuracy."""
    dim = angles.shape[-1]
    rotated, rest = x[..., :dim].float(), x[..., dim:]
    first, second = rotated.chunk(2, dim=-1)
    half_turned = torch.cat([-second, first], dim=-1)
    rotated = rotated * angles.cos() + half_turned * angles.sin()
    return torch.cat([rotated.to(x.dtype), rest], dim=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention (fused to_qkv) or cross-attention (to_q, to_kv).

    In cross-attention the context may be narrower than the model (SAO 1.0: 768 vs 1536): it is cut
    into fewer heads of the same width and each is shared by num_heads / kv_heads query heads, as
    the reference does."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, qk_norm: str = "none"):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.qk_norm = qk_norm
        if context_dim is None:
            self.kv_heads = self.num_heads
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        else:
            self.kv_heads = context_dim // head_dim
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * context_dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        if qk_norm == "ln":
            self.q_norm = nn.LayerNorm(head_dim, eps=1e-6)
            self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)

    def _heads(self, x: Tensor, heads: int) -> Tensor:
        return x.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)  # [B, H, N, Dh]

    def forward(self, x: Tensor, context: Tensor | None = None, rotary: Tensor | None = None) -> Tensor:
        if context is None:
            q, k, v = (self._heads(p, self.num_heads) for p in self.to_qkv(x).chunk(3, dim=-1))
        else:
            q = self._heads(self.to_q(x), self.num_heads)
            k, v = (self._heads(p, self.kv_heads) for p in self.to_kv(context).chunk(2, dim=-1))
        if self.qk_norm == "l2":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        elif self.qk_norm == "ln":
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if self.kv_heads != self.num_heads:
            share = self.num_heads // self.kv_heads
            k, v = k.repeat_interleave(share, dim=1), v.repeat_interleave(share, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GLU(nn.Module):
    """SwiGLU input projection: one linear map, half of it gates the other half through SiLU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.silu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, no_bias: bool):
        super().__init__()
        inner = int(dim * mult)
        # The Identity keeps the output projection at index 2, where the reference (which puts
        # optional transposes there) and its checkpoints have it: `ff.ff.2.weight`.
        self.ff = nn.Sequential(GLU(dim, inner), nn.Identity(), nn.Linear(inner, dim, bias=not no_bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, context_dim: int | None):
        super().__init__()
        dim, head_dim = cfg.embed_dim, cfg.head_dim
        self.pre_norm = LayerNorm(dim, cfg.norm_eps)
        self.self_attn = Attention(dim, head_dim, qk_norm=cfg.qk_norm)
        self.cross_attend = context_dim is not None
        if context_dim is not None:
            self.cross_attend_norm = LayerNorm(dim, cfg.norm_eps)
            self.cross_attn = Attention(dim, head_dim, context_dim=context_dim, qk_norm=cfg.qk_norm)
        self.ff_norm = LayerNorm(dim, cfg.norm_eps)
        self.ff = FeedForward(dim, cfg.ff_mult, cfg.ff_no_bias)

    def forward(self, x: Tensor, rotary: Tensor, context: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.pre_norm(x), rotary=rotary)
        if context is not None and self.cross_attend:
            x = x + self.cross_attn(self.cross_attend_norm(x), context=context)
        return x + self.ff(self.ff_norm(x))


class ContinuousTransformer(nn.Module):
    """Linear in, prepended tokens, transformer blocks, linear out (tokens are [B, N, width])."""

    def __init__(self, cfg: DiTConfig, dim_in: int, dim_out: int, context_dim: int | None):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(cfg, context_dim) for _ in range(cfg.depth))
        self.project_in = nn.Linear(dim_in, cfg.embed_dim, bias=False)
        self.project_out = nn.Linear(cfg.embed_dim, dim_out, bias=False)
        self.rotary_pos_emb = RotaryEmbedding(cfg.rotary_dim)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, prepend: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        x = self.project_in(x)
        if prepend is not None:
            x = torch.cat([prepend, x], dim=1)
        # Positions count the prepended token too, as in the reference.
        rotary = self.rotary_pos_emb(x.shape[1])
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, rotary, context, use_reentrant=False)
            else:
                x = layer(x, rotary, context)
        return self.project_out(x)


def _mlp(dim_in: int, dim_out: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out, bias=bias), nn.SiLU(), nn.Linear(dim_out, dim_out, bias=bias))


class DiffusionTransformer(nn.Module):
    """The denoising network: (x_t, t, conditioning) -> model output, same shape as x_t."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        timestep_features = 256
        self.timestep_features = FourierFeatures(1, timestep_features)
        self.to_timestep_embed = _mlp(timestep_features, cfg.embed_dim, bias=True)
        context_dim = None
        if cfg.cond_token_dim > 0:
            context_dim = cfg.embed_dim if cfg.project_cond_tokens else cfg.cond_token_dim
            self.to_cond_embed = nn.Sequential(nn.Linear(cfg.cond_token_dim, context_dim, bias=False), nn.SiLU(),
                                               nn.Linear(context_dim, context_dim, bias=False))
        if cfg.global_cond_dim > 0:
            global_dim = cfg.embed_dim if cfg.project_global_cond else cfg.global_cond_dim
            self.to_global_embed = nn.Sequential(nn.Linear(cfg.global_cond_dim, global_dim, bias=False), nn.SiLU(),
                                                 nn.Linear(global_dim, global_dim, bias=False))
        p = cfg.patch_size
        self.transformer = ContinuousTransformer(cfg, cfg.io_channels * p, cfg.io_channels * p, context_dim)
        self.preprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)

    def forward(self, x: Tensor, t: Tensor, cross_attn_cond: Tensor | None = None,
                global_cond: Tensor | None = None) -> Tensor:
        """x [B, C, T]; t [B]; cross_attn_cond [B, N, cond_token_dim] or None (no cross-attention);
        global_cond [B, global_cond_dim] or None. T must be a multiple of patch_size."""
        context = self.to_cond_embed(cross_attn_cond) if cross_attn_cond is not None else None
        global_token = self.to_timestep_embed(self.timestep_features(t[:, None]))
        if global_cond is not None:
            global_token = global_token + self.to_global_embed(global_cond)

        x = self.preprocess_conv(x) + x
        tokens = _patchify(x, self.cfg.patch_size)
        out = self.transformer(tokens, prepend=global_token[:, None], context=context)[:, 1:]
        out = _unpatchify(out, self.cfg.patch_size)
        return self.postprocess_conv(out) + out


def _patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, T] -> tokens [B, T / p, C * p], each token holding p consecutive frames ("b c (t p) -> b t (c p)")."""
    b, c, t = x.shape
    return x.reshape(b, c, t // p, p).permute(0, 2, 1, 3).reshape(b, t // p, c * p)


def _unpatchify(tokens: Tensor, p: int) -> Tensor:
    b, n, cp = tokens.shape
    return tokens.reshape(b, n, cp // p, p).permute(0, 2, 1, 3).reshape(b, cp // p, n * p)


class LearnedFourierEmbedding(nn.Module):
    """[x, sin(2 pi x w), cos(2 pi x w)] with learned frequencies w (the reference's
    LearnedPositionalEmbedding; note sin before cos, unlike the timestep features)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.Parameter(nn.init.normal_(torch.empty(dim // 2)))

    def forward(self, x: Tensor) -> Tensor:
        freqs = x[:, None] * self.weights[None] * 2 * math.pi
        return torch.cat([x[:, None], freqs.sin(), freqs.cos()], dim=-1)


class NumberEmbedder(nn.Module):
    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        self.embedding = nn.Sequential(LearnedFourierEmbedding(dim), nn.Linear(dim + 1, features))

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding(x)


class NumberConditioner(nn.Module):
    """A number such as seconds_total, clamped to [min_val, max_val], scaled to [0, 1], embedded."""

    def __init__(self, cfg: NumberConditionerConfig, output_dim: int):
        super().__init__()
        self.min_val, self.max_val = cfg.min_val, cfg.max_val
        self.embedder = NumberEmbedder(output_dim)

    def forward(self, values: Tensor) -> Tensor:
        """values [B] -> embeddings [B, output_dim]."""
        values = values.clamp(self.min_val, self.max_val)
        normalised = (values - self.min_val) / (self.max_val - self.min_val)
        return self.embedder(normalised.to(self.embedder.embedding[1].weight.dtype))
