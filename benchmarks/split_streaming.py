"""Peak memory and time of ``encode-dataset --segment split`` reading one long file: the
segments streamed piece by piece (``iter_segments``: audio window by window, video in one
decoding pass a segment at a time) against the file decoded whole and cut (what split did
before), and a check that both give the same segments.

    python benchmarks/split_streaming.py --out benchmarks/results/split_streaming_cpu
    python benchmarks/split_streaming.py --smoke --out /tmp/ss      # seconds, for the tests

Files are synthetic: a stereo 44.1 kHz FLAC and AAC M4A read as 24 kHz mono in 30 s
segments (the FLAC by seeking window by window, the M4A in one decoding pass), and a
1280x720 25 fps H.264 MP4 read at 8 fps, 256x256, in 17-frame segments. Each mode runs in a
fresh process with one thread (as one loader worker); memory is the peak resident set it
adds, sampled every millisecond. Results go to stdout as JSON and, with ``--out``, to
``split_streaming.json`` / ``split_streaming.md`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_bench import WATCH_PEAK_RSS, environment, markdown_table, save_report, write_h264

# Runs in a fresh process: argv = path, modality, mode ("stream" or "whole").
_MEASURE = (
    WATCH_PEAK_RSS
    + """
import hashlib, json, sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from anytok.datasets.sources import Item, SegmentPolicy, iter_segments
from anytok.pipeline import InputFormat, iter_input, load_input

path, modality, mode = sys.argv[1:4]
if modality == "audio":
    fmt, policy = InputFormat("audio", sample_rate=24000, channels=1), SegmentPolicy("split", 30.0)
else:
    fmt = InputFormat("video", resolution=(256, 256), fps=8.0)
    policy = SegmentPolicy("split", 17 / 8)
item = Item(id="x", source="x", path=path)
warm = iter_input(fmt, Path(path), 8)  # decoders loaded before the baseline, not the file
next(warm)
warm.close()
start_peak()
start = time.perf_counter()
digest, count = hashlib.sha256(), 0
if mode == "stream":
    segments = iter_segments(fmt, policy, item)
else:
    segments = iter(policy.apply(fmt, load_input(fmt, item.path)))
for seconds, media in segments:  # each segment is handed on and dropped, as by the encoder
    digest.update(media.half().numpy().tobytes())  # half: float rounding of resampling
    count += 1
    del media
segments = None
elapsed = time.perf_counter() - start
print(json.dumps({"peak_mib": stop_peak(), "seconds": elapsed, "segments": count,
                  "digest": digest.hexdigest()}))
"""
)


def write_audio(path: Path, minutes: float) -> Path:
    """A stereo 44.1 kHz FLAC of noisy tones, written block by block (the whole float
    waveform of a long file is what the benchmark avoids)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = 44100 * 10
    with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16", format="FLAC") as f:
        for first in range(0, int(minutes * 60 * 44100), block):
            t = (first + np.arange(block)) / 44100
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)
            f.write(np.stack([tone, -tone], 1) + 0.05 * rng.standard_normal((block, 2)))
    return path


def write_m4a(path: Path, minutes: float) -> Path:
    """A stereo 44.1 kHz AAC M4A of the same tones (a format FFmpeg decodes and libsndfile
    does not: streamed in one decoding pass), encoded block by block."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        block = 1024 * 400
        for first in range(0, int(minutes * 60 * 44100), block):
            t = (first + np.arange(block)) / 44100
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)
            wave = np.stack([tone, -tone]) + 0.05 * rng.standard_normal((2, block))
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32), "fltp", "stereo")
            frame.sample_rate, frame.pts = 44100, first
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def measure(path: Path, modality: str) -> dict:
    """Both modes of ``path`` in fresh processes; ``same`` when their segments agree."""
    out: dict = {"modality": modality, "file": path.name, "file_mib": path.stat().st_size / 2**20}
    for mode in ("stream", "whole"):
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(path), modality, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["same"] = out["stream"]["digest"] == out["whole"]["digest"] and (
        out["stream"]["segments"] == out["whole"]["segments"]
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-minutes", type=float, default=30.0)
    parser.add_argument("--video-seconds", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="tiny FLAC and MP4 files only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.audio_minutes, args.video_seconds = 1.0, 2.5
    height, width = (180, 320) if args.smoke else (720, 1280)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows.append(measure(write_audio(folder / "long.flac", args.audio_minutes), "audio"))
        if not args.smoke:  # its one-pass path is covered by the tests; smoke stays short
            rows.append(measure(write_m4a(folder / "long.m4a", args.audio_minutes), "audio"))
        video = write_h264(folder / "long.mp4", args.video_seconds, height, width)
        rows.append(measure(video, "video"))
    env = environment(args.smoke)
    report = {"environment": env, "rows": rows}
    lines = [
        "# `--segment split` of one long file: streamed vs decoded whole",
        "",
        f"{env['processor']}, one thread, torch {env['torch']}, a fresh "
        f"process per mode. Audio: a {args.audio_minutes:g}-minute stereo 44.1 kHz FLAC "
        "and a stereo 44.1 kHz AAC M4A of the same length, read as 24 kHz mono in 30 s "
        "segments; video: a "
        f"{args.video_seconds:g} s {width}x{height} 25 fps H.264 MP4 read at 8 fps, 256x256, "
        "in 17-frame segments. Memory: peak resident set added while reading.",
        "",
    ]
    header = ["file", "MiB", "segments", "streamed peak MiB", "whole peak MiB", "streamed s"]
    table = []
    for row in rows:
        s, w = row["stream"], row["whole"]
        table.append(
            [
                f"{row['modality']} {row['file']}",
                f"{row['file_mib']:.1f}",
                s["segments"],
                f"{s['peak_mib']:.0f}",
                f"{w['peak_mib']:.0f}",
                f"{s['seconds']:.2f}",
                f"{w['seconds']:.2f}",
                "yes" if row["same"] else "NO",
            ]
        )
    lines += markdown_table([*header, "whole s", "same segments"], table)
    save_report(args.out, "split_streaming", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
