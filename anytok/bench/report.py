"""Benchmark reports: ``report.json``, ``report.md`` (models side by side) and PNG plots.

Layout of a report folder::

    report.json                  everything, machine-readable (format "anytok.bench/1")
    items.jsonl                  one line per item and sweep point with every score
    report.md                    tables: fidelity and rate per modality, regions, token
                                 statistics, throughput; skipped files; notes
    rate_distortion_<mod>.png    metric against bitrate, one line per tokenizer across points
    usage_<model>.png            per level: code histogram and rank-frequency (Zipf) plot

Writing a report first removes the files of these names that an earlier report left in the
folder, so that it holds one run's report.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Set
from pathlib import Path
from typing import Any

from anytok.bench.runner import json_safe, write_json
from anytok.bench.suite import METRICS, PRIMARY_METRICS

MODALITY_TITLES = {"audio": "Audio", "image": "Images", "video": "Video"}


#: What the tables' metric columns hold, and what audio's WER columns hold.
_MEANS_NOTE = "Means over items (↑ higher is better, ↓ lower)."
_WER_NOTE = " wer / dwer: the corpus rate (all word errors over all reference words)."


def safe_name(text: str) -> str:
    """A file-name-safe version of a model name or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant decimals, missing values as "–"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 100:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 10 ** (-digits):
            if digits < 1:  # no decimals, but not "0" or "1" for 0.62: one significant digit
                return f"{value:.1g}"
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _ok_models(report: dict[str, Any], modality: str | None = None) -> list[dict[str, Any]]:
    return [
        m
        for m in report["models"]
        if "error" not in m and (modality is None or m["modality"] == modality)
    ]


def metric_columns(models: list[dict[str, Any]], modality: str) -> list[str]:
    """Metric names present in any result, primary metrics first, regions left out."""
    present: list[str] = []
    for model in models:
        for result in model["results"]:
            for key in result["metrics"]:
                if not key.startswith("region/") and key not in present:
                    present.append(key)
    order = list(PRIMARY_METRICS.get(modality, ())) + [k for k in METRICS if k not in present]
    return [k for k in order if k in present] + [k for k in present if k not in order]


def _header_for(metric: str) -> str:
    info = METRICS.get(metric)
    if info is None:
        return metric
    return f"{metric} {'↑' if info.higher_is_better else '↓'}"


def _rate_columns(modality: str) -> list[tuple[str, str]]:
    if modality == "image":
        return [("bits_per_pixel", "bpp"), ("tokens_per_image", "tokens/image")]
    return [("kbps", "kbps"), ("tokens_per_second", "tokens/s")]


