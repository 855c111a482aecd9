"""Long audio, streaming and variable-length batches for every :class:`AudioTokenizer`.

Three tools, one guarantee each:

**Streaming** (:func:`stream_encoder`, :func:`stream_decoder`; causal models). The encoder
runs chunk by chunk with its state carried between chunks (causal conv buffers, transposed
conv overlap-add tails, LSTM hidden state; see :mod:`anytok.nn.streaming`). Input is cut
into whole hops internally, and :meth:`AudioEncoderStream.flush` zero-pads the last partial
hop exactly as :meth:`AudioTokenizer.pad_input` does, so the concatenated codes of a stream
are the codes of one ``encode`` call over the whole signal, whatever the chunk sizes, and
the decoder stream's concatenated samples are one ``decode`` call's. "Equal" means: the
same arithmetic on the same samples, grouped differently, so latents and audio agree to
float rounding (~1e-6) and codes are identical unless a latent lies within rounding of a
boundary between two codewords. While a stream is open the network's ordinary calls are
stream steps: do not call ``encode`` inside the ``with`` block.

**Long files** (:func:`encode_long`, :func:`decode_long`). Memory is bounded by the chunk,
not the file. Causal models stream (above), so tokens equal one pass exactly as above.
Non-causal models encode windows of ``chunk`` frames with ``context`` frames of real audio
on each side and keep the middle; the context is the model's measured *receptive field*
(:func:`measure_context`), so every kept frame sees exactly the samples, and the same
padding, that it sees in one pass: the same guarantee again. Where the receptive field is
unbounded (a recurrence in a non-causal model, GroupNorm or attention over time), no finite
context gives one-pass tokens: ``context_seconds`` (default
:data:`DEFAULT_UNBOUNDED_CONTEXT_SECONDS`) is used, and codes and audio are approximate
everywhere, not only near chunk boundaries (a norm or attention over time sees the whole
window). The rounding figures above are fp32's; under bf16 autocast each chunk rounds on its
own (tiny models: audio 2e-3 to 4e-3 off one pass). Audio of 0 samples is refused as
``encode`` refuses it; 0 frames decode to what ``decode`` gives (silence).

**Batches of different lengths** (:func:`apply_per_length`). Non-causal families run their
encoder (and decoder) once per distinct padded length, each item cropped to its own length,
so a batch gives every item the tokens (and audio) it gets alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.nn.streaming import Stream, check_streamable, streaming
from anytok.registry import RUN_DTYPES
from anytok.tokens import Tokens, TokenSpec

if TYPE_CHECKING:
    from anytok.codecs.base import AudioTokenizer

#: Context on each side of a chunk when a model's receptive field is unbounded.
DEFAULT_UNBOUNDED_CONTEXT_SECONDS = 2.0
#: Probe sizes (in frames) tried when measuring a receptive field; past the last one a
#: receptive field counts as unbounded.
_PROBE_FRAMES = (32, 128, 512)
#: Modules that make every output depend on the whole time axis.
_GLOBAL_IN_TIME = (nn.GroupNorm, nn.InstanceNorm1d, nn.MultiheadAttention)


# --------------------------------------------------------------------------- receptive field


@dataclass(frozen=True)
class Context:
    """Frames of context one output window needs, measured in hops.

    For the encoder: code frame ``t`` depends on input samples of hop windows
    ``t - left .. t + right`` only. For the decoder: output samples of hop window ``u``
    depend on code frames ``u - left .. u + right`` only. ``None``: unbounded on that side.
    """

    left: int | None
    right: int | None

    @property
    def bounded(self) -> bool:
        return self.left is not None and self.right is not None


Perturb = Callable[[Tensor, slice], Tensor]


def _add_noise(x: Tensor, where: slice) -> Tensor:
    changed = x.clone()
    changed[..., where] = changed[..., where] + torch.randn_like(changed[..., where])
    return changed


def _influence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    centre: int,
    in_unit: int,
    out_unit: int,
    perturb: Perturb,
) -> tuple[int, int] | None:
    """Output windows (of ``out_unit`` steps) that change when input window ``centre`` (of
    ``in_unit`` steps) of ``x`` changes; ``None`` if nothing changed."""
    base = fn(x)
    changed = fn(perturb(x, slice(centre * in_unit, (centre + 1) * in_unit)))
    diff = (changed != base).flatten(0, -2).any(0).nonzero().flatten()
    if diff.numel() == 0:
        return None
    return int(diff.min()) // out_unit, int(diff.max()) // out_unit


def measure_context(
    fn: Callable[[Tensor], Tensor],
    make_input: Callable[[int], Tensor],
    in_unit: int,
    out_unit: int,
    *,
    modules: Sequence[nn.Module] | None = None,
    perturb: Perturb = _add_noise,
) -> Context:
    """Measure the context of a translation-equivariant network by perturbation.

    Changes the centre window of a random probe and sees which output windows change; the
    probe grows while the change reaches its edges. Exact for convolutional stacks (any
    padding, dilation, stride) whatever the weights. Recurrences and layers that normalise
    or attend over time are recognised by type in ``modules`` and reported unbounded on the
    sides they reach (finite differences through an LSTM can round to zero far away).

    Args:
        fn: maps ``(1, channels, n * in_unit)`` to ``(1, channels', n * out_unit)`` (a module,
            or e.g. ``model.decode`` over codes).
        make_input: ``n -> (1, channels, n * in_unit)`` probe of ``n`` windows.
        in_unit / out_unit: steps per window at the input / output (hop and 1 for an
            encoder over samples, 1 and hop for a decoder over frames).
        modules: the layers ``fn`` runs (default: ``fn``'s own, if it is a module); their
            kinds mark unbounded contexts, and they are put in eval mode while probing.
        perturb: ``(x, window) -> x`` with that window changed (default: add noise).
    """
    if modules is None:
        modules = list(fn.modules()) if isinstance(fn, nn.Module) else []
    if any(isinstance(m, _GLOBAL_IN_TIME) for m in modules):
        return Context(None, None)
    recurrent = any(isinstance(m, nn.RNNBase) for m in modules)
    modes = [(m, m.training) for m in modules]
    for m, _ in modes:
        m.training = False
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for frames in _PROBE_FRAMES:
                centre = frames // 2
                span = _influence(fn, make_input(frames), centre, in_unit, out_unit, perturb)
                if span is None:  # the output ignores its input (e.g. a zeroed layer)
                    return Context(0, 0)
                lo, hi = span
                reaches_start, reaches_end = lo <= 0, hi >= frames - 1
                # Touching the probe's edges means the influence may reach farther.
                if not reaches_start and (recurrent or not reaches_end):
                    break
            left = None if (recurrent or reaches_end) else hi - centre
            right = None if reaches_start else centre - lo
            if (left is not None and left < 0) or (right is not None and right < 0):
                raise ValueError(
                    "measure_context: the output does not follow the input in time "
                    f"(influence {lo}..{hi} of window {centre}); units wrong?"
                )
            return Context(left, right)
    finally:
        for m, training in modes:
            m.training = training


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


@contextmanager
def autocast_to_weights(model: nn.Module, what: str) -> Iterator[None]:
    """Run the block under autocast to the weights' dtype when they are bf16 / fp16.

    A model loaded with ``anytok.load(..., dtype=torch.bfloat16)`` (or cast with ``.to``)
    keeps fp32 where it must: quantizers return fp32 latents, samplers and positional tables
    build fp32 tensors. Fed straight into bf16 layers those fail on mixed dtypes; under
    autocast every layer casts its inputs instead. Inside an autocast the caller opened,
    nothing changes. Other weight dtypes (fp64) are refused naming ``what``: autocast has
    none, and the fp32 tensors would meet fp64 layers.
    """
    device, dtype = _device_and_dtype(model)
    if dtype not in RUN_DTYPES:
        raise TypeError(
            f"{type(model).__name__}.{what}: weights are {dtype}; tokenizers run in float32, "
            "bfloat16 or float16 (model.float(), or anytok.load(..., dtype=torch.bfloat16))"
        )
    if dtype in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, dtype=dtype):
            yield
    else:
        yield


class UnsupportedModelError(NotImplementedError):
    """A tokenizer with no chunked path that reproduces its one pass: audio codes that are
    not one frame per hop of one encoder latent frame (SNAC), or a video model without a
    bounded causal context (:class:`~anytok.codecs.long_video.NoBoundedContextError`)."""


class NoChunkedPathError(UnsupportedModelError, ValueError):
    """A tokenizer that only works on whole inputs (global attention over an utterance:
    TaDiCodec): no chunked path exists, and callers such as ``anytok encode`` fall back to one
    pass. A ValueError too, as before it was an :class:`UnsupportedModelError`."""


def _check_frame_per_hop(model: AudioTokenizer) -> None:
    hop = model.hop_length
    device, dtype = _device_and_dtype(model)
    encoder = getattr(model, "encoder", None)
    frames = None
    if encoder is not None:
        with torch.inference_mode():
            probe = torch.zeros(1, model.channels, 4 * hop, device=device, dtype=dtype)
            frames = encoder(probe).shape[-1]
    if frames != 4:
        raise UnsupportedModelError(
            f"{type(model).__name__}: long-audio chunking needs an `encoder` module giving one "
            f"latent frame per hop ({hop} samples); "
            + ("there is none" if frames is None else f"it gives {frames / 4:g} per hop")
            + ". Encode shorter pieces with encode(), or give the family its own encode_long"
        )


def receptive_field(model: AudioTokenizer) -> dict[str, Context]:
    """``{"encoder": Context, "decoder": Context}`` of a model, measured once and cached on
    the model (it depends on the architecture, not the weights).

    The encoder's is measured on ``model.encoder`` (latent frames per hop window of audio);
    the decoder's on ``model.decode`` itself, by changing one frame's codes to other valid
    codes (output hop windows per code frame).

    Raises:
        UnsupportedModelError: the encoder does not give one latent frame per hop.
    """
    cached = getattr(model, "_anytok_context", None)
    if cached is not None:
        return cached
    _check_frame_per_hop(model)
    hop = model.hop_length
    device, dtype = _device_and_dtype(model)

    def audio(frames: int) -> Tensor:
        return 0.1 * torch.randn(1, model.channels, frames * hop, device=device, dtype=dtype)

    encoder_modules = list(model.encoder.modules())
    encoder = measure_context(model.encoder, audio, hop, 1, modules=encoder_modules)
    sizes = torch.tensor(model.spec.codebook_sizes, device=device).view(1, -1, 1)

    def codes(frames: int) -> Tensor:
        return (torch.rand(1, sizes.shape[1], frames, device=device) * sizes).long()

    def other_codes(x: Tensor, where: slice) -> Tensor:
        changed = x.clone()
        window = changed[..., where]
        changed[..., where] = (
            window + 1 + (torch.rand_like(window.float()) * (sizes - 1)).long()
        ) % sizes
        return changed

    in_encoder = {id(m) for m in encoder_modules}
    decoder_modules = [m for m in model.modules() if id(m) not in in_encoder and m is not model]
    decoder = measure_context(
        model.decode, codes, 1, hop, modules=decoder_modules, perturb=other_codes
    )
    result = {"encoder": encoder, "decoder": decoder}
    model._anytok_context = result  # plain attribute: not a buffer, not saved
    return result


def is_streamable(model: AudioTokenizer) -> bool:
    """True when ``model`` is causal and its encoder and decoder can stream."""
    if not getattr(model, "causal", False):
        return False
    try:
        check_streamable(model.encoder)
        check_streamable(model.decoder)
    except (ValueError, AttributeError):
        return False
    return True


# --------------------------------------------------------------------------- streaming


class AudioEncoderStream:
    """Audio chunks of any length in, the code frames they complete out.

    ``stream(chunk)`` with ``chunk (b, channels, n)`` returns codes ``(b, levels, k)``
    (``k`` may be 0); ``stream.flush()`` ends the signal. See the module docs for the
    guarantee. ``spec`` describes the codes.
    """

    def __init__(self, model: AudioTokenizer, encoder: Stream, **encode_kwargs: Any):
        self.model = model
        self._encoder = encoder
        self._kwargs = encode_kwargs
        self._pending: Tensor | None = None
        self._last: Tensor | None = None
        self._levels: int | None = None

    @property
    def spec(self) -> TokenSpec:
        """The :class:`TokenSpec` of the codes (known once a chunk has been given)."""
        if self._levels is None:
            raise RuntimeError("AudioEncoderStream.spec: give a chunk first")
        return self.model.spec_with_levels(self._levels)

    def __call__(self, chunk: Tensor) -> Tensor:
        model = self.model
        chunk = model._check_media(chunk, 3, "audio chunk (batch, channels, samples)")
        if chunk.shape[1] != model.channels:
            raise ValueError(
                f"{type(model).__name__} stream: expects {model.channels} channel(s), "
                f"got {chunk.shape[1]}"
            )
        self._last = chunk
        pending = chunk if self._pending is None else torch.cat([self._pending, chunk], -1)
        whole = pending.shape[-1] // model.hop_length * model.hop_length
        self._pending = pending[..., whole:]
        with autocast_to_weights(model, "stream_encoder"):  # as encode runs
            return self._codes(self._encoder(pending[..., :whole]))

    def flush(self) -> Tensor:
        """End the last partial hop as ``encode`` does (zero-padded to a whole hop, or as is
        for a model that :attr:`~AudioTokenizer.encodes_exact_lengths`: its layers pad the
        last window at the stream's end) and return the last codes."""
        if self._last is None:
            raise RuntimeError("AudioEncoderStream.flush: no audio was given")
        parts = []
        with autocast_to_weights(self.model, "stream_encoder"):
            if self._pending is not None and self._pending.shape[-1]:
                tail = self._pending
                if not self.model.encodes_exact_lengths:
                    tail = F.pad(tail, (0, self.model.hop_length - tail.shape[-1]))
                parts.append(self._encoder(tail))
            parts.append(self._encoder.flush(self._last))
            return self._codes(torch.cat(parts, dim=-1))

    def _codes(self, latent: Tensor) -> Tensor:
        codes = self.model.codes_from_latent(latent, **self._kwargs)
        self._levels = codes.shape[1]
        return codes


#: An item's end while it has none (its samples are all valid so far).
_NO_END = torch.iinfo(torch.long).max


class AudioDecoderStream:
    """Code frames in, audio out: ``stream(codes (b, levels, k)) -> (b, channels, m)``;
    ``stream.flush()`` returns the rest. The concatenation equals one ``decode`` call.

    :class:`Tokens` with ``lengths`` count the valid frames of the codes given in that call:
    an item ends at the first call where its length is below the call's frames, and every
    sample from there on (in this call, later calls and the flush) is zero, as ``decode``
    zeros samples past ``lengths * hop_length``.
    """

    def __init__(self, model: AudioTokenizer, decoder: Stream):
        self.model = model
        self._decoder = decoder
        self._last: Tensor | None = None
        self._frames = 0  # code frames given so far
        self._samples = 0  # samples returned so far
        self._ends: Tensor | None = None  # (b,) valid samples per item; None: no end yet
        self._weight_dtype = _device_and_dtype(model)[1]

    def __call__(self, codes: Tensor | Tokens) -> Tensor:
        lengths = codes.lengths if isinstance(codes, Tokens) else None
        codes = self.model.codes_of(codes)
        if lengths is not None:
            # Items shorter than this call end here; full ones go on.
            lengths = lengths.cpu()
            ends = torch.where(
                lengths < codes.shape[-1],
                (self._frames + lengths) * self.model.hop_length,
                _NO_END,
            )
            self._ends = ends if self._ends is None else torch.minimum(self._ends, ends)
        self._frames += codes.shape[-1]
        with autocast_to_weights(self.model, "stream_decoder"):  # as decode runs
            latent = self.model.latent_from_codes(codes)
            self._last = latent
            return self._masked(self._decoder(latent))

    def flush(self) -> Tensor:
        """The samples still held by the decoder ``(b, channels, m)``."""
        if self._last is None:
            raise RuntimeError("AudioDecoderStream.flush: no codes were given")
        with autocast_to_weights(self.model, "stream_decoder"):
            return self._masked(self._decoder.flush(self._last))

    def _masked(self, audio: Tensor) -> Tensor:
        """``audio (b, c, m)``, the stream's next ``m`` samples, zero past each item's end.

        Runs under the decode autocast. An output of 0 samples skips the layers that cast (it
        keeps the fp32 latent's dtype): it is given the dtype the samples have (autocast's, else
        the weights'), so outputs concatenate to ``decode``'s dtype.
        """
        if audio.shape[-1] == 0:
            device = audio.device.type
            autocast = torch.is_autocast_enabled(device)
            dtype = torch.get_autocast_dtype(device) if autocast else self._weight_dtype
            audio = audio.to(dtype)
        start = self._samples
        self._samples += audio.shape[-1]
        if self._ends is None:
            return audio
        if self._ends.shape[0] != audio.shape[0]:
            raise ValueError(
                f"{type(self.model).__name__} stream: Tokens.lengths has {self._ends.shape[0]} "
                f"items, the codes {audio.shape[0]}"
            )
        return mask_past_lengths(audio, (self._ends - start).clamp(min=0))


def _chunked_path_refusal(model: AudioTokenizer) -> UnsupportedModelError | None:
    """Why :func:`encode_long` refuses ``model`` (``None`` if it has a chunked path), found
    cheaply: ``encode_long`` of 0 samples raises a family's own refusal (TaDiCodec) before
    anything else (else ``encode``'s ValueError), and the frame-per-hop check is one encoder
    pass over 4 hops (SNAC). No receptive field is measured."""
    _, dtype = _device_and_dtype(model)
    try:
        model.encode_long(torch.zeros(1, model.channels, 0, dtype=dtype))
    except UnsupportedModelError as err:
        return err
    except ValueError:
        pass  # 0 samples refused as encode refuses them: the shared chunked path
    try:
        _check_frame_per_hop(model)
    except UnsupportedModelError as err:
        return err
    return None


def _require_streamable(model: AudioTokenizer, what: str) -> None:
    name = type(model).__name__
    if not getattr(model, "causal", False):
        refusal = _chunked_path_refusal(model)
        advice = (
            "use encode_long / decode_long for long audio"
            if refusal is None
            else f"it has no chunked path either (encode_long / decode_long raise "
            f"{type(refusal).__name__}): encode / decode whole utterances with encode() / "
            "decode()"
        )
        raise ValueError(
            f"{name}.{what}: this model is not causal (its codes look ahead), so it cannot "
            f"stream; {advice}"
        )
    check_streamable(model.encoder if what == "stream_encoder" else model.decoder)


@contextmanager
def stream_encoder(model: AudioTokenizer, **encode_kwargs: Any) -> Iterator[AudioEncoderStream]:
    """Context yielding an :class:`AudioEncoderStream` over ``model`` (causal models).

    ``encode_kwargs`` are what ``encode`` takes besides audio (``n_levels``, ``bandwidth``).
    """
    _require_streamable(model, "stream_encoder")
    with streaming(model.encoder) as stream:
        yield AudioEncoderStream(model, stream, **encode_kwargs)


@contextmanager
def stream_decoder(model: AudioTokenizer) -> Iterator[AudioDecoderStream]:
    """Context yielding an :class:`AudioDecoderStream` over ``model`` (causal models)."""
    _require_streamable(model, "stream_decoder")
    with streaming(model.decoder) as stream:
        yield AudioDecoderStream(model, stream)


# --------------------------------------------------------------------------- long files


def _windows(frames: int, chunk: int, left: int, right: int) -> Iterator[tuple[int, int, int, int]]:
    """``(keep_start, keep_end, window_start, window_end)`` in frames, chunk after chunk."""
    for start in range(0, frames, chunk):
        end = min(frames, start + chunk)
        yield start, end, max(0, start - left), min(frames, end + right)


def _seconds(value: Any, what: str) -> float:
    """``value`` (a real number: int, float, NumPy scalar; not bool, str, tensor) as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    return float(value)


def _check_context_seconds(context_seconds: float | None) -> float | None:
    """``context_seconds`` as a float (``None`` kept), checked: >= 0 and finite."""
    seconds = None if context_seconds is None else _seconds(context_seconds, "context_seconds")
    if seconds is not None and not (seconds >= 0 and math.isfinite(seconds)):  # NaN fails both
        raise ValueError(
            f"context_seconds must be >= 0 and finite (or None), got {context_seconds}"
        )
    return seconds


def _context_frames(model: AudioTokenizer, side: int | None, context_seconds: float | None) -> int:
    """Context in frames: the measured side (+1 frame of margin), or the fallback when
    unbounded; ``context_seconds`` may ask for more, never for less than measured."""
    given = _check_context_seconds(context_seconds)
    asked = None if given is None else math.ceil(given * model.frame_rate)
    if side is None:
        seconds = DEFAULT_UNBOUNDED_CONTEXT_SECONDS if context_seconds is None else None
        return asked if asked is not None else math.ceil(seconds * model.frame_rate)
    return max(side + 1, asked or 0)


def _chunk_frames(model: AudioTokenizer, chunk_seconds: float) -> int:
    seconds = _seconds(chunk_seconds, "chunk_seconds")
    if not (seconds > 0 and math.isfinite(seconds)):  # NaN fails both
        raise ValueError(f"chunk_seconds must be positive and finite, got {chunk_seconds}")
    return max(1, round(seconds * model.frame_rate))


def encode_long(
    model: AudioTokenizer,
    audio: Tensor,
    *,
    chunk_seconds: float = 30.0,
    context_seconds: float | None = None,
    lengths: Tensor | None = None,
    **encode_kwargs: Any,
) -> Tokens:
    """Encode audio of any duration with memory bounded by the chunk (see module docs).

    Args:
        model: any :class:`AudioTokenizer` with ``encoder`` / ``decoder`` modules.
        audio: ``(batch, channels, samples)``; may stay on the CPU while the model is on a
            GPU: one window at a time is moved to the model's device.
        chunk_seconds: audio encoded per step (rounded to whole frames).
        context_seconds: context on each side of a chunk where the receptive field is
            unbounded (default :data:`DEFAULT_UNBOUNDED_CONTEXT_SECONDS`); elsewhere the
            measured receptive field is used (a larger value here widens it).
        lengths: valid samples per item; items are then encoded once per distinct length,
            each on its own samples.
        **encode_kwargs: passed to ``encode`` (``n_levels``, ``bandwidth``).

    Returns:
        :class:`Tokens` on ``audio``'s device, as ``model.encode(audio, lengths)`` returns
        them: the same shape, spec and ``lengths`` (``None`` when every item fills the
        frames), and the same codes (as the module docs say) at each item's valid positions.
        Past an item's length the codes are 0, where ``encode`` holds the codes of its
        padding: those positions carry no information (:class:`Tokens`), and neither
        ``decode`` nor ``decode_long`` reads them.
    """
    audio = model._check_media(audio, 3, "audio (batch, channels, samples)")
    if audio.shape[-1] == 0:  # as encode does (it refuses empty audio), causal or not
        return model.encode(audio, lengths, **encode_kwargs)
    lengths = model._check_lengths(lengths, audio.shape[0], (0, audio.shape[-1]), "samples")
    if lengths is not None and bool((lengths == audio.shape[-1]).all()):
        lengths = None  # every item whole: one pass over the batch, as encode runs it
    if lengths is not None:
        # Once per distinct length, on whole hops (empty items keep no frame), as encode does.
        hop = model.hop_length
        padded = F.pad(audio, (0, -audio.shape[-1] % hop))
        specs: list[TokenSpec] = []

        def encode_valid(valid: Tensor) -> Tensor:
            tokens = encode_long(
                model,
                valid,
                chunk_seconds=chunk_seconds,
                context_seconds=context_seconds,
                **encode_kwargs,
            )
            specs.append(tokens.spec)
            return tokens.codes

        codes = apply_per_length(encode_valid, padded, lengths, 1 / hop)
        frames = torch.div(lengths + hop - 1, hop, rounding_mode="floor")
        if lengths.device.type == "cpu" and bool((frames == codes.shape[-1]).all()):
            return Tokens(codes, specs[0])  # encode's convention (to_tokens): None when full
        return Tokens(codes, specs[0], frames.to(codes.device))
    return _encode_pieces(
        model, [audio], audio.device, chunk_seconds, context_seconds, encode_kwargs
    )


def encode_long_stream(
    model: AudioTokenizer,
    pieces: Iterable[Tensor],
    *,
    chunk_seconds: float = 30.0,
    context_seconds: float | None = None,
    **encode_kwargs: Any,
) -> Tokens:
    """:func:`encode_long` of audio that arrives as consecutive pieces ``(batch, channels,
    n)`` (any ``n``; :func:`anytok.media.iter_audio`'s chunks with a batch axis): the tokens
    of their concatenation, on the CPU, while only a chunk and its context are held, so a
    file of any length encodes in bounded memory. Pieces are read as the chunks need them.

    Raises:
        ValueError: the pieces hold no samples, pieces differ in batch size or channels, or
            what ``encode`` refuses.
        UnsupportedModelError: as :func:`encode_long`, before any piece is read.
    """
    checked = consistent_pieces(
        model, pieces, 3, "audio piece (batch, channels, samples)", "samples"
    )
    cpu = torch.device("cpu")
    return _encode_pieces(model, checked, cpu, chunk_seconds, context_seconds, encode_kwargs)


def consistent_pieces(
    model: Any, pieces: Iterable[Tensor], ndim: int, what: str, unit: str
) -> Iterator[Tensor]:
    """``pieces`` checked as media of rank ``ndim`` (``model._check_media``, naming ``what``)
    and alike on every axis but time (axis 2: ``unit``), as they are read: a piece whose
    batch size, channels or frame size differs from the first non-empty piece's is refused
    naming both shapes (``torch.cat`` would fail without saying why)."""
    first: tuple[int, ...] | None = None
    for index, piece in enumerate(pieces):
        piece = model._check_media(piece, ndim, what)
        if piece.shape[2]:  # empty pieces are skipped (PieceBuffer drops them)
            if first is None:
                first = tuple(piece.shape)
            elif (*piece.shape[:2], *piece.shape[3:]) != (*first[:2], *first[3:]):
                raise ValueError(
                    f"{type(model).__name__}.encode_long_stream: piece {index} has shape "
                    f"{tuple(piece.shape)}, the first {first}; consecutive pieces of one "
                    f"signal may differ only in their {unit} (axis 2)"
                )
        yield piece


class PieceBuffer:
    """Consecutive pieces of a signal along ``axis``, read from an iterator as far as asked
    and dropped once passed: ``[start, end)`` (absolute positions) is held, ``ended`` once
    the iterator is exhausted. One piece is used in place (no copy)."""

    def __init__(self, pieces: Iterable[Tensor], axis: int) -> None:
        self._pieces = iter(pieces)
        self.axis = axis
        self._held: list[Tensor] = []
        self.start = self.end = 0
        self.ended = False

    def fill(self, upto: int) -> None:
        """Read pieces until ``end >= upto`` or the iterator is exhausted."""
        while not self.ended and self.end < upto:
            piece = next(self._pieces, None)
            if piece is None:
                self.ended = True
            elif piece.shape[self.axis]:
                self._held.append(piece)
                self.end += piece.shape[self.axis]

    def slice(self, first: int, stop: int) -> Tensor:
        """Positions ``[first, min(stop, end))``; ``first >= start``."""
        assert first >= self.start, (first, self.start)
        if len(self._held) > 1:
            self._held = [torch.cat(self._held, dim=self.axis)]
        stop = min(stop, self.end)
        return self._held[0].narrow(self.axis, first - self.start, max(0, stop - first))

    def drop(self, before: int) -> None:
        """Forget positions before ``before``."""
        before = min(before, self.end)
        if before <= self.start:
            return
        self._held = [self.slice(before, self.end)]
        self.start = before


def _encode_pieces(
    model: AudioTokenizer,
    pieces: Iterable[Tensor],
    out_device: torch.device,
    chunk_seconds: float,
    context_seconds: float | None,
    encode_kwargs: dict[str, Any],
) -> Tokens:
    """:func:`encode_long`'s chunked pass over audio given as consecutive pieces: streams
    for causal models; windows of ``chunk`` frames with context on each side otherwise,
    each window formed once the pieces reach its end."""
    device, _ = _device_and_dtype(model)
    hop = model.hop_length
    chunk = _chunk_frames(model, chunk_seconds)
    _check_context_seconds(context_seconds)  # unused by a stream, but checked alike
    audio = PieceBuffer(pieces, axis=-1)
    with torch.inference_mode():
        if is_streamable(model):
            with stream_encoder(model, **encode_kwargs) as stream:
                parts = []
                while True:  # pieces of chunk * hop samples, as encode_long has always cut
                    audio.fill(audio.start + chunk * hop)
                    if audio.start == audio.end:
                        break
                    piece = audio.slice(audio.start, audio.start + chunk * hop)
                    audio.drop(audio.start + piece.shape[-1])
                    parts.append(stream(piece.to(device)).to(out_device))
                if audio.end == 0:
                    _refuse_empty(model)
                parts.append(stream.flush().to(out_device))
            return Tokens(torch.cat(parts, dim=-1), stream.spec)
        context = receptive_field(model)["encoder"]
        left = _context_frames(model, context.left, context_seconds)
        right = _context_frames(model, context.right, context_seconds)
        parts, spec = [], None
        start = 0  # first frame the next window keeps
        while True:
            audio.fill((start + chunk + right) * hop)
            # Until the pieces end, they reach past this window: the frame count is larger.
            frames = math.ceil(audio.end / hop) if audio.ended else math.inf
            if start >= frames:
                break
            end = min(frames, start + chunk)
            w_start, w_end = max(0, start - left), min(frames, end + right)
            window = audio.slice(w_start * hop, w_end * hop).to(device)
            tokens = model.encode(window, **encode_kwargs)
            spec = tokens.spec
            parts.append(tokens.codes[..., start - w_start : end - w_start].to(out_device))
            start = int(end)
            audio.drop(max(0, start - left) * hop)
        if spec is None:
            _refuse_empty(model)
        assert spec is not None
        return Tokens(torch.cat(parts, dim=-1), spec)


def _refuse_empty(model: AudioTokenizer) -> None:
    """Raise what ``encode`` raises for audio of 0 samples."""
    _, dtype = _device_and_dtype(model)
    model.pad_input(torch.zeros(1, model.channels, 0, dtype=dtype), None)
    raise ValueError(f"{type(model).__name__}.encode: empty audio (0 samples)")


def decode_long(
    model: AudioTokenizer,
    tokens: Tokens | Tensor,
    *,
    chunk_seconds: float = 30.0,
    context_seconds: float | None = None,
) -> Tensor:
    """Decode codes of any duration with memory bounded by the chunk; the counterpart of
    :func:`encode_long` with the same guarantee (the decoder's own receptive field).

    Returns audio ``(batch, channels, frames * hop)`` on the codes' device, as
    ``model.decode(tokens)`` returns it; samples past an item's valid length
    (``tokens.lengths``) are zero, and a non-causal model decodes each distinct length on
    its valid frames only.
    """
    codes = model.codes_of(tokens)
    if codes.numel() == 0:  # no items or no frames: what decode returns (silence)
        return model.decode(tokens)
    lengths = tokens.lengths if isinstance(tokens, Tokens) else None
    hop = model.hop_length
    if lengths is not None and model.per_length_eval:
        # As ``model.decode``: once per distinct length on the valid frames, so the codes
        # past a short item's end never reach its last samples (nor, through EnCodec's
        # reflect padding, a causal model's first ones).
        return apply_per_length(
            lambda valid: decode_long(
                model, valid, chunk_seconds=chunk_seconds, context_seconds=context_seconds
            ),
            codes,
            lengths,
            hop,
        )
    device, _ = _device_and_dtype(model)
    chunk = _chunk_frames(model, chunk_seconds)
    _check_context_seconds(context_seconds)  # unused by a stream, but checked alike
    with torch.inference_mode():
        if is_streamable(model):
            with stream_decoder(model) as stream:
                parts = [
                    stream(piece.to(device)).to(codes.device)
                    for piece in codes.split(chunk, dim=-1)
                ]
                parts.append(stream.flush().to(codes.device))
            audio = torch.cat(parts, dim=-1)
        else:
            context = receptive_field(model)["decoder"]
            left = _context_frames(model, context.left, context_seconds)
            right = _context_frames(model, context.right, context_seconds)
            parts = []
            for start, end, w_start, w_end in _windows(codes.shape[-1], chunk, left, right):
                out = model.decode(codes[..., w_start:w_end].to(device))
                parts.append(
                    out[..., (start - w_start) * hop : (end - w_start) * hop].to(codes.device)
                )
            audio = torch.cat(parts, dim=-1)
    return audio if lengths is None else mask_past_lengths(audio, lengths * hop)


# --------------------------------------------------------------------------- batches


def apply_per_length(
    fn: Callable[..., Tensor],
    x: Tensor,
    lengths: Tensor | None,
    out_per_step: float,
    *,
    with_items: bool = False,
) -> Tensor:
    """Run ``fn`` once per distinct valid length, each item cropped to its own length, and
    reassemble ``(batch, channels', round(time * out_per_step))`` with zeros past each item's
    output length.

    A non-centred model then gives every item of a batch what it gives the item alone. With
    ``lengths`` ``None`` (or all equal to the full length) ``fn`` runs once on ``x``. Items
    of length 0 get zeros (when every item is empty, ``fn`` runs once on ``x`` for the
    output's shape).

    Args:
        fn: ``(b, c, t) -> (b, c', round(t * out_per_step))``; with ``with_items``,
            ``fn(x, items)`` also gets the batch indices of the items it runs on (``None``
            for the whole batch), to pick their other inputs (texts ...).
        x: ``(batch, c, time)``.
        lengths: valid steps per item ``(batch,)``, each ``<= time``.
        out_per_step: output steps per input step (``1 / hop`` for an encoder over samples,
            ``hop`` for a decoder over frames).
    """
    time = x.shape[-1]
    if lengths is None or bool((lengths == time).all()):
        return fn(x, None) if with_items else fn(x)
    lengths = lengths.to(x.device)
    if not bool(lengths.any()):
        # A fresh tensor: fn's result may be an inference tensor (encode_long / decode_long
        # run under inference_mode) that cannot be written to outside that mode.
        return torch.zeros_like(fn(x, None) if with_items else fn(x))
    out: Tensor | None = None
    for length in torch.unique(lengths).tolist():
        if length == 0:  # left as zeros: a model needs at least one step
            continue
        items = (lengths == length).nonzero().flatten()
        cropped = x[items, :, : int(length)]
        y = fn(cropped, items) if with_items else fn(cropped)
        if out is None:
            size = round(time * out_per_step)
            out = y.new_zeros(x.shape[0], y.shape[1], size)
        out[items, :, : y.shape[-1]] = y
    assert out is not None
    return out


def mask_past_lengths(audio: Tensor, lengths: Tensor | None) -> Tensor:
    """Zero samples at or past each item's length: ``(b, c, t)`` -> same."""
    if lengths is None:
        return audio
    keep = torch.arange(audio.shape[-1], device=audio.device) < lengths.to(audio.device)[:, None]
    return audio * keep[:, None, :]


__all__ = [
    "DEFAULT_UNBOUNDED_CONTEXT_SECONDS",
    "AudioDecoderStream",
    "AudioEncoderStream",
    "Context",
    "NoChunkedPathError",
    "PieceBuffer",
    "UnsupportedModelError",
    "apply_per_length",
    "consistent_pieces",
    "decode_long",
    "encode_long",
    "encode_long_stream",
    "is_streamable",
    "mask_past_lengths",
    "measure_context",
    "receptive_field",
    "stream_decoder",
    "stream_encoder",
]
