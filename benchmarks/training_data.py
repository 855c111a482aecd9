"""Cost of one training item from long files: an audio segment (``AudioSegments``) and a
video clip (``VideoClips``) read as training reads them (only the crop, found by the file's
header) against decoding the whole file and cropping it (what a file whose header gives no
length costs), and a check that both give the same crops.

    python benchmarks/training_data.py --out benchmarks/results/training_data_cpu
    python benchmarks/training_data.py --smoke --out /tmp/td      # seconds, for the tests

Files are synthetic (noise FLAC at 44.1 kHz read at 24 kHz; a moving-ramp H.264 MP4 read at
8 fps); times are medians over items with different random crops, one process, one thread
(as one loader worker). Results go to stdout as JSON and, with ``--out``, to
``training_data.json`` / ``training_data.md`` there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch


def _median_seconds(load: Callable[[int], torch.Tensor], seeds: range) -> tuple[float, list]:
    """Median seconds of ``load(seed)`` over ``seeds``, and the items."""
    times, items = [], []
    for seed in seeds:
        start = time.perf_counter()
        items.append(load(seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times), items


def measure(kind: str, path: Path, dataset, seeds: range) -> dict:
    """Windowed vs whole-file reading of ``dataset`` item 0 for ``seeds``."""
    import anytok.data.datasets as datasets_module

    probe = "audio_length" if kind == "audio" else "video_duration"

    def item(seed: int) -> torch.Tensor:
        return dataset[(0, seed)]["media"]

    windowed, crops = _median_seconds(item, seeds)
    with mock.patch.object(datasets_module, probe, lambda *args: None):
        whole, reference = _median_seconds(item, seeds)
    worst = max(float((a - b).abs().max()) for a, b in zip(crops, reference, strict=True))
    return {
        "kind": kind,
        "file": path.name,
        "file_mib": path.stat().st_size / 2**20,
        "item_shape": list(crops[0].shape),
        "items": len(seeds),
        "window_ms": 1000 * windowed,
        "whole_ms": 1000 * whole,
        "speedup": whole / windowed,
        "max_abs_difference": worst,
    }


def _cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-minutes", type=float, default=10.0)
    parser.add_argument("--video-seconds", type=float, default=60.0)
    parser.add_argument("--items", type=int, default=9, help="crops timed per file")
    parser.add_argument("--smoke", action="store_true", help="tiny files, 3 items")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.audio_minutes, args.video_seconds, args.items = 0.1, 4.0, 3
    torch.set_num_threads(1)

    from anytok.data.datasets import AudioSegments, VideoClips
    from anytok.data.sources import MediaItem
    from anytok.media import save_audio, save_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generator = torch.Generator().manual_seed(0)
        flac = folder / "long.flac"
        samples = int(args.audio_minutes * 60 * 44100)
        save_audio(flac, 0.1 * torch.randn(1, samples, generator=generator), 44100)
        audio = AudioSegments([MediaItem(flac, flac.name)], 24000, 1, segment=24000)
        rows.append(measure("audio", flac, audio, range(args.items)))

        frames = int(args.video_seconds * 25)
        ramp = torch.linspace(-0.8, 0.8, frames)[None, :, None, None]
        texture = torch.rand(3, 1, 128, 128, generator=generator) * 0.4 - 0.2
        mp4 = save_video(folder / "long.mp4", (texture + ramp).clamp(-1, 1), fps=25)
        video = VideoClips([MediaItem(mp4, mp4.name)], fps=8, frames=17, size=(128, 128))
        rows.append(measure("video", mp4, video, range(args.items)))

    environment = {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "torch": torch.__version__,
        "threads": 1,
        "smoke": args.smoke,
    }
    report = {"environment": environment, "rows": rows}
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training_data.json").write_text(json.dumps(report, indent=2) + "\n")
        lines = [
            "# One training item from a long file: crop only vs whole decode",
            "",
            f"{environment['processor']}, one thread, torch {environment['torch']}; "
            f"median over {args.items} random crops. Audio: 1 s at 24 kHz from a "
            f"{args.audio_minutes:g}-minute 44.1 kHz FLAC; video: 17 frames at 8 fps, "
            f"128x128, from a {args.video_seconds:g} s 25 fps H.264 MP4.",
            "",
            "| item | file MiB | crop only ms | whole decode ms | speed-up | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['kind']} {tuple(row['item_shape'])} | {row['file_mib']:.1f} | "
                f"{row['window_ms']:.1f} | {row['whole_ms']:.1f} | {row['speedup']:.1f}x | "
                f"{row['max_abs_difference']:.2g} |"
            )
        (args.out / "training_data.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
