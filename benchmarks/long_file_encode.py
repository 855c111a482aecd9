"""Peak memory and time of ``anytok encode`` (``encode_files``) on one long recording: read
piece by piece into ``encode_long_stream`` (what a file whose header states its length
gets) against loaded whole and passed to ``encode_long`` (what it got before, and what a
file without a length in its header still gets), and a check that the tokens are equal.

    python benchmarks/long_file_encode.py --out benchmarks/results/long_file_encode_cpu
    python benchmarks/long_file_encode.py --smoke --out /tmp/lfe    # seconds, for the tests

The file is a synthetic stereo 44.1 kHz FLAC; the tokenizer the tiny ``seanet_fsq_24khz``
(24 kHz mono, causal: ``encode_long`` streams), untrained, so the network's cost stays
small next to reading. Each mode runs in a fresh process with one thread; memory is the
peak resident set it adds, sampled every millisecond. Results go to stdout as JSON and,
with ``--out``, to ``long_file_encode.json`` / ``long_file_encode.md`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_bench import WATCH_PEAK_RSS, environment, save_report
from split_streaming import write_audio

# Runs in a fresh process: argv = path, out folder, mode ("stream" or "whole").
_MEASURE = (
    WATCH_PEAK_RSS
    + """
import hashlib, json, sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
import anytok
from anytok import pipeline
from anytok.tokens import Tokens

path, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model = anytok.create_model("seanet_fsq_24khz", tiny=True, seed=0).eval()
if mode == "whole":  # the header tells nothing: loaded whole, then encode_long
    pipeline.header_seconds = lambda model, path: None
with torch.inference_mode():  # warm-up: kernels and decoders loaded before the baseline
    model.encode(torch.zeros(1, 1, 24000))
start_peak()
start = time.perf_counter()
report = pipeline.encode_files(model, [path], out, long_seconds=60.0)
elapsed = time.perf_counter() - start
peak = stop_peak()
assert report.ok, report.failures
codes = Tokens.load(report.written[0]).codes
print(json.dumps({"peak_mib": peak, "seconds": elapsed, "tokens": int(codes.numel()),
                  "media_seconds": report.media_seconds,
                  "digest": hashlib.sha256(codes.numpy().tobytes()).hexdigest()}))
"""
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--smoke", action="store_true", help="a 1-minute file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes = 1.0

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flac = write_audio(folder / "long.flac", args.minutes)
        row: dict = {"file": flac.name, "file_mib": flac.stat().st_size / 2**20}
        for mode in ("stream", "whole"):
            proc = subprocess.run(
                [sys.executable, "-c", _MEASURE, str(flac), str(folder / mode), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    row["same"] = row["stream"]["digest"] == row["whole"]["digest"]
    env = environment(args.smoke)
    report = {"environment": env, "minutes": args.minutes, "row": row}
    s, w = row["stream"], row["whole"]
    lines = [
        "# `anytok encode` of one long recording: streamed vs loaded whole",
        "",
        f"{env['processor']}, one thread, torch {env['torch']}, a fresh "
        f"process per mode. A {args.minutes:g}-minute stereo 44.1 kHz FLAC "
        f"({row['file_mib']:.1f} MiB), tiny untrained `seanet_fsq_24khz` (24 kHz mono), "
        "`encode_files(..., long_seconds=60)`. Memory: peak resident set added.",
        "",
        "| mode | peak MiB | seconds | tokens | same tokens |",
        "|---|---|---|---|---|",
        f"| streamed (30 s pieces, `encode_long_stream`) | {s['peak_mib']:.0f} | "
        f"{s['seconds']:.1f} | {s['tokens']} | {'yes' if row['same'] else 'NO'} |",
        f"| loaded whole (`encode_long`) | {w['peak_mib']:.0f} | {w['seconds']:.1f} | "
        f"{w['tokens']} | |",
    ]
    save_report(args.out, "long_file_encode", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
