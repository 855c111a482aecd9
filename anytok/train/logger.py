"""What a run writes for people: ``log.jsonl`` (every scalar), TensorBoard events (when the
``tensorboard`` package is installed), reconstruction samples, and a progress bar.

Only rank 0 logs: on other ranks a :class:`RunLogger` is built with ``enabled=False`` and
does nothing.

``log.jsonl`` holds one JSON object per line: ``{"step": 100, "time": ..., "loss/total": ...}``
for scalars and ``{"step": ..., "event": "bad_file", ...}`` for events. On resume, lines
after the checkpoint's step are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

LOG_NAME = "log.jsonl"


def read_log(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (a torn last line from a killed run is skipped)."""
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def scalar_history(run_dir: str | os.PathLike[str], key: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of one scalar in a run's log."""
    return [(r["step"], r[key]) for r in read_log(run_dir) if key in r and "event" not in r]


class RunLogger:
    """JSONL + TensorBoard scalars, events, and console messages of one run.

    Args:
        run_dir: the run's folder.
        enabled: False on ranks other than 0.
        tensorboard: write TensorBoard events under ``run_dir/tensorboard`` if the package
            is installed (a note says so once when it is not).
        resume_step: when resuming, drop log lines (and TensorBoard events) after this step.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.console = Console(stderr=True)
        self.writer = None
        self._file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOG_NAME
        if resume_step is not None:
            kept = [r for r in read_log(self.run_dir) if r.get("step", 0) <= resume_step]
            tmp = path.with_name(f".{LOG_NAME}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        # Line-buffered: a killed run loses at most the line being written. Closed in close().
        self._file = open(path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.note(
                    "TensorBoard logging is off: the tensorboard package is not installed "
                    "(pip install tensorboard); log.jsonl has every scalar"
                )
            else:
                # Events after the checkpoint's step came from the killed run: hide them.
                purge = resume_step + 1 if resume_step is not None else None
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def scalars(self, step: int, values: Mapping[str, float | Tensor]) -> None:
        """Record scalars at ``step`` (NaN and infinities are written as JSON ``null``)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        self._write(record)
        if self.writer is not None:
            for key, value in clean.items():
                self.writer.add_scalar(key, value, step)

    def event(self, step: int, kind: str, **fields: Any) -> None:
        """Record a non-scalar event (a bad file, a checkpoint ...)."""
        if self.enabled:
            self._write({"step": step, "event": kind, **fields})

    def note(self, message: str) -> None:
        """A message for people, on stderr."""
        if self.enabled:
            self.console.print(f"[dim]anytok train:[/dim] {escape(message)}", highlight=False)

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class StepProgress:
    """A rich progress bar on stderr (rank 0, terminals only) with ETA and throughput; on a
    non-terminal (CI logs) a plain line per logged step instead."""

    def __init__(self, total: int, start: int, enabled: bool, console: Console):
        self.console = console
        self.interactive = enabled and console.is_terminal
        self.enabled = enabled
        self.progress: Progress | None = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=start, rate="", status=""
            )
            self.progress.start()

    def update(self, step: int, items_per_s: float, status: str = "") -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, completed=step, rate=f"{items_per_s:.1f} items/s", status=status
            )

    def line(self, step: int, total: int, status: str) -> None:
        """The per-log-step line when there is no live bar."""
        if self.enabled and not self.interactive:
            print(f"step {step}/{total} {status}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


__all__ = ["LOG_NAME", "RunLogger", "StepProgress", "read_log", "scalar_history"]
