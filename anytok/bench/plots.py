"""PNG plots of a benchmark with matplotlib's Agg backend (no display needed).

- :func:`rate_distortion_plot`: one panel per metric, the metric's mean against bitrate
  (kbps for audio / video, bits per pixel for images), one line per tokenizer through its
  sweep points, each point labelled.
- :func:`usage_plot`: one row per level: the histogram of code usage (codes sorted by
  index) and the rank-frequency curve on log-log axes with its Zipf fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from anytok.bench.suite import METRICS

#: At most this many metric panels in one rate-distortion figure.
MAX_PANELS = 6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a window
    import matplotlib.pyplot as plt

    return plt


def rate_distortion_plot(models: list[dict[str, Any]], modality: str, path: Path) -> Path | None:
    """Write the rate-distortion figure of ``models`` (report sections of one modality).

    Returns the path, or None when no metric has a value.
    """
    from anytok.bench.report import metric_columns

    rate_key, rate_label = (
        ("bits_per_pixel", "bits per pixel") if modality == "image" else ("kbps", "kbps")
    )
    metrics = [
        m
        for m in metric_columns(models, modality)
        if any(_finite(r["metrics"].get(m, {}).get("mean")) for x in models for r in x["results"])
    ][:MAX_PANELS]
    if not metrics:
        return None
    plt = _pyplot()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for model in models:
            points = [
                (r["rate"].get(rate_key), r["metrics"].get(metric, {}).get("mean"), r["label"])
                for r in model["results"]
            ]
            points = sorted(p for p in points if _finite(p[0]) and _finite(p[1]))
            if not points:
                continue
            xs, ys, labels = zip(*points)
            ax.plot(xs, ys, marker="o", label=model["label"])
            for x, y, label in points if len(points) > 1 else ():
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        info = METRICS.get(metric)
        arrow = "" if info is None else (" ↑" if info.higher_is_better else " ↓")
        ax.set_title(f"{metric}{arrow}", fontsize=10)
        ax.set_xlabel(rate_label)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"Rate-distortion ({modality})")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def usage_plot(model: dict[str, Any], histograms: list[np.ndarray | None], path: Path) -> Path:
    """Write the code-usage figure of one tokenizer (``histograms``: counts per level)."""
    plt = _pyplot()
    levels = model["token_stats"]["levels"]
    fig, axes = plt.subplots(len(levels), 2, figsize=(10, 2.6 * len(levels)), squeeze=False)
    for level, (stats, hist) in enumerate(zip(levels, histograms)):
        left, right = axes[level]
        if hist is not None:
            left.fill_between(np.arange(hist.size), hist, step="mid", linewidth=0)
            left.set_xlim(0, hist.size)
        else:
            left.text(0.5, 0.5, "codebook too large to draw", ha="center", transform=left.transAxes)
        left.set_title(
            f"level {level}: {stats['used_codes']:,} of {stats['codebook_size']:,} codes used, "
            f"perplexity {stats['perplexity']:.1f}",
            fontsize=9,
        )
        left.set_xlabel("code")
        left.set_ylabel("count")
        if hist is not None and hist.any():
            freqs = np.sort(hist[hist > 0])[::-1].astype(np.float64)
            ranks = np.arange(1, freqs.size + 1)
            right.loglog(ranks, freqs, marker=".", linestyle="none", markersize=3)
            s = stats["zipf"]["exponent"]
            if _finite(s):
                # The fitted line through the same least-squares intercept.
                intercept = np.mean(np.log(freqs) + s * np.log(ranks))
                right.loglog(ranks, np.exp(intercept) * ranks ** (-s), label=f"Zipf s={s:.2f}")
                right.legend(fontsize=8)
        right.set_xlabel("rank")
        right.set_ylabel("frequency")
        right.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Code usage: {model['label']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


__all__ = ["rate_distortion_plot", "usage_plot"]
