"""Where a dataset's items come from: a folder, a JSONL manifest, or WebDataset tar shards.

Every source becomes one list of :class:`Item`, sorted by ``id``; the encoder's plan slices
that list into shards, so the order must be the same on every machine and every run.

- **Folder** (searched recursively with :func:`anytok.media.find_media`): ``id`` and
  ``source`` are the path relative to the folder (``speaker1/a.wav``); no metadata.
- **Manifest** (``*.jsonl``): one JSON object per line with ``"path"`` (relative to the
  manifest's folder, or absolute) and optionally ``"id"``; every other key is the item's
  metadata. ``id`` defaults to ``path`` as written. Blank lines and ``#`` lines are skipped.
- **Tar shards** (``data-{000..009}.tar``, brace-expanded like WebDataset; also ``.tar.gz``
  / ``.tgz``): members are grouped by key as WebDataset does (the member path up to the
  first dot of its file name: ``x/a.flac`` and ``x/a.json`` are sample ``x/a``). The
  sample's media is its member whose last extension belongs to the tokenizer's modality
  (the first in sorted order if there are several); ``.json`` members (an object is merged
  into the metadata), ``.txt`` and ``.cls`` become metadata; other members are ignored.
  ``id`` is ``<shard file stem>/<key>``, ``source`` is ``<shard file>::<member>``.

Ids must be unique: a duplicate is an error that names it.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import re
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from anytok.data.sources import MANIFEST_SUFFIXES, manifest_entries
from anytok.media import MEDIA_EXTENSIONS, MediaError, find_media, other_media_note
from anytok.pipeline import InputFormat, error_summary, iter_input, load_input

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Metadata members of a tar sample larger than this are refused (a mislabelled media file).
MAX_METADATA_BYTES = 1 << 20
SourceKind = Literal["folder", "manifest", "tar"]


class DatasetError(ValueError):
    """A mistake in what a dataset job was asked to do (reported in one line, exit code 2)."""


@dataclass(frozen=True)
class Item:
    """One input of a dataset job (a plain, JSON-safe value: it travels to Ray workers).

    Attributes:
        id: unique name of the item; the list is sorted by it.
        source: where it came from, for people, relative to the source (a path, or
            ``shard.tar::member``); written to the ``source`` column.
        path: the file to read (the tar file for a tar member), absolute.
        member: the tar member holding the media, or ``None`` for a plain file.
        offset: byte offset of the member's data in an uncompressed tar (read with one seek),
            ``-1`` when the member must be extracted with :mod:`tarfile` (compressed tars).
        size: size in bytes of the file or member (``-1`` when the file is missing); part of
            the plan digest, so an edited file is noticed on resume.
        mtime_ns: modification time of the file or member in ns (``-1`` when unknown), also
            in the digest: an edit that keeps the size (a re-rendered WAV) is noticed too.
        metadata: canonical JSON of the item's metadata object (``"{}"`` for none).
        error: set when the item is known to be bad before loading (a tar sample without a
            media member): it is recorded as a failure and never loaded.
    """

    id: str
    source: str
    path: str
    member: str | None = None
    offset: int = -1
    size: int = -1
    metadata: str = "{}"
    error: str | None = None
    mtime_ns: int = -1

    def digest_fields(self) -> list[Any]:
        """What identifies the item's content in the plan digest (not ``path``: moving the
        whole dataset folder keeps a resumable run resumable)."""
        member = None if self.member is None else printable(self.member)
        return [self.id, self.source, member, self.size, self.mtime_ns, self.metadata, self.error]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        return cls(**data)


def canonical_json(value: Any) -> str:
    """Sorted-key, compact, strict JSON: equal values give equal text (digests, metadata
    column). Strings that are not UTF-8 get :func:`printable` escapes and non-finite numbers
    become ``null`` (strict JSON readers refuse ``NaN``; Python's ``json`` writes it)."""
    return json.dumps(
        _json_safe(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file or tar member name that is not UTF-8 (Python keeps its
    bytes as lone surrogates) gets them as ``\\xNN`` escapes (``caf\\xe9.wav``).

    Ids, sources and errors go to Parquet strings and UTF-8 JSON, which cannot hold lone
    surrogates; the file itself is still read through its real path.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str) -> str:
    """``text`` on one line of valid UTF-8, for the errors file and the plan's items."""
    return printable(" ".join(text.split()))


# --------------------------------------------------------------------------- listing


def source_kind(src: str | os.PathLike[str]) -> SourceKind:
    """``"folder"``, ``"manifest"`` or ``"tar"`` for a SRC argument.

    Raises:
        DatasetError: SRC is none of them (the message says what is accepted).
    """
    text = os.fspath(src)
    path = Path(text)
    # An existing folder or manifest first: a name may hold braces ("songs {live}/").
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest"
    if "{" in text or text.lower().endswith(TAR_SUFFIXES):
        return "tar"
    if not path.exists():
        raise DatasetError(f"{text}: no such file or folder")
    raise DatasetError(
        f"{text}: not a folder, a JSONL manifest ({', '.join(MANIFEST_SUFFIXES)}) or a tar "
        f"shard pattern ({', '.join(TAR_SUFFIXES)}, e.g. data-{{000..009}}.tar)"
    )


def list_items(src: str | os.PathLike[str], modality: str) -> list[Item]:
    """Every item of ``src`` for a tokenizer of ``modality``, sorted by id.

    Raises:
        DatasetError: SRC is missing or unusable, a manifest line is bad, ids repeat, or no
            item was found.
    """
    kind = source_kind(src)
    if kind == "folder":
        items = _folder_items(Path(src), modality)
    elif kind == "manifest":
        items = _manifest_items(Path(src))
    else:
        items = _tar_items(os.fspath(src), modality)
    items.sort(key=lambda item: item.id)
    for before, after in itertools.pairwise(items):
        if before.id == after.id:
            raise DatasetError(
                f"{src}: the id {after.id!r} appears twice ({before.source} and {after.source}); "
                'ids must be unique (give manifest lines distinct "id" values)'
            )
    if not items:
        note = other_media_note(Path(src), modality) if kind == "folder" else ""  # type: ignore[arg-type]
        raise DatasetError(f"{src}: no {modality} items found{note}")
    return items


def _file_stat(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, ``(-1, -1)`` when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1  # the loader reports the problem as the item's error
    return stat.st_size, stat.st_mtime_ns


def _folder_items(root: Path, modality: str) -> list[Item]:
    items = []
    for path in find_media([root], modality=modality, recursive=True):  # type: ignore[arg-type]
        rel = printable(path.relative_to(root).as_posix())
        size, mtime_ns = _file_stat(path)
        items.append(
            Item(id=rel, source=rel, path=str(path.resolve()), size=size, mtime_ns=mtime_ns)
        )
    return items


def _manifest_items(manifest: Path) -> list[Item]:
    # Not anytok.data.read_manifest: that one keeps only the training fields (duration,
    # text); a dataset job keeps every key as the item's metadata and honours "id".
    items = []
    for where, entry in manifest_entries(manifest, DatasetError):
        written = entry.pop("path")
        item_id = entry.pop("id", written)
        if not isinstance(item_id, str) or not item_id:
            raise DatasetError(f'{where}: "id" must be a non-empty string')
        path = Path(written)
        path = path if path.is_absolute() else manifest.parent / path
        size, mtime_ns = _file_stat(path)
        items.append(
            Item(
                # a name that is not UTF-8 (json.dumps of os.listdir keeps it as surrogates)
                id=printable(item_id),
                source=printable(written),
                path=str(path.resolve()),
                size=size,
                mtime_ns=mtime_ns,
                metadata=canonical_json(entry),
            )
        )
    return items


def expand_shards(pattern: str) -> list[str]:
    """Tar files of a shard pattern: brace expansion as in WebDataset (``{000..009}``,
    ``{a,b}``), in expansion order."""
    if Path(pattern).is_file():  # an existing tar whose name holds braces
        return [pattern]
    from braceexpand import braceexpand  # the expansion WebDataset itself uses

    return list(braceexpand(pattern))


# WebDataset's split of a member name into sample key and extension: the key is the path up
# to the first dot of the file name (webdataset.tariterators.base_plus_ext). The webdataset
# package itself streams samples and cannot seek to one member, which resuming a shard
# needs; its grouping rule is this one regex, so tarfile does the reading.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def _tar_items(pattern: str, modality: str) -> list[Item]:
    shards = expand_shards(pattern)
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"tar shard not found: {missing[0]}{more}")
    items: list[Item] = []
    for shard in shards:
        items += _shard_items(Path(shard), modality)
    return items


def _shard_stem(path: Path) -> str:
    name = path.name
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _shard_items(shard: Path, modality: str) -> list[Item]:
    """The samples of one tar shard (WebDataset grouping)."""
    wanted = MEDIA_EXTENSIONS[modality]  # type: ignore[index]
    compressed = not shard.name.lower().endswith(".tar")
    stem = printable(_shard_stem(shard))
    shard_name = printable(shard.name)
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    meta: dict[str, dict[str, Any]] = {}
    problem = None
    regular: dict[str, tarfile.TarInfo] = {}  # for hard links (GNU tar stores repeats so)
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for member in tar:  # streams through the headers; data is read only for metadata
                name = member.name
                if member.isfile():
                    regular[name] = member
                elif member.islnk():
                    target = regular.get(member.linkname)
                    if target is not None:  # the target's data under the link's name
                        member = copy.copy(target)
                        member.name = name
                if not (member.isfile() or member.islnk()) or Path(name).name.startswith("."):
                    continue
                match = _KEY_EXT.match(name)
                if match is None:
                    continue  # no extension: WebDataset skips such members too
                key, ext = match.group(1), match.group(2).lower()
                samples.setdefault(key, {})[ext] = member
                last = "." + ext.rsplit(".", 1)[-1]
                if last in wanted or ext not in ("json", "txt", "cls"):
                    continue
                if member.size > MAX_METADATA_BYTES:
                    meta.setdefault(key, {})["error"] = f"{name}: metadata member over 1 MiB"
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                meta.setdefault(key, {})[ext] = data
    except (tarfile.TarError, OSError, EOFError) as err:
        # Keep what was listed; the unreadable rest becomes one failed item, so the job goes
        # on and the errors file says which shard to fix.
        # (one line: the error is the item's, kept in the plan; tarfile's span several)
        problem = one_line(f"not a readable tar archive after {len(samples)} sample(s) ({err})")
    items = []
    for key, members in samples.items():
        media = sorted(ext for ext in members if "." + ext.rsplit(".", 1)[-1] in wanted)
        metadata, error = _tar_metadata(meta.get(key, {}))
        item_id = f"{stem}/{printable(key)}"
        if not media:
            has = printable(", ".join(sorted(members)))
            items.append(
                Item(
                    id=item_id,
                    source=f"{shard_name}::{printable(key)}",
                    path=str(shard.resolve()),
                    metadata=canonical_json(metadata),
                    error=f"sample has no {modality} member (it has: {has})",
                )
            )
            continue
        member = members[media[0]]
        items.append(
            Item(
                id=item_id,
                source=f"{shard_name}::{printable(member.name)}",
                path=str(shard.resolve()),
                member=member.name,
                offset=-1 if compressed else member.offset_data,
                size=member.size,
                mtime_ns=int(member.mtime * 1_000_000_000),
                metadata=canonical_json(metadata),
                error=error,
            )
        )
    if problem is not None:
        items.append(
            Item(id=f"{stem}/", source=shard_name, path=str(shard.resolve()), error=problem)
        )
    return items


def _tar_metadata(raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Metadata of a tar sample from its ``.json`` / ``.txt`` / ``.cls`` members."""
    out: dict[str, Any] = {}
    error = raw.get("error")
    if "json" in raw:
        try:
            value = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return out, f"its .json member is not valid JSON ({err})"
        if isinstance(value, dict):
            out.update(value)
        else:
            out["json"] = value
    for ext in ("txt", "cls"):
        if ext in raw:
            text = raw[ext].decode("utf-8", errors="replace").strip()
            out[ext] = int(text) if ext == "cls" and re.fullmatch(r"-?\d+", text) else text
    return out, error


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SegmentPolicy:
    """What to do with the time axis of long audio and video (images are always resized to
    cover the tokenizer's resolution and centre-cropped).

    Attributes:
        mode: ``"full"``: encode the whole file as one row; ``"crop"``: keep only the first
            ``seconds``; ``"split"``: one row per consecutive ``seconds``-long segment (the
            last one may be shorter), numbered by the ``segment`` column.
        seconds: segment length for ``crop`` and ``split``.
    """

    mode: Literal["full", "crop", "split"] = "full"
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("full", "crop", "split"):
            raise DatasetError(f"segment policy must be full, crop or split, got {self.mode!r}")
        if self.mode != "full" and (
            self.seconds is None or not 0 < self.seconds < math.inf  # NaN and inf too
        ):
            raise DatasetError(
                f"--segment {self.mode} needs a finite --segment-seconds > 0, got {self.seconds}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "seconds": self.seconds if self.mode != "full" else None}

    def _rate_and_step(self, fmt: InputFormat) -> tuple[float, int]:
        """Samples / frames per second of ``fmt`` and per segment (``crop`` / ``split``)."""
        rate = fmt.sample_rate if fmt.modality == "audio" else fmt.fps
        assert rate is not None and self.seconds is not None
        return rate, max(1, round(self.seconds * rate))

    def max_steps(self, fmt: InputFormat) -> int | None:
        """Samples / frames :meth:`apply` keeps from the start (``crop``), so the loader
        reads no further; None: all of them."""
        if self.mode != "crop" or fmt.modality == "image":
            return None
        return self._rate_and_step(fmt)[1]

    def apply(self, fmt: InputFormat, media: Tensor) -> list[tuple[float, Tensor]]:
        """``[(start_seconds, segment), ...]`` of one loaded item (no batch axis)."""
        if self.mode == "full" or fmt.modality == "image":
            return [(0.0, media)]
        axis = -1 if fmt.modality == "audio" else 1
        rate, step = self._rate_and_step(fmt)
        if self.mode == "crop":
            return [(0.0, media.narrow(axis, 0, min(step, media.shape[axis])))]
        total = media.shape[axis]
        return [
            (start / rate, media.narrow(axis, start, min(step, total - start)).contiguous())
            for start in range(0, total, step)
        ]


class _TarCache:
    """A few open compressed tars per process (extracting a member of a ``.tar.gz`` needs
    the archive's index, which tarfile builds once per open)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.open: OrderedDict[str, tarfile.TarFile] = OrderedDict()

    def get(self, path: str) -> tarfile.TarFile:
        if path in self.open:
            self.open.move_to_end(path)
            return self.open[path]
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - kept open by design
        self.open[path] = tar
        if len(self.open) > self.size:
            _, oldest = self.open.popitem(last=False)
            oldest.close()
        return tar


_TARS = _TarCache()


def read_member(item: Item) -> bytes:
    """The bytes of a tar item's media member.

    Raises:
        MediaError: the member is truncated or cannot be extracted.
    """
    assert item.member is not None
    if item.offset >= 0:  # uncompressed: one seek, no scan of the archive
        with open(item.path, "rb") as f:
            f.seek(item.offset)
            data = f.read(item.size)
        if len(data) != item.size:
            raise MediaError(
                item.source,
                f"tar member is truncated: {len(data)} of {item.size} bytes are present",
            )
        return data
    try:
        handle = _TARS.get(item.path).extractfile(item.member)
        if handle is None:
            raise MediaError(item.source, "tar member is not a regular file")
        return handle.read()
    except (tarfile.TarError, OSError, EOFError, KeyError) as err:
        raise MediaError(item.source, f"cannot be extracted from the tar ({err})") from err


def load_item(fmt: InputFormat, item: Item, max_steps: int | None = None) -> Tensor:
    """Load one item as the tokenizer expects it (see :func:`anytok.pipeline.load_input`,
    which ``max_steps`` goes to).

    Raises:
        MediaError: naming the item's source and the problem.
    """
    with _item_path(item) as path:
        return load_input(fmt, path, max_steps)


@contextlib.contextmanager
def _item_path(item: Item) -> Iterator[Path]:
    """A path the media loaders can open for ``item``; a MediaError raised inside names the
    item's source, not that path.

    Tar members are written to a temporary file first: the media loaders (soundfile,
    Pillow, PyAV) and their validation work on paths. A file whose path is not UTF-8 is read
    through a temporary UTF-8 symlink (soundfile cannot open such a path).
    """
    if item.error is not None:
        raise MediaError(item.source, item.error)
    if item.member is None and printable(item.path) == item.path:
        yield Path(item.path)  # its errors name the path, which is the source
        return
    with tempfile.TemporaryDirectory(prefix="anytok-item-") as folder:
        if item.member is None:
            path = Path(folder) / ("item" + printable(Path(item.path).suffix))
            path.symlink_to(item.path)
        else:
            data = read_member(item)
            path = Path(folder) / ("member" + printable("." + item.member.rsplit(".", 1)[-1]))
            path.write_bytes(data)
            del data
        try:
            yield path
        except MediaError as err:  # name the item, not the temporary path
            raise MediaError(item.source, err.problem) from err


def describe_error(err: BaseException) -> str:
    """One line for the errors file: a MediaError's problem, else ``Type: message``."""
    return one_line(err.problem if isinstance(err, MediaError) else error_summary(err))


#: ``--segment split`` reads audio in windows of about this many bytes (float32), a whole
#: number of segments each; video is decoded one segment at a time.
SPLIT_WINDOW_BYTES = 16 << 20


def iter_segments(
    fmt: InputFormat, policy: SegmentPolicy, item: Item
) -> Iterator[tuple[float, Tensor]]:
    """An item's segments ``(start_seconds, media)`` (media without batch axis) as they load.

    ``full`` / ``crop`` and images load once (a crop reads no further than it keeps).
    ``split`` reads the item piece by piece (:func:`anytok.pipeline.iter_input`): audio in
    windows of :data:`SPLIT_WINDOW_BYTES`, video in one decoding pass, a segment at a time,
    so memory holds a piece, not the file, and ``MediaLimits``' length limits bound a
    piece. The segments equal those of loading the whole file and cutting it.

    Raises:
        Exception: whatever stops loading, when reading reaches it (a bad item may raise
            after some segments): the item fails as a whole and callers drop what it gave.
    """
    with _item_path(item) as path:
        if policy.mode != "split" or fmt.modality == "image":
            yield from policy.apply(fmt, load_input(fmt, path, policy.max_steps(fmt)))
            return
        rate, step = policy._rate_and_step(fmt)
        axis = -1 if fmt.modality == "audio" else 1
        per_piece = 1
        if fmt.modality == "audio":
            per_piece = max(1, SPLIT_WINDOW_BYTES // (4 * (fmt.channels or 1) * step))
        first = 0
        for piece in iter_input(fmt, path, per_piece * step):
            for offset in range(0, piece.shape[axis], step):
                length = min(step, piece.shape[axis] - offset)
                yield (first + offset) / rate, piece.narrow(axis, offset, length).contiguous()
            first += piece.shape[axis]


__all__ = [
    "SPLIT_WINDOW_BYTES",
    "TAR_SUFFIXES",
    "DatasetError",
    "Item",
    "SegmentPolicy",
    "canonical_json",
    "describe_error",
    "expand_shards",
    "iter_segments",
    "list_items",
    "load_item",
    "printable",
    "read_member",
    "source_kind",
]
