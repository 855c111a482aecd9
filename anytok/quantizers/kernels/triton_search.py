"""Fused Triton nearest-codeword search: GEMM + running argmin, exact w.r.t. fp32 distances.

Shapes: ``x`` is ``(G, N, D)`` (``G = 1`` for a plain ``(K, D)`` codebook), ``codebook`` is
``(G, K, D)``; the result is int64 ``(G, N)``. Every metric is written as one *score to
minimise* per codeword ``k``::

    s_k(x) = b_k + a_k * <x, c_k>
    euclidean: a_k = -2,                     b_k = ||c_k||^2   (||x||^2 is the same for all k)
    dot:       a_k = -1,                     b_k = 0
    cosine:    a_k = -1 / max(||c_k||, eps), b_k = 0           (||x|| does not change the argmin)

so the kernels only ever need the dot product plus two ``(K,)`` vectors ``a`` and ``b``.

Centring: a euclidean search whose operands are rounded (scaled fp16, below: every dtype
pair but two 16-bit inputs of one dtype) ranks ``x - m`` against ``c_k - m``, with ``m`` the
codebook's mean (non-finite entries 0; for a 16-bit ``x`` or codebook, which scaled fp16
holds exactly and ``x - m`` would not, ``m = 0`` unless the mean's squared norm exceeds the
codebook's total variance: :func:`~anytok.quantizers.kernels.certificate.search_centre`).
The argmin is the same, but the operand rounding,
and with it the error bound ``E`` below, then scales with the data's spread around ``m``
instead of its distance from the origin: with a common offset three times the spread,
33-59% of the rows of the anchor sizes (fp32) were left to the re-rank, 4-13% when centred
(as with no offset), and with an offset of ten nearly all
(``benchmarks/results/certificate_rate_cpu``). ``m`` costs one
reduction over the codebook; the statistics and staging kernels subtract it as they read,
and so do the in-kernel conversions, so the default policy's inner loop is unchanged.
Two 16-bit inputs of one dtype are not centred: they are read exactly, which ``x - m``
would not be.

Operands (:func:`operand_dtype`): when both inputs are bf16, or both fp16, the tensor cores
read them as they are (exact). Otherwise (fp32, mixed) they read fp16 scaled per row by a
power of two, ``lp(v) = fp16(v * 2^e) * 2^-e`` with ``max |v * 2^e|`` in ``[2^14, 2^15)``
(``e <= 49``, see :func:`_pow2_scales`): fp16's 11-bit significand (8x finer than bf16)
without its range limits. The scales are
exact, so they only move where the accumulator is rescaled (per row and per column in the
epilogue); ``benchmarks/certificate_rate.py`` shows 5-8x fewer uncertified rows than bf16.

Pipeline (four launches, five when ``x`` is staged, one more when the codebook is split,
plus the centre's small torch reductions when centred; no host synchronisation, never an
N x K buffer):

0. Staging (:func:`stage_policy`, default ``auto``): a 16-bit copy of the codebook, rows
   zero-padded to a multiple of 16, unless it already is one; for ``D > 128`` also of ``x``
   (``_stage_scaled_kernel``: one pass, no fp32 temporary, ``(N,)`` scales). With ``never``
   the kernels convert and scale fp32 tiles in registers instead and the extra memory is
   strictly O(N + K); ``auto`` adds ``2 K D`` bytes (and ``2 N D`` for ``D > 128``).
1. ``_codeword_stats_kernel`` — one pass over the codebook: ``a``, ``b``, the per-codeword
   scales and the scaled copy of step 0 when the codebook is not in the operand dtype, and,
   per group, the maxima used by the error bound below (``(G, 4)`` floats).
2. ``_search_kernel`` (autotuned) — the fused pass. Each program owns ``BLOCK_N`` rows and
   streams the codebook in ``BLOCK_K`` tiles; ``tl.dot`` computes the ``BLOCK_N x BLOCK_K``
   dot tile from 16-bit operands with fp32 accumulation (looping over ``D`` in ``BLOCK_D``
   chunks, or keeping the whole row block in registers when ``D <= BLOCK_D``). The epilogue
   turns the tile into scores and folds them into a per-row running state: best score,
   its index and the *second-best* score. At the end each row either carries a certificate
   (see below) and is final, or is appended to a compact per-group list of ambiguous rows
   together with a threshold. With few row blocks (:func:`split_count`) the codebook is cut
   into slices searched by separate programs, and ``_merge_splits_kernel`` merges their
   best and runner-up scores in codebook order before the same certificate: the result is
   identical to one pass.
3. ``_candidates_kernel`` — only for the ambiguous rows, on a fixed grid whose programs
   stride over (slot block, codebook slice) items sized on the device from the list's
   length: recompute the low-precision scores and collect, per row, the indices of all
   codewords whose score is within the threshold (at most ``MAX_CANDIDATES``, appended
   atomically, in no particular order).
4. ``_rerank_kernel`` — for each ambiguous row, the exact fp32 score of every candidate
   (plain fp32 multiply-adds, no tensor cores); the lowest score wins, ties to the lowest
   index. A row with no candidate or too many of them (zero vectors, huge duplicate
   clusters, non-finite input) falls back to an exact fp32 scan over all K codewords.

Exactness argument
------------------
Let ``x~ = lp(x)`` and ``c~ = lp(c)`` be the operand values in true units (the identity for
16-bit inputs read as they are; scaled fp16 otherwise, see above), and ``r_x = x - x~``,
``r_c = c - c~`` the rounding residuals (exact in fp32 by Sterbenz's lemma). The kernel
computes ``d~ = fl(<x~, c~>)``: every product of two 16-bit floats is exact in fp32 and
power-of-two rescaling is exact, so the only error of the MMA is its fp32 accumulation,
``|fl(<x~,c~>) - <x~,c~>| <= gamma * sum_i |x~_i c~_i| <= gamma ||x~|| ||c~||`` with
``gamma = D * 2^-23``: twice the classical ``D * u32`` bound, which also covers tensor cores
that truncate instead of rounding when they accumulate (Fasi et al. 2021, "Numerical
behavior of NVIDIA tensor cores", observed this on V100, T4 and A100). Since
``<x, c> - <x~, c~> = <x~, r_c> + <r_x, c>``, Cauchy-Schwarz gives for every row ``n`` and
codeword ``k``::

    |d~ - <x, c_k>| <= ||x~|| ||r_c_k|| + ||r_x|| ||c_k|| + gamma ||x~|| ||c~_k||

The score ``s~ = fl(b + a d~)`` adds at most two fp32 roundings. With the per-group maxima
``P = max_k |a_k| ||r_c_k||``, ``Q = max_k |a_k| ||c_k||``, ``T = max_k |a_k| ||c~_k||`` and
``B = max_k |b_k|`` (step 1) this yields a per-row bound, valid for every ``k``::

    |s~_k - s_k| <= E_n = (1 + 2^-8) * ( ||x~|| (P + gamma T) + ||r_x|| Q + gamma B
                                         + 4 u32 (B + (1 + gamma) T ||x~||) )

(``gamma B`` covers the fp32 sum of squares that computes ``b_k = ||c_k||^2``, in any
order; it is what remains when ``x~`` is near 0, where every other term vanishes. ``4 u32``
covers the two epilogue roundings plus the rounding of ``s~ + 2E`` itself; the
``1 + 2^-8`` factor absorbs the fp32 error of computing norms and ``E`` — ``D * u32`` is far
below ``2^-8`` for ``D <= 2^15``.) Residual norms are *measured* from the actual
conversions, so the bound holds whatever rounding mode ``lp`` uses.

*Centred* searches bound the scores of ``x' = fl(x - m)`` against ``c' = fl(c - m)``, so
every quantity above is of ``x'`` and ``c'`` (``b_k = ||c'_k||^2``). Each subtraction is one
fp32 rounding, ``|x' - (x - m)| <= u32 |x'|`` entrywise and likewise for ``c'``, which moves
``||x - c_k||^2`` minus a per-row constant by at most ``2 u32 (2 ||x'|| ||c'_k|| +
||c'_k||^2)`` (second-order terms go into the ``1 + 2^-8``). With ``||x'|| <= ||x~|| +
||r_x||`` the bound gains the term ``2 u32 (B + Q (||x~|| + ||r_x||))``. The re-rank scores
the original ``x`` and ``c``, so the result is the same argmin either way.

*Certificate.* Let ``i1`` be the low-precision argmin with score ``s~1`` and ``s~2`` the
smallest low-precision score of any other codeword. If ``s~2 > s~1 + 2E`` then for every
``k != i1``: ``s_k >= s~_k - E >= s~2 - E > s~1 + E >= s_i1``, so ``i1`` is the exact argmin.
*Candidates.* Otherwise the exact argmin ``k*`` satisfies ``s~_k* <= s_k* + E <= s_i1 + E <=
s~1 + 2E``: every codeword that can be the exact argmin has a recomputed low-precision score
within the threshold ``s~1 + 2E`` (the recomputation obeys the same bound, whatever its
summation order), so re-ranking exactly among those candidates returns the exact argmin.
The re-ranking is done in fp32, so the result equals the argmin of fp32 distances; two
codewords whose exact scores differ by less than fp32's own rounding are an "fp32 tie",
which no fp32 implementation (the reference included) can order reliably.

For bf16/fp16 inputs ``E`` is tiny (only ``gamma`` and ``u32`` terms), so almost every row is
certified and steps 3-4 do no work. For fp32 inputs the fp16 operand rounding dominates
``E`` (about ``5e-4 |a| ||x|| ||c||``); on unstructured data (random Gaussians at the anchor
sizes) 4-13% of rows stay ambiguous (29-66% with bf16 operands) and pay one more
low-precision pass over their rows only — ``nearest_codeword_triton(..., return_stats=True)``
reports the fraction, :mod:`anytok.quantizers.kernels.certificate` predicts it on the CPU.

Non-finite inputs give unspecified indices (the media contract rejects NaN/Inf earlier).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anytok.quantizers.kernels.certificate import operand_dtype, search_centre
from anytok.quantizers.kernels.reference import METRICS, _check

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without Triton
    triton = None
    tl = None
    HAS_TRITON = False

_LOG = logging.getLogger(__name__)

#: Candidate slots per ambiguous row; a row with more candidates falls back to a full scan.
MAX_CANDIDATES = 16

#: dtypes the kernels read directly (anything else goes to the reference).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_METRIC_IDS = {name: i for i, name in enumerate(METRICS)}  # euclidean 0, cosine 1, dot 2


def interpreting() -> bool:
    """Whether Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # pragma: no cover


