"""Training datasets: random audio segments, image crops and video clips, padded batches, and
a resumable distributed sampler.

Randomness (crop positions, flips, gains, replacement of bad files) comes only from a seed
that the sampler hands to each item, so a batch is a pure function of ``(seed, epoch, rank,
position)``: the same with any number of loader workers, and the same after a resume.

A file that fails to load never stops a run: :class:`MediaDataset` draws another item in its
place (from the same seed) and reports the bad file in the batch (``Batch.bad_files``), so
the training loop can count and log it.
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms.v2 import functional as TF

from anytok.data.sources import MediaItem
from anytok.media import (
    MediaError,
    audio_duration,
    audio_length,
    iter_video,
    load_audio,
    load_image,
    load_video,
    video_duration,
)
from anytok.media.image import from_uint8
from anytok.pipeline import collate as pad_collate


class DataError(RuntimeError):
    """Too many consecutive files failed to load: the data folder is probably wrong."""


@dataclass
class Augment:
    """Random augmentation of training items (validation items get none of it).

    Attributes:
        random_crop: random segment / crop / clip position (else the start or the centre).
        hflip: probability of a horizontal flip (images, video).
        gain_db: ``(low, high)``: a uniform random gain in dB (audio); ``(0, 0)`` for none.
        scale: ``(low, high)``: before cropping, the short side is resized to the crop side
            times a uniform factor in this range (images, video); ``(1, 1)`` crops at the
            scale that just covers the crop.
    """

    random_crop: bool = True
    hflip: float = 0.0
    gain_db: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 1.0 <= low <= high:
            raise ValueError(
                f"Augment.scale must be (low, high) with 1 <= low <= high, got {self.scale}: "
                "a factor below 1 would not cover the crop (the image would be squashed)"
            )


def item_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (BLAKE2b), stable across machines and processes."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, high: int) -> int:
    """Uniform integer in ``[0, high)`` (``high >= 1``)."""
    return int(torch.randint(high, (), generator=gen))


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        media: ``(b, c, samples)`` audio, ``(b, 3, H, W)`` images or ``(b, 3, T, H, W)``
            video; audio is zero-padded and video repeats its last frame past each length.
        lengths: ``(b,)`` valid samples (audio) or frames (video); the height for images.
        bad_files: ``"path: problem"`` for each file replaced while building this batch.
        texts: each item's manifest ``text`` (transcript or caption), ``None`` where absent.
    """

    media: Tensor
    lengths: Tensor
    bad_files: list[str] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(self.media.pin_memory(), self.lengths.pin_memory(), self.bad_files, self.texts)

    def __len__(self) -> int:
        return self.media.shape[0]


def collate(examples: Sequence[dict[str, Any]]) -> Batch:
    """Pad examples from :class:`MediaDataset` into a :class:`Batch` (the padding rule is
    :func:`anytok.pipeline.collate`, the one encoding uses)."""
    media, lengths = pad_collate([ex["media"] for ex in examples])
    bad = [entry for ex in examples for entry in ex["bad_files"]]
    texts = [ex.get("text") for ex in examples]
    return Batch(media=media, lengths=lengths, bad_files=bad, texts=texts)


class MediaDataset(Dataset, abc.ABC):
    """Base of the three datasets: item loading with replacement of bad files.

    ``dataset[i]`` and ``dataset[(i, seed)]`` return ``{"media": tensor, "bad_files": [...],
    "text": str | None}`` (the manifest's text of the file actually loaded);
    the seed drives every random choice (an int index alone uses a seed derived from it and
    no augmentation: the validation path).

    Args:
        items: the files.
        augment: random augmentation for seeded (training) access.
        max_attempts: files tried for one item before :class:`DataError`.
    """

    modality: str = ""

    def __init__(
        self, items: Sequence[MediaItem], augment: Augment | None = None, max_attempts: int = 16
    ):
        if not items:
            raise ValueError(f"{type(self).__name__}: no {self.modality} files to train on")
        self.items = list(items)
        self.augment = augment or Augment()
        self.max_attempts = max_attempts

    def __len__(self) -> int:
        return len(self.items)

    @abc.abstractmethod
    def load(self, item: MediaItem, gen: torch.Generator, augment: bool) -> Tensor:
        """One training example from ``item`` (random segment / crop drawn from ``gen``)."""

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = key
            augment = True
        else:
            index, seed, augment = key, item_seed(key), False
        gen = torch.Generator().manual_seed(seed)
        bad: list[str] = []
        for _ in range(self.max_attempts):
            item = self.items[index]
            try:
                media = self.load(item, gen, augment)
                return {"media": media, "bad_files": bad, "text": item.text}
            except (MediaError, OSError, RuntimeError, ValueError) as err:
                # MediaError covers what the loaders recognise; the others guard against a
                # decoder failing in a way they did not foresee. Either way: another item.
                problem = (
                    err.problem if isinstance(err, MediaError) else f"{type(err).__name__}: {err}"
                )
                bad.append(f"{item.path}: {problem}")
                index = _randint(gen, len(self.items))
        raise DataError(
            f"{self.max_attempts} files in a row failed to load; the last ones:\n  "
            + "\n  ".join(list(dict.fromkeys(reversed(bad)))[:3][::-1])
            + "\nIs the data path right, and are these files of the right modality?"
        )


