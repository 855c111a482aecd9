"""Compile the nearest-codeword kernels for sm_90 (H100/H200) without a GPU and report resources.

Triton ships ``ptxas`` and ``cuobjdump``, so every autotuning configuration can be compiled
ahead of time for ``GPUTarget("cuda", 90, 64)`` with the specialisations a real launch gets
(16-divisible pointers and sizes, unit strides as constants). For each kernel, operand case
and tile configuration the script reports registers per thread, spill stack bytes, static
shared memory and whether the loads were software-pipelined (``cp.async`` in the PTX)::

    python benchmarks/compile_sm90.py --out benchmarks/results/compile_sm90

It checks code generation only; speed needs a GPU (``benchmarks/nearest_codeword.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from anytok.quantizers.kernels import triton_search as ts  # noqa: E402

TARGET = GPUTarget("cuda", 90, 64)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

# Operand cases: x and codebook operand pointer dtypes, operand dtype, flags. "fp32 auto" is
# the default for fp32 inputs: the codebook staged as scaled fp16, x scaled in-kernel for
# D <= 128 and staged above; "fp32 never" converts everything in registers. Both are
# euclidean, so centred on the codebook mean; "fp32 auto cos" is cosine / dot (not centred).
CASES = {
    "bf16": dict(xo="bf16", co="bf16", lp=tl.bfloat16, X_SCALED=False, C_SCALED=False,
                 C_STAGED=True, CENTRED=False),
    "fp32 auto": dict(xo="fp32", co="fp16", lp=tl.float16, X_SCALED=True, C_SCALED=True,
                      C_STAGED=True, CENTRED=True),
    "fp32 auto cos": dict(xo="fp32", co="fp16", lp=tl.float16, X_SCALED=True, C_SCALED=True,
                          C_STAGED=True, CENTRED=False),
    "fp32 never": dict(xo="fp32", co="fp32", lp=tl.float16, X_SCALED=True, C_SCALED=True,
                       C_STAGED=False, CENTRED=True),
}  # fmt: skip


def _jit(kernel: object) -> triton.runtime.jit.JITFunction:
    """The JITFunction under autotune / heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn  # type: ignore[attr-defined]
    return kernel


#: Integer arguments a real launch does not see as multiples of 16 (small counts).
NOT_DIVISIBLE = {"SPLITS"}


def compile_sm90(
    kernel: object, signature: dict, constexprs: dict, num_warps: int, num_stages: int
) -> triton.compiler.CompiledKernel:
    """Compile for sm_90; 16-divisibility on every pointer and non-constant integer (except
    the counts in ``NOT_DIVISIBLE``)."""
    fn = _jit(kernel)
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    attrs = {
        (fn.arg_names.index(name),): [["tt.divisibility", 16]]
        for name, kind in signature.items()
        if kind.startswith("*") or (kind == "i32" and name not in NOT_DIVISIBLE)
    }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=TARGET, options=options)


def _compile(
    kernel: object, signature: dict, constexprs: dict, num_warps: int, num_stages: int
) -> dict:
    """Compile for sm_90 and read the resources the result uses."""
    compiled = compile_sm90(kernel, signature, constexprs, num_warps, num_stages)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    field = lambda key: int(m.group(1)) if (m := re.search(rf"{key}:(\d+)", usage)) else -1  # noqa: E731
    return {
        "registers": field("REG"),
        "stack": field("STACK"),
        "shared": compiled.metadata.shared,
        "pipelined": "cp.async" in compiled.asm["ptx"],
        "mma": "wgmma"
        if "wgmma" in compiled.asm["ptx"]
        else ("mma" if "mma.sync" in compiled.asm["ptx"] else "none"),
    }


def search_signature(case: dict) -> dict:
    return {
        "x_ptr": "*fp32" if case["xo"] == "fp32" else "*bf16",
        "xo_ptr": f"*{case['xo']}",
        "co_ptr": f"*{case['co']}",
        "scale_ptr": "*fp32",
        "bias_ptr": "*fp32",
        "maxes_ptr": "*fp32",
        "cmult_ptr": "*fp32",
        "xinv_ptr": "*fp32",
        "idx_ptr": "*i64",
        "list_ptr": "*i32",
        "thr_ptr": "*fp32",
        "list_inv_ptr": "*fp32",
        "counter_ptr": "*i32",
        "count_ptr": "*i32",
        "part_ptr": "*fp32",
        "part_idx_ptr": "*i32",
        "row_err_ptr": "*fp32",
        "centre_ptr": "*fp32",
        **{name: "i32" for name in ("N", "K", "D", "DX", "DC")},
        **{name: "i32" for name in ("s_xg", "s_xn", "s_xog", "s_xon", "s_cog", "s_cok")},
        "gamma": "fp32",
        **{name: "i32" for name in ("N_BUCKET", "D_BUCKET", "K_BUCKET")},
        **({"SPLITS": "i32"} if case.get("split") else {}),
    }


