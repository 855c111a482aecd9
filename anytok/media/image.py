"""Image files in and out with Pillow.

One image is a ``(3, height, width)`` float32 tensor in [-1, 1]; callers add the batch axis.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from anytok.media.errors import (
    DEFAULT_LIMITS,
    MediaError,
    MediaLimits,
    atomic_output,
    check_file,
    float_media,
    output_path,
    unreadable,
    wrong_modality,
)

__all__ = [
    "ImageData",
    "check_image_extension",
    "from_uint8",
    "load_image",
    "resize_cover",
    "save_image",
    "to_uint8",
]

Size = int | tuple[int, int]


@dataclass
class ImageData:
    """A decoded image.

    Attributes:
        image: ``(3, H, W)`` float32 in [-1, 1] (resized if ``size`` was asked for).
        original_size: ``(height, width)`` of the file, after EXIF rotation.
        path: the file it came from (None when built in memory).
    """

    image: Tensor
    original_size: tuple[int, int]
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of :attr:`image`."""
        return (self.image.shape[-2], self.image.shape[-1])


def from_uint8(x: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` to float32 ``[-1, 1]`` (any shape)."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """float ``[-1, 1]`` to uint8 ``[0, 255]`` (any shape; clipped, rounded)."""
    return ((x.detach().to(torch.float32) + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def _as_hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def resize_cover(x: Tensor, size: Size) -> Tensor:
    """Resize ``(..., H, W)`` so it covers ``size`` with its aspect ratio kept, then crop the
    centre: returns ``(..., size_h, size_w)``. ``size`` is ``(height, width)`` or one int for
    a square. Bilinear with antialiasing (torchvision); uint8 stays uint8.

    An image of extreme aspect ratio (more than :data:`_MAX_COVER_EXCESS` times the output's
    pixels once resized, e.g. a 3x6000 strip) is cropped first, in source coordinates, and
    only the crop is resized: the same region, without a 256 x 512,000 intermediate.
    """
    h, w = _as_hw(size)
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (h, w):
        return x
    scale = max(h / in_h, w / in_w)
    new = [max(h, round(in_h * scale)), max(w, round(in_w * scale))]
    if new[0] * new[1] <= _MAX_COVER_EXCESS * h * w:
        resized = TF.resize(x, new, antialias=True)
        return TF.center_crop(resized, [h, w])
    # The centred box that covers (h, w) once scaled, in source pixels (at least one).
    box_h = min(in_h, max(1, round(h / scale)))
    box_w = min(in_w, max(1, round(w / scale)))
    top, left = (in_h - box_h) // 2, (in_w - box_w) // 2
    return TF.resized_crop(x, top, left, box_h, box_w, [h, w], antialias=True)


#: Above this many times the output's pixels, :func:`resize_cover` crops before resizing.
_MAX_COVER_EXCESS = 16


def load_image(
    path: str | os.PathLike[str],
    size: Size | None = None,
    limits: MediaLimits | None = None,
) -> ImageData:
    """Read an image as ``(3, H, W)`` float32 in [-1, 1].

    Grayscale, palette, CMYK and 16-bit images become RGB (16-bit values scaled from
    [0, 65535], whatever the brightest pixel); transparent ones are composited on white; EXIF rotation is applied; multi-frame files (GIF, TIFF) give their first frame.
    The size in the header is checked against ``limits`` before any pixel is decoded.

    Args:
        path: anything Pillow decodes.
        size: ``(height, width)`` or an int for a square: resize to cover it and crop the
            centre (aspect kept). None keeps the file's size.
        limits: sanity limits; :data:`DEFAULT_LIMITS` when None.

    Raises:
        MediaError: the file is missing, empty, truncated, corrupt, not an image, or its size
            is outside ``limits`` (Pillow's own ``Image.MAX_IMAGE_PIXELS`` bomb check also
            applies).
    """
    limits = limits or DEFAULT_LIMITS
    p = check_file(path)
    mismatch = wrong_modality(p, "image")
    if mismatch is not None:
        raise mismatch
    try:
        with warnings.catch_warnings():
            # We apply our own, configurable limit below, before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as err:
        raise MediaError(
            p, f"image is too large to decode safely ({str(err).rstrip('.')})"
        ) from err
    except (OSError, ValueError, SyntaxError) as err:
        detail = str(err).replace(f" '{p}'", "") or type(err).__name__  # we name the file
        raise unreadable(p, "image", detail) from err
    with im:
        width, height = im.size
        _check_size(p, width, height, limits)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise _decode_error(p, err) from err
    array = np.asarray(rgb)
    tensor = from_uint8(torch.from_numpy(array.copy()).permute(2, 0, 1))
    original = (tensor.shape[-2], tensor.shape[-1])
    if size is not None:
        tensor = resize_cover(tensor, size).clamp_(-1.0, 1.0)
    return ImageData(image=tensor.contiguous(), original_size=original, path=p)


def save_image(path: str | os.PathLike[str], image: Tensor | np.ndarray, quality: int = 95) -> Path:
    """Write ``(3, H, W)`` (or ``(1, H, W)``) float in [-1, 1] as an image file.

    The format follows the extension (``.png``, ``.jpg``, ``.webp`` ...); values are clipped
    to [-1, 1]; ``quality`` applies to lossy formats. ``~`` is expanded; the file is written
    under a temporary name and renamed, so a failed write leaves any previous file at
    ``path`` as it was.

    Raises:
        TypeError: the image is not a float tensor or array.
        ValueError: the tensor has the wrong shape or holds NaN/Inf.
        MediaError: the extension is unknown, the folder does not exist, or the file cannot
            be written.
    """
    p = output_path(path, "image")
    image = float_media(image, p, "image", "uint8 pixels: from_uint8(x)")
    if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
        raise ValueError(f"save_image expects (3, H, W), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"refusing to write {p}: the image contains NaN or Inf")
    check_image_extension(p)
    array = to_uint8(image.cpu()).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    try:
        with atomic_output(p) as tmp:
            pil.save(tmp, quality=quality)
    except (OSError, ValueError, KeyError) as err:
        detail = (err.strerror if isinstance(err, OSError) else None) or str(err)
        raise MediaError(p, f"cannot write image ({detail})") from err
    return p


def check_image_extension(path: Path) -> None:
    """Refuse, with a MediaError, an extension :func:`save_image` cannot write."""
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if path.suffix.lower() not in writable:
        raise MediaError(
            path,
            f"cannot write an image with the extension {path.suffix or '(none)'!r}: Pillow has "
            "no writer for it (it writes .png, .jpg, .webp, .bmp, .tiff, .gif ...)",
        )


def _check_size(p: Path, width: int, height: int, limits: MediaLimits) -> None:
    if min(width, height) < limits.min_image_side:
        raise MediaError(
            p,
            f"image is {width}x{height} pixels, too small (the minimum side is "
            f"{limits.min_image_side})",
        )
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise MediaError(
            p,
            f"image is {width}x{height} pixels ({pixels / 1e6:.1f} megapixels), too large: "
            f"the limit is {limits.max_image_pixels / 1e6:g} megapixels "
            "(raise MediaLimits.max_image_pixels)",
        )


def _decode_error(p: Path, err: BaseException) -> MediaError:
    text = str(err) or type(err).__name__
    if "truncated" in text.lower():
        return MediaError(p, f"file is truncated: the image data ends early ({text})")
    return MediaError(p, f"image data is corrupt and cannot be decoded ({text})")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB."""
    if im.mode == "RGB" and "transparency" not in im.info:  # tRNS: a transparent colour
        return im
    if im.mode.startswith("I") or im.mode == "F":
        # Pillow's own I;16 -> RGB conversion clips at 255 instead of scaling. The range
        # follows the mode, not the content: a dark 16-bit image (every value <= 255) is
        # still 16-bit. "I" holds 16-bit PNG / PGM data (Pillow < 11 opens 16-bit PNGs so),
        # or 32-bit integers when a value exceeds 65535. Only float ("F") data is guessed:
        # [0, 1] when it stays there, else [0, 255] or [0, 65535].
        values = np.asarray(im, dtype=np.float64)
        peak = float(values.max(initial=0.0))
        if im.mode == "F":
            scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        elif im.mode == "I" and peak > 65535:
            scale = 2.0**31 - 1
        else:
            scale = 65535.0
        gray = np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
