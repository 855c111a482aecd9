"""File-level encode / decode: media files in, token files out, and back.

Used by the CLI and by dataset jobs. A bad file never stops a batch job: it is reported as an
:class:`ItemFailure` and everything else is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from anytok.codecs.base import AudioTokenizer, ImageTokenizer, Tokenizer, VideoTokenizer
from anytok.codecs.long_audio import UnsupportedModelError
from anytok.media import (
    MediaError,
    audio_duration,
    find_media,
    iter_audio,
    iter_video,
    load_audio,
    load_image,
    load_video,
    other_media_note,
    resize_cover,
    save_audio,
    save_image,
    save_video,
    video_duration,
    walk_files,
)
from anytok.tokens import Tokens

TOKEN_SUFFIXES = (".tokens.safetensors", ".tokens.npz")
OUTPUT_EXTENSION = {"audio": ".wav", "image": ".png", "video": ".mp4"}


@dataclass
class ItemFailure:
    """A file that could not be processed, and why (one line for people)."""

    path: Path
    error: str


@dataclass
class JobReport:
    """What a batch job did."""

    written: list[Path] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    tokens: int = 0
    media_seconds: float = 0.0
    items: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``ok``, ``items``, ``tokens``, ``media_seconds``, ``elapsed``,
        ``written`` (paths) and ``failures`` (``{"path", "error"}`` each)."""
        return {
            "ok": self.ok,
            "items": self.items,
            "tokens": self.tokens,
            "media_seconds": self.media_seconds,
            "elapsed": self.elapsed,
            "written": [str(p) for p in self.written],
            "failures": [{"path": str(f.path), "error": f.error} for f in self.failures],
        }


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA (the default for encoders/decoders), nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@dataclass(frozen=True)
class InputFormat:
    """What a tokenizer expects at its input, without the model: data-loading workers (torch
    DataLoader, Ray tasks) carry this small value instead of a copy of the weights.

    Attributes:
        modality: ``"audio"``, ``"image"`` or ``"video"``.
        sample_rate, channels: audio input rate and channel count.
        resolution: ``(height, width)`` of images and video frames.
        fps: video frame rate.
        resize: ``"cover_crop"`` or ``"native"`` (:attr:`anytok.tokens.TokenSpec.resize`).
        multiple: spatial stride the native size is cropped to a multiple of.
    """

    modality: str
    sample_rate: int | None = None
    channels: int | None = None
    resolution: tuple[int, int] | None = None
    fps: float | None = None
    resize: str = "cover_crop"
    multiple: int = 1


def input_format(model: Tokenizer) -> InputFormat:
    """The :class:`InputFormat` of a tokenizer."""
    if isinstance(model, AudioTokenizer):
        return InputFormat("audio", sample_rate=model.sample_rate, channels=model.channels)
    if isinstance(model, ImageTokenizer):
        return InputFormat(
            "image",
            resolution=tuple(model.resolution),
            resize=model.resize,
            multiple=model.downsample_factor,
        )
    if isinstance(model, VideoTokenizer):
        return InputFormat(
            "video",
            resolution=tuple(model.resolution),
            fps=model.fps,
            resize=model.resize,
            multiple=model.spatial_factor,
        )
    raise TypeError(f"unsupported tokenizer type {type(model).__name__}")


