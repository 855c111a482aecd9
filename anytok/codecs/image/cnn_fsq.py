"""CNN-FSQ: a VQGAN-style convolutional autoencoder with FSQ codes on a 2D grid.

The image baseline of anytok: taming-transformers' encoder/decoder (Esser et al. 2021,
https://arxiv.org/abs/2012.09841) with finite scalar quantization (Mentzer et al. 2023,
https://arxiv.org/abs/2309.15505): 16x downsampling, 256 tokens for a 256x256 image.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anytok.codecs.base import (
    ImageTokenizer,
    TokenizerOutput,
    build_quantizer,
    decode_codes,
    quantize_channel_first,
    to_tokens,
)
from anytok.nn.resnet2d import Decoder2d, Encoder2d
from anytok.registry import register
from anytok.tokens import Tokens


class CNNFSQ(ImageTokenizer):
    """Images ``(b, 3, H, W)`` -> codes ``(b, levels, H / f, W / f)``, ``f = 2^(len(mult) - 1)``.

    Args:
        resolution: training resolution ``(H, W)`` (any multiple of the factor encodes).
        channels: base width of the CNN.
        channel_multipliers: width multiplier per level; all but the last halve the size.
        num_res_blocks: residual blocks per level.
        latent_dim: channels of the latent fed to the quantizer.
        attention: self-attention at the lowest resolution.
        quantizer: ``{"name": ..., **kwargs}`` for :func:`anytok.quantizers.build`.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        channels: int = 128,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 256,
        attention: bool = True,
        quantizer: dict[str, Any] | None = None,
    ):
        super().__init__()
        quantizer = quantizer or {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
        self.resolution = (int(resolution[0]), int(resolution[1]))
        layer_args = dict(
            channels=channels,
            channel_multipliers=tuple(channel_multipliers),
            num_res_blocks=num_res_blocks,
            z_channels=latent_dim,
            attention=attention,
        )
        self.encoder = Encoder2d(in_channels=3, **layer_args)
        self.quantizer = build_quantizer(quantizer, latent_dim)
        self.decoder = Decoder2d(out_channels=3, **layer_args)
        self.downsample_factor = self.encoder.downsample_factor

    def forward(self, image: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``image (b, 3, H, W)`` -> reconstruction of the same shape."""
        image = self.check_input(image)
        latent = self.encoder(image)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        return TokenizerOutput(
            reconstruction=self.decoder(quantized),
            tokens=to_tokens(out.codes, self.spec, None),
            losses={"quantizer": out.loss},
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, image: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``image (b, 3, H, W)`` in [-1, 1] -> codes ``(b, levels, H/f, W/f)``."""
        image = self.check_input(image)
        codes = self.quantizer.encode(self.encoder(image).movedim(1, -1)).movedim(-1, 1)
        return to_tokens(codes, self.spec, None)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, levels, h, w)`` -> images ``(b, 3, h * f, w * f)``."""
        return self.decode_latent(decode_codes(self.quantizer, self.codes_of(tokens)))

    def decode_latent(self, quantized: Tensor) -> Tensor:
        """A (quantized or continuous) latent ``(b, latent_dim, h, w)`` -> images; lets a
        1D tokenizer decode through this model as its proxy (TiTok's two-stage training)."""
        return self.decoder(quantized)


register(
    "cnn_fsq_256",
    modality="image",
    description="VQGAN-style CNN + FSQ (64,000 codes), 16x down: 256 tokens per 256x256 image",
    paper="https://arxiv.org/abs/2012.09841 (VQGAN) + https://arxiv.org/abs/2309.15505 (FSQ)",
    default_config={
        "resolution": [256, 256],
        "channels": 128,
        "channel_multipliers": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "latent_dim": 256,
        "attention": True,
        "quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
    },
    tiny_config={
        "resolution": [32, 32],
        "channels": 8,
        "channel_multipliers": [1, 2, 2],
        "num_res_blocks": 1,
        "latent_dim": 8,
        "attention": True,
        "quantizer": {"name": "fsq", "levels": [5, 5, 5]},
    },
    builder=CNNFSQ,
)