class AudioSegments(MediaDataset):
    """Random segments of ``segment`` samples at ``sample_rate`` with ``channels`` channels.

    Files shorter than a segment are returned whole (the batch pads them and records their
    length). Items are ``(channels, samples)``.
    """

    modality = "audio"

    def __init__(
        self,
        items: Sequence[MediaItem],
        sample_rate: int,
        channels: int,
        segment: int,
        augment: Augment | None = None,
        max_attempts: int = 16,
    ):
        if segment < 1:
            raise ValueError(
                f"data.segment_seconds gives segments of {segment} samples at {sample_rate} Hz; "
                f"a segment needs at least one sample (data.segment_seconds >= "
                f"{1 / sample_rate:.3g} s at this rate, and a useful one is far longer)"
            )
        super().__init__(items, augment, max_attempts)
        self.sample_rate, self.channels, self.segment = sample_rate, channels, segment

    def load(self, item: MediaItem, gen: torch.Generator, augment: bool) -> Tensor:
        rate, segment = self.sample_rate, self.segment
        # The header's length picks the crop and only the crop is decoded (an hour-long
        # FLAC costs a segment, not the file): the same samples as cropping the whole
        # decode (see load_audio). FFmpeg formats and header-less MP3s state no exact
        # length: their header's estimate picks the crop (FFmpeg seeks to it, exact=False:
        # within a timestamp tick of the whole decode's; libsndfile seeks exactly), and an
        # estimate that overstates the length (a crop past the end comes back short) falls
        # back to decoding the whole file.
        length = audio_length(item.path, rate)
        exact = length is not None
        if not exact:
            seconds = audio_duration(item.path)
            length = None if seconds is None else math.floor(seconds * rate)
        wave = None
        if length is not None and length > 0:
            start = self._start(length, gen, augment)
            try:
                wave = load_audio(
                    item.path,
                    sample_rate=rate,
                    channels=self.channels,
                    offset=start / rate,
                    duration=segment / rate,
                    exact=False,
                ).waveform
            except MediaError:
                if exact:
                    raise
            if not exact and wave is not None and wave.shape[-1] < min(segment, length - start):
                wave = None
        if wave is None:
            whole = load_audio(item.path, sample_rate=rate, channels=self.channels).waveform
            start = self._start(whole.shape[-1], gen, augment)
            wave = whole[:, start : start + segment]
        low, high = self.augment.gain_db
        if augment and (low or high):
            wave = (wave * 10 ** (_uniform(gen, low, high) / 20)).clamp(-1, 1)
        return wave.contiguous()

    def _start(self, length: int, gen: torch.Generator, augment: bool) -> int:
        """First sample of the crop in ``length`` samples (random when augmenting)."""
        extra = length - self.segment
        return _randint(gen, extra + 1) if extra > 0 and augment and self.augment.random_crop else 0


#: Above this many times the crop's pixels, the resized image is not built: the crop's box
#: is cut from the source and only the box is resized (as in
#: :func:`anytok.media.image.resize_cover`), so a 4 x 3000 strip costs a 256 x 256 resize
#: instead of a 256 x 192,000 one.
_MAX_COVER_EXCESS = 16


