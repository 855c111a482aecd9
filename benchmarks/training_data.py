"""Cost of one training item from long files: an audio segment (``AudioSegments``) and a
video clip (``VideoClips``) read as training reads them (only the crop, found by the file's
header; FFmpeg audio sought to, ``load_audio(exact=False)``) against decoding the whole
file and cropping it (what a file whose header gives no length costs), and how far the
crops differ; and the peak memory of one clip of 1080p video cut frame by frame as it
decodes vs cut from the decoded clip.

    python benchmarks/training_data.py --out benchmarks/results/training_data_cpu
    python benchmarks/training_data.py --smoke --out /tmp/td      # seconds, for the tests

Files are synthetic (noise FLAC and a tone-plus-noise AAC M4A at 44.1 kHz read at 24 kHz; a
moving-ramp H.264 MP4 read at 8 fps); times are medians over items with different random crops, one process, one thread
(as one loader worker). Results go to stdout as JSON and, with ``--out``, to
``training_data.json`` / ``training_data.md`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from cpu_bench import WATCH_PEAK_RSS, environment, markdown_table, save_report, write_h264


def _median_seconds(load: Callable[[int], torch.Tensor], seeds: range) -> tuple[float, list]:
    """Median seconds of ``load(seed)`` over ``seeds``, and the items."""
    times, items = [], []
    for seed in seeds:
        start = time.perf_counter()
        items.append(load(seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times), items


def measure(kind: str, path: Path, dataset, seeds: range, sought_to: bool = False) -> dict:
    """Windowed vs whole-file reading of ``dataset`` item 0 for ``seeds``, and how far the
    windowed crops are from the same crops read exactly: the whole decode's where the
    header's length is exact (both then draw the same crops), else (``sought_to``: an
    FFmpeg file, whose header's length is an estimate) ``load_audio(exact=True)`` of the
    same windows, which is also timed."""
    import anytok.data.datasets as datasets_module
    from anytok.media import load_audio

    # The header probes that find a length: without them the whole file is decoded.
    probes = ["audio_length", "audio_duration"] if kind == "audio" else ["video_duration"]

    def item(seed: int) -> torch.Tensor:
        return dataset[(0, seed)]["media"]

    sought: list[dict] = []  # the arguments of each inexact window read

    def spy(*args, **kwargs):
        if sought_to and kwargs.get("exact") is False:
            sought.append({**kwargs, "exact": True})
        return load_audio(*args, **kwargs)

    with mock.patch.object(datasets_module, "load_audio", spy):
        windowed, crops = _median_seconds(item, seeds)
    with contextlib.ExitStack() as stack:
        for probe in probes:
            stack.enter_context(mock.patch.object(datasets_module, probe, lambda *a, **k: None))
        whole, reference = _median_seconds(item, seeds)
    exact = None  # median s of the sought windows read exactly (decoded from the start)
    if sought:
        exact, reference = _median_seconds(
            lambda i: load_audio(path, **sought[i]).waveform, range(len(sought))
        )
    pairs = list(zip(crops, reference, strict=True))
    signal = sum(float(b.square().sum()) for b in reference)
    error = sum(float((a - b).square().sum()) for a, b in pairs)
    return {
        "kind": kind,
        "file": path.name,
        "file_mib": path.stat().st_size / 2**20,
        "item_shape": list(crops[0].shape),
        "items": len(seeds),
        "window_ms": 1000 * windowed,
        "whole_ms": 1000 * whole,
        "speedup": whole / windowed,
        "exact_window_ms": None if exact is None else 1000 * exact,
        "compared_with": "exact window" if sought else "whole decode",
        "max_abs_difference": max(float((a - b).abs().max()) for a, b in pairs),
        # Signal to difference (inf: the same samples).
        "snr_db": 10 * math.log10(signal / error) if error else math.inf,
    }


_PEAK_RSS = (
    WATCH_PEAK_RSS
    + """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from anytok.data.datasets import Augment, VideoClips, _random_resized_crop
from anytok.data.sources import MediaItem
from anytok.media import load_video

path, mode = Path(sys.argv[1]), sys.argv[2]
ds = VideoClips([MediaItem(path, path.name)], fps=8, frames=17, size=(256, 256))
gen = torch.Generator().manual_seed(0)
load_video(path, max_frames=1)  # decoder libraries loaded before the baseline
start_peak()
if mode == "frame":
    item = ds._cut_while_decoding(path, gen, Augment(), 0.0)
