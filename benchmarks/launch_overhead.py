"""Host-side costs of the search that need no GPU to measure.

    python benchmarks/launch_overhead.py --out benchmarks/results/launch_overhead_cpu

1. **Dispatch per launch.** The launch itself (``JITFunction.run``: argument binding,
   driver call) is stubbed out, so this measures only the Python dispatch in front of it,
   with the argument list of a real call at the first anchor (48000 x 128 x 1024, fp32):

   * ``autotuner`` — ``_search_kernel[grid](...)`` with the tuning result already cached:
     ``Autotuner.run`` still builds its key from every argument on every call;
   * ``direct`` — what ``triton_search._launch_autotuned`` does once a key is tuned: the
     heuristics wrapper called with the stored configuration.

   Medians of 7 rounds of ``--calls`` calls, microseconds per launch. The difference is what
   each call saves, twice per search (search and candidate kernels).

2. **First-call compilation.** Before the autotuner times the configurations of a new key
   it must compile each of them. ``--compile-configs`` search configurations (D = 128, bf16
   operands) are compiled for sm_90 with Triton's own ptxas into an empty cache, one after
   another and then in a thread pool (compilation releases the GIL), as
   ``triton_search._precompile`` does on the GPU.

A GPU host's CPU differs from the build machine, so the absolute numbers there will too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from anytok.quantizers.kernels import triton_search as ts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--compile-configs", type=int, default=9, help="0: skip part 2")
    args = parser.parse_args(argv)
    if ts.interpreting():
        print(
            "unset TRITON_INTERPRET: the interpreter has one config and no tuning", file=sys.stderr
        )
        return 2

    kernel = ts._search_kernel
    kernel.fn.fn.run = lambda *a, **k: None  # the JITFunction's launch: stubbed out
    g, n, k, d = 1, 48000, 1024, 128
    x = torch.empty(g, n, d)
    co = torch.empty(g, k, d, dtype=torch.float16)

    def f32(*shape: int) -> torch.Tensor:
        return torch.empty(*shape)

    i32 = torch.int32
    call_args = (
        x, x, co, f32(g, k), f32(g, k), f32(g, 4), f32(g, k), f32(g, n),
        torch.empty(g, n, dtype=torch.long), torch.empty(g, n, dtype=i32), f32(g, n),
        f32(g, n), torch.empty(g, dtype=i32), torch.empty(g, n, dtype=i32), f32(g, n),
        torch.empty(g, n, dtype=i32), f32(g, n), f32(g, d), n, k, d, d, d, *x.stride(),
        *x.stride(),
        *co.stride(), 1e-5, ts._rows_bucket(n), 128, 1024, 1,
    )  # fmt: skip
    flags = dict(X_EXACT=False, CERTIFY=True, INTERPRET=False, LP=tl.float16,
                 X_SCALED=True, X_STAGED=False, C_SCALED=True, C_STAGED=True,
                 CENTRED=True)  # fmt: skip

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), g, 1)

    # The autotuner's cache holds a choice for this key, as after the first real call.
    nargs = dict(zip(kernel.arg_names, call_args))
    config = ts._prune_search_configs(kernel.configs, nargs)[0]
    key = (ts._rows_bucket(n), 128, 1024, 1)  # N_BUCKET, D_BUCKET, K_BUCKET, SPLITS
    key = (*key, *(str(a.dtype) for a in call_args if hasattr(a, "dtype")))
    kernel.cache[key] = config
    chosen = config.all_kwargs()

    def autotuner() -> None:
        kernel[grid](*call_args, **flags)

    def direct() -> None:
        kernel.fn[grid](*call_args, **flags, **chosen)

    autotuner()
    assert kernel.best_config is config, "the autotuner did not take its cached choice"
    times: dict[str, list[float]] = {"autotuner": [], "direct": []}
    for _ in range(7):
        for name, fn in (("autotuner", autotuner), ("direct", direct)):
            times[name].append(timeit.timeit(fn, number=args.calls) / args.calls * 1e6)
    result = {name: statistics.median(v) for name, v in times.items()}
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [
        f"Search-kernel launch dispatch, launch stubbed out, on **CPU: {cpu}**",
        "",
        f"| path | us per launch (median of 7 x {args.calls}) |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in result.items()),
        "",
    ]
    meta: dict = {"device": f"CPU: {cpu}", "us_per_launch": result, "rounds": times}
    if args.compile_configs:
        meta["compile_s"] = compile_times(args.compile_configs)
        workers = meta["compile_s"]["workers"]
        lines += [
            f"First-call compilation of {args.compile_configs} search configurations for sm_90",
            "",
            "| how | seconds |",
            "|---|---|",
            f"| one after another | {meta['compile_s']['serial']:.2f} |",
            f"| thread pool of {workers} | {meta['compile_s']['parallel']:.2f} |",
            "",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "launch_overhead.md").write_text(table)
        (args.out / "launch_overhead.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0


def compile_times(count: int) -> dict[str, float]:
    """Seconds to compile ``count`` search configurations serially and in a thread pool,
    each time into an empty Triton cache."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import compile_sm90 as sm90

    case = sm90.CASES["bf16"]
    configs = [c for c in ts._search_configs() if c.kwargs.get("BLOCK_D") == 128]
    configs = [c for c in configs if "CHUNKED" not in c.kwargs][:count]

    def compile_one(config: triton.Config) -> None:
        consts = sm90.search_constexprs(case, config, staged_x=False, one_d=True)
        sig = sm90.search_signature(case)
        sm90.compile_sm90(ts._search_kernel, sig, consts, config.num_warps, config.num_stages)

    workers = min(len(configs), os.cpu_count() or 1)
    result: dict[str, float] = {"workers": workers}
    for how in ("serial", "parallel"):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TRITON_CACHE_DIR"] = cache
            start = time.perf_counter()
            if how == "serial":
                for config in configs:
                    compile_one(config)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(compile_one, configs))
            result[how] = time.perf_counter() - start
    return result


if __name__ == "__main__":
    sys.exit(main())
