"""Spatial tiling: images and video frames larger than a tokenizer's training size, in
bounded memory.

* :func:`encode_tiled`: encode overlapping tiles; every latent position is taken from the
  tile in which it lies farthest from a tile border (each tile keeps its centre, minus half
  the overlap on inner sides), so the stitched grid has the one-pass shape. Tiles start on
  the model's stride grid, and sizes that are not multiples of the stride are refused, as
  ``encode`` refuses them.
* :func:`decode_tiled`: decode overlapping latent tiles and blend them. In an overlap of
  ``O`` latent positions, the ``O // 4`` positions next to each tile's inner edge get weight
  0 (they were decoded against the tile's zero padding), and the middle ``O - 2 * (O // 4)``
  positions ramp linearly from one tile to the other, so seams of non-local models are
  blended as in diffusers' / VidTok's tiled VAEs.

Peak memory follows the tile, not the image: only one tile's activations exist at a time.

Exactness for a purely local model (convolutions only, zero padding at the image border):

* ``encode_tiled`` gives the one-pass codes when each code depends on input pixels at most
  ``R`` pixels beyond its own stride block and ``overlap >= 2 * R`` (pixels): every kept
  code is at least ``overlap / 2`` pixels from an inner tile edge.
* ``decode_tiled`` gives the one-pass output (up to float rounding) when each output pixel
  depends on codes at most ``r`` positions from the code it lies in and ``overlap >= 4 * r``
  (latent positions; ``r <= overlap // 4``): every pixel with a non-zero weight is at least
  ``overlap // 4`` positions from its tile's inner edges, so the blend averages one-pass
  values. (The default ``overlap=8`` is exact for ``r <= 2``.)

Models with global operations (GroupNorm statistics, self-attention at the lowest
resolution) give close but not identical results, as every tiled VAE does. Works for images
``(b, 3, H, W)`` and video ``(b, 3, T, H, W)`` alike (tiles span the last two axes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anytok.tokens import Tokens, as_int


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, keep_start, keep_stop)`` of each tile along one axis. With ``size``
    and ``tile`` multiples of a stride ``s`` and ``overlap`` a multiple of ``2 * s``, every
    value is a multiple of ``s``."""
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


def _check_sizes(tile: int, overlap: int, what: str) -> tuple[int, int]:
    """``tile`` and ``overlap`` as ints (``bool`` / ``float`` / ``str`` refused), with
    ``0 <= overlap < tile``."""
    tile = as_int(tile, f"{what}: tile")
    overlap = as_int(overlap, f"{what}: overlap")
    if not 0 <= overlap < tile:
        raise ValueError(
            f"{what}: overlap must be in [0, tile), got overlap={overlap}, tile={tile}"
        )
    return tile, overlap


def _check(tile: int, overlap: int, factor: int, what: str) -> tuple[int, int]:
    tile, overlap = _check_sizes(tile, overlap, what)
    if tile % factor or overlap % (2 * factor):
        raise ValueError(
            f"{what}: tile ({tile}) must be a multiple of the stride {factor} and overlap "
            f"({overlap}) a multiple of twice the stride ({2 * factor})"
        )
    return tile, overlap


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
    """Tokens of ``media`` (images ``(b, 3, H, W)`` or video ``(b, 3, T, H, W)``) encoded in
    ``tile x tile`` pixel tiles that overlap by ``overlap`` pixels (multiples of the stride
    and twice the stride); codes ``(b, levels, [T,] H / f, W / f)``, ``f`` pixels per code.

    Raises:
        ValueError: ``H`` or ``W`` is not a positive multiple of the model's stride (as
            ``encode`` refuses it), or ``tile`` / ``overlap`` do not fit the stride.
        TypeError: ``tile`` or ``overlap`` is not an integer.
    """
    f = _code_factor(model, "encode_tiled")
    stride = _factor(model)
    tile, overlap = _check(tile, overlap, stride, "encode_tiled")
    h, w = media.shape[-2:]
    if h == 0 or w == 0 or h % stride or w % stride:
        raise ValueError(
            f"encode_tiled: {type(model).__name__} needs H and W positive multiples of its "
            f"stride {stride}, got {h} x {w} (shape {tuple(media.shape)}); resize or crop "
            "first (anytok.media.load_image(size=...))"
        )
    spans_y, spans_x = _spans(h, tile, overlap), _spans(w, tile, overlap)
    # Tiles on the stride grid see the pixels in the same phase as one pass does.
    assert all(v % stride == 0 for span in (*spans_y, *spans_x) for v in span), (h, w)
    rows, first = [], None
    for y0, y1, ky0, ky1 in spans_y:
        row = []
        for x0, x1, kx0, kx1 in spans_x:
            tokens = model.encode(media[..., y0:y1, x0:x1])  # type: ignore[attr-defined]
            first = first or tokens
            codes = tokens.codes[
                ..., (ky0 - y0) // f : (ky1 - y0) // f, (kx0 - x0) // f : (kx1 - x0) // f
            ]
            row.append(codes)
        rows.append(torch.cat(row, dim=-1))
    assert first is not None
    return Tokens(codes=torch.cat(rows, dim=-2), spec=first.spec, lengths=first.lengths)