def markdown(report: dict[str, Any], plots: dict[str, list[str]] | None = None) -> str:
    """The Markdown report: one table per modality comparing tokenizers side by side."""
    env = report["environment"]
    settings = report["settings"]
    device = env["device"]
    lines = [
        "# anytok bench",
        "",
        f"- created {report['created']} in {report['elapsed_seconds']:.1f} s",
        f"- device: {device.get('type')} ({device.get('name')})"
        + (f", {device['torch_threads']} torch threads" if "torch_threads" in device else ""),
        f"- data: {', '.join(settings['data'])}; max items {settings['max_items'] or 'all'}, "
        f"batch size {settings['batch_size']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v is not None),
        "",
    ]
    untrained = [m["label"] for m in _ok_models(report) if m["weights"].startswith("untrained")]
    if untrained:
        lines += [
            f"> **Untrained weights:** {', '.join(untrained)} "
            + (
                "uses random initialisation; its"
                if len(untrained) == 1
                else "use random initialisation; their"
            )
            + " fidelity numbers say nothing about the architecture.",
            "",
        ]
    for modality, title in MODALITY_TITLES.items():
        models = _ok_models(report, modality)
        if not models:
            continue
        columns = metric_columns(models, modality)
        rates = _rate_columns(modality)
        header = ["model", "point", "items", *[h for _, h in rates], *map(_header_for, columns)]
        rows = []
        for model in models:
            for result in model["results"]:
                rows.append(
                    [
                        model["label"],
                        result["label"],
                        fmt(result["items"]),
                        *[fmt(result["rate"].get(k)) for k, _ in rates],
                        *[fmt(result["metrics"].get(c, {}).get("mean")) for c in columns],
                    ]
                )
        note = _MEANS_NOTE + (_WER_NOTE if modality == "audio" else "")
        lines += [f"## {title}", "", note, ""]
        lines += _table(header, rows)
        lines += _regions_table(models)
        for path in (plots or {}).get(f"rate_distortion_{modality}", []):
            lines += [f"![rate-distortion, {modality}]({path})", ""]
    lines += _token_table(report)
    lines += _throughput_table(report)
    failed = [m for m in report["models"] if "error" in m]
    if failed:
        lines += ["## Tokenizers that failed", ""]
        lines += [f"- `{m['name']}`: {m['error']}" for m in failed] + [""]
    if report["skipped"]:
        lines += ["## Skipped files", ""]
        lines += [f"- `{s['path']}`: {s['error']}" for s in report["skipped"]] + [""]
    if report["notes"] or report.get("metric_backends"):
        lines += ["## Notes", ""]
        lines += [f"- {key}: {value}" for key, value in report.get("metric_backends", {}).items()]
        lines += [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def _regions_table(models: list[dict[str, Any]]) -> list[str]:
    metrics = ("psnr", "ssim", "t_acc", "t_ned", "face_sim")
    rows = []
    for model in models:
        for result in model["results"]:
            groups: dict[str, dict[str, Any]] = {}
            for key, value in result["metrics"].items():
                if key.startswith("region/"):
                    _, kind, scale, metric = key.split("/")
                    groups.setdefault(f"{kind} / {scale}", {})[metric] = value
            for group, values in sorted(groups.items()):
                count = values["psnr"]["n"] + values["psnr"].get("invalid", 0)
                rows.append(
                    [model["label"], result["label"], group, fmt(count)]
                    + [fmt(values.get(m, {}).get("mean")) for m in metrics]
                )
    if not rows:
        return []
    header = ["model", "point", "region / scale", "regions", *map(_header_for, metrics)]
    return ["### Text and face regions (TokBench-style)", "", *_table(header, rows)]


def _token_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for model in _ok_models(report):
        stats = model.get("token_stats")
        if not stats:
            continue
        for level, s in enumerate(stats["levels"]):
            rows.append(
                [
                    model["label"],
                    str(level),
                    fmt(s["codebook_size"]),
                    fmt(s["used_codes"]),
                    fmt(s["usage"]),
                    fmt(s["perplexity"], 1),
                    fmt(s["unigram_entropy_bits"]),
                    fmt(s["max_entropy_bits"]),
                    fmt(s["bigram_entropy_bits"]),
                    fmt(s["conditional_entropy_bits"]),
                    f"{fmt(s['zipf']['exponent'])} ({fmt(s['zipf']['r2'], 2)})",
                ]
            )
    if not rows:
        return []
    header = [
        "model", "level", "codebook", "used", "usage", "perplexity", "H1 bits",
        "max bits", "H2 bits", "H(x_t \\| x_t-1)", "Zipf s (R²)",
    ]  # fmt: skip
    return [
        "## Token statistics",
        "",
        "Per level over all items, tokens in raster order; H2 is the bigram joint entropy.",
        "",
        *_table(header, rows),
    ]


def _throughput_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for model in _ok_models(report):
        t = model.get("throughput")
        if not t:
            continue
        speed = "realtime_factor" if "realtime_factor" in t["encode"] else "megapixels_per_second"
        memory = t["peak_memory"]
        peak = (
            f"{fmt(memory['encode_mib'], 0)} / {fmt(memory['decode_mib'], 0)}"
            if "encode_mib" in memory
            else f"{fmt(memory['mib'], 0)} (RSS)"
        )
        rows.append(
            [
                model["label"],
                t["device"],
                str(t["batch_size"]),
                fmt(t["encode"]["items_per_second"], 2),
                fmt(t["encode"].get(speed), 2),
                fmt(t["decode"]["items_per_second"], 2),
                fmt(t["decode"].get(speed), 2),
                peak,
            ]
        )
    if not rows:
        return []
    header = [
        "model", "device", "batch", "encode items/s", "encode ×RT or MP/s",
        "decode items/s", "decode ×RT or MP/s", "peak MiB (enc / dec)",
    ]  # fmt: skip
    first = next(m["throughput"] for m in _ok_models(report) if m.get("throughput"))
    return [
        "## Throughput",
        "",
        f"Median of {first['repeats']} timed calls after {first['warmup']} warm-up call(s) "
        f"on the first batch; autocast {first['autocast']}. ×RT: seconds of media per "
        "second; MP/s: megapixels per second.",
        "",
        *_table(header, rows),
    ]


#: The files a report folder holds (:func:`write_reports`), as glob patterns.
REPORT_FILES = ("report.json", "report.md", "items.jsonl", "rate_distortion_*.png", "usage_*.png")


def remove_old_report(out: Path) -> list[Path]:
    """Delete the files of an earlier report in ``out`` (the names and patterns of
    :data:`REPORT_FILES`, nothing else); returns them."""
    removed = []
    for pattern in REPORT_FILES:
        for path in sorted(out.glob(pattern)):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


def unique_stem(stem: str, taken: Set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3`` ... the first not in ``taken``."""
    candidate, number = stem, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}_{number}"
    return candidate


def write_reports(
    report: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    items: list[dict[str, Any]] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``report.json``, ``items.jsonl``, plots and ``report.md`` into ``out_dir``,
    after removing what an earlier report left there (:func:`remove_old_report`).

    ``items``: the rows of ``items.jsonl``; by default those :func:`run_bench` kept in the
    report (none for a report without them: no ``items.jsonl``).

    Returns the written paths by kind (``json``, ``markdown``, ``items``) and, for each plot,
    by its file name without ``.png`` (``rate_distortion_audio``, ``usage_<model>``); two
    models whose names make the same file name get ``usage_<model>_2.png`` ...
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_old_report(out)
    if items is None:
        items = report.get("_items")
    written: dict[str, Path] = {}
    plot_files: dict[str, list[str]] = {}
    if plots:
        from anytok.bench.plots import rate_distortion_plot, usage_plot

        for modality in MODALITY_TITLES:
            models = _ok_models(report, modality)
            if not models:
                continue
            path = rate_distortion_plot(models, modality, out / f"rate_distortion_{modality}.png")
            if path is not None:
                written[f"rate_distortion_{modality}"] = path
                plot_files[f"rate_distortion_{modality}"] = [path.name]
        for model in _ok_models(report):
            histograms = model.get("_histograms")
            if model.get("token_stats") and histograms:
                stem = unique_stem(f"usage_{safe_name(model['label'])}", written.keys())
                written[stem] = usage_plot(model, histograms, out / f"{stem}.png")
    written["json"] = write_json(out / "report.json", report)
    if items is not None:
        path = out / "items.jsonl"
        with path.open("w") as handle:
            for row in items:
                handle.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        written["items"] = path
    markdown_path = out / "report.md"
    markdown_path.write_text(markdown(report, plot_files))
    written["markdown"] = markdown_path
    return written


__all__ = [
    "REPORT_FILES",
    "fmt",
    "markdown",
    "metric_columns",
    "remove_old_report",
    "safe_name",
    "write_reports",
]
