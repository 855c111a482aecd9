"""Where training media come from: folders (searched recursively) and JSONL manifests, and
a deterministic train/validation split by hash of each item's key.

A manifest is a JSON Lines file, one object per line::

    {"path": "clips/a.wav", "duration": 3.2, "text": "optional transcript"}

``path`` is relative to the manifest's folder (or absolute); ``duration`` (seconds) and
``text`` are optional. Blank lines and lines starting with ``#`` are ignored; the file is
UTF-8, with or without a byte-order mark.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anytok.media import find_media

MANIFEST_SUFFIXES = (".jsonl",)
#: Tar shards, which ``anytok encode`` reads but training does not.
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class MediaItem:
    """One training file.

    Attributes:
        path: the file.
        key: a stable name for the split: the path relative to the folder it was found in, or
            the manifest's path normalised (``./d//x.wav`` is ``d/x.wav``). Moving a dataset
            folder keeps its split.
        duration: seconds, when a manifest gives it (lets video windows be seeked to).
        text: an optional transcript or caption from a manifest.
    """

    path: Path
    key: str
    duration: float | None = None
    text: str | None = None


class ManifestError(ValueError):
    """A manifest line that is not a JSON object with a ``path``."""


class SourceError(ManifestError):
    """A training source of a kind training cannot read (a tar shard)."""


def manifest_entries(
    manifest: Path, error: type[Exception] = ManifestError
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("<file>, line N", entry)`` for each JSON object of a JSONL manifest.

    Blank lines and ``#`` comments are skipped. Raises ``error`` naming the file and line
    when a line is not JSON or not an object with a ``"path"`` string.
    """
    try:
        # utf-8-sig: Notepad and PowerShell 5 start UTF-8 files with a byte-order mark.
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{manifest}: cannot be read ({err})") from err
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{manifest}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise error(f'{where}: expected an object with a "path" string, got {line!r}')
        yield where, entry


def read_manifest(manifest: str | os.PathLike[str]) -> list[MediaItem]:
    """Items of a JSONL manifest (see the module docstring for the format).

    Raises:
        ManifestError: naming the file and line of the first bad entry.
    """
    manifest = Path(manifest)
    items = []
    for where, entry in manifest_entries(manifest, ManifestError):
        duration = entry.get("duration")
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
            or duration < 0
        ):
            raise ManifestError(f'{where}: "duration" must be a finite number of seconds >= 0')
        text = entry.get("text")
        if text is not None and not isinstance(text, str):
            raise ManifestError(f'{where}: "text" must be a string, got {text!r}')
        path = Path(entry["path"])
        items.append(
            MediaItem(
                path=path if path.is_absolute() else manifest.parent / path,
                key=posixpath.normpath(entry["path"]),
                duration=float(duration) if duration is not None else None,
                text=text,
            )
        )
    return items


def scan_sources(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    modality: str,
    recursive: bool = True,
) -> list[MediaItem]:
    """Items of every folder (media files of ``modality``, recursively), JSONL manifest and
    single file in ``sources``, in a deterministic order.

    A file reached twice (overlapping folders such as ``[d, d/speech]``, a manifest listing
    files of a folder also given, a symlink) is kept once, where it first appears: with
    two keys it could land in both the training and the validation split.

    Raises:
        FileNotFoundError: a source does not exist (the message names it).
        SourceError: a source is a tar shard (training reads folders, manifests and files).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    items: list[MediaItem] = []
    for source in sources:
        root = Path(source)
        if not root.exists():
            raise FileNotFoundError(f"training data not found: {root} (no such file or folder)")
        if root.is_file() and root.suffix.lower() in MANIFEST_SUFFIXES:
            found = read_manifest(root)
            for item in found:
                _refuse_tar(item.path, f"{root} lists {item.key}, which")
            items += found
        elif root.is_dir():
            for path in find_media([root], modality=modality, recursive=recursive):  # type: ignore[arg-type]
                items.append(MediaItem(path=path, key=path.relative_to(root).as_posix()))
        else:
            _refuse_tar(root, str(root))
            items.append(MediaItem(path=root, key=root.name))
    return _unique(items)


def _refuse_tar(path: Path, what: str) -> None:
    """Raise :class:`SourceError` when ``path`` is a tar shard."""
    if path.name.lower().endswith(_TAR_SUFFIXES):
        raise SourceError(
            f"training data: {what} is a tar shard; training does not read tar shards "
            "(anytok encode does). Extract it into a folder, or list the extracted files "
            "in a JSONL manifest, and point data.train / data.val there"
        )


class _RealPaths:
    """Resolved paths of items' files, each folder resolved once (one ``lstat`` per file,
    not one per path component)."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}
        self.cwd = os.getcwd()

    def __call__(self, path: Path) -> str:
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(os.path.join(self.cwd, path))
        if folder not in self.folders:
            self.folders[folder] = os.path.realpath(folder)
        return os.path.join(self.folders[folder], name)


def _unique(items: list[MediaItem]) -> list[MediaItem]:
    """``items`` without repeats of a file (by resolved path), first occurrences in order."""
    real_path = _RealPaths()
    seen: set[str] = set()
    unique = []
    for item in items:
        real = real_path(item.path)
        if real not in seen:
            seen.add(real)
            unique.append(item)
    return unique


def without_files_of(items: list[MediaItem], others: list[MediaItem]) -> list[MediaItem]:
    """``items`` less those whose file (by resolved path) is one of ``others``' files: the
    training items left when a validation set is given that shares files with them (a
    validation folder inside the training folder)."""
    real_path = _RealPaths()
    taken = {real_path(item.path) for item in others}
    return [item for item in items if real_path(item.path) not in taken]


def split_value(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone (SHA-1), the same on every machine.

    A key from a file name that is not UTF-8 holds surrogate escapes: its original bytes
    are hashed (UTF-8 keys hash as before)."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_items(
    items: Sequence[MediaItem], val_fraction: float
) -> tuple[list[MediaItem], list[MediaItem]]:
    """``(train, val)``: an item is in validation when ``split_value(key) < val_fraction``.

    Hashing keys (not shuffling a list) keeps an item on the same side when files are added
    or removed, so a validation score stays comparable as a dataset grows.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = [], []
    for item in items:
        (val if split_value(item.key) < val_fraction else train).append(item)
    return train, val


__all__ = [
    "MANIFEST_SUFFIXES",
    "ManifestError",
    "MediaItem",
    "SourceError",
    "read_manifest",
    "scan_sources",
    "split_items",
    "split_value",
    "without_files_of",
]
