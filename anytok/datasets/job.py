"""``encode_dataset``: a whole dataset to Parquet token shards, resumable, local or on Ray.

One run: list and sort the items; build the plan and store it in DST (or check it against
the stored one); skip the shards already done; encode the others with the chosen engine,
writing each shard atomically as soon as its items are in; rebuild the manifest and the
errors file from the shards. A run killed at any moment and started again with the same
arguments ends with exactly the files of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from anytok.codecs.base import Tokenizer
from anytok.datasets.encoder import precision_of
from anytok.datasets.files import folder_lock, remove_stale_temps
from anytok.datasets.plan import Plan, items_digest, model_fingerprint, prepare_plan
from anytok.datasets.shards import (
    ERRORS_NAME,
    MANIFEST_NAME,
    ItemResult,
    ShardCollector,
    ShardInfo,
    finalize,
    shard_done,
)
from anytok.datasets.sources import DatasetError, SegmentPolicy, list_items
from anytok.devices import DeviceError, parse_device
from anytok.pipeline import input_format, prepare_output_folder

DEFAULT_BATCH_SIZE = 8
DEFAULT_WORKERS = 2
DEFAULT_SHARD_SIZE = 1000
Engine = Literal["local", "ray"]


@dataclass
class DatasetSummary:
    """What a dataset job did.

    Dataset totals (``items`` … ``media_seconds``) cover every shard, those of earlier runs
    included; the ``*_this_run`` fields and ``elapsed`` cover this run only.
    """

    dst: Path
    items: int
    encoded: int
    failed: int
    rows: int
    tokens: int
    media_seconds: float
    shards: int
    shards_written: int
    shards_skipped: int
    items_this_run: int
    tokens_this_run: int
    media_seconds_this_run: float
    elapsed: float
    engine: str
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every item was encoded."""
        return self.failed == 0

    @property
    def manifest_file(self) -> Path:
        return self.dst / MANIFEST_NAME

    @property
    def errors_file(self) -> Path:
        return self.dst / ERRORS_NAME

    @property
    def items_per_second(self) -> float:
        return self.items_this_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        """Media seconds encoded per wall-clock second this run (audio / video)."""
        return self.media_seconds_this_run / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dst"] = str(self.dst)
        out.update(
            ok=self.ok,
            items_per_second=self.items_per_second,
            realtime_factor=self.realtime_factor,
        )
        return out


def parse_devices(devices: str | Sequence[str | torch.device]) -> list[torch.device]:
    """``"auto"`` (every visible GPU, one replica each; else the CPU), ``"cpu"``,
    ``"cuda:0,cuda:1"`` or a list."""
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    try:
        out = [parse_device(d) for d in devices]
    except DeviceError as err:
        raise DatasetError(str(err)) from err
    if not out:
        raise DatasetError("no device given")
    return out


class _RatesColumn(ProgressColumn):
    """``12.3 items/s · 4.5k tokens/s`` from the task's completed count and ``tokens`` field."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("")
        items = task.completed / elapsed
        tokens = task.fields.get("tokens", 0) / elapsed
        return Text(f"{items:.1f} items/s · {tokens:,.0f} tokens/s", style="progress.data.speed")


@contextlib.contextmanager
def _progress(enabled: bool, total: int, skipped: int) -> Iterator[Any]:
    """A rich progress bar on stderr; yields ``advance(result)``."""
    if not enabled:
        yield lambda result, info: None
        return
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]encoding"),
        BarColumn(),
        MofNCompleteColumn(),
        _RatesColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        if skipped:
            console.print(f"resuming: {skipped} shard(s) already done")
        task = bar.add_task("encoding", total=total, tokens=0)

        def advance(result: ItemResult, info: ShardInfo | None) -> None:
            tokens = sum(int(s.codes.size) for s in result.segments)
            fields = bar.tasks[task].fields
            bar.update(task, advance=1, tokens=fields.get("tokens", 0) + tokens)

        yield advance


def _model_ref(model: str | os.PathLike[str] | Tokenizer) -> str:
    """How Ray actors load the same weights: a name or path, or the loaded model's source."""
    if isinstance(model, Tokenizer):
        return getattr(model, "anytok_source", None) or model.registry_name
    return os.fspath(model)


