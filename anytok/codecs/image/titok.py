"""TiTok: an image as a short 1D sequence of tokens (32, 64 or 128 at 256x256).

Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and Generation",
https://arxiv.org/abs/2406.07550.

* **Encoder**: a ViT over 16x16 patches with ``num_tokens`` learned latent tokens appended;
  the latent tokens' outputs, projected to ``token_dim``, are quantized (VQ, 4,096 codes of
  12-d L2-normalised vectors by default; any quantizer by name) into a 1D sequence.
* **Decoder**: a ViT over one learned mask token per patch position plus the quantized
  latent tokens; the patch positions' outputs become pixels (``training_stage="single"``)
  or, in two-stage training, codes of a frozen 2D "proxy" tokenizer.
* **Two-stage training** (TiTok's recipe): stage ``"proxy"`` trains encoder, quantizer and
  decoder with cross-entropy against the proxy tokenizer's codes of the same image (no pixel
  losses); decoding goes through the proxy's decoder. Stage ``"pixel"`` freezes the encoder
  and quantizer and fine-tunes the decoder end to end through the proxy's decoder, fed with
  a continuous latent instead of argmax codes, on pixel losses. The proxy tokenizer (any
  anytok 2D tokenizer with ``decode_latent``, e.g. ``cnn_fsq_256`` or a trained ``vqgan``)
  is a frozen submodule of the TiTok model, saved with it, so either stage's checkpoint is
  self-contained.
* **Variable length** (``nested_dropout``): in training, a random prefix of the latent tokens
  is kept (the tail replaced by a learned "dropped" embedding in the decoder), so ``decode``
  accepts any prefix length; see :mod:`anytok.codecs.adaptive_length` for choosing one per
  image.

Axis legend: ``b`` batch, ``n`` patches, ``k`` latent tokens, ``d`` width.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.codecs.adaptive_length import prefix_mask, sample_prefix_lengths
from anytok.codecs.base import ImageTokenizer, TokenizerOutput, build_quantizer, to_tokens
from anytok.nn.transformer import Transformer, init_weights, patchify, unpatchify
from anytok.registry import register
from anytok.regularizers import TrainingOptions, freeze
from anytok.tokens import Tokens, TokenSpec

STAGES = ("single", "proxy", "pixel")


class TiTok(ImageTokenizer):
    """Images ``(b, 3, H, W)`` -> codes ``(b, 1, num_tokens)`` -> images.

    Args:
        resolution: image size ``(H, W)`` (a ViT with learned positions: fixed).
        patch_size: ViT patch side.
        width, depth, heads: encoder and decoder ViT size (``decoder_*`` override).
        num_tokens: latent tokens K.
        token_dim: quantizer input dimension.
        quantizer: ``{"name": ..., **kwargs}``.
        training_stage: ``"single"``, ``"proxy"`` or ``"pixel"``.
        proxy_tokenizer: registry name or checkpoint of the frozen 2D proxy (two-stage), or
            ``{"architecture": ..., "config": {...}}``: the proxy built without weights (its
            weights are TiTok's ``proxy.*``). A saved TiTok stores that form for a proxy
            loaded from a path, so its checkpoint is self-contained.
        proxy_tiny: build the proxy's tiny configuration (tests).
        nested_dropout: train on random prefixes of the latent tokens.
        semantic_teacher, semantic_weight, latent_perturbation, perturbation_neighbours,
            perturbation_items: see :class:`anytok.regularizers.TrainingOptions`.
        train_decoder_only: freeze encoder and quantizer.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        patch_size: int = 16,
        width: int = 1024,
        depth: int = 24,
        heads: int = 16,
        decoder_width: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        num_tokens: int = 32,
        token_dim: int = 12,
        quantizer: dict[str, Any] | None = None,
        training_stage: str = "single",
        proxy_tokenizer: str | dict[str, Any] | None = None,
        proxy_tiny: bool = False,
        nested_dropout: bool = False,
        semantic_teacher: str | None = None,
        semantic_weight: float = 0.5,
        latent_perturbation: float = 0.0,
        perturbation_neighbours: int = 0,
        perturbation_items: float = 1.0,
        train_decoder_only: bool = False,
    ):
        super().__init__()
        if training_stage not in STAGES:
            raise ValueError(f"training_stage must be one of {STAGES}, got {training_stage!r}")
        if training_stage != "single" and not proxy_tokenizer:
            raise ValueError(f"training_stage={training_stage!r} needs a proxy_tokenizer")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if self.resolution[0] % patch_size or self.resolution[1] % patch_size:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of patch_size {patch_size}"
            )
        self.patch_size = patch_size
        self.downsample_factor = patch_size
        self.grid = (self.resolution[0] // patch_size, self.resolution[1] // patch_size)
        n = self.grid[0] * self.grid[1]
        self.num_tokens = num_tokens
        self.training_stage = training_stage
        self.nested_dropout = nested_dropout
        patch_dim = 3 * patch_size * patch_size
        dec_width = decoder_width or width
        # Encoder.
        self.patch_embed = nn.Linear(patch_dim, width)
        self.patch_pos = nn.Parameter(torch.randn(1, n, width) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.latent_pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.encoder = Transformer(width, depth, heads)
        self.to_token = nn.Linear(width, token_dim)
        quantizer = quantizer or {
            "name": "vq",
            "codebook_size": 4096,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        }
        self.quantizer = build_quantizer(quantizer, token_dim)
        # Decoder.
        self.from_token = nn.Linear(token_dim, dec_width)
        self.dropped_token = nn.Parameter(torch.randn(1, 1, dec_width) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec_width) * 0.02)
        self.decoder_patch_pos = nn.Parameter(torch.randn(1, n, dec_width) * 0.02)
        self.decoder_latent_pos = nn.Parameter(torch.randn(1, num_tokens, dec_width) * 0.02)
        self.decoder = Transformer(dec_width, decoder_depth or depth, decoder_heads or heads)
        self.proxy: ImageTokenizer | None = None
        #: the proxy as a checkpoint config can rebuild it (see :meth:`portable_config`)
        self.proxy_identity: dict[str, Any] | None = None
        if proxy_tokenizer:
            from anytok.registry import create_model, get_arch, load

            if isinstance(proxy_tokenizer, dict):
                if set(proxy_tokenizer) != {"architecture", "config"}:
                    raise ValueError(
                        "proxy_tokenizer as a mapping needs exactly 'architecture' and 'config', "
                        f"got {sorted(proxy_tokenizer)}"
                    )
                proxy = create_model(proxy_tokenizer["architecture"], **proxy_tokenizer["config"])
            else:
                try:
                    get_arch(proxy_tokenizer)
                    proxy = create_model(proxy_tokenizer, tiny=proxy_tiny)
                except KeyError:
                    proxy = load(proxy_tokenizer)
                    self.proxy_identity = {
                        "architecture": proxy.anytok_arch,
                        "config": copy.deepcopy(proxy.anytok_config),
                    }
            if not hasattr(proxy, "decode_latent") or proxy.modality != "image":
                raise ValueError(
                    f"proxy_tokenizer {proxy_tokenizer!r} must be a 2D image tokenizer with decode_latent"
                )
            if proxy.downsample_factor != patch_size:
                raise ValueError(
                    f"the proxy's stride ({proxy.downsample_factor}) must equal patch_size ({patch_size}) "
                    "so its code grid matches TiTok's patch grid"
                )
            freeze(proxy)
            self.proxy = proxy  # type: ignore[assignment]
            sizes = proxy.spec.codebook_sizes
            self.proxy_sizes = tuple(int(s) for s in sizes)
            self.to_logits = nn.Linear(dec_width, sum(self.proxy_sizes))
            self.to_proxy_latent = nn.Linear(dec_width, int(proxy.quantizer.dim))
        else:
            self.to_pixels = nn.Linear(dec_width, patch_dim)
        self.apply(init_weights)
        self.options = TrainingOptions(
            width,
            semantic_teacher,
            semantic_weight,
            latent_perturbation,
            perturbation_neighbours=perturbation_neighbours,
            perturbation_items=perturbation_items,
        )
        self.train_decoder_only = train_decoder_only or training_stage == "pixel"
        if self.train_decoder_only:
            freeze(*self._encoder_modules())
            for encoder_side in (self.patch_pos, self.latent_tokens, self.latent_pos):
                encoder_side.requires_grad_(False)
        # What gets no gradient in training is frozen, so that DDP (find_unused_parameters
        # off) does not wait for it: the other stage's head, and the dropped-token embedding
        # without nested dropout.
        if not nested_dropout:
            self.dropped_token.requires_grad_(False)
        if training_stage == "proxy":
            self.to_proxy_latent.requires_grad_(False)
        elif training_stage == "pixel":
            self.to_logits.requires_grad_(False)

    def portable_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` as a checkpoint stores it: a proxy loaded from a path becomes its
        architecture and config (its weights are in the state dict), not the path."""
        if self.proxy_identity is None:
            return config
        return {**config, "proxy_tokenizer": copy.deepcopy(self.proxy_identity)}

    def _encoder_modules(self) -> list[nn.Module]:
        return [self.patch_embed, self.encoder, self.to_token, self.quantizer]

    def train(self, mode: bool = True) -> TiTok:
        super().train(mode)
        frozen = [*self._encoder_modules()] if self.train_decoder_only else []
        if self.proxy is not None:
            frozen.append(self.proxy)
        for module in frozen:
            module.eval()
        return self

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(
            modality="image",
            codebook_sizes=tuple(self.quantizer.codebook_sizes),
            layout=("sequence",),
            resolution=self.resolution,
            name=self.registry_name,
            architecture=self.architecture,
            resize=self.resize,
        )

    # ------------------------------------------------------------------ pieces

    def _encode_latent(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """-> latent tokens ``(b, k, token_dim)`` and patch features ``(b, n, width)``."""
        image = self.check_input(image)
        if tuple(image.shape[-2:]) != self.resolution:
            raise ValueError(
                f"TiTok: expects {self.resolution[0]}x{self.resolution[1]} images (learned "
                f"positions), got {tuple(image.shape[-2:])}; resize first (its spec's resize is cover_crop)"
            )
        b = image.shape[0]
        patches = (
            self.patch_embed(patchify(image, (self.patch_size, self.patch_size))) + self.patch_pos
        )
        latents = (self.latent_tokens + self.latent_pos).expand(b, -1, -1)
        h = self.encoder(torch.cat([patches, latents], dim=1))
        n = patches.shape[1]
        return self.to_token(h[:, n:]), h[:, :n]

    def _decode_features(self, quantized: Tensor, keep: Tensor | None) -> Tensor:
        """Quantized tokens ``(b, k', token_dim)`` (``k' <= K``; missing tail = dropped) and an
        optional keep-mask ``(b, K)`` -> patch features ``(b, n, width)``."""
        b, k = quantized.shape[:2]
        if k > self.num_tokens:
            raise ValueError(f"TiTok decodes at most {self.num_tokens} tokens, got {k}")
        tokens = self.from_token(quantized)
        if k < self.num_tokens:
            tail = self.dropped_token.expand(b, self.num_tokens - k, -1).to(tokens.dtype)
            tokens = torch.cat([tokens, tail], dim=1)
        if keep is not None:
            tokens = torch.where(keep[..., None], tokens, self.dropped_token.to(tokens.dtype))
        n = self.decoder_patch_pos.shape[1]
        masks = (self.mask_token + self.decoder_patch_pos).expand(b, -1, -1)
        h = self.decoder(torch.cat([masks, tokens + self.decoder_latent_pos], dim=1))
        return h[:, :n]

    def _proxy_logits(self, features: Tensor) -> list[Tensor]:
        """``(b, n, width)`` -> one ``(b, n, K_level)`` logit tensor per proxy level."""
        return list(self.to_logits(features).split(self.proxy_sizes, dim=-1))

    def _pixels(self, features: Tensor) -> Tensor:
        """Patch features -> images, by the stage's route."""
        assert self.proxy is not None or hasattr(self, "to_pixels")
        if self.proxy is None:
            return unpatchify(
                self.to_pixels(features), self.grid, (self.patch_size, self.patch_size)
            )
        if self.training_stage == "pixel":
            latent = rearrange(
                self.to_proxy_latent(features), "b (h w) d -> b d h w", h=self.grid[0]
            )
            return self.proxy.decode_latent(latent)  # type: ignore[attr-defined]
        codes = torch.stack([logits.argmax(-1) for logits in self._proxy_logits(features)], dim=1)
        return self.proxy.decode(rearrange(codes, "b l (h w) -> b l h w", h=self.grid[0]))

    # ------------------------------------------------------------------ contract

    def forward(self, image: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass (the stage decides the losses; see the module docstring)."""
        latent, patch_features = self._encode_latent(image)
        out = self.quantizer(latent)
        quantized = self.options.perturb(
            self.quantizer, out.quantized.transpose(1, 2), out.codes.transpose(1, 2)
        ).transpose(1, 2)
        keep = None
        if self.training and self.nested_dropout:
            keep = prefix_mask(
                sample_prefix_lengths(image.shape[0], self.num_tokens).to(image.device),
                self.num_tokens,
            )
        features = self._decode_features(quantized, keep)
        losses = {"quantizer": out.loss}
        losses.update(self.options.losses(patch_features, self.grid, image))
        if self.proxy is not None and self.training_stage == "proxy":
            with torch.no_grad():
                target = self.proxy.encode(image).codes.flatten(2)  # (b, levels, n)
            logits = self._proxy_logits(features)
            losses["proxy"] = sum(
                F.cross_entropy(lg.flatten(0, 1).float(), target[:, i].flatten())
                for i, lg in enumerate(logits)
            ) / len(logits)
            with torch.no_grad():
                reconstruction = self._pixels(features)
        else:
            reconstruction = self._pixels(features)
        codes = out.codes.transpose(1, 2)  # (b, 1, k)
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(codes, self.spec, None),
            losses=losses,
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, image: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``image (b, 3, H, W)`` -> codes ``(b, 1, num_tokens)``."""
        latent, _ = self._encode_latent(image)
        return to_tokens(self.quantizer.encode(latent).transpose(1, 2), self.spec, None)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, 1, k)`` with ``1 <= k <= num_tokens`` (a prefix: the rest counts as
        dropped) -> images ``(b, 3, H, W)``."""
        codes = self.codes_of(tokens)
        levels = len(self.quantizer.codebook_sizes)
        if codes.ndim != 3 or codes.shape[1] != levels:
            raise ValueError(
                f"{type(self).__name__}.decode: expected codes (batch, {levels}, k), got shape "
                f"{tuple(codes.shape)}"
            )
        if isinstance(tokens, Tokens) and tokens.lengths is not None:
            return torch.cat(
                [self.decode(codes[i : i + 1, :, : int(n)]) for i, n in enumerate(tokens.lengths)]
            )
        quantized = self.quantizer.decode(codes.transpose(1, 2))
        return self._pixels(self._decode_features(quantized, None))

    def sweep_options(self) -> dict[str, list[int]]:
        """Benchmark sweep axis: decodable prefix lengths (models trained with nested dropout)."""
        if not self.nested_dropout:
            return {}
        return {
            "prefix": sorted(
                {2**i for i in range(self.num_tokens.bit_length())} | {self.num_tokens}
            )
        }

    def sweep_decode(self, tokens: Tokens, axis: str, value: int) -> tuple[Tensor, Tensor]:
        """Decode the first ``value`` tokens; they are the codes the rate counts."""
        codes = self.codes_of(tokens)[..., : int(value)]
        return self.decode(codes), codes


def _config(width: int, depth: int, heads: int, tokens: int, token_dim: int = 12) -> dict[str, Any]:
    return {
        "resolution": [256, 256],
        "patch_size": 16,
        "width": width,
        "depth": depth,
        "heads": heads,
        "num_tokens": tokens,
        "token_dim": token_dim,
        "quantizer": {
            "name": "vq",
            "codebook_size": 4096,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        },
    }


TINY = {
    "resolution": [32, 32],
    "patch_size": 8,
    "width": 32,
    "depth": 1,
    "heads": 4,
    "num_tokens": 8,
    "token_dim": 6,
    "quantizer": {
        "name": "vq",
        "codebook_size": 64,
        "use_cosine_sim": True,
        "commitment_weight": 0.25,
    },
}

for _name, _size, _args in (
    ("titok_l32", "ViT-L", (1024, 24, 16, 32)),
    ("titok_b64", "ViT-B", (768, 12, 12, 64)),
    ("titok_s128", "ViT-S", (512, 8, 8, 128)),
):
    register(
        _name,
        modality="image",
        description=f"TiTok ({_size} encoder/decoder): {_args[3]} tokens per 256x256 image, VQ 4,096 x 12-d",
        paper="https://arxiv.org/abs/2406.07550 (TiTok)",
        default_config=_config(*_args),
        tiny_config=TINY,
        builder=TiTok,
    )