def load_input(fmt: InputFormat, path: Path, max_steps: int | None = None) -> Tensor:
    """Load one file in ``fmt``: audio ``(C, S)`` at its rate and channels, an image
    ``(3, H, W)`` at its resolution, a video ``(3, T, H, W)`` at its fps and size.

    ``max_steps``: keep at most this many samples / frames from the start, and decode no
    further where the format allows (libsndfile audio reads only them; video decoding
    stops); the same values as loading all and cutting. Images ignore it.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if fmt.modality == "audio":
        duration = None if max_steps is None else max_steps / fmt.sample_rate
        return load_audio(
            path, sample_rate=fmt.sample_rate, channels=fmt.channels, duration=duration
        ).waveform
    if fmt.modality == "image":
        return _fit(load_image(path).image, fmt, path)
    if fmt.modality == "video":
        if fmt.resize == "cover_crop":
            # Each frame is resized as it is decoded: a full-size float copy of a 1080p clip
            # takes 25 MB a frame (7.5 GB for 10 s at 30 fps).
            return load_video(path, fps=fmt.fps, size=fmt.resolution, max_frames=max_steps).video
        return _fit_clip(load_video(path, fps=fmt.fps, max_frames=max_steps).video, fmt, path)
    raise ValueError(f"unsupported modality {fmt.modality!r}")


def iter_input(fmt: InputFormat, path: Path, chunk_steps: int) -> Iterator[Tensor]:
    """:func:`load_input`'s result as consecutive chunks of ``chunk_steps`` samples / frames
    (the last may be shorter), read piece by piece so memory holds one chunk: audio through
    :func:`~anytok.media.iter_audio` (window by window where the header states the length),
    video in one decoding pass through :func:`~anytok.media.iter_video`. An image is one
    chunk. Errors come when reading reaches them (a caller keeping chunks drops them then).
    """
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    if fmt.modality == "audio":
        return iter_audio(path, chunk_steps, fmt.sample_rate, fmt.channels)
    if fmt.modality == "video":
        if fmt.resize == "cover_crop":
            return iter_video(path, chunk_steps, fps=fmt.fps, size=fmt.resolution)
        return (_fit_clip(c, fmt, path) for c in iter_video(path, chunk_steps, fps=fmt.fps))
    return iter([load_input(fmt, path)])


def _fit_clip(video: Tensor, fmt: InputFormat, path: Path) -> Tensor:
    """:func:`_fit` of a clip ``(3, T, H, W)``, frame by frame."""
    return _fit(video.transpose(0, 1), fmt, path).transpose(0, 1).contiguous()


def _fit(x: Tensor, fmt: InputFormat, path: Path) -> Tensor:
    """Apply ``fmt.resize`` to ``(..., H, W)``: cover-and-crop to the resolution, or crop the
    centre to the largest multiple of ``fmt.multiple`` (native size)."""
    if fmt.resize == "cover_crop":
        return resize_cover(x, fmt.resolution)
    h, w = x.shape[-2:]
    m = fmt.multiple
    if h < m or w < m:
        raise MediaError(path, f"is {w}x{h} pixels, smaller than the tokenizer's stride {m}")
    return TF.center_crop(x, [h - h % m, w - w % m])


def load_for_model(model: Tokenizer, path: Path) -> Tensor:
    """Load one file as the model expects it: audio ``(C, S)`` at its rate and channels,
    an image ``(3, H, W)`` at its resolution, a video ``(3, T, H, W)`` at its fps and size."""
    return load_input(input_format(model), path)


def collate(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack items of different lengths along their first axis after channels, padding at
    the end: returns the batch and ``(batch,)`` lengths. Audio pads with zeros, video by
    repeating the last frame (what the tokenizer itself does)."""
    lengths = torch.tensor([item.shape[1] if item.ndim > 1 else 0 for item in items])
    if items[0].ndim == 3:  # images: all the same size
        return torch.stack(list(items)), lengths
    longest = int(lengths.max())
    padded = []
    for item in items:
        missing = longest - item.shape[1]
        if item.ndim == 2:
            padded.append(F.pad(item, (0, missing)))
        else:
            tail = item[:, -1:].expand(-1, missing, -1, -1)
            padded.append(torch.cat([item, tail], dim=1))
    return torch.stack(padded), lengths


def relative_output(source: Path, root: Path | None) -> Path:
    """Where ``source`` lands under an output folder: its path relative to the input folder
    ``root`` it was found in (the tree is mirrored), or its name when named directly."""
    return Path(source.name) if root is None else source.relative_to(root)


def token_path(source: Path, root: Path | None, out_dir: Path, fmt: str = "safetensors") -> Path:
    """``out_dir / <path relative to root> + .tokens.<fmt>``, keeping the source extension so
    ``a.wav`` and ``a.flac`` do not collide."""
    rel = relative_output(source, root)
    return out_dir / rel.parent / f"{rel.name}.tokens.{fmt}"


class OutputClaims:
    """The output paths a run has taken: a second input mapping to one of them (two inputs
    with the same relative path) is refused, so nothing is overwritten within one run."""

    def __init__(self) -> None:
        self._owner: dict[Path, Path] = {}

    def claim(self, source: Path, target: Path) -> ItemFailure | None:
        """None when ``target`` is now ``source``'s; else the failure to report for it."""
        first = self._owner.setdefault(target, source)
        if first == source:
            return None
        return ItemFailure(
            source,
            f"its output {target} is already that of {first}; name the inputs' common parent "
            "folder instead, or write them to separate output folders",
        )


def media_seconds(model: Tokenizer, item: Tensor) -> float:
    if isinstance(model, AudioTokenizer):
        return item.shape[-1] / model.sample_rate
    if isinstance(model, VideoTokenizer):
        return item.shape[1] / model.fps
    return 0.0


