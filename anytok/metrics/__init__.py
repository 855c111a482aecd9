"""Fidelity metrics for reconstructions (audio, image, video) and token statistics.

- :mod:`~anytok.metrics.audio`: mel / STFT distance, SI-SDR, PESQ, STOI
- :mod:`~anytok.metrics.speech_models`: UTMOS, speaker similarity, WER (user weights)
- :mod:`~anytok.metrics.image`: PSNR, SSIM, MS-SSIM, LPIPS (user weights)
- :mod:`~anytok.metrics.video`: per-frame PSNR / SSIM, temporal consistency
- :mod:`~anytok.metrics.fid`, :mod:`~anytok.metrics.i3d`: rFID and FVD (user weights)
- :mod:`~anytok.metrics.regions`: TokBench-style text and face regions
- :mod:`~anytok.metrics.token_stats`: codebook usage, entropy, n-grams, Zipf fit

Per-item metrics take ``(batch, ...)`` pairs and return ``(batch,)`` float32 tensors.
"""

from anytok.metrics.audio import mel_distance, pesq, si_sdr, stft_distance, stoi
from anytok.metrics.image import ms_ssim, psnr, ssim
from anytok.metrics.token_stats import TokenStatistics, entropy_bits, zipf_fit
from anytok.metrics.video import frame_psnr, frame_ssim, temporal_consistency

__all__ = [
    "TokenStatistics",
    "entropy_bits",
    "frame_psnr",
    "frame_ssim",
    "mel_distance",
    "ms_ssim",
    "pesq",
    "psnr",
    "si_sdr",
    "ssim",
    "stft_distance",
    "stoi",
    "temporal_consistency",
    "zipf_fit",
]
