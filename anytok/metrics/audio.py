"""Audio fidelity: log-mel distance and STOI."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio
from torch import Tensor


@functools.lru_cache(maxsize=8)
def _mel_transform(
    sample_rate: int, n_fft: int, hop: int, n_mels: int
) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=1.0
    )


def mel_distance(
    reference: Tensor,
    reconstruction: Tensor,
    sample_rate: int,
    scales: tuple[int, ...] = (512, 1024, 2048),
    n_mels: int = 80,
) -> Tensor:
    """Multi-scale L1 distance between log10 mel magnitudes, per item (lower is better).

    Args:
        reference, reconstruction: ``(batch, channels, samples)``; the longer is cropped.
        sample_rate: their sample rate.
        scales: FFT sizes (hop = size / 4).

    Returns:
        ``(batch,)`` mean over scales of ``mean |log10(mel_ref) - log10(mel_rec)|``.
    """
    n = min(reference.shape[-1], reconstruction.shape[-1])
    ref = reference[..., :n].float().cpu()
    rec = reconstruction[..., :n].float().cpu()
    total = torch.zeros(ref.shape[0])
    for n_fft in scales:
        mel = _mel_transform(sample_rate, n_fft, n_fft // 4, n_mels)
        a = torch.log10(mel(ref).clamp_min(1e-5))
        b = torch.log10(mel(rec).clamp_min(1e-5))
        total += (a - b).abs().flatten(1).mean(dim=1)
    return total / len(scales)


def stoi(
    reference: Tensor, reconstruction: Tensor, sample_rate: int, extended: bool = False
) -> Tensor:
    """Short-time objective intelligibility (pystoi), per item, on the channel mean.

    Args:
        reference, reconstruction: ``(batch, channels, samples)``; the longer is cropped.

    Returns:
        ``(batch,)`` STOI in [0, 1] (higher is better).
    """
    from pystoi import stoi as pystoi_stoi

    n = min(reference.shape[-1], reconstruction.shape[-1])
    ref = reference[..., :n].float().mean(dim=1).cpu().numpy().astype(np.float64)
    rec = reconstruction[..., :n].float().mean(dim=1).cpu().numpy().astype(np.float64)
    values = [pystoi_stoi(r, d, sample_rate, extended=extended) for r, d in zip(ref, rec)]
    return torch.tensor(values, dtype=torch.float32)