def _batches(seq: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


#: Items longer than this many seconds are encoded alone and in chunks (``encode_long``):
#: one pass over an hour of 24 kHz audio needs tens of GB of activations.
LONG_ITEM_SECONDS = 300.0


def encode_each(
    model: Tokenizer,
    items: Sequence[Tensor],
    device: torch.device,
    long_seconds: float | None = LONG_ITEM_SECONDS,
) -> list[Tokens | str]:
    """Encode loaded items (each without batch axis), as one batch where possible.

    Returns, per item, its :class:`Tokens` (on the CPU, padding cut) or a one-line error.
    Items longer than ``long_seconds`` (None: never) are encoded alone, through
    :func:`encode_long_item` where the model has a chunked path, so short items are never
    padded to a long one's length. One item can fail a whole batch (too long for the GPU's
    memory, a shape the model refuses): the batch is then retried item by item, so that
    only that item is lost. Used by :func:`encode_files` and by both dataset engines.
    """
    results: list[Tokens | str | None] = [None] * len(items)
    short: list[int] = []
    for i, item in enumerate(items):
        if long_seconds is None or media_seconds(model, item) <= long_seconds:
            short.append(i)
            continue
        result = encode_long_item(model, item, device)
        # No chunked path: one pass, still alone.
        results[i] = result if result is not None else _encode_batch(model, [item], device)[0]
    for i, result in zip(short, _encode_batch(model, [items[i] for i in short], device)):
        results[i] = result
    return results  # type: ignore[return-value]  # every slot is filled above


def _encode_batch(
    model: Tokenizer, items: Sequence[Tensor], device: torch.device
) -> list[Tokens | str]:
    """:func:`encode_each` for items encoded in one pass: one batch, item by item on failure."""
    if not items:
        return []
    try:
        batch, lengths = collate(items)
        with torch.inference_mode(), autocast_for(device):
            item_lengths = None if isinstance(model, ImageTokenizer) else lengths.to(device)
            tokens = model.encode(batch.to(device), item_lengths)
        return tokens.to("cpu").unbind()
    except (RuntimeError, ValueError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if len(items) == 1:
            return [_encode_error(err)]
    # Outside the handler, so the failed batch's tensors (held by the traceback) are freed.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [_encode_batch(model, [item], device)[0] for item in items]


def prepare_output_folder(path: str | os.PathLike[str], keep: bool = True) -> Path:
    """Create the output folder ``path`` (and its parents) and check that files can be
    written in it, before any work is done. ``keep=False`` removes the folders it created
    again (a check before other checks: a usage error leaves nothing behind).

    Raises:
        ValueError: ``path`` is a file, cannot be created, or is not writable (the message
            names it and the reason).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:  # no permission, a read-only filesystem, a file on the way
        what = "write into" if folder.is_dir() else "create"
        raise ValueError(f"{folder}: cannot {what} the output folder ({err.strerror})") from err
    finally:
        if not keep:
            for new_folder in created:
                with contextlib.suppress(OSError):
                    new_folder.rmdir()
    return folder


def error_text(err: BaseException) -> str:
    """``err``'s whole message (a hint or the places searched may follow its first line),
    or its type's name when it has none."""
    return str(err).strip() or type(err).__name__


def error_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def error_summary(err: BaseException) -> str:
    """``"Type: first line of the message"`` (just ``"Type"`` without a message): one line
    for a report or an errors file."""
    return type(err).__name__ + (f": {error_line(err)}" if str(err).strip() else "")


def _encode_error(err: BaseException) -> str:
    return f"encoding failed: {error_summary(err)}"


def _run_chunked(run: Callable[[Any], Any], inputs: Any, device: torch.device) -> Any:
    """``run(inputs)`` (the model's ``encode_long`` / ``decode_long``, which move one chunk at
    a time to the model's device, so ``inputs`` stay on the CPU), or None when the model
    has no chunked path that reproduces one pass (images; SNAC; video models without a
    bounded causal context)."""
    try:
        with torch.inference_mode(), autocast_for(device):
            return run(inputs)
    except UnsupportedModelError:
        return None


def encode_long_item(model: Tokenizer, item: Tensor, device: torch.device) -> Tokens | str | None:
    """One long item's :class:`Tokens` (CPU, padding cut) through the model's chunked
    ``encode_long`` (memory bounded by the chunk; the tokens of one pass for causal and
    bounded-receptive-field models, see :mod:`anytok.codecs.long_audio`), a one-line error,
    or None when the model has no chunked path, for the caller to encode it in one pass.
    """
    if not hasattr(model, "encode_long"):
        return None
    try:
        tokens = _run_chunked(model.encode_long, item.unsqueeze(0), device)
    except (RuntimeError, ValueError) as err:
        return _encode_error(err)
    return None if tokens is None else tokens.to("cpu")[0]


#: Pieces :func:`encode_long_file` reads a long file in (audio seconds / video frames).
LONG_PIECE_SECONDS = 30.0
LONG_PIECE_FRAMES = 32


def header_seconds(model: Tokenizer, path: Path) -> float | None:
    """Seconds of audio / video the file's header states (None: images, or the header
    does not say): what routes a long file to :func:`encode_long_file` before decoding."""
    if isinstance(model, AudioTokenizer):
        return audio_duration(path)
    if isinstance(model, VideoTokenizer):
        return video_duration(path)
    return None


def encode_long_file(
    model: Tokenizer, path: Path, device: torch.device
) -> tuple[Tokens, float] | str | None:
    """A long file's :class:`Tokens` (CPU, no batch axis) and media seconds, read piece by
    piece (:func:`iter_input`) into the model's ``encode_long_stream``: memory holds a chunk
    and its context, not the file, so the media limits bound a piece and files of any
    length encode; the tokens are :func:`encode_long_item`'s of the whole file. A one-line
    error when encoding fails; None when the model has no chunked path (nothing is read).

    Raises:
        MediaError: the file cannot be read (perhaps part-way through).
    """
    if not hasattr(model, "encode_long_stream"):
        return None
    fmt = input_format(model)
    if fmt.modality == "audio":
        assert fmt.sample_rate is not None
        step = max(1, round(LONG_PIECE_SECONDS * fmt.sample_rate))
    else:
        step = LONG_PIECE_FRAMES
    seconds = [0.0]

    def pieces() -> Iterator[Tensor]:
        for piece in iter_input(fmt, path, step):
            seconds[0] += media_seconds(model, piece)
            yield piece.unsqueeze(0)

    try:  # a MediaError is no ValueError: it reaches the caller
        tokens = _run_chunked(model.encode_long_stream, pieces(), device)
    except (RuntimeError, ValueError) as err:
        return _encode_error(err)
    return None if tokens is None else (tokens.to("cpu")[0], seconds[0])


def _write_tokens(tokens: Tokens, target: Path, source: Path) -> ItemFailure | None:
    """Save ``tokens`` to ``target``; the failure to report for ``source`` if it cannot."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tokens.save(target)
    except OSError as err:
        return ItemFailure(source, f"cannot write {target}: {err}")
    return None


def encode_files(
    model: Tokenizer,
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    fmt: str = "safetensors",
    recursive: bool = True,
    on_item: Callable[[Path, ItemFailure | None], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    long_seconds: float | None = LONG_ITEM_SECONDS,
) -> JobReport:
    """Encode files and folders to token files under ``out_dir``.

    Bad files are skipped and listed in the report; everything else is written.
    ``on_start`` receives the number of files found, ``on_item`` is called after each file
    (for progress bars). Files longer than ``long_seconds`` (None: never) are encoded alone
    and in bounded memory where the model has a chunked path: those whose header says so
    are read piece by piece (:func:`encode_long_file`; the media limits then bound a piece,
    so files of any length encode), others loaded whole (:func:`encode_long_item`).
    """
    if fmt not in ("safetensors", "npz"):
        raise ValueError(f"format must be 'safetensors' or 'npz', got {fmt!r}")
    out_root = Path(out_dir)
    report = JobReport()
    start = time.perf_counter()
    device = model_device(model)
    jobs: list[tuple[Path, Path | None]] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            report.failures.append(ItemFailure(root, "no such file or folder"))
            continue
        for path in find_media([root], modality=model.modality, recursive=recursive):
            jobs.append((path, root if root.is_dir() else None))
    if not jobs and not report.failures:
        report.failures.append(
            ItemFailure(
                Path(", ".join(map(str, inputs))),
                f"no {model.modality} files found{other_media_note(inputs, model.modality)}",
            )
        )
    if on_start:
        on_start(len({path for path, _ in jobs}))  # a file named twice is encoded once
    claims, targets = OutputClaims(), {}
    for path, root in jobs:
        target = token_path(path, root, out_root, fmt)
        collision = claims.claim(path, target)
        if collision is None:
            targets[path] = target
            continue
        report.failures.append(collision)
        if on_item:
            on_item(path, collision)

    def finish(path: Path, seconds: float, result: Tokens | str) -> None:
        """Write one item's tokens, or report why it has none."""
        target = targets[path]
        failure = (
            ItemFailure(path, result)
            if isinstance(result, str)
            else _write_tokens(result, target, path)
        )
        if failure is not None:
            report.failures.append(failure)
        else:
            report.written.append(target)
            report.tokens += result.codes.numel()
            report.media_seconds += seconds
            report.items += 1
        if on_item:
            on_item(path, failure)

    for batch_paths in _batches(list(targets), batch_size):
        loaded: list[tuple[Path, Tensor]] = []
        for path in batch_paths:
            try:
                seconds = None if long_seconds is None else header_seconds(model, path)
                if seconds is not None and seconds > long_seconds:
                    streamed = encode_long_file(model, path, device)
                    if streamed is not None:  # else: no chunked path, loaded whole below
                        result, seconds = (streamed, 0.0) if isinstance(streamed, str) else streamed
                        finish(path, seconds, result)
                        continue
                loaded.append((path, load_for_model(model, path)))
            except MediaError as err:
                failure = ItemFailure(path, err.problem)
                report.failures.append(failure)
                if on_item:
                    on_item(path, failure)
        # Native-size images / frames of different sizes cannot share a batch: one batch per size.
        groups: dict[tuple[int, ...], list[tuple[Path, Tensor]]] = {}
        for path, item in loaded:
            key = tuple(item.shape[-2:]) if model.modality != "audio" else ()
            groups.setdefault(key, []).append((path, item))
        for group in groups.values():
            results = encode_each(model, [item for _, item in group], device, long_seconds)
            for (path, item), result in zip(group, results):
                finish(path, media_seconds(model, item), result)
    report.elapsed = time.perf_counter() - start
    return report


def token_jobs(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path | None]]:
    """``(token file, input folder or None)``: files named directly, or found recursively in
    folders by :func:`anytok.media.walk_files` (sorted per folder, links to folders followed,
    hidden files skipped, as ``encode`` finds media), each with the folder its output path is
    relative to."""
    found: list[tuple[Path, Path | None]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found += [(p, path) for p in walk_files(path) if p.name.endswith(TOKEN_SUFFIXES)]
        else:
            found.append((path, None))
    seen: set[str] = set()  # a file named twice (or in two folders given) is decoded once
    unique = []
    for path, root in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, root))
    return unique


