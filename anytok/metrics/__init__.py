"""Fidelity metrics for reconstructions (audio, image, video)."""

from anytok.metrics.audio import mel_distance, stoi
from anytok.metrics.image import psnr

__all__ = ["mel_distance", "psnr", "stoi"]
