"""Writing a file so that its path holds the old file or the complete new one, never a part.

Used by the media writers and ``Tokens.save``. Dataset jobs keep their own
``anytok.datasets.files.atomic_write``: it fsyncs, and its temporary names are the ones
their stale-file cleanup recognises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "set_new_file_mode"]


def set_new_file_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the permission bits a file made with ``open()`` gets (``0o666`` less the
    umask). safetensors >= 0.8 and ``tempfile`` create their files as ``0o600``, which left
    token files and checkpoints unreadable to the other users of a shared folder."""
    try:  # Linux states it; elsewhere reading the umask means setting it (restored at once)
        status = Path("/proc/self/status").read_text().splitlines()
        umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o077)
        os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same folder, same extension, so that an encoder
    picks the same format) for the block to write; renamed over ``path`` when the block
    succeeds, deleted when it fails. A failed or interrupted write leaves ``path`` as it
    was: the previous file, or none. A link is followed: its target is replaced, the link
    kept. A replaced file keeps its permission bits; a new one gets the umask's, whatever
    mode the writer created the temporary with."""
    real = Path(os.path.realpath(path))
    # process and thread in the name: two writers of one path never share a temporary
    tmp = real.with_name(f".{real.name}.{os.getpid()}.{threading.get_ident()}.tmp{real.suffix}")
    try:
        yield tmp
        try:
            shutil.copymode(real, tmp)
        except FileNotFoundError:
            set_new_file_mode(tmp)
        os.replace(tmp, real)
    finally:
        tmp.unlink(missing_ok=True)
