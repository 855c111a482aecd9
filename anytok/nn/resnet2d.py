"""Convolutional image encoder / decoder in the style of taming-transformers' VQGAN
(Esser et al. 2021, https://arxiv.org/abs/2012.09841): residual blocks with GroupNorm and
SiLU, strided downsampling, nearest-neighbour upsampling, self-attention in the middle and,
with ``level_attention``, after every residual block of the lowest-resolution level (taming's
``attn_resolutions`` at that level; LlamaGen's VQ-8 / VQ-16).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from anytok.nn.conv import normalization_2d


class ResBlock2d(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1-projected) skip: ``(b, cin, h, w) -> (b, cout, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            normalization_2d(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            normalization_2d(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class SelfAttention2d(nn.Module):
    """Single-head self-attention over all positions of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalization_2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        return x + self.proj(out.squeeze(1).transpose(-1, -2).reshape(b, c, h, w))


class Encoder2d(nn.Module):
    """Image ``(b, in_channels, H, W)`` -> latent ``(b, z_channels, H / 2^(n-1), W / 2^(n-1))``
    where ``n = len(channel_multipliers)``."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        attention: bool = True,
        dropout: float = 0.0,
        level_attention: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        width = channels
        lowest = len(channel_multipliers) - 1
        for level, mult in enumerate(channel_multipliers):
            for _ in range(num_res_blocks):
                layers.append(ResBlock2d(width, channels * mult, dropout))
                width = channels * mult
                if level_attention and level == lowest:
                    layers.append(SelfAttention2d(width))
            if level < len(channel_multipliers) - 1:
                # Asymmetric (0, 1) padding + stride 2 halves even sizes exactly.
                layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(width, width, 3, stride=2)]
        layers.append(ResBlock2d(width, width, dropout))
        if attention:
            layers.append(SelfAttention2d(width))
        layers += [
            ResBlock2d(width, width, dropout),
            normalization_2d(width),
            nn.SiLU(),
            nn.Conv2d(width, z_channels, 3, padding=1),
        ]
        self.model = nn.Sequential(*layers)
        self.downsample_factor = 2 ** (len(channel_multipliers) - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Decoder2d(nn.Module):
    """Latent ``(b, z_channels, h, w)`` -> image ``(b, out_channels, h * 2^(n-1), w * 2^(n-1))``."""

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        attention: bool = True,
        dropout: float = 0.0,
        level_attention: bool = False,
    ):
        super().__init__()
        width = channels * channel_multipliers[-1]
        lowest = len(channel_multipliers) - 1
        layers: list[nn.Module] = [
            nn.Conv2d(z_channels, width, 3, padding=1),
            ResBlock2d(width, width, dropout),
        ]
        if attention:
            layers.append(SelfAttention2d(width))
        layers.append(ResBlock2d(width, width, dropout))
        for level, mult in reversed(list(enumerate(channel_multipliers))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock2d(width, channels * mult, dropout))
                width = channels * mult
                if level_attention and level == lowest:
                    layers.append(SelfAttention2d(width))
            if level > 0:
                layers += [
                    nn.Upsample(scale_factor=2.0, mode="nearest"),
                    nn.Conv2d(width, width, 3, padding=1),
                ]
        layers += [normalization_2d(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)
