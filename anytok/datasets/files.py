"""Crash-safe file writing and the one-run-per-folder lock of dataset jobs.

A file a dataset job writes is either absent or complete: it is written to a temporary name
in the same folder, flushed to disk, then renamed over the target (``os.replace`` is atomic
on POSIX and Windows). A SIGKILL at any moment leaves at most a stale ``.*.tmp`` file,
which the next run deletes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO

from anytok.datasets.sources import DatasetError

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, same folder, per process."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable across a power cut; not needed for SIGKILL, and not
    # possible on every platform (Windows cannot open a folder).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file, fsync it and rename it to ``path``."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _temp_target(name: str) -> str | None:
    """The file name a :func:`temp_path` name is written for (``None`` for other names)."""
    stem = name.removesuffix(TMP_SUFFIX)
    target, _, pid = stem[1:].rpartition(".")
    if name.startswith(".") and stem != name and target and pid.isdigit():
        return target
    return None


def remove_stale_temps(folder: Path, names: Collection[str] | None = None) -> int:
    """Delete temporary files left by killed runs in ``folder``; returns how many.

    With ``names``, only the temporary files of those file names (``.NAME.<pid>.tmp``).
    Safe only while no other process writes these files: for a whole folder, while this
    process holds the folder's lock (:func:`folder_lock`).
    """
    removed = 0
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        if names is None or _temp_target(path.name) in names:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (``folder/.lock``) for one job.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so
    forked DataLoader workers do not inherit it and a killed run's orphaned workers cannot
    keep the folder locked; the kernel drops it when the process dies. Where ``fcntl`` does
    not exist (Windows) this is a no-op.

    Raises:
        DatasetError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:  # EAGAIN / EACCES: held by another process
            raise DatasetError(
                f"{folder}: another encode-dataset run is writing to this folder; wait for it "
                "or stop it first"
            ) from err
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["atomic_write", "atomic_write_text", "folder_lock", "remove_stale_temps", "temp_path"]
