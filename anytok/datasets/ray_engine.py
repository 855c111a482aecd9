"""The Ray Data engine (``--engine ray``; install the ``anytok[ray]`` extra).

Pipeline::

    from_items(pending items)                      the driver's sorted plan slice
      -> flat_map(decode)        CPU tasks         decode, resample, resize, cut segments
      -> map_batches(Encoder)    actor pool        one tokenizer per actor (GPU when present)
      -> iter_batches on the driver                ShardCollector writes Parquet shards

Shards are written by the driver with the same writer as the local engine, not by Ray's
``write_parquet``: the file names, footer metadata and atomic rename are what make a run
resumable and byte-identical across engines, and tokens are ~1000x smaller than the media
they come from, so one writer is never the bottleneck. ``preserve_order`` keeps results
arriving in plan order, so the driver holds about one shard of tokens at a time.

It runs against a running cluster (``address="auto"`` or ``"ray://head:10001"``; every
node needs anytok installed and SRC / the checkpoint at the same paths) or starts a local
one. Ray pickles the work it ships between processes; anytok's own files never do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anytok.datasets.encoder import encode_media, media_seconds
from anytok.datasets.plan import model_fingerprint
from anytok.datasets.shards import ItemResult, SegmentCodes, ShardCollector, ShardInfo
from anytok.datasets.sources import (
    DatasetError,
    Item,
    SegmentPolicy,
    describe_error,
    iter_segments,
)
from anytok.pipeline import InputFormat, input_format

_MEDIA_NDIM = {"audio": 2, "image": 3, "video": 4}
#: what an encoder actor raises when its weights are not the driver's
_WEIGHTS_DIFFER = "the weights this Ray worker loaded differ from the driver's"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise DatasetError(
            "--engine ray needs Ray Data: pip install 'anytok[ray]' (or 'ray[data]')"
        ) from err
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Connect to ``address`` or start a local cluster (``num_cpus`` CPUs); disconnect (and
    stop a local cluster) at the end. An already initialised Ray is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    # Quiet: anytok prints its own progress and summary; workers' logs stay in Ray's log dir.
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address:
        ray.init(address=address, **options)
    else:  # "local": a new cluster, even where `ray start` left one running on this machine
        ray.init(address="local", num_cpus=num_cpus, **options)
    try:
        yield
    finally:
        ray.shutdown()


def resolve_gpu(devices: Any) -> bool:
    """Whether encoder actors use a GPU: ``"auto"`` when the cluster has one, ``"cpu"``
    never, ``"cuda"`` always (an error on a cluster without GPUs)."""
    ray = _import_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    choice = devices if isinstance(devices, str) else ",".join(str(d) for d in devices)
    if choice == "auto":
        return gpus > 0
    if choice == "cpu":
        return False
    if choice.startswith("cuda"):
        if not gpus:
            raise DatasetError("--device cuda: the Ray cluster has no GPU")
        return True
    raise DatasetError(f"--engine ray takes --device auto, cpu or cuda, got {choice!r}")


class _Decode:
    """Ray ``flat_map`` stage: one input row (an item) -> one row per segment, yielded as
    they load (a long split item streams). Only an item's final row carries ``count``, its
    number of rows (-1 on the others); a bad item ends with an error row."""

    def __init__(self, fmt: InputFormat, policy: SegmentPolicy) -> None:
        self.fmt, self.policy = fmt, policy

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        index = row["index"]
        item = Item.from_dict(json.loads(row["item"]))
        held: tuple[float, Tensor] | None = None  # the last row waits to learn it is last
        number = 0
        try:
            for segment in iter_segments(self.fmt, self.policy, item):
                if held is not None:
                    yield _segment_row(index, number, -1, held[0], held[1].numpy(), "")
                    number += 1
                held = segment
        except Exception as err:  # any exception is a bad item, as in the local engine
            empty = np.zeros((0,) * _MEDIA_NDIM[self.fmt.modality], dtype=np.float32)
            yield _segment_row(index, number, number + 1, 0.0, empty, describe_error(err))
            return
        if held is None:
            empty = np.zeros((0,) * _MEDIA_NDIM[self.fmt.modality], dtype=np.float32)
            yield _segment_row(index, 0, 1, 0.0, empty, "no media to encode")
            return
        yield _segment_row(index, number, number + 1, held[0], held[1].numpy(), "")


def _segment_row(
    index: int, segment: int, count: int, start: float, media: np.ndarray, error: str
) -> dict[str, Any]:
    return {
        "index": index,
        "segment": segment,
        "count": count,
        "start": start,
        "media": np.ascontiguousarray(media, dtype=np.float32),
        "error": error,
    }


class _Encoder:
    """Ray ``map_batches`` actor: holds one tokenizer and encodes batches of segments."""

    def __init__(self, model_ref: str, fingerprint: str, use_gpu: bool) -> None:
        import anytok

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = anytok.load(model_ref, device=self.device)
        if model_fingerprint(self.model) != fingerprint:
            raise RuntimeError(f"{model_ref}: {_WEIGHTS_DIFFER}")
        self.fmt = input_format(self.model)
        self.dtype = self.model.default_spec.storage_dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        ok = [j for j in range(n) if not batch["error"][j]]
        # np.array copies: Ray hands out read-only views torch would warn about.
        media = [torch.from_numpy(np.array(batch["media"][j], dtype=np.float32)) for j in ok]
        outputs = dict(zip(ok, encode_media(self.model, self.device, media))) if ok else {}
        codes, shapes, errors, seconds = [], [], [], []
        for j in range(n):
            out = outputs.get(j, batch["error"][j])
            if isinstance(out, str):
                codes.append(np.zeros(0, dtype=self.dtype))
                shapes.append(np.zeros(0, dtype=np.int64))
                errors.append(out)
                seconds.append(math.nan)
            else:
                codes.append(out.reshape(-1))
                shapes.append(np.asarray(out.shape, dtype=np.int64))
                errors.append("")
                sec = media_seconds(self.fmt, torch.from_numpy(np.asarray(batch["media"][j])))
                seconds.append(math.nan if sec is None else sec)
        return {
            "index": np.asarray(batch["index"]),
            "segment": np.asarray(batch["segment"]),
            "count": np.asarray(batch["count"]),
            "start": np.asarray(batch["start"], dtype=np.float64),
            "seconds": np.asarray(seconds, dtype=np.float64),
            "error": np.asarray(errors, dtype=object),
            "codes": _object_array(codes),
            "shape": _object_array(shapes),
        }


def _object_array(arrays: list[np.ndarray]) -> np.ndarray:
    # An object array of arrays (not np.array(list), which would try to stack them).
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def run_ray(
    model_ref: str,
    fingerprint: str,
    fmt: InputFormat,
    policy: SegmentPolicy,
    items: Sequence[Item],
    indices: Sequence[int],
    collector: ShardCollector,
    *,
    batch_size: int,
    actors: int | None,
    use_gpu: bool,
    on_item: Callable[[ItemResult, ShardInfo | None], None] | None = None,
) -> None:
    """Encode items ``indices`` on the current Ray cluster; hand results to ``collector``."""
    ray = _import_ray()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True  # results in plan order: bounded driver memory
    ctx.enable_progress_bars = False  # anytok draws its own
    try:
        _run(
            ray,
            fmt,
            policy,
            items,
            indices,
            collector,
            model_ref,
            fingerprint,
            batch_size=batch_size,
            actors=actors,
            use_gpu=use_gpu,
            on_item=on_item,
        )
    finally:  # the context is process-wide: leave it as the caller had it
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _run(
    ray: Any,
    fmt: InputFormat,
    policy: SegmentPolicy,
    items: Sequence[Item],
    indices: Sequence[int],
    collector: ShardCollector,
    model_ref: str,
    fingerprint: str,
    *,
    batch_size: int,
    actors: int | None,
    use_gpu: bool,
    on_item: Callable[[ItemResult, ShardInfo | None], None] | None,
) -> None:
    from ray.data import ActorPoolStrategy

    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 1
    records = [{"index": i, "item": json.dumps(items[i].to_dict())} for i in indices]
    # Decoding runs as plain CPU tasks; the encoder as an actor pool, so each worker loads
    # the tokenizer once.
    dataset = ray.data.from_items(records).flat_map(_Decode(fmt, policy), num_cpus=1)
    dataset = dataset.map_batches(
        _Encoder,
        fn_constructor_kwargs={
            "model_ref": model_ref,
            "fingerprint": fingerprint,
            "use_gpu": use_gpu,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
    )
    rows = _ItemRows()
    for batch in _batches(dataset, model_ref):
        for result in rows.add(batch):
            info = collector.add(result)
            if on_item is not None:
                on_item(result, info)


class _ItemRows:
    """Gathers encoded segment rows, in any order, into items: an item is complete once
    as many of its rows are in as its final row's ``count`` says."""

    def __init__(self) -> None:
        self.partial: dict[int, ItemResult] = {}
        self.seen: dict[int, int] = {}  # rows of each item received
        self.counts: dict[int, int] = {}  # rows each item has, once its final row is in

    def add(self, batch: dict[str, np.ndarray]) -> list[ItemResult]:
        """Take one output batch; returns the items it completed (an item with an error
        row has no segments: it fails as a whole)."""
        done = []
        for j in range(len(batch["index"])):
            index = int(batch["index"][j])
            result = self.partial.setdefault(index, ItemResult(index))
            self.seen[index] = self.seen.get(index, 0) + 1
            if int(batch["count"][j]) > 0:
                self.counts[index] = int(batch["count"][j])
            error = str(batch["error"][j])
            if error:
                result.error = result.error or error
            else:
                shape = tuple(int(s) for s in batch["shape"][j])
                codes = np.asarray(batch["codes"][j]).reshape(shape)
                sec = float(batch["seconds"][j])
                result.segments.append(
                    SegmentCodes(
                        int(batch["segment"][j]),
                        float(batch["start"][j]),
                        None if math.isnan(sec) else sec,
                        codes,
                    )
                )
            if self.seen[index] == self.counts.get(index):
                del self.partial[index], self.seen[index], self.counts[index]
                if result.error is not None:
                    result.segments = []
                result.segments.sort(key=lambda s: s.segment)
                done.append(result)
        return done


def _batches(dataset: Any, model_ref: str) -> Iterator[dict[str, np.ndarray]]:
    """The pipeline's output batches; an encoder actor that loaded other weights than the
    driver's (a node with another checkpoint at that path) ends the run with one line, not
    Ray's ActorDiedError traceback."""
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as err:
        if _WEIGHTS_DIFFER not in str(err):
            raise
        raise DatasetError(
            f"{model_ref}: {_WEIGHTS_DIFFER}; every node must see the same checkpoint at "
            "the same path"
        ) from None


__all__ = ["ray_session", "resolve_gpu", "run_ray"]
