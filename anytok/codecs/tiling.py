"""Spatial tiling: images and video frames larger than a tokenizer's training size, in
bounded memory.

* :func:`encode_tiled`: encode overlapping tiles; every latent position is taken from the
  tile in which it lies farthest from a tile border (each tile keeps its centre, minus half
  the overlap on inner sides), so the stitched grid has the one-pass shape.
* :func:`decode_tiled`: decode overlapping latent tiles and blend them with linear ramps
  across each overlap (the blending of diffusers' / VidTok's tiled VAEs), so no seams show.

Peak memory follows the tile, not the image: only one tile's activations exist at a time.
Exactness: a purely local model (convolutions only) gives the one-pass result wherever the
overlap covers its receptive field; models with global operations (GroupNorm statistics,
self-attention at the lowest resolution) give close but not identical results, as every
tiled VAE does. Works for images ``(b, 3, H, W)`` and video ``(b, 3, T, H, W)`` alike (tiles
span the last two axes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anytok.tokens import Tokens


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, keep_start, keep_stop)`` of each tile along one axis (pixel units)."""
    if tile >= size:
        return [(0, size, 0, size)]
    step = tile - overlap
    starts = [*range(0, size - tile, step), size - tile]
    spans = []
    keep_start = 0
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        keep_stop = size if last else start + tile - overlap // 2
        spans.append((start, start + tile, keep_start, keep_stop))
        keep_start = keep_stop
    return spans


def _check(tile: int, overlap: int, factor: int, what: str) -> None:
    if tile % factor or overlap % (2 * factor):
        raise ValueError(
            f"{what}: tile ({tile}) must be a multiple of the stride {factor} and overlap "
            f"({overlap}) a multiple of twice the stride ({2 * factor})"
        )
    if not 0 <= overlap < tile:
        raise ValueError(
            f"{what}: overlap must be in [0, tile), got overlap={overlap}, tile={tile}"
        )


def _factor(model: object) -> int:
    """Pixels per step of the model's input grid (sizes must be multiples of it)."""
    return int(getattr(model, "downsample_factor", None) or model.spatial_factor)  # type: ignore[attr-defined]


def _code_factor(model: object, what: str) -> int:
    """Pixels per code position (``code_factor`` where it differs from the input stride:
    the fine grid of ``hierarchical``); raises for tokens without a height x width grid."""
    spec = getattr(model, "spec", None)  # any object with encode / decode and a stride
    layout = tuple(spec.layout) if spec is not None else ("height", "width")
    if layout[-2:] != ("height", "width"):
        raise ValueError(
            f"{what}: {type(model).__name__}'s tokens are laid out as {layout}, not on a "
            "height x width grid, so tiles cannot be stitched; encode / decode whole images"
        )
    return int(getattr(model, "code_factor", None) or _factor(model))


@torch.no_grad()
def encode_tiled(model: object, media: Tensor, tile: int = 256, overlap: int = 32) -> Tokens:
    """Tokens of ``media`` (images or video) encoded in ``tile x tile`` pixel tiles that
    overlap by ``overlap`` pixels (multiples of the stride and twice the stride)."""
    f = _code_factor(model, "encode_tiled")
    _check(tile, overlap, _factor(model), "encode_tiled")
    h, w = media.shape[-2:]
    rows, first = [], None
    for y0, y1, ky0, ky1 in _spans(h, tile, overlap):
        row = []
        for x0, x1, kx0, kx1 in _spans(w, tile, overlap):
            tokens = model.encode(media[..., y0:y1, x0:x1])  # type: ignore[attr-defined]
            first = first or tokens
            codes = tokens.codes[
                ..., (ky0 - y0) // f : (ky1 - y0) // f, (kx0 - x0) // f : (kx1 - x0) // f
            ]
            row.append(codes)
        rows.append(torch.cat(row, dim=-1))
    assert first is not None
    return Tokens(codes=torch.cat(rows, dim=-2), spec=first.spec, lengths=first.lengths)


def _ramp(length: int, left: int, right: int, device: torch.device) -> Tensor:
    """Weights ``(length,)``: rising linearly over ``left`` samples, falling over ``right``."""
    weight = torch.ones(length, device=device)
    if left:
        weight[:left] = (torch.arange(left, device=device) + 0.5) / left
    if right:
        weight[length - right :] = torch.minimum(
            weight[length - right :], (torch.arange(right, 0, -1, device=device) - 0.5) / right
        )
    return weight


@torch.no_grad()
def decode_tiled(
    model: object, tokens: Tokens | Tensor, tile: int = 32, overlap: int = 8
) -> Tensor:
    """Media from codes ``(b, levels, [T,] h, w)`` decoded in ``tile x tile`` *latent* tiles
    overlapping by ``overlap`` latent positions, blended linearly across overlaps."""
    codes = tokens.codes if isinstance(tokens, Tokens) else tokens
    f = _code_factor(model, "decode_tiled")
    step = _factor(model) // f  # code positions per input step (2 for hierarchical)
    if overlap % 2 or not 0 <= overlap < tile:
        raise ValueError(f"decode_tiled: overlap ({overlap}) must be even and in [0, tile={tile})")
    if tile % step or overlap % step:
        raise ValueError(
            f"decode_tiled: tile ({tile}) and overlap ({overlap}) must be multiples of "
            f"{step} code positions (one input step of {type(model).__name__})"
        )
    h, w = codes.shape[-2:]
    output: Tensor | None = None
    total: Tensor | None = None
    spans_y = _spans(h, tile, overlap)
    spans_x = _spans(w, tile, overlap)
    for i, (y0, y1, _, _) in enumerate(spans_y):
        for j, (x0, x1, _, _) in enumerate(spans_x):
            piece = model.decode(codes[..., y0:y1, x0:x1]).float()  # type: ignore[attr-defined]
            if output is None:
                output = piece.new_zeros((*piece.shape[:-2], h * f, w * f))
                total = piece.new_zeros((h * f, w * f))
            # Overlap with the previous / next tile along each axis, in pixels.
            top = (spans_y[i - 1][1] - y0) * f if i > 0 else 0
            bottom = (y1 - spans_y[i + 1][0]) * f if i + 1 < len(spans_y) else 0
            left = (spans_x[j - 1][1] - x0) * f if j > 0 else 0
            right = (x1 - spans_x[j + 1][0]) * f if j + 1 < len(spans_x) else 0
            weight = (
                _ramp(piece.shape[-2], top, bottom, piece.device)[:, None]
                * _ramp(piece.shape[-1], left, right, piece.device)[None]
            )
            output[..., y0 * f : y1 * f, x0 * f : x1 * f] += piece * weight
            total[y0 * f : y1 * f, x0 * f : x1 * f] += weight  # type: ignore[index]
    assert output is not None and total is not None
    return output / total


__all__ = ["decode_tiled", "encode_tiled"]