def _check_loadable(model: Tokenizer, fingerprint: str) -> None:
    """Refuse, before a Ray cluster starts, an in-memory tokenizer that Ray workers cannot
    load again: they load :func:`_model_ref`, and a model built (``create_model(...,
    tiny=True)``) or changed after loading has other weights there. Each worker found out
    alone, after the cluster had started, and died with a traceback."""
    import anytok

    ref = _model_ref(model)
    try:
        fresh = anytok.load(ref, device="cpu")
    except Exception as err:  # any reason it cannot be loaded: say so, with the reason
        problem = f"cannot be loaded from {ref!r} ({type(err).__name__}: {err})"
    else:
        if model_fingerprint(fresh) == fingerprint:
            return
        problem = f"differs from what {ref!r} loads (built or changed in memory)"
    raise DatasetError(
        f"--engine ray: the tokenizer passed in {problem}, and every Ray worker loads its own "
        "copy; save it with anytok.checkpoint.save_checkpoint(model, folder) and pass the folder"
    )


def encode_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    model: str | os.PathLike[str] | Tokenizer,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    shard_size: int = DEFAULT_SHARD_SIZE,
    engine: Engine = "local",
    devices: str | Sequence[str | torch.device] = "auto",
    segment: Literal["full", "crop", "split"] = "full",
    segment_seconds: float | None = None,
    retry_failed: bool = False,
    address: str | None = None,
    actors: int | None = None,
    ray_num_cpus: int | None = None,
    progress: bool = False,
) -> DatasetSummary:
    """Encode every item of ``src`` into Parquet token shards in ``dst`` (resumable).

    Args:
        src: a folder (searched recursively), a JSONL manifest, or a tar shard pattern
            (see :mod:`anytok.datasets.sources`).
        dst: output folder: new, empty, or the folder of an interrupted run to resume.
        model: a registry name, checkpoint directory, ``hf-hub:`` id, or a loaded tokenizer
            (the Ray engine needs one its actors can load: a name or a directory).
        batch_size: segments per encoder call (tokens do not depend on it).
        workers: local engine: DataLoader worker processes decoding media (0: in-process).
        shard_size: items per shard; part of the plan, so fixed for a dataset.
        engine: ``"local"`` or ``"ray"`` (Ray Data; needs the ``anytok[ray]`` extra).
        devices: local engine: ``"auto"`` (every visible GPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:0,cuda:1"`` (one tokenizer replica per device). Ray: ``"auto"`` (GPU actors when the cluster has
            GPUs), ``"cpu"`` or ``"cuda"``.
        segment, segment_seconds: the :class:`~anytok.datasets.sources.SegmentPolicy`.
        retry_failed: re-encode shards that recorded failures (e.g. after a transient error).
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``); ``None`` starts a
            local cluster.
        actors: Ray encoder actors (default: one per GPU, or 1 on CPU).
        ray_num_cpus: CPUs of a local Ray cluster (default: all).
        progress: show a progress bar on stderr.

    Returns:
        a :class:`DatasetSummary`.

    Raises:
        DatasetError: bad arguments, unusable SRC, or DST holding a different plan.
    """
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise DatasetError(f"{name} must be >= 1, got {value}")
    if workers < 0:
        raise DatasetError(f"workers must be >= 0, got {workers}")
    if engine not in ("local", "ray"):
        raise DatasetError(f"engine must be 'local' or 'ray', got {engine!r}")
    if actors is not None and actors < 1:
        raise DatasetError(f"actors must be >= 1, got {actors}")
    policy = SegmentPolicy(segment, segment_seconds)
    started = time.perf_counter()
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise DatasetError(
            f"{dst}: exists and is not a folder; give encode-dataset an output folder"
        )

    with contextlib.ExitStack() as stack:
        # Model and items first: a wrong name or SRC fails before a Ray cluster starts.
        run_devices = parse_devices(devices) if engine == "local" else [torch.device("cpu")]
        tokenizer = _load(model, run_devices[0])  # with Ray, the driver only fingerprints it
        fmt = input_format(tokenizer)
        frame_rate = tokenizer.default_spec.frame_rate
        if policy.mode != "full" and frame_rate and policy.seconds * frame_rate < 1:
            raise DatasetError(
                f"--segment-seconds {policy.seconds:g} is shorter than one token frame of "
                f"{tokenizer.registry_name} ({1 / frame_rate:g} s)"
            )
        items = list_items(src, tokenizer.modality)
        fingerprint = model_fingerprint(tokenizer)
        if engine == "ray":
            from anytok.datasets import ray_engine

            if isinstance(model, Tokenizer):
                _check_loadable(model, fingerprint)
            stack.enter_context(ray_engine.ray_session(address, ray_num_cpus))
            use_gpu = ray_engine.resolve_gpu(devices)
            run_devices = [torch.device("cuda" if use_gpu else "cpu")]

        from anytok import __version__

        plan = Plan(
            tokenizer=tokenizer.registry_name,
            tokenizer_fingerprint=fingerprint,
            # what encode() returns by default (Mimi: 8 of its 32 levels), as `anytok encode`
            token_spec=tokenizer.default_spec.to_json(),
            anytok_version=__version__,
            precision=precision_of(run_devices),
            segment=policy.to_dict(),
            num_items=len(items),
            items_digest=items_digest(items),
            shard_size=shard_size,
            src=os.fspath(src),
        )
        try:
            prepare_output_folder(dst)
        except ValueError as err:  # a file on the way, no permission, read-only filesystem
            raise DatasetError(str(err)) from err
        stack.enter_context(folder_lock(dst))
        plan = prepare_plan(dst, plan)
        remove_stale_temps(dst)
        pending_shards = [
            k
            for k in range(plan.num_shards)
            if not shard_done(dst, plan, k, retry_failed=retry_failed)
        ]
        if pending_shards:
            # A finished run's summary no longer holds once a shard is redone (a killed
            # --retry-failed run left it beside rewritten shards): finalize writes it again.
            for name in (MANIFEST_NAME, ERRORS_NAME):
                (dst / name).unlink(missing_ok=True)
        indices = [i for k in pending_shards for i in range(*plan.shard_range(k))]
        collector = ShardCollector(dst, plan, items, pending_shards)
        stats = {"items": 0, "tokens": 0, "seconds": 0.0}

        with _progress(progress, len(indices), plan.num_shards - len(pending_shards)) as bar:

            def on_item(result: ItemResult, info: ShardInfo | None) -> None:
                stats["items"] += 1
                stats["tokens"] += sum(int(s.codes.size) for s in result.segments)
                stats["seconds"] += sum(s.duration_seconds or 0.0 for s in result.segments)
                bar(result, info)

            if indices and engine == "local":
                from anytok.datasets.local import replicas_for, run_local

                run_local(
                    replicas_for(tokenizer, run_devices),
                    fmt,
                    policy,
                    items,
                    indices,
                    collector,
                    batch_size=batch_size,
                    workers=workers,
                    on_item=on_item,
                )
            elif indices:
                ray_engine.run_ray(
                    _model_ref(model),
                    fingerprint,
                    fmt,
                    policy,
                    items,
                    indices,
                    collector,
                    batch_size=batch_size,
                    actors=actors,
                    use_gpu=use_gpu,
                    on_item=on_item,
                )
        if not collector.complete:
            raise RuntimeError(f"internal error: shards {sorted(collector.waiting)} not written")
        manifest = finalize(dst, plan)

    failures = []
    if manifest["failed"]:
        import json

        lines = (dst / ERRORS_NAME).read_text(encoding="utf-8").splitlines()
        failures = [json.loads(line) for line in lines]
    return DatasetSummary(
        dst=dst,
        items=manifest["items"],
        encoded=manifest["encoded"],
        failed=manifest["failed"],
        rows=manifest["rows"],
        tokens=manifest["tokens"],
        media_seconds=manifest["media_seconds"],
        shards=plan.num_shards,
        shards_written=len(collector.written),
        shards_skipped=plan.num_shards - len(pending_shards),
        items_this_run=stats["items"],
        tokens_this_run=stats["tokens"],
        media_seconds_this_run=stats["seconds"],
        elapsed=time.perf_counter() - started,
        engine=engine,
        failures=failures,
    )


def _load(model: str | os.PathLike[str] | Tokenizer, device: torch.device) -> Tokenizer:
    if isinstance(model, Tokenizer):
        return model.to(device).eval()
    import anytok

    loaded = anytok.load(model, device=device)
    if not isinstance(loaded, Tokenizer):  # pragma: no cover - every registered model is one
        raise DatasetError(f"{model}: not an anytok tokenizer")
    return loaded


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_WORKERS",
    "DatasetSummary",
    "encode_dataset",
    "parse_devices",
]
