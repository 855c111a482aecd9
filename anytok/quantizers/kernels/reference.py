"""Pure-torch nearest-codeword search: chunked, bounded memory, the test oracle."""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("euclidean", "cosine", "dot")

#: Default bound on the size of one chunk's distance block, in bytes.
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024


def _check(x: Tensor, codebook: Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"nearest_codeword: metric must be one of {METRICS}, got {metric!r}")
    if x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"nearest_codeword: vectors have dim {x.shape[-1]} but codewords have dim "
            f"{codebook.shape[-1]} (x {tuple(x.shape)}, codebook {tuple(codebook.shape)})"
        )
    if codebook.ndim not in (2, 3):
        raise ValueError(
            "nearest_codeword: codebook must be (K, D) or (G, K, D) for G groups, got "
            f"{tuple(codebook.shape)}"
        )
    if codebook.ndim == 3 and (x.ndim < 2 or x.shape[0] != codebook.shape[0]):
        raise ValueError(
            f"nearest_codeword: grouped codebook {tuple(codebook.shape)} needs x (G, ..., D) "
            f"with G={codebook.shape[0]}, got {tuple(x.shape)}"
        )


def _scores(x: Tensor, codebook: Tensor, code_sq: Tensor | None, metric: str) -> Tensor:
    """Score to *minimise*: ``||c||^2 - 2 x.c`` (euclidean, ``||x||^2`` dropped), ``-x.c``."""
    dots = x @ codebook.transpose(-1, -2)
    if metric == "euclidean":
        return code_sq.unsqueeze(-2) - 2 * dots
    return -dots


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
        int64 indices of shape ``x.shape[:-1]``.
    """
    _check(x, codebook, metric)
    compute = torch.float64 if torch.float64 in (x.dtype, codebook.dtype) else torch.float32
    grouped = codebook.ndim == 3
    lead = x.shape[:-1]
    dim = x.shape[-1]
    xs = x.reshape(codebook.shape[0], -1, dim) if grouped else x.reshape(1, -1, dim)
    cb = codebook if grouped else codebook.unsqueeze(0)
    cb = cb.to(compute)
    if metric == "cosine":
        cb = torch.nn.functional.normalize(cb, dim=-1)
    code_sq = cb.pow(2).sum(-1) if metric == "euclidean" else None
    groups, n, _ = xs.shape
    k = cb.shape[1]
    bytes_per_row = k * groups * torch.finfo(compute).bits // 8
    chunk = max(1, min(n, memory_budget // max(bytes_per_row, 1)))
    out = torch.empty(groups, n, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        xc = xs[:, start : start + chunk].to(compute)
        if metric == "cosine":
            xc = torch.nn.functional.normalize(xc, dim=-1)
        out[:, start : start + chunk] = _scores(xc, cb, code_sq, metric).argmin(-1)
    return out.reshape(lead)


def nearest_codeword(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "euclidean",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """The search every VQ-style quantizer calls (dispatches to the fastest exact backend).

    Same arguments and result as :func:`nearest_codeword_reference`.
    """
    return nearest_codeword_reference(x, codebook, metric=metric, memory_budget=memory_budget)
