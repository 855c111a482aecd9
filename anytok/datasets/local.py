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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from anytok.codecs.base import Tokenizer
from anytok.datasets.encoder import encode_media, media_seconds
from anytok.datasets.shards import ItemResult, SegmentCodes, ShardCollector, ShardInfo
from anytok.datasets.sources import (
    SPLIT_WINDOW_BYTES,
    Item,
    SegmentPolicy,
    describe_error,
    iter_segments,
)
from anytok.pipeline import InputFormat


@dataclass
class LoadedPiece:
    """Consecutive segments ``[(start_seconds, media)]`` of one item (media without batch
    axis), numbered from ``first``, as a loader worker hands them over. ``last``: the item
    has no more; ``error``: what stopped the item, which then fails as a whole."""

    index: int
    first: int
    segments: list[tuple[float, Tensor]]
    last: bool
    error: str | None = None


class ItemLoader(IterableDataset):
    """Loads items ``indices`` of ``items`` (decode, resample, resize, cut into segments)
    and yields them in pieces of about ``piece_bytes`` (None: ``SPLIT_WINDOW_BYTES``): a
    long item split into segments streams through a worker instead of being held whole.
    Each DataLoader worker takes every ``num_workers``-th item."""

    def __init__(
        self,
        fmt: InputFormat,
        policy: SegmentPolicy,
        items: Sequence[Item],
        indices: Sequence[int],
        piece_bytes: int | None = None,
    ) -> None:
        self.fmt, self.policy, self.items, self.indices = fmt, policy, items, indices
        self.piece_bytes = SPLIT_WINDOW_BYTES if piece_bytes is None else piece_bytes

    def __iter__(self) -> Iterator[LoadedPiece]:
        worker = get_worker_info()
        mine = self.indices if worker is None else self.indices[worker.id :: worker.num_workers]
        for index in mine:
            yield from self.pieces(index)

    def pieces(self, index: int) -> Iterator[LoadedPiece]:
        """Item ``index`` in pieces; a bad item ends with an error piece (any exception
        counts: a decoder can fail in many ways on hostile input)."""
        first, piece, size = 0, [], 0
        try:
            for start, media in iter_segments(self.fmt, self.policy, self.items[index]):
                piece.append((start, media))
                size += media.numel() * media.element_size()
                if size >= self.piece_bytes:
                    yield LoadedPiece(index, first, piece, last=False)
                    first, piece, size = first + len(piece), [], 0
        except Exception as err:
            yield LoadedPiece(index, first, [], last=True, error=describe_error(err))
            return
        empty = not first and not piece
        yield LoadedPiece(index, first, piece, True, "no media to encode" if empty else None)


def _identity(x: LoadedPiece) -> LoadedPiece:  # module level: picklable for spawned workers
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
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=4 if workers else None,
    )
    dispatcher = _Dispatcher(replicas)
    pending: dict[int, _PendingItem] = {}
    queue: list[_Unit] = []

    def settle(index: int) -> None:
        """Hand item ``index`` on once its last piece is in and every segment encoded."""
        item = pending[index]
        if not item.closed or item.encoding:
            return
        del pending[index]
        result = item.result
        if result.error is not None:
            result.segments = []  # an item fails as a whole
        result.segments.sort(key=lambda s: s.segment)
        info = collector.add(result)
        if on_item is not None:
            on_item(result, info)

    def absorb(done: list[tuple[list[_Unit], list]]) -> None:
        for batch, outputs in done:
            for unit, out in zip(batch, outputs, strict=True):
                item = pending[unit.index]
                if isinstance(out, str):
                    item.result.error = item.result.error or out
                else:
                    seconds = media_seconds(fmt, unit.media)
                    item.result.segments.append(
                        SegmentCodes(unit.segment, unit.start, seconds, out)
                    )
                item.encoding -= 1
                settle(unit.index)

    for loaded in loader:
        item = pending.setdefault(loaded.index, _PendingItem(ItemResult(loaded.index)))
        if loaded.error is not None:
            item.result.error = item.result.error or loaded.error
            waiting = len(queue)
            queue = [u for u in queue if u.index != loaded.index]  # no use encoding them
            item.encoding -= waiting - len(queue)
        for number, (start, media) in enumerate(loaded.segments, loaded.first):
            queue.append(_Unit(loaded.index, number, start, media))
            item.encoding += 1
        item.closed = loaded.last
        settle(loaded.index)
        while len(queue) >= batch_size:
            batch, queue = queue[:batch_size], queue[batch_size:]
            absorb(dispatcher.submit(batch))
    if queue:
        absorb(dispatcher.submit(queue))
    absorb(dispatcher.flush())


@dataclass
class _PendingItem:
    """An item whose pieces are still loading (``closed`` False) or encoding."""

    result: ItemResult
    encoding: int = 0  # segments queued or in a batch
    closed: bool = False


__all__ = ["ItemLoader", "LoadedPiece", "replicas_for", "run_local"]
