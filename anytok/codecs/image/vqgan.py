"""VQGAN: a convolutional autoencoder with a vector-quantized 2D latent grid.

Taming transformers' VQGAN (Esser et al. 2021, https://arxiv.org/abs/2012.09841) at
LlamaGen's VQ-16 configuration (Sun et al. 2024, https://arxiv.org/abs/2406.06525): 16x
down, 256 tokens for a 256x256 image, a 16,384-code codebook of **8-dimensional
L2-normalised codes** (cosine look-up in a low-dimensional space, which keeps codebook usage
high), ``quant_conv`` / ``post_quant_conv`` around the quantizer. Any quantizer of the package
plugs in by name. Fully convolutional: any multiple of 16 encodes at its native size
(``resize = "native"``).

Training options of the seed papers (:class:`anytok.regularizers.TrainingOptions`):
``latent_perturbation`` (random code replacement before decoding), ``semantic_teacher``
(align encoder features to a frozen local vision model), ``train_decoder_only`` (decoder
post-training with the encoder and quantizer frozen). The PatchGAN discriminator and the
perceptual loss live in the training loop; ``recipes/image/vqgan.yaml`` uses them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

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
from anytok.regularizers import TrainingOptions, freeze
from anytok.tokens import Tokens


class VQGAN(ImageTokenizer):
    """Images ``(b, 3, H, W)`` -> codes ``(b, levels, H / f, W / f)`` -> images.

    Args:
        resolution: training resolution ``(H, W)``.
        channels, channel_multipliers, num_res_blocks, attention: the CNN (taming's
            ``ch``, ``ch_mult``, ``num_res_blocks``, attention in the middle block).
        level_attention: also self-attention after every residual block of the lowest
            resolution, as taming (``attn_resolutions``) and LlamaGen do (the registered
            sizes: 72 M parameters at VQ-16; off, the network had 66.5 M).
        z_channels: encoder output channels (before ``quant_conv``).
        embed_dim: quantizer input channels (after ``quant_conv``).
        quantizer: ``{"name": ..., **kwargs}`` (default: VQ 16,384 x 8-d cosine codes).
        semantic_teacher, semantic_weight, latent_perturbation, perturbation_neighbours,
            perturbation_items: see :class:`anytok.regularizers.TrainingOptions`.
        train_decoder_only: freeze encoder, ``quant_conv`` and quantizer (post-training).
    """

    resize = "native"

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        channels: int = 128,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = True,
        z_channels: int = 256,
        embed_dim: int = 8,
        quantizer: dict[str, Any] | None = None,
        semantic_teacher: str | None = None,
        semantic_weight: float = 0.5,
        latent_perturbation: float = 0.0,
        perturbation_neighbours: int = 0,
        perturbation_items: float = 1.0,
        train_decoder_only: bool = False,
        level_attention: bool = False,
    ):
        super().__init__()
        quantizer = quantizer or {
            "name": "vq",
            "codebook_size": 16384,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        }
        self.resolution = (int(resolution[0]), int(resolution[1]))
        layer_args = dict(
            channels=channels,
            channel_multipliers=tuple(channel_multipliers),
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            attention=attention,
            level_attention=level_attention,
        )
        self.encoder = Encoder2d(in_channels=3, **layer_args)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.quantizer = build_quantizer(quantizer, embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.decoder = Decoder2d(out_channels=3, **layer_args)
        self.downsample_factor = self.encoder.downsample_factor
        self.options = TrainingOptions(
            z_channels,
            semantic_teacher,
            semantic_weight,
            latent_perturbation,
            perturbation_neighbours=perturbation_neighbours,
            perturbation_items=perturbation_items,
        )
        self.train_decoder_only = train_decoder_only
        if train_decoder_only:
            freeze(self.encoder, self.quant_conv, self.quantizer)

    def train(self, mode: bool = True) -> VQGAN:
        super().train(mode)
        if self.train_decoder_only:  # frozen parts stay in eval (no codebook updates)
            for module in (self.encoder, self.quant_conv, self.quantizer):
                module.eval()
        return self

    def forward(self, image: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``image (b, 3, H, W)`` -> reconstruction of the same shape."""
        image = self.check_input(image)
        features = self.encoder(image)
        latent = self.quant_conv(features)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        quantized = self.options.perturb(self.quantizer, quantized, out.codes)
        losses = {"quantizer": out.loss}
        grid = tuple(features.shape[-2:])
        losses.update(self.options.losses(features.flatten(2).transpose(1, 2), grid, image))
        return TokenizerOutput(
            reconstruction=self.decoder(self.post_quant_conv(quantized)),
            tokens=to_tokens(out.codes, self.spec, None),
            losses=losses,
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, image: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``image (b, 3, H, W)`` in [-1, 1] -> codes ``(b, levels, H/f, W/f)``."""
        image = self.check_input(image)
        latent = self.quant_conv(self.encoder(image))
        codes = self.quantizer.encode(latent.movedim(1, -1)).movedim(-1, 1)
        return to_tokens(codes, self.spec, None)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, levels, h, w)`` -> images ``(b, 3, h * f, w * f)``."""
        return self.decode_latent(decode_codes(self.quantizer, self.codes_of(tokens)))

    def decode_latent(self, quantized: Tensor) -> Tensor:
        """A (quantized or continuous) latent ``(b, embed_dim, h, w)`` -> images (TiTok's
        proxy route)."""
        return self.decoder(self.post_quant_conv(quantized))


_TINY = {
    "resolution": [32, 32],
    "channels": 8,
    "channel_multipliers": [1, 2, 2],
    "num_res_blocks": 1,
    "attention": True,
    "level_attention": True,
    "z_channels": 8,
    "embed_dim": 4,
    "quantizer": {
        "name": "vq",
        "codebook_size": 64,
        "use_cosine_sim": True,
        "commitment_weight": 0.25,
    },
}

register(
    "vqgan",
    modality="image",
    description="VQGAN (LlamaGen VQ-16): 16x down, 256 tokens per 256x256 image, 16,384 8-d cosine codes",
    paper="https://arxiv.org/abs/2012.09841 (VQGAN) + https://arxiv.org/abs/2406.06525 (LlamaGen)",
    default_config={
        "resolution": [256, 256],
        "channels": 128,
        "channel_multipliers": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attention": True,
        "level_attention": True,
        "z_channels": 256,
        "embed_dim": 8,
        "quantizer": {
            "name": "vq",
            "codebook_size": 16384,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        },
    },
    tiny_config=_TINY,
    builder=VQGAN,
)

register(
    "vqgan_f8",
    modality="image",
    description="VQGAN (LlamaGen VQ-8): 8x down, 1024 tokens per 256x256 image, 16,384 8-d cosine codes",
    paper="https://arxiv.org/abs/2012.09841 (VQGAN) + https://arxiv.org/abs/2406.06525 (LlamaGen)",
    default_config={
        "resolution": [256, 256],
        "channels": 128,
        "channel_multipliers": [1, 2, 2, 4],
        "num_res_blocks": 2,
        "attention": True,
        "level_attention": True,
        "z_channels": 256,
        "embed_dim": 8,
        "quantizer": {
            "name": "vq",
            "codebook_size": 16384,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        },
    },
    tiny_config={**_TINY, "channel_multipliers": [1, 2]},
    builder=VQGAN,
)
