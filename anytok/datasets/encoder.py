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

from anytok.codecs.base import Tokenizer
from anytok.datasets.shards import code_error
from anytok.pipeline import InputFormat, encode_each


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


def encode_media(
    model: Tokenizer, device: torch.device, batch: Sequence[Tensor]
) -> list[np.ndarray | str]:
    """Encode loaded items (each without batch axis) together.

    Returns, per item, its codes ``(levels, *positions)`` in the spec's storage dtype and
    trimmed to its valid length, or a one-line error (:func:`anytok.pipeline.encode_each`:
    a failed batch is retried item by item, so only the bad item fails).
    """
    spec = model.default_spec  # encode_each calls encode() with its default levels
    out: list[np.ndarray | str] = []
    for result in encode_each(model, batch, device):
        if isinstance(result, str):
            out.append(result)
            continue
        codes = result.codes[0].numpy()
        # Checked before the cast: a negative or too-large code (a tokenizer bug) would be
        # stored wrapped into the unsigned storage dtype, a wrong but plausible token.
        error = code_error(spec, codes)
        out.append(codes.astype(spec.storage_dtype) if error is None else error)
    return out


__all__ = ["encode_media", "media_seconds", "precision_of"]
