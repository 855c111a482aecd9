"""Audio files in and out: soundfile decodes and encodes, torchaudio resamples.

One file is a ``(channels, samples)`` float32 tensor in [-1, 1]; callers add the batch axis.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT
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
    is_iso_bmff,
    output_path,
    sniff,
    unreadable,
    wrong_modality,
)

__all__ = [
    "FFMPEG_AUDIO_EXTENSIONS",
    "RESAMPLE_FILTER",
    "AudioClip",
    "audio_duration",
    "audio_length",
    "check_audio_extension",
    "iter_audio",
    "load_audio",
    "resample",
    "save_audio",
    "to_channels",
]

#: Audio files decoded by FFmpeg (PyAV) instead of libsndfile, which cannot read them.
FFMPEG_AUDIO_EXTENSIONS = frozenset({".m4a", ".m4b", ".aac", ".mka", ".wma", ".weba"})
# What errors.sniff calls the files FFmpeg reads whatever their name: an M4A, and a
# Matroska / WebM file (yt-dlp saves Opus audio as .webm).
_FFMPEG_SNIFFED = (("MP4 (M4A) audio", "audio"), ("a Matroska/WebM file", None))


@dataclass
class AudioClip:
    """A decoded audio file.

    Attributes:
        waveform: ``(channels, samples)`` float32 in [-1, 1], at ``sample_rate``.
        sample_rate: samples per second of ``waveform``.
        path: the file it came from (None when built in memory).
        original_sample_rate: the file's own sample rate.
        original_channels: the file's own channel count.
    """

    waveform: Tensor
    sample_rate: int
    path: Path | None = None
    original_sample_rate: int = 0
    original_channels: int = 0

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.waveform.shape[-1] / self.sample_rate

    @property
    def channels(self) -> int:
        return self.waveform.shape[0]


def to_channels(waveform: Tensor, channels: int) -> Tensor:
    """Convert ``(..., C, S)`` to ``(..., channels, S)``.

    Mono goes to any count by repetition, any count goes to mono by the mean, and a matching
    count is returned as is. Anything else (say 6 -> 2) has no single right answer and raises
    ``ValueError``: downmix it yourself.
    """
    if waveform.ndim < 2:
        raise ValueError(f"expected (..., channels, samples), got shape {tuple(waveform.shape)}")
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    have = waveform.shape[-2]
    if have == channels:
        return waveform
    if have == 1:
        return waveform.expand(*waveform.shape[:-2], channels, waveform.shape[-1]).contiguous()
    if channels == 1:
        return waveform.mean(dim=-2, keepdim=True)
    raise ValueError(
        f"cannot convert {have} channels to {channels}: only mono to N and N to mono are "
        "supported; downmix explicitly"
    )


def resample(waveform: Tensor, orig_sample_rate: int, new_sample_rate: int) -> Tensor:
    """Resample ``(..., samples)`` from one integer rate to another; the identity when the
    rates match.

    Kaiser-windowed sinc (``torchaudio.functional.resample`` with :data:`RESAMPLE_FILTER`,
    librosa's ``kaiser_best``): aliases are suppressed by more than 60 dB and the passband
    is flat within 0.1 dB up to 0.8 x the lower Nyquist frequency (torchaudio's default
    Hann filter of width 6 lets a 14 kHz tone alias at -22 dB from 48 to 24 kHz). The output
    has ``ceil(samples * new / orig)`` samples.
    """
    orig, new = int(orig_sample_rate), int(new_sample_rate)
    if orig <= 0 or new <= 0:
        raise ValueError(
            f"sample rates must be positive, got {orig_sample_rate} -> {new_sample_rate}"
        )
    if orig == new:
        return waveform
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    gcd = math.gcd(orig, new)
    if _kernel_elements(orig // gcd, new // gcd) > _MAX_KERNEL:
        return _resample_direct(waveform, orig // gcd, new // gcd)
    return _resampler(orig, new, waveform.dtype, waveform.device)(waveform)


# librosa's (resampy's) ``kaiser_best`` filter, through torchaudio.
_LOWPASS_WIDTH, _ROLLOFF, _BETA = 64, 0.9475937167399596, 14.769656459379492
#: Keyword arguments of ``torchaudio.functional.resample`` that :func:`resample` uses.
RESAMPLE_FILTER: dict[str, object] = {
    "lowpass_filter_width": _LOWPASS_WIDTH,
    "rolloff": _ROLLOFF,
    "resampling_method": "sinc_interp_kaiser",
    "beta": _BETA,
}
# torchaudio builds one filter per output phase, (new, 2 * width + orig) values for the
# reduced rates: 13,680 for 44.1 -> 24 kHz, but 1.06e9 (4.2 GB) for 44,101 Hz -> 24 kHz or
# 178 million for 11,127 Hz (old Macintosh audio) -> 16 kHz. Above this many values the
# same filter is evaluated output by output instead (:func:`_resample_direct`).
_MAX_KERNEL = 1 << 22


def _half_width(orig: int, new: int) -> int:
    return math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))


def _kernel_elements(orig: int, new: int) -> int:
    return new * (2 * _half_width(orig, new) + orig)


def _resample_direct(waveform: Tensor, orig: int, new: int, chunk: int = 4096) -> Tensor:
    """torchaudio's resampling filter (:data:`RESAMPLE_FILTER`: Kaiser-windowed sinc) applied
    output sample by output sample, for coprime-ish rates whose polyphase filter bank would
    not fit in memory: ``orig`` and ``new`` are the rates divided by their gcd. Memory
    follows ``chunk`` outputs; the result matches ``torchaudio.functional.resample`` to
    float rounding."""
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    length = shape[-1]
    out_len = math.ceil(new * length / orig)
    base = min(orig, new) * _ROLLOFF
    width = _half_width(orig, new)
    offsets = torch.arange(-width, width + 2, device=x.device)  # taps around floor(centre)
    beta = torch.tensor(_BETA, dtype=torch.float64, device=x.device)
    out = torch.empty(x.shape[0], out_len, dtype=x.dtype, device=x.device)
    for first in range(0, out_len, chunk):
        j = torch.arange(first, min(first + chunk, out_len), device=x.device)
        taps = (j * orig).div(new, rounding_mode="floor")[:, None] + offsets  # (n, taps)
        # (i / orig - j / new) * base, from an exact integer numerator
        u = (taps * new - j[:, None] * orig).to(torch.float64) * (base / (orig * new))
        u = u.clamp_(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
        # torchaudio's Kaiser window: i0(beta * sqrt(1 - (u / width)^2)) / i0(beta)
        ratio = (u / _LOWPASS_WIDTH) ** 2
        window = torch.i0(_BETA * torch.sqrt((1 - ratio).clamp_(min=0))) / torch.i0(beta)
        u = u * math.pi
        sinc = torch.where(u == 0, torch.ones_like(u), torch.sin(u) / u)
        weights = (sinc * window * (base / orig)).to(x.dtype)
        inside = (taps >= 0) & (taps < length)
        values = x[:, taps.clamp(0, length - 1)] * inside  # (channels, n, taps)
        out[:, first : first + j.numel()] = (values * weights).sum(-1)
    return out.reshape(*shape[:-1], out_len)


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> AT.Resample:
    """One windowed-sinc filter bank per (rates, dtype, device), built once.

    ``torchaudio.functional.resample`` rebuilds its filter on every call: 0.4-5.6 ms on a
    2-core CPU (44.1 -> 24 kHz: 20.7 ms for 5 s of audio, 15.1 ms with the filter kept), a
    dozen small launches per call on a GPU. The filter is built outside inference mode so a
    bank first made under ``torch.inference_mode`` still serves autograd later.
    """
    with torch.inference_mode(False):
        return AT.Resample(orig, new, dtype=dtype, **RESAMPLE_FILTER).to(device)


# libsndfile fixes up a WAV/AIFF whose header promises more data than the file holds and
# notes it in its log ("data : 96000 (should be 47960)"); that note is how a truncated file
# is told apart from a short one.
# The chunk line is indented in AIFF logs (" SSND : 88208 (should be 79382)"); Sony Wave64
# notes it on its (lower-case) "riff" line; RF64 compares the frames of its ds64 chunk.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND|riff)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_SHORT_DS64 = re.compile(
    r"Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)"
)
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFFFFFFFFFF}


def load_audio(
    path: str | os.PathLike[str],
    sample_rate: int | None = None,
    channels: int | None = None,
    limits: MediaLimits | None = None,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    exact: bool = True,
) -> AudioClip:
    """Read an audio file, or a window of it, as ``(channels, samples)`` float32 in [-1, 1].

    Args:
        path: any file soundfile reads (WAV, FLAC, Ogg/Vorbis/Opus, MP3, AIFF ...), or one
            of :data:`FFMPEG_AUDIO_EXTENSIONS` (M4A / AAC, WMA ...), decoded by FFmpeg, as
            is any MP4-family file whatever its brand (``isom`` / ``mp42`` / ``dash`` M4A):
            its first audio stream is read.
        sample_rate: resample to this rate; None keeps the file's rate.
        channels: convert to this many channels (see :func:`to_channels`); None keeps them.
        limits: sanity limits; :data:`DEFAULT_LIMITS` when None.
        offset: start this many seconds into the audio (rounded to the nearest sample at the
            output rate), as librosa's ``offset``.
        duration: keep at most this many seconds (rounded the same way); None: to the end.
            A window holds the samples of the whole file's decode sliced there, to float
            rounding: libsndfile formats read only the window and the resampling filter's
            margin (training crops of hour-long files cost a window, not the file); FFmpeg
            formats decode from the start (see ``exact``), keep only the window and stop at
            its end. NaN/Inf checks cover the window, and with a ``duration``
            ``limits.max_audio_seconds`` bounds the window, not the file.
        exact: False lets FFmpeg formats seek to half a second before the window instead
            of decoding from the start (MP4 / M4A / M4B, Matroska / WebM, ASF; not raw
            ADTS ``.aac``): deep into a long file a window then costs itself, but it may
            sit up to a timestamp tick off the whole decode's (none in MP4, under 1 ms in
            Matroska / ASF) and codecs that synthesize noise from a running generator
            (AAC's noise substitution, AC-3's dither) give other noise. Training crops use
            it; libsndfile formats read only the window either way.

    Raises:
        MediaError: the file is missing, empty, truncated, corrupt, not audio, has no samples,
            holds NaN/Inf samples, exceeds ``limits``, cannot take the channel conversion,
            or ends before ``offset``.
        ValueError: ``offset`` is negative or not finite, or ``duration`` is not positive.
    """
    limits = limits or DEFAULT_LIMITS
    if not math.isfinite(offset) or offset < 0:
        raise ValueError(f"load_audio offset must be a finite number of seconds >= 0, got {offset}")
    if duration is not None and not duration > 0:
        raise ValueError(f"load_audio duration must be > 0 seconds or None, got {duration}")
    p = check_file(path)
    mismatch = wrong_modality(p, "audio")
    window = _Window(offset, duration, sample_rate)
    # An MP4 whose brand reads as video (isom, mp42, dash ...) may hold only audio: FFmpeg
    # decides from its streams.
    if mismatch is not None and not is_iso_bmff(p):
        raise mismatch
    if p.suffix.lower() in FFMPEG_AUDIO_EXTENSIONS or mismatch is not None:
        decoded = _decode_with_ffmpeg(p, limits, mismatch, window, seek=not exact)
    else:
        decoded = _decode_with_soundfile(p, limits, window, seek=not exact)
    file_rate, file_channels = decoded.rate, decoded.channels
    _check_total(p, decoded.total, limits)
    rate = int(sample_rate) if sample_rate is not None else file_rate
    first = window.samples(rate)[0]
    out_total = math.ceil(decoded.total * rate / file_rate)
    if first >= out_total:
        raise MediaError(
            p,
            f"offset {offset:g} s is at or past the end of the audio "
            f"({decoded.total / file_rate:g} s)",
        )

    waveform = _window_waveform(p, decoded, window, rate, channels)
    return AudioClip(
        waveform=waveform,
        sample_rate=rate,
        path=p,
        original_sample_rate=file_rate,
        original_channels=file_channels,
    )


def _check_total(p: Path, total: int, limits: MediaLimits) -> None:
    """Refuse a file of no samples, or fewer than ``limits.min_audio_samples``."""
    if total == 0:
        raise MediaError(p, "contains no audio samples (zero length)")
    if total < limits.min_audio_samples:
        raise MediaError(
            p, f"too short: {total} samples, fewer than the minimum of {limits.min_audio_samples}"
        )


def _window_waveform(
    p: Path, decoded: _Decoded, window: _Window, rate: int, channels: int | None
) -> Tensor:
    """``(C, S)`` float32 of ``window`` at ``rate`` from the file samples ``decoded`` (which
    cover it with the resampling margin): NaN / Inf check, clamp, channel conversion,
    resampling, cut."""
    first, stop = window.samples(rate)
    waveform = torch.from_numpy(decoded.data.T.copy())  # (C, S)
    _check_finite(p, waveform, decoded.start)
    # Integer PCM decodes into [-1, 1) already; float files may overshoot.
    waveform = waveform.clamp_(-1.0, 1.0)
    if channels is not None:
        try:
            waveform = to_channels(waveform, channels)
        except ValueError as err:
            raise MediaError(p, str(err)) from err
    if rate != decoded.rate:
        waveform = resample(waveform, decoded.rate, rate).clamp_(-1.0, 1.0)
    # The decoded range starts at output sample ``decoded.start * rate / file_rate`` (an
    # integer: see _Window.read_range); keep the window.
    skip = first - decoded.start * rate // decoded.rate
    if skip or stop is not None:
        waveform = waveform[:, skip : None if stop is None else skip + stop - first]
    return waveform.contiguous()


def audio_length(path: str | os.PathLike[str], sample_rate: int | None = None) -> int | None:
    """Samples :func:`load_audio` returns for the whole file at ``sample_rate`` (None: the
    file's rate), from the header alone; None when only decoding tells (FFmpeg formats, an
    MP3 without a length header) or the header cannot be read (:func:`load_audio` then
    names the problem)."""
    header = _header_length(Path(path).expanduser(), sample_rate)
    return None if header is None else header[0]


def audio_duration(path: str | os.PathLike[str]) -> float | None:
    """Seconds of audio the header states: libsndfile's exact length where the format
    states one, else FFmpeg's stream or container duration (an estimate, as for an MP3
    without a length header); None when the header does not say or cannot be read."""
    p = Path(path).expanduser()
    header = _header_length(p, None)
    if header is not None:
        return header[0] / header[1]
    try:
        container = av.open(str(p))
    except FFMPEG_ERRORS:
        return None
    with container:
        stream = _first_audio_stream(container)
        return None if stream is None else (_stream_seconds(container, stream) or None)


def _first_audio_stream(container: Any) -> Any:
    """The container's first audio stream, or None."""
    return next((s for s in container.streams if s.type == "audio"), None)