@dataclass(frozen=True)
class _CropPlan:
    """One random resized crop of ``(..., H, W)`` media, drawn before the pixels exist (so a
    video's frames can be cut one by one as they decode): resize to ``new`` and take the
    ``size`` box at ``(top, left)`` there, then flip when ``flip``."""

    source: tuple[int, int]
    size: tuple[int, int]
    new: tuple[int, int]
    top: int
    left: int
    flip: bool

    @classmethod
    def draw(
        cls,
        source: tuple[int, int],
        size: tuple[int, int],
        gen: torch.Generator,
        augment: Augment | None,
    ) -> _CropPlan:
        """Cover ``size`` (times a random scale), at a random (training) or central
        (validation, ``augment=None``) position, maybe flipped: the draws, in this order,
        scale, top, left, flip."""
        h, w = source
        zoom = _uniform(gen, *augment.scale) if augment else 1.0
        scale = max(size[0] / h, size[1] / w) * zoom
        new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
        if augment and augment.random_crop:
            top = _randint(gen, new[0] - size[0] + 1)
            left = _randint(gen, new[1] - size[1] + 1)
        else:  # torchvision's center_crop offsets
            top = round((new[0] - size[0]) / 2.0)
            left = round((new[1] - size[1]) / 2.0)
        flip = bool(
            augment and augment.hflip and float(torch.rand((), generator=gen)) < augment.hflip
        )
        return cls(source, size, new, top, left, flip)

    def __call__(self, media: Tensor) -> Tensor:
        """``(..., H, W)`` at :attr:`source` -> ``(..., size)``.

        When the covering resize would exceed :data:`_MAX_COVER_EXCESS` times the crop (an
        extreme aspect ratio), the same box is cut in source coordinates first and only it
        is resized.
        """
        if tuple(media.shape[-2:]) != self.source:
            raise ValueError(
                f"crop planned for {self.source[0]}x{self.source[1]} media, got "
                f"{media.shape[-2]}x{media.shape[-1]} (frames of another size in one video?)"
            )
        (h, w), size, new = self.source, self.size, self.new
        top, left = self.top, self.left
        if new[0] * new[1] <= _MAX_COVER_EXCESS * size[0] * size[1]:
            if new != (h, w):
                media = TF.resize(media, list(new), antialias=True)
            media = media[..., top : top + size[0], left : left + size[1]]
        else:
            # The box in source pixels (at least one, inside the image).
            box_h = min(h, max(1, round(size[0] * h / new[0])))
            box_w = min(w, max(1, round(size[1] * w / new[1])))
            y = min(h - box_h, round(top * h / new[0]))
            x = min(w - box_w, round(left * w / new[1]))
            media = TF.resized_crop(media, y, x, box_h, box_w, list(size), antialias=True)
        if self.flip:
            media = media.flip(-1)
        return media.contiguous()


def _random_resized_crop(
    media: Tensor, size: tuple[int, int], gen: torch.Generator, augment: Augment | None
) -> Tensor:
    """``(..., H, W)`` -> ``(..., size)``: :class:`_CropPlan` drawn for ``media``, applied."""
    source = (int(media.shape[-2]), int(media.shape[-1]))
    return _CropPlan.draw(source, size, gen, augment)(media)


class _CropEachFrame:
    """A video frame transform for :func:`~anytok.media.load_video`: the first frame's size
    draws one :class:`_CropPlan`, which every frame then gets (as float in [-1, 1])."""

    def __init__(
        self, size: tuple[int, int], gen: torch.Generator, augment: Augment | None
    ) -> None:
        self.size, self.gen, self.augment = size, gen, augment
        self.plan: _CropPlan | None = None

    def __call__(self, frame: Tensor) -> Tensor:
        """uint8 ``(3, H, W)`` -> float ``(3, size)``."""
        if self.plan is None:
            source = (int(frame.shape[-2]), int(frame.shape[-1]))
            self.plan = _CropPlan.draw(source, self.size, self.gen, self.augment)
        return self.plan(from_uint8(frame))


class ImageCrops(MediaDataset):
    """Random crops of ``size = (height, width)``; items are ``(3, height, width)``."""

    modality = "image"

    def __init__(
        self,
        items: Sequence[MediaItem],
        size: Sequence[int],
        augment: Augment | None = None,
        max_attempts: int = 16,
    ):
        super().__init__(items, augment, max_attempts)
        self.size = (int(size[0]), int(size[1]))

    def load(self, item: MediaItem, gen: torch.Generator, augment: bool) -> Tensor:
        image = load_image(item.path).image
        return _random_resized_crop(image, self.size, gen, self.augment if augment else None)


