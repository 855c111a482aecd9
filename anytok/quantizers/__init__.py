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
from anytok.quantizers.multiscale import MultiScaleResidualVQ
from anytok.quantizers.residual import GroupedResidualVQ, ResidualVQ, SplitResidualVQ
from anytok.quantizers.vq import SimVQ, VectorQuantize

# --- scalar / lookup-free family (fsq.py, lfq.py, bsq.py, binary.py, dimwise.py)
# isort: split
from anytok.quantizers.binary import BinaryQuantizer
from anytok.quantizers.dimwise import DimensionWiseQuantizer
from anytok.quantizers.fsq import FSQ, ResidualFSQ
from anytok.quantizers.lfq import BSQ, LFQ, GroupLFQ

__all__ = [
    "BSQ",
    "FSQ",
    "LFQ",
    "BinaryQuantizer",
    "DimensionWiseQuantizer",
    "GroupLFQ",
    "GroupedResidualVQ",
    "MultiScaleResidualVQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualFSQ",
    "ResidualVQ",
    "SimVQ",
    "SplitResidualVQ",
    "VectorQuantize",
    "build",
    "list_quantizers",
    "nearest_codeword",
    "register_quantizer",
]
