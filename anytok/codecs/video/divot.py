"""Divot-style video tokenizer: a causal 3D CNN encoder, discrete codes, and a rectified-flow
video decoder conditioned on the clip's tokens.

After Divot ("Diffusion Powers Video Tokenizer for Comprehension and Generation", Ge et al.
2024, https://arxiv.org/abs/2412.04432), which learns video representations by making a
diffusion model denoise the clip from them. Here the representation is discrete: the
encoder is anytok's causal 3D CNN (first frame alone, :mod:`anytok.nn.causal3d`), any
quantizer by name (FSQ by default), and the decoder is
:class:`anytok.decoders.diffusion.FlowDecoder` over per-frame patches of the clip, cross-
attending to the token embeddings (each with its latent-grid position).

Training (``forward``) is end to end: the flow-matching loss reaches the encoder through the
quantizer's straight-through path; ``reconstruction`` is the one-step denoised estimate (for
logs; a real decode samples). ``decode`` samples with ``sample_steps`` steps of
``sample_scheduler`` from a fixed ``sample_seed`` unless told otherwise, so evaluation is
deterministic.

Axis legend: ``b`` batch, ``t`` frames, ``T`` latent frames, ``h, w`` latent grid, ``p``
patch side.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anytok.codecs.base import (
    TokenizerOutput,
    VideoTokenizer,
    build_quantizer,
    decode_codes,
    quantize_channel_first,
    to_tokens,
)
from anytok.codecs.long_video import check_latent_frames
from anytok.decoders.diffusion import FlowDecoder, SamplingDefaults, checked_scheduler
from anytok.nn.causal3d import Encoder3d
from anytok.nn.transformer import patchify, sincos_grid_embedding, unpatchify
from anytok.registry import register
from anytok.tokens import Tokens


class DivotTokenizer(SamplingDefaults, VideoTokenizer):
    """Video ``(b, 3, 1 + k*s_t, H, W)`` -> codes ``(b, levels, 1 + k, H/s, W/s)`` -> video by
    flow-matching sampling.

    ``s`` (``code_factor``) is the encoder's spatial stride. Inputs must fill whole latent
    positions and whole decoder patches, so ``H`` and ``W`` are multiples of
    ``spatial_factor = lcm(s, patch_size)``.

    Args:
        resolution, fps: training resolution ``(H, W)`` (multiples of ``spatial_factor``) and
            frame rate.
        channels, channel_multipliers, temporal_downsample, num_res_blocks, latent_dim: the
            causal 3D encoder (:class:`anytok.nn.causal3d.Encoder3d`).
        quantizer: ``{"name": ..., **kwargs}``.
        patch_size: spatial side of the decoder's per-frame patches.
        decoder: :class:`FlowDecoder` keyword arguments (``dim``, ``depth``, ``heads``,
            ``objective`` ...). ``time_shift`` defaults to 3.0 under ``objective="flow"``
            and to 1.0 (the only value they take) under ``"epsilon"`` / ``"v"``. ``repa`` is
            refused (this model never feeds a REPA teacher; FlexTok has one for images).
        sample_steps, sample_scheduler, sample_seed, guidance_scale: ``decode`` defaults;
            ``sample_scheduler=None`` picks the objective's (``"euler"`` for flow, ``"ddim"``
            for epsilon / v), and a scheduler that cannot sample the objective is refused.
    """

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        fps: float = 24.0,
        channels: int = 64,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] | list[bool] = (True, True, False),
        num_res_blocks: int = 2,
        latent_dim: int = 6,
        quantizer: dict[str, Any] | None = None,
        patch_size: int = 16,
        decoder: dict[str, Any] | None = None,
        sample_steps: int = 25,
        sample_scheduler: str | None = None,
        sample_seed: int = 0,
        guidance_scale: float = 1.0,
    ):
        super().__init__()
        quantizer = quantizer or {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps = float(fps)
        self.encoder = Encoder3d(
            in_channels=3,
            channels=channels,
            channel_multipliers=tuple(channel_multipliers),
            temporal_downsample=tuple(bool(t) for t in temporal_downsample),
            num_res_blocks=num_res_blocks,
            z_channels=latent_dim,
        )
        self.quantizer = build_quantizer(quantizer, latent_dim)
        self.code_factor = self.encoder.spatial_factor  # pixels per code position
        self.temporal_factor = self.encoder.temporal_factor
        name = type(self).__name__
        if patch_size < 1 or (self.code_factor % patch_size and patch_size % self.code_factor):
            raise ValueError(
                f"{name}: patch_size {patch_size} and the encoder's spatial factor "
                f"{self.code_factor} must divide one another"
            )
        self.patch_size = patch_size
        # The input stride (pad_input, the pipeline's crop and tiling read it): inputs fill
        # whole latent positions and whole decoder patches.
        self.spatial_factor = math.lcm(self.code_factor, patch_size)
        if self.resolution[0] % self.spatial_factor or self.resolution[1] % self.spatial_factor:
            raise ValueError(
                f"{name}: resolution {self.resolution} must be multiples of "
                f"{self.spatial_factor} (lcm of the encoder's spatial factor {self.code_factor} "
                f"and patch_size {patch_size})"
            )
        decoder = dict(decoder or {})
        if decoder.get("repa"):
            raise ValueError(
                f"{name}: decoder.repa is not supported: its training pass never gives the "
                "flow decoder the clean video REPA's teacher needs, so the projector would "
                "never train (and a checkpoint would need the teacher to load); REPA exists "
                "for images, through FlexTok's `repa` option"
            )
        objective = decoder.get("objective", "flow")
        # time_shift is a flow option: a DDPM objective takes 1.0 unless told otherwise
        time_shift = 3.0 if objective == "flow" else 1.0
        decoder = {"dim": 768, "depth": 12, "heads": 12, "time_shift": time_shift, **decoder}
        self.cond_dim = int(decoder["dim"])
        self.cond_proj = nn.Linear(latent_dim, self.cond_dim)
        self.decoder = FlowDecoder(3 * patch_size * patch_size, self.cond_dim, **decoder)
        sample_scheduler = checked_scheduler(
            f"{name}: sample_scheduler", objective, sample_scheduler, self.decoder.time_shift
        )
        self.sample_steps = sample_steps
        self.sample_scheduler = sample_scheduler
        self.sample_seed = sample_seed
        self.guidance_scale = guidance_scale

    def _condition(self, quantized: Tensor) -> Tensor:
        """Quantized latent ``(b, d, T, h, w)`` -> condition tokens ``(b, T*h*w, cond_dim)``
        with their latent-grid positions."""
        grid = tuple(quantized.shape[2:])
        tokens = self.cond_proj(quantized.flatten(2).transpose(1, 2))
        return tokens + sincos_grid_embedding(grid, self.cond_dim, quantized.device).to(
            tokens.dtype
        )

    def _target_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Decoder patch grid ``(t, H/p, W/p)`` of a clip ``(t, H, W)``."""
        return frames, height // self.patch_size, width // self.patch_size

    def forward(self, video: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: flow-matching loss on the clip's patches given its tokens."""
        padded, latent_lengths = self.pad_input(video, lengths)
        latent = self.encoder(padded)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        target = patchify(padded, (1, self.patch_size, self.patch_size))
        grid = self._target_grid(*padded.shape[2:])
        flow = self.decoder.loss(target, self._condition(quantized), grid=grid)
        reconstruction = unpatchify(flow.denoised, grid, (1, self.patch_size, self.patch_size))
        return TokenizerOutput(
            reconstruction=reconstruction[:, :, : video.shape[2]],
            tokens=to_tokens(out.codes, self.spec, latent_lengths),
            losses={"diffusion": flow.loss, "quantizer": out.loss},
            metrics={**out.metrics, **flow.metrics},
            latent=latent,
        )

    def encode(self, video: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``video (b, 3, t, H, W)`` in [-1, 1] -> codes ``(b, levels, 1 + ceil((t-1)/s_t), h, w)``."""
        padded, latent_lengths = self.pad_input(video, lengths)
        codes = self.quantizer.encode(self.encoder(padded).movedim(1, -1)).movedim(-1, 1)
        return to_tokens(codes, self.spec, latent_lengths)

    @torch.no_grad()
    def decode(
        self,
        tokens: Tokens | Tensor,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Codes ``(b, levels, 1 + k, h, w)`` -> video ``(b, 3, 1 + k*s_t, h*s, w*s)`` sampled
        with ``steps`` / ``scheduler`` / ``guidance_scale`` / ``seed`` (defaults: the
        constructor's ``sample_*``); ``h`` and ``w`` are multiples of ``patch_size / s``
        where the decoder's patches span several codes. With ``tokens.lengths``, each item is
        sampled from its valid latent frames only (the flow decoder attends over the whole
        clip, so codes past an item's length would change its frames); later frames repeat its
        last frame."""
        codes = self.codes_of(tokens)
        check_latent_frames(self, codes)
        step = self.spatial_factor // self.code_factor  # code positions per decoder patch
        if codes.ndim == 5 and (codes.shape[-2] % step or codes.shape[-1] % step):
            raise ValueError(
                f"{type(self).__name__}.decode: the code grid {tuple(codes.shape[-2:])} must be "
                f"multiples of {step} (each {self.patch_size}-pixel decoder patch spans {step} "
                f"codes of {self.code_factor} pixels)"
            )
        lengths = tokens.lengths if isinstance(tokens, Tokens) else None
        if lengths is not None and bool((lengths < codes.shape[2]).any()):
            kwargs = dict(
                steps=steps, guidance_scale=guidance_scale, scheduler=scheduler, seed=seed
            )
            s = self.temporal_factor
            out = None
            for n in lengths.unique().tolist():
                index = (lengths == n).nonzero().flatten().to(codes.device)
                video = self.decode(codes[index, :, : int(n)], **kwargs)
                if out is None:
                    shape = (codes.shape[0], *video.shape[1:2], 1 + (codes.shape[2] - 1) * s)
                    out = video.new_zeros((*shape, *video.shape[3:]))
                kept = video.shape[2]
                out[index, :, :kept] = video
                out[index, :, kept:] = video[:, :, -1:]
            return out
        quantized = decode_codes(self.quantizer, codes)
        latent_frames, h, w = codes.shape[2:]
        frames = 1 + (latent_frames - 1) * self.temporal_factor
        grid = self._target_grid(frames, h * self.code_factor, w * self.code_factor)
        patches = self.decoder.sample(
            self._condition(quantized),
            grid=grid,
            **self.sampling(steps, guidance_scale, scheduler, seed),
        )
        return unpatchify(patches, grid, (1, self.patch_size, self.patch_size)).clamp(-1, 1)

    def sweep_options(self) -> dict[str, list[int]]:
        """Benchmark sweep axis (:mod:`anytok.bench.sweeps`): sampler steps."""
        return {"steps": [1, 2, 4, 8, 16, 32, 64]}

    def sweep_decode(self, tokens: Tokens, axis: str, value: int) -> tuple[Tensor, Tensor]:
        """Decode with ``value`` sampler steps; the codes are all of them."""
        return self.decode(tokens, steps=int(value)), tokens.codes


register(
    "divot",
    modality="video",
    description="causal 3D CNN + FSQ (64,000 codes, 4x8x8) with a rectified-flow DiT decoder",
    paper="https://arxiv.org/abs/2412.04432 (Divot) + https://arxiv.org/abs/2209.03003 (rectified flow)",
    default_config={
        "resolution": [256, 256],
        "fps": 24.0,
        "channels": 64,
        "channel_multipliers": [1, 2, 2, 4],
        "temporal_downsample": [True, True, False],
        "num_res_blocks": 2,
        "latent_dim": 6,
        "quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
        "patch_size": 16,
        "decoder": {"dim": 768, "depth": 12, "heads": 12, "time_shift": 3.0},
        "sample_steps": 25,
        "sample_scheduler": None,  # the objective's: euler (flow), ddim (epsilon / v)
        "sample_seed": 0,
        "guidance_scale": 1.0,
    },
    tiny_config={
        "resolution": [16, 16],
        "fps": 8.0,
        "channels": 4,
        "channel_multipliers": [1, 2],
        "temporal_downsample": [True],
        "num_res_blocks": 1,
        "latent_dim": 3,
        "quantizer": {"name": "fsq", "levels": [5, 5, 5]},
        "patch_size": 4,
        "decoder": {"dim": 32, "depth": 2, "heads": 4, "time_shift": 1.0},
        "sample_steps": 4,
    },
    builder=DivotTokenizer,
)
