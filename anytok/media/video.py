"""Video files in and out with PyAV (FFmpeg).

One clip is a ``(3, frames, height, width)`` float32 tensor in [-1, 1]; callers add the batch
axis. Only the first video stream is read; audio streams are ignored.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor

from anytok.media.errors import (
    DEFAULT_LIMITS,
    FFMPEG_ERRORS,
    MediaError,
    MediaLimits,
    atomic_output,
    check_file,
    ffmpeg_detail,
    float_media,
    output_path,
    sniff,
    unreadable,
    wrong_modality,
)
from anytok.media.image import Size, from_uint8, resize_cover, to_uint8

__all__ = [
    "MAX_WRITE_FPS",
    "WRITABLE_VIDEO_EXTENSIONS",
    "VideoClip",
    "check_video_extension",
    "iter_video",
    "load_video",
    "save_video",
    "video_duration",
]

_TIE = 1e-6  # seconds: timestamps closer than this are equal when picking frames
_ANIMATED_IMAGES = ("a GIF image", "a WebP image")  # FFmpeg decodes these as video


@dataclass
class VideoClip:
    """A decoded video.

    Attributes:
        video: ``(3, T, H, W)`` float32 in [-1, 1], ``fps`` frames per second.
        fps: frame rate of ``video`` (the requested one, or the file's).
        path: the file it came from (None when built in memory).
        original_fps: the file's own frame rate.
        original_frames: frames in the file's video stream as its header states (0 when the
            container does not say, e.g. Matroska).
        original_size: ``(height, width)`` of the file's frames as displayed: turned as its
            display matrix asks (a portrait phone video gives ``(1920, 1080)``), and with
            non-square pixels made square (a sample aspect ratio other than 1:1, as on
            anamorphic DVD / HDV: a 720x576 frame with SAR 16:11 is 1047 wide).
    """

    video: Tensor
    fps: float
    path: Path | None = None
    original_fps: float = 0.0
    original_frames: int = 0
    original_size: tuple[int, int] = (0, 0)

    @property
    def num_frames(self) -> int:
        """T, the frames in :attr:`video`."""
        return self.video.shape[1]

    @property
    def duration(self) -> float:
        """Seconds covered by :attr:`video` (``num_frames / fps``)."""
        return self.num_frames / self.fps


def load_video(
    path: str | os.PathLike[str],
    fps: float | None = None,
    max_frames: int | None = None,
    start: float = 0.0,
    size: Size | None = None,
    limits: MediaLimits | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> VideoClip:
    """Read a video as ``(3, T, H, W)`` float32 in [-1, 1].

    Args:
        path: anything PyAV/FFmpeg decodes (MP4, MKV, WebM, MOV, AVI, GIF ...).
        fps: resample to this frame rate: output frame ``k`` is the source frame whose
            timestamp is nearest to ``start + k / fps``. None keeps every frame.
        max_frames: stop after this many output frames (decoding stops there too).
        start: first timestamp in seconds (seeks to the keyframe before it).
        size: ``(height, width)`` or an int for a square: each frame is resized to cover it
            and centre-cropped. None keeps the file's size. Frames are first turned upright
            (and mirrored) as the file's display matrix says (portrait phone videos, front
            cameras), as FFmpeg's ``autorotate`` does, and non-square pixels are made
            square (width times the sample aspect ratio, FFmpeg's ``scale=iw*sar:ih``), so
            frames and cover-and-crop see the picture a player shows.
        limits: sanity limits; :data:`DEFAULT_LIMITS` when None.
        transform: called on each kept frame as it decodes, upright uint8 ``(3, H, W)``
            (after ``size``), in order, once per source frame; it returns a ``(3, h, w)``
            frame, uint8 or float in [-1, 1] (all the same): a training crop cut frame by
            frame holds one full-size frame at a time, not the whole clip.

    A video of more than ``limits.max_video_frames`` output frames (10,000 by default: 6:40
    at 25 fps) is refused; raise the limit with ``limits=MediaLimits(max_video_frames=...)``
    or read it in parts with ``start`` / ``max_frames``.

    Raises:
        MediaError: the file is missing, empty, truncated, corrupt, not a video, has no
            frames (at or after ``start``), or exceeds ``limits``.
    """
    limits = limits or DEFAULT_LIMITS
    _check_video_args(fps, max_frames, start)
    meta = _VideoMeta()
    chunks = list(
        _decode_frames(
            check_file(path), fps, max_frames, start, size, limits, transform, None, meta
        )
    )
    video = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]  # (3, T, H, W)
    return VideoClip(
        video=video,
        fps=float(fps) if fps is not None else (meta.src_fps or 25.0),
        path=meta.path,
        original_fps=meta.src_fps,
        original_frames=meta.header_frames,
        original_size=meta.size,
    )


def iter_video(
    path: str | os.PathLike[str],
    chunk_frames: int,
    fps: float | None = None,
    size: Size | None = None,
    limits: MediaLimits | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[Tensor]:
    """Read a whole video in one decoding pass as consecutive ``(3, t, H, W)`` float32
    chunks of ``chunk_frames`` output frames (the last may be shorter): memory holds one
    chunk, whatever the video's length.

    The chunks joined are :func:`load_video`'s clip with the same ``fps`` / ``size`` /
    ``transform``, frame for frame, except that ``limits.max_video_frames`` bounds
    ``chunk_frames``, not the video. Errors come when decoding reaches them: a file found
    truncated at its end raises after its last chunk, so a caller that keeps chunks must
    drop them when the iteration raises.

    Raises:
        MediaError: as :func:`load_video`.
        ValueError: ``chunk_frames`` < 1 or over ``limits.max_video_frames``, or ``fps``
            is not positive.
    """
    limits = limits or DEFAULT_LIMITS
    _check_video_args(fps, None, 0.0)
    if not 1 <= chunk_frames <= limits.max_video_frames:
        raise ValueError(
            f"chunk_frames must be from 1 to MediaLimits.max_video_frames = "
            f"{limits.max_video_frames}, got {chunk_frames}"
        )
    p = check_file(path)  # now, not at the first next()
    return _decode_frames(p, fps, None, 0.0, size, limits, transform, chunk_frames, _VideoMeta())


def _check_video_args(fps: float | None, max_frames: int | None, start: float) -> None:
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")


@dataclass
class _VideoMeta:
    """What :func:`_decode_frames` learns of the file, for :class:`VideoClip`."""

    path: Path | None = None
    src_fps: float = 0.0
    header_frames: int = 0
    size: tuple[int, int] = (0, 0)  # (height, width) as displayed


def _decode_frames(
    p: Path,
    fps: float | None,
    max_frames: int | None,
    start: float,
    size: Size | None,
    limits: MediaLimits,
    transform: Callable[[Tensor], Tensor] | None,
    chunk: int | None,
    meta: _VideoMeta,
) -> Iterator[Tensor]:
    """The selected frames of ``p`` as float32 ``(3, t, H, W)`` chunks of ``chunk`` frames
    (None: one chunk, bounded by ``limits.max_video_frames``); fills ``meta``."""
    meta.path = p
    kind = sniff(p)
    if kind is None or kind[0] not in _ANIMATED_IMAGES:
        mismatch = wrong_modality(p, "video")
        if mismatch is not None:
            raise mismatch
    try:
        container = av.open(str(p))
    except FFMPEG_ERRORS as err:
        raise unreadable(p, "video", ffmpeg_detail(err)) from err
    with container:
        if not container.streams.video:
            raise MediaError(p, "has no video stream (audio only or not a video)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            _check_frame_size(p, width, height, limits)
        # AVI stores no presentation times: the ones FFmpeg derives follow decode order (with
        # B-frames they jump back and forth) or start a frame late, so frames are counted
        # instead, from the first frame's time, at the rate the timestamps step by (the
        # header's average can count B-frame index entries twice).
        counted = "avi" in container.format.name.split(",")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if counted:
            rate = stream.guessed_rate or rate
        src_fps = float(rate) if rate else 0.0
        header_frames = int(stream.frames or 0)
        meta.src_fps, meta.header_frames = src_fps, header_frames
        origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        dt = 1.0 / (src_fps or 25.0)
        seek_origin = origin  # seeking goes by the demuxer's timestamps
        first_time = _first_frame_time(container, stream) if counted else origin
        # AVI: one timestamp tick per frame slot, so the slots of the packets read (a
        # dropped frame leaves a gap) place the frames counted; else plain counting. Only
        # then are packets' slots recorded.
        by_slot = bool(
            counted and stream.time_base and abs(float(stream.time_base) * src_fps - 1) < 1e-3
        )
        slots: list[int] = []
        recorded = slots if by_slot else None
        frames: Iterator[av.VideoFrame] = iter(())  # nothing decodes: read no further
        if first_time is not None:
            origin = first_time
            frames = _frames_from(p, container, stream, start, seek_origin, origin, dt, recorded)
        # Streaming holds one chunk: the frame limit bounds the chunk, not the video.
        limit = limits.max_video_frames if chunk is None else math.inf
        selector = _FrameSelector(p, start, fps, src_fps, max_frames, size, limit, transform)
        decoded = 0
        reached_end = False
        first_t: float | None = None
        last_t = -float("inf")
        try:
            for frame in frames:
                if decoded == 0:
                    _check_frame_size(p, frame.width, frame.height, limits)
                    # square pixels, as a player shows the frame (FFmpeg's scale=iw*sar:ih)
                    width, height = _display_width(frame.width, stream), frame.height
                    if width != frame.width:
                        _check_frame_size(p, width, height, limits)
                    selector.orient = _orientation(frame, stream)
                if frame.time is None:
                    t = last_t + dt if decoded else 0.0
                elif counted:
                    if first_t is None:
                        first_t = float(frame.time) - origin
                    t = first_t + (_slot(slots, decoded) if by_slot else decoded) * dt
                else:
                    t = float(frame.time) - origin
                    if t <= last_t:  # timestamps out of presentation order: count frames
                        t = last_t + dt
                last_t = t
                decoded += 1
                more = selector.push(t, frame, width, height)
                while chunk is not None and len(selector.frames) >= chunk:
                    yield _stack(selector.frames[:chunk])
                    del selector.frames[:chunk]
                if not more:
                    break
            else:
                reached_end = True
                selector.finish()
        except FFMPEG_ERRORS as err:
            if decoded == 0:
                raise unreadable(p, "video", ffmpeg_detail(err)) from err
            raise MediaError(
                p,
                f"video data stops decoding after {decoded} frames ({ffmpeg_detail(err)}); "
                "the file is probably truncated or corrupt",
            ) from err
        # A stream-copy cut keeps the samples before its first keyframe and an edit list
        # hides them: the header counts them, the stream's duration does not. When the two
        # disagree the count is no promise of what decodes.
        # (Not AVI: FFmpeg rebuilds a cut AVI's duration from the index entries present.)
        expected = header_frames
        if header_frames and stream.duration and stream.time_base and src_fps and not counted:
            by_duration = float(stream.duration * stream.time_base) * src_fps
            if abs(by_duration - header_frames) > max(2, header_frames // 100):
                expected = 0
    if decoded == 0:
        if start > 0:
            raise MediaError(p, f"has no video frames at or after start={start:g} s")
        raise MediaError(p, "contains no video frames (zero frames)")
    present = decoded  # frames, or frame slots where an AVI dropped some
    if by_slot and slots:
        present = max(decoded, slots[-1] - slots[0] + 1)
    missing = expected - present
    if reached_end and start == 0 and missing > max(2, expected // 100):
        raise MediaError(
            p,
            f"file is truncated: the header announces {header_frames} frames but only "
            f"{decoded} could be decoded",
        )
    if not selector.count:
        raise MediaError(p, f"has no video frames at or after start={start:g} s")
    if _swaps_axes(selector.orient):
        width, height = height, width  # the size as displayed
    meta.size = (height, width)
    while selector.frames:
        step = len(selector.frames) if chunk is None else chunk
        yield _stack(selector.frames[:step])
        del selector.frames[:step]


def _stack(frames: list[Tensor]) -> Tensor:
    """Frames ``(3, H, W)`` (uint8, or float from a transform) as float32 ``(3, t, H, W)``."""
    video = torch.stack(frames, dim=1)
    return from_uint8(video) if video.dtype == torch.uint8 else video


def video_duration(path: str | os.PathLike[str], *, from_packets: bool = False) -> float | None:
    """Seconds of the file's first video stream as its header states them (the stream's
    duration, else its frame count over its rate, else the track's ``DURATION`` tag that
    Matroska / WebM muxers write, else the container's duration); None
    when the header does not say or the file cannot be opened (:func:`load_video` then
    names the problem). A header can be wrong (an edit list, an audio track longer than
    the video): callers that seek by it must cope with a start past the last frame.

    ``from_packets=True`` measures instead: the video packets are read (demuxed, not
    decoded) from the first frame's timestamp to the end of the last, which costs a read of
    the file but holds for files whose header says nothing (a WebM recorded to a stream, as
    browsers' MediaRecorder writes them) or overstates the video; None without timestamps.
    """
    try:
        container = av.open(str(Path(path).expanduser()))
    except FFMPEG_ERRORS:
        return None
    with container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        if from_packets:
            try:
                return _packet_seconds(container, stream)
            except FFMPEG_ERRORS:  # damaged past some point: load_video names it
                return None
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        if stream.frames and rate:
            return stream.frames / float(rate)
        tagged = _tag_seconds(stream.metadata.get("DURATION") or "")
        if tagged:
            return tagged
        if container.duration:
            return container.duration / av.time_base
    return None


def _packet_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """Seconds from the first video packet's presentation time to the end of the last
    (a packet without a duration lasts one frame at the stream's rate)."""
    rate = stream.average_rate or stream.guessed_rate
    frame_ticks = 1 / (float(rate) * float(stream.time_base)) if rate and stream.time_base else 0
    first = end = None
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:  # a flush packet, or no timestamp
            continue
        packet_end = packet.pts + (packet.duration or frame_ticks)
        first = packet.pts if first is None else min(first, packet.pts)
        end = packet_end if end is None else max(end, packet_end)
    if first is None or end is None or not stream.time_base:
        return None
    seconds = float((end - first) * stream.time_base)
    return seconds if seconds > 0 else None


def _tag_seconds(text: str) -> float | None:
    """Seconds of a Matroska ``DURATION`` tag (``HH:MM:SS.fffffffff``); None when malformed."""
    parts = text.strip().split(":")
    try:
        hours, minutes, seconds = (float(part) for part in parts)
    except ValueError:  # not three numbers
        return None
    total = hours * 3600 + minutes * 60 + seconds
    return total if math.isfinite(total) and total > 0 else None


class _FrameSelector:
    """Picks output frames from a stream of ``(time, frame)`` in presentation order.

    With a target rate, output frame ``k`` is the source frame nearest to
    ``start + k / fps``: a frame is chosen for every target before the midpoint between it
    and the next frame, and after the last frame for targets inside its display interval.
    """

    def __init__(
        self,
        path: Path,
        start: float,
        fps: float | None,
        src_fps: float,
        max_frames: int | None,
        size: Size | None,
        limit: float,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.path = path
        self.transform = transform
        self.start = start
        self.fps = fps
        self.step = 1.0 / fps if fps else None
        self.src_dt = 1.0 / src_fps if src_fps else 1.0 / 25.0
        self.max_frames = max_frames
        self.size = size
        self.limit = limit
        self.frames: list[Tensor] = []  # emitted and not yet taken by the caller
        self.count = 0  # frames emitted
        self.orient: tuple[str, ...] = ()  # what displays the frames upright (_orientation)
        self.done = False
        self._prev: tuple[float, av.VideoFrame, int, int] | None = None
        self._prev_tensor: Tensor | None = None
        # One converter for the whole clip: ``frame.to_ndarray`` builds a new swscale context
        # for every frame, which costs several times the conversion of a small frame.
        self._reformatter = VideoReformatter()

    def _target(self) -> float:
        assert self.fps is not None
        return self.start + self.count / self.fps

    def _emit(self) -> bool:
        """Append the held frame; False once no more frames are wanted."""
        if self.max_frames is not None and self.count >= self.max_frames:
            self.done = True
            return False
        if self.count >= self.limit:
            rate = self.fps or 1.0 / self.src_dt
            raise MediaError(
                self.path,
                f"too many frames: more than MediaLimits.max_video_frames = {self.limit} "
                f"({self.limit / rate / 60:.1f} min at {rate:g} fps). In Python pass "
                "limits=MediaLimits(max_video_frames=...) to load_video, or max_frames= / a "
                "lower fps; anytok encode has no option for it: split the video into shorter "
                "files",
            )
        assert self._prev is not None
        if self._prev_tensor is None:
            _, frame, w, h = self._prev
            self._prev_tensor = _frame_tensor(
                frame, w, h, self.size, self._reformatter, self.orient
            )
            if self.transform is not None:
                self._prev_tensor = self.transform(self._prev_tensor)
        self.frames.append(self._prev_tensor)
        self.count += 1
        if self.max_frames is not None and self.count >= self.max_frames:
            self.done = True
            return False
        return True

    def push(self, t: float, frame: av.VideoFrame, width: int, height: int) -> bool:
        """Take the next decoded frame; False when enough frames have been collected."""
        if self.step is None:
            if t < self.start - 0.5 * self.src_dt:
                return True
            self._prev, self._prev_tensor = (t, frame, width, height), None
            return self._emit()
        if self._prev is not None:
            # A target exactly halfway takes the earlier frame; the tolerance keeps float
            # rounding from deciding ties (25 -> 50 fps gives every frame twice).
            midpoint = 0.5 * (self._prev[0] + t) + _TIE
            while self._target() <= midpoint:
                if not self._emit():
                    return False
        self._prev, self._prev_tensor = (t, frame, width, height), None
        return True

    def finish(self) -> None:
        """End of stream: the last frame serves every target inside its display interval."""
        if self.step is None or self._prev is None:
            return
        end = self._prev[0] + self.src_dt
        while self._target() < end - _TIE:
            if not self._emit():
                return


def _first_frame_time(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The time of the stream's first decoded frame (its start when the frame has none;
    None when no frame decodes); the container is left at its start."""
    try:
        frame = next(iter(container.decode(stream)), None)
    except FFMPEG_ERRORS:
        frame = None
    if frame is None:
        return None
    with contextlib.suppress(*FFMPEG_ERRORS):
        container.seek(0)
    return float(frame.time) if frame.time is not None else 0.0


def _frames_from(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    start: float,
    seek_origin: float,
    origin: float,
    dt: float,
    slots: list[int] | None,
) -> Iterator[av.VideoFrame]:
    """Decoded frames from a keyframe at or before ``start`` seconds (from the first frame
    when ``start`` is 0); ``start`` counts from ``seek_origin`` in the demuxer's timestamps
    and from ``origin`` in the frames'. ``slots``, when given, receives the decode timestamps
    of the packets read since the last seek (:func:`_decode_recording`).

    FFmpeg seeks to the keyframe before a timestamp, but some demuxers (MPEG-TS, which has no
    index) land after it, or past the last keyframe: when the first frame decoded is later
    than ``start`` or none decodes, the seek is repeated 1, 2, 4 ... seconds earlier, and
    finally from the start of the file. A demuxer that cannot seek (a raw H.264 / HEVC
    stream) may be left at its end by the failed seek: the file (``path``) is then opened
    again and decoded from its start.
    """
    if start <= 0:
        yield from _decode_recording(container, stream, slots)
        return
    back = 0.0
    while start - back > 0:
        try:
            container.seek(int((start - back + seek_origin) * av.time_base), backward=True)
        except FFMPEG_ERRORS:  # not seekable: decode from the start and skip ahead
            yield from _decode_again(path, slots)
            return
        frames = _decode_recording(container, stream, slots)
        first = next(frames, None)
        # Accepted only when no undecoded earlier frame could be picked for ``start``: one
        # exactly half a frame later ties with the frame before it, which wins the tie.
        if first is not None and (
            first.time is None or first.time - origin < start + 0.5 * dt - _TIE
        ):
            yield first
            yield from frames
            return
        back = max(1.0, 2 * back)
    try:
        container.seek(0)
    except FFMPEG_ERRORS:
        yield from _decode_again(path, slots)
        return
    yield from _decode_recording(container, stream, slots)


def _decode_again(path: Path, slots: list[int] | None) -> Iterator[av.VideoFrame]:
    """The first video stream of ``path`` decoded from its start, in a container of its own
    (closed when the iteration ends)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from _decode_recording(container, stream, slots)


def _decode_recording(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    slots: list[int] | None,
) -> Iterator[av.VideoFrame]:
    """``container.decode(stream)``, recording in ``slots`` (emptied first; None: nothing
    recorded) the decode timestamp of every packet that holds data, in the order read."""
    if slots is None:
        yield from container.decode(stream)
        return
    slots.clear()
    for packet in container.demux(stream):
        if packet.size and packet.dts is not None:
            slots.append(int(packet.dts))
        yield from packet.decode()


def _slot(slots: list[int], index: int) -> int:
    """Frame slots from the first packet's to the ``index``-th frame's (its packet's slot;
    counted on from the last packet when more frames than packets came out)."""
    if not slots:
        return index
    if index < len(slots):
        return slots[index] - slots[0]
    return slots[-1] - slots[0] + index - (len(slots) - 1)


def _display_width(width: int, stream: av.video.stream.VideoStream) -> int:
    """The width a frame of ``width`` stored pixels is shown at: times the stream's sample
    aspect ratio (anamorphic DVD / HDV store 16:9 pictures in 720 or 1440 columns of
    non-square pixels); ``width`` itself when the file states none or 1:1."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or sar <= 0 or sar == 1:
        return width
    return max(1, round(width * sar))


def _frame_tensor(
    frame: av.VideoFrame,
    width: int,
    height: int,
    size: Size | None,
    reformatter: VideoReformatter,
    orient: tuple[str, ...] = (),
) -> Tensor:
    """One frame as uint8 ``(3, H, W)`` at the stream's first size, turned upright by the
    ``orient`` operations (:func:`_orientation`), then resized to ``size``."""
    rgb = reformatter.reformat(frame, width=width, height=height, format="rgb24")
    array = rgb.to_ndarray()
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    for op in orient:
        tensor = _ORIENT_OPS[op](tensor)
    if size is not None:
        tensor = resize_cover(tensor, size)
    return tensor.contiguous()


# The operations of FFmpeg's ``transpose`` / ``hflip`` / ``vflip`` filters on (C, H, W).
_ORIENT_OPS = {
    "clock": lambda x: torch.rot90(x, -1, dims=(-2, -1)),
    "cclock": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),  # transpose=cclock_flip
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
}


def _swaps_axes(orient: tuple[str, ...]) -> bool:
    return sum(op in ("clock", "cclock", "transpose") for op in orient) % 2 == 1


def _orientation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[str, ...]:
    """The operations that display a frame upright as FFmpeg's ``autorotate`` does (a
    phone's portrait video is stored landscape with a -90 degree rotation; a front camera's
    may be mirrored), from the frame's display matrix.

    Mirrors FFmpeg's ``fftools`` (``ffmpeg_filter.c``): rotations of 90 / 180 / 270 degrees
    with the flips the matrix holds; other angles are rounded to quarter turns (FFmpeg
    rotates by the exact angle and fills the corners).
    """
    matrix = None
    for data in getattr(frame, "side_data", ()):
        if getattr(getattr(data, "type", None), "name", "") == "DISPLAYMATRIX":
            raw = bytes(data)
            if len(raw) >= 36:
                matrix = struct.unpack("=9i", raw[:36])
    if matrix is None:  # older PyAV: the "rotate" tag of older FFmpeg, in degrees clockwise
        try:
            theta = float(stream.metadata.get("rotate", 0))
        except ValueError:
            theta = 0.0
        return _QUARTER_TURNS[round(theta / 90.0) % 4]
    m0, m1, _, m3, m4 = (v / 65536.0 for v in matrix[:5])
    s0, s1 = math.hypot(m0, m3), math.hypot(m1, m4)
    if s0 == 0 or s1 == 0:
        return ()
    # theta: clockwise degrees in [0, 360), as FFmpeg's get_rotation computes it
    theta = -round(-math.degrees(math.atan2(m1 / s1, m0 / s0)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return ("transpose",) if m3 > 0 else ("clock",)
    if abs(theta - 180) < 1:
        return (("hflip",) if m0 < 0 else ()) + (("vflip",) if m4 < 0 else ())
    if abs(theta - 270) < 1:
        return ("clock", "vflip") if m3 < 0 else ("cclock",)
    if abs(theta) > 1:
        return _QUARTER_TURNS[round(theta / 90.0) % 4]
    return ("vflip",) if m4 < 0 else ()


# Clockwise quarter turns as orientation operations.
_QUARTER_TURNS: tuple[tuple[str, ...], ...] = ((), ("clock",), ("180",), ("cclock",))


def _check_frame_size(p: Path, width: int, height: int, limits: MediaLimits) -> None:
    if min(width, height) < limits.min_video_side:
        raise MediaError(
            p,
            f"video frames are {width}x{height} pixels, too small (the minimum side is "
            f"{limits.min_video_side})",
        )
    if width * height > limits.max_video_pixels_per_frame:
        raise MediaError(
            p,
            f"video frames are {width}x{height} pixels, too large: the limit is "
            f"{limits.max_video_pixels_per_frame / 1e6:g} megapixels per frame "
            "(raise MediaLimits.max_video_pixels_per_frame)",
        )


def save_video(
    path: str | os.PathLike[str],
    video: Tensor | np.ndarray,
    fps: float | Fraction,
    crf: int = 17,
) -> Path:
    """Write ``(3, T, H, W)`` float in [-1, 1] as a video (yuv420p).

    The container follows the extension: ``.webm`` holds VP9 (libvpx-vp9, constant quality
    ``crf`` on its 0-63 scale); the others of :data:`WRITABLE_VIDEO_EXTENSIONS` (``.mp4``,
    ``.mkv``, ``.mov`` ...) hold H.264 (libx264 at constant quality ``crf``, 0-51) when
    FFmpeg has it, else MPEG-4 Part 2. yuv420p needs even sizes: an odd height or width is
    padded by repeating the last row or column, so the file is up to one pixel larger than
    the tensor. ``~`` is expanded; the file is written under a temporary name and renamed,
    so a failed write leaves any previous file at ``path`` as it was.

    Raises:
        TypeError: the video is not a float tensor or array.
        ValueError: the tensor has the wrong shape or holds NaN/Inf, or fps is not a
            positive finite number of at most :data:`MAX_WRITE_FPS`.
        MediaError: the extension is not writable, the folder does not exist, or the file
            cannot be written.
    """
    p = output_path(path, "video")
    video = float_media(video, p, "video", "uint8 pixels: x / 127.5 - 1")
    if video.ndim != 4 or video.shape[0] != 3 or min(video.shape[1:]) < 1:
        raise ValueError(
            f"save_video expects (3, T, H, W) with T, H, W >= 1, got {tuple(video.shape)}"
        )
    if not torch.isfinite(video).all():
        raise ValueError(f"refusing to write {p}: the video contains NaN or Inf")
    rate = None
    if isinstance(fps, numbers.Real) and math.isfinite(fps) and 0 < fps <= MAX_WRITE_FPS:
        # (NaN / inf before Fraction() refuses them)
        rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1001)
    if not rate:  # also a tiny fps that rounds to 0
        raise ValueError(
            f"refusing to write {p}: fps must be a positive finite number up to "
            f"{MAX_WRITE_FPS}, got {fps!r}"
        )
    check_video_extension(p)
    suffix = p.suffix.lower()
    frames = to_uint8(video.cpu()).permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    if suffix == ".webm":
        codec, options = "libvpx-vp9", {"crf": str(crf), "b": "0"}
    elif "libx264" in av.codecs_available:
        codec, options = "libx264", {"crf": str(crf)}
    else:
        codec, options = "mpeg4", {}
    try:
        with atomic_output(p) as tmp, av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = options
            if codec == "mpeg4":
                stream.bit_rate = max(2_000_000, int(frames.shape[1] * frames.shape[2] * rate * 2))
            for i, array in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    except FFMPEG_ERRORS as err:
        raise MediaError(p, f"cannot write {codec} video ({ffmpeg_detail(err)})") from err
    return p


#: Frame rates save_video takes: FFmpeg keeps the time base as a C ``int`` fraction.
MAX_WRITE_FPS = 1_000_000
#: Extensions save_video writes (``.webm`` as VP9, the others as H.264).
WRITABLE_VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp"}
    | {".mpg", ".mpeg", ".flv", ".wmv"}
)


def check_video_extension(path: Path) -> None:
    """Refuse, with a MediaError, an extension :func:`save_video` cannot write."""
    if path.suffix.lower() not in WRITABLE_VIDEO_EXTENSIONS:
        raise MediaError(
            path,
            f"cannot write video with the extension {path.suffix or '(none)'!r}: the writable "
            f"extensions are {', '.join(sorted(WRITABLE_VIDEO_EXTENSIONS))}",
        )
