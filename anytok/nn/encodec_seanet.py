"""EnCodec's SEANet layers exactly as published (Défossez et al. 2022,
https://arxiv.org/abs/2210.13438; reference code https://github.com/facebookresearch/encodec),
for the models built on them and for importing their weights: EnCodec itself
(:mod:`anytok.codecs.audio.encodec`), WavTokenizer's encoder
(:mod:`anytok.codecs.audio.wavtokenizer`) and Vocos's EnCodec features.

It differs from :class:`anytok.nn.seanet.SEANetEncoder` where official weights care:
residual blocks may have a 1x1-conv shortcut (``true_skip=False``, EnCodec's default), every
conv uses EnCodec's padding (reflect by default, inputs shorter than the padding handled as
EnCodec does) and may be followed by a GroupNorm over time (``norm="time_group_norm"``).
Module nesting mirrors EnCodec's, so a state dict maps by renaming alone (see
:func:`convert_encodec_seanet_keys`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from anytok.nn.conv import Conv1d, ConvTranspose1d
from anytok.nn.seanet import SequenceLSTM

#: The normalisations of EnCodec's convs.
NORMS = ("weight_norm", "time_group_norm", "none")


def check_norm(norm: str) -> None:
    """Raise unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"EnCodec: norm must be one of {NORMS}, got {norm!r}")


