"""Batched encoding shared by the local and the Ray engine.

Tokens do not depend on how items are batched: the causal audio and video codecs give the
same codes for an item alone or padded in a batch (the registry tests check this for every
model), and image codecs work per image. So a batch is just a throughput device, and both
engines may group items however suits them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from anytok.codecs.base import ImageTokenizer, Tokenizer
from anytok.pipeline import InputFormat, autocast_for, collate, split_tokens


def precision_of(devices: Sequence[torch.device]) -> str:
    """The arithmetic the tokens come from: ``"bf16-autocast"`` on CUDA (what
    :func:`anytok.pipeline.autocast_for` does there), ``"fp32"`` elsewhere."""
    return "bf16-autocast" if any(d.type == "cuda" for d in devices) else "fp32"


def media_seconds(fmt: InputFormat, media: Tensor) -> float | None:
    """Seconds of one loaded item or segment (no batch axis); ``None`` for images."""
    if fmt.modality == "audio":
        assert fmt.sample_rate is not None
        return media.shape[-1] / fmt.sample_rate
    if fmt.modality == "video":
        assert fmt.fps is not None
        return media.shape[1] / fmt.fps
    return None


def _encode(model: Tokenizer, device: torch.device, batch: Sequence[Tensor]) -> list[np.ndarray]:
    media, lengths = collate(batch)
    dtype = model.spec.storage_dtype
    with torch.inference_mode(), autocast_for(device):
        item_lengths = None if isinstance(model, ImageTokenizer) else lengths.to(device)
        tokens = model.encode(media.to(device), item_lengths)
    return [t.codes[0].numpy().astype(dtype) for t in split_tokens(tokens.to("cpu"))]


def encode_media(
    model: Tokenizer, device: torch.device, batch: Sequence[Tensor]
) -> list[np.ndarray | str]:
    """Encode loaded items (each without batch axis) together.

    Returns, per item, its codes ``(levels, *positions)`` in the spec's storage dtype and
    trimmed to its valid length, or a one-line error. When the batch fails (an item the
    model refuses, or out of memory) each item is retried alone, so only the bad one fails.
    """
    try:
        return list(_encode(model, device, batch))
    except (RuntimeError, ValueError) as err:  # includes torch.OutOfMemoryError
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1:
            lines = str(err).strip().splitlines()
            return [f"encoding failed: {type(err).__name__}: {lines[0] if lines else ''}"]
    return [encode_media(model, device, [item])[0] for item in batch]


__all__ = ["encode_media", "media_seconds", "precision_of"]
