"""Errors and limits shared by the media loaders and writers.

Every problem with an input file surfaces as a :class:`MediaError` that names the file and says
what is wrong in words a person understands; a batch job records it and goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from torch import Tensor

from anytok.files import atomic_output

Modality = Literal["audio", "image", "video"]

__all__ = [
    "DEFAULT_LIMITS",
    "FFMPEG_ERRORS",
    "MediaError",
    "MediaLimits",
    "Modality",
    "atomic_output",
    "check_file",
    "ffmpeg_detail",
    "float_media",
    "is_iso_bmff",
    "output_path",
    "sniff",
]


class MediaError(Exception):
    """A media file that cannot be used: ``str(err)`` is ``"{path}: {problem}"``."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path if self.path is not None else '<tensor>'}: {problem}")

    def __reduce__(self) -> tuple[type[MediaError], tuple[Path | None, str]]:
        # Keeps the two-argument constructor working when the error crosses processes.
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class MediaLimits:
    """Sanity limits that refuse absurd inputs before they are decoded.

    They guard against decompression bombs and mislabelled files, not against running out of
    memory on a legitimately long file: use ``max_frames`` or shorter clips for that.
    """

    max_audio_seconds: float = 4 * 3600.0
    max_audio_channels: int = 64
    min_audio_samples: int = 1
    max_image_pixels: int = 100_000_000
    min_image_side: int = 1
    max_video_frames: int = 10_000
    max_video_pixels_per_frame: int = 7680 * 4320  # 8K UHD
    min_video_side: int = 1


DEFAULT_LIMITS = MediaLimits()


