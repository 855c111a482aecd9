"""Audio fidelity: spectral distances, SI-SDR, PESQ and STOI, per item.

Every function takes ``reference`` and ``reconstruction`` as ``(batch, channels, samples)``
float tensors in [-1, 1] at the same sample rate, crops the longer to the shorter (codecs pad
to their hop length) and returns a ``(batch,)`` float32 tensor. Names follow Codec-SUPERB /
DASB: ``mel_distance``, ``stft_distance``, ``si_sdr``, ``pesq_wb``, ``pesq_nb``, ``stoi``.

Where a metric is undefined for an item (a clip too short for its analysis windows, a silent
reference) the item's value is NaN rather than an exception or a made-up number, so that a
benchmark goes on and counts it as invalid.

The model-based speech metrics (UTMOS, speaker similarity, WER) live in
:mod:`anytok.metrics.speech_models`.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
import torchaudio
from torch import Tensor

from anytok.media.audio import resample

#: PESQ is defined at 8 kHz (narrow-band) and 16 kHz (wide-band); other rates are resampled to
#: this one first. Narrow-band mode is also computed at 16 kHz (P.862 allows both), so the two
#: scores see the same signal, as Codec-SUPERB does.
PESQ_SAMPLE_RATE = 16000
#: The shortest clip STOI can score: 30 frames of 256 samples (hop 128) at its 10 kHz rate.
STOI_MIN_SECONDS = (29 * 128 + 256) / 10000
#: A reference whose mean square (after removing its mean) is below this is silent: SI-SDR
#: is undefined (a division by zero) and reported as NaN. RMS 1e-7, below 24-bit resolution.
SILENCE_POWER = 1e-14


def align(reference: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
    """Crop both to the shorter length; float32 on the CPU. Shapes ``(batch, channels, n)``."""
    if reference.ndim != 3 or reconstruction.ndim != 3:
        raise ValueError(
            "audio metrics expect (batch, channels, samples), got "
            f"{tuple(reference.shape)} and {tuple(reconstruction.shape)}"
        )
    if reference.shape[:2] != reconstruction.shape[:2]:
        raise ValueError(
            f"audio metrics: batch/channels differ: {tuple(reference.shape[:2])} vs "
            f"{tuple(reconstruction.shape[:2])}"
        )
    n = min(reference.shape[-1], reconstruction.shape[-1])
    return reference[..., :n].float().cpu(), reconstruction[..., :n].float().cpu()


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
        ``(batch,)`` mean over scales of ``mean |log10(mel_ref) - log10(mel_rec)|``; NaN for
        clips not longer than half the largest FFT size (its centred frame does not fit).
    """
    ref, rec = align(reference, reconstruction)
    if ref.shape[-1] <= max(scales) // 2:  # reflect padding needs more than half a window
        return torch.full((ref.shape[0],), math.nan)
    total = torch.zeros(ref.shape[0])
    for n_fft in scales:
        mel = _mel_transform(sample_rate, n_fft, n_fft // 4, n_mels)
        a = torch.log10(mel(ref).clamp_min(1e-5))
        b = torch.log10(mel(rec).clamp_min(1e-5))
        total += (a - b).abs().flatten(1).mean(dim=1)
    return total / len(scales)


def stft_distance(
    reference: Tensor,
    reconstruction: Tensor,
    window_lengths: tuple[int, ...] = (2048, 512),
    clamp_eps: float = 1e-5,
    power: float = 2.0,
) -> Tensor:
    """Multi-resolution STFT distance, per item (lower is better).

    The definition of descript-audiotools' ``MultiScaleSTFTLoss`` (used by DAC and reported as
    STFT distance by Codec-SUPERB): for each Hann window length ``w`` (hop ``w / 4``), the sum
    of ``mean |log10(max(|X|, eps)^p) - log10(max(|Y|, eps)^p)|`` and ``mean ||X| - |Y||``,
    summed over window lengths. Written out here (a few lines of ``torch.stft``) because
    audiotools pulls in a large dependency tree for this one formula.

    Returns:
        ``(batch,)``; NaN for clips not longer than half the longest window (its centred frame
        does not fit; dropping that window instead would change the scale of the sum).
    """
    ref, rec = align(reference, reconstruction)
    batch, channels = reference.shape[:2]
    if ref.shape[-1] <= max(window_lengths) // 2:  # reflect padding needs more than that
        return torch.full((batch,), math.nan)
    ref, rec = ref.flatten(0, 1), rec.flatten(0, 1)  # (batch * channels, n)
    total = torch.zeros(ref.shape[0])
    for win in window_lengths:
        window = torch.hann_window(win)
        spec = functools.partial(
            torch.stft, n_fft=win, hop_length=win // 4, window=window, return_complex=True
        )
        mag_ref, mag_rec = spec(ref).abs(), spec(rec).abs()
        log_ref = torch.log10(mag_ref.clamp_min(clamp_eps).pow(power))
        log_rec = torch.log10(mag_rec.clamp_min(clamp_eps).pow(power))
        total += (log_ref - log_rec).abs().flatten(1).mean(dim=1)
        total += (mag_ref - mag_rec).abs().flatten(1).mean(dim=1)
    return total.view(batch, channels).mean(dim=1)


def si_sdr(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), per item.

    Zero-mean SI-SDR from torchmetrics, computed per channel and averaged over the channels
    whose reference is not silent. Higher is better. A silent (or constant) reference channel
    has no signal to measure against: the formula divides by zero, and torchmetrics' epsilon
    would turn that into a finite -180 dB that drags any mean down; it is NaN here (an item
    with every channel silent is NaN). A silent reconstruction of a non-silent reference gives
    torchmetrics' 0 dB.

    Returns:
        ``(batch,)``.
    """
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    ref, rec = align(reference, reconstruction)
    ref, rec = ref.double(), rec.double()
    values = scale_invariant_signal_distortion_ratio(rec, ref, zero_mean=True)
    power = (ref - ref.mean(dim=-1, keepdim=True)).pow(2).mean(dim=-1)
    # Leave out the channels whose reference is silent, and only those: a NaN of the
    # reconstruction must reach the result (nanmean would hide a broken channel).
    silent = power <= SILENCE_POWER
    total = values.masked_fill(silent, 0.0).sum(dim=1)
    return (total / (~silent).sum(dim=1)).float()  # every channel silent: 0 / 0 = NaN


def _mono_numpy(audio: Tensor) -> np.ndarray:
    """``(batch, channels, n)`` -> ``(batch, n)`` float64, the channel mean."""
    return audio.mean(dim=1).numpy().astype(np.float64)


def pesq(reference: Tensor, reconstruction: Tensor, sample_rate: int, mode: str = "wb") -> Tensor:
    """PESQ (ITU-T P.862) MOS-LQO with the ``pesq`` package, per item, on the channel mean.

    Args:
        reference, reconstruction: ``(batch, channels, samples)``.
        sample_rate: their rate; resampled to 16 kHz unless it is 8 kHz (narrow-band only)
            or 16 kHz.
        mode: ``"wb"`` (wide-band, P.862.2, range about 1.04-4.64) or ``"nb"`` (narrow-band,
            P.862.1, about 1.02-4.55).

    Returns:
        ``(batch,)``; NaN where PESQ cannot score the item: no speech found in the reference
        (silence), a clip shorter than about 0.25 s, or a silent reconstruction (PESQ's level
        alignment divides by its zero power).
    """
    from pesq import PesqError
    from pesq import pesq as pesq_score

    if mode not in ("wb", "nb"):
        raise ValueError(f"pesq: mode must be 'wb' or 'nb', got {mode!r}")
    ref, rec = align(reference, reconstruction)
    rate = sample_rate
    if not (rate == 16000 or (rate == 8000 and mode == "nb")):
        ref = resample(ref, rate, PESQ_SAMPLE_RATE)
        rec = resample(rec, rate, PESQ_SAMPLE_RATE)
        rate = PESQ_SAMPLE_RATE
    values = []
    for r, d in zip(_mono_numpy(ref), _mono_numpy(rec)):
        # RETURN_VALUES turns "no utterances detected" into a negative code instead of raising;
        # on silence the package divides by a zero peak first, hence the errstate.
        with np.errstate(invalid="ignore", divide="ignore"):
            score = pesq_score(rate, r, d, mode, on_error=PesqError.RETURN_VALUES)
        values.append(float(score) if score >= 0 else math.nan)
    return torch.tensor(values, dtype=torch.float32)


def stoi(
    reference: Tensor, reconstruction: Tensor, sample_rate: int, extended: bool = False
) -> Tensor:
    """Short-time objective intelligibility (pystoi), per item, on the channel mean.

    Args:
        reference, reconstruction: ``(batch, channels, samples)``; the longer is cropped.
        extended: ESTOI instead of STOI.

    Returns:
        ``(batch,)`` STOI (higher is better; about [0, 1]); NaN where pystoi cannot score the
        item: shorter than :data:`STOI_MIN_SECONDS`, fewer than 30 frames left once the silent
        frames of the reference are removed (pystoi warns and returns 1e-5 there), or a silent
        reference.
    """
    from pystoi import stoi as pystoi_stoi

    ref, rec = align(reference, reconstruction)
    values = []
    for r, d in zip(_mono_numpy(ref), _mono_numpy(rec)):
        if r.size < math.ceil(STOI_MIN_SECONDS * sample_rate) or not np.any(r):
            values.append(math.nan)  # pystoi raises on very short clips
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(pystoi_stoi(r, d, sample_rate, extended=extended))
        for w in caught:  # pystoi's "returning 1e-5" is a NaN here; pass anything else on
            if "Not enough STFT frames" in str(w.message):
                value = math.nan
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        values.append(value)
    return torch.tensor(values, dtype=torch.float32)


__all__ = [
    "PESQ_SAMPLE_RATE",
    "SILENCE_POWER",
    "STOI_MIN_SECONDS",
    "align",
    "mel_distance",
    "pesq",
    "si_sdr",
    "stft_distance",
    "stoi",
]
