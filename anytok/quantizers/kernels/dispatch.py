"""``nearest_codeword``: pick the fastest exact backend for the tensors at hand.

Backends:

* ``triton`` — the fused kernels of :mod:`anytok.quantizers.kernels.triton_search` (CUDA
  tensors; on the CPU only under ``TRITON_INTERPRET=1``, for testing).
* ``reference`` — the chunked pure-torch search (every device and dtype, fp64 included).

``auto`` (the default) takes Triton for CUDA tensors it supports and the reference for
everything else. The environment variable ``ANYTOK_KERNEL=auto|reference|triton`` forces a
choice; forcing ``triton`` on tensors it cannot take is an error that says why, never a silent
fallback.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from anytok.quantizers.kernels.reference import (
    DEFAULT_MEMORY_BUDGET,
    _check,
    nearest_codeword_reference,
)

ENV_VAR = "ANYTOK_KERNEL"
BACKENDS = ("auto", "reference", "triton")


def selected_backend() -> str:
    """The backend named by ``ANYTOK_KERNEL`` (``auto`` when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {BACKENDS}")
    return value


def _triton_reason(x: Tensor, codebook: Tensor) -> str | None:
    """Why the Triton backend cannot take these tensors (``None`` if it can).

    Imported lazily: importing Triton costs time and decides interpreter mode for good.
    """
    try:
        from anytok.quantizers.kernels import triton_search
    except ImportError as exc:  # pragma: no cover - broken Triton install
        return f"triton could not be imported ({exc})"
    return triton_search.unsupported_reason(x, codebook)


def backend_for(x: Tensor, codebook: Tensor) -> str:
    """The backend :func:`nearest_codeword` will use for these tensors: reference or triton."""
    choice = selected_backend()
    if choice == "reference":
        return "reference"
    if choice == "triton":
        reason = _triton_reason(x, codebook)
        if reason is not None:
            raise RuntimeError(f"nearest_codeword: {ENV_VAR}=triton, but {reason}")
        return "triton"
    # auto: only CUDA tensors go to Triton (the interpreter is for tests, never automatic).
    if x.is_cuda and codebook.is_cuda and _triton_reason(x, codebook) is None:
        return "triton"
    return "reference"


def nearest_codeword(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "euclidean",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Index of the nearest codeword for every vector — the search every VQ quantizer calls.

    Args:
        x: ``(..., D)`` vectors; with a grouped codebook ``(G, ..., D)``. Any float dtype and
            strides.
        codebook: ``(K, D)``, or ``(G, K, D)`` for G independent codebooks.
        metric: ``"euclidean"`` (smallest squared distance), ``"cosine"`` (largest cosine
            similarity) or ``"dot"`` (largest inner product).
        memory_budget: bytes of one score block (rows x codewords) and the chunk of ``x`` it
            scores, together, on the reference path; the Triton path never materialises
            scores and uses O(N + K) extra memory regardless.

    Returns:
        int64 indices of shape ``x.shape[:-1]``, equal to the argmin of fp32 distances (fp64
        for fp64 inputs) except where two codewords tie within fp32 rounding; exact ties go
        to the lowest index.
    """
    _check(x, codebook, metric)
    if backend_for(x, codebook) == "triton":
        return _triton(x, codebook, metric)
    return nearest_codeword_reference(x, codebook, metric=metric, memory_budget=memory_budget)


@torch.library.custom_op("anytok::nearest_codeword_triton", mutates_args=())
def _triton_op(x: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """The Triton search as a custom op: opaque to ``torch.compile``.

    Dynamo and inductor see one op with a known output shape (the fake implementation
    below), so compiled models keep ``fullgraph=True``; autotuning, atomics and the
    device-side lists stay inside, out of the graph.
    """
    from anytok.quantizers.kernels.triton_search import nearest_codeword_triton

    return nearest_codeword_triton(x, codebook, metric=metric)  # type: ignore[return-value]


@_triton_op.register_fake
def _(x: Tensor, codebook: Tensor, metric: str) -> Tensor:
    return x.new_empty(x.shape[:-1], dtype=torch.long)


def _triton(x: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """The Triton search (indices carry no gradient, so inputs are detached)."""
    return _triton_op(x.detach(), codebook.detach(), metric)


def bin_counts(indices: Tensor, num_bins: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Histogram ``(num_bins,)`` in ``dtype`` of integer ``indices`` (any shape, each in
    ``[0, num_bins)``, unchecked).

    Not ``torch.bincount``: it sizes its output from ``indices.max()``, a device-to-host copy
    on CUDA, so every training step that counts codes would stall the launch queue. An
    ``index_add_`` of ones into a histogram of known size never waits for the device, and
    counts are exact in any summation order (integers below 2^24 in fp32).
    """
    flat = indices.reshape(-1).long()
    ones = torch.ones((), dtype=dtype, device=flat.device).expand(flat.numel())
    return torch.zeros(num_bins, dtype=dtype, device=flat.device).index_add_(0, flat, ones)


def codeword_counts_and_sums(
    x: Tensor, indices: Tensor, num_codes: int, *, grouped: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-codeword hit counts and vector sums — the statistics of a VQ EMA update.

    Two ``index_add_`` passes (never a one-hot ``N x K`` matrix), accumulated in
    fp32 (fp64 for fp64 input). A fused Triton kernel would save little: both are single
    memory-bound passes over ``x``, so this stays plain torch on every device.

    Args:
        x: ``(..., D)`` vectors; with ``grouped=True``, ``(G, ..., D)``.
        indices: integer codes of shape ``x.shape[:-1]``, each in ``[0, num_codes)``
            (unchecked: checking would synchronise the device).
        num_codes: K, the codebook size (per group).
        grouped: the leading dimension of ``x`` and ``indices`` indexes G codebooks.

    Returns:
        ``(counts, sums)`` of shapes ``(K,)`` and ``(K, D)``, or ``(G, K)`` and ``(G, K, D)``.
    """
    if indices.shape != x.shape[:-1]:
        raise ValueError(
            f"codeword_counts_and_sums: indices {tuple(indices.shape)} must equal x's shape "
            f"without its last dim {tuple(x.shape[:-1])}"
        )
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dim = x.shape[-1]
    groups = x.shape[0] if grouped else 1
    idx = indices.reshape(groups, -1).long()
    if grouped:  # one flat histogram over G * K bins
        idx = idx + torch.arange(groups, device=idx.device).unsqueeze(1) * num_codes
    idx = idx.reshape(-1)
    counts = bin_counts(idx, groups * num_codes, acc)
    sums = torch.zeros(groups * num_codes, dim, dtype=acc, device=x.device)
    sums.index_add_(0, idx, x.reshape(-1, dim).to(acc))
    if grouped:
        return counts.reshape(groups, num_codes), sums.reshape(groups, num_codes, dim)
    return counts, sums