def _stream_seconds(container: Any, stream: Any) -> float:
    """Seconds of ``stream`` its header states (the stream's duration, else the
    container's; 0 when neither says)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / av.time_base


def _header_length(p: Path, sample_rate: int | None) -> tuple[int, int] | None:
    """``(samples, rate)`` of :func:`audio_length`, with the rate they count at."""
    if p.suffix.lower() in FFMPEG_AUDIO_EXTENSIONS:
        return None
    try:
        info = sf.info(_sf_path(p))
    except (sf.SoundFileError, RuntimeError, OSError):
        return None
    if info.samplerate <= 0 or not _states_its_length(p, info.format):
        return None
    rate = info.samplerate if sample_rate is None else int(sample_rate)
    return math.ceil(info.frames * rate / info.samplerate), rate


def iter_audio(
    path: str | os.PathLike[str],
    chunk_samples: int,
    sample_rate: int | None = None,
    channels: int | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[Tensor]:
    """Read a whole file as consecutive ``(channels, chunk_samples)`` float32 chunks (the
    last may be shorter), joined equal to :func:`load_audio` with the same arguments (to
    float rounding). Memory holds about one chunk and ``limits.max_audio_seconds`` bounds
    the chunk, not the file, so recordings of any length stream.

    Files whose header states their length (WAV, FLAC, Ogg, AIFF, MP3 with a Xing / Info /
    VBRI header ...) are read window by window (:func:`load_audio`'s ``offset`` /
    ``duration``); the others (FFmpeg formats, MP3 without a length header) in one
    decoding pass, each chunk made from the samples its window needs. A problem in the
    middle of the file (truncation, NaN) raises when the chunk reaching it is read: a
    caller that keeps chunks must drop them when the iteration raises.

    Raises:
        MediaError: as :func:`load_audio`.
        ValueError: ``chunk_samples`` < 1.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    p = check_file(path)  # now, not at the first next()
    return _audio_chunks(p, chunk_samples, sample_rate, channels, limits)


