"""Small real media bundled with the package, for demos, docs and tests (no downloads).

- ``astronaut.jpg``, ``coffee.jpg``: 256x256 photos from scikit-image's sample data
- ``speech.flac``: 4.8 s of English speech synthesised with espeak-ng, 24 kHz mono

``sample_video`` builds a short clip at run time from the two photos (a zoom, a cut, a pan).
See ``anytok/assets/README.md`` for where each file came from and its license.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

import torch
from torch.nn import functional as F

from anytok.media.audio import AudioClip, load_audio
from anytok.media.image import ImageData, Size, load_image
from anytok.media.video import VideoClip

__all__ = ["sample_image", "sample_paths", "sample_speech", "sample_video"]

ASSETS = {
    "astronaut": "astronaut.jpg",
    "coffee": "coffee.jpg",
    "speech": "speech.flac",
}
SPEECH_TEXT = "Tokenizers turn sound and pictures into numbers that a language model can read."

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def _asset(name: str) -> Path:
    """A real filesystem path to a bundled asset (extracted once if installed zipped)."""
    resource = resources.files("anytok").joinpath("assets", name)
    return _extracted.enter_context(resources.as_file(resource))


def sample_paths() -> dict[str, Path]:
    """Paths of the bundled assets by name: ``astronaut``, ``coffee``, ``speech``."""
    return {name: _asset(filename) for name, filename in ASSETS.items()}


def sample_image(name: str = "astronaut", size: Size | None = None) -> ImageData:
    """A bundled photo (``"astronaut"`` or ``"coffee"``) as ``(3, 256, 256)`` in [-1, 1],
    or resized and centre-cropped to ``size``."""
    if name not in ("astronaut", "coffee"):
        raise ValueError(f"unknown sample image {name!r}; choose 'astronaut' or 'coffee'")
    return load_image(_asset(ASSETS[name]), size=size)


def sample_speech(sample_rate: int | None = None, channels: int | None = None) -> AudioClip:
    """About 4.8 s of synthesised English speech, ``(1, samples)`` at 24 kHz (or resampled /
    converted as asked). The words are :data:`SPEECH_TEXT`."""
    return load_audio(_asset(ASSETS["speech"]), sample_rate=sample_rate, channels=channels)


def sample_video(frames: int = 17, size: Size = 128, fps: float = 8.0) -> VideoClip:
    """A clip built from the bundled photos: ``(3, frames, H, W)`` in [-1, 1].

    The first two thirds zoom in on the astronaut's face; then it cuts to the coffee cup and
    pans from left to right. Deterministic. ``size`` is ``(height, width)`` or an int for a
    square.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    height, width = (size, size) if isinstance(size, int) else size
    cut = frames * 2 // 3 if frames >= 3 else frames
    # Windows in the photo's normalised [-1, 1] coordinates: (centre x, centre y, half-extent).
    windows: list[tuple[float, float, float]] = []
    for i in range(cut):
        u = _smoothstep(i / max(cut - 1, 1))
        windows.append((-0.14 * u, -0.56 * u, 1.0 - 0.5 * u))
    for i in range(frames - cut):
        u = _smoothstep(i / max(frames - cut - 1, 1))
        windows.append((-0.3 + 0.6 * u, 0.0, 0.7))
    astronaut = sample_image("astronaut").image
    coffee = sample_image("coffee").image
    sources = torch.stack([astronaut] * cut + [coffee] * (frames - cut))  # (T, 3, 256, 256)
    aspect = width / height
    theta = torch.zeros(frames, 2, 3)
    for i, (cx, cy, half) in enumerate(windows):
        sx, sy = half * min(1.0, aspect), half * min(1.0, 1.0 / aspect)
        # Keep the window inside the photo.
        theta[i, 0] = torch.tensor([sx, 0.0, max(-1.0 + sx, min(1.0 - sx, cx))])
        theta[i, 1] = torch.tensor([0.0, sy, max(-1.0 + sy, min(1.0 - sy, cy))])
    grid = F.affine_grid(theta, [frames, 3, height, width], align_corners=False)
    video = F.grid_sample(
        sources, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    video = video.clamp_(-1.0, 1.0).transpose(0, 1).contiguous()  # (3, T, H, W)
    return VideoClip(
        video=video,
        fps=float(fps),
        path=None,
        original_fps=float(fps),
        original_frames=frames,
        original_size=(height, width),
    )


def _smoothstep(u: float) -> float:
    return u * u * (3.0 - 2.0 * u)
