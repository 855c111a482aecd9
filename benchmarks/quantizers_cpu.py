"""CPU time and peak memory of anytok's VectorQuantize / ResidualVQ against
vector-quantize-pytorch (eval forward and one training step), printed as a Markdown table.

    python benchmarks/quantizers_cpu.py [--out benchmarks/results/quantizers_cpu.md]

Memory: ``tracemalloc`` sees only Python's allocator, not torch's, and torch keeps no peak
counter for CPU tensors. So every measurement runs in a fresh subprocess, which reads its
resident set size just before the first measured call and the kernel's high-water mark
(``getrusage(RUSAGE_SELF).ru_maxrss``) just after it: the difference is the peak extra memory
the call needed (inputs and modules are allocated before the baseline). Large tensors come
from ``mmap`` and go back to the OS when freed, so the high-water mark tracks real peaks.
Time: median wall time of several calls after one warm-up call, in the same subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: (vectors n, dim d, codebook size k): a small case, a wide one, and a large codebook, where an
#: n x k distance matrix (and, in training, an n x k one-hot) is 256 MiB each.
SIZES = ((4096, 64, 512), (16384, 128, 1024), (8192, 64, 8192))
RVQ_LEVELS = 4
REPEATS = 5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(impl: str, quantizer: str, dim: int, size: int):
    """A module and a callable ``run(z) -> (quantized, loss)`` for one implementation."""
    if impl == "anytok":
        from anytok.quantizers import ResidualVQ, VectorQuantize

        module = (
            VectorQuantize(dim, size) if quantizer == "vq" else ResidualVQ(dim, RVQ_LEVELS, size)
        )

        def run(z):
            out = module(z)
            return out.quantized, out.loss

    else:
        import vector_quantize_pytorch as vqp

        # same algorithm as ours: EMA codebook, straight-through, no k-means, no revival
        common = {"codebook_size": size, "rotation_trick": False, "decay": 0.8}
        module = (
            vqp.VectorQuantize(dim=dim, **common)
            if quantizer == "vq"
            else vqp.ResidualVQ(dim=dim, num_quantizers=RVQ_LEVELS, **common)
        )

        def run(z):
            quantized, _, loss = module(z)
            return quantized, loss.sum()

    return module, run


def measure(impl: str, quantizer: str, mode: str, n: int, dim: int, size: int) -> dict:
    """One measurement (run inside a fresh subprocess)."""
    import torch

    torch.manual_seed(0)
    module, run = _build(impl, quantizer, dim, size)
    z = torch.randn(n, dim)
    if mode == "train":
        module.train()
        z.requires_grad_(True)

        def step() -> None:
            quantized, loss = run(z)
            (quantized.square().mean() + loss).backward()
            z.grad = None

    else:
        module.eval()

        def step() -> None:
            with torch.no_grad():
                run(z)

    baseline = _rss_bytes()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "peak_mib": max(peak - baseline, 0) / 2**20}


def _machine() -> str:
    import torch

    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def _versions() -> str:
    from importlib.metadata import version

    return f"vector-quantize-pytorch {version('vector-quantize-pytorch')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return

    load_before = os.getloadavg()[0]
    rows = []
    for n, dim, size in SIZES:
        for quantizer in ("vq", "rvq"):
            for mode in ("eval", "train"):
                result = {}
                for impl in ("anytok", "vqp"):
                    case = {"impl": impl, "quantizer": quantizer, "mode": mode}
                    case.update(n=n, dim=dim, size=size)
                    done = subprocess.run(
                        [sys.executable, __file__, "--one", json.dumps(case)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    result[impl] = json.loads(done.stdout.strip().splitlines()[-1])
                name = (
                    "VectorQuantize" if quantizer == "vq" else f"ResidualVQ ({RVQ_LEVELS} levels)"
                )
                ours, theirs = result["anytok"], result["vqp"]
                row = (
                    f"| {n} x {dim}, K={size} | {name} | {mode} "
                    f"| {ours['ms']:.1f} | {theirs['ms']:.1f} | {theirs['ms'] / ours['ms']:.2f}x "
                    f"| {ours['peak_mib']:.0f} | {theirs['peak_mib']:.0f} |"
                )
                print(row, file=sys.stderr, flush=True)
                rows.append(row)

    report = "\n".join(
        [
            "# Quantizers on the CPU: anytok vs vector-quantize-pytorch",
            "",
            f"Machine: {_machine()}; {_versions()}. One-minute load average"
            f" {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after (other jobs on a"
            " shared machine slow both columns alike; compare ratios rather than absolute times).",
            "",
            "Generated by `python benchmarks/quantizers_cpu.py`. n vectors of d channels, K codes;"
            " EMA codebooks, straight-through gradients (rotation trick off in both), no k-means"
            " and no dead-code revival. *train* is forward + backward of"
            " `quantized.square().mean() + loss` with EMA updates. Time: median of"
            f" {REPEATS} calls after a warm-up. Peak: resident memory high-water mark during the"
            " first call minus the resident memory just before it, in a fresh process per cell.",
            "",
            "| n x d, K | quantizer | mode | anytok ms | vqp ms | vqp / anytok time"
            " | anytok peak MiB | vqp peak MiB |",
            "|---|---|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
