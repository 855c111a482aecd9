"""Hierarchical video tokenizer: a coarse semantic codebook at high compression plus fine
codebooks for detail, on one causal 3D encoder.

After HiTVideo ("Hierarchical Tokenizers for Enhancing Text-to-Video Generation with
Autoregressive Large Language Models", https://arxiv.org/abs/2503.11513): multi-layer
codebooks where an LM can model the compact coarse layer first and the detail layers after
it, and the decoder reconstructs from the coarse layer alone or from all layers.

* **Encoder**: anytok's causal 3D CNN (first frame alone, :mod:`anytok.nn.causal3d`) gives the
  fine latent at ``s_t x s x s``; a strided causal conv gives the **coarse** latent at
  ``s_t x 2s x 2s`` from the same features.
* **Codes**: one quantizer per layer (LFQ for the coarse layer, FSQ for the fine one by
  default; any by name).
* **Decoder**: the coarse latent, upsampled to the fine grid, plus the fine latent (or a
  learned "absent" embedding when decoding from the coarse layer alone) -> causal 3D CNN.
  In training the fine layer is dropped for ``coarse_only_rate`` of the items, so the
  coarse-only decode is trained too.

Token layout: ``encode`` returns one :class:`~anytok.tokens.Tokens` with two levels on the
fine grid ``(b, 2, T, h, w)``: level 0 holds the coarse codes repeated over each 2x2 block,
level 1 the fine codes (lossless; :func:`coarse_codes` recovers the compact coarse grid).
For LM sequences use :meth:`HierarchicalVideo.encode_layers`, which returns the two layers
on their own grids, and ``decode(..., layers="coarse")`` for the coarse-only reconstruction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.codecs.base import (
    TokenizerOutput,
    VideoTokenizer,
    build_quantizer,
    decode_codes,
    quantize_channel_first,
    to_tokens,
)
from anytok.codecs.long_video import check_latent_frames
from anytok.nn.causal3d import (
    CausalConv3d,
    Decoder3d,
    Encoder3d,
    temporal_receptive_field,
)
from anytok.registry import register
from anytok.tokens import Tokens, TokenSpec

LAYERS = ("all", "coarse")


def coarse_codes(codes: Tensor) -> Tensor:
    """Level 0 of the combined codes ``(b, 2, T, h, w)`` on its own grid ``(b, 1, T, h/2, w/2)``."""
    return codes[:, :1, :, ::2, ::2]


class HierarchicalVideo(VideoTokenizer):
    """Video ``(b, 3, 1 + k*s_t, H, W)`` -> coarse codes on ``(1 + k, H/2s, W/2s)`` and fine
    codes on ``(1 + k, H/s, W/s)``.

    Args:
        resolution, fps: training resolution and frame rate.
        channels, channel_multipliers, temporal_downsample, num_res_blocks: the 3D CNNs.
        fine_dim, coarse_dim: latent channels of each layer.
        fine_quantizer, coarse_quantizer: ``{"name": ..., **kwargs}``.
        coarse_only_rate: fraction of training items decoded from the coarse layer alone.
        factorized: (2+1)D convolutions.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        fps: float = 24.0,
        channels: int = 64,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] | list[bool] = (True, True, False),
        num_res_blocks: int = 2,
        fine_dim: int = 6,
        coarse_dim: int = 18,
        fine_quantizer: dict[str, Any] | None = None,
        coarse_quantizer: dict[str, Any] | None = None,
        coarse_only_rate: float = 0.25,
        factorized: bool = True,
    ):
        super().__init__()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps = float(fps)
        layer_args = dict(
            channels=channels,
            channel_multipliers=tuple(channel_multipliers),
            temporal_downsample=tuple(bool(t) for t in temporal_downsample),
            num_res_blocks=num_res_blocks,
            factorized=factorized,
        )
        width = channels * channel_multipliers[-1]
        self.encoder = Encoder3d(in_channels=3, z_channels=width, **layer_args)
        self.to_fine = CausalConv3d(width, fine_dim)
        self.to_coarse = nn.Sequential(
            CausalConv3d(width, width, (1, 3, 3), stride=(1, 2, 2)),
            nn.SiLU(),
            CausalConv3d(width, coarse_dim),
        )
        self.fine_quantizer = build_quantizer(
            fine_quantizer or {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}, fine_dim
        )
        self.coarse_quantizer = build_quantizer(
            coarse_quantizer or {"name": "lfq", "codebook_size": 2**coarse_dim}, coarse_dim
        )
        self.quantizer = self.fine_quantizer  # the base class reads codebook sizes from here
        self.from_coarse = nn.Conv3d(coarse_dim, width, 1)
        self.from_fine = nn.Conv3d(fine_dim, width, 1)
        self.absent_fine = nn.Parameter(torch.zeros(1, width, 1, 1, 1))
        # never dropped in training, it gets no gradient: frozen, so that DDP
        # (find_unused_parameters off) does not wait for it
        self.absent_fine.requires_grad_(coarse_only_rate > 0)
        self.decoder = Decoder3d(out_channels=3, z_channels=width, **layer_args)
        self.spatial_factor = self.encoder.spatial_factor * 2  # inputs must fit the coarse grid
        self.fine_factor = self.encoder.spatial_factor
        self.code_factor = self.fine_factor  # pixels per code position (tiling reads it)
        self.temporal_factor = self.encoder.temporal_factor
        self.coarse_only_rate = coarse_only_rate

    @property
    def encoder_temporal_context(self) -> int:
        """Past input frames a code depends on: the encoder's, plus the causal heads
        ``to_fine`` / ``to_coarse`` (latent frames, each ``temporal_factor`` input frames)."""
        heads = max(
            temporal_receptive_field(self.to_fine), temporal_receptive_field(self.to_coarse)
        )
        return self.encoder.temporal_context + heads * self.temporal_factor

    @property
    def spec(self) -> TokenSpec:
        """Level 0 (coarse) repeated over 2x2 blocks of the fine grid, level 1 (fine): the
        ``code_repeats`` make the rates of the spec and of its Tokens, and
        :meth:`informative_codes` (level 0 on its own grid, as :func:`coarse_codes`), count
        each coarse code once."""
        sizes = (*self.coarse_quantizer.codebook_sizes, *self.fine_quantizer.codebook_sizes)
        return dataclasses.replace(
            super().spec, codebook_sizes=sizes, code_repeats=((1, 2, 2), (1, 1, 1))
        )

    @property
    def decodes_level_prefix(self) -> bool:
        """The coarse level alone decodes (``decode(..., layers="coarse")``)."""
        return True

    def _combine(self, coarse: Tensor, fine: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """Decoder input ``(b, width, T, h, w)`` from the coarse latent (upsampled 2x) and the
        fine latent (``None`` or dropped items: the learned absent embedding)."""
        up = F.interpolate(self.from_coarse(coarse), scale_factor=(1, 2, 2), mode="nearest")
        if fine is None:
            return up + self.absent_fine
        detail = self.from_fine(fine)
        if drop is not None:
            detail = torch.where(
                drop.view(-1, 1, 1, 1, 1), self.absent_fine.to(detail.dtype), detail
            )
        return up + detail

    def forward(self, video: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        padded, latent_lengths = self.pad_input(video, lengths)
        features = self.encoder(padded)
        fine_q, fine_out = quantize_channel_first(self.fine_quantizer, self.to_fine(features))
        coarse_q, coarse_out = quantize_channel_first(
            self.coarse_quantizer, self.to_coarse(features)
        )
        drop = None
        if self.training and self.coarse_only_rate > 0:
            drop = torch.rand(video.shape[0], device=video.device) < self.coarse_only_rate
        reconstruction = self.decoder(self._combine(coarse_q, fine_q, drop))[:, :, : video.shape[2]]
        codes = self._layout(coarse_out.codes, fine_out.codes)
        metrics = {f"fine/{k}": v for k, v in fine_out.metrics.items()}
        metrics.update({f"coarse/{k}": v for k, v in coarse_out.metrics.items()})
        # The loop logs codebook/perplexity/<level>: level 0 is the coarse layer.
        for key in ("perplexity", "usage"):
            for level, out in enumerate((coarse_out, fine_out)):
                if f"{key}/0" in out.metrics:
                    metrics[f"{key}/{level}"] = out.metrics[f"{key}/0"]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(codes, self.spec, latent_lengths),
            losses={"quantizer": fine_out.loss + coarse_out.loss},
            metrics=metrics,
            latent=features,
        )

    @staticmethod
    def _layout(coarse: Tensor, fine: Tensor) -> Tensor:
        """Coarse ``(b, 1, T, h/2, w/2)`` and fine ``(b, 1, T, h, w)`` -> ``(b, 2, T, h, w)``."""
        repeated = coarse.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return torch.cat([repeated, fine], dim=1)

    def encode_layers(self, video: Tensor, lengths: Tensor | None = None) -> dict[str, Tokens]:
        """``{"coarse": Tokens (b, 1, T, H/2s, W/2s), "fine": Tokens (b, 1, T, H/s, W/s)}``."""
        padded, latent_lengths = self.pad_input(video, lengths)
        features = self.encoder(padded)
        coarse = self.coarse_quantizer.encode(self.to_coarse(features).movedim(1, -1)).movedim(
            -1, 1
        )
        fine = self.fine_quantizer.encode(self.to_fine(features).movedim(1, -1)).movedim(-1, 1)
        base = super().spec
        specs = {
            "coarse": dataclasses.replace(
                base, codebook_sizes=tuple(self.coarse_quantizer.codebook_sizes)
            ),
            "fine": dataclasses.replace(
                base, codebook_sizes=tuple(self.fine_quantizer.codebook_sizes)
            ),
        }
        return {
            "coarse": to_tokens(coarse, specs["coarse"], latent_lengths),
            "fine": to_tokens(fine, specs["fine"], latent_lengths),
        }

    def encode(self, video: Tensor, lengths: Tensor | None = None) -> Tokens:
        """Combined codes ``(b, 2, T, H/s, W/s)`` (level 0 coarse, repeated 2x2; level 1 fine)."""
        layers = self.encode_layers(video, lengths)
        codes = self._layout(layers["coarse"].codes, layers["fine"].codes)
        return to_tokens(codes, self.spec, layers["fine"].lengths)

    def decode(self, tokens: Tokens | Tensor, *, layers: str = "all") -> Tensor:
        """Combined codes -> video; ``layers="coarse"`` ignores the fine level (or accepts a
        coarse-only code tensor ``(b, 1, T, h/2, w/2)``)."""
        if layers not in LAYERS:
            raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
        codes = self.codes_of(tokens)
        if codes.ndim != 5 or codes.shape[1] not in (1, 2):
            raise ValueError(
                f"{type(self).__name__}.decode: expected codes (batch, 2, T, h, w) (or coarse-only "
                f"(batch, 1, T, h/2, w/2)), got shape {tuple(codes.shape)}"
            )
        check_latent_frames(self, codes)
        if codes.shape[1] == 1:  # a coarse-only tensor on its own grid
            if layers != "coarse":
                raise ValueError("one code level given: decode it with layers='coarse'")
            coarse = codes
        else:
            coarse = coarse_codes(codes)
        coarse_q = decode_codes(self.coarse_quantizer, coarse)
        fine_q = decode_codes(self.fine_quantizer, codes[:, 1:2]) if layers == "all" else None
        return self.decoder(self._combine(coarse_q, fine_q))


register(
    "hierarchical",
    modality="video",
    description="HiTVideo-style hierarchical tokenizer: coarse LFQ 2^18 layer (4x16x16) + fine FSQ layer (4x8x8)",
    paper="https://arxiv.org/abs/2503.11513 (HiTVideo)",
    default_config={
        "resolution": [256, 256],
        "fps": 24.0,
        "channels": 64,
        "channel_multipliers": [1, 2, 2, 4],
        "temporal_downsample": [True, True, False],
        "num_res_blocks": 2,
        "fine_dim": 6,
        "coarse_dim": 18,
        "fine_quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
        "coarse_quantizer": {"name": "lfq", "codebook_size": 2**18},
        "coarse_only_rate": 0.25,
    },
    tiny_config={
        "resolution": [16, 16],
        "fps": 8.0,
        "channels": 4,
        "channel_multipliers": [1, 2],
        "temporal_downsample": [True],
        "num_res_blocks": 1,
        "fine_dim": 3,
        "coarse_dim": 6,
        "fine_quantizer": {"name": "fsq", "levels": [5, 5, 5]},
        "coarse_quantizer": {"name": "lfq", "codebook_size": 2**6},
    },
    builder=HierarchicalVideo,
)
