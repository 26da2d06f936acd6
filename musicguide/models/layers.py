"""Building blocks both model families share: weight-normalised convolutions under the published
checkpoints' names (Oobleck's VAE, SAME's resampling), and rotary frequencies (both DiTs, SAME).
They import nothing of the package, so each family's modules can stand on them side by side."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

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


def init_weight_norm(module: nn.Module, conv: Callable[[], nn.Module], weight_shape: tuple[int, ...],
                     out_channels: int, bias: bool) -> None:
    """weight_v, weight_g (= |v| per row of the weight) and bias from a freshly initialised conv
    (`conv()` makes it). For a model about to be loaded from a file (`uninitialized`, or on the meta
    device) the values are never read: only tensors of the right shapes are made, without building
    the conv, which was a third of building the demo model."""
    if _uninitialized or torch.empty(0).is_meta:
        module.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        module.weight_g = nn.Parameter(torch.empty(weight_shape[0], 1, 1))
        module.weight_v = nn.Parameter(torch.empty(weight_shape))
        return
    conv = conv()
    weight = conv.weight.detach()
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
        self.stride, self.padding, self.dilation = stride, padding, dilation
        conv = partial(nn.Conv1d, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                       dilation=dilation, bias=bias)
        init_weight_norm(self, conv, (out_channels, in_channels, kernel_size), out_channels, bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_normalised(self.weight_v, self.weight_g)
        return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(nn.Module):
    """Weight-normalised ConvTranspose1d; its weight is [in, out, k], so g has one entry per input channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int):
        super().__init__()
        self.stride, self.padding = stride, padding
        conv = partial(nn.ConvTranspose1d, in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        init_weight_norm(self, conv, (in_channels, out_channels, kernel_size), out_channels, True)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_normalised(self.weight_v, self.weight_g)
        return F.conv_transpose1d(x, weight, self.bias, self.stride, self.padding)
