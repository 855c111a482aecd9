"""How many rows the Triton search must re-rank, per operand format, at the anchor sizes.

The fused kernels certify a row in one low-precision pass when its runner-up trails by more
than twice the error bound; other rows pay a second pass and an exact re-rank. This script
evaluates the kernels' bound with :mod:`anytok.quantizers.kernels.certificate` (a torch model
that ``tests/test_kernels.py`` checks against the kernels' own counts) on a row sample of each
anchor size, so it runs on the CPU::

    python benchmarks/certificate_rate.py --out benchmarks/results/certificate_rate_cpu

Operand formats: ``bf16`` (plain bf16 copies of fp32 data) and ``fp16_scaled`` (fp16 with a
power-of-two scale per row, what the kernels use for fp32 and mixed inputs). Euclidean
searches with these operands are centred on the codebook mean (as the kernels do); the
``fp16 scaled, not centred`` column shows the same operands without it. Data: ``gaussian``
(x and codebook i.i.d. N(0, 1), as in ``nearest_codeword.py``), ``clustered`` (x = a random
codeword + N(0, 0.25^2) noise per dimension, like inputs of a trained VQ) and ``offset3`` /
``offset10`` (``gaussian`` plus a common offset of 3 or 10 in every dimension: features
that are not zero-mean, such as post-ReLU activations). Input dtypes: fp32 x and codebook,
and bf16 x with an fp32 codebook (autocast training).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytok.quantizers.kernels.certificate import ambiguous_rows  # noqa: E402

ANCHORS = [  # (N, D, K) as in nearest_codeword.py
    (48000, 128, 1024),
    (48000, 512, 4096),
    (65536, 256, 16384),
    (65536, 8, 16384),
    (16384, 256, 262144),
]
SMOKE = [(4000, 16, 64)]
DATA = ("gaussian", "clustered", "offset3", "offset10")


def make_data(kind: str, rows: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, d)`` inputs and a ``(k, d)`` codebook for one data ``kind``."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(k, d, generator=g)
    if kind == "gaussian":
        return torch.randn(rows, d, generator=g), c
    if kind.startswith("offset"):
        offset = float(kind.removeprefix("offset"))
        return torch.randn(rows, d, generator=g) + offset, c + offset
    j = torch.randint(k, (rows,), generator=g)
    return c[j] + 0.25 * torch.randn(rows, d, generator=g), c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for .json and .md")
    parser.add_argument("--rows", type=int, default=2048, help="sampled rows per size")
    parser.add_argument("--smoke", action="store_true", help="one tiny size (tests)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    results = []
    for n, d, k in SMOKE if args.smoke else ANCHORS:
        rows = min(args.rows, n) if k < 100_000 else min(args.rows, 512)
        chunk = max(1, (1 << 26) // k)  # <= 256 MiB of fp32 scores per chunk
        for data in DATA:
            x, c = make_data(data, rows, d, k, seed=n + d + k)
            for x_dtype in (torch.float32, torch.bfloat16):
                xx = x.to(x_dtype)
                for metric in ("euclidean", "cosine"):
                    row = {"N": n, "D": d, "K": k, "data": data, "metric": metric}
                    row["x"] = str(x_dtype).removeprefix("torch.")
                    row["rows_sampled"] = rows
                    for operand in ("bf16", "fp16_scaled"):
                        amb = ambiguous_rows(xx, c, metric, operand=operand, chunk=chunk)
                        row[operand] = round(float(amb.float().mean()), 4)
                    # what the kernels did before they centred euclidean searches
                    amb = ambiguous_rows(xx, c, metric, "fp16_scaled", chunk, centred=False)
                    row["fp16_scaled_not_centred"] = round(float(amb.float().mean()), 4)
                    results.append(row)
                    print(json.dumps(row), flush=True)

    header = (
        "| N | D | K | data | x dtype | metric | bf16 operands | fp16 scaled (kernels) "
        "| fp16 scaled, not centred |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['N']} | {r['D']} | {r['K']} | {r['data']} | {r['x']} | {r['metric']} "
        f"| {100 * r['bf16']:.1f}% | {100 * r['fp16_scaled']:.1f}% "
        f"| {100 * r['fp16_scaled_not_centred']:.1f}% |"
        for r in results
    ]
    md = (
        "# Rows without a one-pass certificate (re-ranked), codebook fp32\n\n"
        "Euclidean rows of the first two columns are centred on the codebook mean, as in "
        "the kernels; cosine is never centred, so its last two columns agree.\n\n"
        f"CPU model of the kernels' bound (`anytok/quantizers/kernels/certificate.py`), "
        f"{args.rows} sampled rows per size (512 at K = 262144), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}.\n\n" + header + "\n".join(lines) + "\n"
    )
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "certificate_rate.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "certificate_rate.md").write_text(md)


if __name__ == "__main__":
    main()