def media_path_for(
    token_file: Path,
    out_dir: Path,
    modality: str,
    root: Path | None = None,
    keep_extension: bool = False,
) -> Path:
    """Where ``decode`` writes the media of ``token_file``: the token tree under ``root``
    mirrored, each name without its token suffix and with the modality's extension
    (``spk1/a.wav.tokens.safetensors`` -> ``spk1/a.wav``). With ``keep_extension`` the
    source's own extension stays in the name when it is another one
    (``a.flac.tokens.safetensors`` -> ``a.flac.wav``): see :func:`crowded_token_files`."""
    rel = relative_output(token_file, root)
    name = _strip_token_suffix(rel.name)
    extension = OUTPUT_EXTENSION[modality]
    if keep_extension and Path(name).suffix and Path(name).suffix.lower() != extension:
        return out_dir / rel.parent / f"{name}{extension}"
    return out_dir / rel.parent / Path(name).with_suffix(extension)


def _strip_token_suffix(name: str) -> str:
    for suffix in TOKEN_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def crowded_token_files(jobs: Sequence[tuple[Path, Path | None]]) -> set[Path]:
    """The token files of ``jobs`` (:func:`token_jobs`) whose media would share a name with
    another's once the source extension is replaced: ``song.flac`` and ``song.wav``, which
    encode keeps apart. They keep that extension (``song.flac.wav``, ``song.wav``), whatever
    order the files come in."""
    groups: dict[tuple[Path, str], set[Path]] = {}
    for token_file, root in jobs:
        rel = relative_output(token_file, root)
        stem = Path(_strip_token_suffix(rel.name)).stem
        groups.setdefault((rel.parent, stem), set()).add(token_file)
    return {path for group in groups.values() if len(group) > 1 for path in group}


