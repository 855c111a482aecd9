"""PatchGAN discriminators for images (2D) and video (3D).

The pix2pix / VQGAN PatchGAN (Isola et al. 2017, https://arxiv.org/abs/1611.07004; Esser et
al. 2021, https://arxiv.org/abs/2012.09841) judges overlapping patches instead of the whole
image, which keeps it small and focused on texture. :class:`PatchGAN3D` is the same design
with 3D convs over ``(frames, height, width)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from anytok.decoders.gan.base import DiscriminatorOutput


def _norm(kind: str, channels: int) -> nn.Module:
    # GroupNorm by default, not pix2pix's BatchNorm: batch statistics would differ between
    # ranks (buffers are not broadcast, see anytok.train) and between real and fake batches.
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'group' or 'none'")


def _min_input_size(convs: Sequence[nn.Conv2d | nn.Conv3d]) -> tuple[int, ...]:
    """Smallest input size per spatial axis for which ``convs``, run in order, give an output
    of at least 1 on every axis (each conv needs ``in >= (out - 1) * stride + kernel - 2 *
    padding``)."""
    last = convs[-1]
    size = [1] * len(last.kernel_size)
    for conv in reversed(convs):
        padding = conv.padding
        assert not isinstance(padding, str)
        size = [
            max(1, (o - 1) * s + k - 2 * p)
            for o, s, k, p in zip(size, conv.stride, conv.kernel_size, padding, strict=True)
        ]
    return tuple(size)


def _check_size(module: nn.Module, x: Tensor, minimum: tuple[int, ...], axes: str) -> None:
    """Raise a ValueError naming ``minimum`` if ``x``'s trailing axes are smaller."""
    shape = tuple(x.shape[-len(minimum) :])
    if x.ndim < len(minimum) + 2 or any(n < m for n, m in zip(shape, minimum, strict=True)):
        want = "x".join(str(m) for m in minimum)
        raise ValueError(
            f"{type(module).__name__} with n_layers={module.n_layers} needs inputs of at least "
            f"{want} ({axes}), got {tuple(x.shape)}"
        )


class PatchGAN(nn.Module):
    """Images ``(b, c, H, W)`` -> patch logits ``(b, 1, H', W')``.

    ``n_layers`` strided convs halve the size each; two stride-1 convs with 4x4 kernels
    follow, so the input needs ``min_size`` pixels on a side (``3 * 2 ** n_layers`` for
    ``n_layers >= 1``: 24 for 3); smaller inputs raise a ValueError.

    Args:
        channels: input channels (3 for RGB).
        width: first conv width (pix2pix ``ndf``; doubles per layer, capped at 8x).
        n_layers: strided layers.
        norm: ``"group"`` or ``"none"``.
    """

    def __init__(self, channels: int = 3, width: int = 64, n_layers: int = 3, norm: str = "group"):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2))
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=norm == "none"),
                    _norm(norm, width * mult),
                    nn.LeakyReLU(0.2),
                )
            )
        self.layers = nn.ModuleList(layers)
        self.post = nn.Conv2d(width * mult, 1, 4, 1, 1)
        self.n_layers = n_layers
        self.min_size = _min_input_size([*(layer[0] for layer in self.layers), self.post])

    def forward(self, image: Tensor) -> DiscriminatorOutput:
        """``image (b, c, H, W)`` -> logits ``(b, 1, H', W')`` and each layer's features."""
        _check_size(self, image, self.min_size, "height x width")
        x = image
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        out = DiscriminatorOutput()
        out.append(self.post(x), features)
        return out


class PatchGAN3D(nn.Module):
    """Video ``(b, c, T, H, W)`` -> patch logits ``(b, 1, T', H', W')``.

    Like :class:`PatchGAN` with ``(3, 4, 4)`` kernels; the first conv keeps the frame count
    and later strided convs halve time as well as space (clips are short).

    Args:
        channels: input channels.
        width: first conv width (doubles per layer, capped at 8x).
        n_layers: strided layers; the input needs ``min_size``: one frame and as many
            pixels on a side as :class:`PatchGAN` (24 for ``n_layers=3``).
        norm: ``"group"`` or ``"none"``.
    """

    def __init__(self, channels: int = 3, width: int = 64, n_layers: int = 3, norm: str = "group"):
        super().__init__()
        kernel = (3, 4, 4)
        padding = (1, 1, 1)
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv3d(channels, width, kernel, (1, 2, 2), padding), nn.LeakyReLU(0.2))
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride: Sequence[int] = (2, 2, 2) if n < n_layers else (1, 1, 1)
            layers.append(
                nn.Sequential(
                    nn.Conv3d(
                        width * prev,
                        width * mult,
                        kernel,
                        tuple(stride),
                        padding,
                        bias=norm == "none",
                    ),
                    _norm(norm, width * mult),
                    nn.LeakyReLU(0.2),
                )
            )
        self.layers = nn.ModuleList(layers)
        self.post = nn.Conv3d(width * mult, 1, kernel, 1, padding)
        self.n_layers = n_layers
        self.min_size = _min_input_size([*(layer[0] for layer in self.layers), self.post])

    def forward(self, video: Tensor) -> DiscriminatorOutput:
        """``video (b, c, T, H, W)`` -> logits ``(b, 1, T', H', W')`` and each layer's
        features."""
        _check_size(self, video, self.min_size, "frames x height x width")
        x = video
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        out = DiscriminatorOutput()
        out.append(self.post(x), features)
        return out


__all__ = ["PatchGAN", "PatchGAN3D"]