def check_file(path: str | os.PathLike[str]) -> Path:
    """The path (``~`` expanded) as a :class:`Path` if it names a non-empty regular file,
    else MediaError."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError as err:
        raise MediaError(p, "file not found (no such file or folder)") from err
    except OSError as err:
        raise MediaError(p, f"cannot be read ({err.strerror or err})") from err
    if p.is_dir():
        raise MediaError(p, "is a folder, not a file")
    if st.st_size == 0:
        raise MediaError(p, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise MediaError(p, "cannot be read (permission denied)")
    return p


# What a file's first bytes say it is: (description, modality or None when ambiguous).
# Hand-written because it is a dozen well-known signatures and only feeds error messages
# ("looks like a PNG image"); decoding itself is always left to soundfile / Pillow / FFmpeg.
_SIGNATURES: tuple[tuple[int, bytes, str, Modality | None], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image", "image"),
    (0, b"\xff\xd8\xff", "a JPEG image", "image"),
    (0, b"GIF87a", "a GIF image", "image"),
    (0, b"GIF89a", "a GIF image", "image"),
    (0, b"BM", "a BMP image", "image"),
    (0, b"II*\x00", "a TIFF image", "image"),
    (0, b"MM\x00*", "a TIFF image", "image"),
    (0, b"fLaC", "FLAC audio", "audio"),
    (0, b"ID3", "MP3 audio", "audio"),
    (0, b"FORM", "AIFF audio", "audio"),
    (0, b"caff", "CAF audio", "audio"),
    (0, b"OggS", "an Ogg file", None),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM file", None),  # audio-only .mka / .weba too
    (0, b"%PDF", "a PDF document", None),
    (0, b"PK\x03\x04", "a ZIP archive", None),
    (0, b"\x1f\x8b", "a gzip archive", None),
)
_RIFF_KINDS: dict[bytes, tuple[str, Modality]] = {
    b"WAVE": ("WAV audio", "audio"),
    b"WEBP": ("a WebP image", "image"),
    b"AVI ": ("an AVI video", "video"),
}
_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ")


def sniff(path: str | os.PathLike[str]) -> tuple[str, Modality | None] | None:
    """Guess what a file is from its first bytes: ``("a PNG image", "image")``, or None.

    Cheap (reads 16 bytes) and only used to explain errors such as a PNG named ``.wav``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] in _RIFF_KINDS:
        return _RIFF_KINDS[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return ("an AVIF/HEIF image", "image")
        if brand in _AUDIO_BRANDS:
            return ("MP4 (M4A) audio", "audio")
        return ("an MP4/QuickTime video", "video")
    if head[:2] == b"\xff\xfb" or head[:2] == b"\xff\xf3" or head[:2] == b"\xff\xf2":
        return ("MP3 audio", "audio")
    for offset, magic, what, modality in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return (what, modality)
    if head.lstrip()[:1] in (b"<", b"{") or _looks_like_text(head):
        return ("a text file", None)
    return None


def is_iso_bmff(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with an ISO-BMFF ``ftyp`` box (MP4, M4A, MOV, 3GP ...).

    Its brand says little: Android recorders write AAC ``.m4a`` files as ``isom`` / ``mp42``
    and YouTube as ``dash``, brands that :func:`sniff` calls video; only the streams inside
    tell audio from video.
    """
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == b"ftyp"
    except OSError:
        return False


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


# Containers that hold audio or video alike: a damaged one is damaged media, not a mix-up.
_CONTAINERS = ("an Ogg file", "a Matroska/WebM file")
_NOUNS: dict[Modality, str] = {"audio": "audio", "image": "an image", "video": "a video"}


def wrong_modality(path: Path, modality: Modality) -> MediaError | None:
    """A MediaError when the first bytes clearly belong to another modality, else None.

    A file whose extension agrees with its content (a real ``.png`` given to an audio
    tokenizer) is an intact file of the wrong modality: the message says so, and which kind of
    tokenizer takes it, rather than suspecting its extension."""
    from anytok.media import modality_of

    kind = sniff(path)
    if kind is None or kind[1] is None or kind[1] == modality:
        return None
    if modality_of(path) == kind[1]:
        article = "an" if kind[1][0] in "aeiou" else "a"
        return MediaError(
            path,
            f"is {kind[0]}, not {_NOUNS[modality]}: encode it with {article} {kind[1]} "
            f"tokenizer (`anytok list --modality {kind[1]}`)",
        )
    return MediaError(
        path,
        f"wrong extension or wrong file: the content looks like {kind[0]}, not {_NOUNS[modality]}",
    )


def unreadable(path: Path, modality: Modality, detail: str) -> MediaError:
    """The error for a file its decoder refused, saying what the file seems to be instead.

    ``detail`` is the decoder's own message, kept in parentheses for whoever debugs it.
    """
    mismatch = wrong_modality(path, modality)
    if mismatch is not None:
        return mismatch
    kind = sniff(path)
    if kind is not None and (kind[1] == modality or kind[0] in _CONTAINERS):
        problem = (
            f"looks like {kind[0]} but its data cannot be decoded; the file is probably "
            f"truncated or corrupt ({detail})"
        )
    elif kind is not None:
        problem = f"cannot be decoded as {_NOUNS[modality]}: the content looks like {kind[0]}"
    else:
        problem = f"not a readable {modality} file: unknown format or corrupt data ({detail})"
    return MediaError(path, problem)


#: What PyAV / FFmpeg raise for a file they cannot open or decode.
FFMPEG_ERRORS = (av.error.FFmpegError, OSError, ValueError)


def ffmpeg_detail(err: BaseException) -> str:
    """FFmpeg's own short reason for ``err`` ("Invalid data found when processing input")."""
    if isinstance(err, av.error.FFmpegError):
        return err.strerror or type(err).__name__
    return str(err) or type(err).__name__


def output_path(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` with ``~`` expanded, checked as a ``what`` file a writer may create.

    Raises:
        MediaError: ``path`` is a folder, or the folder it would go in does not exist.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise MediaError(p, f"is a folder; name the {what} file to write, with its extension")
    if not p.parent.is_dir():
        raise MediaError(p, f"cannot write {what}: the folder {p.parent} does not exist")
    return p


def float_media(media: Tensor | np.ndarray, p: Path, what: str, hint: str) -> Tensor:
    """``media`` (a tensor or a NumPy array) as a detached tensor, checked to be floating
    point: integer media has no single scale (uint8 [0, 255]? int16 PCM?), so it is refused
    with its dtype named and ``hint`` (how to scale it) instead of being clipped to [-1, 1]
    as if it were float.

    Raises:
        TypeError: ``media`` is not a tensor or array, or not floating point.
    """
    if isinstance(media, np.ndarray):
        media = torch.from_numpy(np.ascontiguousarray(media))
    if not isinstance(media, Tensor):
        raise TypeError(
            f"cannot write {p}: expected the {what} as a tensor or NumPy array, "
            f"got {type(media).__name__}"
        )
    if not media.is_floating_point():
        raise TypeError(
            f"cannot write {p}: expected a float {what} in [-1, 1], got {media.dtype}; "
            f"scale it first ({hint})"
        )
    return media.detach()
