"""Image and video fidelity."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(reference: Tensor, reconstruction: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, per item.

    Args:
        reference, reconstruction: ``(batch, ...)`` media in [-1, 1] (images or videos).
        data_range: peak-to-peak range of the data (2 for [-1, 1]).

    Returns:
        ``(batch,)`` PSNR; identical inputs give ``inf``.
    """
    if reference.shape != reconstruction.shape:
        raise ValueError(
            f"psnr: shapes differ: reference {tuple(reference.shape)} vs "
            f"reconstruction {tuple(reconstruction.shape)}"
        )
    diff = (reference.double() - reconstruction.double().clamp(-1, 1)).flatten(1)
    mse = diff.pow(2).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse)).float()