class VideoClips(MediaDataset):
    """Random clips of ``frames`` frames at ``fps``, cropped to ``size``; items are
    ``(3, frames, height, width)`` (fewer frames when a file is shorter).

    The decoder seeks to a random start, so long videos cost only their clip: by the
    manifest's ``duration``, else by the duration the file's header states. When neither
    is known (or the header's overstates the video and the start lands past its end) the
    duration is measured from the video packets (read, not decoded) and the clip sought by
    it; a file without timestamps is decoded once to count its frames (each dropped as it
    decodes), and the clip then cut as with a duration.
    """

    modality = "video"

    def __init__(
        self,
        items: Sequence[MediaItem],
        fps: float,
        frames: int,
        size: Sequence[int],
        augment: Augment | None = None,
        max_attempts: int = 16,
    ):
        super().__init__(items, augment, max_attempts)
        self.fps, self.frames = float(fps), int(frames)
        self.size = (int(size[0]), int(size[1]))

    def load(self, item: MediaItem, gen: torch.Generator, augment: bool) -> Tensor:
        crop_augment = self.augment if augment else None
        if not (augment and self.augment.random_crop):  # the first frames
            return self._cut_while_decoding(item.path, gen, crop_augment, 0.0)
        if item.duration is not None:  # the manifest's word
            return self._clip_at_random_start(item.path, gen, crop_augment, item.duration, True)
        header = video_duration(item.path)
        if header is not None:
            clip = self._clip_at_random_start(item.path, gen, crop_augment, header, False)
            if clip is not None:
                return clip
        # The header says nothing (a WebM recorded to a stream), or it overstated the video
        # (an audio track longer than it): the video packets say how long it is, read
        # without decoding, so the clip still costs only itself.
        measured = video_duration(item.path, from_packets=True)
        if measured is not None:
            clip = self._clip_at_random_start(item.path, gen, crop_augment, measured, False)
            if clip is not None:
                return clip
        return self._clip_of_whole_decode(item.path, gen, crop_augment)

    def _clip_at_random_start(
        self,
        path: Path,
        gen: torch.Generator,
        augment: Augment | None,
        duration: float,
        trusted: bool,
    ) -> Tensor | None:
        """A clip from a random start drawn for ``duration`` seconds; None when an untrusted
        duration put the start past the video's end or too near it for a whole clip."""
        # The frames a decode at self.fps yields (the tolerance keeps 2.3 s x 10 fps at 23,
        # not 24); starts are whole frames, so a clip is the same whatever the seek
        # precision, and drawn from the same positions as a decode from the start.
        available = math.ceil(duration * self.fps - 1e-6)
        start = 0.0
        if available > self.frames:
            start = _randint(gen, available - self.frames + 1) / self.fps
        trusted = trusted or start == 0
        try:
            clip = self._cut_while_decoding(path, gen, augment, start)
        except MediaError:
            if trusted:
                raise
            return None
        return clip if trusted or clip.shape[1] >= self.frames else None

    def _clip_of_whole_decode(
        self, path: Path, gen: torch.Generator, augment: Augment | None
    ) -> Tensor:
        """A clip drawn from the frames a decode from the start yields, for a file whose
        duration nothing tells: one pass counts them (each frame dropped as it decodes),
        then the clip is cut from its start as with a duration, so memory holds one
        full-size frame and the draws are those of a seek."""
        count = sum(
            chunk.shape[1]
            for chunk in iter_video(path, 256, fps=self.fps, transform=lambda f: f[:, :1, :1])
        )
        start = 0.0
        if count > self.frames:
            start = _randint(gen, count - self.frames + 1) / self.fps
        return self._cut_while_decoding(path, gen, augment, start)

    def _cut_while_decoding(
        self, path: Path, gen: torch.Generator, augment: Augment | None, start: float
    ) -> Tensor:
        """``self.frames`` frames from ``start``, each cut as it decodes (one full-size frame
        in memory, not the clip: 17 frames of 4K video are 1.7 GB as float): the same crop
        and values as cutting the decoded clip."""
        cut = _CropEachFrame(self.size, gen, augment)
        clip = load_video(path, fps=self.fps, start=start, max_frames=self.frames, transform=cut)
        return clip.video.contiguous()


class ResumableSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that yields ``(index, seed)`` and can
    start in the middle of an epoch.

    The split over ranks and the shuffle per epoch are DistributedSampler's own (rank ``r``
    takes every ``world``-th index of the epoch's permutation), so together the ranks cover
    every item each epoch and see the same number of batches; when ``world`` does not divide
    the dataset, the permutation is padded by repeating its first items, so up to
    ``world - 1`` items are seen twice in that epoch (on different ranks). ``seed`` in each pair comes from
    ``(seed, epoch, rank, position)``: augmentation does not depend on loader workers.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin epoch ``epoch`` at this rank's ``start``-th index (a start past this rank's
        share, e.g. saved with fewer ranks, is an epoch with nothing left)."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        for position in range(self.start, len(indices)):
            yield indices[position], item_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


__all__ = [
    "AudioSegments",
    "Augment",
    "Batch",
    "DataError",
    "ImageCrops",
    "MediaDataset",
    "ResumableSampler",
    "VideoClips",
    "collate",
    "item_seed",
]
