"""Encode / decode speed and peak memory of a tokenizer on one batch.

The batch is the benchmark's first batch of real inputs (``batch_size`` items, padded to the
longest). Each direction runs ``warmup`` untimed calls (kernel selection, allocator warm-up,
lazy initialisation) and then ``repeats`` timed ones; the report gives the median and the
minimum. CUDA work is synchronised before every clock read.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over each direction (reset
before it); on the CPU, the process's resident-set high-water mark (``ru_maxrss``), which
covers everything the process did before as well: an upper bound, not a per-call figure.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from anytok.bench.sweeps import decode_options
from anytok.codecs.base import AudioTokenizer, ImageTokenizer, Tokenizer, VideoTokenizer
from anytok.pipeline import autocast_for, collate

if TYPE_CHECKING:
    from anytok.bench.runner import BenchSettings, Item

_MIB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each timed call of ``fn`` after ``warmup`` untimed ones."""
    with torch.inference_mode(), autocast_for(device):
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


def rss_high_water_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def _rates(
    model: Tokenizer, times: list[float], items: int, media: float, tokens: int
) -> dict[str, Any]:
    median = statistics.median(times)
    out: dict[str, Any] = {
        "seconds_median": median,
        "seconds_min": min(times),
        "items_per_second": items / median,
        "tokens_per_second": tokens / median,
    }
    if isinstance(model, (AudioTokenizer, VideoTokenizer)):
        # Seconds of media per second of compute: above 1 is faster than real time.
        out["realtime_factor"] = media / median
    elif isinstance(model, ImageTokenizer):
        out["megapixels_per_second"] = media / 1e6 / median
    return out


def measure_throughput(
    model: Tokenizer, items: Sequence[Item], settings: BenchSettings
) -> dict[str, Any]:
    """Time ``model.encode`` and ``model.decode`` on ``items`` (one batch)."""
    device = torch.device(settings.device)
    batch, lengths = collate([item.media for item in items])
    batch = batch.to(device)
    item_lengths = None if isinstance(model, ImageTokenizer) else lengths.to(device)
    if isinstance(model, AudioTokenizer):
        media = float(lengths.sum()) / model.sample_rate
    elif isinstance(model, VideoTokenizer):
        media = float(lengths.sum()) / model.fps
    else:
        media = float(batch.shape[0] * batch.shape[-1] * batch.shape[-2])

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    encode_times = _time(
        lambda: model.encode(batch, item_lengths), device, settings.warmup, settings.repeats
    )
    encode_peak = torch.cuda.max_memory_allocated(device) / _MIB if cuda else None
    with torch.inference_mode(), autocast_for(device):
        tokens = model.encode(batch, item_lengths)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seeding = decode_options(model)  # the decode the metric pass ran
    decode_times = _time(
        lambda: model.decode(tokens, **seeding), device, settings.warmup, settings.repeats
    )
    decode_peak = torch.cuda.max_memory_allocated(device) / _MIB if cuda else None

    # Valid tokens only (no padding past an item's length, no stored repeats), as the
    # real-time factor counts the items' true durations.
    full = [tokens.codes.shape[2]] * tokens.codes.shape[0]
    lengths_of_items = full if tokens.lengths is None else tokens.lengths.tolist()
    count = sum(map(sum, level_counts(model, tokens.codes, lengths_of_items)))
    memory: dict[str, Any]
    if cuda:
        memory = {
            "kind": "torch.cuda.max_memory_allocated",
            "encode_mib": encode_peak,
            "decode_mib": decode_peak,
        }
    else:
        memory = {"kind": "process RSS high-water (ru_maxrss)", "mib": rss_high_water_mib()}
    return {
        "device": str(device),
        "batch_size": int(batch.shape[0]),
        "batch_shape": list(batch.shape),
        "dtype": str(batch.dtype).removeprefix("torch."),
        "autocast": "bf16" if cuda else "none",
        "warmup": settings.warmup,
        "repeats": max(1, settings.repeats),
        "torch_threads": torch.get_num_threads(),
        "encode": _rates(model, encode_times, batch.shape[0], media, count),
        "decode": _rates(model, decode_times, batch.shape[0], media, count),
        "peak_memory": memory,
    }


def level_counts(model: Tokenizer, codes: Tensor, lengths: Sequence[int]) -> list[list[int]]:
    """Per item of ``codes (b, levels, t, ...)``, each level's number of codes within the
    item's first ``lengths[i]`` steps, repeats left out
    (:meth:`~anytok.codecs.base.Tokenizer.informative_codes`)."""
    return [
        [level.numel() for level in model.informative_codes(codes[i, :, :n])]
        for i, n in enumerate(lengths)
    ]


__all__ = ["level_counts", "measure_throughput", "rss_high_water_mib"]
