"""Reconstruction and throughput benchmarks: ``anytok bench``.

:func:`run_bench` benchmarks registered tokenizers on folders of media and returns a report;
:func:`write_reports` writes it as JSON, Markdown and PNG plots; :func:`bench_from_cli` is
the ``anytok bench`` command. See ``docs/bench.md``.
"""

from anytok.bench.cli import bench_from_cli
from anytok.bench.report import write_reports
from anytok.bench.runner import BenchSettings, run_bench
from anytok.bench.suite import METRICS, MetricModels
from anytok.bench.sweeps import Sweepable, SweepPoint, sweep_options

__all__ = [
    "METRICS",
    "BenchSettings",
    "MetricModels",
    "SweepPoint",
    "Sweepable",
    "bench_from_cli",
    "run_bench",
    "sweep_options",
    "write_reports",
]
