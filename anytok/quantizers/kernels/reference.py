"""Pure-torch nearest-codeword search: chunked, bounded memory, the test oracle.

It is also the CPU backend, so it is tuned for speed there: one fused ``addmm`` per chunk
(``||c||^2 - 2 x c^T`` in a single pass instead of matmul, scale and add), a score buffer
reused across chunks, and chunks sized to stay in cache while keeping enough
rows for an efficient GEMM. ``torch.cdist(x, c).argmin(-1)`` does strictly more work (norms of
``x``, clamp, sqrt, one N x K matrix), and ``docs/kernels.md`` records the measured timings.
"""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("euclidean", "cosine", "dot")

#: Default bound on the size of one chunk's distance block, in bytes.
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024

#: Preferred size of one chunk's score block, so that the argmin reads what the GEMM just
#: wrote from cache. For ``D >= _GEMM_DIM`` the GEMM dominates and chunks never go below
#: ``_MIN_ROWS`` rows on the cache's account (a GEMM with a handful of rows re-reads the
#: codebook for little work: 256 rows lost to ``cdist + argmin`` at K >= 16384). Below it the
#: argmin dominates and cache-sized blocks win: 4 MiB blocks ran 1.4-2x faster than 16 MiB
#: ones at D = 8 and 16 (``benchmarks/results/nearest_codeword_cpu/``).
_CACHE_BLOCK = 4 * 1024 * 1024
_MIN_ROWS = 2048
_GEMM_DIM = 64


def _check(x: Tensor, codebook: Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"nearest_codeword: metric must be one of {METRICS}, got {metric!r}")
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
    if codebook.shape[-2] == 0 and x.numel() > 0:
        raise ValueError(f"nearest_codeword: the codebook has no codewords {tuple(codebook.shape)}")


def _squared_norms(codebook: Tensor, max_elements: int) -> Tensor:
    """``(G, K, D) -> (G, 1, K)`` squared norms, ``pow(2).sum(-1)`` over slices of at most
    ``max_elements`` (one whole ``pow(2)`` is a codebook-sized temporary; each row's sum is the
    same whatever the slicing, so the values are bit-identical)."""
    groups, k, dim = codebook.shape
    norms = torch.empty(groups, 1, k, dtype=codebook.dtype, device=codebook.device)
    rows = max(1, max_elements // max(groups * dim, 1))
    for start in range(0, k, rows):
        norms[:, 0, start : start + rows] = codebook[:, start : start + rows].pow(2).sum(-1)
    return norms


def chunk_rows(n: int, row_bytes: int, memory_budget: int, dim: int) -> int:
    """Rows per chunk of ``dim``-wide vectors: cache-sized if possible (at least ``_MIN_ROWS``
    for GEMM-bound widths), never over ``memory_budget``, at least 1."""
    floor = _MIN_ROWS if dim >= _GEMM_DIM else 1
    rows = max(_CACHE_BLOCK // max(row_bytes, 1), floor)
    rows = min(rows, memory_budget // max(row_bytes, 1))
    return max(1, min(n, rows))


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
        memory_budget: bound in bytes on one chunk's ``chunk x K`` score block.

    Returns:
        int64 indices of shape ``x.shape[:-1]``; ties go to the lowest index.
    """
    _check(x, codebook, metric)
    compute = torch.float64 if torch.float64 in (x.dtype, codebook.dtype) else torch.float32
    grouped = codebook.ndim == 3
    lead = x.shape[:-1]
    dim = x.shape[-1]
    xs = (
        x.detach().reshape(codebook.shape[0], -1, dim)
        if grouped
        else x.detach().reshape(1, -1, dim)
    )
    cb = codebook.detach() if grouped else codebook.detach().unsqueeze(0)
    cb = cb.to(compute)
    if metric == "cosine":
        cb = torch.nn.functional.normalize(cb, dim=-1)
    groups, n, _ = xs.shape
    k = cb.shape[1]
    out = torch.empty(groups, n, dtype=torch.long, device=x.device)
    if n == 0:
        return out.reshape(lead)
    cbt = cb.transpose(1, 2)
    # Euclidean: minimise ||c||^2 - 2 x.c (||x||^2 is the same for every codeword), fused into
    # one baddbmm. Cosine/dot: maximise x.c directly — argmax keeps the first maximum, exactly
    # as argmin of the negated scores would, without a negation pass.
    element_bytes = torch.finfo(compute).bits // 8
    bias = _squared_norms(cb, memory_budget // element_bytes) if metric == "euclidean" else None
    row_bytes = k * groups * element_bytes
    chunk = chunk_rows(n, row_bytes, memory_budget, dim)
    scores = torch.empty(groups, chunk, k, dtype=compute, device=x.device)
    for start in range(0, n, chunk):
        xc = xs[:, start : start + chunk].to(compute)
        block = scores[:, : xc.shape[1]]
        if metric == "cosine":
            xc = torch.nn.functional.normalize(xc, dim=-1)
        if bias is not None:
            torch.baddbmm(bias, xc, cbt, beta=1, alpha=-2, out=block)
            out[:, start : start + chunk] = block.argmin(-1)
        else:
            torch.bmm(xc, cbt, out=block)
            out[:, start : start + chunk] = block.argmax(-1)
    return out.reshape(lead)
