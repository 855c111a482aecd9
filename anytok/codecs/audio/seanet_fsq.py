"""SEANet-FSQ: a causal SEANet autoencoder with residual FSQ codes.

The audio baseline of anytok: EnCodec's convolutional encoder/decoder (Défossez et al. 2022,
https://arxiv.org/abs/2210.13438) with finite scalar quantization (Mentzer et al. 2023,
https://arxiv.org/abs/2309.15505) in place of the learned RVQ codebooks, so it has no
codebook collapse to manage. Causal and streamable: right padding never changes earlier
tokens.
"""

from __future__ import annotations

import math
from typing import Any

from anytok.codecs.base import (
    AudioTokenizer,
    build_quantizer,
)
from anytok.nn.seanet import SEANetDecoder, SEANetEncoder
from anytok.registry import register


class SEANetFSQ(AudioTokenizer):
    """Waveform ``(b, channels, samples)`` -> codes ``(b, levels, ceil(samples / hop))``.

    Args:
        sample_rate: input sample rate in Hz.
        channels: audio channels.
        ratios: encoder strides (their product is the hop length).
        n_filters: first conv width (doubles per stride).
        dimension: latent channels.
        lstm_layers: LSTM layers at the bottleneck.
        causal: causal convs (streamable) or centred.
        quantizer: ``{"name": ..., **kwargs}`` for :func:`anytok.quantizers.build`.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        channels: int = 1,
        ratios: tuple[int, ...] | list[int] = (2, 4, 5, 8),
        n_filters: int = 32,
        dimension: int = 128,
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        causal: bool = True,
        quantizer: dict[str, Any] | None = None,
    ):
        super().__init__()
        quantizer = quantizer or {"name": "rfsq", "levels": [8, 5, 5, 5], "num_quantizers": 4}
        ratios = tuple(ratios)
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(ratios)
        self.causal = causal
        layer_args = dict(
            channels=channels,
            dimension=dimension,
            n_filters=n_filters,
            ratios=ratios,
            n_residual_layers=n_residual_layers,
            lstm_layers=lstm_layers,
            causal=causal,
        )
        self.encoder = SEANetEncoder(**layer_args)
        self.quantizer = build_quantizer(quantizer, dimension)
        self.decoder = SEANetDecoder(**layer_args)


_PAPER = (
    "https://arxiv.org/abs/2210.13438 (SEANet/EnCodec) + https://arxiv.org/abs/2309.15505 (FSQ)"
)
_TINY = {
    "ratios": [2, 4],
    "n_filters": 4,
    "dimension": 8,
    "lstm_layers": 0,
    "quantizer": {"name": "rfsq", "levels": [5, 5, 5], "num_quantizers": 2},
}

register(
    "seanet_fsq_24khz",
    modality="audio",
    description="causal SEANet + 4-stage residual FSQ, 24 kHz mono, 75 Hz x 4 levels (3 kbps)",
    paper=_PAPER,
    default_config={
        "sample_rate": 24000,
        "channels": 1,
        "ratios": [2, 4, 5, 8],
        "n_filters": 32,
        "dimension": 128,
        "lstm_layers": 2,
        "causal": True,
        "quantizer": {"name": "rfsq", "levels": [8, 5, 5, 5], "num_quantizers": 4},
    },
    tiny_config=_TINY,
    builder=SEANetFSQ,
)

register(
    "seanet_fsq_16khz",
    modality="audio",
    description="causal SEANet + single FSQ codebook (64,000 codes), 16 kHz mono, 50 Hz speech tokens",
    paper=_PAPER,
    default_config={
        "sample_rate": 16000,
        "channels": 1,
        "ratios": [2, 4, 5, 8],
        "n_filters": 32,
        "dimension": 128,
        "lstm_layers": 2,
        "causal": True,
        "quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
    },
    tiny_config=_TINY,
    builder=SEANetFSQ,
)
