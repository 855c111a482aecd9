"""rFID and FVD: Fréchet distances between features of inputs and reconstructions.

The Fréchet distance itself is torchmetrics' :class:`FrechetInceptionDistance` with a custom
feature extractor; the extractors are written here so that they load user-supplied
safetensors weights instead of downloading and unpickling them:

- :class:`FIDInceptionV3`: the Inception-v3 variant of TensorFlow's FID code (the
  "pt_inception-2015-12-05" weights used by pytorch-fid and torch-fidelity): torchvision's
  Inception3 with 1008 classes, average pools that do not count padding, and a max pool in
  the last block. Its state-dict keys are torchvision's, so those weights, converted to
  safetensors, load as they are. Pool3 features (2048).
- :class:`I3DFeatures` (in :mod:`anytok.metrics.i3d`) for FVD.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import inception as tv_inception

from anytok.metrics.weights import load_weights

#: Names the feature backends in reports.
FID_BACKEND = (
    "FID Inception-v3 (TF 2015-12-05 graph, pytorch-fid / torch-fidelity weights layout), "
    "pool3 2048-d, bilinear resize to 299; Fréchet distance: torchmetrics"
)


def _avg_pool_no_pad(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    # The FID graph's last block max-pools where the paper's Inception averages.
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _FIDInceptionA(tv_inception.InceptionA):
    def _forward(self, x: Tensor) -> list[Tensor]:
        return [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_no_pad(x)),
        ]


class _FIDInceptionC(tv_inception.InceptionC):
    def _forward(self, x: Tensor) -> list[Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b7dbl = layer(b7dbl)
        return [self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_no_pad(x))]


class _FIDInceptionE(tv_inception.InceptionE):
    pool = staticmethod(_avg_pool_no_pad)

    def _forward(self, x: Tensor) -> list[Tensor]:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        return [self.branch1x1(x), b3, b3dbl, self.branch_pool(self.pool(x))]


class _FIDInceptionEMaxPool(_FIDInceptionE):
    pool = staticmethod(_max_pool)


class FIDInceptionV3(tv_inception.Inception3):
    """FID's Inception-v3: images ``(b, 3, H, W)`` in [0, 1] -> pool3 features ``(b, 2048)``.

    Inputs are resized to ``input_size`` (299, the network's and FID's) with bilinear
    interpolation and mapped to [-1, 1] inside. Other sizes (at least 75) are for quick
    plumbing tests.
    """

    num_features = 2048

    def __init__(self, input_size: int = 299) -> None:
        blocks = [
            tv_inception.BasicConv2d,
            _FIDInceptionA,
            tv_inception.InceptionB,
            _FIDInceptionC,
            tv_inception.InceptionD,
            _FIDInceptionE,
            tv_inception.InceptionAux,
        ]
        super().__init__(
            num_classes=1008, aux_logits=False, inception_blocks=blocks, init_weights=False
        )
        self.Mixed_7c = _FIDInceptionEMaxPool(2048)
        self.input_size = input_size

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        size = (self.input_size, self.input_size)
        x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in (
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
            "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
            "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
            "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
        ):  # fmt: skip
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)

    @classmethod
    def from_weights(
        cls, path: str | os.PathLike[str] | None, input_size: int = 299
    ) -> FIDInceptionV3:
        model = cls(input_size)
        if path is not None:
            load_weights(model, path, what="FID Inception")
        return model.eval().requires_grad_(False)


class FrechetDistance:
    """Accumulates features of reference and reconstructed media; :meth:`compute` gives the
    Fréchet distance (torchmetrics' FID with ``feature`` as the extractor).

    Args:
        feature: module mapping media in [0, 1] to ``(b, d)`` features, with ``num_features``.
        device: where to run it.
    """

    def __init__(self, feature: nn.Module, device: torch.device | str = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=feature.to(self.device), normalize=True)
        self.metric.to(self.device)

    @torch.inference_mode()
    def update(self, reference: Tensor, reconstruction: Tensor) -> None:
        """Add a batch of media in [-1, 1] (any layout the feature module takes)."""
        for media, real in ((reference, True), (reconstruction, False)):
            unit = ((media.float().clamp(-1, 1) + 1) / 2).to(self.device)
            self.metric.update(unit, real=real)

    @property
    def count(self) -> int:
        return int(self.metric.real_features_num_samples)

    def compute(self) -> float:
        """The distance; NaN with fewer than two items (a covariance needs two)."""
        if self.count < 2:
            return float("nan")
        return float(self.metric.compute())


__all__ = ["FID_BACKEND", "FIDInceptionV3", "FrechetDistance"]
