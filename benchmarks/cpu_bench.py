"""Helpers shared by the one-thread CPU benchmarks that measure peak memory in fresh
processes (``training_data.py``, ``split_streaming.py``, ``long_file_encode.py``): a watcher
of the resident set to prepend to a measuring snippet, the environment record, the report
files, and long synthetic H.264 files written frame by frame."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

#: Python source defining ``start_peak()`` (baseline now, sampling every millisecond) and
#: ``stop_peak()`` (the peak resident MiB added since ``start_peak``), for a ``-c`` snippet.
WATCH_PEAK_RSS = """
import threading, time

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

_peak = {}

def start_peak():
    _peak.update(before=rss_mib(), peak=rss_mib(), running=True)
    def watch():
        while _peak["running"]:
            _peak["peak"] = max(_peak["peak"], rss_mib())
            time.sleep(0.001)
    _peak["thread"] = threading.Thread(target=watch)
    _peak["thread"].start()

def stop_peak():
    _peak["running"] = False
    _peak["thread"].join()
    return max(_peak["peak"], rss_mib()) - _peak["before"]
"""


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(smoke: bool) -> dict[str, Any]:
    """What ran a one-thread CPU benchmark: machine, CPU, torch, and whether it was the
    ``--smoke`` size."""
    import torch

    return {
        "machine": platform.machine(),
        "processor": cpu_name(),
        "torch": torch.__version__,
        "threads": 1,
        "smoke": smoke,
    }


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines: ``header``, the rule, then one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def save_report(out: Path | None, name: str, report: dict[str, Any], lines: list[str]) -> None:
    """Print ``report`` as JSON; with ``out``, write it to ``out/<name>.json`` and the
    Markdown ``lines`` to ``out/<name>.md``."""
    print(json.dumps(report, indent=2))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def write_h264(path: Path, seconds: float, height: int, width: int) -> Path:
    """An H.264 ``width x height`` 25 fps file of moving patterns, written frame by frame
    (a float clip of a long HD file would not fit in memory)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * 25)):
            rgb = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x ^ y) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
