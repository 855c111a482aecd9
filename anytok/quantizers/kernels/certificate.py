"""A pure-torch model of the Triton search's exactness certificate (CPU, no Triton needed).

The fused kernels (:mod:`anytok.quantizers.kernels.triton_search`) rank codewords with 16-bit
tensor-core operands and certify a row when its runner-up is more than ``2 E`` behind the
winner, ``E`` being a rigorous bound on the operand and accumulation error. Rows without a
certificate cost a second low-precision pass plus an exact re-rank. This module evaluates the
same bound and the same test with torch on any device, so the fraction of rows that need the
second pass can be predicted for a dataset, or for an operand format the kernels do not use
(``"bf16"``), without a GPU. ``tests/test_kernels.py`` checks it against the kernels' own
count under ``TRITON_INTERPRET=1``; ``benchmarks/certificate_rate.py`` tabulates it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anytok.quantizers.kernels.reference import METRICS, codebook_centre

#: Operand formats: the inputs' own 16-bit dtype, bf16, or fp16 scaled per row by 2^e.
OPERANDS = ("bf16", "fp16_scaled", "exact16")

_U32 = 2.0**-24
_SIXTEEN_BIT = (torch.bfloat16, torch.float16)
#: The largest power of two the kernels scale a row up by (``_pow2_scales``): the search folds
#: a row block's and a codeword's inverse scales into one factor, which two inverses of at
#: least 2^-49 keep a normal fp32 number. Rows whose peak is below 2^-35 keep fewer bits.
MAX_UPSCALE_EXP = 49
#: The bound's absolute term for the epilogue's roundings of subnormal scores (2^-146).
SUBNORMAL_SLACK = 2.0**-146


def scaled_fp16(t: Tensor) -> Tensor:
    """``fp16(t * 2^e) * 2^-e`` per row (last dim), ``max |t * 2^e|`` in ``[2^14, 2^15)``.

    The operand values the kernels read for non-16-bit inputs, in true units, fp32. Shapes
    are kept. ``e`` lies in ``[-126, MAX_UPSCALE_EXP]``, as in the kernels.
    """
    t = t.float()
    peak = t.abs().amax(-1, keepdim=True)
    _, exponent = torch.frexp(peak)  # peak in [2^(e-1), 2^e)
    shift = (15 - exponent.to(torch.int32)).clamp(-126, MAX_UPSCALE_EXP)
    shift = torch.where(peak > 0, shift, torch.full_like(shift, MAX_UPSCALE_EXP))
    mult = torch.ldexp(torch.ones_like(peak), shift.float())
    return (t * mult).half().float() / mult


def operand_values(t: Tensor, operand: str) -> Tensor:
    """The values the tensor cores read for ``t`` under ``operand``, as fp32."""
    if operand == "bf16":
        return t.to(torch.bfloat16).float()
    if operand == "fp16_scaled":
        return scaled_fp16(t)
    if operand == "exact16":
        if t.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"operand 'exact16' needs bf16/fp16 input, got {t.dtype}")
        return t.float()
    raise ValueError(f"operand must be one of {OPERANDS}, got {operand!r}")


def operand_dtype(x_dtype: torch.dtype, c_dtype: torch.dtype) -> torch.dtype:
    """The tensor-core operand dtype the kernels use: the inputs' own when both are bf16 or
    both fp16.

    Anything else (fp32, mixed) gets fp16 operands scaled per row by powers of two: 11-bit
    precision (8x finer than bf16's 8 bits, so far fewer rows need re-ranking) without
    fp16's range limits.
    """
    if x_dtype == c_dtype and x_dtype in (torch.bfloat16, torch.float16):
        return x_dtype
    return torch.float16


def kernel_operand(dtype_x: torch.dtype, dtype_c: torch.dtype) -> str:
    """The operand format (one of :data:`OPERANDS`) the kernels use for these dtypes."""
    return "exact16" if operand_dtype(dtype_x, dtype_c) == dtype_x == dtype_c else "fp16_scaled"


def search_centre(codebook: Tensor, x_dtype: torch.dtype) -> Tensor:
    """The point a euclidean search with rounded operands is centred on, fp32
    ``(..., K, D) -> (..., D)``: the codebook mean (:func:`codebook_centre`).

    A 16-bit input is exact as a scaled fp16 operand, but its centred values are not: for
    such inputs the centre is used only where the mean's squared norm exceeds the
    codebook's total variance (the offset outweighs the spread), and is 0 otherwise, which
    leaves those operands exact (a non-finite mean or variance gives 0 too). Decided on the
    device, per group: no host synchronisation.
    """
    if x_dtype not in _SIXTEEN_BIT and codebook.dtype not in _SIXTEEN_BIT:
        return codebook_centre(codebook)
    # one pass for both; the mean in the codebook's dtype is close enough to centre on (any
    # centre gives the same argmin), and a non-finite mean or variance fails the comparison
    spread, centre = torch.var_mean(codebook, dim=-2, correction=0)
    centre = centre.float()
    offset = centre.square().sum(-1, keepdim=True)
    return torch.where(offset > spread.float().sum(-1, keepdim=True), centre, 0.0)


def ambiguous_rows(
    x: Tensor,
    codebook: Tensor,
    metric: str = "euclidean",
    operand: str | None = None,
    chunk: int = 4096,
    centred: bool | None = None,
) -> Tensor:
    """Rows of ``x`` ``(N, D)`` the kernels could not certify: bool ``(N,)``.

    ``codebook`` is ``(K, D)``; ``operand`` defaults to what the kernels pick for the dtypes.
    ``centred`` (default: as the kernels, for a euclidean search with rounded operands)
    subtracts :func:`search_centre` from both sides first. Follows the kernel's bound term
    by term (see ``docs/kernels.md``); only the summation order of the low-precision dot
    products differs, which moves rows whose gap sits right at the threshold.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"need x (N, D) and codebook (K, D), got {x.shape} and {codebook.shape}")
    if codebook.shape[0] < 2:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    operand = operand or kernel_operand(x.dtype, codebook.dtype)
    if centred is None:
        centred = metric == "euclidean" and operand != "exact16"
    elif centred and (metric != "euclidean" or operand == "exact16"):
        raise ValueError("centred: only a euclidean search with rounded operands is centred")
    centre = search_centre(codebook, x.dtype) if centred else None
    d = x.shape[1]
    c = codebook.float() if centre is None else codebook.float() - centre
    ct = operand_values(c if centred else codebook, operand)
    c_norm = c.norm(dim=-1)
    if metric == "euclidean":
        a, b = torch.full_like(c_norm, -2.0), c_norm**2
    elif metric == "cosine":
        a, b = -1.0 / c_norm.clamp_min(1e-12), torch.zeros_like(c_norm)
    else:
        a, b = torch.full_like(c_norm, -1.0), torch.zeros_like(c_norm)
    gamma = d * 2.0**-23 + 2.0**-20
    p = (a.abs() * (c - ct).norm(dim=-1)).max()
    q = (a.abs() * c_norm).max()
    t = (a.abs() * ct.norm(dim=-1)).max()
    big_b = b.abs().max()
    out = []
    for start in range(0, x.shape[0], chunk):
        xf = x[start : start + chunk].float()
        if centre is not None:
            xf = xf - centre
        xt = operand_values(xf if centred else x[start : start + chunk], operand)
        xt_norm, rx_norm = xt.norm(dim=-1), (xf - xt).norm(dim=-1)
        err = xt_norm * (p + gamma * t) + rx_norm * q + gamma * big_b
        err = err + 4 * _U32 * (big_b + (1 + gamma) * t * xt_norm)
        if centred:  # the fp32 roundings of x - m and c - m
            err = err + 2 * _U32 * (big_b + q * (xt_norm + rx_norm))
        err = err * (1 + 2.0**-8)
        err = err + SUBNORMAL_SLACK
        scores = torch.addmm(b, xt, (ct * a[:, None]).T)
        best2 = scores.topk(2, dim=-1, largest=False).values
        out.append(~(best2[:, 1] > best2[:, 0] + 2 * err))
    return torch.cat(out)