def _audio_chunks(
    p: Path,
    chunk_samples: int,
    sample_rate: int | None,
    channels: int | None,
    limits: MediaLimits | None,
) -> Iterator[Tensor]:
    """:func:`iter_audio`'s chunks: :func:`load_audio` windows where the header states the
    length; otherwise (FFmpeg formats, MP3 without a length header) one decoding pass, each
    chunk made from the file samples its window needs (:meth:`_Window.read_range`), as
    :func:`load_audio` makes a window, and what no later window needs dropped."""
    header = _header_length(p, sample_rate)
    if header is not None:
        total, rate = header
        if total == 0:  # load_audio names the problem
            load_audio(p, sample_rate, channels, limits)
        for first in range(0, total, chunk_samples):
            yield load_audio(
                p, sample_rate, channels, limits, offset=first / rate, duration=chunk_samples / rate
            ).waveform
        return
    limits = limits or DEFAULT_LIMITS
    blocks = _sequential_blocks(p, limits)
    file_rate, file_channels, _ = next(blocks)
    rate = int(sample_rate) if sample_rate is not None else file_rate
    held = np.zeros((0, file_channels), np.float32)  # file samples from held_start
    pending: list[np.ndarray] = []
    held_start, ended, first = 0, False, 0
    while True:
        window = _Window(first / rate, chunk_samples / rate, sample_rate)
        start, stop = window.read_range(file_rate)
        assert stop is not None
        have = held_start + len(held) + sum(len(b) for b in pending)
        while not ended and have < stop:
            block = next(blocks, None)
            if block is None:
                ended = True
            else:
                pending.append(block)
                have += len(block)
                if have - start > limits.max_audio_seconds * file_rate:  # what a chunk holds
                    _check_header(p, file_rate, file_channels, (have - start) / file_rate, limits)
        if pending:
            held = np.concatenate([held, *pending])
            pending = []
        total = held_start + len(held)  # the file's length once ended
        if ended:
            _check_total(p, total, limits)
            if first >= math.ceil(total * rate / file_rate):
                return
        start = min(start, total)
        data = held[start - held_start : stop - held_start]
        decoded = _Decoded(data, file_rate, file_channels, start, total)
        yield _window_waveform(p, decoded, window, rate, channels)
        first += chunk_samples
        following = _Window(first / rate, chunk_samples / rate, sample_rate)
        drop = max(0, min(following.read_range(file_rate)[0], total) - held_start)
        held, held_start = held[drop:].copy(), held_start + drop


