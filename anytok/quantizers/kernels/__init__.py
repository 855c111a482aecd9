"""Nearest-codeword search: the one function every VQ-style quantizer calls.

``nearest_codeword(x, codebook)`` returns the index of the closest codeword for every vector.
On the CPU (and as the test oracle) it is a chunked pure-torch search whose memory is
bounded; the fused Triton kernels for CUDA plug in behind the same function.
"""

from anytok.quantizers.kernels.reference import nearest_codeword, nearest_codeword_reference

__all__ = ["nearest_codeword", "nearest_codeword_reference"]
