"""Audio discriminators: multi-period (HiFi-GAN), multi-scale STFT (EnCodec) and multi-band
multi-resolution STFT (DAC).

Every discriminator takes audio ``(batch, channels, samples)`` in [-1, 1] and returns a
:class:`DiscriminatorOutput`: one logit map and one list of feature maps per
sub-discriminator (period, STFT scale or resolution). The feature maps are the activations
of the hidden convs, without the logit map (as EnCodec's and DAC's feature-matching losses
use them; HiFi-GAN's also matches the logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from anytok.decoders.gan.base import DiscriminatorOutput


def _same_padding_2d(kernel: Sequence[int], dilation: Sequence[int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


def _spectrogram_input(audio: Tensor, n_fft: int, centred: bool) -> Tensor:
    """fp32 audio long enough for one STFT frame.

    cuFFT has no bf16 kernels, so spectrograms always run in fp32 (callers disable autocast).
    An uncentred STFT needs at least ``n_fft`` samples and a centred one (reflect padding)
    more than ``n_fft // 2``; shorter segments are zero-padded on the right.
    """
    audio = audio.float()
    needed = n_fft if not centred else n_fft // 2 + 1
    if audio.shape[-1] < needed:
        audio = F.pad(audio, (0, needed - audio.shape[-1]))
    return audio


def _match_stride_input(audio: Tensor, n_fft: int, hop: int) -> Tensor:
    """``(b, c, t)`` audio reflect-padded for a ``match_stride`` STFT (descript-audiotools):
    ``(n_fft - hop) // 2`` samples each side plus the rest of the last hop on the right,
    ``(b, c, t + n_fft - hop + (-t) % hop)`` for ``ceil(t / hop)`` frames after the two outer
    frames each side are dropped.

    Reflect padding needs more samples than it pads: audiotools accepts exactly the lengths
    with ``t > (n_fft - hop) // 2 + (-t) % hop`` (every ``t >= (n_fft - hop) // 2 + hop``).
    Shorter audio, which audiotools refuses, is first zero-padded to whole hops (at least
    one more than the side padding), which keeps ``ceil(t / hop)`` frames where it can.
    """
    pad = (n_fft - hop) // 2
    t = audio.shape[-1]
    rest = (-t) % hop
    if t <= pad + rest:
        whole_hops = max(t + rest, (pad // hop + 1) * hop)
        audio = F.pad(audio, (0, whole_hops - t))
        rest = 0
    return F.pad(audio, (pad, pad + rest), mode="reflect")


def dac_input_conditioning(audio: Tensor) -> Tensor:
    """DAC's discriminator input: each item and channel of ``(b, c, t)`` audio with its DC
    offset removed and its peak scaled to 0.8."""
    audio = audio - audio.mean(dim=-1, keepdim=True)
    return 0.8 * audio / (audio.abs().amax(dim=-1, keepdim=True) + 1e-9)


def _spectrogram(n_fft: int, hop_length: int, win_length: int, **kwargs: object) -> nn.Module:
    """torchaudio's complex spectrogram with its Hann window kept out of the state dict: a
    constant, and a view that safetensors would refuse to save."""
    spec = torchaudio.transforms.Spectrogram(
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        window_fn=torch.hann_window,
        power=None,
        **kwargs,  # type: ignore[arg-type]
    )
    window = spec.window.clone()
    del spec.window
    spec.register_buffer("window", window, persistent=False)
    return spec


# --------------------------------------------------------------------------- multi-period


class PeriodDiscriminator(nn.Module):
    """One period of HiFi-GAN's MPD (Kong et al. 2020, https://arxiv.org/abs/2010.05646).

    Audio ``(b, c, t)`` is folded into ``(b, c, t / p, p)`` so the 2D convs with ``(k, 1)``
    kernels see every ``p``-th sample: periodic structure the STFT discriminators blur.
    The length is padded (reflecting) to a multiple of ``p``; ``pad_whole_period`` pads
    ``p - t % p`` samples, a whole period when ``t`` is already a multiple (as DAC does).
    """

    def __init__(
        self,
        period: int,
        channels: int = 1,
        widths: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        pad_whole_period: bool = False,
    ):
        super().__init__()
        self.period = period
        self.pad_whole_period = pad_whole_period
        convs = []
        in_ch = channels
        for i, width in enumerate(widths):
            step = stride if i < len(widths) - 1 else 1
            conv = nn.Conv2d(
                in_ch, width, (kernel_size, 1), (step, 1), padding=((kernel_size - 1) // 2, 0)
            )
            convs.append(weight_norm(conv))
            in_ch = width
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(in_ch, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(b, c, t)`` -> logits ``(b, 1, t' , period)`` and the feature maps."""
        b, c, t = audio.shape
        missing = self.period - t % self.period if self.pad_whole_period else (-t) % self.period
        if missing:
            # Reflect like HiFi-GAN when the signal is long enough, zeros otherwise.
            mode = "reflect" if t > missing else "constant"
            audio = F.pad(audio, (0, missing), mode=mode)
        x = audio.reshape(b, c, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.post(x), features


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's multi-period discriminator: one :class:`PeriodDiscriminator` per period.

    Args:
        channels: audio channels.
        periods: the periods (primes, so they overlap little).
        widths: conv widths of each period discriminator.
        dac_compatible: DAC's variant (its MPD): the input conditioned by
            :func:`dac_input_conditioning` and padded by a whole period when the length is
            a multiple of it; with DAC's weights it gives DAC's outputs.
    """

    def __init__(
        self,
        channels: int = 1,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        widths: Sequence[int] = (32, 128, 512, 1024, 1024),
        dac_compatible: bool = False,
    ):
        super().__init__()
        self.dac_compatible = dac_compatible
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(
                p, channels=channels, widths=widths, pad_whole_period=dac_compatible
            )
            for p in periods
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """``(b, c, t)`` -> one logit map and feature list per period."""
        if self.dac_compatible:
            audio = dac_input_conditioning(audio)
        out = DiscriminatorOutput()
        for disc in self.discriminators:
            logits, features = disc(audio)
            out.append(logits, features)
        return out


# --------------------------------------------------------------------------- multi-scale STFT


class STFTDiscriminator(nn.Module):
    """One scale of EnCodec's MS-STFT discriminator (Défossez et al. 2022,
    https://arxiv.org/abs/2210.13438, section 3.4).

    The complex STFT (real and imaginary parts as channels, ``(b, 2c, frames, bins)``) goes
    through 2D convs dilated in time and strided in frequency.
    """

    def __init__(
        self,
        n_fft: int,
        hop_length: int,
        win_length: int,
        channels: int = 1,
        filters: int = 32,
        max_filters: int = 1024,
        filters_scale: int = 1,
        kernel_size: tuple[int, int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: tuple[int, int] = (1, 2),
    ):
        super().__init__()
        self.n_fft = n_fft
        self.spectrogram = _spectrogram(
            n_fft, hop_length, win_length, normalized=True, center=False
        )
        kernel_size = tuple(kernel_size)
        square = (kernel_size[0], kernel_size[0])
        convs = [
            nn.Conv2d(2 * channels, filters, kernel_size, padding=_same_padding_2d(kernel_size))
        ]
        in_ch = min(filters_scale * filters, max_filters)
        for i, dilation in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            convs.append(
                nn.Conv2d(
                    in_ch,
                    out_ch,
                    kernel_size,
                    stride=tuple(stride),
                    dilation=(dilation, 1),
                    padding=_same_padding_2d(kernel_size, (dilation, 1)),
                )
            )
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        convs.append(nn.Conv2d(in_ch, out_ch, square, padding=_same_padding_2d(square)))
        # Every conv weight-normed. EnCodec leaves the first one plain (its NormConv2d's default):
        # the same outputs for the same effective weights, another parametrisation (kept so
        # runs saved with it resume; its optimizer state would not load otherwise).
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.post = weight_norm(nn.Conv2d(out_ch, 1, square, padding=_same_padding_2d(square)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(b, c, t)`` -> logits ``(b, 1, frames, bins')`` and the feature maps."""
        with torch.autocast(audio.device.type, enabled=False):
            spec = self.spectrogram(_spectrogram_input(audio, self.n_fft, centred=False))
        x = torch.cat([spec.real, spec.imag], dim=1)  # (b, 2c, bins, frames)
        x = rearrange(x, "b c f t -> b c t f")
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        x = self.post(x)
        return x, features


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec's MS-STFT discriminator: :class:`STFTDiscriminator` at several FFT sizes.

    Args:
        channels: audio channels.
        n_ffts: FFT sizes; hop is a quarter and the window the full FFT size. Segments
            shorter than the largest FFT are zero-padded.
        filters: conv width (EnCodec: 32).
        max_filters: width cap when ``filters_scale > 1``.
    """

    def __init__(
        self,
        channels: int = 1,
        n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128),
        filters: int = 32,
        max_filters: int = 1024,
        filters_scale: int = 1,
    ):
        super().__init__()
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(
                n_fft=n,
                hop_length=n // 4,
                win_length=n,
                channels=channels,
                filters=filters,
                max_filters=max_filters,
                filters_scale=filters_scale,
            )
            for n in n_ffts
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        out = DiscriminatorOutput()
        for disc in self.discriminators:
            logits, features = disc(audio)
            out.append(logits, features)
        return out


# --------------------------------------------------------------------------- multi-band STFT


class BandSTFTDiscriminator(nn.Module):
    """One resolution of DAC's multi-band STFT discriminator (Kumar et al. 2023,
    https://arxiv.org/abs/2306.06546, section 3.3).

    The complex STFT is cut into frequency bands; each band has its own conv stack (so high
    bands are not dominated by the loud low ones), and the band outputs are joined along
    frequency before the last conv. Frames are centred (``t / hop + 1`` of them); with
    ``match_stride`` the signal is reflect-padded by ``3 n_fft / 8`` (plus the rest of the
    last hop) and the two outer frames each side dropped, so there are ``ceil(t / hop)``
    frames aligned like a strided conv (descript-audiotools' ``match_stride``, DAC's MRD).
    """

    def __init__(
        self,
        n_fft: int,
        channels: int = 1,
        width: int = 32,
        bands: Sequence[Sequence[float]] = (
            (0.0, 0.1),
            (0.1, 0.25),
            (0.25, 0.5),
            (0.5, 0.75),
            (0.75, 1.0),
        ),
        match_stride: bool = False,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.match_stride = match_stride
        self.spectrogram = _spectrogram(n_fft, n_fft // 4, n_fft, center=True)
        bins = n_fft // 2 + 1
        self.bands = [(int(lo * bins), int(hi * bins)) for lo, hi in bands]
        if any(hi <= lo for lo, hi in self.bands):
            raise ValueError(f"BandSTFTDiscriminator: n_fft={n_fft} leaves an empty band")

        def stack() -> nn.ModuleList:
            convs = [
                nn.Conv2d(2 * channels, width, (3, 9), (1, 1), padding=(1, 4)),
                nn.Conv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                nn.Conv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                nn.Conv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                nn.Conv2d(width, width, (3, 3), (1, 1), padding=(1, 1)),
            ]
            return nn.ModuleList(weight_norm(c) for c in convs)

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = weight_norm(nn.Conv2d(width, 1, (3, 3), (1, 1), padding=(1, 1)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(b, c, t)`` -> logits ``(b, 1, frames, bins')`` and the feature maps."""
        with torch.autocast(audio.device.type, enabled=False):
            if self.match_stride:
                audio = _match_stride_input(audio.float(), self.n_fft, self.n_fft // 4)
            else:
                audio = _spectrogram_input(audio, self.n_fft, centred=True)
            spec = self.spectrogram(audio)
            if self.match_stride:
                spec = spec[..., 2:-2]
        x = rearrange(torch.view_as_real(spec), "b c f t r -> b (c r) t f")
        features = []
        outputs = []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            band = x[..., lo:hi]
            for conv in convs:
                band = F.leaky_relu(conv(band), 0.1)
                features.append(band)
            outputs.append(band)
        return self.post(torch.cat(outputs, dim=-1)), features


class MultiBandSTFTDiscriminator(nn.Module):
    """DAC's multi-resolution, multi-band STFT discriminator (MRD).

    Args:
        channels: audio channels.
        n_ffts: one :class:`BandSTFTDiscriminator` per FFT size.
        width: conv width.
        bands: frequency bands as fractions of the Nyquist range.
        dac_compatible: DAC's variant: the input conditioned by
            :func:`dac_input_conditioning` and ``match_stride`` STFTs; with DAC's weights it
            gives DAC's outputs.
    """

    def __init__(
        self,
        channels: int = 1,
        n_ffts: Sequence[int] = (2048, 1024, 512),
        width: int = 32,
        bands: Sequence[Sequence[float]] = (
            (0.0, 0.1),
            (0.1, 0.25),
            (0.25, 0.5),
            (0.5, 0.75),
            (0.75, 1.0),
        ),
        dac_compatible: bool = False,
    ):
        super().__init__()
        self.dac_compatible = dac_compatible
        self.discriminators = nn.ModuleList(
            BandSTFTDiscriminator(
                n, channels=channels, width=width, bands=bands, match_stride=dac_compatible
            )
            for n in n_ffts
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """``(b, c, t)`` -> one logit map and feature list per FFT size."""
        if self.dac_compatible:
            audio = dac_input_conditioning(audio)
        out = DiscriminatorOutput()
        for disc in self.discriminators:
            logits, features = disc(audio)
            out.append(logits, features)
        return out


__all__ = [
    "BandSTFTDiscriminator",
    "MultiBandSTFTDiscriminator",
    "MultiPeriodDiscriminator",
    "MultiScaleSTFTDiscriminator",
    "PeriodDiscriminator",
    "STFTDiscriminator",
    "dac_input_conditioning",
]