def _sequential_blocks(p: Path, limits: MediaLimits) -> Iterator[Any]:
    """The file's ``(rate, channels, 0)``, then its samples as ``(S, C)`` float32 blocks in
    order, with no bound on the length (a caller holds a chunk): FFmpeg formats through
    PyAV, others (an MP3 without a length header) through libsndfile. Dispatches as
    :func:`load_audio` does."""
    mismatch = wrong_modality(p, "audio")
    if mismatch is not None and not is_iso_bmff(p):
        raise mismatch
    if p.suffix.lower() in FFMPEG_AUDIO_EXTENSIONS or mismatch is not None:
        return _ffmpeg_blocks(p, limits, mismatch, held=0.0)
    try:
        info = sf.info(_sf_path(p))
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        if sniff(p) in _FFMPEG_SNIFFED:
            return _ffmpeg_blocks(p, limits, None, held=0.0)
        raise unreadable(p, "audio", _sf_detail(err)) from err
    _check_header(p, info.samplerate, info.channels, 0.0, limits)
    return _soundfile_blocks(p)


def _soundfile_blocks(p: Path, block: int = 1 << 16) -> Iterator[Any]:
    """:func:`_sequential_blocks` through libsndfile."""
    try:
        with sf.SoundFile(_sf_path(p)) as f:
            yield f.samplerate, f.channels, 0
            while len(data := f.read(block, dtype="float32", always_2d=True)):
                yield data
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise MediaError(
            p,
            f"audio data cannot be decoded ({_sf_detail(err)}); the file is probably "
            "truncated or corrupt",
        ) from err