else:
    clip = load_video(path, fps=8, max_frames=17).video.transpose(0, 1)
    item = _random_resized_crop(clip, (256, 256), gen, Augment()).transpose(0, 1)
print(stop_peak(), tuple(item.shape))
"""
)


def write_hd_video(path: Path, seconds: float, height: int = 1080, width: int = 1920) -> Path:
    """An H.264 ``width x height`` 25 fps file written frame by frame."""
    return write_h264(path, seconds, height, width)


def peak_memory(path: Path) -> dict:
    """Peak resident memory added by one 256x256 17-frame training clip of ``path``, cut
    frame by frame as it decodes vs cut from the decoded clip (fresh processes)."""
    import subprocess
    import sys

    out = {}
    for mode in ("frame", "clip"):
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(path), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[f"{mode}_peak_mib"] = float(proc.stdout.split()[0])
    return out


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
        seconds = torch.arange(samples) / 44100
        tone = 0.3 * torch.sin(2 * math.pi * (220 + 100 * torch.sin(seconds)) * seconds)
        m4a = save_audio(folder / "long.m4a", tone + 0.02 * torch.randn(1, samples), 44100)
        audio = AudioSegments([MediaItem(m4a, m4a.name)], 24000, 1, segment=24000)
        rows.append(measure("audio", m4a, audio, range(args.items), sought_to=True))

        frames = int(args.video_seconds * 25)
        ramp = torch.linspace(-0.8, 0.8, frames)[None, :, None, None]
        texture = torch.rand(3, 1, 128, 128, generator=generator) * 0.4 - 0.2
        mp4 = save_video(folder / "long.mp4", (texture + ramp).clamp(-1, 1), fps=25)
        video = VideoClips([MediaItem(mp4, mp4.name)], fps=8, frames=17, size=(128, 128))
        rows.append(measure("video", mp4, video, range(args.items)))
        hd = write_hd_video(folder / "hd.mp4", 0.4 if args.smoke else 3.0)
        memory = peak_memory(hd)

    env = environment(args.smoke)
    report = {"environment": env, "rows": rows, "hd_clip_memory": memory}
    lines = [
        "# One training item from a long file: crop only vs whole decode",
        "",
        f"{env['processor']}, one thread, torch {env['torch']}; "
        f"median over {args.items} random crops. Audio: 1 s at 24 kHz from a "
        f"{args.audio_minutes:g}-minute 44.1 kHz FLAC (read exactly) and AAC M4A (sought "
        f"to); video: 17 frames at 8 fps, 128x128, from a {args.video_seconds:g} s 25 fps "
        "H.264 MP4. The last columns compare each crop with the same crop read exactly "
        "(the FLAC's and MP4's whole decode cropped; the M4A's window decoded from the "
        "start: its header's length is an estimate, so its whole decode draws other "
        "crops).",
        "",
        *markdown_table(
            [
                "item",
                "file",
                "MiB",
                "crop only ms",
                "exact read ms",
                "whole decode ms",
                "speed-up",
                "max abs diff",
                "SNR dB",
            ],
            [
                [
                    f"{row['kind']} {tuple(row['item_shape'])}",
                    row["file"],
                    f"{row['file_mib']:.1f}",
                    f"{row['window_ms']:.1f}",
                    "-" if row["exact_window_ms"] is None else f"{row['exact_window_ms']:.1f}",
                    f"{row['whole_ms']:.1f}",
                    f"{row['speedup']:.1f}x",
                    f"{row['max_abs_difference']:.2g}",
                    f"{row['snr_db']:.1f}",
                ]
                for row in rows
            ],
        ),
        "",
        "The M4A's crops are sought to (`exact=False`); *exact read* is the same windows "
        "decoded from the start, as before. They sit at the exact read's samples (MP4 stamps "
        "samples) and differ from it only where the encoder used perceptual noise "
        "substitution, whose decoder draws noise from a generator that runs from where "
        "decoding starts (SNR below inf).",
    ]
    lines += [
        "",
        "Peak resident memory added by one 17-frame 256x256 training clip (8 fps) of a "
        "1920x1080 H.264 file, each frame cut as it decodes vs cut from the decoded clip: "
        f"{memory['frame_peak_mib']:.0f} MiB vs {memory['clip_peak_mib']:.0f} MiB.",
    ]
    save_report(args.out, "training_data", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
