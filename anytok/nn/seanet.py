"""SEANet convolutional encoder / decoder for waveforms (as used by SoundStream and EnCodec).

Architecture after Tagliasacchi et al. 2020 (SEANet) and Défossez et al. 2022 (EnCodec,
https://arxiv.org/abs/2210.13438): a stack of residual units with dilated convolutions and
strided downsampling convolutions, optional LSTM, weight-normalised causal or centred convs.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from anytok.nn.conv import Conv1d, ConvTranspose1d


class ResidualUnit1d(nn.Module):
    """ELU -> dilated conv (channels -> channels / compress) -> ELU -> 1x1 conv, plus identity.

    ``(batch, channels, time) -> (batch, channels, time)``.
    """

    def __init__(
        self,
        channels: int,
        dilation: int,
        kernel_size: int = 3,
        compress: int = 2,
        causal: bool = True,
    ):
        super().__init__()
        hidden = channels // compress
        self.block = nn.Sequential(
            nn.ELU(),
            Conv1d(channels, hidden, kernel_size, dilation=dilation, causal=causal),
            nn.ELU(),
            Conv1d(hidden, channels, 1, causal=causal),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class SequenceLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection: ``(b, c, t) -> (b, c, t)``."""

    def __init__(self, channels: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] == 0:  # nn.LSTM refuses empty sequences
            return x
        seq = x.permute(2, 0, 1)  # (t, b, c)
        out, _ = self.lstm(seq)
        return (out + seq).permute(1, 2, 0)


class SEANetEncoder(nn.Module):
    """Waveform ``(batch, channels, samples)`` -> latent ``(batch, dimension, frames)`` with
    ``frames = ceil(samples / prod(ratios))``.

    Args:
        channels: audio channels.
        dimension: latent channels.
        n_filters: channels of the first conv; doubled at each downsampling.
        ratios: downsampling strides, applied in the given order.
        n_residual_layers: residual units before each downsampling (dilations 1, base, ...).
        lstm_layers: LSTM layers before the last conv (0 for none).
        causal: causal padding everywhere (streamable) or centred padding.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        ratios: tuple[int, ...] = (2, 4, 5, 8),
        n_residual_layers: int = 1,
        dilation_base: int = 2,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        compress: int = 2,
        lstm_layers: int = 2,
        causal: bool = True,
    ):
        super().__init__()
        self.hop_length = math.prod(ratios)
        layers: list[nn.Module] = [Conv1d(channels, n_filters, kernel_size, causal=causal)]
        width = n_filters
        for ratio in ratios:
            for j in range(n_residual_layers):
                layers.append(
                    ResidualUnit1d(width, dilation_base**j, residual_kernel_size, compress, causal)
                )
            layers += [nn.ELU(), Conv1d(width, width * 2, 2 * ratio, stride=ratio, causal=causal)]
            width *= 2
        if lstm_layers:
            layers.append(SequenceLSTM(width, lstm_layers))
        layers += [nn.ELU(), Conv1d(width, dimension, last_kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Latent ``(batch, dimension, frames)`` -> waveform ``(batch, channels, frames * hop)``.

    Mirrors :class:`SEANetEncoder` (``ratios`` given in the encoder's order).
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        ratios: tuple[int, ...] = (2, 4, 5, 8),
        n_residual_layers: int = 1,
        dilation_base: int = 2,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        compress: int = 2,
        lstm_layers: int = 2,
        causal: bool = True,
    ):
        super().__init__()
        self.hop_length = math.prod(ratios)
        width = n_filters * 2 ** len(ratios)
        layers: list[nn.Module] = [Conv1d(dimension, width, kernel_size, causal=causal)]
        if lstm_layers:
            layers.append(SequenceLSTM(width, lstm_layers))
        for ratio in reversed(ratios):
            layers += [
                nn.ELU(),
                ConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio, causal=causal),
            ]
            width //= 2
            for j in range(n_residual_layers):
                layers.append(
                    ResidualUnit1d(width, dilation_base**j, residual_kernel_size, compress, causal)
                )
        layers += [nn.ELU(), Conv1d(width, channels, last_kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)