def search_constexprs(case: dict, config: triton.Config, staged_x: bool, one_d: bool) -> dict:
    """The search kernel's constexpr arguments for an operand case and a tile configuration
    (``SPLITS`` is 1, which Triton specialises as a constant, unless ``case["split"]``)."""
    kw = config.kwargs
    return {
        **({} if case.get("split") else {"SPLITS": 1}),
        "s_xd": 1, "s_xod": 1, "s_cod": 1, "LP": case["lp"],
        "X_EXACT": not case["X_SCALED"], "X_STAGED": staged_x,
        "X_SCALED": case["X_SCALED"], "C_STAGED": case["C_STAGED"],
        "C_SCALED": case["C_SCALED"], "CENTRED": case["CENTRED"], "CERTIFY": True,
        "INTERPRET": False, "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": kw["BLOCK_K"], "BLOCK_D": kw["BLOCK_D"],
        "ONE_D": one_d,
    }  # fmt: skip


def search_rows(smoke: bool = False) -> list[dict]:
    """Every search tile per operand case and D, and the codebook-split variant (``SPLITS >
    1``: partial results instead of the certificate) of the first tile at D = 64 and 256."""
    rows = []
    for case_name, case in CASES.items():
        for d in (64, 256) if smoke else (16, 32, 64, 128, 256):
            one_d = d <= 128
            staged_x = case_name.startswith("fp32 auto") and not one_d
            configs = [
                c
                for c in ts._search_configs()
                if ("CHUNKED" not in c.kwargs) == one_d
                and (not one_d or c.kwargs["BLOCK_D"] == ts._d_block(d))
            ]
            variants = [(False, c) for c in (configs[:1] if smoke else configs)]
            if d == 64 or (d == 256 and not smoke):
                variants.append((True, configs[0]))
            for split, config in variants:
                kw = config.kwargs
                op_case = {**case, "split": split, "xo": "fp16" if staged_x else case["xo"]}
                consts = search_constexprs(op_case, config, staged_x, one_d)
                sig = search_signature(op_case)
                res = _compile(ts._search_kernel, sig, consts, config.num_warps, config.num_stages)
                tile = f"{kw['BLOCK_N']}x{kw['BLOCK_K']}x{kw['BLOCK_D']} w{config.num_warps}"
                kernel = "search split" if split else "search"
                rows.append({"kernel": kernel, "case": case_name, "D": d, "tile": tile,
                             "stages": config.num_stages, **res})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def other_rows(smoke: bool = False) -> list[dict]:
    rows = []
    for case_name, case in CASES.items():
        for config in ts._candidate_configs()[: 1 if smoke else None]:
            kw = config.kwargs
            sig = {
                "x_ptr": f"*{case['xo']}", "c_ptr": f"*{case['co']}", "scale_ptr": "*fp32",
                "bias_ptr": "*fp32", "cmult_ptr": "*fp32", "list_ptr": "*i32",
                "thr_ptr": "*fp32", "list_inv_ptr": "*fp32", "counter_ptr": "*i32",
                "cand_ptr": "*i32", "count_ptr": "*i32", "centre_ptr": "*fp32",
                **{n: "i32" for n in ("N", "K", "D", "DX", "DC", "s_xg", "s_xn", "s_cg", "s_ck")},
                "N_BUCKET": "i32", "D_BUCKET": "i32", "K_BUCKET": "i32", "MAX_SPLITS": "i32",
            }  # fmt: skip
            consts = {
                "s_xd": 1, "s_cd": 1, "M": ts.MAX_CANDIDATES, "LP": case["lp"],
                "X_SCALED": case["X_SCALED"], "X_STAGED": False, "C_SCALED": case["C_SCALED"],
                "C_STAGED": case["C_STAGED"], "CENTRED": case["CENTRED"], "INTERPRET": False,
                "BLOCK_D": 64,
                "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": kw["BLOCK_K"],
            }  # fmt: skip
            res = _compile(ts._candidates_kernel, sig, consts, config.num_warps, config.num_stages)
            tile = f"{kw['BLOCK_N']}x{kw['BLOCK_K']}x64 w{config.num_warps}"
            rows.append({"kernel": "candidates", "case": case_name, "D": 256, "tile": tile,
                         "stages": config.num_stages, **res})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    for case_name, case in CASES.items():
        sig = {
            "c_ptr": "*fp32" if case["C_SCALED"] else "*bf16", "co_ptr": f"*{case['co']}",
            "scale_ptr": "*fp32", "bias_ptr": "*fp32", "cmult_ptr": "*fp32", "lp_scale_ptr": "*fp32",
            "maxes_ptr": "*fp32", "centre_ptr": "*fp32",
            **{n: "i32" for n in ("K", "D", "DC", "s_cg", "s_ck")},
        }  # fmt: skip
        consts = {
            "s_cd": 1, "METRIC": 0 if case["CENTRED"] else 1, "LP": case["lp"],
            "C_STAGED": case["C_STAGED"] and case["C_SCALED"], "C_SCALED": case["C_SCALED"],
            "CENTRED": case["CENTRED"], "BLOCK_K": 64, "BLOCK_D": 64,
        }  # fmt: skip
        res = _compile(ts._codeword_stats_kernel, sig, consts, 4, 3)
        rows.append({"kernel": "codeword_stats", "case": case_name, "D": 256, "tile": "64x64 w4",
                     "stages": 3, **res})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    sig = {
        "part_ptr": "*fp32", "part_idx_ptr": "*i32", "row_err_ptr": "*fp32", "idx_ptr": "*i64",
        "counter_ptr": "*i32", "list_ptr": "*i32", "thr_ptr": "*fp32", "list_inv_ptr": "*fp32",
        "count_ptr": "*i32", "N": "i32", "SPLITS": "i32",
    }  # fmt: skip
    consts = {"X_SCALED": True, "CERTIFY": True, "BLOCK_N": 256}
    res = _compile(ts._merge_splits_kernel, sig, consts, 4, 3)
    rows.append({"kernel": "merge_splits", "case": "fp32", "D": 0, "tile": "256 w4", "stages": 3,
                 **res})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    sig = {
        "x_ptr": "*fp32", "c_ptr": "*fp32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
        "list_ptr": "*i32", "counter_ptr": "*i32", "cand_ptr": "*i32", "count_ptr": "*i32",
        "idx_ptr": "*i64", **{n: "i32" for n in ("N", "K", "D", "s_xg", "s_xn", "s_cg", "s_ck")},
    }  # fmt: skip
    # UNIT_ROWS: cosine / dot (the rows' unit-peak pass, b + a<x, c>); euclidean ||x - c||^2
    for unit_rows, case in ((True, "fp32 cos/dot"), (False, "fp32 euclid")):
        consts = {
            "s_xd": 1, "s_cd": 1, "M": ts.MAX_CANDIDATES, "UNIT_ROWS": unit_rows,
            "BLOCK_K": 64, "BLOCK_D": 32,
        }  # fmt: skip
        res = _compile(ts._rerank_kernel, sig, consts, 4, 3)
        rows.append({"kernel": "rerank", "case": case, "D": 256, "tile": "64x32 w4",
                     "stages": 3, **res})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    sig = {
        "src_ptr": "*fp32", "dst_ptr": "*fp16", "inv_ptr": "*fp32", "centre_ptr": "*fp32",
        **{n: "i32" for n in ("R", "D", "DP", "s_g", "s_r")},
    }  # fmt: skip
    for centred, case in ((True, "fp32 euclid"), (False, "fp32 cos/dot")):
        consts = {"s_d": 1, "LP": tl.float16, "CENTRED": centred, "BLOCK_R": 32, "BLOCK_D": 64}
        res = _compile(ts._stage_scaled_kernel, sig, consts, 4, 3)
        rows.append({"kernel": "stage_scaled", "case": case, "D": 256, "tile": "32x64 w4",
                     "stages": 3, **res})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one tile per kernel and case")
    args = parser.parse_args()
    rows = search_rows(args.smoke) + other_rows(args.smoke)
    head = "| kernel | case | D | tile | stages | regs | stack B | shared B | cp.async | MMA |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    body = "\n".join(
        f"| {r['kernel']} | {r['case']} | {r['D']} | {r['tile']} | {r['stages']} "
        f"| {r['registers']} | {r['stack']} | {r['shared']} | {'yes' if r['pipelined'] else 'no'} "
        f"| {r['mma']} |"
        for r in rows
    )
    spills = sum(r["stack"] > 0 for r in rows)
    md = (
        f"# Kernels compiled for sm_90 (no GPU; Triton {triton.__version__} ptxas)\n\n"
        f"{len(rows)} compilations, {spills} with a spill stack.\n\n{head}{body}\n"
    )
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_sm90.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "compile_sm90.md").write_text(md)


if __name__ == "__main__":
    main()