# The decorators below decide between compiled and interpreted kernels at import time, so the
# configuration is fixed then too: the interpreter gets one small tile shape (no autotuning;
# tiles of 16 exercise multi-tile, ragged and chunked-D paths on tiny tensors).
_INTERPRET = interpreting()

#: Programs of the re-rank launch per group; each strides over the ambiguous-row list. Small
#: under the interpreter so that its programs handle several rows each.
RERANK_PROGRAMS = 3 if _INTERPRET else 2048


def _fix_interpreter_for_numpy_2_4() -> None:
    """Let the Triton 3.6 interpreter run ``range(0, runtime_int, ...)`` under NumPy >= 2.4.

    The interpreter wraps scalars in 1-element arrays and converts them with ``int(array)``,
    which NumPy 2.4 rejects (triton-lang/triton#9171, fixed upstream the same way). Only the
    CPU interpreter is touched, and only when the bug is present.
    """
    import numpy as np

    try:
        int(np.zeros(1, dtype=np.int32))
        return  # older NumPy: nothing to fix
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_anytok_fixed", False):
        return

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._anytok_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


if _INTERPRET:
    _fix_interpreter_for_numpy_2_4()


def _next_pow2(v: int) -> int:
    return 1 << max(int(v) - 1, 0).bit_length()


def _d_block(d: int, cap: int = 128) -> int:
    """``BLOCK_D`` that holds all of ``D`` when ``D <= cap`` (one chunk), else ``cap``."""
    return max(16, min(_next_pow2(d), cap))


