"""Quantizers behind one contract (see :mod:`anytok.quantizers.base`), buildable by name."""

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    build,
    list_quantizers,
    register_quantizer,
)
from anytok.quantizers.kernels import nearest_codeword

# --- VQ family (vq.py, residual.py, multiscale.py)

# --- scalar / lookup-free family (fsq.py, lfq.py, bsq.py, binary.py, dimwise.py)

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "build",
    "list_quantizers",
    "nearest_codeword",
    "register_quantizer",
]
