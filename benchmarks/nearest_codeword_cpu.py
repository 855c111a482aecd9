"""The CPU path of the codebook search against ``torch.cdist(x, c).argmin(-1)``: time, CPU
time, peak extra memory and agreement, at CPU-sized versions of #4's anchor shapes.

    python benchmarks/nearest_codeword_cpu.py --out benchmarks/results/nearest_codeword_cpu

#4's goal for the CPU path: a chunked torch search with a configurable memory bound, at
least as fast as ``cdist + argmin``. For every size and thread count it times
``nearest_codeword_reference`` (default ``memory_budget``, and a 4 MiB one), and ``cdist +
argmin`` in the same process: wall-clock median and CPU-time median of ``--repeats`` calls
after one warm-up call. Peak memory above the inputs comes from PyTorch's allocation
records (``peak_bytes`` of ``vq_train_memory.py``): ``cdist`` holds an N x K block, the
chunked search a bounded one. ``mismatches`` counts rows whose fp64 distance is worse than
the fp64 optimum beyond fp32 ties (``count_mismatches`` of ``nearest_codeword.py``, on the
first 4096 rows).

``--baseline FILE`` also times another revision's ``reference.py`` in the same process, for
a before/after of a change to the CPU path::

    git show REV:anytok/quantizers/kernels/reference.py > /tmp/reference_rev.py
    python benchmarks/nearest_codeword_cpu.py --baseline /tmp/reference_rev.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nearest_codeword import count_mismatches  # noqa: E402
from vq_train_memory import markdown_table, peak_bytes  # noqa: E402

from anytok.quantizers.kernels import nearest_codeword_reference  # noqa: E402

# (N, D, K): #4's anchor shapes with N (and the largest K) cut to fit a laptop's seconds.
SIZES = [
    (8192, 128, 1024),
    (4800, 512, 4096),
    (8192, 256, 16384),
    (16384, 8, 16384),
    (2048, 256, 65536),
    (48000, 16, 512),
    (1024, 256, 262144),  # the largest anchor's K
    (1024, 8, 1 << 20),  # the largest K #4 names: cdist's N x K matrix is 4 GiB
]
SMOKE = [(4096, 16, 512)]  # an 8 MiB N x K block: the 4 MiB bound must halve it
SMALL_BUDGET = 4 * 2**20
CHECKED_ROWS = 4096


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall and median CPU milliseconds of ``repeats`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def load_baseline(path: Path) -> Callable[..., torch.Tensor]:
    """``nearest_codeword_reference`` of another revision's ``reference.py`` file."""
    spec = importlib.util.spec_from_file_location("baseline_reference", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise SystemExit(f"--baseline {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nearest_codeword_reference


def measure(
    n: int,
    d: int,
    k: int,
    threads: int,
    repeats: int,
    baseline: Callable[..., torch.Tensor] | None = None,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(n + d + k)
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "cdist": lambda: torch.cdist(x, c).argmin(-1),
        "reference": lambda: nearest_codeword_reference(x, c),
        "reference_4mib": lambda: nearest_codeword_reference(x, c, memory_budget=SMALL_BUDGET),
    }
    if baseline is not None:
        cases["baseline"] = lambda: baseline(x, c)
        cases["baseline_4mib"] = lambda: baseline(x, c, memory_budget=SMALL_BUDGET)
    row: dict[str, Any] = {"N": n, "D": d, "K": k, "threads": threads}
    for name, fn in cases.items():
        row[f"{name}_ms"], row[f"{name}_cpu_ms"] = time_calls(fn, repeats)
        row[f"{name}_extra_mib"] = peak_bytes(fn) / 2**20
        got = fn()[:CHECKED_ROWS]
        row[f"{name}_mismatches"] = count_mismatches(got, x[:CHECKED_ROWS], c, "euclidean")
    row["speedup"] = row["cdist_ms"] / row["reference_ms"]
    row["cpu_speedup"] = row["cdist_cpu_ms"] / row["reference_cpu_ms"]
    row["speedup_4mib"] = row["cdist_ms"] / row["reference_4mib_ms"]
    if baseline is not None:
        row["vs_baseline"] = row["baseline_ms"] / row["reference_ms"]
        row["vs_baseline_4mib"] = row["baseline_4mib_ms"] / row["reference_4mib_ms"]
    return row


COLUMNS = [
    ("N", "N"), ("D", "D"), ("K", "K"), ("threads", "threads"),
    ("cdist_ms", "cdist+argmin ms"), ("cdist_cpu_ms", "cpu ms"),
    ("cdist_extra_mib", "extra MiB"),
    ("reference_ms", "anytok ms"), ("reference_cpu_ms", "cpu ms"),
    ("reference_extra_mib", "extra MiB"),
    ("reference_4mib_ms", "anytok 4 MiB ms"), ("reference_4mib_extra_mib", "extra MiB"),
    ("speedup", "speed-up"), ("cpu_speedup", "cpu speed-up"), ("speedup_4mib", "4 MiB speed-up"),
    ("reference_mismatches", "mismatches"),
]  # fmt: skip
BASELINE_COLUMNS = [
    ("baseline_ms", "baseline ms"), ("baseline_4mib_ms", "baseline 4 MiB ms"),
    ("vs_baseline", "speed-up vs baseline"), ("vs_baseline_4mib", "4 MiB vs baseline"),
    ("baseline_mismatches", "baseline mismatches"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one tiny size, one thread")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another revision's reference.py to time"
    )
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: expected comma-separated integers")
    if args.smoke:
        thread_counts, args.repeats = [1], 1
    rows = []
    for threads in thread_counts:
        for n, d, k in SMOKE if args.smoke else SIZES:
            rows.append(measure(n, d, k, threads, args.repeats, baseline))
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"CPU codebook search, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; load average {load:.2f} at the end; "
        f"medians of {args.repeats} calls after a warm-up",
        "",
        *markdown_table(rows, COLUMNS + (BASELINE_COLUMNS if baseline else [])),
        "",
        "Goal (#4): the CPU path at least as fast as cdist + argmin (speed-up >= 1), with a "
        "configurable memory bound (the 4 MiB columns).",
        *(
            ["", f"Baseline: {args.baseline.name} (another revision of reference.py)."]
            if baseline
            else []
        ),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    failed = [r for r in rows if r["reference_mismatches"] or r["reference_4mib_mismatches"]]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "nearest_codeword_cpu.md").write_text(table)
        (args.out / "nearest_codeword_cpu.json").write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print(f"{len(failed)} rows returned a codeword that is not the nearest", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
