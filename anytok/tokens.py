"""Tokens: codes plus the spec that says what they mean, LM vocabulary mapping, safe I/O.

(Helper B completes this module: LM id mapping with flatten / delay / parallel patterns,
special tokens, save/load. The dataclass fields below are the agreed contract.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

MODALITIES = ("audio", "image", "video")


@dataclass(frozen=True)
class TokenSpec:
    """What a tokenizer's codes mean.

    Attributes:
        modality: ``"audio"``, ``"image"`` or ``"video"``.
        codebook_sizes: one codebook size per level (residual stage or group).
        layout: names of the position axes of ``codes`` after ``(batch, level)``, e.g.
            ``("time",)`` for audio, ``("height", "width")`` for a 2D image grid,
            ``("sequence",)`` for 1D image tokens, ``("frame", "height", "width")`` for video.
        frame_rate: positions per second along the time axis (audio: code frames per second;
            video: latent frames per second); ``None`` for images.
        sample_rate: audio sample rate the tokenizer expects at its input.
        channels: audio channels the tokenizer expects at its input.
        resolution: ``(height, width)`` the tokenizer was trained at (images / video).
        fps: video frame rate the tokenizer expects at its input.
        name: registry name of the tokenizer that produced the codes (``"arch.tag"``).
    """

    modality: str
    codebook_sizes: tuple[int, ...]
    layout: tuple[str, ...]
    frame_rate: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    resolution: tuple[int, int] | None = None
    fps: float | None = None
    name: str = ""

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def bits_per_position(self) -> float:
        """Bits carried by one position (all levels)."""
        return float(sum(math.log2(k) for k in self.codebook_sizes))


@dataclass
class Tokens:
    """A batch of codes and their spec.

    Attributes:
        codes: int64 ``(batch, levels, *positions)`` with the position axes named by
            ``spec.layout``.
        spec: the :class:`TokenSpec`.
        lengths: int64 ``(batch,)`` valid lengths along the first position axis (time or
            frames), or ``None`` when every position is valid.
    """

    codes: Tensor
    spec: TokenSpec
    lengths: Tensor | None = field(default=None)

    def to(self, device: torch.device | str) -> Tokens:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Tokens(self.codes.to(device), self.spec, lengths)
