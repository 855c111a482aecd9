"""Run a benchmark: every tokenizer over every file, at every sweep point.

For each tokenizer: find the files of its modality, load them as it expects (resampled,
resized), encode a batch, decode it at each :class:`~anytok.bench.sweeps.SweepPoint`, score
every item against its input, count token statistics, then time encode / decode on one
batch (:mod:`anytok.bench.throughput`). Bad files are skipped and listed, and so are the
items of a batch that fails (an out-of-memory error on one long file); a tokenizer that
fails to load, or on every batch, is reported with its error and the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anytok.bench.environment import environment
from anytok.bench.suite import METRICS, MetricModels, MetricSuite, load_transcripts
from anytok.bench.sweeps import SweepPoint, decode_at, plan_sweep
from anytok.bench.throughput import level_counts, measure_throughput
from anytok.codecs.base import AudioTokenizer, ImageTokenizer, Tokenizer, VideoTokenizer
from anytok.media import (
    MediaError,
    find_media,
    load_image,
    load_video,
    modality_of,
    resize_cover,
)
from anytok.metrics.image import ssim, ssim_min_side
from anytok.metrics.regions import Region, load_annotations, regions_for, score_regions
from anytok.metrics.token_stats import TokenStatistics
from anytok.pipeline import autocast_for, collate, error_line, input_format, load_input

REPORT_FORMAT = "anytok.bench/1"


class BenchInputError(ValueError):
    """An input of the run other than media (annotations, transcripts) that cannot be used."""


@dataclass
class BenchSettings:
    """Everything a run depends on (recorded in the report).

    Attributes:
        models: registry names, ``arch.tag``, checkpoint directories or ``hf-hub:`` ids.
        data: files and folders (searched recursively for each tokenizer's modality).
        max_items: benchmark at most this many good items per tokenizer.
        batch_size: items per encode / decode call (also the throughput batch).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...
        sweeps: requested sweep values by axis, e.g. ``{"levels": [1, 2, 4, 8]}``.
        warmup, repeats: throughput timing: untimed calls first, then timed ones.
        image_size: encode images and video frames at ``(height, width)`` instead of the
            tokenizer's training resolution (fully convolutional tokenizers take any
            multiple of their downsampling factor).
        max_seconds: crop audio and video items to at most this many seconds.
        transcripts: JSON of transcripts for WER (else ``<file>.txt`` beside each file).
        regions: TokBench-style region annotations for images.
        metric_models: weights of the model-based metrics.
    """

    models: list[str]
    data: list[Path]
    max_items: int | None = None
    batch_size: int = 4
    device: str = "cpu"
    sweeps: dict[str, list[Any]] = field(default_factory=dict)
    warmup: int = 1
    repeats: int = 3
    image_size: tuple[int, int] | None = None
    max_seconds: float | None = None
    transcripts: Path | None = None
    regions: Path | None = None
    metric_models: MetricModels = field(default_factory=MetricModels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "data": [str(p) for p in self.data],
            "max_items": self.max_items,
            "batch_size": self.batch_size,
            "device": self.device,
            "sweeps": self.sweeps,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "image_size": list(self.image_size) if self.image_size else None,
            "max_seconds": self.max_seconds,
            "transcripts": str(self.transcripts) if self.transcripts else None,
            "regions": str(self.regions) if self.regions else None,
            "metric_models": self.metric_models.to_dict(),
            "autocast": "bf16 on CUDA, none elsewhere",
        }


@dataclass
class Item:
    """One loaded input: the tensor the tokenizer sees, and what the report says of it."""

    path: Path
    root: Path | None
    media: Tensor  # audio (C, S) / image (3, H, W) / video (3, T, H, W)
    original_hw: tuple[int, int] | None = None


#: Called after each file with (model name, path, error or None).
ProgressCallback = Callable[[str, Path, str | None], None]


#: Region scores aggregated per kind and scale (the other keys of a region row describe it).
REGION_METRICS = ("psnr", "ssim", "t_acc", "t_ned", "face_sim")


class PointAccumulator:
    """Everything measured at one sweep point: per-item scores, region scores, dataset-level
    metrics (``rfid`` / ``fvd``), bits and media amounts for the rate, decode time."""

    def __init__(self, distributions: dict[str, Any]) -> None:
        self.values: dict[str, list[float]] = {}
        self.distributions = distributions
        self.bits = 0.0
        self.tokens = 0
        self.amount = 0.0  # seconds of media (audio / video) or pixels (images)
        self.pixels = 0.0  # pixels of all frames (video bits per pixel)
        self.decode_seconds = 0.0
        self.items = 0

    def add_item(
        self,
        scores: dict[str, float],
        region_rows: Sequence[dict[str, Any]],
        *,
        bits: float,
        tokens: int,
        amount: float,
        pixels: float,
    ) -> None:
        for key, value in scores.items():
            self.values.setdefault(key, []).append(float(value))
        for row in region_rows:
            for metric in REGION_METRICS:
                if metric in row:
                    key = f"region/{row['kind']}/{row['scale']}/{metric}"
                    self.values.setdefault(key, []).append(float(row[metric]))
        self.bits += bits
        self.tokens += tokens
        self.amount += amount
        self.pixels += pixels
        self.items += 1

    def metrics(self) -> dict[str, dict[str, float]]:
        counts = set(CORPUS_RATES.values())
        out = {key: summarize(values) for key, values in self.values.items() if key not in counts}
        for rate, words in CORPUS_RATES.items():
            if rate in self.values and words in self.values:
                out[rate] = corpus_rate(self.values[rate], self.values[words])
        for key, metric in self.distributions.items():
            value = metric.compute()
            out[key] = {"mean": value, "n": metric.count, "invalid": int(math.isnan(value))}
        return out


#: Error rates whose summary is the corpus rate: item key -> the key of its reference
#: word count (kept in the item rows, not summarised on its own).
CORPUS_RATES = {"wer": "wer_words", "dwer": "dwer_words"}


def corpus_rate(rates: Sequence[float], words: Sequence[float]) -> dict[str, float]:
    """:func:`summarize` of per-item error rates whose ``mean`` is the corpus rate: all
    errors over all reference words, as ASR toolkits (SpeechBrain's ``ErrorRateStats``,
    which DASB's dWER uses; jiwer over lists) report it. ``item_mean`` is the plain mean,
    which over-weights short utterances. NaN without reference words."""
    out = summarize(rates)
    # The rate is errors / max(words, 1); the product gives the errors back.
    errors = sum(round(r * max(w, 1)) for r, w in zip(rates, words) if math.isfinite(r))
    total = sum(int(w) for r, w in zip(rates, words) if math.isfinite(r))
    out["item_mean"] = out["mean"]
    out["mean"] = errors / total if total else math.nan
    return out


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, std, median, min, max and count of the finite values (``invalid``: the rest,
    e.g. PESQ on silence or PSNR of identical images)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {"mean": math.nan, "n": 0, "invalid": int(array.size)}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.size),
        "invalid": int(array.size - finite.size),
    }


# --------------------------------------------------------------------------- loading


def _size_for(model: ImageTokenizer | VideoTokenizer, settings: BenchSettings) -> tuple[int, int]:
    size = settings.image_size or tuple(model.resolution)
    factor = model.downsample_factor if isinstance(model, ImageTokenizer) else model.spatial_factor
    if size[0] % factor or size[1] % factor:
        raise ValueError(
            f"--image-size {size[0]}x{size[1]} is not a multiple of the tokenizer's "
            f"downsampling factor {factor}"
        )
    return size[0], size[1]


def _load_item(model: Tokenizer, path: Path, root: Path | None, settings: BenchSettings) -> Item:
    if isinstance(model, ImageTokenizer):
        data = load_image(path)
        media = resize_cover(data.image, _size_for(model, settings))
        return Item(path, root, media.contiguous(), data.original_size)
    if isinstance(model, VideoTokenizer):
        frames = None
        if settings.max_seconds is not None:
            frames = max(1, int(settings.max_seconds * model.fps))
        # Frames are resized as they are decoded: a full-size float copy of a 1080p clip
        # takes 25 MB a frame.
        size = _size_for(model, settings)
        clip = load_video(path, fps=model.fps, max_frames=frames, size=size).video
        return Item(path, root, clip.contiguous())  # (3, T, H, W)
    steps = None
    if settings.max_seconds is not None and isinstance(model, AudioTokenizer):
        steps = max(1, int(settings.max_seconds * model.sample_rate))
    # Only the kept samples are decoded (libsndfile formats), the same as cutting the file.
    media = load_input(input_format(model), path, max_steps=steps)
    return Item(path, root, media.contiguous())


def _files(
    data: Sequence[Path], modality: str, others: Collection[str] = ()
) -> list[tuple[Path, Path | None]]:
    """The files of ``modality`` among ``data``, each with the folder it was found in (None
    for a file named directly), in order and each once (by real path), however often a
    name, a folder or overlapping folders reach it.

    A file named directly is kept whatever its extension (its loader says what is wrong with
    it), unless the extension belongs to another modality in ``others``, the modalities the
    run's other tokenizers handle: that file is theirs.
    """
    found: list[tuple[Path, Path | None]] = []
    seen: set[str] = set()
    for root in data:
        folder = root if root.is_dir() else None
        for path in find_media([root], modality=modality):  # type: ignore[arg-type]
            if folder is None:
                kind = modality_of(path)
                if kind is not None and kind != modality and kind in others:
                    continue
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append((path, folder))
    return found


def declared_modality(name: str) -> str | None:
    """The modality of tokenizer ``name`` from the registry or its checkpoint's
    ``config.json``, without loading weights; None when that cannot be told (loading it
    then says why)."""
    from anytok.checkpoint import CONFIG_NAME, read_config
    from anytok.registry import get_arch, is_checkpoint_path, is_offline, resolve

    try:
        if name.startswith("hf-hub:"):
            from huggingface_hub import hf_hub_download

            repo = name.removeprefix("hf-hub:")
            config = hf_hub_download(repo, CONFIG_NAME, local_files_only=is_offline())
            return get_arch(read_config(Path(config).parent)["architecture"]).modality
        if is_checkpoint_path(name):
            return get_arch(read_config(Path(name).expanduser())["architecture"]).modality
        return resolve(name)[0].modality
    except Exception:  # anytok.load reports the problem
        return None


def _good_items(
    model: Tokenizer,
    files: Sequence[tuple[Path, Path | None]],
    settings: BenchSettings,
    failures: list[dict[str, str]],
    on_file: Callable[[Path, str | None], None],
) -> Iterator[list[Item]]:
    """Batches of loaded items; files that fail to load go to ``failures``."""
    batch: list[Item] = []
    good = 0
    for path, root in files:
        if settings.max_items is not None and good >= settings.max_items:
            break
        try:
            item = _load_item(model, path, root, settings)
        except MediaError as err:
            failures.append({"path": str(path), "error": err.problem})
            on_file(path, err.problem)
            continue
        except (OSError, ValueError, RuntimeError) as err:  # a decoder's own complaint
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            failures.append({"path": str(path), "error": message})
            on_file(path, message)
            continue
        good += 1
        on_file(path, None)
        batch.append(item)
        if len(batch) == settings.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- one model


def _token_lengths(tokens_lengths: Tensor | None, count: int, full: int) -> list[int]:
    if tokens_lengths is None:
        return [full] * count
    return [int(v) for v in tokens_lengths.cpu()]


def _media_amount(model: Tokenizer, item: Item) -> float:
    if isinstance(model, AudioTokenizer):
        return item.media.shape[-1] / model.sample_rate
    if isinstance(model, VideoTokenizer):
        return item.media.shape[1] / model.fps
    return float(item.media.shape[-1] * item.media.shape[-2])


def _transcript(path: Path, root: Path | None, table: dict[str, str]) -> str | None:
    if root is not None and root.is_dir():
        rel = path.relative_to(root).as_posix()
        if rel in table:
            return table[rel]
    if path.name in table:
        return table[path.name]
    sidecar = path.with_suffix(".txt")
    return sidecar.read_text().strip() if sidecar.is_file() else None


def _model_info(model: Tokenizer, name: str) -> dict[str, Any]:
    from anytok.nn.conv import count_parameters

    spec = model.default_spec  # the tokens of the model as it is (Mimi: 8 of 32 levels)
    tag = getattr(model, "anytok_tag", None)
    return {
        "name": name,
        "registry_name": model.registry_name,
        "architecture": getattr(model, "anytok_arch", type(model).__name__),
        "weights": "untrained (random initialisation)"
        if tag == "untrained"
        else (tag or "unknown"),
        "modality": model.modality,
        "parameters": count_parameters(model),
        "token_spec": spec.to_dict(),
        "bits_per_position": spec.bits_per_position,
    }


@dataclass
class PointOutcome:
    """What one sweep point gave for one batch, kept until the whole batch succeeded."""

    point: SweepPoint
    decode_seconds: float
    scored: list[tuple[dict[str, float], list[dict[str, Any]]]]
    level_counts: list[list[int]]


@dataclass
class BatchOutcome:
    """What one batch gave: the informative codes of each item (token statistics) and the
    outcome at every sweep point."""

    codes: list[Tensor]
    points: list[PointOutcome]


def _measure_batch(
    model: Tokenizer,
    batch_items: Sequence[Item],
    points: Sequence[SweepPoint],
    suite: MetricSuite,
    distributions: dict[SweepPoint, dict[str, Any]],
    device: torch.device,
    *,
    reference_text: dict[Path, tuple[str | None, bool]],
    annotations: dict[str, list[Region]] | None,
    transcripts: dict[str, str] | None,
) -> BatchOutcome:
    """Encode a batch once, then decode and score it at every point.

    Updates the dataset-level metrics in ``distributions`` (by point) as it goes: the
    caller undoes that when the batch fails (:func:`_distribution_states`).
    """
    batch, lengths = collate([item.media for item in batch_items])
    with torch.inference_mode(), autocast_for(device):
        item_lengths = None if isinstance(model, ImageTokenizer) else lengths.to(device)
        tokens = model.encode(batch.to(device), item_lengths)
    token_lengths = _token_lengths(tokens.lengths, len(batch_items), tokens.codes.shape[2])
    codes = [model.informative_codes(tokens.codes[i, :, :n]) for i, n in enumerate(token_lengths)]
    if isinstance(model, AudioTokenizer) and suite.model("asr") is not None:
        for item in batch_items:
            given = _transcript(item.path, item.root, transcripts or {})
            if given is not None:
                reference_text[item.path] = (given, True)
            else:  # dWER: the ASR of the input is the reference
                heard = suite.transcribe(item.media[None], model.sample_rate)
                reference_text[item.path] = (heard, False)
    outcomes = []
    for point in points:
        with torch.inference_mode(), autocast_for(device):
            start = time.perf_counter()
            recon, point_codes = decode_at(model, tokens, point)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        recon = recon.float().cpu()
        if not isinstance(model, AudioTokenizer) and recon.shape[-2:] != batch.shape[-2:]:
            # (the metrics would say only "shapes differ")
            raise ValueError(
                f"{model.registry_name} decodes {recon.shape[-2]}x{recon.shape[-1]} from "
                f"{batch.shape[-2]}x{batch.shape[-1]} inputs: it reconstructs only at its own "
                f"resolution {tuple(model.resolution)}; leave --image-size out, or set it to that"
            )
        scored = _score_batch(model, suite, batch_items, recon, reference_text, annotations)
        # Bits from the codes this point decoded (a prefix of levels or of positions), each
        # level counted on its own grid (no stored repeats).
        counts = level_counts(model, point_codes, token_lengths)
        for metric in distributions[point].values():
            _update_distribution(metric, batch_items, recon)
        outcomes.append(PointOutcome(point, seconds, scored, counts))
    return BatchOutcome(codes, outcomes)


#: A dataset-level metric and copies of its accumulated state.
SavedState = tuple[Any, dict[str, Any]]


def _distribution_states(distributions: dict[SweepPoint, dict[str, Any]]) -> list[SavedState]:
    """Copies of what the dataset-level metrics (``rfid`` / ``fvd``) have accumulated, to
    put back with :func:`_restore_distributions` when a batch fails half-way."""
    saved: list[SavedState] = []
    for metrics in distributions.values():
        for metric in metrics.values():
            state = metric.metric.metric_state  # the torchmetrics accumulator
            copies = {
                key: value.clone() if isinstance(value, Tensor) else list(value)
                for key, value in state.items()
            }
            saved.append((metric, copies))
    return saved


def _restore_distributions(saved: list[SavedState]) -> None:
    """Put back the states :func:`_distribution_states` copied."""
    for metric, copies in saved:
        for key, value in copies.items():
            setattr(metric.metric, key, value)


def _batch_error(err: Exception, items: int) -> str:
    """The skip reason of the items of a batch that failed with ``err``."""
    return f"{type(err).__name__}: {error_line(err)} (its batch of {items} item(s) failed)"


def bench_model(
    model: Tokenizer,
    name: str,
    settings: BenchSettings,
    suite: MetricSuite,
    *,
    annotations: dict[str, list[Region]] | None = None,
    transcripts: dict[str, str] | None = None,
    on_file: ProgressCallback | None = None,
    item_rows: list[dict[str, Any]] | None = None,
    other_modalities: Collection[str] = (),
) -> dict[str, Any]:
    """Benchmark one tokenizer; returns its section of the report.

    For each batch: encode once, count token statistics, then decode at every sweep point
    and score each item against its input. ``item_rows`` (when given) receives one row per
    item and point with every score, once the tokenizer is done. ``other_modalities``: the
    modalities of the run's other tokenizers (files named directly with their extensions
    are left to them).

    A batch that fails (out of memory on a long file ...) counts for nothing: its items are
    listed as skipped with the error and the next batch goes on.

    Raises:
        Exception: the first batch's error when every batch failed (a bug in the tokenizer
            shows as that error, not as every file skipped).
    """
    device = torch.device(settings.device)
    modality = model.modality
    suite.prepare(modality)
    if isinstance(model, (ImageTokenizer, VideoTokenizer)):
        _size_for(model, settings)  # a bad --image-size fails the tokenizer, not every file
    files = _files(settings.data, modality, other_modalities)
    points, notes = plan_sweep(model, settings.sweeps, name)
    failures: list[dict[str, str]] = []
    # The levels encode gives (Mimi: 8 of 32), not every level the quantizer has.
    codebook_sizes = model.default_spec.codebook_sizes
    stats = TokenStatistics(codebook_sizes)
    log_sizes = [math.log2(k) for k in codebook_sizes]  # bits of a code per level
    acc = {point: PointAccumulator(suite.distribution_metrics(modality)) for point in points}
    distributions = {point: a.distributions for point, a in acc.items()}
    first_batch: list[Item] | None = None  # the first batch that succeeded
    first_error: Exception | None = None
    items = 0
    rows: list[dict[str, Any]] = []
    reference_text: dict[Path, tuple[str | None, bool]] = {}

    def report_file(path: Path, error: str | None) -> None:
        if on_file is not None:
            on_file(name, path, error)

    for batch_items in _good_items(model, files, settings, failures, report_file):
        saved = _distribution_states(distributions)
        try:
            outcome = _measure_batch(
                model,
                batch_items,
                points,
                suite,
                distributions,
                device,
                reference_text=reference_text,
                annotations=annotations,
                transcripts=transcripts,
            )
        except Exception as err:  # this batch's items are skipped; the others go on
            _restore_distributions(saved)
            first_error = first_error or err
            reason = _batch_error(err, len(batch_items))
            failures += [{"path": str(item.path), "error": reason} for item in batch_items]
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        first_batch = first_batch or batch_items
        items += len(batch_items)
        for item_codes in outcome.codes:
            stats.update(item_codes)
        for result in outcome.points:
            a = acc[result.point]
            a.decode_seconds += result.decode_seconds
            for item, (scores, region_rows), counts in zip(
                batch_items, result.scored, result.level_counts
            ):
                a.add_item(
                    scores,
                    region_rows,
                    bits=sum(n * bits for n, bits in zip(counts, log_sizes)),
                    tokens=sum(counts),
                    amount=_media_amount(model, item),
                    pixels=float(math.prod(item.media.shape[1:])),
                )
                rows.append(
                    {
                        "model": name,
                        "point": result.point.label,
                        "path": str(item.path),
                        "scores": scores,
                        "regions": region_rows,
                    }
                )

    if first_error is not None and items == 0:
        raise first_error
    if first_batch is None:
        notes.append(f"{name}: no {modality} items could be benchmarked")
    results = [
        {
            "point": point.to_dict(),
            "label": point.label,
            "items": a.items,
            "rate": _rate(model, a),
            "metrics": a.metrics(),
            # From the metric pass (first batch cold); the throughput section is the
            # careful measurement. Kept per point because decoders differ in cost by point
            # (diffusion steps).
            "decode_items_per_second": a.items / a.decode_seconds if a.decode_seconds else None,
        }
        for point, a in acc.items()
    ]
    notes += _invalid_notes(name, acc)
    throughput = None
    if first_batch is not None:
        try:
            throughput = measure_throughput(model, first_batch, settings)
        except Exception as err:  # the measured items stay in the report
            notes.append(
                f"{name}: throughput not measured: {type(err).__name__}: {error_line(err)}"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    info = _model_info(model, name)
    info.update(
        {
            "items": items,
            "skipped": failures,
            "sweep_points": [p.label for p in points],
            "results": results,
            "token_stats": stats.summary() if items else None,
            "throughput": throughput,
            "notes": notes,
            # For the usage plots only: write_json leaves keys starting with "_" out.
            "_histograms": [level.histogram() for level in stats.levels],
        }
    )
    if item_rows is not None:
        item_rows += rows
    return info


#: Why a per-item metric can have no finite value (the ``invalid`` count of the report).
INVALID_REASONS = {
    "mel_distance": "clip not longer than half the largest FFT size (1024 samples)",
    "stft_distance": "clip not longer than half the longest window (1024 samples)",
    "si_sdr": "silent input",
    "pesq_wb": "no speech in the input, clip under about 0.25 s, or silent reconstruction",
    "pesq_nb": "no speech in the input, clip under about 0.25 s, or silent reconstruction",
    "stoi": "under 0.4 s of non-silent input (STOI needs 30 frames)",
    "psnr": "reconstruction identical to the input (infinite PSNR)",
    "ms_ssim": "image sides under 176 pixels",
    "ssim": "image (frame) sides under 11 pixels",
    "frame_diff_error": "single-frame clip (no frame-to-frame change to compare)",
}


def _invalid_notes(name: str, acc: dict[Any, PointAccumulator]) -> list[str]:
    """One note per per-item metric that had items without a finite value, naming the sweep
    points, how many items, and the usual reasons (those items are left out of the mean)."""
    found: dict[str, list[str]] = {}
    for point, a in acc.items():
        for key, values in a.values.items():
            bad = sum(not math.isfinite(v) for v in values)
            if bad:
                found.setdefault(key, []).append(f"{point.label} {bad}/{len(values)}")
    notes = []
    for key, where in found.items():
        metric = key.rsplit("/", 1)[-1]
        reason = INVALID_REASONS.get(metric, "undefined for the item")
        notes.append(
            f"{name}: {key} has no finite value for some items ({', '.join(where)}; "
            f"{reason}): left out of its mean, counted in 'invalid'"
        )
    return notes


def _update_distribution(metric: Any, batch_items: Sequence[Item], recon: Tensor) -> None:
    for i, item in enumerate(batch_items):
        ref = item.media[None]
        rec = recon[i : i + 1]
        if ref.ndim == 5:
            rec = rec[:, :, : ref.shape[2]]
        metric.update(ref, rec)


def _score_batch(
    model: Tokenizer,
    suite: MetricSuite,
    batch_items: Sequence[Item],
    recon: Tensor,
    reference_text: dict[Path, tuple[str | None, bool]],
    annotations: dict[str, list[Region]] | None,
) -> list[tuple[dict[str, float], list[dict[str, Any]]]]:
    """Scores and region rows of each item of a batch."""
    out: list[tuple[dict[str, float], list[dict[str, Any]]]] = []
    if isinstance(model, ImageTokenizer):
        reference = torch.stack([item.media for item in batch_items])
        rec = recon.clamp(-1, 1)
        per_image = suite.score_images(reference, rec)
        # Regions average the full image's SSIM map over their box (no resizing of crops).
        mappable = min(reference.shape[-2:]) >= ssim_min_side(full_map=True)
        ssim_maps = ssim(reference, rec, full_map=True) if annotations and mappable else None
        for i, item in enumerate(batch_items):
            regions = regions_for(annotations, item.path, item.root) if annotations else []
            rows: list[dict[str, Any]] = []
            if regions and ssim_maps is not None and item.original_hw is not None:
                rows = score_regions(
                    reference[i],
                    rec[i],
                    ssim_maps[i],
                    regions,
                    item.original_hw,
                    ocr=suite.model("ocr"),
                    face=suite.model("face"),
                )
            out.append((per_image[i], rows))
        return out
    for i, item in enumerate(batch_items):
        ref = item.media[None]
        if isinstance(model, AudioTokenizer):
            text, is_transcript = reference_text.get(item.path, (None, False))
            scores = suite.score_audio(
                ref, recon[i : i + 1], model.sample_rate, text, text_is_transcript=is_transcript
            )
        else:
            rec = recon[i : i + 1, :, : ref.shape[2]]
            scores = suite.score_video(ref, rec)
        out.append((scores, []))
    return out


def _rate(model: Tokenizer, a: PointAccumulator) -> dict[str, Any]:
    """Bitrate and token rate at one point, from the codes actually decoded."""
    if a.items == 0:
        return {}
    if isinstance(model, ImageTokenizer):
        return {
            "bits_per_image": a.bits / a.items,
            "tokens_per_image": a.tokens / a.items,
            "bits_per_pixel": a.bits / a.amount if a.amount else None,
        }
    seconds = a.amount
    out = {
        "bits_per_second": a.bits / seconds if seconds else None,
        "kbps": a.bits / seconds / 1000 if seconds else None,
        "tokens_per_second": a.tokens / seconds if seconds else None,
        "seconds": seconds,
    }
    if isinstance(model, VideoTokenizer):
        out["bits_per_pixel"] = a.bits / a.pixels if a.pixels else None
    return out


# --------------------------------------------------------------------------- the run


def run_bench(
    settings: BenchSettings,
    *,
    on_model: Callable[[str, int], None] | None = None,
    on_file: ProgressCallback | None = None,
    item_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Benchmark every tokenizer in ``settings``; returns the report (a JSON-able dict,
    plus ``_histograms`` entries and the ``_items`` rows that
    :func:`anytok.bench.report.write_reports` uses for plots and ``items.jsonl`` and drops
    from the JSON).

    ``on_model(name, files)`` is called before each tokenizer with its file count (for
    progress bars); ``on_file`` after each file; ``item_rows`` (when given) receives the
    rows of ``items.jsonl`` too.

    Raises:
        MediaError: a data path does not exist.
        MetricWeightsError: a metric's weights file is missing, not safetensors, or does
            not fit its architecture.
        BenchInputError: the region annotations or transcripts cannot be read.
    """
    import anytok

    for path in settings.data:
        if not Path(path).exists():
            raise MediaError(path, "no such file or folder")
    device = torch.device(settings.device)
    suite = MetricSuite(settings.metric_models, device)
    suite.check_paths()  # a missing or pickled weights file is a usage error: fail first
    try:
        annotations = load_annotations(settings.regions) if settings.regions else None
        transcripts = load_transcripts(settings.transcripts) if settings.transcripts else None
    except ValueError as err:
        raise BenchInputError(str(err)) from err
    started = time.time()
    sections = []
    rows: list[dict[str, Any]] = [] if item_rows is None else item_rows
    # Which modalities the run covers, before any tokenizer reads a file: a file named
    # directly goes to the tokenizers of its extension's modality when the run has one.
    modalities = [declared_modality(name) for name in settings.models]
    for index, name in enumerate(settings.models):
        try:
            model = anytok.load(name, device=device)
        except Exception as err:  # one bad name or checkpoint must not lose the others
            sections.append({"name": name, "error": f"{type(err).__name__}: {err}"})
            continue
        modalities[index] = model.modality
        others = {m for i, m in enumerate(modalities) if i != index and m is not None}
        if on_model is not None:
            on_model(name, len(_files(settings.data, model.modality, others)))
        # Outside the try: weights that do not fit their metric are the user's to fix.
        suite.prepare(model.modality)
        try:
            section = bench_model(
                model,
                name,
                settings,
                suite,
                annotations=annotations,
                transcripts=transcripts,
                on_file=on_file,
                item_rows=rows,
                other_modalities=others,
            )
        except Exception as err:  # a tokenizer bug is reported, the run goes on
            section = {"name": name, "error": f"{type(err).__name__}: {err}"}
        sections.append(section)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _assign_labels(sections)
    skipped: dict[str, str] = {}
    for section in sections:
        for failure in section.get("skipped", []):
            skipped.setdefault(failure["path"], failure["error"])
    return {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_seconds": time.time() - started,
        "settings": settings.to_dict(),
        "environment": environment(device),
        "metric_info": {key: info.to_dict() for key, info in METRICS.items()},
        "metric_backends": suite.backends,
        "models": sections,
        "skipped": [{"path": p, "error": e} for p, e in skipped.items()],
        "notes": suite.notes + [n for s in sections for n in s.get("notes", [])],
        "_items": rows,  # items.jsonl; write_json leaves it out of report.json
    }


def _assign_labels(sections: list[dict[str, Any]]) -> None:
    """Short names for tables and plots: a checkpoint directory's own name, else the name
    as given (the full name wherever two short ones would clash)."""
    short = [Path(s["name"]).name if os.sep in s["name"] else s["name"] for s in sections]
    for section, label in zip(sections, short):
        section["label"] = label if short.count(label) == 1 else section["name"]


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` (without the plot-only ``_`` keys) as strict JSON (NaN -> null)."""
    p = Path(path)
    p.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return p


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


__all__ = [
    "REPORT_FORMAT",
    "BenchInputError",
    "BenchSettings",
    "PointAccumulator",
    "bench_model",
    "declared_modality",
    "json_safe",
    "run_bench",
    "summarize",
    "write_json",
]
