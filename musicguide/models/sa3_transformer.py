"""The transformer block of Stable Audio 3 (stable-audio-3's `TransformerBlock`), shared by SAME and the DiT.

Pre-norm (LayerNorm without bias, RMS norm, or DyT, a learnt tanh) residual branches: self-attention
with rotary positions on part of each head, then (in the DiT) cross-attention to the conditioning
tokens, then a GLU feed-forward. Options the published models use:

* differential attention: two attention maps over the same values, the second subtracted;
* q/k normalisation per head (`qk_norm`), and per-feature scaling of the attention output's mean
  and the rest (`feat_scale`);
* adaLN: a global vector gives each branch a scale, a shift and a sigmoid gate (the DiT's timestep);
* LayerScale on each branch.

Parameter and buffer names follow the reference, so its checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicguide.models.layers import inverse_frequencies

NORMS = ("layer_norm", "rms_norm", "dyt")
QK_NORMS = ("none", "l2", "ln", "rms", "dyt")


@dataclass(frozen=True)
class BlockOptions:
    """What a block is built with (the reference's TransformerBlock kwargs and attn/ff/norm kwargs)."""

    norm_type: str = "layer_norm"
    norm_eps: float = 1e-5
    differential: bool = False
    qk_norm: str = "none"
    qk_norm_eps: float = 1e-6
    feat_scale: bool = False
    ff_mult: float = 4
    ff_bias: bool = True  # the reference's `not no_bias`
    layer_scale: bool = False
    add_rope: bool = False  # a rotary table of the block's own (used when the caller passes none)

    def __post_init__(self):
        if self.norm_type not in NORMS:
            raise ValueError(f"norm_type must be one of {NORMS}, got {self.norm_type!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")


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


class LayerNorm(nn.Module):
    """LayerNorm with a learnt gain and a fixed zero bias (a buffer, as the reference stores it)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.gamma, bias=self.beta, eps=self.eps)


def norm(dim: int, kind: str, eps: float) -> nn.Module:
    return {"layer_norm": lambda: LayerNorm(dim, eps), "rms_norm": lambda: RMSNorm(dim, eps),
            "dyt": lambda: DynamicTanh(dim)}[kind]()


def qk_norm(dim_heads: int, kind: str, eps: float) -> nn.Module | None:
    if kind == "ln":
        return nn.LayerNorm(dim_heads, eps=eps)
    if kind == "rms":
        return RMSNorm(dim_heads, eps)
    if kind == "dyt":
        return DynamicTanh(dim_heads)
    return None


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
        self.register_buffer("inv_freq", inverse_frequencies(dim, base))

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


WINDOW_CHUNK = 1024  # queries per step of sliding-window attention


def band_mask(queries: range, keys: range, window: tuple[int, int], device, dtype) -> Tensor:
    """0 where key j is within (left, right) tokens of query i, -inf elsewhere."""
    offset = torch.arange(keys.start, keys.stop, device=device)[None, :] - torch.arange(queries.start, queries.stop, device=device)[:, None]
    inside = (offset >= -window[0]) & (offset <= window[1])
    return torch.zeros(inside.shape, device=device, dtype=dtype).masked_fill(~inside, float("-inf"))


def windowed_attention(q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int], chunk: int = WINDOW_CHUNK) -> Tensor:
    """Attention where each query sees the keys within `window` (left, right) of it: queries in
    chunks, each with the keys of its chunk plus the window on either side, so memory grows with
    the length times (chunk + window), not with its square (SAME-L's windows span ~70 000 tokens).
    The same function as one band-masked attention over the whole sequence."""
    n = q.shape[-2]
    outs = []
    for start in range(0, n, chunk):
        queries = range(start, min(start + chunk, n))
        keys = range(max(0, start - window[0]), min(n, queries.stop + window[1]))
        mask = band_mask(queries, keys, window, q.device, q.dtype)
        outs.append(F.scaled_dot_product_attention(q[..., queries.start:queries.stop, :], k[..., keys.start:keys.stop, :],
                                                   v[..., keys.start:keys.stop, :], attn_mask=mask))
    return torch.cat(outs, dim=-2)


class Attention(nn.Module):
    """Multi-head attention over x itself, or (with `dim_context`) over context tokens; with
    `differential`, the output of a second attention map over the same values is subtracted."""

    def __init__(self, dim: int, dim_heads: int, options: BlockOptions, dim_context: int | None = None):
        super().__init__()
        self.heads, self.differential = dim // dim_heads, options.differential
        self.kv_heads = (dim_context or dim) // dim_heads
        maps = 2 if options.differential else 1
        if dim_context is None:
            self.to_qkv = nn.Linear(dim, dim * (2 * maps + 1), bias=False)
        else:
            self.to_q = nn.Linear(dim, dim * maps, bias=False)
            self.to_kv = nn.Linear(dim_context, dim_context * (maps + 1), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm, self.qk_norm_eps = options.qk_norm, options.qk_norm_eps
        self.q_norm = qk_norm(dim_heads, options.qk_norm, options.qk_norm_eps)
        self.k_norm = qk_norm(dim_heads, options.qk_norm, options.qk_norm_eps)
        self.feat_scale = options.feat_scale
        if options.feat_scale:
            self.lambda_dc = nn.Parameter(torch.zeros(dim))
            self.lambda_hf = nn.Parameter(torch.zeros(dim))

    def _heads(self, t: Tensor, heads: int) -> Tensor:
        return t.reshape(*t.shape[:2], heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, angles: Tensor | None = None,
                window: tuple[int, int] | None = None) -> Tensor:
        b, n, _ = x.shape
        if context is None:
            parts = self.to_qkv(x).chunk(5 if self.differential else 3, dim=-1)
            # the reference's order: q, k, v, then the second map's q and k
            queries, keys, v = [parts[0], *parts[3:4]], [parts[1], *parts[4:5]], parts[2]
            queries, keys, v = ([self._heads(t, self.heads) for t in queries], [self._heads(t, self.heads) for t in keys],
                                self._heads(v, self.heads))
        else:
            queries = [self._heads(t, self.heads) for t in self.to_q(x).chunk(2 if self.differential else 1, dim=-1)]
            kv = [self._heads(t, self.kv_heads) for t in self.to_kv(context).chunk(3 if self.differential else 2, dim=-1)]
            keys, v = kv[:-1], kv[-1]
            if self.heads != self.kv_heads:  # grouped-query attention
                keys = [k.repeat_interleave(self.heads // self.kv_heads, dim=1) for k in keys]
                v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        outs = []
        for query, key in zip(queries, keys):
            if self.qk_norm == "l2":
                query, key = F.normalize(query, dim=-1, eps=self.qk_norm_eps), F.normalize(key, dim=-1, eps=self.qk_norm_eps)
            elif self.q_norm is not None:
                query, key = self.q_norm(query), self.k_norm(key)
            if angles is not None:
                query, key = rotate(query, angles).to(v.dtype), rotate(key, angles).to(v.dtype)
            outs.append(F.scaled_dot_product_attention(query, key, v) if window is None
                        else windowed_attention(query, key, v, window))
        out = outs[0] - outs[1] if self.differential else outs[0]
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        if self.feat_scale:
            dc = out.mean(dim=-2, keepdim=True)
            out = out + self.lambda_dc * dc + self.lambda_hf * (out - dc)
        return out


class GLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, sinusoidal: bool):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.sinusoidal = sinusoidal

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * (torch.sin(3.14159265359 * gate) if self.sinusoidal else F.silu(gate))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, bias: bool, sinusoidal: bool):
        super().__init__()
        inner = int(dim * mult)
        # the reference's Sequential(GLU, Identity, Linear, Identity): parameters at 0 and 2
        self.ff = nn.Sequential(GLU(dim, inner, sinusoidal), nn.Identity(), nn.Linear(inner, dim, bias=bias), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


class TransformerBlock(nn.Module):
    """x + attn(norm(x)) [+ cross-attn(norm(x), context)] + ff(norm(x)); with `global_cond` (adaLN)
    each of the self-attention and feed-forward branches is scaled, shifted and gated by it."""

    def __init__(self, dim: int, dim_heads: int, options: BlockOptions, *, dim_context: int | None = None,
                 adaln: bool = False, sinusoidal: bool = False):
        super().__init__()
        dim_heads = min(dim_heads, dim)
        self.pre_norm = norm(dim, options.norm_type, options.norm_eps)
        self.self_attn = Attention(dim, dim_heads, options)
        self.self_attn_scale = LayerScale(dim) if options.layer_scale else nn.Identity()
        if dim_context is not None:
            self.cross_attend_norm = norm(dim, options.norm_type, options.norm_eps)
            self.cross_attn = Attention(dim, dim_heads, options, dim_context=dim_context)
            self.cross_attn_scale = LayerScale(dim) if options.layer_scale else nn.Identity()
        self.ff_norm = norm(dim, options.norm_type, options.norm_eps)
        self.ff = FeedForward(dim, options.ff_mult, options.ff_bias, sinusoidal)
        self.ff_scale = LayerScale(dim) if options.layer_scale else nn.Identity()
        if adaln:
            # on the CPU, then to the default device: no arithmetic on `meta` (layers.inverse_frequencies)
            initial = torch.randn(6 * dim, device="cpu") / dim**0.5
            self.to_scale_shift_gate = nn.Parameter(initial.to(torch.empty(0).device))
        self.rope = Rotary(dim_heads // 2) if options.add_rope else None

    def forward(self, x: Tensor, *, context: Tensor | None = None, angles: Tensor | None = None,
                global_cond: Tensor | None = None, window: tuple[int, int] | None = None) -> Tensor:
        if angles is None and self.rope is not None:
            angles = self.rope(x.shape[-2])
        if global_cond is not None and hasattr(self, "to_scale_shift_gate"):
            scale_a, shift_a, gate_a, scale_f, shift_f, gate_f = (self.to_scale_shift_gate + global_cond).unsqueeze(1).chunk(6, dim=-1)
            branch = self.self_attn(self.pre_norm(x) * (1 + scale_a) + shift_a, angles=angles, window=window)
            x = x + self.self_attn_scale(branch * torch.sigmoid(1 - gate_a))
            x = self._cross(x, context)
            branch = self.ff(self.ff_norm(x) * (1 + scale_f) + shift_f)
            return x + self.ff_scale(branch * torch.sigmoid(1 - gate_f))
        x = x + self.self_attn_scale(self.self_attn(self.pre_norm(x), angles=angles, window=window))
        x = self._cross(x, context)
        return x + self.ff_scale(self.ff(self.ff_norm(x)))

    def _cross(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None or not hasattr(self, "cross_attn"):
            return x
        return x + self.cross_attn_scale(self.cross_attn(self.cross_attend_norm(x), context=context))
