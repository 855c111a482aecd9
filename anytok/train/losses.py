"""Reconstruction losses and EnCodec's gradient balancer.

* :class:`MultiResolutionSTFTLoss`: spectral convergence + log-magnitude L1 at several FFT
  sizes (Parallel WaveGAN, https://arxiv.org/abs/1910.11480).
* :class:`MultiScaleMelLoss`: L1 between log-mel spectrograms at several window sizes (DAC,
  https://arxiv.org/abs/2306.06546).
* :class:`EnCodecSpectralLoss`: EnCodec's frequency-domain loss, L1 on mel power plus MSE
  on log-mel at several windows (https://arxiv.org/abs/2210.13438, section 3.4, as
  AudioCraft's ``msspec``).
* :class:`VGGPerceptualLoss`: LPIPS-style distance on VGG16 features
  (https://arxiv.org/abs/1801.03924) from a local weights file, for images and video.
* :class:`ReconstructionLoss`: the weighted set a recipe asks for.
* :class:`LossBalancer`: EnCodec's balancer (https://arxiv.org/abs/2210.13438, section 3.4).

Spectral losses run in fp32 with autocast off: cuFFT has no bf16 kernels and log-magnitudes
need the range.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchaudio
from einops import rearrange
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.decoders.gan.losses import GAN_REDUCTIONS, reduce_parts
from anytok.nn.conv import extra_padding_for_stride
from anytok.quantizers.distributed import all_reduce_mean_


def _fp32(x: Tensor) -> Tensor:
    return x.float()


def _long_enough(audio: Tensor, n_fft: int) -> Tensor:
    """Zero-pad so a centred STFT (reflect padding of ``n_fft // 2``) is defined."""
    needed = n_fft // 2 + 1
    return F.pad(audio, (0, needed - audio.shape[-1])) if audio.shape[-1] < needed else audio


REDUCTIONS = GAN_REDUCTIONS  # one choice for every multi-part term of a recipe
MEL_SCALES = ("htk", "slaney")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _mel_spectrograms(
    sample_rate: int, windows: Sequence[int], n_mels: Sequence[int], **kwargs: Any
) -> nn.ModuleList:
    """One torchaudio ``MelSpectrogram`` per window (hop = window / 4). Small windows leave
    the lowest mel bands between FFT bins (all-zero filters) by design of the losses that
    use them, so torchaudio's warning about it is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero")
        return nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=w,
                win_length=w,
                hop_length=w // 4,
                n_mels=m,
                **kwargs,
            )
            for w, m in zip(windows, n_mels)
        )


class MultiResolutionSTFTLoss(nn.Module):
    """``[ ||S - Ŝ||_F / ||S||_F + mean |log S - log Ŝ| ]`` averaged (or summed, with
    ``reduction="sum"``) over FFT sizes, where ``S`` are STFT magnitudes of ``(b, c, t)``
    audio (hop = size / 4, Hann window, centred frames).

    As Parallel WaveGAN, the magnitude is ``sqrt(max(re^2 + im^2, 1e-7))`` (unnormalised
    STFT): the floor is on the power, so magnitudes stop at ``sqrt(1e-7) ~ 3.2e-4``. Against
    digital silence the log term then ignores noise below that floor instead of chasing it
    down to a magnitude of 1e-7 (70 dB lower), where it would dominate the loss.
    """

    POWER_FLOOR = 1e-7

    def __init__(
        self,
        fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
        reduction: str = "mean",
    ):
        super().__init__()
        _check_choice("reduction", reduction, REDUCTIONS)
        self.fft_sizes = tuple(fft_sizes)
        self.reduction = reduction
        self.spectrograms = nn.ModuleList(
            torchaudio.transforms.Spectrogram(n_fft=n, win_length=n, hop_length=n // 4, power=None)
            for n in self.fft_sizes
        )

    def _magnitude(self, audio: Tensor, n_fft: int, spec: nn.Module) -> Tensor:
        """``(b, c, t)`` -> floored magnitudes ``(b, c, n_fft // 2 + 1, frames)``."""
        power = torch.view_as_real(spec(_long_enough(_fp32(audio), n_fft))).pow(2).sum(-1)
        return power.clamp_min(self.POWER_FLOOR).sqrt()

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        total = reconstruction.new_zeros((), dtype=torch.float32)
        with torch.autocast(reconstruction.device.type, enabled=False):
            for n_fft, spec in zip(self.fft_sizes, self.spectrograms):
                s_hat = self._magnitude(reconstruction, n_fft, spec)
                s = self._magnitude(target, n_fft, spec)
                convergence = torch.linalg.vector_norm(s - s_hat) / torch.linalg.vector_norm(
                    s
                ).clamp_min(1e-7)
                total = total + convergence + F.l1_loss(s_hat.log(), s.log())
        return reduce_parts(total, len(self.fft_sizes), self.reduction)


class MultiScaleMelLoss(nn.Module):
    """``mean |log10 M - log10 M̂|`` averaged (or summed, with ``reduction="sum"``) over
    windows, for mel magnitudes ``M`` of ``(b, c, t)`` audio (hop = window / 4, ``n_mels``
    bins per window, magnitudes clamped below at ``floor``: 1e-5 as DAC, 1e-7 as Vocos).

    ``mel_scale="htk"`` is torchaudio's default filterbank (HTK mel scale, unnormalised
    triangles; Vocos); ``"slaney"`` is librosa's default (Slaney's scale, area-normalised
    triangles), which DAC's loss uses. With ``mel_scale="slaney", reduction="sum"`` and the
    default windows this is DAC's ``MelSpectrogramLoss`` (``mag_weight=0, pow=1``) exactly.
    A window whose smallest mel bands fall between FFT bins (DAC's 32-point window with 5
    bands, ...) has all-zero filters; that is the recipe's design.
    """

    def __init__(
        self,
        sample_rate: int,
        windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        mel_scale: str = "htk",
        reduction: str = "mean",
        floor: float = 1e-5,
    ):
        super().__init__()
        _check_choice("mel_scale", mel_scale, MEL_SCALES)
        if not floor > 0:
            raise ValueError(f"the mel floor must be positive, got {floor}")
        self.floor = floor
        _check_choice("reduction", reduction, REDUCTIONS)
        if len(windows) != len(n_mels) or not windows:
            raise ValueError(
                f"mel windows and bins must be non-empty and of one length, got "
                f"{len(windows)} windows and {len(n_mels)} bin counts"
            )
        self.windows = tuple(windows)
        self.reduction = reduction
        self.mels = _mel_spectrograms(
            sample_rate,
            windows,
            n_mels,
            power=1.0,
            mel_scale=mel_scale,
            norm="slaney" if mel_scale == "slaney" else None,
        )

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        total = reconstruction.new_zeros((), dtype=torch.float32)
        with torch.autocast(reconstruction.device.type, enabled=False):
            for window, mel in zip(self.windows, self.mels):
                m_hat = mel(_long_enough(_fp32(reconstruction), window))
                m = mel(_long_enough(_fp32(target), window))
                m_hat, m = m_hat.clamp_min(self.floor).log10(), m.clamp_min(self.floor).log10()
                total = total + F.l1_loss(m_hat, m)
        return reduce_parts(total, len(self.windows), self.reduction)


class EnCodecSpectralLoss(nn.Module):
    """EnCodec's frequency-domain reconstruction loss ``l_f``, as AudioCraft's ``msspec``.

    For each window ``w``: ``L1(M, M̂) + alpha_w * MSE(log10(1e-5 + M), log10(1e-5 + M̂))``
    on power mel spectrograms ``M`` of ``(b, c, t)`` audio (``n_mels`` HTK bins from
    ``f_min`` to Nyquist, hop ``w / 4``, Hann window, STFT normalised by the window's
    L2 norm, reflect-padded by ``(w - hop) / 2`` each side and zero-padded to whole frames:
    ``ceil(t / hop)`` frames). ``alpha_w`` is 1, or ``sqrt(w - 1)`` with ``alphas=True``
    (the paper's weighting). ``reduction="mean"`` divides the sum over windows by
    ``sum_w (1 + alpha_w)`` (AudioCraft's ``normalized``); ``"sum"`` does not. The defaults
    are AudioCraft's EnCodec configuration (windows 64-1024, 64 mels from 64 Hz).
    """

    def __init__(
        self,
        sample_rate: int,
        windows: Sequence[int] = (64, 128, 256, 512, 1024),
        n_mels: int = 64,
        f_min: float = 64.0,
        alphas: bool = False,
        reduction: str = "mean",
    ):
        super().__init__()
        _check_choice("reduction", reduction, REDUCTIONS)
        if not windows or any(w < 4 for w in windows):
            raise ValueError(f"msspec windows must be non-empty and >= 4, got {list(windows)}")
        self.windows = tuple(windows)
        self.alphas = tuple(math.sqrt(w - 1) if alphas else 1.0 for w in self.windows)
        self.parts = sum(1 + alpha for alpha in self.alphas)  # the mean's divisor
        self.reduction = reduction
        self.mels = _mel_spectrograms(
            sample_rate,
            self.windows,
            [n_mels] * len(self.windows),
            f_min=f_min,
            normalized=True,
            center=False,
        )

    def _mel(self, audio: Tensor, window: int, mel: nn.Module) -> Tensor:
        hop = window // 4
        pad = (window - hop) // 2
        audio = _long_enough(_fp32(audio), 2 * pad)  # reflect padding needs > pad samples
        audio = F.pad(audio, (pad, pad), mode="reflect")
        extra = extra_padding_for_stride(audio.shape[-1], window, hop, 0)
        return mel(F.pad(audio, (0, extra)))

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        total = reconstruction.new_zeros((), dtype=torch.float32)
        with torch.autocast(reconstruction.device.type, enabled=False):
            for window, mel, alpha in zip(self.windows, self.mels, self.alphas):
                m_hat = self._mel(reconstruction, window, mel)
                m = self._mel(target, window, mel)
                log_distance = F.mse_loss((1e-5 + m_hat).log10(), (1e-5 + m).log10())
                total = total + F.l1_loss(m_hat, m) + alpha * log_distance
        return reduce_parts(total, self.parts, self.reduction)


class VGGPerceptualLoss(nn.Module):
    """LPIPS-style perceptual distance on torchvision VGG16 features, weights from a file.

    Nothing is downloaded: ``weights`` is a safetensors file with the ``features.*`` entries
    of ``torchvision.models.vgg16`` (see docs/training.md for the one-line export), and
    optionally LPIPS's linear heads as ``lin.<i>.weight`` ``(1, C_i, 1, 1)``; without them
    every channel weighs alike. Features are unit-normalised per position, so the distance is
    ``sum over layers of mean over positions of sum_c w_c (f̂ - f)^2``.

    Images ``(b, 3, H, W)`` or video ``(b, 3, T, H, W)`` (frames are scored separately), in
    [-1, 1].
    """

    # Outputs of relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 in vgg16().features.
    TAPS = (3, 8, 15, 22, 29)
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, weights: str | os.PathLike[str]):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[: self.TAPS[-1] + 1]
        state = load_file(os.fspath(weights))
        features = {
            k.removeprefix("features."): v for k, v in state.items() if not k.startswith("lin.")
        }
        features = {k: v for k, v in features.items() if int(k.split(".")[0]) <= self.TAPS[-1]}
        self.features.load_state_dict(features, strict=True)
        lin = [
            state.get(f"lin.{i}.weight", torch.ones(1, c, 1, 1))
            for i, c in enumerate(self.CHANNELS)
        ]
        self.register_buffer("lin", torch.cat([w.flatten() for w in lin]), persistent=False)
        self.register_buffer(
            "mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # a fixed feature extractor: always in eval mode

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        if reconstruction.ndim == 5:
            reconstruction = rearrange(reconstruction, "b c t h w -> (b t) c h w")
            target = rearrange(target, "b c t h w -> (b t) c h w")
        x = torch.cat([reconstruction, target]).float()
        x = ((x + 1) / 2 - self.mean) / self.std
        total = x.new_zeros(())
        offset = 0
        taps = iter(self.TAPS)
        tap = next(taps)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index != tap:
                continue
            f_hat, f = x.chunk(2)
            f_hat = f_hat / f_hat.norm(dim=1, keepdim=True).clamp_min(1e-10)
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-10)
            weight = self.lin[offset : offset + x.shape[1]].view(1, -1, 1, 1)
            total = total + ((f_hat - f) ** 2 * weight).sum(dim=1).mean()
            offset += x.shape[1]
            tap = next(taps, -1)
        return total


RECONSTRUCTION_TERMS = ("l1", "l2", "stft", "mel", "msspec", "perceptual")
SPECTRAL_TERMS = ("stft", "mel", "msspec")


def zero_padding(media: Tensor, lengths: Tensor, modality: str) -> Tensor:
    """Audio ``(b, c, t)`` with the samples past each item's length zeroed, as the collated
    real batch holds them; other media unchanged (their padding is not masked)."""
    if modality != "audio":
        return media
    positions = torch.arange(media.shape[-1], device=media.device)
    return media * (positions[None, :] < lengths[:, None]).unsqueeze(1).to(media.dtype)


class ReconstructionLoss(nn.Module):
    """The reconstruction terms a recipe weights above zero.

    Args:
        weights: ``{"l1": w, "l2": w, "stft": w, "mel": w, "msspec": w, "perceptual": w}``;
            terms with weight 0 are not computed.
        modality: ``"audio"``, ``"image"`` or ``"video"`` (spectral terms are audio only,
            perceptual image / video only).
        sample_rate: audio sample rate (mel filterbanks).
        stft_sizes, mel_windows, mel_bins, mel_scale, mel_floor: see :class:`MultiResolutionSTFTLoss`
            and :class:`MultiScaleMelLoss`.
        reduction: ``"mean"`` or ``"sum"`` over the STFT sizes and mel windows (and
            :class:`EnCodecSpectralLoss`'s, with its defaults).
        perceptual_weights: VGG16 weights file for :class:`VGGPerceptualLoss`.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        modality: str,
        sample_rate: int | None = None,
        *,
        stft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
        mel_windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        mel_bins: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        mel_scale: str = "htk",
        mel_floor: float = 1e-5,
        reduction: str = "mean",
        perceptual_weights: str | os.PathLike[str] | None = None,
    ):
        super().__init__()
        self.weights = {k: float(weights[k]) for k in RECONSTRUCTION_TERMS if weights.get(k, 0.0)}
        self.modality = modality
        spectral = sorted(set(SPECTRAL_TERMS) & set(self.weights))
        if modality != "audio" and spectral:
            names = ", ".join(f"loss.{k}" for k in spectral)
            raise ValueError(f"{names}: spectral terms apply to audio only, not {modality}")
        if spectral and sample_rate is None:
            raise ValueError(f"loss.{spectral[0]} needs the sample rate")
        if modality == "audio" and "perceptual" in self.weights:
            raise ValueError("loss.perceptual applies to images and video only")
        self.stft = (
            MultiResolutionSTFTLoss(stft_sizes, reduction) if "stft" in self.weights else None
        )
        self.mel = None
        if "mel" in self.weights:
            assert sample_rate is not None
            self.mel = MultiScaleMelLoss(
                sample_rate,
                mel_windows,
                mel_bins,
                mel_scale=mel_scale,
                reduction=reduction,
                floor=mel_floor,
            )
        self.msspec = None
        if "msspec" in self.weights:
            assert sample_rate is not None
            self.msspec = EnCodecSpectralLoss(sample_rate, reduction=reduction)
        self.perceptual = None
        if "perceptual" in self.weights:
            if perceptual_weights is None:
                raise ValueError("the perceptual loss needs perceptual_weights (a local file)")
            self.perceptual = VGGPerceptualLoss(perceptual_weights)

    def forward(
        self, reconstruction: Tensor, target: Tensor, lengths: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Unweighted terms ``{name: scalar}`` for ``(b, ...)`` media.

        For audio, samples past each item's ``lengths`` (padding) are zeroed in the
        reconstruction too, so padding is neither learned nor penalised.
        """
        reconstruction = reconstruction.float()
        target = target.float()
        if lengths is not None:
            reconstruction = zero_padding(reconstruction, lengths, self.modality)
        terms: dict[str, Tensor] = {}
        if "l1" in self.weights:
            terms["l1"] = F.l1_loss(reconstruction, target)
        if "l2" in self.weights:
            terms["l2"] = F.mse_loss(reconstruction, target)
        if self.stft is not None:
            terms["stft"] = self.stft(reconstruction, target)
        if self.mel is not None:
            terms["mel"] = self.mel(reconstruction, target)
        if self.msspec is not None:
            terms["msspec"] = self.msspec(reconstruction, target)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(reconstruction, target)
        return terms

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """``sum_k weight_k * term_k``: the logged ``loss/reconstruction``."""
        weighted = [self.weights[k] * v for k, v in terms.items() if k in self.weights]
        # A 0-dim CPU zero adds to tensors on any device (e.g. a diffusion-only model).
        return torch.stack(weighted).sum() if weighted else torch.zeros(())


class LossBalancer:
    """EnCodec's gradient balancer: each loss gets a share of the gradient on the model
    output in proportion to its weight, whatever its scale.

    For losses ``l_i`` with weights ``w_i`` on output ``y``, the gradient sent back is
    ``sum_i (w_i / sum_j w_j) * total_norm * g_i / ema(||g_i||)`` with ``g_i = dl_i/dy`` and
    ``||.||`` the per-item L2 norm averaged over the batch (and over ranks). Losses that do
    not depend on ``y`` (quantizer, diffusion) are back-propagated unchanged alongside.

    Args:
        weights: ``{name: weight}`` of the balanced losses.
        total_norm: norm of the combined gradient.
        ema_decay: decay of the running gradient norms.
    """

    def __init__(
        self, weights: Mapping[str, float], total_norm: float = 1.0, ema_decay: float = 0.999
    ):
        self.weights = dict(weights)
        self.total_norm = total_norm
        self.ema_decay = ema_decay
        # Bias-corrected running means: sums and normalisers, as audiocraft's averager.
        self.sums: dict[str, Tensor | float] = {}  # device tensors once a step has run
        self.counts: dict[str, float] = {}  # the same for every batch: host floats

    def backward(
        self,
        losses: Mapping[str, Tensor],
        output: Tensor,
        other: Tensor | None = None,
        scale: float = 1.0,
    ) -> dict[str, Tensor]:
        """Back-propagate the balanced gradient (times ``scale``, e.g. ``1 / grad_accum``)
        and ``other * scale``; return the gradient norms ``{name: 0-dim tensor}``.

        The running norms stay on the output's device (float64, as host floats would be), so
        a step never waits for the device; only :meth:`state_dict` reads them back.
        """
        active = {k: v for k, v in losses.items() if self.weights.get(k, 0.0) > 0}
        if not active:  # nothing on the output to balance (e.g. a diffusion-only model)
            if other is not None and other.requires_grad:
                (other * scale).backward()
            return {}
        grads = {}
        for name, loss in active.items():
            (grads[name],) = torch.autograd.grad(loss, [output], retain_graph=True)
        norms = torch.stack([g.flatten(1).norm(dim=1).mean() for g in grads.values()]).double()
        norms = all_reduce_mean_(norms)
        total_weight = sum(self.weights[k] for k in active)
        combined = torch.zeros_like(output)
        out_norms = {}
        for (name, grad), norm in zip(grads.items(), norms.unbind()):
            # A host float (first step, or a loaded state) times the decay plus the device norm
            # is a device tensor from then on.
            self.sums[name] = self.sums.get(name, 0.0) * self.ema_decay + norm
            self.counts[name] = self.counts.get(name, 0.0) * self.ema_decay + 1.0
            average = self.sums[name] / self.counts[name]
            ratio = self.weights[name] / total_weight
            combined.addcmul_(grad, (ratio * self.total_norm) / (average + 1e-12))
            out_norms[name] = norm
        tensors, grad_tensors = [output], [combined * scale]
        if other is not None and other.requires_grad:
            tensors.append(other)
            grad_tensors.append(torch.full_like(other, scale))
        torch.autograd.backward(tensors, grad_tensors)
        return out_norms

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.counts = {k: float(v) for k, v in state["counts"].items()}


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def finite_or_raise(value: Tensor, what: str, step: int) -> None:
    """Stop with a clear message when a loss is NaN or infinite (training cannot recover)."""
    if not math.isfinite(float(value)):
        raise FloatingPointError(
            f"step {step}: {what} is {float(value)}; lower the learning rate, enable "
            "optimizer.clip_grad_norm, or use train.precision=fp32 to find the cause"
        )


__all__ = [
    "MEL_SCALES",
    "RECONSTRUCTION_TERMS",
    "REDUCTIONS",
    "SPECTRAL_TERMS",
    "EnCodecSpectralLoss",
    "LossBalancer",
    "MultiResolutionSTFTLoss",
    "MultiScaleMelLoss",
    "ReconstructionLoss",
    "VGGPerceptualLoss",
    "finite_or_raise",
    "lr_of",
    "zero_padding",
]
