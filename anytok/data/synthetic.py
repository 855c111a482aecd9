"""Offline training data for tests, CI smoke runs and demos: nothing is downloaded.

* audio: tones, chirps and filtered noise bursts with envelopes (WAV);
* images: random crops of the photos that scikit-image ships (PNG);
* video: pans and zooms across those photos, optionally with cuts to another photo (MP4);
* speech (:func:`make_speech_dataset`): sentences spoken by espeak-ng in many voices, with a
  JSONL manifest of their transcripts (for text-aware speech tokenizers).

``make_dataset("audio", "data/audio", 32)`` writes 32 files; the same arguments always write
the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from anytok.media import save_audio, save_image, save_video

# Photos in scikit-image's bundled sample data (no download needed for these).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera")


def _photos() -> list[torch.Tensor]:
    """The sample photos as ``(3, H, W)`` float in [-1, 1]."""
    from skimage import data  # a test dependency; imported here so anytok.data works without it

    photos = []
    for name in PHOTOS:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photos.append(torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return photos


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    batched = image.unsqueeze(0) if image.ndim == 3 else image
    out = F.interpolate(batched, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(0) if image.ndim == 3 else out


def synthetic_audio(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """One mono signal ``(samples,)`` in [-1, 1]: a few harmonic tones, a chirp and a noise
    burst under smooth envelopes (varied but learnable by a small codec)."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    signal = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        f0 = rng.uniform(110, 880)
        envelope = np.clip(np.sin(np.pi * (t / seconds) * rng.uniform(0.5, 3)) ** 2, 0, 1)
        for harmonic in range(1, rng.integers(2, 5)):
            signal += (
                envelope * np.sin(2 * np.pi * f0 * harmonic * t + rng.uniform(0, 6.28)) / harmonic
            )
    f_start, f_end = rng.uniform(200, 2000, size=2)
    phase = 2 * np.pi * (f_start * t + (f_end - f_start) * t**2 / (2 * seconds))
    signal += rng.uniform(0.2, 0.6) * np.sin(phase)
    burst = np.exp(-((t - rng.uniform(0, seconds)) ** 2) / (2 * rng.uniform(0.01, 0.05) ** 2))
    signal += burst * np.convolve(rng.normal(size=n), np.ones(8) / 8, mode="same")
    return (0.8 * signal / max(np.abs(signal).max(), 1e-6)).astype(np.float32)


def make_dataset(
    modality: str,
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    sample_rate: int = 24000,
    seconds: float = 1.0,
    size: int = 64,
    frames: int = 12,
    fps: float = 8.0,
    cuts: bool = False,
) -> list[Path]:
    """Write ``n`` generated files of ``modality`` into ``out_dir`` (created) and return them.

    Args:
        modality: ``"audio"``, ``"image"`` or ``"video"``.
        out_dir: destination folder (files go into two subfolders, to exercise recursion).
        n: number of files.
        seed: everything is a function of it.
        sample_rate, seconds: audio files (mono WAV).
        size: images are about ``size`` pixels on the short side (aspect varies); video
            frames are ``size x size``.
        frames, fps: video length and rate.
        cuts: video: about a third of the clips cut to a pan over another photo mid-clip.
    """
    if modality not in ("audio", "image", "video"):
        raise ValueError(f"modality must be audio, image or video, got {modality!r}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    photos = _photos() if modality != "audio" else []
    written = []
    for i in range(n):
        folder = out / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        if modality == "audio":
            path = folder / f"{i:04d}.wav"
            save_audio(
                path, torch.from_numpy(synthetic_audio(rng, seconds, sample_rate)), sample_rate
            )
        elif modality == "image":
            photo = photos[i % len(photos)]
            _, h, w = photo.shape
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = photo[:, top : top + side, left : left + side]
            width = int(size * rng.uniform(1.0, 1.4))
            path = folder / f"{i:04d}.png"
            save_image(path, _resize(crop, (size, width)).clamp(-1, 1))
        else:
            path = folder / f"{i:04d}.mp4"
            clip = _pan(photos[i % len(photos)], rng, frames, size)
            if cuts and frames > 2 and rng.uniform() < 1 / 3:
                at = int(rng.integers(1, frames))
                other = _pan(
                    photos[(i + 1 + int(rng.integers(len(photos) - 1))) % len(photos)],
                    rng,
                    frames,
                    size,
                )
                clip = torch.cat([clip[:, :at], other[:, at:]], dim=1)
            save_video(path, clip, fps)
        written.append(path)
    return written


def _pan(photo: torch.Tensor, rng: np.random.Generator, frames: int, size: int) -> torch.Tensor:
    """``(3, frames, size, size)``: a window moving (and zooming) across ``photo``."""
    _, h, w = photo.shape
    side0 = int(rng.integers(min(h, w) // 3, min(h, w) // 2))
    side1 = int(side0 * rng.uniform(0.7, 1.3))
    start = rng.uniform(0, [h - max(side0, side1), w - max(side0, side1)])
    end = rng.uniform(0, [h - max(side0, side1), w - max(side0, side1)])
    out = []
    for k in range(frames):
        a = k / max(frames - 1, 1)
        side = round(side0 + a * (side1 - side0))
        top, left = (start + a * (end - start)).round().astype(int)
        out.append(_resize(photo[:, top : top + side, left : left + side], (size, size)))
    return torch.stack(out, dim=1).clamp(-1, 1)


WORDS = [
    "the",
    "a",
    "small",
    "large",
    "quiet",
    "bright",
    "river",
    "city",
    "morning",
    "evening",
    "light",
    "music",
    "people",
    "house",
    "garden",
    "window",
    "street",
    "train",
    "station",
    "market",
    "story",
    "voice",
    "picture",
    "paper",
    "water",
    "mountain",
    "walks",
    "opens",
    "carries",
    "finds",
    "reads",
    "sings",
    "builds",
    "watches",
    "follows",
    "remembers",
    "slowly",
    "today",
    "again",
    "together",
    "under",
    "over",
    "near",
    "behind",
    "before",
    "after",
    "because",
    "while",
    "every",
    "many",
]
VOICES = ("en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc")
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4")


def make_speech_dataset(
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    sample_rate: int = 24000,
    words: tuple[int, int] = (6, 16),
) -> Path:
    """Write ``n`` spoken sentences (espeak-ng, random voices, variants and speeds) as mono WAV
    at ``sample_rate`` plus ``manifest.jsonl`` (``{"path", "text", "duration"}``) into
    ``out_dir``; returns the manifest. Nothing is downloaded; espeak-ng must be installed
    (Debian: ``apt-get install espeak-ng``).
    """
    import json
    import shutil
    import subprocess
    import tempfile

    from anytok.media import load_audio

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install espeak-ng")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            count = int(rng.integers(words[0], words[1] + 1))
            text = " ".join(rng.choice(WORDS, count)).capitalize() + "."
            voice = str(rng.choice(VOICES)) + str(rng.choice(VARIANTS))
            raw = Path(tmp) / "raw.wav"
            speed = str(int(rng.integers(130, 200)))
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", speed, "-w", str(raw), text],
                check=True,
                capture_output=True,
            )
            audio = load_audio(raw, sample_rate=sample_rate, channels=1).waveform
            path = out / f"{i:05d}.wav"
            save_audio(path, audio, sample_rate)
            lines.append(
                json.dumps(
                    {"path": path.name, "text": text, "duration": audio.shape[-1] / sample_rate}
                )
            )
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


__all__ = ["PHOTOS", "make_dataset", "make_speech_dataset", "synthetic_audio"]
