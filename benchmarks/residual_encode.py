"""Residual VQ encoding (one search call per stage): anytok eager and compiled against
vector-quantize-pytorch, with the same codebooks, in one process.

    python benchmarks/residual_encode.py --out benchmarks/results/residual_encode      # GPU
    python benchmarks/residual_encode.py --device cpu --out benchmarks/results/residual_encode_cpu

Per configuration it times (median; ``triton.testing.do_bench`` on CUDA, wall clock on the CPU):

* ``anytok_ms`` — ``ResidualVQ.encode``: per stage one search call and the residual update
  ``r - c[codes]`` (two torch ops in eager mode);
* ``compiled_ms`` — the same under ``torch.compile(fullgraph=True)``: the search stays one
  custom op and inductor fuses each residual update (gather + subtract, in place) into one
  kernel;
* ``graphs_ms`` (CUDA) — ``torch.compile(mode="reduce-overhead")``: CUDA graphs replay the
  whole encode, so no per-launch host cost;
* ``vqp_ms`` — vector-quantize-pytorch ``ResidualVQ`` eval forward (codes and quantized output);

and checks that compiled codes equal eager codes exactly, and how many codes agree with
vector-quantize-pytorch (different arithmetic may split fp32 near-ties differently).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nearest_codeword import _bench, _ms_cpu, _try  # noqa: E402

from anytok.quantizers.residual import ResidualVQ  # noqa: E402

#: name -> (dim, codebook size, stages): EnCodec's quantizer (24 kHz: 32 stages of 1024 codes
#: in 128 dims), and a wide one at the second search anchor's D and K. No projections: a
#: factorized RVQ (DAC's, per stage) has no vector-quantize-pytorch counterpart (its
#: ``codebook_dim`` projects once, before all stages).
CONFIGS = {"encodec": (128, 1024, 32), "wide": (512, 4096, 8)}
#: vectors per call: one minute of 75 Hz frames, and the 48000-row search anchor
GPU_ROWS = (4500, 48000)
CPU_ROWS = (4500,)
SMOKE = {"encodec": (16, 40, 3), "wide": (40, 24, 2)}


def build(dim: int, size: int, stages: int, device: str) -> tuple[Any, Any]:
    """anytok and vector-quantize-pytorch residual quantizers with the same codebooks."""
    from vector_quantize_pytorch import ResidualVQ as VqpResidualVQ

    ours = ResidualVQ(dim, stages, size).eval()
    theirs = VqpResidualVQ(dim=dim, num_quantizers=stages, codebook_size=size).eval()
    with torch.no_grad():
        for mine, other in zip(ours.layers, theirs.layers):
            other._codebook.embed.copy_(mine.codebook[None])  # (heads=1, K, D)
            other._codebook.embed_avg.copy_(mine.codebook[None])
    return ours.to(device), theirs.to(device)


def _median_ms(fn: Callable[[], Any], device: str) -> float:
    """Median ms: ``triton.testing.do_bench`` on CUDA, wall clock of 5 calls on the CPU."""
    return _bench(fn) if device == "cuda" else _ms_cpu(fn, reps=5)


def measure(name: str, cfg: tuple[int, int, int], rows: int, device: str) -> dict[str, Any]:
    dim, size, stages = cfg
    torch.manual_seed(0)
    ours, theirs = build(dim, size, stages, device)
    # Unit-scale inputs against codewords of norm ~1, as the codebooks are initialised.
    z = torch.randn(rows, dim, device=device) * dim**-0.5
    row: dict[str, Any] = {"config": name, "N": rows, "D": dim, "K": size, "stages": stages}
    torch._dynamo.reset()
    with torch.no_grad():
        codes = ours.encode(z)
        row["anytok_ms"] = _median_ms(lambda: ours.encode(z), device)
        # Dynamo compiles one code object (ResidualVQ.encode) per row and would stop after
        # its recompile limit: start every row from empty caches.
        torch._dynamo.reset()
        compiled = torch.compile(ours.encode, fullgraph=True)
        row["compiled_equal"] = _try(lambda: bool(torch.equal(compiled(z), codes)))
        if row["compiled_equal"] is True:
            row["compiled_ms"] = _median_ms(lambda: compiled(z), device)
        if device == "cuda":
            graphs = torch.compile(ours.encode, mode="reduce-overhead", fullgraph=True)

            def replay() -> Any:
                torch.compiler.cudagraph_mark_step_begin()  # earlier outputs may be overwritten
                return graphs(z)

            def graphed() -> bool | str:
                from torch._dynamo.utils import counters

                skips = counters["inductor"]["cudagraph_skips"]
                for _ in range(3):  # cudagraph trees warm up, then record, then replay
                    out = replay()
                # inductor only warns when it cannot use CUDA graphs and runs without them
                if counters["inductor"]["cudagraph_skips"] > skips:
                    return "no CUDA graph (inductor skipped it)"
                return bool(torch.equal(out, codes))

            row["graphs_equal"] = _try(graphed)
            if row["graphs_equal"] is True:
                row["graphs_ms"] = _median_ms(replay, device)
        _, vqp_codes, _ = theirs(z)
        row["vqp_agree"] = float((vqp_codes == codes).float().mean())
        row["vqp_ms"] = _median_ms(lambda: theirs(z), device)
    best = min(v for k, v in row.items() if k.endswith("_ms") and k != "vqp_ms")
    row["speedup_vs_vqp"] = row["vqp_ms"] / best
    return row


COLUMNS = ["config", "N", "D", "K", "stages", "anytok_ms", "compiled_ms",
           "graphs_ms", "vqp_ms", "speedup_vs_vqp", "compiled_equal", "graphs_equal",
           "vqp_agree"]  # fmt: skip


def markdown(rows: list[dict[str, Any]], device_name: str) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [f"Residual VQ encode on **{device_name}** (torch {torch.__version__})", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "times in ms (median); speedup_vs_vqp = vqp_ms / fastest anytok column"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/residual_encode"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--rows", default=None, help="comma-separated vector counts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu", file=sys.stderr)
        return 2
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = (
            f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    configs = SMOKE if args.smoke else CONFIGS
    rows_default = (37,) if args.smoke else (GPU_ROWS if args.device == "cuda" else CPU_ROWS)
    counts = [int(v) for v in args.rows.split(",")] if args.rows else list(rows_default)
    results: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def report() -> None:  # after every row: a run cut short keeps what it measured
        meta = {"device": device_name, "torch": torch.__version__, "smoke": args.smoke}
        (args.out / "residual_encode.json").write_text(
            json.dumps({**meta, "rows": results}, indent=2) + "\n"
        )
        (args.out / "residual_encode.md").write_text(markdown(results, device_name))

    try:
        for name, cfg in configs.items():
            for n in counts:
                results.append(measure(name, cfg, n, args.device))
                print(json.dumps(results[-1]), flush=True)
                report()
    except KeyboardInterrupt:
        print(f"interrupted after {len(results)} row(s)", file=sys.stderr)
    report()
    print(markdown(results, device_name))
    broken = [r for r in results if r.get("compiled_equal") is not True]
    if broken:
        print(f"compiled codes differ or failed in {len(broken)} row(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
