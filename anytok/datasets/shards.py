"""Token shards: one Parquet file per plan shard, plus the dataset manifest and errors file.

``DST/shard-00000.parquet`` holds one row per encoded segment of the shard's items, in item
order (then segment order):

=================  =====================  ================================================
column             type                   meaning
=================  =====================  ================================================
id                 string                 item id (see :mod:`anytok.datasets.sources`)
source             string                 where the item came from, relative to SRC
segment            int32                  segment number within the item (0 unless split)
start_seconds      float64                where the segment starts in the item
duration_seconds   float64 (nullable)     media seconds encoded (null for images)
shape              list<int32>            codes shape ``[levels, *positions]``
length             int64                  valid length along the first position axis
num_tokens         int64                  ``prod(shape)`` (all levels, no special tokens)
codes              large_list<uintN>      codes, row-major over ``shape``; ``uintN`` is
                                          :attr:`TokenSpec.storage_dtype`
metadata           string                 the item's metadata, a JSON object
=================  =====================  ================================================

File metadata (Parquet key-value, UTF-8 JSON or text):

- ``anytok.format``: ``anytok.token_shard/1``
- ``anytok.tokenizer``: the tokenizer's name (``arch.tag`` or checkpoint directory)
- ``anytok.tokenizer_fingerprint``: SHA-256 of its weights and configuration
- ``anytok.version``: the anytok version that encoded
- ``anytok.token_spec``: the :class:`~anytok.tokens.TokenSpec` as JSON
- ``anytok.shard``: JSON ``{index, num_shards, item_start, item_stop, plan_digest, items,
  encoded, failed, rows, tokens, media_seconds, failures: [{id, source, error}]}``

A shard is done iff its file exists, its footer parses and ``anytok.shard`` names the current
plan's digest and item range. The failures of a shard live in its own footer, so the errors
file (``DST/errors.jsonl``) and the manifest (``DST/manifest.json``) are rebuilt from the
shards at the end of every run and are exactly those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from anytok.datasets.files import atomic_write, atomic_write_text
from anytok.datasets.plan import Plan
from anytok.datasets.sources import DatasetError, Item
from anytok.tokens import Tokens, TokenSpec

SHARD_FORMAT = "anytok.token_shard/1"
DATASET_FORMAT = "anytok.token_dataset/1"
MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"
# zstd: token ids compress well and every Parquet reader of note decodes it.
COMPRESSION = "zstd"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def shard_schema(spec: TokenSpec) -> pa.Schema:
    """The Arrow schema of a shard for codes of ``spec`` (codes in its storage dtype)."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("segment", pa.int32()),
            ("start_seconds", pa.float64()),
            ("duration_seconds", pa.float64()),
            ("shape", pa.list_(pa.int32())),
            ("length", pa.int64()),
            ("num_tokens", pa.int64()),
            # large_list: int64 offsets, so a shard of long recordings cannot overflow.
            ("codes", pa.large_list(pa.from_numpy_dtype(spec.storage_dtype))),
            ("metadata", pa.string()),
        ]
    )


@dataclass
class SegmentCodes:
    """The codes of one segment of an item.

    Attributes:
        segment: its number within the item.
        start_seconds: where it starts in the item.
        duration_seconds: media seconds it covers (``None`` for images).
        codes: ``(levels, *positions)`` in the spec's storage dtype, trimmed to valid length.
    """

    segment: int
    start_seconds: float
    duration_seconds: float | None
    codes: np.ndarray


@dataclass
class ItemResult:
    """What became of one item: its segments' codes, or the error that stopped it."""

    index: int
    segments: list[SegmentCodes] = field(default_factory=list)
    error: str | None = None


