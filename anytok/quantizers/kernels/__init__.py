"""Nearest-codeword search: the one function every VQ-style quantizer calls.

``nearest_codeword(x, codebook, metric=...)`` returns the index of the closest codeword for
every vector. On CUDA it runs fused Triton kernels (distance GEMM + running argmin, never an
N x K matrix, exact w.r.t. fp32 distances); elsewhere a chunked pure-torch search with
bounded memory, which is also the test oracle (``nearest_codeword_reference``). Set
``ANYTOK_KERNEL=reference|triton|auto`` to force a backend. See ``docs/kernels.md``.
"""

from anytok.quantizers.kernels.dispatch import (
    backend_for,
    bin_counts,
    codeword_counts_and_sums,
    nearest_codeword,
)
from anytok.quantizers.kernels.reference import nearest_codeword_reference

__all__ = [
    "backend_for",
    "bin_counts",
    "codeword_counts_and_sums",
    "nearest_codeword",
    "nearest_codeword_reference",
]
