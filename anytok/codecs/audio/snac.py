"""SNAC: multi-scale neural audio codec (Siuzdak et al. 2024, https://arxiv.org/abs/2410.14411).

DAC-style convolutional autoencoder (Snake activations, weight-normalised convs;
https://arxiv.org/abs/2306.06546) with depthwise residual convs, noise injection in the
decoder, optional local windowed attention at the latent rate, and a residual VQ whose levels
run at different rates: level ``i`` average-pools the residual by ``vq_strides[i]``, quantizes
it with a factorized, l2-normalised codebook (codebook search by cosine similarity in an
8-d space) and repeats the codes back. The 24 kHz speech model has 3 levels at 12, 23 and
47 Hz (0.98 kbps); the 32 and 44 kHz music models 4 levels.

**Code layout.** Levels run at different rates, so codes are grouped by *coarse frame*: one
frame covers ``vq_strides[0]`` latent steps and holds ``vq_strides[0] / vq_strides[i]`` codes
of level ``i`` (1 + 2 + 4 = 7 codes for the 24 kHz model, 1 + 2 + 4 + 8 = 15 for the music
models). :class:`Tokens` hold ``(batch, codes_per_frame, frames)`` with layout ``("time",)``
at the coarse frame rate (``spec.frame_rate``; ``hop_length`` is the coarse hop), and every
one of those "levels" has the same codebook size. Within a frame, codes are ordered by the
start of the time span they cover, coarser first: ``[c0, c1a, c2a, c2b, c1b, c2c, c2d]`` for
three levels, which is the depth-first order of the code tree and the order language models
trained on SNAC tokens use (e.g. Orpheus TTS, one id range of 4096 per position in the frame:
``LMVocab`` with per-level offsets gives exactly those ids). The layout is dense, so
``Tokens``, the LM patterns and save/load work unchanged and decode exactly;
:meth:`SNAC.codes_to_levels` / :meth:`SNAC.levels_to_tokens` convert to and from the
``snac`` package's list of per-level tensors. ``SNAC.quantizer.column_levels`` and
``SNAC.quantizer.strides`` say which level (and rate) every row holds.

Padding guarantee (non-causal): the encoder pads its input to a multiple of
``latent_hop * lcm(vq_strides[0], attn_window_size)`` samples as the ``snac`` package does, so
codes equal the package's codes for any length; codes are then cut to
``ceil(samples / hop_length)`` frames. Right padding (batching items of different lengths)
would change the codes whose receptive field reaches the padding (the last few frames, or
with local attention the last attention window), so in eval a batch of different lengths is
encoded once per distinct length, each item cropped to its own: every item gets the codes it
gets alone. The decoder's local attention treats a last, partial window as a shorter window.

Decoding is stochastic, as in SNAC: the noise blocks add Gaussian noise (scaled by a learned
projection) at every upsampling stage, from the global RNG as in SNAC. ``decode(tokens,
seed=...)`` makes it repeatable and independent of the batch: each decoder pass draws one
``(1, 1, t)`` noise per block from a CPU generator seeded at the pass's start, shared by the
batch, so every item decodes as it decodes alone with the same seed.

Module and parameter names mirror the ``snac`` package, so :func:`convert_snac_state_dict`
only drops rotary-frequency buffers and renames old-style weight norm.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from anytok.codecs.base import (
    AudioTokenizer,
    to_tokens,
)
from anytok.nn.attention import LocalSelfAttention
from anytok.nn.encodec_seanet import rename_weight_norm
from anytok.nn.snake import Snake1d
from anytok.quantizers.base import QuantizerOutput, check_codes, check_last_dim, zero_loss
from anytok.quantizers.kernels import nearest_codeword
from anytok.quantizers.vq import fp32_layer, fp32_region, local_code_metrics
from anytok.registry import register
from anytok.tokens import Tokens

# --------------------------------------------------------------------------- layers


def wn_conv1d(*args: Any, **kwargs: Any) -> nn.Conv1d:
    """``nn.Conv1d`` with weight normalisation (torch's parametrization)."""
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args: Any, **kwargs: Any) -> nn.ConvTranspose1d:
    """``nn.ConvTranspose1d`` with weight normalisation (torch's parametrization)."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class ResidualUnit(nn.Module):
    """Snake -> conv(7, dilation, groups) -> Snake -> 1x1 conv, plus identity. Same length."""

    def __init__(self, dim: int, dilation: int = 1, kernel_size: int = 7, groups: int = 1):
        super().__init__()
        padding = (kernel_size - 1) * dilation // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size, dilation=dilation, padding=padding, groups=groups),
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``output_dim / 2`` channels, then a strided
    conv (kernel ``2 * stride``) to ``output_dim``: ``(b, c/2, t) -> (b, c, t / stride)``."""

    def __init__(self, output_dim: int, stride: int, groups: int = 1):
        super().__init__()
        input_dim = output_dim // 2
        self.block = nn.Sequential(
            *(ResidualUnit(input_dim, dilation=d, groups=groups) for d in (1, 3, 9)),
            Snake1d(input_dim),
            wn_conv1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class NoiseBlock(nn.Module):
    """Adds Gaussian noise scaled per position and channel by a learned 1x1 conv of the input:
    ``x + n * W x`` with ``n ~ N(0, 1)`` of shape ``(b, 1, t)`` (SNAC's noise injection)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = wn_conv1d(dim, dim, kernel_size=1, bias=False)
        #: set by ``SNAC.decode(seed=...)``: draw one ``(1, 1, t)`` noise for the batch here
        self.generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, _, t = x.shape
        if self.generator is None:
            noise = torch.randn((b, 1, t), device=x.device, dtype=x.dtype)
        else:
            noise = torch.randn((1, 1, t), generator=self.generator).to(x).expand(b, -1, -1)
        return x + noise * self.linear(x)


class DecoderBlock(nn.Module):
    """Snake -> transposed conv (upsample by ``stride``) -> optional noise -> three residual
    units: ``(b, c_in, t) -> (b, c_out, t * stride)``."""

    def __init__(
        self, input_dim: int, output_dim: int, stride: int, noise: bool = False, groups: int = 1
    ):
        super().__init__()
        layers: list[nn.Module] = [
            Snake1d(input_dim),
            wn_conv_transpose1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            ),
        ]
        if noise:
            layers.append(NoiseBlock(output_dim))
        layers += [ResidualUnit(output_dim, dilation=d, groups=groups) for d in (1, 3, 9)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class SNACEncoder(nn.Module):
    """Waveform ``(b, 1, samples)`` -> latent ``(b, d_model * 2^len(strides), samples / hop)``.

    ``samples`` must be a multiple of ``prod(strides)`` (and of the attention window in latent
    steps when there is attention); :class:`SNAC` pads for it.
    """

    def __init__(
        self,
        d_model: int = 64,
        strides: Sequence[int] = (3, 3, 7, 7),
        depthwise: bool = False,
        attn_window_size: int | None = 32,
        attn_head_dim: int = 64,
    ):
        super().__init__()
        layers: list[nn.Module] = [wn_conv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride, groups=d_model // 2 if depthwise else 1))
        if attn_window_size is not None:
            layers.append(LocalSelfAttention(d_model, attn_window_size, attn_head_dim))
        layers.append(
            wn_conv1d(
                d_model, d_model, kernel_size=7, padding=3, groups=d_model if depthwise else 1
            )
        )
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class SNACDecoder(nn.Module):
    """Latent ``(b, input_channel, t)`` -> waveform ``(b, 1, t * prod(rates))`` in [-1, 1]."""

    def __init__(
        self,
        input_channel: int,
        channels: int,
        rates: Sequence[int],
        noise: bool = False,
        depthwise: bool = False,
        attn_window_size: int | None = 32,
        attn_head_dim: int = 64,
    ):
        super().__init__()
        if depthwise:
            layers: list[nn.Module] = [
                wn_conv1d(input_channel, input_channel, 7, padding=3, groups=input_channel),
                wn_conv1d(input_channel, channels, kernel_size=1),
            ]
        else:
            layers = [wn_conv1d(input_channel, channels, kernel_size=7, padding=3)]
        if attn_window_size is not None:
            layers.append(LocalSelfAttention(channels, attn_window_size, attn_head_dim))
        output_dim = channels
        for i, stride in enumerate(rates):
            input_dim, output_dim = channels // 2**i, channels // 2 ** (i + 1)
            groups = output_dim if depthwise else 1
            layers.append(DecoderBlock(input_dim, output_dim, stride, noise, groups=groups))
        layers += [
            Snake1d(output_dim),
            wn_conv1d(output_dim, 1, kernel_size=7, padding=3),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --------------------------------------------------------------------------- quantizer


class StridedFactorizedVQ(nn.Module):
    """One SNAC level: average-pool the residual by ``stride``, project to ``codebook_dim``
    (weight-normalised 1x1 conv), pick the code of largest cosine similarity (factorized,
    l2-normalised codes as in ViT-VQGAN, https://arxiv.org/abs/2110.04627, and DAC), project
    the (un-normalised) codeword back, repeat it ``stride`` times.

    Channel-first: ``z (b, dim, t)`` with ``t`` a multiple of ``stride``.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.codebook_size = codebook_size
        self.in_proj = wn_conv1d(dim, codebook_dim, kernel_size=1)
        self.out_proj = wn_conv1d(codebook_dim, dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def search(self, z_e: Tensor) -> Tensor:
        """Projected ``z_e (b, codebook_dim, n)`` -> codes ``(b, n)``."""
        x = F.normalize(rearrange(z_e, "b c n -> b n c").detach().float(), dim=-1)
        return nearest_codeword(x, F.normalize(self.codebook.weight.detach().float(), dim=-1))

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes ``(b, n)`` -> upsampled contribution ``(b, dim, n * stride)``."""
        codewords = F.embedding(codes, self.codebook.weight.float())
        z_q = fp32_layer(self.out_proj, rearrange(codewords, "b n c -> b c n"))
        return z_q.repeat_interleave(self.stride, dim=-1) if self.stride > 1 else z_q

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns the contribution ``(b, dim, t)`` (straight-through gradient), codes
        ``(b, t / stride)``, the commitment loss ``|z_e - sg(q)|^2`` and the codebook loss
        ``|sg(z_e) - q|^2``."""
        if self.stride > 1:
            z = F.avg_pool1d(z, self.stride, self.stride)
        z_e = fp32_layer(self.in_proj, z)  # fp32 math, also in a model cast to bf16
        codes = self.search(z_e)
        z_q = rearrange(F.embedding(codes, self.codebook.weight.float()), "b n c -> b c n")
        commitment = F.mse_loss(z_e, z_q.detach())
        codebook = F.mse_loss(z_q, z_e.detach())
        z_q = fp32_layer(self.out_proj, z_e + (z_q - z_e).detach())
        if self.stride > 1:
            z_q = z_q.repeat_interleave(self.stride, dim=-1)
        return z_q, codes, commitment, codebook


class MultiRateResidualVQ(nn.Module):
    """SNAC's residual VQ with one rate per level, in the anytok quantizer contract.

    Level ``i`` (a :class:`StridedFactorizedVQ` with ``strides[i]``) quantizes what levels
    ``0 .. i-1`` left. Training loss (DAC's): ``sum over levels of commitment_weight *
    |z_e - sg(q)|^2 + codebook_weight * |sg(z_e) - q|^2``.

    Codes are grouped by frame of ``strides[0]`` positions (see the module docstring):
    ``forward``/``encode`` of ``z (b, t, dim)`` give codes ``(b, t / strides[0],
    codes_per_frame)``, each frame's codes ordered by the start of the span they cover,
    coarser first. ``column_levels[j]`` is the level of frame column ``j``.

    Args:
        dim: channels of the channel-last input ``(b, t, dim)``.
        codebook_size: codes per level.
        codebook_dim: channels of the factorized codebook space.
        strides: pooling stride of every level, coarse to fine; each must divide
            ``strides[0]``.
        commitment_weight / codebook_weight: loss weights (DAC: 0.25 and 1.0).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int,
        strides: Sequence[int],
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
    ):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        if not strides or min(strides) < 1 or any(strides[0] % s for s in strides):
            raise ValueError(
                f"MultiRateResidualVQ: strides must be positive and divide strides[0], got {strides}"
            )
        self.dim = dim
        self.strides = strides
        self.frame_stride = strides[0]
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.quantizers = nn.ModuleList(
            StridedFactorizedVQ(dim, codebook_size, codebook_dim, s) for s in strides
        )
        # Frame columns: (start of the span, level, index within the frame), sorted.
        slots = sorted(
            (k * s, level, k) for level, s in enumerate(strides) for k in range(strides[0] // s)
        )
        self.per_frame = tuple(strides[0] // s for s in strides)
        offsets = [sum(self.per_frame[:level]) for level in range(len(strides))]
        #: frame column j holds level-major column frame_order[j]
        self.frame_order = tuple(offsets[level] + k for _, level, k in slots)
        self.level_order = tuple(self.frame_order.index(j) for j in range(len(slots)))
        self.column_levels = tuple(level for _, level, _ in slots)
        self.codebook_sizes = (codebook_size,) * len(slots)

    @property
    def num_levels(self) -> int:
        """Codes per frame (the last axis of ``codes``)."""
        return len(self.codebook_sizes)

    # ----------------------------------------------------------------- code layout

    def levels_to_frames(self, levels: Sequence[Tensor]) -> Tensor:
        """Per-level codes ``[(..., n * per_frame[i])]`` -> frame codes ``(..., n, F)``."""
        if len(levels) != len(self.strides):
            raise ValueError(
                f"MultiRateResidualVQ: expected {len(self.strides)} levels, got {len(levels)}"
            )
        frames = levels[0].shape[-1]
        parts = []
        for level, (codes, per) in enumerate(zip(levels, self.per_frame)):
            if codes.shape[-1] != frames * per:
                raise ValueError(
                    f"MultiRateResidualVQ: level {level} has {codes.shape[-1]} codes; "
                    f"expected {frames * per} ({frames} frames x {per})"
                )
            parts.append(codes.reshape(*codes.shape[:-1], frames, per))
        return torch.cat(parts, dim=-1)[..., list(self.frame_order)]

    def frames_to_levels(self, codes: Tensor) -> list[Tensor]:
        """Frame codes ``(..., n, F)`` -> per-level codes ``[(..., n * per_frame[i])]``."""
        level_major = codes[..., list(self.level_order)]
        return [
            part.reshape(*codes.shape[:-2], -1)
            for part in level_major.split(self.per_frame, dim=-1)
        ]

    # ----------------------------------------------------------------- contract

    def _check_input(self, z: Tensor) -> None:
        check_last_dim(z, self.dim, type(self).__name__)
        if z.ndim != 3 or z.shape[1] % self.frame_stride:
            raise ValueError(
                f"MultiRateResidualVQ: expected (b, t, {self.dim}) with t a multiple of "
                f"{self.frame_stride}, got {tuple(z.shape)}"
            )

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z (b, t, dim)``: quantized ``(b, t, dim)`` (straight-through gradient),
        codes ``(b, t / strides[0], F)``, loss (training), per-level metrics."""
        self._check_input(z)
        with fp32_region(z):
            residual = z.float().movedim(-1, 1)
            quantized = torch.zeros_like(residual)
            loss = zero_loss(z)
            levels, metrics = [], {}
            for level, vq in enumerate(self.quantizers):
                contribution, codes, commitment, codebook = vq(residual)
                quantized = quantized + contribution
                residual = residual - contribution
                levels.append(codes)
                if self.training:
                    loss = loss + self.commitment_weight * commitment
                    loss = loss + self.codebook_weight * codebook
                    metrics[f"commitment/{level}"] = commitment.detach()
                for name, value in local_code_metrics(codes, vq.codebook_size).items():
                    metrics[f"{name}/{level}"] = value
        return QuantizerOutput(
            quantized.movedim(1, -1).to(z.dtype), self.levels_to_frames(levels), loss, metrics
        )

    def encode(self, z: Tensor) -> Tensor:
        """``z (b, t, dim)`` -> codes ``(b, t / strides[0], F)`` (the codes of ``forward``)."""
        self._check_input(z)
        with torch.no_grad(), fp32_region(z):
            residual = z.float().movedim(-1, 1)
            levels = []
            for vq in self.quantizers:
                contribution, codes, _, _ = vq(residual)
                residual = residual - contribution
                levels.append(codes)
        return self.levels_to_frames(levels)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(b, n, F)`` -> quantized latent ``(b, n * strides[0], dim)``, fp32."""
        check_codes(codes, self.codebook_sizes, type(self).__name__)
        with fp32_region(codes):
            levels = self.frames_to_levels(codes.long())
            total = self.quantizers[0].lookup(levels[0])
            for vq, level_codes in zip(self.quantizers[1:], levels[1:]):
                total = total + vq.lookup(level_codes)
        return total.movedim(1, -1)


# --------------------------------------------------------------------------- tokenizer


class SNAC(AudioTokenizer):
    """Waveform ``(b, 1, samples)`` -> codes ``(b, F, ceil(samples / hop_length))`` grouped by
    coarse frame (see the module docstring) -> waveform.

    Args mirror the ``snac`` package's ``SNAC``, so its ``config.json`` values apply with one
    rename: its ``sampling_rate`` is ``sample_rate`` here.

    Args:
        sample_rate: input sample rate in Hz.
        encoder_dim: first encoder conv width (doubles per stride).
        encoder_rates: encoder strides (latent hop = their product).
        latent_dim: latent channels (default ``encoder_dim * 2 ** len(encoder_rates)``).
        decoder_dim: first decoder width (halves per stride).
        decoder_rates: decoder upsampling strides (same product as ``encoder_rates``).
        attn_window_size: local attention window in latent steps (``None``: no attention).
        attn_head_dim: channels per attention head (SNAC: 64).
        codebook_size: codes per level.
        codebook_dim: factorized codebook space.
        vq_strides: per-level pooling strides, coarse to fine.
        noise: noise blocks in the decoder.
        depthwise: depthwise residual convs.
        commitment_weight / codebook_weight: quantizer loss weights (DAC's 0.25 / 1.0).
    """

    causal = False

    def __init__(
        self,
        sample_rate: int = 24000,
        encoder_dim: int = 48,
        encoder_rates: Sequence[int] = (2, 4, 8, 8),
        latent_dim: int | None = None,
        decoder_dim: int = 1024,
        decoder_rates: Sequence[int] = (8, 8, 4, 2),
        attn_window_size: int | None = None,
        attn_head_dim: int = 64,
        codebook_size: int = 4096,
        codebook_dim: int = 8,
        vq_strides: Sequence[int] = (4, 2, 1),
        noise: bool = True,
        depthwise: bool = True,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
    ):
        super().__init__()
        if math.prod(encoder_rates) != math.prod(decoder_rates):
            raise ValueError(
                f"SNAC: encoder_rates {list(encoder_rates)} and decoder_rates "
                f"{list(decoder_rates)} must have the same product"
            )
        latent_dim = latent_dim or encoder_dim * 2 ** len(encoder_rates)
        self.sample_rate = sample_rate
        self.channels = 1
        #: samples per latent step (the finest level's code rate)
        self.latent_hop = math.prod(encoder_rates)
        #: samples per coarse frame: one position of the tokens
        self.hop_length = self.latent_hop * vq_strides[0]
        self.latent_steps_per_frame = vq_strides[0]
        #: the encoder's input is padded to a multiple of this (as the ``snac`` package does)
        self.pad_multiple = self.latent_hop * math.lcm(vq_strides[0], attn_window_size or 1)
        self.encoder = SNACEncoder(
            encoder_dim, encoder_rates, depthwise, attn_window_size, attn_head_dim
        )
        self.quantizer = MultiRateResidualVQ(
            latent_dim, codebook_size, codebook_dim, vq_strides, commitment_weight, codebook_weight
        )
        self.decoder = SNACDecoder(
            latent_dim,
            decoder_dim,
            decoder_rates,
            noise,
            depthwise,
            attn_window_size,
            attn_head_dim,
        )
        self.apply(_zero_conv1d_bias)

    def level_frame_rates(self) -> tuple[float, ...]:
        """Code rate of every SNAC level in Hz, coarse to fine (12, 23, 47 Hz at 24 kHz)."""
        return tuple(self.sample_rate / (self.latent_hop * s) for s in self.quantizer.strides)

    def encode_latent(self, padded: Tensor) -> Tensor:
        """Hop-padded audio -> latent ``(b, d, frames * vq_strides[0])``."""
        frames = padded.shape[-1] // self.hop_length
        extra = -padded.shape[-1] % self.pad_multiple
        latent = self.encoder(F.pad(padded, (0, extra)))
        return latent[..., : frames * self.quantizer.frame_stride]

    def decode(self, tokens: Tokens | Tensor, *, seed: int | None = None) -> Tensor:
        """Codes ``(b, F, frames)`` -> audio ``(b, 1, frames * hop_length)``.

        ``seed`` fixes the decoder's noise, one draw shared by the batch (the global RNG is
        left as it was), so each item decodes as it does alone; without it the noise comes
        from the global RNG, as in SNAC. With ``tokens.lengths``, items are decoded once per
        distinct length on their valid frames only (zeros past them), so the batch's padding
        never reaches an item's last samples.
        """
        with self._shared_noise(seed):
            return super().decode(tokens)

    @contextlib.contextmanager
    def _shared_noise(self, seed: int | None) -> Iterator[None]:
        """Within it, every decoder pass draws its noise from a CPU generator reseeded with
        ``seed`` at the pass's start (each distinct length's pass alike)."""
        if seed is None:
            yield
            return
        generator = torch.Generator()
        blocks = [m for m in self.decoder.modules() if isinstance(m, NoiseBlock)]

        def reseed(module: nn.Module, args: tuple[Any, ...]) -> None:
            generator.manual_seed(seed)

        hook = self.decoder.register_forward_pre_hook(reseed)
        for block in blocks:
            block.generator = generator
        try:
            yield
        finally:
            hook.remove()
            for block in blocks:
                block.generator = None

    def codes_to_levels(self, tokens: Tokens | Tensor) -> list[Tensor]:
        """Codes ``(b, F, frames)`` -> the ``snac`` package's list of per-level codes
        ``[(b, frames * vq_strides[0] / vq_strides[i])]``, coarse to fine."""
        return self.quantizer.frames_to_levels(self.codes_of(tokens).movedim(1, -1))

    def levels_to_tokens(self, levels: Sequence[Tensor], lengths: Tensor | None = None) -> Tokens:
        """The ``snac`` package's per-level codes -> :class:`Tokens` (``lengths`` in frames)."""
        codes = self.quantizer.levels_to_frames([c.long() for c in levels]).movedim(-1, 1)
        return to_tokens(codes, self.spec, lengths)


def _zero_conv1d_bias(module: nn.Module) -> None:
    """DAC's initialisation as it takes effect: DAC re-initialises ``Conv1d`` weights and
    zeroes their biases, but under weight norm the weight is recomputed from ``g`` and ``v``
    at every call, so only the zero biases remain. Without them the latent carries a large
    constant offset at initialisation and every position picks the same code."""
    if isinstance(module, nn.Conv1d) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- importer


def convert_snac_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``snac`` package state dict (``pytorch_model.bin`` of the official checkpoints, or
    ``snac.SNAC(...).state_dict()``) -> :class:`SNAC`'s.

    Names match by construction; this drops the rotary-frequency buffers
    (``*.rel_pos.inv_freq``, recomputed here) and renames old-style weight norm
    (``weight_g`` / ``weight_v``, as in checkpoints saved before torch's parametrization) to
    ``parametrizations.weight.original0/1``.
    """
    return {
        rename_weight_norm(key): value
        for key, value in state_dict.items()
        if not key.endswith(".rel_pos.inv_freq")
    }


# --------------------------------------------------------------------------- registry

_PAPER = "https://arxiv.org/abs/2410.14411 (SNAC) + https://arxiv.org/abs/2306.06546 (DAC)"
_MUSIC: dict[str, Any] = {
    "encoder_dim": 64,
    "encoder_rates": [2, 3, 8, 8],
    "decoder_dim": 1536,
    "decoder_rates": [8, 8, 3, 2],
    "attn_window_size": 32,
    "attn_head_dim": 64,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [8, 4, 2, 1],
    "noise": True,
    "depthwise": True,
}
_TINY: dict[str, Any] = {
    "encoder_dim": 4,
    "encoder_rates": [2, 2],
    "decoder_dim": 16,
    "decoder_rates": [2, 2],
    "attn_window_size": 4,  # the tiny variants all run the attention code path
    "attn_head_dim": 8,
    "codebook_size": 32,
    "codebook_dim": 4,
    "vq_strides": [2, 1],
}

register(
    "snac_24khz",
    modality="audio",
    description="SNAC speech codec: 3 VQ levels of 4096 codes at 12/23/47 Hz, 24 kHz mono "
    "(0.98 kbps); codes grouped 7 per 85 ms frame",
    paper=_PAPER,
    default_config={
        "sample_rate": 24000,
        "encoder_dim": 48,
        "encoder_rates": [2, 4, 8, 8],
        "decoder_dim": 1024,
        "decoder_rates": [8, 8, 4, 2],
        "attn_window_size": None,
        "attn_head_dim": 64,
        "codebook_size": 4096,
        "codebook_dim": 8,
        "vq_strides": [4, 2, 1],
        "noise": True,
        "depthwise": True,
    },
    tiny_config=_TINY,
    builder=SNAC,
)

register(
    "snac_32khz",
    modality="audio",
    description="SNAC music / sound codec: 4 VQ levels of 4096 codes at 10/21/42/83 Hz, "
    "32 kHz mono (1.9 kbps); codes grouped 15 per 96 ms frame",
    paper=_PAPER,
    default_config={"sample_rate": 32000, **_MUSIC},
    tiny_config=_TINY,
    builder=SNAC,
)

register(
    "snac_44khz",
    modality="audio",
    description="SNAC music / sound codec: 4 VQ levels of 4096 codes at 14/29/57/115 Hz, "
    "44.1 kHz mono (2.6 kbps); codes grouped 15 per 70 ms frame",
    paper=_PAPER,
    default_config={"sample_rate": 44100, **_MUSIC},
    tiny_config=_TINY,
    builder=SNAC,
)

__all__ = [
    "SNAC",
    "MultiRateResidualVQ",
    "StridedFactorizedVQ",
    "convert_snac_state_dict",
]
