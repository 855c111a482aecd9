"""Causal 3D convolutional encoder / decoder for video (MAGVIT-v2 / Cosmos style).

Time is causal everywhere: convs pad only the past (replicating the first frame), norms act
per frame, so latent frame ``t`` depends only on input frames ``<= t``'s window. The first
frame is encoded alone: a clip of ``1 + k * s`` frames gives ``1 + k`` latent frames for a
temporal compression ``s``, and an image is a one-frame video.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.nn.conv import normalization_2d


class FrameNorm(nn.Module):
    """GroupNorm applied to each frame separately: ``(b, c, t, h, w)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalization_2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t = x.shape[:3]
        # movedim / flatten rather than einops: its (b t) split divides by b, 0 for an empty batch
        y = self.norm(x.movedim(2, 1).flatten(0, 1))
        return y.unflatten(0, (b, t)).movedim(1, 2)


class CausalConv3d(nn.Module):
    """3D conv, causal in time (past padding by first-frame replication), same in space.

    ``(b, cin, t, h, w) -> (b, cout, ceil(t / st)', h / sh, w / sw)``; with temporal stride
    ``st`` and ``t = 1 + k * st`` the output has ``1 + k`` frames.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int] = (3, 3, 3),
        stride: tuple[int, int, int] = (1, 1, 1),
    ):
        super().__init__()
        kt, kh, kw = kernel_size
        self.time_pad = kt - 1
        # Strided spatial convs pad asymmetrically so even sizes halve exactly.
        self.space_pad = (
            (kw // 2, kw // 2, kh // 2, kh // 2)
            if stride[1] == 1
            else (0, kw - stride[2], 0, kh - stride[1])
        )
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            first = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([first, x], dim=2)
        x = F.pad(x, (*self.space_pad, 0, 0))
        return self.conv(x)


class FactorizedConv3d(nn.Sequential):
    """A (2+1)D causal conv: spatial ``1 x 3 x 3`` then temporal ``3 x 1 x 1`` (Cosmos
    Tokenizer, VidTok): the same receptive field as a 3x3x3 conv at about 40% of its cost."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            CausalConv3d(in_channels, out_channels, (1, 3, 3)),
            CausalConv3d(out_channels, out_channels, (3, 1, 1)),
        )


def conv3d(in_channels: int, out_channels: int, factorized: bool) -> nn.Module:
    """A causal 3x3x3 conv, or its factorized (2+1)D form."""
    if factorized:
        return FactorizedConv3d(in_channels, out_channels)
    return CausalConv3d(in_channels, out_channels)


class ResBlock3d(nn.Module):
    """Per-frame GroupNorm, SiLU, causal 3x3x3 (or factorized) conv, twice, plus a projected
    skip."""

    def __init__(self, in_channels: int, out_channels: int, factorized: bool = False):
        super().__init__()
        self.block = nn.Sequential(
            FrameNorm(in_channels),
            nn.SiLU(),
            conv3d(in_channels, out_channels, factorized),
            FrameNorm(out_channels),
            nn.SiLU(),
            conv3d(out_channels, out_channels, factorized),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv3d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class TimeUpsample(nn.Module):
    """Doubles time causally: ``1 + k`` frames -> ``1 + 2k`` (the first frame stays single)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, (3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = rearrange(self.conv(x), "b (two c) t h w -> b c (t two) h w", two=2)
        return y[:, :, 1:]


class SpaceUpsample(nn.Module):
    """Nearest-neighbour ×2 in height and width, then a per-frame 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (1, 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


class Encoder3d(nn.Module):
    """Video ``(b, cin, 1 + k*st, H, W)`` -> latent ``(b, z, 1 + k, H/ss, W/ss)``.

    ``channel_multipliers`` gives one level each; every level but the last halves space;
    ``temporal_downsample[i]`` says whether level ``i`` also halves time.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] = (True, True, False),
        num_res_blocks: int = 2,
        z_channels: int = 16,
        factorized: bool = False,
    ):
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError(
                "Encoder3d: temporal_downsample needs one flag per downsampling level "
                f"({len(channel_multipliers) - 1}), got {len(temporal_downsample)}"
            )
        layers: list[nn.Module] = [CausalConv3d(in_channels, channels)]
        width = channels
        for level, mult in enumerate(channel_multipliers):
            for _ in range(num_res_blocks):
                layers.append(ResBlock3d(width, channels * mult, factorized))
                width = channels * mult
            if level < len(channel_multipliers) - 1:
                st = 2 if temporal_downsample[level] else 1
                layers.append(CausalConv3d(width, width, (3, 3, 3), stride=(st, 2, 2)))
        layers += [
            ResBlock3d(width, width, factorized),
            ResBlock3d(width, width, factorized),
            FrameNorm(width),
            nn.SiLU(),
            CausalConv3d(width, z_channels),
        ]
        self.model = nn.Sequential(*layers)
        self.spatial_factor = 2 ** (len(channel_multipliers) - 1)
        self.temporal_factor = 2 ** sum(bool(t) for t in temporal_downsample)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @property
    def temporal_context(self) -> int:
        """Past input frames a latent frame can depend on (the causal receptive field)."""
        return temporal_receptive_field(self.model)


class Decoder3d(nn.Module):
    """Latent ``(b, z, 1 + k, h, w)`` -> video ``(b, cout, 1 + k*st, h*ss, w*ss)``."""

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] = (True, True, False),
        num_res_blocks: int = 2,
        z_channels: int = 16,
        factorized: bool = False,
    ):
        super().__init__()
        width = channels * channel_multipliers[-1]
        layers: list[nn.Module] = [
            CausalConv3d(z_channels, width),
            ResBlock3d(width, width, factorized),
            ResBlock3d(width, width, factorized),
        ]
        for level, mult in reversed(list(enumerate(channel_multipliers))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock3d(width, channels * mult, factorized))
                width = channels * mult
            if level > 0:
                if temporal_downsample[level - 1]:
                    layers.append(TimeUpsample(width))
                layers.append(SpaceUpsample(width))
        layers += [FrameNorm(width), nn.SiLU(), CausalConv3d(width, out_channels)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)

    @property
    def temporal_context(self) -> int:
        """Past latent frames an output frame can depend on, rounded up (upsampling halves
        each conv's reach in latent frames)."""
        reach, scale, counted = 0.0, 1.0, set()
        for module in self.model.modules():
            if isinstance(module, TimeUpsample):
                # its own conv runs before the upsampling, at the current rate
                reach += module.conv.time_pad / scale
                counted.add(id(module.conv))
                scale *= 2
            elif isinstance(module, CausalConv3d) and id(module) not in counted:
                reach += module.time_pad / scale
        return math.ceil(reach)


def temporal_receptive_field(model: nn.Module) -> int:
    """Past input frames a causal conv stack's output depends on: ``sum (k_t - 1) * stride so
    far`` over its :class:`CausalConv3d` layers in forward order (``model.modules()`` order,
    which is forward order for the sequential stacks here)."""
    reach, stride = 0, 1
    for module in model.modules():
        if isinstance(module, CausalConv3d):
            reach += module.time_pad * stride
            stride *= module.conv.stride[0]
    return reach
