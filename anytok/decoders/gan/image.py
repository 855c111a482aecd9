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


class PatchGAN(nn.Module):
    """Images ``(b, c, H, W)`` -> patch logits ``(b, 1, H', W')``.

    ``n_layers`` strided convs halve the size each; two stride-1 convs with 4x4 kernels
    follow, so the input must be at least ``2 ** n_layers * 4`` pixels on a side (e.g. 32 for
    ``n_layers=3``).

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

    def forward(self, image: Tensor) -> DiscriminatorOutput:
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
        n_layers: strided layers; the input needs at least ``2 ** n_layers * 4`` pixels on a
            side.
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

    def forward(self, video: Tensor) -> DiscriminatorOutput:
        x = video
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        out = DiscriminatorOutput()
        out.append(self.post(x), features)
        return out


__all__ = ["PatchGAN", "PatchGAN3D"]
