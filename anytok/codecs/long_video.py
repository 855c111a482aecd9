"""Videos of any length in bounded memory, with exactly the tokens of one pass.

Causal video tokenizers (``cnn3d_fsq``, ``causal3d``, the encoder of ``divot``) compute
latent frame ``j`` from input frames ``s*j - R .. s*j`` only (``s`` the temporal factor, ``R``
the encoder's causal receptive field, read from ``encoder.temporal_context``, or from the
model's ``encoder_temporal_context`` when layers between the encoder and the quantizer
widen it), with
per-frame normalisation. So a long clip can be cut into chunks that start at a multiple of
``s`` and carry ``ceil(R / s)`` latent frames of *context* before the frames they keep: the
kept latent frames see exactly the inputs they see in one pass, and the chunk's own start
(which the model treats as a first frame) falls inside the discarded context. Decoding works
the same way in latent frames, with ``decoder.temporal_context``.

Padding rule (as :class:`~anytok.codecs.base.VideoTokenizer`): a clip of ``t`` frames is
padded by repeating its last frame to ``1 + s * ceil((t - 1) / s)``; ``lengths`` say the
valid latent frames. Memory is bounded by the chunk plus context, whatever the clip length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from anytok.codecs.long_audio import (
    PieceBuffer,
    UnsupportedModelError,
    _device_and_dtype,
    consistent_pieces,
)
from anytok.tokens import Tokens, as_int

if TYPE_CHECKING:
    from anytok.codecs.base import VideoTokenizer


class NoBoundedContextError(UnsupportedModelError, ValueError):
    """A video tokenizer whose encoder or decoder has no bounded causal context: no chunked
    path reproduces its one pass (a ValueError too, as before it was an
    :class:`~anytok.codecs.long_audio.UnsupportedModelError`)."""


def _context(model: object, what: str) -> int:
    """Past frames of the ``what`` ("encoder" / "decoder") side: the model's
    ``<what>_temporal_context`` when it has layers around that module (a head before the
    quantizer), else the module's own ``temporal_context``."""
    context = getattr(model, f"{what}_temporal_context", None)
    if context is None:
        context = getattr(getattr(model, what, None), "temporal_context", None)
    if context is None:
        raise NoBoundedContextError(
            f"{type(model).__name__}: its {what} has no bounded causal context "
            "(temporal_context), so chunked processing cannot reproduce one pass; "
            "encode / decode the clip whole"
        )
    return int(context)


def _positive_int(value: Any, what: str) -> int:
    """``value`` as a positive int; ``bool``, ``float`` (``4.0`` too) and ``str`` refused."""
    number = as_int(value, what)
    if number < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return number


def check_latent_frames(model: object, codes: Tensor, what: str = "decode") -> None:
    """Refuse video codes ``(b, levels, T, h, w)`` with ``T == 0``: a clip has at least one
    frame, and its first latent frame is that frame alone (``decode`` gives ``1 + (T - 1)
    * s`` frames)."""
    if codes.ndim == 5 and codes.shape[2] == 0:
        raise ValueError(
            f"{type(model).__name__}.{what}: codes {tuple(codes.shape)} have 0 latent frames; "
            "a clip has at least one (its first frame alone)"
        )


def encode_long(
    model: VideoTokenizer,
    video: Tensor,
    *,
    chunk_frames: int = 64,
    lengths: Tensor | None = None,
) -> Tokens:
    """Tokens of ``video (b, 3, t, H, W)`` computed ``chunk_frames`` input frames at a time
    (rounded down to a multiple of the temporal factor, at least one latent frame): equal to
    ``model.encode(video, lengths)``, on ``video``'s device (which may be the CPU while the
    model is on a GPU: one chunk at a time is moved).

    Raises:
        TypeError / ValueError: ``chunk_frames`` is not a positive int (``bool`` and
            ``float`` refused), or what ``encode`` refuses.
    """
    chunk_frames = _positive_int(chunk_frames, "encode_long: chunk_frames")
    padded, latent_lengths = model.pad_input(video, lengths)
    codes = _encode_chunks(model, [padded], chunk_frames, video.device)
    from anytok.codecs.base import to_tokens

    return to_tokens(codes, model.spec, latent_lengths)


