"""Mel front end and a Vocos-style vocoder: the waveform stage of diffusion speech decoders.

A diffusion speech decoder (TaDiCodec-style) denoises log-mel frames; :class:`MelVocoder`
turns them into samples with a ConvNeXt backbone and an inverse-STFT head at the mel hop
(Vocos, Siuzdak 2023, https://arxiv.org/abs/2306.00814; the blocks are
:mod:`anytok.nn.vocos`). :class:`MelConfig` is the one source of truth for the mel
parameters the encoder, the flow target and the vocoder share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.nn.vocos import ISTFTHead, VocosBackbone


@dataclass(frozen=True)
class MelConfig:
    """Log-mel parameters. ``frames(samples) = ceil(samples / hop_length)``.

    Attributes:
        sample_rate: audio rate in Hz.
        n_fft: FFT size (and window length).
        hop_length: samples per mel frame.
        n_mels: mel bins.
        f_min, f_max: mel filterbank range in Hz (``f_max`` None: Nyquist).
        mean, std: affine normalisation of the natural-log mel (the flow target is
            ``(log_mel - mean) / std``, roughly unit scale for speech).
    """

    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 240
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    mean: float = -5.0
    std: float = 2.5

    def frames(self, samples: int) -> int:
        return math.ceil(samples / self.hop_length)


class LogMel(nn.Module):
    """Audio ``(b, 1, samples)`` -> natural-log mel ``(b, n_mels, ceil(samples / hop))``.

    Centred STFT (reflect padding) over audio right-padded to a multiple of the hop; the
    extra frame a centred STFT adds at the end is dropped, so frame ``i`` is centred on
    sample ``i * hop`` and frames line up with tokens. Computed in fp32.
    """

    def __init__(self, config: MelConfig):
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.n_fft,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            power=1.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )
        # Window and filterbank follow from the config: keep them out of checkpoints.
        for module in self.mel.modules():
            module._non_persistent_buffers_set.update(
                name for name, _ in module.named_buffers(recurse=False)
            )

    def forward(self, audio: Tensor) -> Tensor:
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(
                f"LogMel: expected mono audio (batch, 1, samples), got {tuple(audio.shape)}"
            )
        frames = self.config.frames(audio.shape[-1])
        padded = F.pad(audio[:, 0].float(), (0, frames * self.config.hop_length - audio.shape[-1]))
        with torch.autocast(audio.device.type, enabled=False):
            if any(b.dtype != torch.float32 for b in self.mel.buffers()):
                self.mel.float()  # constants (window, filterbank): fp32 in a bf16-cast model
            mel = self.mel(padded)[..., :frames]
        return mel.clamp_min(1e-5).log()

    def normalize(self, log_mel: Tensor) -> Tensor:
        return (log_mel - self.config.mean) / self.config.std

    def denormalize(self, normalized: Tensor) -> Tensor:
        return normalized * self.config.std + self.config.mean


class MelVocoder(nn.Module):
    """Natural-log mel ``(b, n_mels, frames)`` -> waveform ``(b, 1, frames * hop_length)``.

    Args:
        mel: the mel parameters (``n_mels``, ``hop_length``).
        dim, intermediate_dim, num_layers: the Vocos ConvNeXt backbone.
        n_fft: iSTFT size (default ``4 * hop_length``, Vocos's ratio).
    """

    def __init__(
        self,
        mel: MelConfig,
        dim: int = 512,
        intermediate_dim: int = 1536,
        num_layers: int = 8,
        n_fft: int | None = None,
    ):
        super().__init__()
        self.mel_config = mel
        self.backbone = VocosBackbone(
            input_channels=mel.n_mels,
            dim=dim,
            intermediate_dim=intermediate_dim,
            num_layers=num_layers,
        )
        self.head = ISTFTHead(dim, n_fft or 4 * mel.hop_length, mel.hop_length, "same")

    def forward(self, log_mel: Tensor) -> Tensor:
        if log_mel.ndim != 3 or log_mel.shape[1] != self.mel_config.n_mels:
            raise ValueError(
                f"MelVocoder: expected (batch, {self.mel_config.n_mels}, frames), got "
                f"{tuple(log_mel.shape)}"
            )
        return self.head(self.backbone(log_mel)).unsqueeze(1)


__all__ = ["LogMel", "MelConfig", "MelVocoder"]
