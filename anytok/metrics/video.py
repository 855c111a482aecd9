"""Video fidelity: per-frame PSNR / SSIM and temporal consistency, per item.

Inputs are ``(batch, 3, frames, H, W)`` float tensors in [-1, 1] with the same shape (crop
the reconstruction to the input's frames first). FVD lives in :mod:`anytok.metrics.fid`
(the distance) and :mod:`anytok.metrics.i3d` (the features).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anytok.metrics.image import psnr, ssim


def _frames(video: Tensor) -> Tensor:
    """``(b, 3, t, h, w)`` -> ``(b * t, 3, h, w)``."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def _check(name: str, reference: Tensor, reconstruction: Tensor) -> None:
    if reference.ndim != 5 or reference.shape != reconstruction.shape:
        raise ValueError(
            f"{name}: expected two (batch, 3, frames, H, W) videos of one shape, got "
            f"{tuple(reference.shape)} and {tuple(reconstruction.shape)}"
        )


def frame_psnr(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Mean over frames of each frame's PSNR (dB) -> ``(batch,)``.

    The per-frame mean, not the PSNR of the whole clip: a single bad frame (a scene cut the
    tokenizer smears) shows in it instead of being averaged away in the MSE.
    """
    _check("frame_psnr", reference, reconstruction)
    b, t = reference.shape[0], reference.shape[2]
    values = psnr(_frames(reference), _frames(reconstruction)).view(b, t)
    # Identical frames have infinite PSNR: average the other frames (as the benchmark does
    # over items); a clip identical throughout stays inf, i.e. invalid like an image. A NaN
    # frame (a broken reconstruction) is kept: the clip's PSNR is NaN, as an image's.
    inexact = ~values.isposinf()
    mean = values.where(inexact, 0.0).sum(dim=1) / inexact.sum(dim=1)
    return mean.where(inexact.any(dim=1), values.amax(dim=1))


def frame_ssim(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Mean over frames of each frame's SSIM -> ``(batch,)``."""
    _check("frame_ssim", reference, reconstruction)
    b, t = reference.shape[0], reference.shape[2]
    return ssim(_frames(reference), _frames(reconstruction)).view(b, t).mean(dim=1)


def temporal_consistency(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Frame-difference error: mean ``|(y[t+1] - y[t]) - (x[t+1] - x[t])|`` in [-1, 1] units
    -> ``(batch,)`` (lower is better; NaN for a single frame, which has no motion to compare).

    It compares the motion of the reconstruction with the input's, so flicker and temporal
    smearing count while a constant per-frame error does not.
    """
    _check("temporal_consistency", reference, reconstruction)
    if reference.shape[2] < 2:
        return torch.full((reference.shape[0],), math.nan)
    ref_motion = reference.float().diff(dim=2)
    rec_motion = reconstruction.float().clamp(-1, 1).diff(dim=2)
    return (rec_motion - ref_motion).abs().flatten(1).mean(dim=1).cpu()


__all__ = ["frame_psnr", "frame_ssim", "temporal_consistency"]