def numbered(path: Path, index: int) -> Path:
    """``a/b.wav`` -> ``a/b.<index>.wav``: item ``index`` of a token file of several items."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


def check_media_path(model: Tokenizer, path: Path) -> None:
    """Refuse, before any decoding, a ``path`` whose extension :func:`save_media` cannot
    write in the model's modality (``out.mp3`` for a video tokenizer).

    Raises:
        MediaError: the writer has no format for the extension.
    """
    from anytok.media.audio import check_audio_extension
    from anytok.media.image import check_image_extension
    from anytok.media.video import check_video_extension

    if isinstance(model, AudioTokenizer):
        check_audio_extension(path)
    elif isinstance(model, ImageTokenizer):
        check_image_extension(path)
    elif isinstance(model, VideoTokenizer):
        check_video_extension(path)


def save_media(model: Tokenizer, media: Tensor, path: Path) -> None:
    """Write one decoded item (no batch axis) in the model's modality."""
    path.parent.mkdir(parents=True, exist_ok=True)
    media = media.float().clamp(-1, 1).cpu()
    if isinstance(model, AudioTokenizer):
        save_audio(path, media, model.sample_rate)
    elif isinstance(model, ImageTokenizer):
        save_image(path, media)
    elif isinstance(model, VideoTokenizer):
        save_video(path, media, model.fps)
    else:
        raise TypeError(f"unsupported tokenizer type {type(model).__name__}")