@dataclass(frozen=True)
class _Window:
    """What :func:`load_audio` keeps: ``duration`` seconds (None: all) from ``offset``, in
    samples at ``out_rate`` (None: the file's rate)."""

    offset: float = 0.0
    duration: float | None = None
    out_rate: int | None = None

    def samples(self, rate: int) -> tuple[int, int | None]:
        """Output samples ``[first, stop)`` at ``rate`` (``stop`` None: to the end)."""
        first = round(self.offset * rate)
        if self.duration is None:
            return first, None
        return first, first + max(1, round(self.duration * rate))

    def read_range(self, file_rate: int) -> tuple[int, int | None]:
        """File samples ``[start, stop)`` whose resampling covers the window exactly.

        Resampling maps each block of ``file_rate / g`` input samples onto ``out_rate / g``
        outputs (``g`` the rates' gcd) and each output sees the filter's half-width of
        input around it: the range starts and ends on block edges, with the half-width (and
        two samples of slack) more on each side, so its outputs inside the window equal the
        whole file's. ``start * out_rate / file_rate`` is then an integer.
        """
        out_rate = self.out_rate or file_rate
        first, stop = self.samples(out_rate)
        if out_rate == file_rate:
            return first, stop
        g = math.gcd(file_rate, out_rate)
        step_in, step_out = file_rate // g, out_rate // g
        margin = -(-(_half_width(step_in, step_out) + 2) // step_in)  # in blocks
        start = max(0, first // step_out - margin) * step_in
        if stop is None:
            return start, None
        return start, (-(-stop // step_out) + margin) * step_in


@dataclass
class _Decoded:
    """``data``: ``(S, C)`` float32 file samples from ``start``; ``total``: the file's samples
    (what libsndfile's header promises, or what FFmpeg decoded)."""

    data: np.ndarray
    rate: int
    channels: int
    start: int
    total: int


def _check_header(p: Path, rate: int, channels: int, seconds: float, limits: MediaLimits) -> None:
    """Refuse what the header announces before decoding: no rate, absurd channel counts,
    more audio than ``limits`` allows."""
    if rate <= 0:
        raise MediaError(p, f"invalid sample rate {rate} Hz in the header")
    if channels < 1 or channels > limits.max_audio_channels:
        raise MediaError(
            p,
            f"has {channels} channels; the limit is {limits.max_audio_channels} "
            "(a corrupt header or not a normal audio file)",
        )
    if seconds > limits.max_audio_seconds:
        raise MediaError(
            p,
            f"too long: {_hms(seconds)} of audio, more than the limit of "
            f"{_hms(limits.max_audio_seconds)} (raise MediaLimits.max_audio_seconds)",
        )


def _decode_with_soundfile(
    p: Path, limits: MediaLimits, window: _Window, seek: bool = False
) -> _Decoded:
    """The samples of ``window`` (with the resampling margin) through libsndfile, which
    also tells a truncated WAV / AIFF from a short one (an M4A or Matroska / WebM file it
    cannot open goes to FFmpeg, ``seek`` as :func:`_decode_with_ffmpeg`)."""
    try:
        info = sf.info(_sf_path(p))
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        if sniff(p) in _FFMPEG_SNIFFED:  # under another name: only a failure pays the sniff
            return _decode_with_ffmpeg(p, limits, None, window, seek)
        raise unreadable(p, "audio", _sf_detail(err)) from err
    seconds = info.frames / max(info.samplerate, 1)
    if window.duration is not None:  # only the window is decoded: it is what the limit bounds
        seconds = min(seconds, window.duration)
    _check_header(p, info.samplerate, info.channels, seconds, limits)
    log = info.extra_info or ""
    short = _SHORT_CHUNK.search(log)
    if short and int(short.group(2)) not in _UNKNOWN_SIZES:
        promised, present = int(short.group(2)), int(short.group(3))
        what = "bytes" if short.group(1) == "riff" else "bytes of audio data"
        # A few missing bytes are sloppy writers, not lost audio.
        if promised - present > max(1024, promised // 1000):
            raise MediaError(
                p,
                f"file is truncated: its header announces {promised} {what} but only "
                f"{present} are present",
            )
    short = _SHORT_DS64.search(log)
    if short and int(short.group(2)) - int(short.group(1)) > max(512, int(short.group(2)) // 1000):
        raise MediaError(
            p,
            f"file is truncated: its header announces {short.group(2)} samples but only "
            f"{short.group(1)} are present",
        )
    exact_length = _states_its_length(p, info.format)
    start, stop = window.read_range(info.samplerate)
    if exact_length:  # a window past the end reads nothing: load_audio names the offset
        start = min(start, info.frames)
    # An MP3 frame may take its data from up to 511 bytes of earlier frames (the bit
    # reservoir) and overlaps the previous one: decoding from a seek straight to ``start``
    # loses both (samples off by up to 0.3 on a 22.05 kHz file), so the read starts
    # _MP3_PRE_ROLL samples earlier and drops them.
    pre_roll = min(start, _MP3_PRE_ROLL) if info.format == "MP3" else 0
    try:
        data, _ = sf.read(
            _sf_path(p), dtype="float32", always_2d=True, start=start - pre_roll, stop=stop
        )
        data = data[pre_roll:]
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise MediaError(
            p,
            f"audio data cannot be decoded ({_sf_detail(err)}); the file is probably "
            "truncated or corrupt",
        ) from err
    if data.shape[0] == 0 and start == 0 and "without an End-Of-Stream" in log:
        # libsndfile finds no samples at all in an Ogg file cut before its end.
        raise MediaError(
            p,
            "file is truncated: the Ogg stream ends without its end-of-stream mark and no "
            "audio could be decoded",
        )
    expected = (info.frames if stop is None else min(stop, info.frames)) - start
    if data.shape[0] < expected and exact_length:
        raise MediaError(
            p,
            f"file is truncated: the header announces {info.frames} samples but only "
            f"{start + data.shape[0]} could be read",
        )
    if exact_length:
        total = info.frames
    elif data.shape[0] == 0 and start > 0:  # past the end: only a whole read tells where
        total = _count_frames(p)
    elif stop is None or data.shape[0] < stop - start:  # the read reached the end
        total = start + data.shape[0]
    else:  # more may follow: the estimate, or at least what was read
        total = max(info.frames, stop)
    return _Decoded(data, info.samplerate, info.channels, start, total)


#: Samples an MP3 window read starts early by: 24 frames at 22.05 kHz, 12 at 44.1 kHz, more
#: than the 511-byte bit reservoir spans at any bitrate, plus the frame overlap.
_MP3_PRE_ROLL = 12 * 1152


def _states_its_length(p: Path, file_format: str) -> bool:
    """Whether libsndfile's frame count for ``p`` is the file's: an MP3 without a Xing /
    Info / VBRI header has no length, and libsndfile estimates one from the file size and
    the first frame's bitrate, which is no promise."""
    return file_format != "MP3" or _mp3_has_length_header(p)


def _count_frames(p: Path) -> int:
    """Frames libsndfile decodes from ``p`` (a whole read, block by block: for an MP3
    whose header states no length)."""
    total = 0
    with sf.SoundFile(_sf_path(p)) as f:
        # Not SoundFile.blocks: it counts to the header's estimate.
        while n := len(f.read(1 << 16, dtype="float32")):
            total += n
    return total


def _mp3_has_length_header(p: Path) -> bool:
    """Whether the first MPEG frame (after any ID3v2 tag) carries a Xing, Info or VBRI
    header, the only place an MP3 states its length."""
    try:
        with open(p, "rb") as f:
            head = f.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:
                size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
                start = 10 + size + (10 if head[5] & 0x10 else 0)  # footer flag
            f.seek(start)
            frame = f.read(64)
    except OSError:
        return False
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def _decode_with_ffmpeg(
    p: Path,
    limits: MediaLimits,
    no_audio: MediaError | None = None,
    window: _Window = _Window(),
    seek: bool = False,
) -> _Decoded:
    """The samples of ``window`` (with the resampling margin) of the first audio stream,
    through FFmpeg (PyAV): the containers libsndfile does not read (M4A / AAC, WMA, Matroska
    audio). Decoding starts at the start, or with ``seek`` just before the window where
    the container allows (:func:`_audio_frames`); only the window's samples are kept, and
    decoding stops at its end; ``limits.max_audio_seconds`` bounds the window. ``no_audio``
    is the error to raise when the file holds no audio stream."""
    sought = window if seek else None
    blocks = _ffmpeg_blocks(p, limits, no_audio, held=window.duration, window=sought)
    rate, channels, position = next(blocks)  # position: file samples before the first block
    start, stop = window.read_range(rate)
    parts: list[np.ndarray] = []
    for block in blocks:
        first = position
        position += len(block)
        if position > start:
            parts.append(block[max(0, start - first) : None if stop is None else stop - first])
        if stop is not None and position >= stop:  # more may follow: at least this many
            blocks.close()
            break
    data = np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)
    return _Decoded(
        np.ascontiguousarray(data, dtype=np.float32), rate, channels, min(start, position), position
    )


def _ffmpeg_blocks(
    p: Path,
    limits: MediaLimits,
    no_audio: MediaError | None,
    held: float | None,
    window: _Window | None = None,
) -> Iterator[Any]:
    """The first audio stream's ``(rate, channels, first)``, then its samples as ``(S, C)``
    float32 blocks in order from file sample ``first`` (PyAV): 0, or with a ``window``
    where an indexed container was sought to, at least :data:`_SEEK_WARMUP_SECONDS` before
    it and placed by timestamp (:func:`_audio_frames`). ``held``: the seconds the caller keeps, checked
    against ``limits.max_audio_seconds`` with the header; None: the whole stream, held to
    the limit by its header and, for a header that understates it, as it decodes."""
    try:
        container = av.open(str(p))
    except FFMPEG_ERRORS as err:
        raise unreadable(p, "audio", ffmpeg_detail(err)) from err
    with container:
        stream = _first_audio_stream(container)
        if stream is None:
            raise no_audio or MediaError(p, "holds no audio stream")
        rate, channels = int(stream.codec_context.sample_rate or 0), stream.channels
        seconds = _stream_seconds(container, stream) if held is None else held
        _check_header(p, rate, channels, seconds, limits)
        max_samples = limits.max_audio_seconds * rate if held is None else math.inf
        # Interleaved float32, same layout and rate. Not planar "fltp": PyAV's to_ndarray
        # of an 8-channel planar frame crashes the process (PyAV 16, FFmpeg 8).
        resampler = av.AudioResampler(format="flt")
        total = 0
        try:
            start = 0 if window is None else window.read_range(rate)[0]
            first, frames = _audio_frames(container, stream, rate, start)
            yield rate, channels, first
            for frame in itertools.chain(frames, [None]):  # None: flush
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1, channels)  # (1, S * C) -> (S, C)
                    total += block.shape[0]
                    yield block
                if total > max_samples:  # a header that understated the length
                    _check_header(p, rate, channels, total / rate, limits)
        except FFMPEG_ERRORS as err:
            raise MediaError(
                p,
                f"audio data cannot be decoded ({ffmpeg_detail(err)}); the file is probably "
                "truncated or corrupt",
            ) from err


# Decoded audio before a sought window, dropped: a decoder starting mid-stream lacks its
# predecessor's state (AAC's overlap-add needs the previous frame, Opus an 80 ms pre-roll).
_SEEK_WARMUP_SECONDS = 0.5
# Demuxers without an index: FFmpeg seeks them by byte estimates and their timestamps
# after a seek are guesses (raw ADTS AAC, raw MP3 / AC-3 streams).
_UNINDEXED_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3"})


def _audio_frames(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    rate: int,
    start: int,
) -> tuple[int, Iterator[av.AudioFrame]]:
    """``(first, frames)``: the stream's decoded frames from about file sample ``first``:
    0, or for ``start`` past the warm-up in an indexed container, the frame FFmpeg seeks to
    at least :data:`_SEEK_WARMUP_SECONDS` before ``start``.

    A frame's timestamp less the stream's origin places its first sample: to the
    timestamp's tick (a sample in MP4, 1 ms in Matroska / WebM / ASF). The origin is the
    second frame's timestamp less the first frame's samples, where a whole decode's second
    frame starts (the first is cut by the codec's priming: AAC's 1024 or 2112 samples,
    Opus's pre-skip). A seek that fails or lands past the warm-up decodes from the start.
    """
    warmup = math.ceil(_SEEK_WARMUP_SECONDS * rate)
    ticks = stream.time_base
    if start <= 2 * warmup or not ticks or container.format.name in _UNINDEXED_AUDIO:
        return 0, container.decode(stream)
    frames = container.decode(stream)
    head = list(itertools.islice(frames, 2))
    if len(head) < 2 or head[1].pts is None:
        return 0, itertools.chain(head, frames)
    samples_per_tick = ticks * rate
    origin = head[1].pts * samples_per_tick - head[0].samples  # in samples
    with contextlib.suppress(*FFMPEG_ERRORS):
        target = math.floor((start - warmup + origin) / samples_per_tick)
        container.seek(target, stream=stream, backward=True)
        frames = container.decode(stream)
        landed = next(frames, None)
        if landed is not None and landed.pts is not None:
            first = round(landed.pts * samples_per_tick - origin)
            if 0 <= first <= start - warmup:
                return first, itertools.chain([landed], frames)
    container.seek(0)  # from the start after all
    return 0, container.decode(stream)


def save_audio(
    path: str | os.PathLike[str],
    waveform: Tensor | np.ndarray,
    sample_rate: int,
    subtype: str | None = None,
) -> Path:
    """Write ``(channels, samples)`` (or ``(samples,)`` for mono) float audio as a file.

    The format follows the extension: ``.wav``, ``.flac``, ``.ogg`` (Vorbis), ``.opus``
    (Opus in Ogg), ``.mp3``, ``.aiff`` / ``.aif``, ``.au``, ``.caf``, ``.w64``, ``.rf64``
    (libsndfile; ``subtype`` defaults to 16-bit PCM where the format has it); ``.m4a`` /
    ``.m4b`` (``subtype`` ``"AAC"``, the default, or ``"ALAC"``), ``.aac`` (ADTS AAC),
    ``.mka`` (``"FLAC"``, the default, ``"PCM_16"``, ``"OPUS"`` or ``"AAC"``) and ``.weba``
    (WebM Opus) through FFmpeg (PyAV). Opus takes 8, 12, 16, 24 or 48 kHz only, Vorbis up
    to 200 kHz. Values are clipped to [-1, 1] first, so loud samples saturate instead of
    wrapping around. ``~`` is expanded; the file is written under a temporary name and
    renamed, so a failed write leaves any previous file at ``path`` as it was.

    Raises:
        TypeError: the waveform is not a float tensor or array.
        ValueError: the waveform has the wrong shape (no samples, or more channels than
            :attr:`MediaLimits.max_audio_channels`, as a ``(samples, channels)`` array
            has) or holds NaN/Inf, or ``sample_rate`` is not a whole number of Hz from 1 to
            2**31 - 1.
        MediaError: the extension or subtype is unknown, the folder does not exist, or the
            file cannot be written.
    """
    p = output_path(path, "audio")
    wav = float_media(waveform, p, "waveform", "int16 samples: x / 32768").to("cpu", torch.float32)
    if wav.ndim == 1:
        wav = wav.unsqueeze(0)
    if wav.ndim != 2 or min(wav.shape) < 1:
        raise ValueError(
            f"save_audio expects (channels, samples) with at least one sample, got "
            f"{tuple(waveform.shape)}"
        )
    if wav.shape[0] > DEFAULT_LIMITS.max_audio_channels:
        raise ValueError(
            f"refusing to write {p}: {wav.shape[0]} channels of {wav.shape[1]} samples "
            f"(more than {DEFAULT_LIMITS.max_audio_channels}, which load_audio refuses); "
            "save_audio takes (channels, samples): pass waveform.T for (samples, channels)"
        )
    rate = _sample_rate(p, sample_rate)
    if not torch.isfinite(wav).all():
        raise ValueError(f"refusing to write {p}: the waveform contains NaN or Inf")
    fmt = check_audio_extension(p)
    data = wav.clamp(-1.0, 1.0).T.numpy()  # (S, C)
    if fmt is None:
        _save_with_ffmpeg(p, data, rate, subtype)
        return p
    default = _WRITABLE.get(p.suffix.lower(), (fmt, None))[1]
    if subtype is None:
        subtype = default or ("PCM_16" if sf.check_format(fmt, "PCM_16") else None)
    name = (subtype or sf.default_subtype(fmt) or fmt).upper()
    if data.shape[1] > _SF_MAX_CHANNELS.get(fmt, data.shape[1]):  # libsndfile: "not recognised"
        raise MediaError(
            p,
            f"{p.suffix} takes at most {_SF_MAX_CHANNELS[fmt]} channels, not {data.shape[1]}; "
            "downmix first, or write .wav",
        )
    if name == "VORBIS" and rate > _VORBIS_MAX_RATE:  # libsndfile crashes the process
        raise MediaError(
            p, f"Vorbis takes up to {_VORBIS_MAX_RATE} Hz, not {rate} Hz; resample first"
        )
    try:
        with atomic_output(p) as tmp:
            sf.write(_sf_path(tmp), data, rate, subtype=subtype, format=fmt)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        raise MediaError(
            p,
            f"cannot write {name} audio of {data.shape[1]} channels at {rate} Hz "
            f"({_sf_detail(err)})",
        ) from err
    return p


def check_audio_extension(path: Path) -> str | None:
    """The libsndfile format :func:`save_audio` writes ``path`` in (None: through FFmpeg).

    Raises:
        MediaError: it writes no audio with that extension.
    """
    if path.suffix.lower() in _FFMPEG_WRITABLE:
        return None
    formats = sf.available_formats()
    fmt = _WRITABLE.get(path.suffix.lower(), (path.suffix.lstrip(".").upper(), None))[0]
    if fmt not in formats:
        writable = ", ".join(
            [ext for ext, (f, _) in _WRITABLE.items() if f in formats] + list(_FFMPEG_WRITABLE)
        )
        raise MediaError(
            path,
            f"cannot write audio with the extension {path.suffix or '(none)'!r}: the writable "
            f"extensions are {writable}",
        )
    return fmt


#: Sample rates save_audio takes: a C ``int`` in libsndfile and FFmpeg.
_MAX_RATE = 2**31 - 1
#: Channel counts of the libsndfile formats that take only a few.
_SF_MAX_CHANNELS = {"MP3": 2, "FLAC": 8}
#: libvorbis has no encoder setup above this rate, and libsndfile 1.2 segfaults there.
_VORBIS_MAX_RATE = 200_000


def _sample_rate(p: Path, sample_rate: float) -> int:
    """``sample_rate`` as an int, or ValueError naming ``p``: a whole number of Hz from 1 to
    :data:`_MAX_RATE` (44100.0 is taken; 44100.5 is refused, not truncated)."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate.is_integer() and 1 <= rate <= _MAX_RATE):
        raise ValueError(
            f"refusing to write {p}: sample_rate must be a whole number of Hz from 1 to "
            f"{_MAX_RATE}, got {sample_rate!r}"
        )
    return int(rate)


# Extensions save_audio writes: (libsndfile format, default subtype or None for
# 16-bit PCM where the format has it, else libsndfile's default: Vorbis for Ogg).
_WRITABLE: dict[str, tuple[str, str | None]] = {
    ".wav": ("WAV", None),
    ".flac": ("FLAC", None),
    ".ogg": ("OGG", None),
    ".oga": ("OGG", None),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", None),
    ".aiff": ("AIFF", None),
    ".aif": ("AIFF", None),
    ".aifc": ("AIFF", None),
    ".au": ("AU", None),
    ".snd": ("AU", None),
    ".caf": ("CAF", None),
    ".w64": ("W64", None),
    ".rf64": ("RF64", None),
}


# Extensions save_audio writes through FFmpeg: (muxer, {subtype: (encoder, sample format)}),
# the first subtype the default.
# Frames go in interleaved ("s16": 16-bit, scaled as libsndfile scales PCM_16; "flt") and
# PyAV converts them to the encoder's layout: its from_ndarray of 8 planar channels fails.
_AAC = {"AAC": ("aac", "flt")}
_OPUS = {"OPUS": ("libopus", "flt")}
_MP4 = ("ipod", {**_AAC, "ALAC": ("alac", "s16")})
_FFMPEG_WRITABLE: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    ".m4a": _MP4,
    ".m4b": _MP4,
    ".aac": ("adts", _AAC),
    ".mka": (
        "matroska",
        {"FLAC": ("flac", "s16"), "PCM_16": ("pcm_s16le", "s16"), **_OPUS, **_AAC},
    ),
    ".weba": ("webm", _OPUS),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# FFmpeg's default layout for each channel count, and the encoders that take another.
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_ENCODER_LAYOUTS = {
    "alac": {3: "3.0", 7: "6.1(back)", 8: "7.1(wide)"},
    "libopus": {3: "3.0", 4: "quad"},
}


def _save_with_ffmpeg(p: Path, data: np.ndarray, rate: int, subtype: str | None) -> None:
    """Write ``(S, C)`` samples in [-1, 1] as :data:`_FFMPEG_WRITABLE` says (PyAV), in
    frames of 4096 samples (PCM and FLAC packets stay small, so the file seeks finely)."""
    muxer, encoders = _FFMPEG_WRITABLE[p.suffix.lower()]
    name = (subtype or next(iter(encoders))).upper()
    if name not in encoders:
        raise MediaError(
            p, f"cannot write {p.suffix} as {subtype!r}: the subtypes are {', '.join(encoders)}"
        )
    encoder, sample_format = encoders[name]
    if encoder == "libopus" and rate not in _OPUS_RATES:
        raise MediaError(
            p,
            f"Opus takes {', '.join(map(str, _OPUS_RATES))} Hz only, not {rate} Hz; resample first",
        )
    layout = _ENCODER_LAYOUTS.get(encoder, {}).get(data.shape[1], _LAYOUTS.get(data.shape[1]))
    if layout is None:
        raise MediaError(p, f"FFmpeg formats take 1 to 8 channels here, not {data.shape[1]}")
    try:
        with atomic_output(p) as tmp, av.open(str(tmp), "w", format=muxer) as container:
            stream = container.add_stream(encoder, rate=rate, layout=layout)
            for first in range(0, len(data), 4096):
                part = data[first : first + 4096]
                if sample_format == "s16":
                    part = np.round(part * 32767).astype(np.int16)
                array = np.ascontiguousarray(part).reshape(1, -1)  # interleaved (1, S * C)
                frame = av.AudioFrame.from_ndarray(array, format=sample_format, layout=layout)
                frame.sample_rate, frame.pts = rate, first
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except FFMPEG_ERRORS as err:
        raise MediaError(
            p,
            f"cannot write {name} audio of {data.shape[1]} channels at {rate} Hz "
            f"({ffmpeg_detail(err)})",
        ) from err


def _check_finite(p: Path, waveform: Tensor, start: int = 0) -> None:
    """Refuse NaN / Inf in ``(C, S)`` samples that begin at the file's sample ``start``."""
    finite = torch.isfinite(waveform)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = start + int((~finite).any(dim=0).nonzero()[0, 0])
        raise MediaError(
            p,
            f"contains {bad} NaN or Inf samples (first at sample {first}); "
            "the file holds invalid float data",
        )


def _sf_path(p: Path) -> str | bytes:
    """``p`` as soundfile should get it: on POSIX the name's bytes (soundfile encodes a str
    with the file-system encoding, which fails on a name that is not valid UTF-8)."""
    return str(p) if sys.platform == "win32" else os.fsencode(p)


def _sf_detail(err: BaseException) -> str:
    text = str(err).strip()
    # soundfile's messages repeat the path ("Error opening '/x/y.wav': ..."); keep the rest.
    text = re.sub(r"^(Error opening b?(['\"]).*?\2:\s*)?(Error\s*:\s*)?", "", text)
    return text.rstrip(".") or "soundfile does not recognise the format"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
