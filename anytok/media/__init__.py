"""Media files in and out: load, save, validate, resample.

Tensors for one file (callers add the batch axis):

- audio ``(channels, samples)`` float32 in [-1, 1] (:func:`load_audio`, soundfile)
- image ``(3, height, width)`` float32 in [-1, 1] (:func:`load_image`, Pillow)
- video ``(3, frames, height, width)`` float32 in [-1, 1] (:func:`load_video`, PyAV)

Every problem with an input file raises :class:`MediaError`, which names the file and the
problem. Bundled sample media live in :mod:`anytok.media.samples`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anytok.media.audio import (
    FFMPEG_AUDIO_EXTENSIONS,
    AudioClip,
    audio_duration,
    audio_length,
    iter_audio,
    load_audio,
    resample,
    save_audio,
    to_channels,
)
from anytok.media.errors import DEFAULT_LIMITS, MediaError, MediaLimits, Modality
from anytok.media.image import ImageData, load_image, resize_cover, save_image
from anytok.media.video import VideoClip, iter_video, load_video, save_video, video_duration

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_LIMITS",
    "IMAGE_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "AudioClip",
    "ImageData",
    "MediaError",
    "MediaLimits",
    "Modality",
    "VideoClip",
    "audio_duration",
    "audio_length",
    "find_media",
    "iter_audio",
    "iter_video",
    "load_audio",
    "load_image",
    "load_media",
    "load_video",
    "modality_of",
    "other_media_note",
    "resample",
    "resize_cover",
    "save_audio",
    "save_image",
    "save_video",
    "to_channels",
    "video_duration",
    "walk_files",
]

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au"}
    | {".snd", ".w64", ".rf64", ".caf"}
    | FFMPEG_AUDIO_EXTENSIONS
)
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".avif", ".jp2"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts"}
    | {".m2ts", ".flv", ".wmv", ".ogv", ".3gp"}
)
MEDIA_EXTENSIONS: dict[Modality, frozenset[str]] = {
    "audio": AUDIO_EXTENSIONS,
    "image": IMAGE_EXTENSIONS,
    "video": VIDEO_EXTENSIONS,
}
_MODALITIES = tuple(MEDIA_EXTENSIONS)


def modality_of(path: str | os.PathLike[str]) -> Modality | None:
    """``"audio"``, ``"image"`` or ``"video"`` from the extension (case-insensitive);
    None for an extension that is none of them. A ``.gif`` counts as an image."""
    suffix = Path(path).suffix.lower()
    for modality, extensions in MEDIA_EXTENSIONS.items():
        if suffix in extensions:
            return modality
    return None


def _check_modality(modality: str) -> Modality:
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(_MODALITIES)}, got {modality!r}")
    return modality  # type: ignore[return-value]


def load_media(
    path: str | os.PathLike[str], modality: Modality | None = None, **kwargs: Any
) -> AudioClip | ImageData | VideoClip:
    """Load a file with :func:`load_audio`, :func:`load_image` or :func:`load_video`,
    chosen by ``modality`` or else by the extension; ``kwargs`` go to that loader."""
    if modality is None:
        modality = modality_of(path)
        if modality is None:
            raise MediaError(
                path,
                f"unknown media extension {Path(path).suffix or '(none)'!r}; "
                "pass modality='audio', 'image' or 'video'",
            )
    loaders = {"audio": load_audio, "image": load_image, "video": load_video}
    return loaders[_check_modality(modality)](path, **kwargs)


def walk_files(root: str | os.PathLike[str]) -> list[Path]:
    """The visible files under folder ``root``, sorted by relative path: links to folders are
    followed (``Path.rglob`` does not enter them on Python 3.11: ``data/train ->
    /mnt/disk1/train`` lost whole subtrees), each real folder once (a link loop ends there);
    files and folders with a leading dot are skipped; a link whose target is gone is kept, so
    that its loader names the problem. Shared by :func:`find_media` and ``anytok decode``."""
    root = Path(root)
    visited: set[str] = set()
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if not name.startswith(".") and (
                path.is_file() or (path.is_symlink() and not path.exists())
            ):
                found.append(path)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def find_media(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    modality: Modality | None = None,
    recursive: bool = True,
) -> list[Path]:
    """Media files among ``paths``: files as given, folders searched for files whose
    extension belongs to ``modality`` (any media when None).

    A file named directly is always returned, whatever its extension, so that the loader can
    say what is wrong with it. Hidden files and folders (a leading dot) are skipped inside
    folders. Each folder's files are sorted by relative path; the result follows the order
    of ``paths`` and holds no duplicates, so it is the same on every machine.

    Raises:
        MediaError: a path does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    wanted = (
        MEDIA_EXTENSIONS[_check_modality(modality)]
        if modality is not None
        else frozenset().union(*MEDIA_EXTENSIONS.values())
    )
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            candidates = (
                walk_files(root)
                if recursive
                else sorted(
                    (
                        path
                        for path in root.glob("*")
                        if not path.name.startswith(".")
                        and (path.is_file() or (path.is_symlink() and not path.exists()))
                    ),
                    key=lambda path: path.name,
                )
            )
            matches = [path for path in candidates if path.suffix.lower() in wanted]
        elif root.exists():
            matches = [root]
        else:
            raise MediaError(root, "no such file or folder")
        for path in matches:
            if path not in seen:
                seen.add(path)
                found.append(path)
    return found


# Video containers that often hold audio alone (yt-dlp's .webm Opus, screen-less .mp4):
# load_audio reads their first audio stream.
_AUDIO_CAPABLE_VIDEO = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})


def other_media_note(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], modality: Modality
) -> str:
    """For a search of ``paths`` that found no ``modality`` files: what the folders hold
    instead, as a parenthesis to append to the error ("" when they hold no media). Video
    containers are named for audio searches: named directly or listed in a manifest,
    their audio is read."""
    try:
        others = find_media(paths)
    except MediaError:
        return ""
    by_modality: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for path in others:
        kind = modality_of(path)
        if kind is None or kind == modality:
            continue
        by_modality.setdefault(kind, set()).add(path.suffix.lower())
        counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return ""
    found = "; ".join(
        f"{counts[kind]} {kind} file{'s' * (counts[kind] != 1)} "
        f"({', '.join(sorted(by_modality[kind]))})"
        for kind in sorted(counts)
    )
    article = "an" if modality in ("audio", "image") else "a"
    hint = f"{article} {modality} tokenizer reads {modality} files only"
    if modality == "audio" and by_modality.get("video", set()) & _AUDIO_CAPABLE_VIDEO:
        hint = (
            "folders are searched by extension; a video container holding audio is read "
            "when named directly or listed in a JSONL manifest"
        )
    return f" (found {found} instead: {hint})"