class EncodecConv1d(nn.Module):
    """EnCodec's ``SConv1d``: a causal or centred :class:`~anytok.nn.conv.Conv1d` (weight
    norm or none) with the extra right padding that completes the last stride window and
    EnCodec's reflect padding of inputs shorter than the padding, then a normalisation
    (GroupNorm with one group over channels and time for ``"time_group_norm"``).
    ``(b, c_in, t) -> (b, c_out, ceil(t / stride))``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        causal: bool = False,
        norm: str = "weight_norm",
        pad_mode: str = "reflect",
    ):
        super().__init__()
        check_norm(norm)
        self.conv = Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            dilation=dilation,
            causal=causal,
            use_weight_norm=norm == "weight_norm",
            pad_mode=pad_mode,
            short_input="extend",  # EnCodec's pad1d: reflect short inputs after zero-extending
        )
        self.norm: nn.Module = (
            nn.GroupNorm(1, out_channels) if norm == "time_group_norm" else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class EncodecConvTranspose1d(nn.Module):
    """EnCodec's ``SConvTranspose1d``: upsample by ``stride`` (output ``t * stride``); the
    normalisation, if any, sees the untrimmed output as in EnCodec."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        *,
        causal: bool = False,
        norm: str = "weight_norm",
    ):
        super().__init__()
        check_norm(norm)
        self.convtr = ConvTranspose1d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            causal=causal,
            use_weight_norm=norm == "weight_norm",
        )
        self.norm: nn.Module | None = (
            nn.GroupNorm(1, out_channels) if norm == "time_group_norm" else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is None:
            return self.convtr(x)  # streams when causal
        return self.convtr.trim_output(self.norm(self.convtr.conv(x)))


class EncodecResnetBlock(nn.Module):
    """SEANet residual block: ELU, conv (kernel, dilation) to ``dim / compress``, ELU, 1x1
    conv back, plus a shortcut (identity with ``true_skip``, else a 1x1 conv).
    ``(b, dim, t) -> (b, dim, t)``."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        dilation: int = 1,
        compress: int = 2,
        true_skip: bool = False,
        causal: bool = False,
        norm: str = "weight_norm",
        pad_mode: str = "reflect",
    ):
        super().__init__()
        hidden = dim // compress
        conv = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        self.block = nn.Sequential(
            nn.ELU(),
            EncodecConv1d(dim, hidden, kernel_size, dilation=dilation, **conv),
            nn.ELU(),
            EncodecConv1d(hidden, dim, 1, **conv),
        )
        self.shortcut: nn.Module = (
            nn.Identity() if true_skip else EncodecConv1d(dim, dim, 1, **conv)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)


class _EncodecSEANet(nn.Module):
    """What EnCodec's ``SEANetEncoder`` and ``SEANetDecoder`` share: their arguments and the
    layers they are made of; :attr:`decoder` says which of the two mirror images is built.

    Args:
        channels: audio channels.
        dimension: latent channels.
        n_filters: channels next to the waveform, doubled at every downsampling (the
            decoder starts at ``n_filters * 2 ** len(ratios)`` and halves them).
        ratios: resampling strides **in the order they are applied** (default: EnCodec's
            ``(8, 5, 4, 2)`` for the decoder, reversed for the encoder). EnCodec's configs
            list them in decoder order for both: EnCodec ``[8, 5, 4, 2]`` is the encoder's
            ``(2, 4, 5, 8)`` here.
        n_residual_layers: residual blocks per stride (dilations ``dilation_base ** j``).
        kernel_size / last_kernel_size / residual_kernel_size: conv kernels.
        dilation_base: dilation growth of successive residual blocks.
        compress: channel reduction inside residual blocks.
        true_skip: identity shortcuts (else 1x1 convs, EnCodec's default).
        lstm_layers: LSTM layers at the latent end (0: none).
        causal: causal padding (streamable) or centred.
        norm: ``"weight_norm"``, ``"time_group_norm"`` or ``"none"`` (every conv).
        pad_mode: padding of every conv (EnCodec: ``"reflect"``).
    """

    decoder: bool

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        ratios: Sequence[int] | None = None,
        n_residual_layers: int = 1,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        compress: int = 2,
        true_skip: bool = False,
        lstm_layers: int = 2,
        causal: bool = False,
        norm: str = "weight_norm",
        pad_mode: str = "reflect",
    ):
        super().__init__()
        if ratios is None:
            ratios = (8, 5, 4, 2) if self.decoder else (2, 4, 5, 8)
        self.hop_length = math.prod(ratios)
        conv = dict(causal=causal, norm=norm, pad_mode=pad_mode)

        def resnet_blocks(width: int) -> list[nn.Module]:
            return [
                EncodecResnetBlock(
                    width, residual_kernel_size, dilation_base**j, compress, true_skip, **conv
                )
                for j in range(n_residual_layers)
            ]

        bottleneck = n_filters * 2 ** len(ratios)
        lstm = [SequenceLSTM(bottleneck, lstm_layers)] if lstm_layers else []
        if self.decoder:
            width = bottleneck
            layers: list[nn.Module] = [EncodecConv1d(dimension, width, kernel_size, **conv)]
            layers += lstm
            for ratio in ratios:
                up = EncodecConvTranspose1d(
                    width, width // 2, 2 * ratio, ratio, causal=causal, norm=norm
                )
                width //= 2
                layers += [nn.ELU(), up, *resnet_blocks(width)]
            out_channels = channels
        else:
            width = n_filters
            layers = [EncodecConv1d(channels, width, kernel_size, **conv)]
            for ratio in ratios:
                down = EncodecConv1d(width, 2 * width, 2 * ratio, ratio, **conv)
                layers += [*resnet_blocks(width), nn.ELU(), down]
                width *= 2
            layers += lstm
            out_channels = dimension
        layers += [nn.ELU(), EncodecConv1d(width, out_channels, last_kernel_size, **conv)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class EncodecSEANetEncoder(_EncodecSEANet):
    """EnCodec's ``SEANetEncoder``: waveform ``(b, channels, samples)`` -> latent
    ``(b, dimension, ceil(samples / prod(ratios)))``. Residual blocks then a strided conv per
    stride, the LSTM last; arguments as in :class:`_EncodecSEANet` (``ratios`` default
    ``(2, 4, 5, 8)``, the order applied)."""

    decoder = False


class EncodecSEANetDecoder(_EncodecSEANet):
    """EnCodec's ``SEANetDecoder`` (no final activation, as in both published EnCodec
    models): latent ``(b, dimension, frames)`` -> waveform ``(b, channels, frames * hop)``.
    The LSTM first, then a transposed conv and residual blocks per stride; arguments as in
    :class:`_EncodecSEANet` (``ratios`` default ``(8, 5, 4, 2)``, EnCodec's order)."""

    decoder = True


def convert_encodec_seanet_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename EnCodec ``SEANetEncoder`` / ``SEANetDecoder`` keys to
    :class:`EncodecSEANetEncoder` / :class:`EncodecSEANetDecoder` keys.

    ``SConv1d``'s ``conv.conv`` / ``conv.norm`` -> ``conv.conv`` / ``norm``,
    ``SConvTranspose1d``'s ``convtr.convtr`` / ``convtr.norm`` -> ``convtr.conv`` / ``norm``,
    and old-style weight norm (``weight_g`` / ``weight_v``) -> torch's parametrization
    (``parametrizations.weight.original0/1``; already-parametrized keys are kept). Other keys
    (LSTMs, or whatever surrounds the SEANet in a larger state dict) pass through, so a whole
    model's state dict can go through at once.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.replace(".conv.norm.", ".norm.").replace(".convtr.norm.", ".norm.")
        key = key.replace(".convtr.convtr.", ".convtr.conv.")
        out[rename_weight_norm(key)] = value
    return out


def convert_transformers_seanet_keys(
    state_dict: Mapping[str, Tensor], prefix: str, target: str, *, decoder: bool
) -> dict[str, Tensor]:
    """Rename a ``transformers`` SEANet stack (EnCodec's, Mimi's, WavTokenizer's encoder) to
    :class:`EncodecSEANetEncoder` / :class:`EncodecSEANetDecoder` keys.

    Only keys starting with ``prefix`` (e.g. ``"encoder.layers."``) are read; they come out
    under ``target`` (e.g. ``"encoder.model."``):

    - ``i.[block.j. | shortcut.]conv.*`` -> ``i.[...]conv.conv.*`` (a conv with its padding
      wrapper), ``i.[...]norm.*`` -> ``i.[...]norm.*`` (GroupNorm over time);
    - in a decoder, every top-level conv between the first and the last is a transposed conv:
      ``i.conv.*`` -> ``i.convtr.conv.*``;
    - ``i.lstm.*`` unchanged; old-style weight norm becomes torch's parametrization.
    """
    stack = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    top = sorted({int(m.group(1)) for k in stack if (m := re.match(r"(\d+)\.(conv|norm)\.", k))})
    out = {}
    for key, value in stack.items():
        match = re.fullmatch(r"(\d+)\.((?:block\.\d+\.|shortcut\.)?)(conv|norm)\.(.+)", key)
        if match:
            index, inner, kind, rest = match.groups()
            transposed = decoder and not inner and int(index) not in (top[0], top[-1])
            wrapper = "convtr" if transposed else "conv"
            key = (
                f"{index}.{inner}{wrapper}.conv.{rest}"
                if kind == "conv"
                else f"{index}.{inner}norm.{rest}"
            )
        elif not re.fullmatch(r"\d+\.lstm\..+", key):
            raise KeyError(f"convert_transformers_seanet_keys: unexpected key {prefix + key!r}")
        out[rename_weight_norm(target + key)] = value
    return out


def rename_weight_norm(key: str) -> str:
    """Old-style weight-norm key -> torch parametrization key (others unchanged):
    ``x.weight_g`` -> ``x.parametrizations.weight.original0``, ``weight_v`` -> ``original1``."""
    if key.endswith(".weight_g"):
        return key[: -len("weight_g")] + "parametrizations.weight.original0"
    if key.endswith(".weight_v"):
        return key[: -len("weight_v")] + "parametrizations.weight.original1"
    return key


__all__ = [
    "NORMS",
    "EncodecConv1d",
    "EncodecConvTranspose1d",
    "EncodecResnetBlock",
    "EncodecSEANetDecoder",
    "EncodecSEANetEncoder",
    "check_norm",
    "convert_encodec_seanet_keys",
    "convert_transformers_seanet_keys",
    "rename_weight_norm",
]
