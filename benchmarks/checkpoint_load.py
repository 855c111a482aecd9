"""Time and peak memory of ``anytok.load(checkpoint_dir)``: parameters built on the meta
device and the checkpoint's tensors assigned to them (what ``load_checkpoint`` does), against
the model built with random initialisation and the weights copied in (what it did before,
and what a model that needs its parameter values while it is built still gets).

    python benchmarks/checkpoint_load.py --out benchmarks/results/checkpoint_load_cpu
    python benchmarks/checkpoint_load.py --smoke --out /tmp/ckl     # seconds, for the tests

Each architecture's full configuration (``--smoke``: the tiny one) is saved once with random
weights; each mode then loads it in a fresh process with one thread. Memory is the peak
resident set the load adds, sampled every millisecond, and the resident set once the model
has encoded and decoded one input (the assigned weights are pages of the memory-mapped
file, read in on first use, so only this second figure counts them all); "same tokens"
compares the codes both loaded models give that input. Results go to stdout as JSON and, with ``--out``,
to ``checkpoint_load.json`` / ``checkpoint_load.md`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_bench import WATCH_PEAK_RSS, environment, markdown_table, save_report

DEFAULT_ARCHS = ["flextok_d18_d28", "titok_l32", "dac_44khz", "encodec_24khz"]

# Runs in a fresh process: argv = checkpoint folder, mode ("assign" or "copy").
_MEASURE = (
    WATCH_PEAK_RSS
    + """
import hashlib, json, sys, time, torch
torch.set_num_threads(1)
import anytok
import anytok.checkpoint as checkpoint

folder, mode = sys.argv[1], sys.argv[2]
if mode == "copy":  # the path before: random initialisation, then a copy of the weights
    checkpoint._build_without_init = lambda build: None
arch = json.loads(open(f"{folder}/config.json").read())["architecture"]
anytok.create_model(arch, tiny=True)  # warm-up: the family's modules imported before timing
start_peak()
start = time.perf_counter()
model = anytok.load(folder)
elapsed = time.perf_counter() - start
load_peak = stop_peak()
if hasattr(model, "sample_steps"):
    model.sample_steps = 1
generator = torch.Generator().manual_seed(0)
if model.spec.modality == "audio":
    media = torch.rand(1, model.channels, model.sample_rate // 4, generator=generator) - 0.5
elif hasattr(model, "resolution"):
    media = torch.rand(1, 3, *model.resolution, generator=generator) - 0.5
elif hasattr(model, "downsample_factor"):
    side = 2 * model.downsample_factor
    media = torch.rand(1, 3, side, side, generator=generator) - 0.5
else:
    side = 2 * model.spatial_factor
    media = torch.rand(1, 3, 1 + model.temporal_factor, side, side, generator=generator) - 0.5
with torch.inference_mode():
    codes = model.encode(media).codes
    model.decode(model.encode(media))  # every weight is read at least once
resident = rss_mib() - _peak["before"]
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"seconds": elapsed, "peak_mib": load_peak, "resident_mib": resident,
                  "params": params,
                  "digest": hashlib.sha256(codes.numpy().tobytes()).hexdigest()}))
"""
)

_SAVE = """
import sys, torch
torch.set_num_threads(1)
import anytok
from anytok.checkpoint import save_checkpoint
model = anytok.create_model(sys.argv[1], tiny=sys.argv[3] == "tiny", seed=0)
save_checkpoint(model, sys.argv[2])
"""


def measure(arch: str, tiny: bool, folder: Path) -> dict:
    """Save ``arch`` once, then load it in each mode in a fresh process."""
    checkpoint = folder / arch
    size = "tiny" if tiny else "full"
    subprocess.run([sys.executable, "-c", _SAVE, arch, str(checkpoint), size], check=True)
    row: dict = {
        "arch": arch,
        "file_mib": (checkpoint / "model.safetensors").stat().st_size / 2**20,
    }
    for mode in ("assign", "copy"):
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(checkpoint), mode], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"loading {arch} ({mode}) failed:\n{proc.stderr[-3000:]}")
        row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    row["same"] = row["assign"]["digest"] == row["copy"]["digest"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS)
    parser.add_argument("--smoke", action="store_true", help="one tiny configuration")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    archs = ["dac_44khz"] if args.smoke else args.archs

    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(arch, args.smoke, Path(tmp)) for arch in archs]
    report = {"environment": environment(args.smoke), "rows": rows}
    lines = [
        "# `anytok.load(checkpoint)`: meta-device build + assigned weights vs init + copy",
        "",
        f"{report['environment']['processor']}, one thread, torch {report['environment']['torch']}"
        f"{', tiny configurations (smoke)' if args.smoke else ''}.",
        "",
    ]
    header = ["arch", "parameters", "file MiB", "assign s", "copy s"]
    header += ["load peak MiB, assign / copy", "resident after encode + decode MiB, assign / copy"]
    table = []
    for row in rows:
        a, c = row["assign"], row["copy"]
        table.append(
            [
                row["arch"],
                f"{a['params'] / 1e6:.1f} M",
                f"{row['file_mib']:.0f}",
                f"{a['seconds']:.2f}",
                f"{c['seconds']:.2f}",
                f"{a['peak_mib']:.0f} / {c['peak_mib']:.0f}",
                f"{a['resident_mib']:.0f} / {c['resident_mib']:.0f}",
                "yes" if row["same"] else "NO",
            ]
        )
    lines += markdown_table([*header, "same tokens"], table)
    save_report(args.out, "checkpoint_load", report, lines)
    return 0 if all(row["same"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