def decode_long_item(model: Tokenizer, tokens: Tokens, device: torch.device) -> Tensor | None:
    """Media of one long token file through the model's chunked ``decode_long`` (memory
    bounded by the chunk, the result of one pass up to float rounding), or None when the
    model has no chunked path."""
    if not hasattr(model, "decode_long"):
        return None
    return _run_chunked(model.decode_long, tokens, device)


def token_seconds(tokens: Tokens) -> float:
    """Seconds of media ``tokens`` stand for (0 for images: no time axis)."""
    rate = tokens.spec.frame_rate
    return tokens.codes.shape[2] / rate if rate else 0.0


def decode_files(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model_for: Callable[[Tokens], Tokenizer],
    *,
    on_item: Callable[[Path, ItemFailure | None], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    long_seconds: float | None = LONG_ITEM_SECONDS,
) -> JobReport:
    """Decode token files, or folders of them, to media files under ``out_dir``, mirroring
    each folder's tree (:func:`media_path_for`; ``song.flac`` and ``song.wav`` token files
    give ``song.flac.wav`` and ``song.wav``); bad files are reported. ``on_start``
    receives the number of token files found. Token files of more than ``long_seconds`` of
    media (None: never) are decoded by :func:`decode_long_item` where the model has a
    chunked path."""
    from anytok.registry import UnknownModelError  # the registry imports this module

    report = JobReport()
    start = time.perf_counter()
    claims = OutputClaims()
    jobs = token_jobs(inputs)
    crowded = crowded_token_files(jobs)
    if on_start:
        on_start(len(jobs))
    for path, root in jobs:
        try:
            tokens = Tokens.load(path)
            modality = tokens.spec.modality
            target = media_path_for(path, Path(out_dir), modality, root, path in crowded)
            # A file of several items (a saved batch) gives one media file per item, numbered
            # ``name.<i>.wav``; every item is cut to its valid length.
            items = tokens.unbind()
            targets = (
                [target] if len(items) == 1 else [numbered(target, i) for i in range(len(items))]
            )
            collision = next(
                (c for c in (claims.claim(path, t) for t in targets) if c is not None), None
            )
            if collision is not None:
                report.failures.append(collision)
                if on_item:
                    on_item(path, collision)
                continue
            model = model_for(tokens)
            device = model_device(model)
            for item, item_target in zip(items, targets, strict=True):
                media = None
                if long_seconds is not None and token_seconds(item) > long_seconds:
                    media = decode_long_item(model, item, device)
                if media is None:
                    with torch.inference_mode(), autocast_for(device):
                        media = model.decode(item.to(device))
                save_media(model, media[0], item_target)
        except (ValueError, RuntimeError, OSError, MediaError, UnknownModelError) as err:
            # (RuntimeError: out of memory too; UnknownModelError: a file naming a tokenizer
            # this install lacks must not stop the others)
            failure = ItemFailure(path, error_text(err))
            report.failures.append(failure)
            if on_item:
                on_item(path, failure)
            continue
        report.written.extend(targets)
        report.items += 1
        report.tokens += sum(item.codes.numel() for item in items)
        report.media_seconds += sum(token_seconds(item) for item in items)
        if on_item:
            on_item(path, None)
    report.elapsed = time.perf_counter() - start
    return report
