"""WeTok: group-wise lookup-free quantization with a generative (noise-conditioned) decoder.

Zhuang et al. 2025, "WeTok: Powerful Discrete Tokenization for High-Fidelity Visual
Reconstruction", https://arxiv.org/abs/2508.05599 (code: https://github.com/zhuangshaobin/WeTok).

* **Group-wise lookup-free quantization (GQ)**: the encoder's ``latent_dim`` channels become
  ``codebook_dim`` sign bits split into ``num_groups`` groups, each an LFQ code of its own with
  an exact entropy loss over its ``2^(bits / groups)`` sub-codes
  (:class:`anytok.quantizers.GroupLFQ`). WeTok's ImageNet f16 model: 32 bits in 4 groups of 8
  (4 codes of 256 values per position, a 2^32 joint codebook), 256 positions at 256x256.
* **Generative decoder (GD)**: the decoder sees the quantized latent *and* a random noise
  input, so it can synthesise plausible detail that the codes do not pin down and is trained as
  a conditional GAN generator. As in WeTok's ``GANDecoder`` the noise is concatenated to the
  latent at the input; in addition, StyleGAN-style per-pixel noise with a learned per-channel
  strength (Karras et al. 2019, https://arxiv.org/abs/1812.04948) is injected at every
  resolution (strengths start at zero, so training decides how much detail comes from noise).

Noise is drawn from the global RNG in training and from a CPU generator seeded with
``noise_seed`` otherwise, one draw shared by the batch, so evaluation decodes are deterministic
and an item decodes the same in any batch and on any device;
``decode(tokens, seed=..., noise_scale=...)`` picks another sample or turns the noise off
(``noise_scale=0``).

Axis legend: ``b`` batch, ``c`` channels, ``h, w`` latent grid, ``H, W`` image, ``g`` groups.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
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


class NoiseInjection(nn.Module):
    """StyleGAN's per-pixel noise: ``x + strength[c] * noise``; ``x (b, c, h, w)``, ``noise
    (b, 1, h, w)`` shared by all channels, ``strength`` learned and zero at initialisation."""

    def __init__(self, channels: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.strength.view(1, -1, 1, 1) * noise.to(x.dtype)


class GenerativeDecoder2d(Decoder2d):
    """:class:`~anytok.nn.resnet2d.Decoder2d` with noise inputs (WeTok's generative decoder).

    ``latent (b, z_channels, h, w)`` and a list of noise tensors (see :meth:`noise_shapes`):
    ``(b, noise_channels, h, w)`` concatenated to the latent, then ``(b, 1, h * 2^k, w * 2^k)``
    injected after the first convolution of each resolution ``k`` (when ``noise_injection``).
    Output ``(b, out_channels, h * 2^(n-1), w * 2^(n-1))``.
    """

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        attention: bool = True,
        noise_channels: int = 32,
        noise_injection: bool = True,
    ):
        if noise_channels < 0:
            raise ValueError(
                f"GenerativeDecoder2d: noise_channels must be >= 0, got {noise_channels}"
            )
        super().__init__(
            out_channels=out_channels,
            channels=channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            z_channels=z_channels + noise_channels,
            attention=attention,
        )
        self.noise_channels = noise_channels
        self.upsample_factor = 2 ** (len(channel_multipliers) - 1)
        # Inject after the input convolution and after the convolution that follows each
        # upsampling: one noise map per resolution, lowest first.
        layers = list(self.model)
        points = [0] + [i + 1 for i, layer in enumerate(layers) if isinstance(layer, nn.Upsample)]
        self.injections = nn.ModuleDict(
            {str(i): NoiseInjection(layers[i].out_channels) for i in points}
            if noise_injection
            else {}
        )

    def noise_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
        """Shapes of the noise tensors :meth:`forward` takes for a ``(batch, ., height, width)``
        latent: the concatenated input noise (if any), then one map per injection point."""
        shapes: list[tuple[int, ...]] = []
        if self.noise_channels:
            shapes.append((batch, self.noise_channels, height, width))
        for level in range(len(self.injections)):
            shapes.append((batch, 1, height * 2**level, width * 2**level))
        return shapes

    def forward(self, latent: Tensor, noise: list[Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """``latent (b, z, h, w)`` and ``noise`` (one tensor per :meth:`noise_shapes` entry;
        ``None``: zeros, the noise-free decode) -> image ``(b, out, h * f, w * f)``."""
        b, _, h, w = latent.shape
        shapes = self.noise_shapes(b, h, w)
        if noise is None:
            noise = [latent.new_zeros(shape) for shape in shapes]
        if len(noise) != len(shapes) or any(
            tuple(n.shape) != s for n, s in zip(noise, shapes, strict=True)
        ):
            raise ValueError(
                f"GenerativeDecoder2d: noise must be tensors of shapes {shapes}, "
                f"got {[tuple(n.shape) for n in noise]}"
            )
        maps = iter(noise)
        x = (
            torch.cat([latent, next(maps).to(latent.dtype)], dim=1)
            if self.noise_channels
            else latent
        )
        for index, layer in enumerate(self.model):
            x = layer(x)
            if str(index) in self.injections:
                x = self.injections[str(index)](x, next(maps))
        return x


class GroupLFQTokenizer(ImageTokenizer):
    """WeTok: images ``(b, 3, H, W)`` -> codes ``(b, groups, H / f, W / f)``.

    Args:
        resolution: training resolution ``(H, W)``; any multiple of the factor encodes.
        channels: base width of the encoder and decoder CNNs.
        channel_multipliers: width multiplier per level; all but the last halve the size.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        latent_dim: channels of the latent fed to the quantizer.
        attention: self-attention at the lowest resolution.
        quantizer: ``{"name": ..., **kwargs}``; default group-wise LFQ, 32 bits in 4 groups.
            Any quantizer of :mod:`anytok.quantizers` plugs in by name.
        noise_channels: noise channels concatenated to the latent at the decoder input
            (WeTok: as many as the latent); 0 disables it.
        noise_injection: StyleGAN per-pixel noise at every decoder resolution.
        noise_seed: seed of the noise outside training (deterministic evaluation decodes).
        semantic_teacher, semantic_weight, latent_perturbation: the seed papers' training
            options (:class:`anytok.regularizers.TrainingOptions`): align the encoder latent to
            a frozen local vision model (loss ``"semantic"``); replace a fraction of codes by
            random ones before decoding in training, so the decoder tolerates a generator's
            mistakes ("Robust Latent Matters", https://arxiv.org/abs/2503.08354).
        train_decoder_only: freeze the encoder and quantizer (decoder post-training, "Image
            Tokenizer Needs Post-Training", https://arxiv.org/abs/2509.12474).
    """

    resize = "native"

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        channels: int = 128,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        attention: bool = False,
        quantizer: dict[str, Any] | None = None,
        noise_channels: int | None = None,
        noise_injection: bool = True,
        noise_seed: int = 0,
        semantic_teacher: str | None = None,
        semantic_weight: float = 0.5,
        latent_perturbation: float = 0.0,
        train_decoder_only: bool = False,
    ):
        super().__init__()
        quantizer = quantizer or {"name": "group_lfq", "codebook_dim": 32, "num_groups": 4}
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
        self.decoder = GenerativeDecoder2d(
            out_channels=3,
            noise_channels=latent_dim if noise_channels is None else noise_channels,
            noise_injection=noise_injection,
            **layer_args,
        )
        self.downsample_factor = self.encoder.downsample_factor
        self.noise_seed = int(noise_seed)
        self.options = TrainingOptions(
            latent_dim, semantic_teacher, semantic_weight, latent_perturbation, modality="image"
        )
        self.train_decoder_only = bool(train_decoder_only)
        if self.train_decoder_only:
            freeze(self.encoder, self.quantizer)

    def train(self, mode: bool = True) -> GroupLFQTokenizer:
        """As ``nn.Module.train``; with ``train_decoder_only`` the encoder and quantizer stay in
        eval mode (no quantizer losses, frozen statistics)."""
        super().train(mode)
        if self.train_decoder_only:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    # ------------------------------------------------------------------ noise

    def sample_noise(
        self,
        latent: Tensor,
        *,
        seed: int | None = None,
        noise_scale: float = 1.0,
    ) -> list[Tensor]:
        """Decoder noise for ``latent (b, c, h, w)``: from the global RNG when ``seed`` is
        None; else one draw shared by every item, from a CPU generator seeded with it, so an
        item decodes the same in any batch and on any device; multiplied by
        ``noise_scale``."""
        b, _, h, w = latent.shape
        shapes = self.decoder.noise_shapes(b, h, w)
        if seed is None:
            drawn = [torch.randn(shape, device=latent.device) for shape in shapes]
        else:
            generator = torch.Generator().manual_seed(int(seed))
            drawn = [
                torch.randn(shape[1:], generator=generator).to(latent.device).expand(shape)
                for shape in shapes
            ]
        return [noise.to(latent.dtype) * noise_scale for noise in drawn]

    def _decode_latent(self, quantized: Tensor, seed: int | None, noise_scale: float) -> Tensor:
        noise = self.sample_noise(quantized, seed=seed, noise_scale=noise_scale)
        return self.decoder(quantized, noise)

    # ------------------------------------------------------------------ contract

    def _encode_latent(self, image: Tensor) -> Tensor:
        if self.train_decoder_only:
            with torch.no_grad():
                return self.encoder(image)
        return self.encoder(image)

    def forward(self, image: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``image (b, 3, H, W)`` -> reconstruction of the same shape.

        Losses: ``quantizer`` (entropy + commitment), ``semantic`` when a teacher is set.
        """
        image = self.check_input(image)
        latent = self._encode_latent(image)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        if self.train_decoder_only:
            quantized = quantized.detach()
        quantized = self.options.perturb(self.quantizer, quantized, out.codes)
        seed = None if self.training else self.noise_seed
        losses = {"quantizer": out.loss}
        student = rearrange(latent, "b c h w -> b (h w) c")
        losses.update(self.options.losses(student, tuple(latent.shape[-2:]), image))
        return TokenizerOutput(
            reconstruction=self._decode_latent(quantized, seed, 1.0),
            tokens=to_tokens(out.codes, self.spec, None),
            losses=losses,
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, image: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``image (b, 3, H, W)`` in [-1, 1] -> codes ``(b, groups, H/f, W/f)``."""
        image = self.check_input(image)
        codes = self.quantizer.encode(self.encoder(image).movedim(1, -1)).movedim(-1, 1)
        return to_tokens(codes, self.spec, None)

    def decode(
        self,
        tokens: Tokens | Tensor,
        *,
        seed: int | None = None,
        noise_scale: float = 1.0,
    ) -> Tensor:
        """Codes ``(b, groups, h, w)`` -> images ``(b, 3, h * f, w * f)``.

        Args:
            seed: noise seed (default the constructor's ``noise_seed``): the same seed gives
                the same image, another seed another plausible detail.
            noise_scale: multiplies the noise; 0 gives the noise-free decode.
        """
        if not math.isfinite(noise_scale) or noise_scale < 0:
            raise ValueError(f"decode: noise_scale must be a finite number >= 0, got {noise_scale}")
        quantized = decode_codes(self.quantizer, self.codes_of(tokens))
        return self._decode_latent(
            quantized, self.noise_seed if seed is None else seed, noise_scale
        )


_WETOK_F16 = {
    # WeTok's ImageNet f16 model (configs/WeToK/Inference/ImageNet_downsample16_imagenet.yaml):
    # ch 256, ch_mult [1, 1, 2, 2, 4], 4 residual blocks, 32 latent channels = 32 bits in 4
    # groups of 8 (n_embed 256, num_codebooks 4).
    "resolution": [256, 256],
    "channels": 256,
    "channel_multipliers": [1, 1, 2, 2, 4],
    "num_res_blocks": 4,
    "latent_dim": 32,
    "attention": False,
    "quantizer": {"name": "group_lfq", "codebook_dim": 32, "num_groups": 4},
    "noise_channels": 32,
    "noise_injection": True,
    "noise_seed": 0,
}

register(
    "group_lfq",
    modality="image",
    description=(
        "WeTok: CNN + group-wise LFQ (32 bits in 4 groups of 256 codes), 16x down, "
        "noise-conditioned generative decoder"
    ),
    paper="https://arxiv.org/abs/2508.05599 (WeTok)",
    default_config=_WETOK_F16,
    tiny_config={
        "resolution": [32, 32],
        "channels": 8,
        "channel_multipliers": [1, 2, 2],
        "num_res_blocks": 1,
        "latent_dim": 8,
        "attention": False,
        "quantizer": {"name": "group_lfq", "codebook_dim": 8, "num_groups": 2},
        "noise_channels": 4,
    },
    builder=GroupLFQTokenizer,
)
