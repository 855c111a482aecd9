"""Pure-torch nearest-codeword search: chunked, bounded memory, the test oracle.

It is also the CPU backend, so it is tuned for speed there: one fused ``addmm`` per chunk
(``||c||^2 - 2 x c^T`` in a single pass instead of matmul, scale and add), a score buffer
reused across chunks, and chunks sized to stay in cache while keeping enough
rows for an efficient GEMM. ``torch.cdist(x, c).argmin(-1)`` does strictly more work (norms of
``x``, clamp, sqrt, one N x K matrix), and ``docs/kernels.md`` records the measured timings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

METRICS = ("euclidean", "cosine", "dot")

#: Default bound on the size of one chunk's distance block, in bytes.
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024

#: Preferred size of one chunk's score block, so that the min reads what the GEMM just
#: wrote from cache. For ``D >= _GEMM_DIM`` the GEMM dominates and a block keeps at least
#: ``_MIN_ROWS`` rows on the cache's account (a GEMM with a handful of rows re-reads the
#: codebook for little work: 256 rows lost to ``cdist + argmin`` at K >= 16384). Below it the
#: min dominates and cache-sized blocks win: 4 MiB blocks ran 1.4-2x faster than 16 MiB
#: ones at D = 8 and 16 (``benchmarks/results/nearest_codeword_cpu/``).
_CACHE_BLOCK = 4 * 1024 * 1024
_MIN_ROWS = 2048
_GEMM_DIM = 64
#: Rows a block keeps for ``D < _GEMM_DIM`` before the codebook is split instead.
_MIN_ROWS_SMALL_DIM = 64
#: Fewest codewords per codebook slice before rows are given up instead.
_MIN_SLICE = 256
#: Codebook slices are cut to a multiple of this many codewords when they hold more.
_SLICE_ALIGN = 64


def _check(x: Tensor, codebook: Tensor, metric: str) -> None:
    """Raise a clear error for arguments the search cannot take, naming the argument."""
    if metric not in METRICS:
        raise ValueError(f"nearest_codeword: metric must be one of {METRICS}, got {metric!r}")
    for name, value in (("x", x), ("codebook", codebook)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"nearest_codeword: {name} must be a tensor, got {type(value).__name__}"
            )
        if not value.is_floating_point():  # integer / bool / complex: no distances to rank
            raise TypeError(
                f"nearest_codeword: {name} must be a float tensor (fp32 / bf16 / fp16 / fp64), "
                f"got {value.dtype}"
            )
    if x.ndim == 0:
        raise ValueError("nearest_codeword: x must be (..., D) vectors, got a 0-d tensor")
    if x.device != codebook.device:
        raise ValueError(
            f"nearest_codeword: x is on {x.device} but the codebook is on {codebook.device}; "
            "move them to one device"
        )
    if codebook.ndim not in (2, 3):
        raise ValueError(
            "nearest_codeword: codebook must be (K, D) or (G, K, D) for G groups, got "
            f"{tuple(codebook.shape)}"
        )
    if x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"nearest_codeword: vectors have dim {x.shape[-1]} but codewords have dim "
            f"{codebook.shape[-1]} (x {tuple(x.shape)}, codebook {tuple(codebook.shape)})"
        )
    if codebook.ndim == 3 and (x.ndim < 2 or x.shape[0] != codebook.shape[0]):
        raise ValueError(
            f"nearest_codeword: grouped codebook {tuple(codebook.shape)} needs x (G, ..., D) "
            f"with G={codebook.shape[0]}, got {tuple(x.shape)}"
        )
    if codebook.shape[-2] == 0 and math.prod(x.shape[:-1]) > 0:  # rows, even of D = 0
        raise ValueError(f"nearest_codeword: the codebook has no codewords {tuple(codebook.shape)}")


def _squared_norms(codebook: Tensor, max_elements: int, centre: Tensor) -> Tensor:
    """``(G, K, D) -> (G, 1, K)`` squared norms of ``codebook - centre`` (``centre`` ``(G, 1,
    D)``) over slices of at most ``max_elements`` (whole, it is a codebook-sized temporary;
    each row's sum is the same whatever the slicing, so the values are bit-identical)."""
    groups, k, dim = codebook.shape
    norms = torch.empty(groups, 1, k, dtype=codebook.dtype, device=codebook.device)
    rows = max(1, max_elements // max(groups * dim, 1))
    for start in range(0, k, rows):  # one expression: the last slice's temporary is freed
        norms[:, 0, start : start + rows] = (
            (codebook[:, start : start + rows] - centre).pow_(2).sum(-1)
        )
    return norms


def block_shape(
    n: int, k: int, groups: int, dim: int, element_bytes: int, memory_budget: int
) -> tuple[int, int]:
    """``(rows, codewords)`` of one score block: all ``k`` codewords and cache-sized row
    chunks where that keeps enough rows for the GEMM (``_MIN_ROWS`` for ``dim >=
    _GEMM_DIM``, else ``_MIN_ROWS_SMALL_DIM``); otherwise that many rows against codebook
    slices, so a tight ``memory_budget`` or a huge ``k`` still runs efficient GEMMs. A block
    and the chunk of ``x`` it scores (``rows x dim``: the search centres, normalises or
    converts it) never hold more than ``memory_budget`` bytes together (one row against one
    codeword at the least)."""
    column_bytes = groups * element_bytes  # one score (or one x element) of every group
    row_bytes = (k + dim) * column_bytes  # a row's scores and its copy of x
    gemm_bound = dim >= _GEMM_DIM
    rows = max(_CACHE_BLOCK // (k * column_bytes), _MIN_ROWS if gemm_bound else 1)
    rows = min(n, rows, memory_budget // row_bytes)
    floor = min(n, _MIN_ROWS if gemm_bound else _MIN_ROWS_SMALL_DIM)
    if rows >= floor:
        return rows, k
    rows = floor
    budget_elements = max(memory_budget // column_bytes, 1)  # of one group: block + x chunk
    slice_min = min(k, _MIN_SLICE)
    if budget_elements < rows * (slice_min + dim):
        rows = max(1, budget_elements // (slice_min + dim))
    width = budget_elements // rows - dim
    if not gemm_bound:  # the min dominates: keep the block cache-sized too
        width = min(width, _CACHE_BLOCK // column_bytes // rows)
    if _SLICE_ALIGN <= width < k:  # whole GEMM tiles: no ragged edge in every slice
        width -= width % _SLICE_ALIGN
    return rows, max(1, min(k, width))


def codebook_centre(codebook: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The point a euclidean search is centred on: the mean of the codebook's rows in
    ``dtype``, ``(..., K, D) -> (..., D)``, with non-finite entries replaced by 0 (such
    codewords keep their NaN rule)."""
    return torch.nan_to_num(codebook.mean(-2, dtype=dtype), nan=0.0, posinf=0.0, neginf=0.0)


def nearest_codeword_reference(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "euclidean",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Index of the nearest codeword for every vector, in fp32 (fp64 if given fp64).

    Args:
        x: ``(..., D)`` vectors; with a grouped codebook ``(G, ..., D)``.
        codebook: ``(K, D)``, or ``(G, K, D)`` for G independent codebooks.
        metric: ``"euclidean"`` (smallest squared distance), ``"cosine"`` (largest cosine
            similarity; inputs are normalised here) or ``"dot"`` (largest inner product).
        memory_budget: bound in bytes on one score block (a chunk of rows against all
            codewords, or against a slice of the codebook when all would not fit) together
            with the chunk of ``x`` it scores.

    Returns:
        int64 indices of shape ``x.shape[:-1]``; equal scores go to the lowest index
        (bit-identical codewords may score one rounding apart: the GEMM computes edge rows
        and columns through other micro-kernels, so either can win; docs/kernels.md).
    """
    _check(x, codebook, metric)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int):
        raise TypeError(
            f"nearest_codeword: memory_budget must be an int (bytes), got {memory_budget!r}"
        )
    compute = torch.float64 if torch.float64 in (x.dtype, codebook.dtype) else torch.float32
    grouped = codebook.ndim == 3
    lead = x.shape[:-1]
    dim = x.shape[-1]
    count = math.prod(lead[1:]) if grouped else math.prod(lead)  # explicit: -1 fails at D = 0
    xs = x.detach().reshape(codebook.shape[0] if grouped else 1, count, dim)
    cb = codebook.detach() if grouped else codebook.detach().unsqueeze(0)
    cb = cb.to(compute)
    if metric == "cosine":
        cb = torch.nn.functional.normalize(cb, dim=-1)
    groups, n, _ = xs.shape
    k = cb.shape[1]
    out = torch.empty(groups, n, dtype=torch.long, device=x.device)
    if n == 0:
        return out.reshape(lead)
    # Euclidean: minimise ||c||^2 - 2 x.c (||x||^2 is the same for every codeword; both
    # centred below), fused into one baddbmm. Cosine/dot: maximise x.c directly — max keeps the first maximum, exactly
    # as a min of the negated scores would, without a negation pass. ``min(-1).indices`` is
    # argmin with the same first-index ties and NaN rule, and ran 25-30% faster than
    # ``argmin`` on the CPU (torch 2.11, 1 and 2 threads, 64-4096 rows x 1024-16384 codes).
    element_bytes = torch.finfo(compute).bits // 8
    bias = centre = None
    if metric == "euclidean":
        # Translation invariant: with m the codebook mean, rank ||c - m||^2 - 2 (x - m).c
        # (= ||x - c||^2 - ||x - m||^2 + a per-row constant). Data with a large common offset
        # made ||c||^2 - 2 x.c cancel in fp32 (offset 1000, spread 0.05: 1972 of 2000 rows
        # wrong). m costs one pass over the codebook (a reduction, no copy), the norms
        # subtract it slice by slice, and each chunk of x subtracts it: no codebook-sized
        # temporary, so the memory bound holds. Non-finite means count as 0 (such codewords
        # keep their NaN rule).
        centre = codebook_centre(cb, compute).unsqueeze(1)
        bias = _squared_norms(cb, memory_budget // element_bytes, centre)
    cbt = cb.transpose(1, 2)
    rows, width = block_shape(n, k, groups, dim, element_bytes, memory_budget)
    buffer = torch.empty(groups * rows * width, dtype=compute, device=x.device)
    # running best score per row, across codebook slices (none when a block spans them all)
    best = torch.empty(groups, rows, dtype=compute, device=x.device) if width < k else None
    # One x chunk buffer, counted in the budget, for the centred / normalised / converted copy
    # (a fresh tensor per chunk kept two alive while the next one was computed).
    copied = centre is not None or metric == "cosine" or xs.dtype != compute
    x_buffer = torch.empty(groups, rows, dim, dtype=compute, device=x.device) if copied else None
    for start in range(0, n, rows):
        xc = xs[:, start : start + rows]
        if x_buffer is not None:
            xc = x_buffer[:, : xc.shape[1]].copy_(xc)
        if centre is not None:
            xc.sub_(centre)
        if metric == "cosine":  # F.normalize's arithmetic, in place
            xc.div_(xc.norm(dim=-1, keepdim=True).clamp_min_(1e-12))
        chunk = out[:, start : start + rows]
        for k0 in range(0, k, width):
            k1 = min(k, k0 + width)
            block = buffer[: groups * xc.shape[1] * (k1 - k0)].view(groups, xc.shape[1], k1 - k0)
            if bias is not None:
                torch.baddbmm(bias[..., k0:k1], xc, cbt[..., k0:k1], beta=1, alpha=-2, out=block)
                values, indices = block.min(-1)
            else:
                torch.bmm(xc, cbt[..., k0:k1], out=block)
                values, indices = block.max(-1)
            if k0 == 0:
                chunk.copy_(indices)
                if best is not None:
                    best[:, : xc.shape[1]].copy_(values)
                continue
            running = best[:, : xc.shape[1]]
            # Strictly better only, so exact ties keep the earlier slice (the lowest index);
            # a NaN score wins over numbers, as in argmin/argmax, and the first NaN stays.
            better = values < running if bias is not None else values > running
            better |= values.isnan() & ~running.isnan()
            running.copy_(torch.where(better, values, running))
            chunk.copy_(torch.where(better, indices + k0, chunk))
    return out.reshape(lead)