def _blend_weights(
    positions: int, before: int, after: int, factor: int, device: torch.device
) -> Tensor:
    """Weights ``(positions * factor,)`` of one tile's pixels along an axis.

    ``before`` / ``after``: latent positions the tile shares with the previous / next tile
    (0 at the image border). In each shared span of ``O`` positions the ``O // 4`` next to
    this tile's edge weigh 0, the middle ``O - 2 * (O // 4)`` ramp linearly (the neighbour's
    ramp is the complement, so the two sum to 1), and the rest weigh 1.
    """
    weight = torch.ones(positions * factor, device=device)
    for shared, rising in ((before, True), (after, False)):
        if not shared:
            continue
        margin = shared // 4 * factor
        ramp = shared * factor - 2 * margin
        edge = torch.zeros(shared * factor, device=device)  # rising: this tile's left end
        edge[margin : margin + ramp] = (torch.arange(ramp, device=device) + 0.5) / ramp
        edge[margin + ramp :] = 1
        if rising:
            weight[: shared * factor] *= edge
        else:
            weight[weight.shape[0] - shared * factor :] *= edge.flip(0)
    return weight


@torch.no_grad()
def decode_tiled(
    model: object, tokens: Tokens | Tensor, tile: int = 32, overlap: int = 8
) -> Tensor:
    """Media from codes ``(b, levels, [T,] h, w)`` decoded in ``tile x tile`` *latent* tiles
    overlapping by ``overlap`` latent positions (even), blended as the module docs say:
    ``(b, 3, [frames,] h * f, w * f)`` in float32, ``f`` pixels per code."""
    codes = tokens.codes if isinstance(tokens, Tokens) else tokens
    f = _code_factor(model, "decode_tiled")
    step = _factor(model) // f  # code positions per input step (2 for hierarchical)
    tile, overlap = _check_sizes(tile, overlap, "decode_tiled")
    if overlap % 2:
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
            # Latent positions shared with the previous / next tile along each axis.
            top = spans_y[i - 1][1] - y0 if i > 0 else 0
            bottom = y1 - spans_y[i + 1][0] if i + 1 < len(spans_y) else 0
            left = spans_x[j - 1][1] - x0 if j > 0 else 0
            right = x1 - spans_x[j + 1][0] if j + 1 < len(spans_x) else 0
            weight = (
                _blend_weights(y1 - y0, top, bottom, f, piece.device)[:, None]
                * _blend_weights(x1 - x0, left, right, f, piece.device)[None]
            )
            output[..., y0 * f : y1 * f, x0 * f : x1 * f] += piece * weight
            total[y0 * f : y1 * f, x0 * f : x1 * f] += weight  # type: ignore[index]
    assert output is not None and total is not None
    return output / total


__all__ = ["decode_tiled", "encode_tiled"]
