"""OmniTokenizer-style joint image-video tokenizer: spatial window attention and causal
temporal attention over patches, one codebook for images and videos.

After OmniTokenizer ("OmniTokenizer: A Joint Image-Video Tokenizer for Visual Generation",
Wang et al. 2024, https://arxiv.org/abs/2406.09399):

* **Patch embedding, first frame alone**: the first frame is embedded by a 2D patch
  embedding, the following frames in groups of ``temporal_patch`` by a 3D one, so a clip of
  ``1 + k * temporal_patch`` frames gives ``1 + k`` latent frames and **an image is a
  one-frame video** (same weights, same tokens).
* **Decoupled spatial-temporal transformer**: each layer is a spatial block (attention
  inside non-overlapping ``window x window`` windows of one latent frame, Swin-style) then a
  temporal block (each spatial position attends to itself in the current and earlier latent
  frames: causal). Positions are fixed sinusoidal embeddings of ``(t, y, x)``.
* **Codes**: VQ with 8,192 codes (OmniTokenizer's VQ stage; 8-d cosine codes here), any
  quantizer by name; a mirrored decoder with 2D / 3D patch heads.

Causality makes latent frame ``t`` depend on frames up to its own group only, so a video's
first latent frame has exactly the tokens of its first frame encoded as an image.

Axis legend: ``b`` batch, ``t`` latent frames, ``h, w`` patch grid, ``d`` width,
``p`` patch, ``q`` temporal patch.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from anytok.codecs.base import TokenizerOutput, VideoTokenizer, build_quantizer, to_tokens
from anytok.codecs.long_video import check_latent_frames
from anytok.nn.transformer import TransformerBlock, init_weights, sincos_grid_embedding
from anytok.registry import register
from anytok.tokens import Tokens


class SpaceTimeBlock(nn.Module):
    """One spatial window block then one causal temporal block on ``(b, t, h, w, d)``."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window = window
        self.spatial = TransformerBlock(dim, heads, mlp_ratio)
        self.temporal = TransformerBlock(dim, heads, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h, w, _ = x.shape
        wy, wx = min(self.window, h), min(self.window, w)
        if h % wy or w % wx:
            raise ValueError(
                f"OmniTokenizer: the patch grid {h}x{w} is not a multiple of the attention "
                f"window {self.window}; use a size that is a multiple of patch x window"
            )
        # unflatten, not einops' (b ...) splits: those divide by b, 0 for an empty batch
        windows = rearrange(x, "b t (y p) (z q) d -> (b t y z) (p q) d", p=wy, q=wx)
        x = rearrange(
            self.spatial(windows).unflatten(0, (b, t, h // wy, w // wx)),
            "b t y z (p q) d -> b t (y p) (z q) d",
            p=wy,
        )
        sequences = rearrange(x, "b t h w d -> (b h w) t d")
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None]
        out = self.temporal(sequences, attn_mask=causal if t > 1 else None)
        return rearrange(out.unflatten(0, (b, h, w)), "b h w t d -> b t h w d")


class OmniTokenizer(VideoTokenizer):
    """Video ``(b, 3, 1 + k*q, H, W)`` (or images ``(b, 3, H, W)``) -> codes
    ``(b, 1, 1 + k, H/p, W/p)``.

    Args:
        resolution, fps: training resolution and frame rate.
        patch_size: spatial patch ``p``; temporal_patch: frames per later latent frame ``q``.
        dim, depth, heads, window: transformer width, layers (each spatial + temporal),
            heads, spatial attention window (in patches).
        decoder_depth: decoder layers (default ``depth``).
        token_dim: quantizer input width.
        quantizer: ``{"name": ..., **kwargs}``.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        fps: float = 24.0,
        patch_size: int = 8,
        temporal_patch: int = 4,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        window: int = 8,
        decoder_depth: int | None = None,
        token_dim: int = 8,
        quantizer: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps = float(fps)
        self.spatial_factor = patch_size
        self.temporal_factor = temporal_patch
        self.dim = dim
        p, q = patch_size, temporal_patch
        self.embed_first = nn.Linear(3 * p * p, dim)
        self.embed_rest = nn.Linear(3 * q * p * p, dim)
        self.encoder = nn.ModuleList(SpaceTimeBlock(dim, heads, window) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(dim)
        self.to_token = nn.Linear(dim, token_dim)
        self.from_token = nn.Linear(token_dim, dim)
        self.decoder = nn.ModuleList(
            SpaceTimeBlock(dim, heads, window) for _ in range(decoder_depth or depth)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.head_first = nn.Linear(dim, 3 * p * p)
        self.head_rest = nn.Linear(dim, 3 * q * p * p)
        self.apply(init_weights)
        quantizer = quantizer or {
            "name": "vq",
            "codebook_size": 8192,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        }
        self.quantizer = build_quantizer(quantizer, token_dim)

    # ------------------------------------------------------------------ pieces

    def _positions(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        t, h, w = grid
        return sincos_grid_embedding(grid, self.dim, device).view(1, t, h, w, self.dim)

    def _embed(self, video: Tensor) -> Tensor:
        """Padded ``(b, 3, 1 + k*q, H, W)`` -> patch tokens ``(b, 1 + k, h, w, d)``."""
        p, q = self.spatial_factor, self.temporal_factor
        first = rearrange(video[:, :, :1], "b c 1 (h p) (w r) -> b 1 h w (c p r)", p=p, r=p)
        tokens = [self.embed_first(first)]
        if video.shape[2] > 1:
            rest = rearrange(
                video[:, :, 1:], "b c (t o) (h p) (w r) -> b t h w (c o p r)", o=q, p=p, r=p
            )
            tokens.append(self.embed_rest(rest))
        x = torch.cat(tokens, dim=1)
        return x + self._positions(tuple(x.shape[1:4]), x.device).to(x.dtype)

    def _encode_latent(self, video: Tensor) -> Tensor:
        x = self._embed(video)
        for block in self.encoder:
            x = block(x)
        return self.to_token(self.encoder_norm(x))  # (b, t, h, w, token_dim)

    def _decode_latent(self, quantized: Tensor) -> Tensor:
        """``(b, t, h, w, token_dim)`` -> video ``(b, 3, 1 + (t-1)*q, h*p, w*p)``."""
        x = self.from_token(quantized)
        x = x + self._positions(tuple(x.shape[1:4]), x.device).to(x.dtype)
        for block in self.decoder:
            x = block(x)
        x = self.decoder_norm(x)
        p, q = self.spatial_factor, self.temporal_factor
        frames = [
            rearrange(self.head_first(x[:, :1]), "b 1 h w (c p r) -> b c 1 (h p) (w r)", p=p, r=p)
        ]
        if x.shape[1] > 1:
            frames.append(
                rearrange(
                    self.head_rest(x[:, 1:]),
                    "b t h w (c o p r) -> b c (t o) (h p) (w r)",
                    o=q,
                    p=p,
                    r=p,
                )
            )
        return torch.cat(frames, dim=2)

    @staticmethod
    def _as_video(media: Tensor) -> Tensor:
        """Images ``(b, 3, H, W)`` (tensor or NumPy) as one-frame videos; anything else as
        given, for ``pad_input`` to check.

        Raises:
            ValueError: a 4-D input that is no image batch (an unbatched clip
                ``(3, T, H, W)``: a 4-D input is read as images, so add the batch axis).
        """
        if getattr(media, "ndim", None) != 4:
            return media
        if media.shape[1] != 3:
            raise ValueError(
                "OmniTokenizer: expected video (batch, 3, frames, height, width) or images "
                f"(batch, 3, height, width), got shape {tuple(media.shape)}; a 4-D input is "
                "read as images, so give one clip as clip[None]"
            )
        return media[:, :, None]

    # ------------------------------------------------------------------ contract

    def forward(self, video: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass on videos (images: one-frame videos)."""
        video = self._as_video(video)
        padded, latent_lengths = self.pad_input(video, lengths)
        latent = self._encode_latent(padded)
        out = self.quantizer(latent)
        reconstruction = self._decode_latent(out.quantized)[:, :, : video.shape[2]]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(out.codes.movedim(-1, 1), self.spec, latent_lengths),
            losses={"quantizer": out.loss},
            metrics=out.metrics,
            latent=latent.movedim(-1, 1),
        )

    def encode(self, video: Tensor, lengths: Tensor | None = None) -> Tokens:
        """Video ``(b, 3, t, H, W)`` or images ``(b, 3, H, W)`` -> codes ``(b, 1, T, h, w)``."""
        padded, latent_lengths = self.pad_input(self._as_video(video), lengths)
        codes = self.quantizer.encode(self._encode_latent(padded)).movedim(-1, 1)
        return to_tokens(codes, self.spec, latent_lengths)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, 1, T, h, w)`` -> video ``(b, 3, 1 + (T-1)*q, H, W)``."""
        codes = self.codes_of(tokens)
        check_latent_frames(self, codes)
        return self._decode_latent(self.quantizer.decode(codes.movedim(1, -1)))

    def encode_image(self, images: Tensor) -> Tokens:
        """Images ``(b, 3, H, W)`` -> codes ``(b, 1, 1, h, w)`` (a one-frame video)."""
        return self.encode(self._as_video(images))

    def decode_image(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes of one latent frame -> images ``(b, 3, H, W)``."""
        return self.decode(tokens)[:, :, 0]


register(
    "omni",
    modality="video",
    description="OmniTokenizer-style joint image/video tokenizer: window + causal temporal attention, VQ 8,192",
    paper="https://arxiv.org/abs/2406.09399 (OmniTokenizer)",
    default_config={
        "resolution": [256, 256],
        "fps": 24.0,
        "patch_size": 8,
        "temporal_patch": 4,
        "dim": 512,
        "depth": 8,
        "heads": 8,
        "window": 8,
        "token_dim": 8,
        "quantizer": {
            "name": "vq",
            "codebook_size": 8192,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        },
    },
    tiny_config={
        "resolution": [16, 16],
        "fps": 8.0,
        "patch_size": 4,
        "temporal_patch": 2,
        "dim": 32,
        "depth": 1,
        "heads": 4,
        "window": 2,
        "token_dim": 4,
        "quantizer": {
            "name": "vq",
            "codebook_size": 64,
            "use_cosine_sim": True,
            "commitment_weight": 0.25,
        },
    },
    builder=OmniTokenizer,
)
