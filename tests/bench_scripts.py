"""Running a benchmark script of ``benchmarks/`` end to end in its ``--smoke`` size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_smoke(name: str, out: Path, timeout: float = 600) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py --smoke --out out``; returns its ``<name>.json`` report
    (the test fails with the script's stderr when it exits non-zero)."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / f"{name}.json").read_text())