def encode_long_stream(
    model: VideoTokenizer, pieces: Iterable[Tensor], *, chunk_frames: int = 64
) -> Tokens:
    """:func:`encode_long` of a clip that arrives as consecutive pieces ``(batch, 3, t, H,
    W)`` (any ``t``; :func:`anytok.media.iter_video`'s chunks with a batch axis): the tokens
    of their concatenation, on the CPU, while only a chunk and its context are held, so a
    video of any length encodes in bounded memory. Pieces are read as the chunks need them;
    the last frame is repeated to whole latent frames, as ``encode`` pads.

    Raises:
        ValueError: the pieces hold no frames, pieces differ in batch size or ``H x W``,
            ``chunk_frames`` is not positive, or what ``encode`` refuses.
        NoBoundedContextError: as :func:`encode_long`, before any piece is read.
    """
    chunk_frames = _positive_int(chunk_frames, "encode_long_stream: chunk_frames")
    checked = consistent_pieces(
        model, pieces, 5, "video piece (batch, 3, frames, height, width)", "frames"
    )
    with torch.inference_mode():
        codes = _encode_chunks(model, checked, chunk_frames, torch.device("cpu"))
    from anytok.codecs.base import to_tokens

    return to_tokens(codes, model.spec, None)


def _encode_chunks(
    model: VideoTokenizer, pieces: Iterable[Tensor], chunk_frames: int, out_device: torch.device
) -> Tensor:
    """Codes of the clip the consecutive ``pieces`` form, chunk by chunk: each chunk starts
    at a multiple of the temporal factor with the encoder's context before the latent
    frames it keeps, and is formed once the pieces reach its end (past the last frame, the
    last frame repeats, as ``pad_input`` does)."""
    s = model.temporal_factor
    device, _ = _device_and_dtype(model)
    context = math.ceil(_context(model, "encoder") / s)  # latent frames
    per_chunk = max(1, chunk_frames // s)
    video = PieceBuffer(pieces, axis=2)
    kept: list[Tensor] = []
    start = 0  # first latent frame this chunk keeps
    while True:
        wanted = start + per_chunk + (1 if start == 0 else 0)
        video.fill(s * (wanted - 1) + 1)
        if video.end == 0:
            raise ValueError(f"{type(model).__name__}.encode: no video frames")
        # Until the pieces end, they reach past this chunk: the latent count is larger.
        latent_total = model.latent_frames(video.end) if video.ended else math.inf
        if start >= latent_total:
            break
        stop = int(min(latent_total, wanted))
        first = max(0, start - context)  # first latent frame the chunk computes
        frames = video.slice(s * first, s * (stop - 1) + 1)
        missing = s * (stop - 1) + 1 - s * first - frames.shape[2]
        if missing > 0:
            frames = torch.cat([frames, frames[:, :, -1:].expand(-1, -1, missing, -1, -1)], 2)
        codes = model.encode(frames.to(device)).codes.to(out_device)
        kept.append(codes[:, :, start - first :])
        start = stop
        video.drop(s * max(0, start - context))
    return torch.cat(kept, dim=2)


@torch.no_grad()
def decode_long(
    model: VideoTokenizer, tokens: Tokens | Tensor, *, chunk_latents: int = 16
) -> Tensor:
    """Video ``(b, 3, 1 + (T - 1) * s, H, W)`` from codes ``(b, levels, T, h, w)``,
    ``chunk_latents`` latent frames at a time: equal to ``model.decode(tokens)``, on the
    codes' device (one chunk at a time is moved to the model's).

    Raises:
        TypeError / ValueError: ``chunk_latents`` is not a positive int (``bool`` and
            ``float`` refused), or the codes have 0 latent frames.
    """
    per_chunk = _positive_int(chunk_latents, "decode_long: chunk_latents")
    device, _ = _device_and_dtype(model)
    codes = model.codes_of(tokens)
    check_latent_frames(model, codes, "decode_long")
    s = model.temporal_factor
    latent_total = codes.shape[2]
    context = _context(model, "decoder") + 1
    pieces: list[Tensor] = []
    start = 0
    while start < latent_total:
        stop = min(latent_total, start + per_chunk)
        first = max(0, start - context)
        video = model.decode(codes[:, :, first:stop].to(device)).to(codes.device)
        # Chunk latent 0 gives one frame, each later one gives s: keep latents >= start.
        keep_from = 0 if start == first else 1 + s * (start - first - 1)
        pieces.append(video[:, :, keep_from:])
        start = stop
    return torch.cat(pieces, dim=2)


__all__ = [
    "NoBoundedContextError",
    "check_latent_frames",
    "decode_long",
    "encode_long",
    "encode_long_stream",
]
