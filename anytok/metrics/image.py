"""Image and video-frame fidelity: PSNR, SSIM, MS-SSIM, LPIPS.

Inputs are ``(batch, 3, H, W)`` (PSNR also takes any ``(batch, ...)``) float tensors in
[-1, 1]; every function returns a ``(batch,)`` float32 tensor. SSIM-type metrics are computed
on images mapped to [0, 1] with ``data_range=1``: SSIM's luminance term is not invariant to a
shift of the range, and [0, 1] (or uint8 with range 255) is the convention of scikit-image,
torchmetrics and the papers that report it.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

#: Side of SSIM's Gaussian window (sigma 1.5, truncated at 3.5 sigma), as in scikit-image.
SSIM_WINDOW = 11
#: The shortest side MS-SSIM accepts with its 5 scales and 11-pixel window: the side halved
#: four times (``side // 16``) must hold the window, so 11 * 16. torchmetrics raises below it
#: (its message says "larger than 160", but 161 to 175 are refused too).
MS_SSIM_MIN_SIDE = 176

#: LPIPS backbones (torchmetrics' names).
LPIPS_NETS = ("alex", "vgg", "squeeze")


def _check_pair(name: str, reference: Tensor, reconstruction: Tensor) -> None:
    if reference.shape != reconstruction.shape:
        raise ValueError(
            f"{name}: shapes differ: reference {tuple(reference.shape)} vs "
            f"reconstruction {tuple(reconstruction.shape)}"
        )


def to_unit_range(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] float32 on the same device (clipped)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(reference: Tensor, reconstruction: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, per item.

    Args:
        reference, reconstruction: ``(batch, ...)`` media in [-1, 1] (images or videos).
        data_range: peak-to-peak range of the data (2 for [-1, 1]).

    Returns:
        ``(batch,)`` PSNR; identical inputs give ``inf``.
    """
    _check_pair("psnr", reference, reconstruction)
    diff = (reference.double() - reconstruction.double().clamp(-1, 1)).flatten(1)
    mse = diff.pow(2).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def ssim_min_side(full_map: bool = False) -> int:
    """The smallest image side :func:`ssim` scores: the mean needs one whole window inside
    the image, the map half of one (its reflect padding)."""
    pad = SSIM_WINDOW // 2
    return (pad if full_map else 2 * pad) + 1


def ssim(reference: Tensor, reconstruction: Tensor, *, full_map: bool = False) -> Tensor:
    """Structural similarity (Wang et al. 2004), Gaussian window 11 / sigma 1.5, per item.

    torchmetrics' implementation on [0, 1] images; the mean over RGB channels and pixels
    (the border of half a window excluded, as in scikit-image).

    Args:
        reference, reconstruction: ``(batch, 3, H, W)`` in [-1, 1], H and W >= 11.
        full_map: return the SSIM map ``(batch, 3, H, W)`` instead (the border, where the
            window does not fit, holds the values torchmetrics computes with reflect padding).

    Returns:
        ``(batch,)`` SSIM in [-1, 1] (higher is better), or the map.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair("ssim", reference, reconstruction)
    pad = SSIM_WINDOW // 2
    smallest = ssim_min_side(full_map)
    if min(reference.shape[-2:]) < smallest:
        raise ValueError(f"ssim: images must be larger than {smallest - 1} pixels a side")
    # float64: E[x^2] - E[x]^2 cancels catastrophically in float32 on flat areas (1 - SSIM
    # came out 50x too large on a flat grey).
    ref, rec = to_unit_range(reference).double(), to_unit_range(reconstruction).double()
    # torchmetrics averages over the whole reflect-padded map; scikit-image (and Wang et al.'s
    # reference code) leave out the border where the window does not fit: crop it here.
    _, image = structural_similarity_index_measure(
        rec, ref, data_range=1.0, reduction="none", return_full_image=True
    )
    if full_map:
        return image.float()
    return image[..., pad:-pad, pad:-pad].flatten(1).mean(dim=1).float()


def ms_ssim(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003) with torchmetrics' defaults, per item.

    Needs both sides >= :data:`MS_SSIM_MIN_SIDE`; smaller images give NaN (reported, not
    raised, so a benchmark of small crops still runs).

    Returns:
        ``(batch,)`` MS-SSIM in [0, 1] (higher is better).
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    _check_pair("ms_ssim", reference, reconstruction)
    if min(reference.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return torch.full((reference.shape[0],), math.nan)
    ref, rec = to_unit_range(reference), to_unit_range(reconstruction)
    values = multiscale_structural_similarity_index_measure(
        rec, ref, data_range=1.0, reduction="none"
    )
    return values.float()


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity (Zhang et al. 2018) from local weights.

    The network is torchmetrics' LPIPS module (backbone + linear heads), built with random
    weights and no download, then loaded strictly from one safetensors file holding the whole
    state dict (backbone ``net.*``, heads ``lin*.*``, ``scaling_layer.*``). torchmetrics'
    own pretrained path downloads the backbone and unpickles the heads; this one does neither.

    Args:
        weights: safetensors file with the full LPIPS state dict for ``net``.
        net: backbone, ``"alex"``, ``"vgg"`` or ``"squeeze"``.
    """

    def __init__(self, weights: str | os.PathLike[str] | None, net: str = "alex"):
        super().__init__()
        # A private class, but the only way to get torchmetrics' exact network without its
        # download and pickle; its state-dict layout equals the official lpips package's.
        from torchmetrics.functional.image.lpips import _LPIPS

        if net not in LPIPS_NETS:
            from anytok.metrics.weights import MetricWeightsError

            raise MetricWeightsError(
                f"LPIPS: unknown network {net!r}; choose one of {', '.join(LPIPS_NETS)}"
            )
        self.net_name = net
        self.model = _LPIPS(pretrained=False, net=net, pnet_rand=True, use_dropout=True)
        if weights is not None:
            from anytok.metrics.weights import load_weights

            load_weights(self.model, weights, what=f"LPIPS ({net})")
        self.model.eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, reference: Tensor, reconstruction: Tensor) -> Tensor:
        """``(batch, 3, H, W)`` pair in [-1, 1] -> ``(batch,)`` LPIPS (lower is better)."""
        _check_pair("lpips", reference, reconstruction)
        device = next(self.model.parameters()).device
        ref = reference.float().clamp(-1, 1).to(device)
        rec = reconstruction.float().clamp(-1, 1).to(device)
        return self.model(ref, rec).reshape(-1).float().cpu()


__all__ = [
    "LPIPS",
    "LPIPS_NETS",
    "MS_SSIM_MIN_SIDE",
    "SSIM_WINDOW",
    "ms_ssim",
    "psnr",
    "ssim",
    "ssim_min_side",
    "to_unit_range",
]