@dataclass
class ShardInfo:
    """The ``anytok.shard`` footer entry of a shard file."""

    index: int
    num_shards: int
    item_start: int
    item_stop: int
    plan_digest: str
    items: int
    encoded: int
    failed: int
    rows: int
    tokens: int
    media_seconds: float
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def build_table(
    spec: TokenSpec, items: Sequence[Item], results: Sequence[ItemResult]
) -> tuple[pa.Table, list[dict[str, str]]]:
    """The rows of a shard (``items[i]`` produced ``results[i]``) and its failures list.

    An item whose codes do not fit the spec (a level's code outside its codebook, a wrong
    number of levels or axes) is recorded as a failure rather than stored wrapped into the
    storage dtype.
    """
    dtype = spec.storage_dtype
    cols: dict[str, list[Any]] = {name: [] for name in shard_schema(spec).names if name != "codes"}
    flat: list[np.ndarray] = []
    failures = []
    for item, result in zip(items, results, strict=True):
        error = result.error
        if error is None:  # codes outside the codebook would be stored wrapped or truncated
            error = next(
                filter(None, (code_error(spec, seg.codes) for seg in result.segments)), None
            )
        if error is not None:
            failures.append({"id": item.id, "source": item.source, "error": error})
            continue
        for seg in result.segments:
            codes = np.ascontiguousarray(seg.codes, dtype=dtype)
            cols["id"].append(item.id)
            cols["source"].append(item.source)
            cols["segment"].append(seg.segment)
            cols["start_seconds"].append(float(seg.start_seconds))
            cols["duration_seconds"].append(seg.duration_seconds)
            cols["shape"].append(list(codes.shape))
            cols["length"].append(int(codes.shape[1]))
            cols["num_tokens"].append(int(codes.size))
            cols["metadata"].append(item.metadata)
            flat.append(codes.reshape(-1))
    offsets = np.zeros(len(flat) + 1, dtype=np.int64)
    if flat:
        np.cumsum([a.size for a in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, dtype=dtype)
    schema = shard_schema(spec)
    arrays = {
        name: pa.array(values_, type=schema.field(name).type) for name, values_ in cols.items()
    }
    arrays["codes"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    table = pa.table([arrays[name] for name in schema.names], schema=schema)
    return table, failures


def code_error(spec: TokenSpec, codes: np.ndarray) -> str | None:
    """Why ``codes`` ``(levels, *positions)`` cannot be stored for ``spec``, or ``None``."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "ui":
        return f"codes have dtype {codes.dtype}, expected integers"
    if codes.ndim != 1 + len(spec.layout) or codes.shape[0] != spec.num_levels:
        return (
            f"codes of shape {list(codes.shape)} do not fit the spec: expected "
            f"[{spec.num_levels}, {', '.join(spec.layout)}]"
        )
    if not codes.size:
        return None
    flat = codes.reshape(spec.num_levels, -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    for level, size in enumerate(spec.codebook_sizes):
        if int(low[level]) < 0 or int(high[level]) >= size:
            bad = int(low[level]) if int(low[level]) < 0 else int(high[level])
            return f"code {bad} at level {level} is outside the codebook [0, {size})"
    return None


def write_shard(
    dst: Path, plan: Plan, k: int, items: Sequence[Item], results: Sequence[ItemResult]
) -> ShardInfo:
    """Write shard ``k`` of ``plan`` atomically (``items`` are the shard's items in order)."""
    start, stop = plan.shard_range(k)
    if len(items) != stop - start or [r.index for r in results] != list(range(start, stop)):
        raise ValueError(f"write_shard: shard {k} needs results for items [{start}, {stop})")
    spec = plan.spec
    table, failures = build_table(spec, items, results)
    tokens = int(pc.sum(table["num_tokens"]).as_py() or 0)
    seconds = pc.sum(table["duration_seconds"]).as_py() or 0.0
    info = ShardInfo(
        index=k,
        num_shards=plan.num_shards,
        item_start=start,
        item_stop=stop,
        plan_digest=plan.digest,
        items=stop - start,
        encoded=stop - start - len(failures),
        failed=len(failures),
        rows=table.num_rows,
        tokens=tokens,
        media_seconds=float(seconds),
        failures=failures,
    )
    from anytok import __version__

    metadata = {
        "anytok.format": SHARD_FORMAT,
        "anytok.tokenizer": plan.tokenizer,
        "anytok.tokenizer_fingerprint": plan.tokenizer_fingerprint,
        "anytok.version": __version__,
        "anytok.token_spec": plan.token_spec,
        "anytok.shard": info.to_json(),
    }
    table = table.replace_schema_metadata(metadata)
    atomic_write(
        dst / shard_name(k),
        lambda f: pq.write_table(table, f, compression=COMPRESSION),
    )
    return info


def read_shard_info(path: Path) -> ShardInfo | None:
    """The footer entry of a shard file, or ``None`` if the file is missing or unreadable
    (an invalid footer: the shard is not done)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"anytok.format") != SHARD_FORMAT.encode():
            return None
        return ShardInfo(**json.loads(meta[b"anytok.shard"]))
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        return None


def shard_done(dst: Path, plan: Plan, k: int, *, retry_failed: bool = False) -> bool:
    """True when shard ``k`` of ``plan`` is on disk, complete and of this plan."""
    info = read_shard_info(dst / shard_name(k))
    if info is None or info.plan_digest != plan.digest:
        return False
    if (info.item_start, info.item_stop) != plan.shard_range(k):
        return False
    return not (retry_failed and info.failed)


class ShardCollector:
    """Gathers item results in any order and writes each shard as soon as it is complete.

    Engines hand it :class:`ItemResult` values; it writes shard ``k`` when every item of
    ``[start, stop)`` has a result, so memory holds at most the shards in flight.
    """

    def __init__(self, dst: Path, plan: Plan, items: Sequence[Item], pending: Sequence[int]):
        self.dst, self.plan, self.items = dst, plan, items
        self.waiting: dict[int, dict[int, ItemResult]] = {k: {} for k in pending}
        self.written: list[ShardInfo] = []

    def add(self, result: ItemResult) -> ShardInfo | None:
        """Record one item's result; returns the shard info if this completed a shard."""
        k = self.plan.shard_of(result.index)
        if k not in self.waiting:
            raise ValueError(f"item {result.index} belongs to shard {k}, which is not pending")
        got = self.waiting[k]
        got[result.index] = result
        start, stop = self.plan.shard_range(k)
        if len(got) < stop - start:
            return None
        del self.waiting[k]
        ordered = [got[i] for i in range(start, stop)]
        info = write_shard(self.dst, self.plan, k, self.items[start:stop], ordered)
        self.written.append(info)
        return info

    @property
    def complete(self) -> bool:
        return not self.waiting


def finalize(dst: Path, plan: Plan) -> dict[str, Any]:
    """Write ``errors.jsonl`` and ``manifest.json`` from the shards' footers; returns the
    manifest. Both are deterministic (no timestamps), so a resumed run writes the same bytes.

    Raises:
        RuntimeError: a shard of the plan is missing (the job did not finish).
    """
    shards, errors = [], []
    for k in range(plan.num_shards):
        info = read_shard_info(dst / shard_name(k))
        if info is None or info.plan_digest != plan.digest:
            raise RuntimeError(f"{dst}: shard {k} is missing or not of this plan")
        errors += info.failures
        shards.append(
            {
                "file": shard_name(k),
                "item_start": info.item_start,
                "item_stop": info.item_stop,
                "items": info.items,
                "encoded": info.encoded,
                "failed": info.failed,
                "rows": info.rows,
                "tokens": info.tokens,
                "media_seconds": info.media_seconds,
            }
        )
    from anytok import __version__

    manifest = {
        "format": DATASET_FORMAT,
        "tokenizer": plan.tokenizer,
        "tokenizer_fingerprint": plan.tokenizer_fingerprint,
        "anytok_version": __version__,
        "token_spec": json.loads(plan.token_spec),
        "plan_digest": plan.digest,
        "segment": plan.segment,
        "items": plan.num_items,
        "encoded": sum(s["encoded"] for s in shards),
        "failed": len(errors),
        "rows": sum(s["rows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "media_seconds": math.fsum(s["media_seconds"] for s in shards),
        "errors_file": ERRORS_NAME,
        "shards": shards,
    }
    lines = "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors)
    atomic_write_text(dst / ERRORS_NAME, lines)
    atomic_write_text(dst / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------- reading


def read_manifest(dataset: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a finished dataset folder."""
    path = Path(dataset) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: no {MANIFEST_NAME}; is it the output folder of a finished "
            "`anytok encode-dataset` run?"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def shard_spec(path: Path) -> TokenSpec:
    """The :class:`TokenSpec` in a shard's footer."""
    meta = pq.read_schema(path).metadata or {}
    return TokenSpec.from_json(meta[b"anytok.token_spec"].decode("utf-8"))


def _missing_shard(path: Path) -> DatasetError:
    return DatasetError(
        f"{path}: listed in {MANIFEST_NAME} but missing "
        "(running the same `anytok encode-dataset` command again re-encodes it)"
    )


def read_shard_table(path: Path) -> pa.Table:
    """The table of one shard of a finished dataset.

    Raises:
        DatasetError: naming the shard, when it is missing or not a readable Parquet file.
    """
    if not path.is_file():
        raise _missing_shard(path)
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as err:  # truncated, not Parquet, unreadable
        raise DatasetError(f"{path}: not a readable Parquet file: {err}") from err


def iter_rows(dataset: str | Path) -> Iterator[tuple[dict[str, Any], Tokens]]:
    """Every row of a finished dataset in order: ``(row without codes, Tokens)`` where the
    tokens hold one item ``(1, levels, *positions)`` with the dataset's spec.

    Raises:
        DatasetError: a shard listed in the manifest is missing (checked before the first
            row) or unreadable (when it is reached).
    """
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    spec = TokenSpec.from_dict(manifest["token_spec"])
    paths = [dataset / shard["file"] for shard in manifest["shards"]]
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:  # fails now, not after every row before it was read
        raise _missing_shard(missing)
    for path in paths:
        table = read_shard_table(path)
        codes = table.column("codes").combine_chunks()
        values = codes.values.to_numpy(zero_copy_only=False)
        offsets = codes.offsets.to_numpy()
        rows = table.drop_columns(["codes"]).to_pylist()
        for i, row in enumerate(rows):
            flat = values[offsets[i] : offsets[i + 1]].astype(np.int64)
            tensor = torch.from_numpy(flat.reshape(row["shape"]))[None]
            yield row, Tokens(tensor, spec)


__all__ = [
    "DATASET_FORMAT",
    "ERRORS_NAME",
    "MANIFEST_NAME",
    "SHARD_FORMAT",
    "ItemResult",
    "SegmentCodes",
    "ShardCollector",
    "ShardInfo",
    "build_table",
    "finalize",
    "iter_rows",
    "read_manifest",
    "read_shard_info",
    "read_shard_table",
    "shard_done",
    "shard_name",
    "shard_schema",
    "shard_spec",
    "write_shard",
]
