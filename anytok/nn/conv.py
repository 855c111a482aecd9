"""Convolutions used across codecs: causal / same padding, optional weight norm."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


def maybe_weight_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap a conv in weight normalisation (torch's parametrization) when ``enabled``."""
    return weight_norm(module) if enabled else module


def extra_padding_for_stride(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last window complete, so ``ceil(length / stride)`` frames
    come out and a transposed conv can restore the full length."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return max(0, ideal - length)


class Conv1d(nn.Module):
    """1D conv with causal (all padding on the left) or centred padding.

    Input ``(batch, in_channels, time)``, output ``(batch, out_channels, ceil(time / stride))``.
    With ``causal=True``, output frame ``t`` depends only on input samples up to the end of
    its stride window, so right-padding a signal never changes earlier frames.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        causal: bool = True,
        use_weight_norm: bool = True,
        pad_mode: str = "constant",
    ):
        super().__init__()
        self.conv = maybe_weight_norm(
            nn.Conv1d(
                in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups
            ),
            use_weight_norm,
        )
        self.causal = causal
        self.pad_mode = pad_mode
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1

    def forward(self, x: Tensor) -> Tensor:
        padding_total = self.effective_kernel - self.stride
        extra = extra_padding_for_stride(
            x.shape[-1], self.effective_kernel, self.stride, padding_total
        )
        if self.causal:
            left, right = padding_total, extra
        else:
            right = padding_total // 2
            left = padding_total - right
            right += extra
        mode = self.pad_mode if x.shape[-1] > max(left, right) else "constant"
        return self.conv(F.pad(x, (left, right), mode=mode))


class ConvTranspose1d(nn.Module):
    """Transposed 1D conv that upsamples by exactly ``stride`` (output ``time * stride``).

    Causal: the surplus ``kernel - stride`` samples are trimmed on the right, so output sample
    ``t`` depends only on input frames up to ``t // stride``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        causal: bool = True,
        use_weight_norm: bool = True,
    ):
        super().__init__()
        self.conv = maybe_weight_norm(
            nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride), use_weight_norm
        )
        self.causal = causal
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.trim <= 0:
            return y
        if self.causal:
            return y[..., : y.shape[-1] - self.trim]
        right = self.trim // 2
        left = self.trim - right
        return y[..., left : y.shape[-1] - right]


def normalization_2d(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``.

    GroupNorm (not BatchNorm) keeps every item of a batch independent of the others, so
    tokens do not depend on batch size.
    """
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, eps=1e-6, affine=True)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


__all__ = [
    "Conv1d",
    "ConvTranspose1d",
    "count_parameters",
    "extra_padding_for_stride",
    "maybe_weight_norm",
    "normalization_2d",
]
