"""Host time of launching the search kernel through Triton's autotuner vs directly.

    python benchmarks/launch_overhead.py --out benchmarks/results/launch_overhead_cpu

The launch itself (``JITFunction.run``: argument binding, driver call) is stubbed out, so
this needs no GPU and measures only the Python dispatch in front of it, with the argument
list of a real call at the first anchor (48000 x 128 x 1024, fp32 input):

* ``autotuner`` — ``_search_kernel[grid](...)`` with the tuning result already cached:
  ``Autotuner.run`` still builds its key from every argument on every call;
* ``direct`` — what ``triton_search._launch_autotuned`` does once a key is tuned: the
  heuristics wrapper called with the stored configuration.

Medians of 7 rounds of 20000 calls, microseconds per launch. A GPU host CPU is faster than
the build machine, so the absolute numbers there will be lower; the difference is what each
call saves, twice per search (search and candidate kernels).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import timeit
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

    call_args = (
        x, x, co, f32(g, k), f32(g, k), f32(g, 4), f32(g, k), f32(g, n),
        torch.empty(g, n, dtype=torch.long), torch.empty(g, n, dtype=torch.int32), f32(g, n),
        f32(g, n), torch.empty(g, dtype=torch.int32), n, k, d, d, d, *x.stride(), *x.stride(),
        *co.stride(), 1e-5, 128, 1024,
    )  # fmt: skip
    flags = dict(X_EXACT=False, CERTIFY=True, INTERPRET=False, LP=tl.float16,
                 X_SCALED=True, X_STAGED=False, C_SCALED=True, C_STAGED=True)  # fmt: skip

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), g)

    # The autotuner's cache holds a choice for this key, as after the first real call.
    nargs = dict(zip(kernel.arg_names, call_args))
    config = ts._prune_search_configs(kernel.configs, nargs)[0]
    key = (128, 1024, *(str(a.dtype) for a in call_args if hasattr(a, "dtype")))
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
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"Search-kernel launch dispatch, launch stubbed out, on **CPU: {cpu}**",
        "",
        f"| path | us per launch (median of 7 x {args.calls}) |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in result.items()),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "launch_overhead.md").write_text(table)
        meta = {"device": f"CPU: {cpu}", "us_per_launch": result, "rounds": times}
        (args.out / "launch_overhead.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
