"""Building blocks both model families share: weight-normalised convolutions under the published
checkpoints' names (Oobleck's VAE, SAME's resampling), and rotary frequencies (both DiTs, SAME).
They import nothing of the package, so each family's modules can stand on them side by side."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_uninitialized = False


@contextlib.contextmanager
def uninitialized() -> Iterator[None]:
    """Modules built inside hold uninitialized memory instead of random weights, for a model whose
    every tensor is loaded right after (models.folder; the loader assigns the file's tensors, and
    the skeleton's, never touched, are freed). torch.nn.init's functions do nothing meanwhile.

    This replaces building on the `meta` device, whose kernels go through torch._check, and its first
    call imports sympy: half a second of every command that loads a model. Not thread-safe: torch's
    init functions are swapped for the duration, as transformers' `no_init_weights` does."""
    global _uninitialized
    names = [n for n in vars(nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(nn.init, n))]
    saved, previous = {n: getattr(nn.init, n) for n in names}, _uninitialized

    def keep(tensor: Tensor, *args, **kwargs) -> Tensor:
        return tensor

    try:
        _uninitialized = True
        for name in names:
            setattr(nn.init, name, keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)
        _uninitialized = previous


def inverse_frequencies(dim: int, base: float) -> Tensor:
    """Rotary frequencies base^(-2i/dim), computed on the CPU and then moved to the default device:
    arithmetic on `meta` tensors imports torch._dynamo, about a second; a copy to `meta` does not."""
    frequencies = 1.0 / base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    return frequencies.to(torch.empty(0).device)


def init_weight_norm(module: nn.Module, conv: nn.Module, bias: bool) -> None:
    """weight_v, weight_g (= |v| per output row) and bias from a freshly initialised conv. For a
    model about to be loaded from a file (`uninitialized`, or on the meta device) the values are
    never read, so only the shapes are made, and no memory is touched."""
    weight = conv.weight.detach()
    if _uninitialized or weight.is_meta:
        module.bias = nn.Parameter(conv.bias.detach()) if bias else None
        module.weight_g = nn.Parameter(torch.empty(weight.shape[0], 1, 1, device=weight.device))
        module.weight_v = nn.Parameter(weight)
        return
    module.bias = nn.Parameter(conv.bias.detach().clone()) if bias else None
    module.weight_g = nn.Parameter(weight.flatten(1).norm(dim=1)[:, None, None])
    module.weight_v = nn.Parameter(weight.clone())


def weight_normalised(weight_v: Tensor, weight_g: Tensor) -> Tensor:
    """g * v / |v|, the norm taken over everything but the first axis (torch.nn.utils.weight_norm, dim=0)."""
    norm = weight_v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (weight_v.ndim - 1))
    return weight_v * (weight_g / norm)


class WNConv1d(nn.Module):
    """A weight-normalised Conv1d that stores `weight_g`/`weight_v`, the names in published checkpoints.

    (torch.nn.utils.parametrizations.weight_norm would name them `parametrizations.weight.original0/1`;
    the folder loader maps those names here.)"""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True):
        super().__init__()
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        init_weight_norm(self, conv, bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_normalised(self.weight_v, self.weight_g)
        return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(nn.Module):
    """Weight-normalised ConvTranspose1d; its weight is [in, out, k], so g has one entry per input channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int):
        super().__init__()
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.stride, self.padding = stride, padding
        init_weight_norm(self, conv, True)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_normalised(self.weight_v, self.weight_g)
        return F.conv_transpose1d(x, weight, self.bias, self.stride, self.padding)
