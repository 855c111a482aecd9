"""The local engine: a torch DataLoader decodes and resamples items in worker processes; the
main process batches their segments and encodes them on one or more devices.

With several devices each holds a replica of the tokenizer and a thread of its own (PyTorch
releases the GIL inside kernels); batches go round-robin and results come back in
submission order. Results reach the :class:`~anytok.datasets.shards.ShardCollector`, which
writes each shard as soon as its last item is in.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from anytok.codecs.base import Tokenizer
from anytok.datasets.encoder import encode_media, media_seconds
from anytok.datasets.shards import ItemResult, SegmentCodes, ShardCollector, ShardInfo
from anytok.datasets.sources import Item, SegmentPolicy, iter_segments
from anytok.pipeline import InputFormat


@dataclass
class LoadedItem:
    """An item as a loader worker hands it over: its segments ``[(start_seconds, media)]``
    (media without batch axis), or the error that stopped it."""

    index: int
    segments: list[tuple[float, Tensor]]
    error: str | None


class ItemLoader(Dataset):
    """Loads items ``indices`` of ``items`` (decode, resample, resize, cut into segments)."""

    def __init__(
        self, fmt: InputFormat, policy: SegmentPolicy, items: Sequence[Item], indices: Sequence[int]
    ) -> None:
        self.fmt, self.policy, self.items, self.indices = fmt, policy, items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> LoadedItem:
        index = self.indices[j]
        segments, error = iter_segments(self.fmt, self.policy, self.items[index])
        return LoadedItem(index, segments, error)


def _identity(x: LoadedItem) -> LoadedItem:  # module level: picklable for spawned workers
    return x


@dataclass
class _Unit:
    """One segment waiting for (or in) a batch."""

    index: int
    segment: int
    start: float
    media: Tensor


class _Dispatcher:
    """Runs batches on tokenizer replicas and returns their results in submission order."""

    def __init__(self, replicas: Sequence[tuple[Tokenizer, torch.device]]) -> None:
        self.replicas = list(replicas)
        threads = len(self.replicas) > 1
        self.pools = [ThreadPoolExecutor(1) for _ in self.replicas] if threads else []
        self.inflight: deque[tuple[list[_Unit], Future[list]]] = deque()
        self.turn = 0

    def submit(self, batch: list[_Unit]) -> list[tuple[list[_Unit], list]]:
        """Queue a batch; returns the batches finished meanwhile, oldest first."""
        media = [u.media for u in batch]
        if not self.pools:
            model, device = self.replicas[0]
            return [(batch, encode_media(model, device, media))]
        k = self.turn % len(self.replicas)
        self.turn += 1
        model, device = self.replicas[k]
        self.inflight.append((batch, self.pools[k].submit(encode_media, model, device, media)))
        done = []
        # Two batches per device in flight keep every device busy while bounding memory.
        while self.inflight and (
            self.inflight[0][1].done() or len(self.inflight) > 2 * len(self.replicas)
        ):
            batch_, future = self.inflight.popleft()
            done.append((batch_, future.result()))
        return done

    def flush(self) -> list[tuple[list[_Unit], list]]:
        done = [(batch, future.result()) for batch, future in self.inflight]
        self.inflight.clear()
        for pool in self.pools:
            pool.shutdown()
        return done


def replicas_for(
    model: Tokenizer, devices: Sequence[torch.device]
) -> list[tuple[Tokenizer, torch.device]]:
    """The model on each device (the first device keeps ``model`` itself)."""
    out = []
    for i, device in enumerate(devices):
        replica = model if i == 0 else copy.deepcopy(model)
        out.append((replica.to(device).eval(), device))
    return out


def run_local(
    replicas: Sequence[tuple[Tokenizer, torch.device]],
    fmt: InputFormat,
    policy: SegmentPolicy,
    items: Sequence[Item],
    indices: Sequence[int],
    collector: ShardCollector,
    *,
    batch_size: int,
    workers: int,
    on_item: Callable[[ItemResult, ShardInfo | None], None] | None = None,
) -> None:
    """Encode items ``indices`` and hand every result to ``collector``.

    Args:
        replicas: ``(model, device)`` pairs from :func:`replicas_for`.
        batch_size: segments per encoder call.
        workers: DataLoader worker processes (0 loads in the main process).
        on_item: called after each item with its result and the shard it completed, if any.
    """
    loader = DataLoader(
        ItemLoader(fmt, policy, items, indices),
        batch_size=None,  # items vary in length: segments are batched below, after loading
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=4 if workers else None,
    )
    dispatcher = _Dispatcher(replicas)
    partial: dict[int, ItemResult] = {}
    missing: dict[int, int] = {}
    queue: list[_Unit] = []

    def finish(result: ItemResult) -> None:
        info = collector.add(result)
        if on_item is not None:
            on_item(result, info)

    def absorb(done: list[tuple[list[_Unit], list]]) -> None:
        for batch, outputs in done:
            for unit, out in zip(batch, outputs, strict=True):
                result = partial[unit.index]
                if isinstance(out, str):
                    result.error = result.error or out  # an item fails as a whole
                else:
                    seconds = media_seconds(fmt, unit.media)
                    result.segments.append(SegmentCodes(unit.segment, unit.start, seconds, out))
                missing[unit.index] -= 1
                if missing[unit.index] == 0:
                    del missing[unit.index], partial[unit.index]
                    if result.error is not None:
                        result.segments = []
                    result.segments.sort(key=lambda s: s.segment)
                    finish(result)

    for loaded in loader:
        if loaded.error is not None or not loaded.segments:
            finish(ItemResult(loaded.index, error=loaded.error or "no media to encode"))
            continue
        partial[loaded.index] = ItemResult(loaded.index)
        missing[loaded.index] = len(loaded.segments)
        for number, (start, media) in enumerate(loaded.segments):
            queue.append(_Unit(loaded.index, number, start, media))
        while len(queue) >= batch_size:
            batch, queue = queue[:batch_size], queue[batch_size:]
            absorb(dispatcher.submit(batch))
    if queue:
        absorb(dispatcher.submit(queue))
    absorb(dispatcher.flush())


__all__ = ["ItemLoader", "LoadedItem", "replicas_for", "run_local"]
