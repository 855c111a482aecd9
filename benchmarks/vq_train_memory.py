"""Peak tensor memory of one ``VectorQuantize`` training step, anytok against
vector-quantize-pytorch, measured on the CPU from PyTorch's own allocation records.

    python benchmarks/vq_train_memory.py --out benchmarks/results/vq_train_memory_cpu

The step is the one ``benchmarks/nearest_codeword.py`` times on the GPU: forward (search, EMA
statistics, straight-through output, commitment loss) and backward of
``loss + quantized.square().mean()``, after one warm-up step (so gradients and EMA buffers
already exist, as in a training loop). ``torch.profiler``'s memory timeline follows every
tensor the step allocates and frees; the peak of live bytes above the start is the figure
``torch.cuda.max_memory_allocated`` gives on a GPU, less the caching allocator's rounding.

anytok's CPU search keeps a score block of ~16 MiB per chunk, which the Triton search on a GPU
does not: the ``anytok, search O(N)`` column replaces the search by a stand-in with the
Triton path's footprint (int64 indices plus 80 B of workspace per row) to give the GPU
figure. vector-quantize-pytorch computes its N x K distances the same way on either device.
Sizes: the issue's first two anchors (larger ones need an N x K block beyond this machine).
``--levels L`` measures ``ResidualVQ`` with L stages against vector-quantize-pytorch's
instead (CPU search only: the stand-in cannot know the later stages' codes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytok.quantizers.kernels import nearest_codeword_reference  # noqa: E402
from anytok.quantizers.residual import ResidualVQ  # noqa: E402
from anytok.quantizers.vq import VectorQuantize  # noqa: E402

SIZES = [(48000, 128, 1024), (48000, 512, 4096)]  # (N, D, K)
SMOKE = [(2000, 32, 64)]


def peak_bytes(step: Callable[[], None]) -> int:
    """Peak live tensor bytes during ``step()`` above those live when it starts (CPU)."""
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    live = np.asarray(sizes).sum(axis=1)
    return int(live.max() - live[0])


def anytok_step(
    n: int, d: int, k: int, search_stand_in: bool, levels: int = 1
) -> Callable[[], None]:
    """One training step of ``VectorQuantize`` (``levels == 1``) or ``ResidualVQ``."""
    torch.manual_seed(0)
    vq = (VectorQuantize(d, k) if levels == 1 else ResidualVQ(d, levels, k)).train()
    z = torch.randn(n, d, requires_grad=True)
    if search_stand_in:  # one stage only: later stages' inputs depend on the earlier codes
        with torch.no_grad():
            fixed = nearest_codeword_reference(z.detach(), vq.codebook)

        def search(x: torch.Tensor) -> torch.Tensor:  # the Triton search's footprint
            torch.empty(x.shape[0], 20, dtype=torch.int32)
            return fixed.clone()

        vq.search = search  # type: ignore[method-assign]

    def step() -> None:
        out = vq(z)
        (out.loss + out.quantized.square().mean()).backward()

    return step


def vqp_step(n: int, d: int, k: int, levels: int = 1) -> Callable[[], None]:
    import vector_quantize_pytorch as vqp

    torch.manual_seed(0)
    if levels == 1:
        vq = vqp.VectorQuantize(dim=d, codebook_size=k, decay=0.99).train()
    else:
        vq = vqp.ResidualVQ(dim=d, num_quantizers=levels, codebook_size=k, decay=0.99).train()
    z = torch.randn(1, n, d, requires_grad=True)

    def step() -> None:
        quantized, _, loss = vq(z)
        (loss.sum() + quantized.square().mean()).backward()

    return step


def measure(n: int, d: int, k: int, levels: int = 1) -> dict[str, Any]:
    row: dict[str, Any] = {"N": n, "D": d, "K": k, "levels": levels}
    row["input_mib"] = n * d * 4 / 2**20
    cases = {
        "anytok_cpu_search": lambda: anytok_step(n, d, k, False, levels),
        "vqp": lambda: vqp_step(n, d, k, levels),
    }
    if levels == 1:
        cases["anytok_search_on"] = lambda: anytok_step(n, d, k, True)
    for name, make in cases.items():
        step = make()
        step()  # warm-up: gradients, EMA state
        row[f"{name}_mib"] = peak_bytes(step) / 2**20
    ours = row.get("anytok_search_on_mib", row["anytok_cpu_search_mib"])
    row["ratio"] = ours / row["vqp_mib"]
    return row


COLUMNS = [
    ("N", "N"), ("D", "D"), ("K", "K"), ("levels", "levels"),
    ("input_mib", "input MiB (N·D fp32)"),
    ("anytok_cpu_search_mib", "anytok MiB (CPU search)"),
    ("anytok_search_on_mib", "anytok MiB, search O(N)"), ("vqp_mib", "vqp MiB"),
    ("ratio", "anytok / vqp (search O(N) where measured)"),
]  # fmt: skip


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of ``rows`` under ``columns`` (``(key, title)`` pairs); floats to 3
    significant digits, missing keys blank."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(fmt(r.get(key, "")) for key, _ in columns) + " |" for r in rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one tiny size")
    parser.add_argument(
        "--levels", type=int, default=1, help="> 1: ResidualVQ with this many stages"
    )
    args = parser.parse_args(argv)
    rows = []
    for n, d, k in SMOKE if args.smoke else SIZES:
        rows.append(measure(n, d, k, args.levels))
        print(json.dumps(rows[-1]), flush=True)
    what = "VectorQuantize" if args.levels == 1 else f"ResidualVQ ({args.levels} stages)"
    lines = [
        f"Peak tensor memory of one {what} training step, CPU ({platform.machine()}), "
        f"torch {torch.__version__}",
        "",
        *markdown_table(rows, COLUMNS),
        "",
    ]
    if args.levels == 1:
        lines += [
            "Issue goal at these sizes: anytok's training step at most 1/8 of "
            "vector-quantize-pytorch's peak memory (ratio <= 0.125).",
            "",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "vq_train_memory" if args.levels == 1 else f"rvq{args.levels}_train_memory"
        (args.out / f"{stem}.md").write_text(table)
        (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
