"""EnCodec's SEANet encoder exactly as published (Défossez et al. 2022,
https://arxiv.org/abs/2210.13438), for importing weights of models built on it (EnCodec,
WavTokenizer, Vocos's EnCodec features).

It differs from :class:`anytok.nn.seanet.SEANetEncoder` where official weights care:
residual blocks may have a 1x1-conv shortcut (``true_skip=False``, EnCodec's default) and
every conv uses EnCodec's padding (reflect by default, inputs shorter than the padding
handled as EnCodec does). Module nesting mirrors EnCodec's, so a state dict maps by renaming
alone (see :func:`convert_encodec_seanet_keys`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from anytok.nn.conv import Conv1d
from anytok.nn.seanet import SequenceLSTM


def encodec_conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    causal: bool = False,
    pad_mode: str = "reflect",
) -> Conv1d:
    """EnCodec's ``SConv1d``: a weight-normalised :class:`~anytok.nn.conv.Conv1d` with causal
    or centred padding, the extra right padding that completes the last stride window, and
    EnCodec's reflect padding of inputs shorter than the padding (``short_input="extend"``).
    ``(b, in_channels, t) -> (b, out_channels, ceil(t / stride))``."""
    return Conv1d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        dilation=dilation,
        causal=causal,
        pad_mode=pad_mode,
        short_input="extend",
    )


class EncodecResnetBlock(nn.Module):
    """SEANet residual block: ELU -> conv(k, dilation) to ``dim / compress`` -> ELU -> 1x1
    conv back, plus a shortcut (identity with ``true_skip``, else a 1x1 conv)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        dilation: int = 1,
        compress: int = 2,
        true_skip: bool = False,
        causal: bool = False,
        pad_mode: str = "reflect",
    ):
        super().__init__()
        hidden = dim // compress
        conv = dict(causal=causal, pad_mode=pad_mode)
        self.block = nn.Sequential(
            nn.ELU(),
            encodec_conv1d(dim, hidden, kernel_size, dilation=dilation, **conv),
            nn.ELU(),
            encodec_conv1d(hidden, dim, 1, **conv),
        )
        self.shortcut: nn.Module = (
            nn.Identity() if true_skip else encodec_conv1d(dim, dim, 1, **conv)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)


class EncodecSEANetEncoder(nn.Module):
    """EnCodec's SEANet encoder: waveform ``(b, channels, samples)`` -> latent
    ``(b, dimension, ceil(samples / prod(ratios)))``.

    Args:
        channels: audio channels.
        dimension: latent channels.
        n_filters: channels of the first conv, doubled at every downsampling.
        ratios: downsampling strides **in the order they are applied** (EnCodec's own
            configs list them in decoder order, reversed: EnCodec ``[8, 5, 4, 2]`` is
            ``(2, 4, 5, 8)`` here).
        n_residual_layers: residual blocks before each downsampling (dilations
            ``dilation_base ** j``).
        kernel_size / last_kernel_size / residual_kernel_size: conv kernels.
        dilation_base: dilation growth of successive residual blocks.
        compress: channel reduction inside residual blocks.
        true_skip: identity shortcuts (else 1x1 convs, EnCodec's default).
        lstm_layers: LSTM layers before the last conv (0: none).
        causal: causal padding (streamable) or centred.
        pad_mode: padding of every conv (EnCodec: ``"reflect"``).
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        ratios: Sequence[int] = (2, 4, 5, 8),
        n_residual_layers: int = 1,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        compress: int = 2,
        true_skip: bool = False,
        lstm_layers: int = 2,
        causal: bool = False,
        pad_mode: str = "reflect",
    ):
        super().__init__()
        self.hop_length = math.prod(ratios)
        conv = dict(causal=causal, pad_mode=pad_mode)
        width = n_filters
        layers: list[nn.Module] = [encodec_conv1d(channels, width, kernel_size, **conv)]
        for ratio in ratios:
            for j in range(n_residual_layers):
                layers.append(
                    EncodecResnetBlock(
                        width, residual_kernel_size, dilation_base**j, compress, true_skip, **conv
                    )
                )
            layers += [nn.ELU(), encodec_conv1d(width, 2 * width, 2 * ratio, ratio, **conv)]
            width *= 2
        if lstm_layers:
            layers.append(SequenceLSTM(width, lstm_layers))
        layers += [nn.ELU(), encodec_conv1d(width, dimension, last_kernel_size, **conv)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def convert_encodec_seanet_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename EnCodec ``SEANetEncoder`` keys (``model.0.conv.conv.weight_g``) to
    :class:`EncodecSEANetEncoder` keys (``model.0.conv.parametrizations.weight.original0``).

    Accepts old-style weight norm (``weight_g`` / ``weight_v``) and torch's parametrization
    (``parametrizations.weight.original0/1``); LSTM keys pass through.
    """
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.conv\.conv\.", ".conv.", key)
        out[rename_weight_norm(key)] = value
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
    "EncodecResnetBlock",
    "EncodecSEANetEncoder",
    "convert_encodec_seanet_keys",
    "encodec_conv1d",
    "rename_weight_norm",
]