if HAS_TRITON:
    # Tile shapes (BLOCK_N, BLOCK_K, num_warps, num_stages) for D <= 128, where the whole row
    # block stays in registers (ONE_D) and only codebook tiles stream; and (BLOCK_N, BLOCK_K,
    # BLOCK_D, num_warps, num_stages) for D > 128, chunked over D. Every shape here compiles
    # for sm_90 with bf16 operands without register spills (checked with ptxas/cuobjdump, no
    # GPU at hand); the autotuner picks among them on the device.
    _ONE_D_TILES = [
        (128, 128, 8, 3),
        (128, 128, 8, 4),
        (128, 64, 4, 4),
        (64, 128, 4, 4),
        (64, 128, 8, 3),
        (128, 256, 8, 3),
        (64, 256, 8, 3),
        (256, 64, 8, 3),
        (64, 64, 4, 4),
    ]
    _CHUNKED_TILES = [
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 128, 32, 8, 4),
        (64, 128, 64, 8, 3),
        (128, 64, 64, 8, 4),
        (256, 128, 32, 8, 3),
        (256, 64, 64, 8, 3),
        (64, 256, 32, 8, 3),
        (64, 64, 64, 4, 4),
    ]

    def _search_configs() -> list[triton.Config]:
        if _INTERPRET:
            return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_D": 16}, num_warps=4)]
        configs = [
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=st)
            for bd in (16, 32, 64, 128)
            for bn, bk, w, st in _ONE_D_TILES
        ]
        configs += [
            triton.Config(
                {"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "CHUNKED": 1},
                num_warps=w,
                num_stages=st,
            )
            for bn, bk, bd, w, st in _CHUNKED_TILES
        ]
        return configs

    def _prune_search_configs(configs: list[triton.Config], named_args: dict, **_: object):
        """One D chunk (``BLOCK_D`` = D rounded up to a power of two) when ``D <= 128``."""
        d = int(named_args["D"])
        if d <= 128:
            kept = [
                c
                for c in configs
                if "CHUNKED" not in c.kwargs and c.kwargs["BLOCK_D"] == _d_block(d)
            ]
        else:
            kept = [c for c in configs if "CHUNKED" in c.kwargs]
        return [_strip_chunked(c) for c in kept] or [_strip_chunked(configs[0])]

    def _strip_chunked(config: triton.Config) -> triton.Config:
        """``CHUNKED`` only tags configs for pruning; the kernel has no such parameter."""
        kwargs = {k: v for k, v in config.kwargs.items() if k != "CHUNKED"}
        return triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)

    def _candidate_configs() -> list[triton.Config]:
        if _INTERPRET:
            return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16}, num_warps=4)]
        # Ambiguous rows only (few for 16-bit inputs); small tiles keep the cumsum/scatter
        # of candidate indices free of spills.
        return [
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=8, num_stages=3),
        ]

    @triton.jit
    def _lp_dot(a, b, acc, INTERPRET: tl.constexpr):
        """``acc + a @ b`` for 16-bit ``a`` ``(BN, BD)`` and ``b`` ``(BD, BK)``, fp32 accumulate.

        The interpreter multiplies 16-bit bit patterns as integers, so there the (exactly
        representable) 16-bit values are widened to fp32 first: the same products, exact in
        either case, and the same fp32 accumulation.
        """
        if INTERPRET:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _pow2_scales(maxabs):
        """Powers of two ``(mult, inv)`` per row with ``maxabs * mult`` in ``[2^14, 2^15)``.

        Scaling by a power of two is exact, so ``fp16(v * mult) * inv`` differs from ``v``
        only by fp16 rounding: rows from 2^-35 up use fp16's full 11-bit precision and
        never overflow. The exponent is at most ``MAX_UPSCALE_EXP`` (49, see
        :mod:`~anytok.quantizers.kernels.certificate`): the search folds a row block's and a
        codeword's inverse scales into one factor, and two inverses of 2^-49 or more keep it
        a normal fp32 number (2^-77 each, for entries near 1e-19, flushed it to zero and every
        score to ``b``). Rows below 2^-35 keep fewer significant bits instead, which their
        measured residuals account for. At least -126, so ``inv`` stays normal too.
        """
        bits = maxabs.to(tl.int32, bitcast=True)
        shift = 14 - (((bits >> 23) & 0xFF) - 127)
        shift = tl.minimum(tl.maximum(shift, -126), 49)
        mult = ((shift + 127) << 23).to(tl.float32, bitcast=True)
        inv = ((127 - shift) << 23).to(tl.float32, bitcast=True)
        return mult, inv

    @triton.jit
    def _load_rows(rows, row_mask, offs_d, D, s_d, centre, CENTRED: tl.constexpr):
        """fp32 ``(R, BLOCK_D)`` chunk of strided rows; ``CENTRED``: minus the group's centre
        ``centre`` (a pointer to ``D`` fp32 values), with masked entries kept at 0."""
        mask = row_mask[:, None] & (offs_d[None, :] < D)
        v = tl.load(rows[:, None] + offs_d[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)
        if CENTRED:
            m = tl.load(centre + offs_d, mask=offs_d < D, other=0.0)
            v = tl.where(mask, v - m[None, :], 0.0)
        return v

    @triton.jit
    def _row_maxabs(
        rows,
        row_mask,
        D,
        s_d,
        centre,
        CENTRED: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Largest ``|value|`` (of the centred value when ``CENTRED``) of each row, fp32
        ``(BLOCK_R,)``; ``rows`` points at each row."""
        maxabs = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            v = _load_rows(rows, row_mask, offs_d, D, s_d, centre, CENTRED)
            maxabs = tl.maximum(maxabs, tl.max(tl.abs(v), axis=1))
        return maxabs

    @triton.jit
    def _stage_scaled_kernel(
        src_ptr,  # (G, R, D) any float dtype, strided
        dst_ptr,  # (G, R, DP) fp16 out, contiguous; columns D..DP are zero
        inv_ptr,  # (G, R) fp32 out: the power of two that undoes each row's scale
        centre_ptr,  # (G, D) fp32: subtracted from every row first (CENTRED)
        R,
        D,
        DP,
        s_g,
        s_r,
        s_d,
        LP: tl.constexpr,
        CENTRED: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Scaled 16-bit copy: row ``r`` becomes ``lp(v_r * 2^e_r)``, ``inv[r] = 2^-e_r``, with
        ``v_r = src[r]``, or ``fl(src[r] - centre)`` when ``CENTRED``."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        rows_ptr = src_ptr + g.to(tl.int64) * s_g + offs_r.to(tl.int64) * s_r
        centre = centre_ptr + g.to(tl.int64) * D
        maxabs = _row_maxabs(rows_ptr, mask_r, D, s_d, centre, CENTRED, BLOCK_R, BLOCK_D)
        mult, inv = _pow2_scales(maxabs)
        rows = g.to(tl.int64) * R + offs_r.to(tl.int64)
        for d0 in range(0, DP, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            v = _load_rows(rows_ptr, mask_r, offs_d, D, s_d, centre, CENTRED)
            tl.store(
                dst_ptr + rows[:, None] * DP + offs_d[None, :],
                (v * mult[:, None]).to(LP),
                mask=mask_r[:, None] & (offs_d[None, :] < DP),
            )
        tl.store(inv_ptr + rows, inv, mask=mask_r)

    @triton.jit
    def _codeword_stats_kernel(
        c_ptr,  # (G, K, D) any float dtype, strided
        co_ptr,  # (G, K, DC) out when C_SCALED and C_STAGED: the scaled lp copy, 16-padded
        scale_ptr,  # (G, K) fp32 out: a_k
        bias_ptr,  # (G, K) fp32 out: b_k
        cmult_ptr,  # (G, K) fp32 out (C_SCALED, not C_STAGED): 2^e for in-kernel conversion
        lp_scale_ptr,  # (G, K) fp32 out (C_SCALED): a_k * 2^-e, for the scaled GEMM
        maxes_ptr,  # (G, 4) fp32 in/out (zeroed): P, Q, T, B
        centre_ptr,  # (G, D) fp32: subtracted from every codeword first (CENTRED)
        K,
        D,
        DC,  # row length of co (>= D)
        s_cg,
        s_ck,
        s_cd,
        METRIC: tl.constexpr,
        LP: tl.constexpr,
        C_STAGED: tl.constexpr,
        C_SCALED: tl.constexpr,
        CENTRED: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One pass over the codebook: ``a``, ``b``, the bound's maxima and, for codebooks
        not already in the operand dtype, the per-codeword scales and (``C_STAGED``) the
        scaled 16-bit copy the GEMM reads, so staging costs no launch of its own. With
        ``CENTRED`` (euclidean) all of these describe the centred codewords ``fl(c - m)``."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        offs_k = pid * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        rows_ptr = c_ptr + g.to(tl.int64) * s_cg + offs_k.to(tl.int64) * s_ck
        base_o = co_ptr + (g.to(tl.int64) * K + offs_k.to(tl.int64))[:, None] * DC
        centre = centre_ptr + g.to(tl.int64) * D
        cmult = tl.full((BLOCK_K,), 1.0, tl.float32)
        cinv = tl.full((BLOCK_K,), 1.0, tl.float32)
        if C_SCALED:
            maxabs = _row_maxabs(rows_ptr, mask_k, D, s_cd, centre, CENTRED, BLOCK_K, BLOCK_D)
            cmult, cinv = _pow2_scales(maxabs)
            if not C_STAGED:  # the search converts the codebook tiles itself
                tl.store(cmult_ptr + g.to(tl.int64) * K + offs_k, cmult, mask=mask_k)
        c2 = tl.zeros((BLOCK_K,), dtype=tl.float32)  # ||c||^2
        t2 = tl.zeros((BLOCK_K,), dtype=tl.float32)  # ||lp(c)||^2
        r2 = tl.zeros((BLOCK_K,), dtype=tl.float32)  # ||c - lp(c)||^2
        # With a copy to write, the loop also covers its zero padding (columns D..DC).
        d_end = DC if C_STAGED else D
        for d0 in range(0, d_end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            c = _load_rows(rows_ptr, mask_k, offs_d, D, s_cd, centre, CENTRED)
            c2 += tl.sum(c * c, axis=1)
            if C_SCALED:
                # The operand exactly as the GEMM reads it (the copy written here, or the
                # search's identical in-kernel conversion), in true units: lp(c 2^e) 2^-e.
                c_lp = (c * cmult[:, None]).to(LP)
                if C_STAGED:
                    mask_o = mask_k[:, None] & (offs_d[None, :] < DC)
                    tl.store(base_o + offs_d[None, :], c_lp, mask=mask_o)
                ct = c_lp.to(tl.float32) * cinv[:, None]
                r = c - ct
                t2 += tl.sum(ct * ct, axis=1)
                r2 += tl.sum(r * r, axis=1)
            else:  # already the operand dtype: exact (a padded copy holds the same values)
                t2 += tl.sum(c * c, axis=1)
        # sqrt_rn: tl.sqrt compiles to sqrt.approx.ftz on sm_90, which flushes subnormal
        # squared norms (entries near 1e-20) to 0 and drops their terms from the bound.
        nrm = tl.sqrt_rn(c2)
        if METRIC == 0:  # euclidean
            scale = tl.full((BLOCK_K,), -2.0, tl.float32)
            bias = c2
        elif METRIC == 1:  # cosine: same eps as torch.nn.functional.normalize
            scale = -1.0 / tl.maximum(nrm, 1e-12)
            bias = tl.zeros((BLOCK_K,), dtype=tl.float32)
        else:  # dot
            scale = tl.full((BLOCK_K,), -1.0, tl.float32)
            bias = tl.zeros((BLOCK_K,), dtype=tl.float32)
        out = g.to(tl.int64) * K + offs_k
        tl.store(scale_ptr + out, scale, mask=mask_k)
        tl.store(bias_ptr + out, bias, mask=mask_k)
        if C_SCALED:  # a power-of-two rescale of a_k: exact
            tl.store(lp_scale_ptr + out, scale * cinv, mask=mask_k)
        a = tl.abs(scale)
        zero = tl.zeros((BLOCK_K,), dtype=tl.float32)
        # Maxima of non-negative floats: float atomic_max is exact and order-independent.
        tl.atomic_max(maxes_ptr + g * 4 + 0, tl.max(tl.where(mask_k, a * tl.sqrt_rn(r2), zero), 0))
        tl.atomic_max(maxes_ptr + g * 4 + 1, tl.max(tl.where(mask_k, a * nrm, zero), 0))
        tl.atomic_max(maxes_ptr + g * 4 + 2, tl.max(tl.where(mask_k, a * tl.sqrt_rn(t2), zero), 0))
        tl.atomic_max(maxes_ptr + g * 4 + 3, tl.max(tl.where(mask_k, tl.abs(bias), zero), 0))

    @triton.jit
    def _centre_columns(c, centre, offs_d, D, mask_k):
        """``c - m`` for a transposed codebook tile ``(BLOCK_D, BLOCK_K)``, 0 where masked."""
        m = tl.load(centre + offs_d, mask=offs_d < D, other=0.0)
        return tl.where((offs_d[:, None] < D) & mask_k[None, :], c - m[:, None], 0.0)

    @triton.jit
    def _lp_scores(
        x_rows,  # (BLOCK_N,) int64 element offsets of the rows
        x_lp,  # (BLOCK_N, BLOCK_D) rows in LP when ONE_D, else unused
        x_mult,  # (BLOCK_N,) fp32 row scales for in-kernel conversion (X_SCALED, not staged)
        x_inv,  # (BLOCK_N,) fp32 their inverses (X_SCALED)
        x_inv_block,  # fp32 scalar: the one inverse all rows share (X_BLOCK)
        row_mask,
        c_ptr,
        g,
        k0,
        K,
        D,
        DX,  # row length of the x operand's storage (>= D; zero padding past D)
        DC,  # row length of the codebook operand's storage (>= D; zero padding past D)
        s_cg,
        s_ck,
        s_cd,
        x_ptr,
        s_xd,
        scale_ptr,
        bias_ptr,
        cmult_ptr,
        centre_ptr,  # (G, D) fp32: subtracted before in-kernel conversions (CENTRED)
        LP: tl.constexpr,
        ONE_D: tl.constexpr,
        X_SCALED: tl.constexpr,
        X_STAGED: tl.constexpr,
        C_SCALED: tl.constexpr,
        C_STAGED: tl.constexpr,
        CENTRED: tl.constexpr,
        X_BLOCK: tl.constexpr,
        INTERPRET: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Low-precision scores ``b + a * <lp(x), lp(c)>`` of one ``BLOCK_N x BLOCK_K`` tile.

        Scaled operands hold ``lp(v * 2^e)``; the scales are undone exactly (powers of two):
        per column through ``a`` (``scale_ptr`` holds ``a_k * 2^-e_k``), per row on the
        accumulator unless the whole row block shares one scale (``X_BLOCK``: folded into
        ``a``, no per-element work). Columns past ``K`` score ``+inf`` (their bias loads as
        inf, their codewords as 0). With ``CENTRED`` both operands are ``fl(v - m)`` (staged
        copies already are; tiles converted here subtract ``m`` first).
        """
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        cols = g.to(tl.int64) * K + offs_k
        c_cols = c_ptr + g.to(tl.int64) * s_cg + offs_k.to(tl.int64)[None, :] * s_ck
        centre = centre_ptr + g.to(tl.int64) * D
        c_mult = tl.full((BLOCK_K,), 1.0, tl.float32)
        if C_SCALED and not C_STAGED:
            c_mult = tl.load(cmult_ptr + cols, mask=mask_k, other=1.0)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        if ONE_D:
            offs_d = tl.arange(0, BLOCK_D)
            c = tl.load(
                c_cols + offs_d[:, None] * s_cd,
                mask=(offs_d[:, None] < DC) & mask_k[None, :],
                other=0.0,
            )
            if C_SCALED and not C_STAGED:
                c = c.to(tl.float32)
                if CENTRED:
                    c = _centre_columns(c, centre, offs_d, D, mask_k)
                c = c * c_mult[None, :]
            acc = _lp_dot(x_lp, c.to(LP), acc, INTERPRET)
        else:
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                # Masks on the operands' own (16-padded when staged) row lengths, so they are
                # constant over 16 columns and the loads vectorise and pipeline.
                xs = tl.load(
                    x_ptr + x_rows[:, None] + offs_d[None, :] * s_xd,
                    mask=row_mask[:, None] & (offs_d[None, :] < DX),
                    other=0.0,
                )
                c = tl.load(
                    c_cols + offs_d[:, None] * s_cd,
                    mask=(offs_d[:, None] < DC) & mask_k[None, :],
                    other=0.0,
                )
                if X_SCALED and not X_STAGED:
                    xs = xs.to(tl.float32)
                    if CENTRED:
                        m = tl.load(centre + offs_d, mask=offs_d < D, other=0.0)
                        xs = tl.where(
                            row_mask[:, None] & (offs_d[None, :] < D), xs - m[None, :], 0.0
                        )
                    xs = xs * x_mult[:, None]
                if C_SCALED and not C_STAGED:
                    c = c.to(tl.float32)
                    if CENTRED:
                        c = _centre_columns(c, centre, offs_d, D, mask_k)
                    c = c * c_mult[None, :]
                acc = _lp_dot(xs.to(LP), c.to(LP), acc, INTERPRET)
        scale = tl.load(scale_ptr + cols, mask=mask_k, other=0.0)
        bias = tl.load(bias_ptr + cols, mask=mask_k, other=float("inf"))
        if X_SCALED:
            if X_BLOCK:
                scale = scale * x_inv_block
            else:
                acc = acc * x_inv[:, None]
        return bias[None, :] + scale[None, :] * acc

    @triton.jit
    def _row_error(maxes_ptr, g, xt2, rx2, gamma, CENTRED: tl.constexpr):
        """The per-row bound ``E_n`` of the module docstring, from the squared norms of
        ``lp(x)`` and of its residual and the group's maxima ``P, Q, T, B``."""
        p = tl.load(maxes_ptr + g * 4 + 0)
        q = tl.load(maxes_ptr + g * 4 + 1)
        t = tl.load(maxes_ptr + g * 4 + 2)
        b = tl.load(maxes_ptr + g * 4 + 3)
        xt_n = tl.sqrt_rn(xt2)  # IEEE sqrt, subnormals kept (tl.sqrt flushes them on GPUs)
        rx_n = tl.sqrt_rn(rx2)
        err = xt_n * (p + gamma * t) + rx_n * q + gamma * b  # gamma b: fp32 sums of ||c||^2
        err += 4.0 * 5.960464477539063e-08 * (b + (1.0 + gamma) * t * xt_n)  # 4 * 2^-24
        if CENTRED:  # the fp32 roundings of x - m and c - m (module docstring)
            err += 2.0 * 5.960464477539063e-08 * (b + q * (xt_n + rx_n))
        # + 2^-146: the epilogue's roundings when scores are subnormal (each at most 2^-150
        # absolute, which the relative terms above do not cover).
        return err * 1.00390625 + 1.1210387714598537e-44  # 1 + 2^-8, 2^-146

    @triton.jit
    def _append_ambiguous(
        best,
        second,
        err,
        x_inv,
        offs_n,
        mask_n,
        g,
        N,
        counter_ptr,
        list_ptr,
        thr_ptr,
        list_inv_ptr,
        count_ptr,
        X_SCALED: tl.constexpr,
    ):
        """The certificate: rows whose runner-up is not beyond ``best + 2E`` go to the group's
        compact list of ambiguous rows, with that threshold (and their row scale), and their
        candidate count is zeroed for the candidates kernel's atomic appends."""
        thr = best + 2.0 * err
        # NaN/inf thresholds compare False: such rows are re-ranked, never trusted.
        ambiguous = mask_n & ~(second > thr)
        amb = ambiguous.to(tl.int32)
        n_amb = tl.sum(amb, axis=0)
        if n_amb > 0:
            start = tl.atomic_add(counter_ptr + g, n_amb)
            pos = g.to(tl.int64) * N + start + tl.cumsum(amb, axis=0) - 1
            tl.store(list_ptr + pos, offs_n, mask=ambiguous)
            tl.store(thr_ptr + pos, thr, mask=ambiguous)
            tl.store(count_ptr + pos, tl.zeros_like(amb), mask=ambiguous)
            if X_SCALED:
                tl.store(list_inv_ptr + pos, x_inv, mask=ambiguous)

    @triton.autotune(
        configs=_search_configs(),
        # Size buckets (the best tile depends on how many row blocks fill the GPU); not the
        # metric, which only changes a and b: one kernel and one tuning for all three.
        key=["N_BUCKET", "D_BUCKET", "K_BUCKET", "SPLITS"],
        prune_configs_by={"early_config_prune": _prune_search_configs},
        reset_to_zero=["counter_ptr"],  # benchmarking runs append to the ambiguous-row list
        cache_results=True,
    )
    @triton.heuristics({"ONE_D": lambda a: a["BLOCK_D"] >= a["D"]})
    @triton.jit
    def _search_kernel(
        x_ptr,  # (G, N, D) strided: the input, for the prologue's norms
        xo_ptr,  # (G, N, D) the GEMM operand: x itself, or a staged lp copy
        co_ptr,  # (G, K, D) the GEMM operand: the codebook, or a staged lp copy
        scale_ptr,  # (G, K) fp32: a_k, times the codeword's operand scale when C_SCALED
        bias_ptr,  # (G, K) fp32
        maxes_ptr,  # (G, 4) fp32
        cmult_ptr,  # (G, K) fp32 per-codeword operand scales (C_SCALED, not C_STAGED)
        xinv_ptr,  # (G, N) fp32 per-row operand scales of a staged x (X_SCALED and X_STAGED)
        idx_ptr,  # (G, N) int64 out
        list_ptr,  # (G, N) int32 out: ambiguous rows, compacted per group
        thr_ptr,  # (G, N) fp32 out: their thresholds s~1 + 2E
        list_inv_ptr,  # (G, N) fp32 out: their row scales (X_SCALED)
        counter_ptr,  # (G,) int32 in/out (zeroed): ambiguous rows per group
        count_ptr,  # (G, N) int32 out: zeroed at the list slots the search fills
        part_ptr,  # (S, G, N, 2) fp32 out when split: each slice's best and runner-up score
        part_idx_ptr,  # (S, G, N) int32 out when split: each slice's best index
        row_err_ptr,  # (2, G, N) fp32 out when split: the bound E and the row scale per row
        centre_ptr,  # (G, D) fp32: the codebook mean, subtracted from x and c (CENTRED)
        N,
        K,
        D,
        DX,
        DC,
        s_xg,
        s_xn,
        s_xd,
        s_xog,
        s_xon,
        s_xod,
        s_cog,
        s_cok,
        s_cod,
        gamma,
        N_BUCKET,  # autotuning keys only
        D_BUCKET,
        K_BUCKET,
        SPLITS,  # codebook slices: the grid's third dimension
        LP: tl.constexpr,
        X_EXACT: tl.constexpr,
        X_STAGED: tl.constexpr,
        X_SCALED: tl.constexpr,
        C_STAGED: tl.constexpr,
        C_SCALED: tl.constexpr,
        CENTRED: tl.constexpr,
        CERTIFY: tl.constexpr,  # False only in tests: skip steps 3-4 to expose raw lp argmin
        INTERPRET: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        ONE_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        g = tl.program_id(1)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        x_rows = g.to(tl.int64) * s_xg + offs_n.to(tl.int64) * s_xn
        xo_rows = g.to(tl.int64) * s_xog + offs_n.to(tl.int64) * s_xon
        centre = centre_ptr + g.to(tl.int64) * D

        # Prologue: ||lp(x)|| and ||x - lp(x)|| per row for the error bound. With one D chunk
        # the converted rows stay in registers for the whole K loop. Scaled rows (fp16
        # operands for non-16-bit inputs) are lp(x * 2^e): one 2^e for the whole row block
        # when converted here (X_BLOCK; it rounds exactly as per-row scales would, barring
        # fp16 subnormals 2^-28 below the block's largest entry), per row when staged.
        # Every norm below is in true units, of fl(x - m) when CENTRED.
        x_mult = tl.full((BLOCK_N,), 1.0, tl.float32)
        x_inv = tl.full((BLOCK_N,), 1.0, tl.float32)
        x_inv_block = 1.0
        if X_SCALED:
            if X_STAGED:
                x_inv = tl.load(xinv_ptr + g.to(tl.int64) * N + offs_n, mask=mask_n, other=1.0)
            else:
                maxabs = _row_maxabs(
                    x_ptr + x_rows, mask_n, D, s_xd, centre, CENTRED, BLOCK_N, BLOCK_D
                )
                mult, x_inv_block = _pow2_scales(tl.max(maxabs, axis=0))
                x_mult = x_mult * mult
                x_inv = x_inv * x_inv_block
        xt2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        rx2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        x_lp = tl.zeros((BLOCK_N, BLOCK_D), dtype=LP)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            xs = _load_rows(x_ptr + x_rows, mask_n, offs_d, D, s_xd, centre, CENTRED)
            if X_STAGED:  # the operand copy, so the residual matches what the GEMM reads
                x_lp = tl.load(
                    xo_ptr + xo_rows[:, None] + offs_d[None, :] * s_xod,
                    mask=mask_n[:, None] & (offs_d[None, :] < D),
                    other=0.0,
                ).to(LP)
            else:
                if X_SCALED:
                    x_lp = (xs * x_mult[:, None]).to(LP)
                else:
                    x_lp = xs.to(LP)
            xt = x_lp.to(tl.float32)
            if X_SCALED:
                xt = xt * x_inv[:, None]
            xt2 += tl.sum(xt * xt, axis=1)
            if not X_EXACT:
                rx = xs - xt
                rx2 += tl.sum(rx * rx, axis=1)

        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        second = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), dtype=tl.int32)
        cols = tl.arange(0, BLOCK_K)
        # This program's codebook slice: whole tiles, so slices never overlap (all of K
        # when the grid has one slice).
        split = tl.program_id(2)
        tiles_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLITS)
        k_lo = split * tiles_per_split * BLOCK_K
        k_hi = tl.minimum(K, k_lo + tiles_per_split * BLOCK_K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            s = _lp_scores(
                xo_rows, x_lp, x_mult, x_inv, x_inv_block, mask_n, co_ptr, g, k0, K, D, DX, DC,
                s_cog, s_cok, s_cod, xo_ptr, s_xod, scale_ptr, bias_ptr, cmult_ptr, centre_ptr,
                LP, ONE_D, X_SCALED, X_STAGED, C_SCALED, C_STAGED, CENTRED,
                X_SCALED and not X_STAGED, INTERPRET, BLOCK_N, BLOCK_K, BLOCK_D,
            )  # fmt: skip
            # Tile minimum (first index on ties, like torch.argmin) and the tile's runner-up:
            # the smallest score at any other column.
            m1, i1 = tl.min(s, axis=1, return_indices=True)
            t2 = tl.min(tl.where(cols[None, :] == i1[:, None], float("inf"), s), axis=1)
            better = m1 < best  # strict: an equal later score keeps the earlier index
            second = tl.where(better, tl.minimum(best, t2), tl.minimum(second, m1))
            best_idx = tl.where(better, i1 + k0, best_idx)
            best = tl.where(better, m1, best)

        err = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if CERTIFY:
            err = _row_error(maxes_ptr, g, xt2, rx2, gamma, CENTRED)
        if SPLITS == 1:
            tl.store(idx_ptr + g.to(tl.int64) * N + offs_n, best_idx.to(tl.int64), mask=mask_n)
            if CERTIFY:
                _append_ambiguous(
                    best, second, err, x_inv, offs_n, mask_n, g, N,
                    counter_ptr, list_ptr, thr_ptr, list_inv_ptr, count_ptr, X_SCALED,
                )  # fmt: skip
        else:  # partial results; _merge_splits_kernel reduces them and certifies
            groups = tl.num_programs(1)
            at = (split * groups + g).to(tl.int64) * N + offs_n
            tl.store(part_ptr + at * 2, best, mask=mask_n)
            tl.store(part_ptr + at * 2 + 1, second, mask=mask_n)
            tl.store(part_idx_ptr + at, best_idx, mask=mask_n)
            if CERTIFY and split == 0:  # every slice computes the same per-row values
                rows = g.to(tl.int64) * N + offs_n
                tl.store(row_err_ptr + rows, err, mask=mask_n)
                if X_SCALED:
                    tl.store(row_err_ptr + groups.to(tl.int64) * N + rows, x_inv, mask=mask_n)

    @triton.jit
    def _merge_splits_kernel(
        part_ptr,  # (S, G, N, 2) fp32: best and runner-up score of each codebook slice
        part_idx_ptr,  # (S, G, N) int32
        row_err_ptr,  # (2, G, N) fp32: E and the row scale
        idx_ptr,  # (G, N) int64 out
        counter_ptr,
        list_ptr,
        thr_ptr,
        list_inv_ptr,
        count_ptr,
        N,
        SPLITS,
        X_SCALED: tl.constexpr,
        CERTIFY: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Reduce the slices of a split search: the overall best, its index and the overall
        runner-up (the best score of any other codeword), then the same certificate as an
        unsplit search. Slices are in codebook order and the comparison is strict, so ties
        keep the lowest index, as in one pass."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        groups = tl.num_programs(1)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        second = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), dtype=tl.int32)
        for split in range(0, SPLITS):
            at = (split * groups + g).to(tl.int64) * N + offs_n
            m1 = tl.load(part_ptr + at * 2, mask=mask_n, other=float("inf"))
            m2 = tl.load(part_ptr + at * 2 + 1, mask=mask_n, other=float("inf"))
            i1 = tl.load(part_idx_ptr + at, mask=mask_n, other=0)
            better = m1 < best
            second = tl.where(better, tl.minimum(best, m2), tl.minimum(second, m1))
            best_idx = tl.where(better, i1, best_idx)
            best = tl.where(better, m1, best)
        rows = g.to(tl.int64) * N + offs_n
        tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=mask_n)
        if CERTIFY:
            err = tl.load(row_err_ptr + rows, mask=mask_n, other=0.0)
            x_inv = tl.full((BLOCK_N,), 1.0, tl.float32)
            if X_SCALED:
                x_inv = tl.load(row_err_ptr + groups.to(tl.int64) * N + rows, mask=mask_n)
            _append_ambiguous(
                best, second, err, x_inv, offs_n, mask_n, g, N,
                counter_ptr, list_ptr, thr_ptr, list_inv_ptr, count_ptr, X_SCALED,
            )  # fmt: skip

    @triton.autotune(
        configs=_candidate_configs(),
        key=["N_BUCKET", "D_BUCKET", "K_BUCKET"],
        reset_to_zero=["count_ptr"],  # benchmarking runs append candidates
        cache_results=True,
    )
    @triton.jit
    def _candidates_kernel(
        x_ptr,
        c_ptr,
        scale_ptr,
        bias_ptr,
        cmult_ptr,
        list_ptr,
        thr_ptr,
        list_inv_ptr,
        counter_ptr,
        cand_ptr,  # (G, N, M) int32 out, by list slot
        count_ptr,  # (G, N) int32 in/out, by list slot: zeroed by the search, atomic adds
        centre_ptr,  # (G, D) fp32 (CENTRED)
        N,
        K,
        D,
        DX,
        DC,
        s_xg,
        s_xn,
        s_xd,
        s_cg,
        s_ck,
        s_cd,
        N_BUCKET,
        D_BUCKET,
        K_BUCKET,
        MAX_SPLITS,
        M: tl.constexpr,
        LP: tl.constexpr,
        X_SCALED: tl.constexpr,
        X_STAGED: tl.constexpr,
        C_SCALED: tl.constexpr,
        C_STAGED: tl.constexpr,
        CENTRED: tl.constexpr,
        INTERPRET: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """Candidates of the ambiguous rows: every codeword whose low-precision score is
        within the row's threshold.

        The list's length is known only on the device, so the grid is a fixed number of
        programs that stride over work items (a block of list slots times a slice of the
        codebook). The slices are chosen here from the length: a short list is split over
        the codebook until the items fill the grid, so a few ambiguous rows never leave
        the GPU idle while they scan all K codewords. Slices append to a row's candidates
        with an atomic count, so candidates are in no particular order; the re-rank takes
        the lowest score and, on equal scores, the lowest index, whatever the order.
        """
        pid = tl.program_id(0)
        g = tl.program_id(1)
        programs = tl.num_programs(0)
        n_amb = tl.load(counter_ptr + g)
        blocks = tl.cdiv(n_amb, BLOCK_N)
        tiles = tl.cdiv(K, BLOCK_K)
        splits = tl.minimum(tl.maximum(programs // tl.maximum(blocks, 1), 1), MAX_SPLITS)
        splits = tl.minimum(splits, tiles)
        tiles_per_split = tl.cdiv(tiles, splits)
        for item in range(pid, blocks * splits, programs):
            block = item // splits
            k_lo = (item % splits) * tiles_per_split * BLOCK_K
            k_hi = tl.minimum(K, k_lo + tiles_per_split * BLOCK_K)
            slots = block * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_s = slots < n_amb
            at = g.to(tl.int64) * N + slots
            rows = tl.load(list_ptr + at, mask=mask_s, other=0)
            thr = tl.load(thr_ptr + at, mask=mask_s, other=float("-inf"))
            x_rows = g.to(tl.int64) * s_xg + rows.to(tl.int64) * s_xn
            x_unused = tl.zeros((BLOCK_N, BLOCK_D), dtype=LP)
            x_inv = tl.full((BLOCK_N,), 1.0, tl.float32)
            if X_SCALED:  # the row scales the search used, by list slot
                x_inv = tl.load(list_inv_ptr + at, mask=mask_s, other=1.0)
            # IEEE division: exact for these powers of two (1.0 / x compiles to an
            # approximate div.full.f32 on GPUs)
            x_mult = tl.math.div_rn(tl.full((BLOCK_N,), 1.0, tl.float32), x_inv)
            for k0 in range(k_lo, k_hi, BLOCK_K):
                s = _lp_scores(
                    x_rows, x_unused, x_mult, x_inv, 1.0, mask_s, c_ptr, g, k0, K, D, DX, DC,
                    s_cg, s_ck, s_cd, x_ptr, s_xd, scale_ptr, bias_ptr, cmult_ptr, centre_ptr,
                    LP, False, X_SCALED, X_STAGED, C_SCALED, C_STAGED, CENTRED, False,
                    INTERPRET, BLOCK_N, BLOCK_K, BLOCK_D,
                )  # fmt: skip
                offs_k = k0 + tl.arange(0, BLOCK_K)
                # A NaN score (inf - inf: a norm that overflows fp32, which also makes E and
                # so the threshold inf) is a candidate: its exact distance may be the best.
                # Padding slots and columns are masked explicitly: an infinite threshold
                # would admit the +inf scores of padding columns, and padding slots (past
                # the list, maybe past N) must never append.
                valid = mask_s[:, None] & (offs_k[None, :] < K)
                hit = (((s <= thr[:, None]) | (s != s)) & valid).to(tl.int32)
                n_hit = tl.sum(hit, axis=1)
                if tl.sum(n_hit, axis=0) > 0:  # rare after the first tiles
                    start = tl.atomic_add(count_ptr + at, n_hit, mask=n_hit > 0)
                    pos = start[:, None] + tl.cumsum(hit, axis=1) - 1
                    tl.store(
                        cand_ptr + at[:, None] * M + pos,
                        tl.broadcast_to(offs_k[None, :], (BLOCK_N, BLOCK_K)),
                        mask=(hit > 0) & (pos < M),
                    )

    @triton.jit
    def _rerank_kernel(
        x_ptr,
        c_ptr,
        scale_ptr,
        bias_ptr,
        list_ptr,
        counter_ptr,
        cand_ptr,
        count_ptr,
        idx_ptr,
        N,
        K,
        D,
        s_xg,
        s_xn,
        s_xd,
        s_cg,
        s_ck,
        s_cd,
        M: tl.constexpr,
        # cosine / dot: rescale each row's peak to [1, 2) first and score b + a<x, c>;
        # euclidean (False): score ||x - c||^2 in fp32
        UNIT_ROWS: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        g = tl.program_id(1)
        n_amb = tl.load(counter_ptr + g)
        # A bounded grid strides over the list: one program per row of x would schedule N
        # programs, nearly all of them empty (the list is short when most rows certify).
        for slot in range(tl.program_id(0), n_amb, tl.num_programs(0)):
            at = g.to(tl.int64) * N + slot
            row = tl.load(list_ptr + at)
            out = idx_ptr + g.to(tl.int64) * N + row
            cnt = tl.load(count_ptr + at)
            x_row = x_ptr + g.to(tl.int64) * s_xg + row.to(tl.int64) * s_xn
            c_grp = c_ptr + g.to(tl.int64) * s_cg
            # With b = 0 (cosine, dot) a positive factor on x scales every score alike, and a
            # power of two is exact: bringing the row's peak to [1, 2) keeps <x, c> of tiny
            # vectors from underflowing to a tie (the reference normalises x for cosine).
            x_mult = 1.0
            if UNIT_ROWS:
                peak = 0.0
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    xv = tl.load(x_row + offs_d * s_xd, mask=offs_d < D, other=0.0)
                    peak = tl.maximum(peak, tl.max(tl.abs(xv.to(tl.float32)), axis=0))
                exponent = ((peak.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
                shift = tl.minimum(tl.maximum(-exponent, -126), 126)
                x_mult = ((shift + 127) << 23).to(tl.float32, bitcast=True)
            if (cnt > 0) & (cnt <= M):
                # Exact fp32 scores of the (few) candidates, in increasing index order.
                offs_m = tl.arange(0, M)
                mask_m = offs_m < cnt
                ks = tl.load(cand_ptr + at * M + offs_m, mask=mask_m, other=0)
                acc = tl.zeros((M,), dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < D
                    xv = tl.load(x_row + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
                    xv = xv * x_mult
                    cv = tl.load(
                        c_grp + ks.to(tl.int64)[:, None] * s_ck + offs_d[None, :] * s_cd,
                        mask=mask_m[:, None] & mask_d[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    if UNIT_ROWS:
                        acc += tl.sum(cv * xv[None, :], axis=1)
                    else:  # euclidean: the fp32 distance itself (see the scan below)
                        diff = cv - xv[None, :]
                        acc += tl.sum(diff * diff, axis=1)
                if UNIT_ROWS:
                    scale = tl.load(scale_ptr + g.to(tl.int64) * K + ks, mask=mask_m, other=0.0)
                    bias = tl.load(bias_ptr + g.to(tl.int64) * K + ks, mask=mask_m, other=0.0)
                    s = tl.where(mask_m, bias + scale * acc, float("inf"))
                else:
                    s = tl.where(mask_m, acc, float("inf"))
                m = tl.min(s, axis=0)
                best = tl.min(tl.where(mask_m & (s == m), ks, K), axis=0)
                # An all-NaN row matches nothing above: keep the first-pass answer then.
                if best < K:
                    tl.store(out, best.to(tl.int64))
            else:
                # Too many (or no) candidates: an exact fp32 scan of the whole codebook.
                best_s = tl.full((), float("inf"), tl.float32)
                best_k = tl.full((), 0, tl.int32)
                for k0 in range(0, K, BLOCK_K):
                    offs_k = k0 + tl.arange(0, BLOCK_K)
                    mask_k = offs_k < K
                    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
                    for d0 in range(0, D, BLOCK_D):
                        offs_d = d0 + tl.arange(0, BLOCK_D)
                        mask_d = offs_d < D
                        xv = tl.load(x_row + offs_d * s_xd, mask=mask_d, other=0.0)
                        cv = tl.load(
                            c_grp + offs_k.to(tl.int64)[:, None] * s_ck + offs_d[None, :] * s_cd,
                            mask=mask_k[:, None] & mask_d[None, :],
                            other=0.0,
                        )
                        xv = xv.to(tl.float32) * x_mult
                        if UNIT_ROWS:
                            acc += tl.sum(cv.to(tl.float32) * xv[None, :], axis=1)
                        else:
                            # ||x - c||^2, not ||c||^2 - 2<x, c>: data far from the origin
                            # relative to its spread (an offset of 1000, a spread of 0.05)
                            # rounds the expanded score's ||c||^2 past the gaps between
                            # codewords, while the differences stay exact.
                            diff = cv.to(tl.float32) - xv[None, :]
                            acc += tl.sum(diff * diff, axis=1)
                    cols = g.to(tl.int64) * K + offs_k
                    if UNIT_ROWS:
                        scale = tl.load(scale_ptr + cols, mask=mask_k, other=0.0)
                        bias = tl.load(bias_ptr + cols, mask=mask_k, other=float("inf"))
                        s = bias + scale * acc
                    else:
                        s = tl.where(mask_k, acc, float("inf"))
                    m, i = tl.min(s, axis=0, return_indices=True)
                    better = m < best_s  # strict: ties keep the earlier (lower) index
                    best_k = tl.where(better, k0 + i, best_k)
                    best_s = tl.where(better, m, best_s)
                if best_s < float("inf"):
                    tl.store(out, best_k.to(tl.int64))


@dataclass
class SearchStats:
    """Diagnostics of one :func:`nearest_codeword_triton` call (costs a host sync)."""

    rows: int  #: G * N
    ambiguous: int  #: rows without a certificate (re-ranked exactly)
    full_scans: int  #: ambiguous rows with 0 or > MAX_CANDIDATES candidates
    config: str  #: the search kernel's autotuned configuration
    splits: int = 1  #: codebook slices the search ran in (see :func:`split_count`)

    @property
    def ambiguous_fraction(self) -> float:
        return self.ambiguous / max(self.rows, 1)


STAGE_ENV = "ANYTOK_TRITON_STAGE"
STAGE_POLICIES = ("auto", "always", "never")


def stage_policy(stage: str | None = None) -> str:
    """Whether to stage 16-bit copies of fp32 operands before the fused search.

    * ``never``: the kernels convert fp32 tiles in registers — strictly O(N + K) extra memory,
      but fp32 tiles double the shared memory of the software pipeline, and with D chunked
      (``D > 128``) the conversions spill registers (measured by compiling for sm_90).
    * ``always``: convert the codebook and x once up front (``2 K D`` and ``2 N D`` bytes).
    * ``auto`` (default): stage the codebook (it is re-read by every row block, and usually
      small) and stage x only when ``D > 128``.

    ``ANYTOK_TRITON_STAGE`` sets the default. Exactness does not depend on the choice.
    """
    value = (stage or os.environ.get(STAGE_ENV, "auto")).strip().lower()
    if value not in STAGE_POLICIES:
        raise ValueError(f"{STAGE_ENV}={value!r} is not one of {STAGE_POLICIES}")
    return value


def unsupported_reason(x: Tensor, codebook: Tensor) -> str | None:
    """Why the Triton path cannot take these tensors, or ``None`` if it can."""
    if not HAS_TRITON:
        return "triton is not installed"
    if x.device != codebook.device:
        return f"x is on {x.device} but the codebook is on {codebook.device}"
    if x.device.type != "cuda" and not _INTERPRET:
        return (
            f"tensors are on {x.device.type}; Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported, for CPU testing)"
        )
    if x.device.type == "cuda" and _INTERPRET:
        return "TRITON_INTERPRET=1 runs kernels on the CPU; got CUDA tensors"
    for name, t in (("x", x), ("codebook", codebook)):
        if t.dtype not in SUPPORTED_DTYPES:
            return f"{name} has dtype {t.dtype}; the kernels take float32, bfloat16 or float16"
    groups = codebook.shape[0] if codebook.ndim == 3 else 1
    rows = x.numel() // max(x.shape[-1], 1)
    if rows * MAX_CANDIDATES >= 2**31 or groups * codebook.shape[-2] >= 2**31:
        return "more than 2^31 rows or codewords"
    return None


#: Rows per block that :func:`split_count` assumes (the common tile), and the fewest
#: codewords a slice may have (four 128-wide tiles, so each slice still pipelines).
SPLIT_BLOCK_ROWS = 16 if _INTERPRET else 128
SPLIT_MIN_CODES = 64 if _INTERPRET else 512
#: At most this many codebook slices (per-row partial results: 12 bytes per slice).
MAX_SPLITS = 16


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a small fixed number for the interpreter,
    so that tests exercise the same decisions on tiny shapes)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_count(rows: int, k: int, sms: int) -> int:
    """Codebook slices for the search: 1 when the row blocks alone fill the GPU, else a
    power of two that brings the programs to about twice the multiprocessors.

    The fused search parallelises over row blocks; with few rows (encoding one clip, a
    small batch of images, a huge codebook) most multiprocessors would idle while a few
    programs scan all K codewords. Each slice then scans ``K / S`` codewords and writes its
    best and runner-up; a small kernel merges them (an O(S N) pass). ``rows`` counts every
    group's rows.
    """
    blocks = -(-rows // SPLIT_BLOCK_ROWS)
    if blocks >= sms:
        return 1
    want = min((2 * sms) // max(blocks, 1), k // SPLIT_MIN_CODES, MAX_SPLITS)
    return 1 if want < 2 else 1 << (want.bit_length() - 1)


def _rows_bucket(rows: int) -> int:
    """Power-of-two bucket of the row count for the autotuning keys (1024 .. 2^17): the
    best tile depends on how many row blocks there are, and a fine key would retune for
    every batch size of variable-length inputs."""
    return min(max(_next_pow2(rows), 1 << 10), 1 << 17)


AUTOTUNE_ENV = "ANYTOK_TRITON_AUTOTUNE"

#: tuning key -> (launch keywords of the chosen configuration, its description)
_TUNED: dict[tuple, tuple[dict[str, Any], str]] = {}
#: kernel name ("search", "candidates") -> configuration to use instead of tuning (tests)
_PINNED: dict[str, Any] = {}


def _launch_autotuned(
    kernel: Any,
    name: str,
    key: tuple,
    grid: Callable,
    untuned: Callable[[], Any],
    *args: Any,
    **kwargs: Any,
) -> str:
    """Launch an autotuned kernel; once it is tuned for ``key``, without the autotuner.

    Triton's ``Autotuner.run`` rebuilds its tuning key from every argument on each call (a
    dict of ~45 arguments, ``str`` of every tensor's dtype). With the launch itself stubbed
    out, a launch through it took 21-23 us of host time on the 2-core build machine against
    5-6 us for a direct call (``benchmarks/launch_overhead.py``). The search makes two
    autotuned launches per call, so that is of the order of the smallest anchor's whole bare
    GEMM (38 us on the issue's H200). The configuration stays the autotuner's own
    (benchmarked, or read from its disk cache); only the per-call lookup is done here.
    ``name`` names the kernel, and ``key`` must contain everything the autotuner keys on (its
    ``key`` arguments and the tensor dtypes); more is harmless.

    With ``ANYTOK_TRITON_AUTOTUNE=0`` the kernel runs ``untuned()``, the first configuration
    its pruning keeps, with no benchmarking: a new shape then costs one compilation instead
    of one per candidate configuration (the GPU tests use it). ``_PINNED[name]`` overrides
    both (tests run every configuration that way). Returns the configuration's description.
    """
    autotune = os.environ.get(AUTOTUNE_ENV, "1").strip() != "0"
    key = (name, autotune, *key)
    pinned = _PINNED.get(name)
    tuned = _TUNED.get(key) if pinned is None else (pinned.all_kwargs(), str(pinned))
    if tuned is None and not autotune:
        config = untuned()
        tuned = _TUNED[key] = (config.all_kwargs(), str(config))
    if tuned is None:
        _precompile(kernel, grid, args, kwargs)
        kernel[grid](*args, **kwargs)
        best = kernel.best_config
        tuned = _TUNED[key] = (best.all_kwargs(), str(best))
    else:
        kernel.fn[grid](*args, **kwargs, **tuned[0])
    return tuned[1]


def _precompile(kernel: Any, grid: Callable, args: tuple, kwargs: dict) -> None:
    """Compile every configuration the autotuner is about to time, in a thread pool.

    The autotuner compiles its candidates one after another as it times them. Triton's
    ``AsyncCompileMode`` hands the compilations to an executor instead, and compilation
    releases the GIL: 9 search configurations took 6.3 s one after another and 3.2 s on two
    threads on the 2-core build machine (``benchmarks/launch_overhead.py``); a GPU host has
    more cores. The compiled kernels land in the same caches the timed launches read. Best
    effort: on any failure the autotuner compiles as it would have.
    """
    if _INTERPRET:
        return
    try:
        workers = max(1, min(len(kernel.configs), os.cpu_count() or 1, 16))
        with (
            ThreadPoolExecutor(workers) as pool,
            triton.AsyncCompileMode(pool, ignore_errors=True),
        ):
            kernel.warmup(*args, grid=grid, **kwargs)
    except Exception as exc:  # an optimisation only: the autotuner still compiles
        _LOG.debug("parallel precompilation skipped: %s", exc)


def _operand_ready(t: Tensor, lp: torch.dtype) -> bool:
    """Whether ``t`` can feed the tensor cores as is: 16-bit, unit stride, rows of 16k."""
    return t.dtype == lp and t.stride(-1) == 1 and t.shape[-1] % 16 == 0


def _stage(
    t: Tensor, lp: torch.dtype, scaled: bool, centre: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """A contiguous ``lp`` copy of ``(G, R, D)`` with rows zero-padded to a multiple of 16.

    Zero columns add nothing to any dot product; the padding makes every row 32-byte aligned
    and the column masks constant over 16 columns, which the loads need to vectorise. With
    ``scaled`` row ``r`` holds ``lp(v_r * 2^e_r)`` (one Triton pass, no fp32 temporary),
    ``v_r = t[r]`` or, given a ``(G, D)`` fp32 ``centre``, ``fl(t[r] - centre)``; the second
    result is ``2^-e_r``, shape ``(G, R)``. Unscaled copies (no centre) return ``None``.
    """
    g, r, d = t.shape
    dp = -(-d // 16) * 16
    if scaled:
        out = torch.empty(g, r, dp, dtype=lp, device=t.device)
        inv = torch.empty(g, r, dtype=torch.float32, device=t.device)
        if r:
            block_r = 16 if _INTERPRET else 32
            _stage_scaled_kernel[(triton.cdiv(r, block_r), g)](
                t, out, inv, inv if centre is None else centre, r, d, dp, *t.stride(),
                LP=tl.float16 if lp == torch.float16 else tl.bfloat16,
                CENTRED=centre is not None, BLOCK_R=block_r, BLOCK_D=16 if _INTERPRET else 64,
            )  # fmt: skip
        return out, inv
    if centre is not None:
        raise ValueError("_stage: only scaled copies are centred")
    if dp == d:
        return t.to(lp, memory_format=torch.contiguous_format), None
    out = torch.zeros(g, r, dp, dtype=lp, device=t.device)
    out[..., :d] = t
    return out, None


def nearest_codeword_triton(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "euclidean",
    return_stats: bool = False,
    certify: bool = True,
    stage: str | None = None,
    splits: int | None = None,
) -> Tensor | tuple[Tensor, SearchStats]:
    """Fused search: int64 indices of shape ``x.shape[:-1]``, exact w.r.t. fp32 distances.

    Args:
        x: ``(..., D)`` vectors, or ``(G, ..., D)`` with a grouped codebook; fp32/bf16/fp16,
            any strides.
        codebook: ``(K, D)`` or ``(G, K, D)``; fp32/bf16/fp16, any strides.
        metric: ``"euclidean"``, ``"cosine"`` or ``"dot"`` (as the reference).
        return_stats: also return :class:`SearchStats` (synchronises the device).
        certify: ``False`` skips the certificate and re-ranking and returns the raw
            low-precision argmin — only for tests that show the re-ranking matters.
        stage: ``"auto"``, ``"always"`` or ``"never"`` (default: ``$ANYTOK_TRITON_STAGE``,
            else ``"auto"``); see :func:`stage_policy`.
        splits: codebook slices searched by separate programs and merged (default:
            :func:`split_count`, 1 whenever the rows fill the GPU). Any value gives the
            same indices; it only changes the parallelism.
    """
    _check(x, codebook, metric)
    reason = unsupported_reason(x, codebook)
    if reason is not None:
        raise RuntimeError(f"nearest_codeword_triton: {reason}")
    if splits is not None and (
        isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= 1024
    ):
        raise ValueError(
            f"nearest_codeword_triton: splits must be an int in [1, 1024], got {splits!r}"
        )
    grouped = codebook.ndim == 3
    lead = x.shape[:-1]
    d = x.shape[-1]
    groups = codebook.shape[0] if grouped else 1
    k = codebook.shape[-2]
    # reshape is a view for every layout whose rows can be addressed with one stride (all
    # 2-D slices included); otherwise it copies x once (input-sized, never N x K).
    n = math.prod(lead[1:]) if grouped else math.prod(lead)  # explicit: -1 fails at D = 0
    xs = x.detach().reshape(groups, n, d)
    cb = codebook.detach() if grouped else codebook.detach().unsqueeze(0)
    device = x.device
    idx = torch.empty(groups, n, dtype=torch.long, device=device)
    if n == 0 or k == 0 or d == 0:
        if k == 0 and n > 0:
            raise ValueError("nearest_codeword: the codebook has no codewords")
        idx.zero_()
        return (idx.reshape(lead), SearchStats(0, 0, 0, "")) if return_stats else idx.reshape(lead)

    lp_torch = operand_dtype(x.dtype, codebook.dtype)
    lp = tl.float16 if lp_torch == torch.float16 else tl.bfloat16
    # Euclidean search with scaled fp16 operands (every case but two 16-bit inputs of one
    # dtype, which are read exactly) subtracts the codebook mean m from both sides first: the
    # same ranking, but the operand rounding and with it E scale with the data's spread
    # instead of its distance from the origin (module docstring, "Centring").
    centred = metric == "euclidean" and not (xs.dtype == cb.dtype == lp_torch)
    # Inputs that are not already the operand dtype, and centred ones, are scaled per row /
    # per codeword.
    x_scaled = xs.dtype != lp_torch or centred
    c_scaled = cb.dtype != lp_torch or centred
    metric_id = _METRIC_IDS[metric]
    gamma = d * 2.0**-23 + 2.0**-20  # see module docstring
    block_d = _d_block(d) if not _INTERPRET else 16
    d_bucket = _next_pow2(d)
    k_bucket = min(_next_pow2(k), 1 << 20)
    n_bucket = _rows_bucket(groups * n)
    sms = multiprocessors(device)
    n_splits = splits if splits is not None else split_count(groups * n, k, sms)

    scale = torch.empty(groups, k, dtype=torch.float32, device=device)
    bias = torch.empty(groups, k, dtype=torch.float32, device=device)
    # One zeroed int32 workspace: (G, 4) float maxima (0.0f has all bits zero) + (G,) counter.
    work = torch.zeros(groups * 5, dtype=torch.int32, device=device)
    maxes = work[: groups * 4].view(torch.float32)
    counter = work[groups * 4 :]
    rows_list = torch.empty(groups, n, dtype=torch.int32, device=device)
    thr = torch.empty(groups, n, dtype=torch.float32, device=device)
    list_inv = torch.empty(groups, n if x_scaled else 1, dtype=torch.float32, device=device)
    if centred:  # one or two reductions over the codebook, no copy
        centre = search_centre(cb, xs.dtype)
    else:  # never read
        centre = scale
    # Candidate counts by list slot; the search zeroes the slots it fills.
    count = torch.empty(groups, n, dtype=torch.int32, device=device)
    if n_splits > 1:  # per-slice partial results for _merge_splits_kernel
        part = torch.empty(n_splits, groups, n, 2, dtype=torch.float32, device=device)
        part_idx = torch.empty(n_splits, groups, n, dtype=torch.int32, device=device)
        row_err = torch.empty(2, groups, n, dtype=torch.float32, device=device)
    else:  # never read
        part, part_idx, row_err = thr, rows_list, thr

    # Staging: 16-bit copies of the GEMM operands (see stage_policy). Residuals are always
    # measured against the operand actually read, so staging never affects exactness.
    policy = stage_policy(stage)
    stage_c = policy == "always" or (
        policy == "auto" and (c_scaled or not _operand_ready(cb, lp_torch))
    )
    stage_x = policy == "always" or (
        policy == "auto" and d > 128 and (x_scaled or not _operand_ready(xs, lp_torch))
    )
    if stage_c and c_scaled:  # written by the statistics kernel: no launch of its own
        co = torch.empty(groups, k, -(-d // 16) * 16, dtype=lp_torch, device=device)
    else:
        co = _stage(cb, lp_torch, scaled=False)[0] if stage_c else cb
    xo, xinv = (
        _stage(xs, lp_torch, x_scaled, centre if centred else None) if stage_x else (xs, None)
    )
    # Per-codeword multipliers, only when the search converts fp32 codebook tiles itself.
    cmult = torch.empty_like(scale) if c_scaled and not stage_c else scale  # else never read
    dc = co.shape[-1]
    # a_k with the codeword's operand scale folded in, for the low-precision passes.
    lp_scale = torch.empty_like(scale) if c_scaled else scale
    xinv = thr if xinv is None else xinv
    dx = xo.shape[-1]
    flags = dict(  # the kernels' shared constexpr arguments
        LP=lp, X_SCALED=x_scaled, X_STAGED=stage_x, C_SCALED=c_scaled, C_STAGED=stage_c,
        CENTRED=centred,
    )  # fmt: skip

    stats_block = 16 if _INTERPRET else 64
    _codeword_stats_kernel[(triton.cdiv(k, stats_block), groups)](
        cb, co, scale, bias, cmult, lp_scale, maxes, centre, k, d, dc, *cb.stride(),
        METRIC=metric_id, LP=lp, C_STAGED=stage_c and c_scaled, C_SCALED=c_scaled,
        CENTRED=centred, BLOCK_K=stats_block, BLOCK_D=block_d if d <= 128 else 64,
    )  # fmt: skip
    # Everything the autotuners key on: the size buckets and the tensor dtypes (the fp32
    # workspaces are fixed); the flags follow from those except on the bf16/fp16 staging
    # corner cases, so they go in too. Not the metric: it only changes a and b.
    tune_key = (
        n_bucket, d_bucket, k_bucket, n_splits, xs.dtype, xo.dtype, co.dtype, certify,
        *flags.values(),
    )  # fmt: skip
    config = _launch_autotuned(
        _search_kernel, "search", tune_key,
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), groups, n_splits),
        lambda: _prune_search_configs(_search_kernel.configs, {"D": d})[0],
        xs, xo, co, lp_scale, bias, maxes, cmult, xinv, idx, rows_list, thr, list_inv, counter,
        count, part, part_idx, row_err, centre,
        n, k, d, dx, dc, *xs.stride(), *xo.stride(), *co.stride(), gamma,
        n_bucket, d_bucket, k_bucket, n_splits,
        X_EXACT=not x_scaled, CERTIFY=certify,
        INTERPRET=_INTERPRET, **flags,
    )  # fmt: skip
    if n_splits > 1:
        merge_block = 16 if _INTERPRET else 256
        _merge_splits_kernel[(triton.cdiv(n, merge_block), groups)](
            part, part_idx, row_err, idx, counter, rows_list, thr, list_inv, count,
            n, n_splits, X_SCALED=x_scaled, CERTIFY=certify, BLOCK_N=merge_block,
        )  # fmt: skip

    if certify:
        m = MAX_CANDIDATES
        cand = torch.empty(groups, n, m, dtype=torch.int32, device=device)
        # A fixed grid (4 programs per multiprocessor, fewer for tiny inputs) that strides over
        # (slot block, codebook slice) items: the list's length is known only on the device.
        _launch_autotuned(
            _candidates_kernel, "candidates", tune_key,
            lambda meta: (min(triton.cdiv(n, meta["BLOCK_N"]) * MAX_SPLITS, 4 * sms), groups),
            lambda: _candidates_kernel.configs[0],
            xo, co, lp_scale, bias, cmult, rows_list, thr, list_inv, counter, cand, count,
            centre, n, k, d, dx, dc, *xo.stride(), *co.stride(), n_bucket, d_bucket, k_bucket,
            MAX_SPLITS, M=m, INTERPRET=_INTERPRET, BLOCK_D=min(block_d, 64), **flags,
        )  # fmt: skip
        # Programs stride over the list slots; 64 x 32 fp32 tiles keep the full-scan fallback
        # spill-free (128 x 64 spilled 368 B when compiled for sm_90).
        _rerank_kernel[(min(n, RERANK_PROGRAMS), groups)](
            xs, cb, scale, bias, rows_list, counter, cand, count, idx, n, k, d,
            *xs.stride(), *cb.stride(),
            M=m, UNIT_ROWS=metric_id != 0, BLOCK_K=16 if _INTERPRET else 64,
            BLOCK_D=16 if _INTERPRET else 32,
        )  # fmt: skip

    out = idx.reshape(lead)
    if not return_stats:
        return out
    ambiguous = int(counter.sum()) if certify else 0
    full = 0
    if ambiguous:
        valid = torch.arange(n, device=device)[None, :] < counter[:, None]
        full = int((valid & ((count == 0) | (count > MAX_CANDIDATES))).sum())
    return out, SearchStats(groups * n, ambiguous, full, config, n_splits)
