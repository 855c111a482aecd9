"""CNN3D-FSQ: a causal 3D convolutional autoencoder with FSQ codes.

The video baseline of anytok, after the causal designs of MAGVIT-v2 (Yu et al. 2023,
https://arxiv.org/abs/2310.05737) and Cosmos Tokenizer (NVIDIA 2025,
https://arxiv.org/abs/2501.03575): causal in time with the first frame encoded alone, 4x in
time and 8x in space, FSQ codes (64,000, as Cosmos DV).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anytok.codecs.base import (
    TokenizerOutput,
    VideoTokenizer,
    build_quantizer,
    decode_codes,
    quantize_channel_first,
    to_tokens,
)
from anytok.codecs.long_video import check_latent_frames
from anytok.nn.causal3d import Decoder3d, Encoder3d
from anytok.registry import register
from anytok.tokens import Tokens


class CNN3DFSQ(VideoTokenizer):
    """Video ``(b, 3, 1 + k*s_t, H, W)`` -> codes ``(b, levels, 1 + k, H/s, W/s)``.

    Args:
        resolution: training resolution ``(H, W)``.
        fps: frame rate the tokenizer expects.
        channels: base width.
        channel_multipliers: width multiplier per level; all but the last halve space.
        temporal_downsample: per downsampling level, whether it also halves time.
        num_res_blocks: residual blocks per level.
        latent_dim: channels of the latent fed to the quantizer.
        quantizer: ``{"name": ..., **kwargs}`` for :func:`anytok.quantizers.build`.
        factorized: (2+1)D convs (spatial 1x3x3 then temporal 3x1x1) instead of 3x3x3.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        fps: float = 24.0,
        channels: int = 64,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] | list[bool] = (True, True, False),
        num_res_blocks: int = 2,
        latent_dim: int = 16,
        quantizer: dict[str, Any] | None = None,
        factorized: bool = False,
    ):
        super().__init__()
        quantizer = quantizer or {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps = float(fps)
        layer_args = dict(
            channels=channels,
            channel_multipliers=tuple(channel_multipliers),
            temporal_downsample=tuple(bool(t) for t in temporal_downsample),
            num_res_blocks=num_res_blocks,
            z_channels=latent_dim,
            factorized=factorized,
        )
        self.encoder = Encoder3d(in_channels=3, **layer_args)
        self.quantizer = build_quantizer(quantizer, latent_dim)
        self.decoder = Decoder3d(out_channels=3, **layer_args)
        self.spatial_factor = self.encoder.spatial_factor
        self.temporal_factor = self.encoder.temporal_factor

    def forward(self, video: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``video (b, 3, t, H, W)`` -> reconstruction of the same shape."""
        padded, latent_lengths = self.pad_input(video, lengths)
        latent = self.encoder(padded)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        reconstruction = self.decoder(quantized)[:, :, : video.shape[2]]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(out.codes, self.spec, latent_lengths),
            losses={"quantizer": out.loss},
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, video: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``video (b, 3, t, H, W)`` in [-1, 1] -> codes ``(b, levels, 1 + ceil((t-1)/s_t), h, w)``."""
        padded, latent_lengths = self.pad_input(video, lengths)
        codes = self.quantizer.encode(self.encoder(padded).movedim(1, -1)).movedim(-1, 1)
        return to_tokens(codes, self.spec, latent_lengths)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, levels, 1 + k, h, w)`` -> video ``(b, 3, 1 + k*s_t, h*s, w*s)``."""
        codes = self.codes_of(tokens)
        check_latent_frames(self, codes)
        return self.decoder(decode_codes(self.quantizer, codes))


register(
    "cnn3d_fsq_4x8x8",
    modality="video",
    description="causal 3D CNN + FSQ (64,000 codes), 4x time / 8x space, first frame alone",
    paper="https://arxiv.org/abs/2310.05737 (MAGVIT-v2) + https://arxiv.org/abs/2501.03575 (Cosmos)",
    default_config={
        "resolution": [256, 256],
        "fps": 24.0,
        "channels": 64,
        "channel_multipliers": [1, 2, 2, 4],
        "temporal_downsample": [True, True, False],
        "num_res_blocks": 2,
        "latent_dim": 16,
        "quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
    },
    tiny_config={
        "resolution": [16, 16],
        "fps": 8.0,
        "channels": 4,
        "channel_multipliers": [1, 2],
        "temporal_downsample": [True],
        "num_res_blocks": 1,
        "latent_dim": 4,
        "quantizer": {"name": "fsq", "levels": [5, 5, 5]},
    },
    builder=CNN3DFSQ,
)
