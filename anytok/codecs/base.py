"""The tokenizer contract: ``encode(media, lengths) -> Tokens``, ``decode(tokens) -> media``,
``forward`` for training. Modality base classes handle the input rules (padding to the
stride, lengths) once, so each family file holds only its architecture.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.codecs import long_audio
from anytok.quantizers import QuantizerOutput, build
from anytok.tokens import Tokens, TokenSpec, as_int


@dataclass
class TokenizerOutput:
    """What a tokenizer's ``forward`` returns (used in training).

    Attributes:
        reconstruction: media of the input's shape.
        tokens: the codes of this batch.
        losses: named auxiliary losses, already weighted (e.g. ``quantizer``).
        metrics: detached scalars for logging (codebook perplexity, usage ...).
        latent: the continuous latent before quantization, channel-first, for losses that
            need it (e.g. latent perturbation, distillation).
    """

    reconstruction: Tensor
    tokens: Tokens
    losses: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    latent: Tensor | None = None


def build_quantizer(quantizer: dict[str, Any], dim: int) -> nn.Module:
    """Build a quantizer from a recipe-style dict ``{"name": ..., **kwargs}`` for ``dim``."""
    if "name" not in quantizer:
        raise ValueError(f"quantizer config needs a 'name' entry, got {quantizer!r}")
    kwargs = {k: v for k, v in quantizer.items() if k != "name"}
    return build(quantizer["name"], dim=dim, **kwargs)


def quantize_channel_first(quantizer: nn.Module, latent: Tensor) -> tuple[Tensor, QuantizerOutput]:
    """Quantize a channel-first latent ``(b, d, *positions)``.

    Returns the quantized latent ``(b, d, *positions)`` and the quantizer output whose codes
    are rearranged to ``(b, levels, *positions)``.
    """
    channel_last = torch.movedim(latent, 1, -1)
    out = quantizer(channel_last)
    quantized = torch.movedim(out.quantized, -1, 1)
    out.codes = torch.movedim(out.codes, -1, 1)
    return quantized, out


def decode_codes(quantizer: nn.Module, codes: Tensor) -> Tensor:
    """Codes ``(b, levels, *positions)`` -> quantized latent ``(b, d, *positions)``."""
    return torch.movedim(quantizer.decode(torch.movedim(codes, 1, -1)), -1, 1)


def _autocast_to_weights(method: Any) -> Any:
    """Run ``method`` under :func:`~anytok.codecs.long_audio.autocast_to_weights`: autocast
    to bf16 / fp16 weights, fp64 weights refused with a clear error."""

    @functools.wraps(method)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with long_audio.autocast_to_weights(self, method.__name__):
            return method(self, *args, **kwargs)

    run._autocast_to_weights = True  # type: ignore[attr-defined]
    return run


def _checking_token_spec(method: Any) -> Any:
    """Run ``decode`` only on :class:`Tokens` whose spec is the model's
    (:meth:`Tokenizer.check_token_spec`); bare code tensors are taken as they are."""

    @functools.wraps(method)
    def run(self: Tokenizer, *args: Any, **kwargs: Any) -> Any:
        _check_spec_of(self, args[0] if args else kwargs.get("tokens"), method.__name__)
        return method(self, *args, **kwargs)

    return run


def _check_spec_of(model: Any, tokens: Tokens | Tensor, method: str) -> None:
    """:meth:`Tokenizer.check_token_spec` of ``tokens`` when they are :class:`Tokens` (the
    chunked decoders pass bare code tensors to ``decode``, so they check here)."""
    if isinstance(tokens, Tokens):
        model.check_token_spec(tokens.spec, f"{type(model).__name__}.{method}")


#: TokenSpec fields that say what codes mean beyond modality, layout and codebooks; compared
#: where both specs set them (a hand-written spec, an older file or a model built outside the
#: registry may leave them None). ``name`` is not: a token file names its tokenizer by
#: registry name, checkpoint path or Hub id.
_SPEC_MEANING_FIELDS = (
    "architecture", "frame_rate", "sample_rate", "channels", "resolution", "fps"
)  # fmt: skip


class Tokenizer(nn.Module, abc.ABC):
    """Base of every tokenizer. Subclasses set ``modality`` and implement ``spec``,
    ``encode``, ``decode`` and ``forward``. ``encode`` and ``decode`` of every subclass run
    under autocast to bf16 / fp16 weights (:func:`_autocast_to_weights`); ``decode`` of
    :class:`Tokens` checks their spec first (:meth:`check_token_spec`)."""

    modality: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("encode", "decode"):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_autocast_to_weights", False):
                wrapped = _autocast_to_weights(method)
                if name == "decode":
                    wrapped = _checking_token_spec(wrapped)
                setattr(cls, name, wrapped)

    #: True when a position's codes depend only on past input (right padding is harmless).
    causal: bool = False

    @property
    @abc.abstractmethod
    def spec(self) -> TokenSpec:
        """What this tokenizer's codes mean (every level it has)."""

    @property
    def default_spec(self) -> TokenSpec:
        """The spec of ``encode``'s tokens with default arguments: :attr:`spec`, but only
        the levels a residual audio codec encodes by default (Mimi: 8 of its 32)."""
        return self.spec

    @abc.abstractmethod
    def encode(self, media: Tensor, lengths: Tensor | None = None) -> Tokens:
        """Media (batch first, in [-1, 1]) -> :class:`Tokens`."""

    @abc.abstractmethod
    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """:class:`Tokens` (or bare codes) -> media."""

    def informative_codes(self, codes: Tensor) -> list[Tensor]:
        """One item's codes ``(levels, *positions)`` -> each level's codes without the repeats
        a layout stores (:attr:`TokenSpec.code_repeats`; hierarchical video: its coarse level
        once per 2x2 block of the fine grid): what bitrates and token statistics count."""
        spec = self.spec
        if spec.code_repeats is None:
            return list(codes)
        return [
            level_codes[tuple(slice(None, None, r) for r in spec.level_repeats(level))]
            for level, level_codes in enumerate(codes)
        ]

    @property
    def registry_name(self) -> str:
        """``arch.tag`` or checkpoint directory this model was loaded from (written into token
        files, so ``anytok decode`` can find the same weights)."""
        source = getattr(self, "anytok_source", None)
        if source:
            return source
        arch = getattr(self, "anytok_arch", None)
        if arch is None:
            return type(self).__name__
        return f"{arch}.{getattr(self, 'anytok_tag', 'untrained')}"

    @property
    def architecture(self) -> str | None:
        """The registered architecture this model was built as (``create_model`` / ``load``
        record it), ``None`` for a model built by its class directly; token specs carry it."""
        return getattr(self, "anytok_arch", None)

    @property
    def decodes_level_prefix(self) -> bool:
        """Whether ``decode`` takes the codes of the first ``k`` levels alone (residual
        quantizers, whose ``encode`` has ``n_levels``)."""
        encode = getattr(getattr(self, "quantizer", None), "encode", None)
        try:
            return encode is not None and "n_levels" in inspect.signature(encode).parameters
        except (TypeError, ValueError):
            return False

    def check_token_spec(self, spec: TokenSpec, where: str = "decode") -> None:
        """Raise unless codes of ``spec`` are this tokenizer's: the same modality, layout and
        codebook sizes (or a leading prefix of the levels where
        :attr:`decodes_level_prefix`), and the same ``architecture``, ``frame_rate``,
        ``sample_rate``, ``channels``, ``resolution`` and ``fps`` where both specs set them.
        ``name`` is not compared (a checkpoint's tokens name its path or Hub id).

        Raises:
            ValueError: naming each field that differs, with both values.
        """
        own = self.spec
        differ = [
            f"{key} {getattr(spec, key)!r} vs {getattr(own, key)!r}"
            for key in ("modality", "layout")
            if getattr(spec, key) != getattr(own, key)
        ]
        for key in _SPEC_MEANING_FIELDS:
            theirs, ours = getattr(spec, key), getattr(own, key)
            if theirs is None or ours is None:
                continue
            same = (
                math.isclose(theirs, ours, rel_tol=1e-9)
                if isinstance(ours, float)
                else theirs == ours
            )
            if not same:
                differ.append(f"{key} {theirs!r} vs {ours!r}")
        sizes, own_sizes = spec.codebook_sizes, own.codebook_sizes
        # (the signature check only when it matters: not on every decode of full codes)
        prefix = len(sizes) < len(own_sizes) and self.decodes_level_prefix
        if sizes != (own_sizes[: len(sizes)] if prefix else own_sizes):
            if not differ and len(sizes) < len(own_sizes) and sizes == own_sizes[: len(sizes)]:
                # the tokens are this model's own, cut to their first levels
                raise ValueError(
                    f"{where}: {own.name or type(self).__name__} decodes all "
                    f"{len(own_sizes)} levels together; these tokens hold only the first "
                    f"{len(sizes)} (codebook_sizes {sizes} of {own_sizes}). Decode tokens "
                    "with every level"
                )
            which = "a leading prefix of " if self.decodes_level_prefix else ""
            differ.append(f"codebook_sizes {sizes} vs {which}{own_sizes}")
        if differ:
            raise ValueError(
                f"{where}: these tokens are not {own.name or type(self).__name__}'s "
                f"(tokens' spec vs this tokenizer's: {'; '.join(differ)}); the tokens were "
                f"made by {spec.name or 'an unnamed tokenizer'}: decode them with it"
            )

    @staticmethod
    def codes_of(tokens: Tokens | Tensor | np.ndarray) -> Tensor:
        """The code tensor of ``tokens`` (accepts bare ``(b, levels, *positions)`` codes, as a
        tensor or a NumPy array). ``decode`` checks a :class:`Tokens`' spec before
        (:meth:`check_token_spec`).

        Raises:
            TypeError: ``tokens`` is neither :class:`Tokens`, a tensor nor an array.
        """
        if isinstance(tokens, Tokens):
            return tokens.codes
        if isinstance(tokens, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(tokens))
        if not isinstance(tokens, Tensor):
            raise TypeError(
                "decode: expected Tokens or codes (batch, levels, *positions) as a tensor or "
                f"NumPy array, got {type(tokens).__name__}"
                + (
                    "; load a token file with Tokens.load(path)"
                    if isinstance(tokens, str | os.PathLike)
                    else ""
                )
            )
        return tokens

    def encode_file(self, path: str | os.PathLike[str], **encode_kwargs: Any) -> Tokens:
        """Encode one media file as ``anytok encode`` does: decoded, resampled, converted to
        this tokenizer's channels and resized by its policy
        (:func:`anytok.pipeline.load_for_model`), then encoded as a batch of one on the
        model's device. ``encode_kwargs`` go to :meth:`encode` (``n_levels`` ...).

        Raises:
            MediaError: the file is missing, unreadable or not of this modality.
        """
        from anytok.pipeline import load_for_model  # the pipeline imports this module

        media = load_for_model(self, Path(path).expanduser())
        device, _ = long_audio._device_and_dtype(self)
        return self.encode(media.unsqueeze(0).to(device), **encode_kwargs)

    def decode_file(
        self, tokens: Tokens | str | os.PathLike[str], path: str | os.PathLike[str]
    ) -> Path:
        """Decode one item's tokens (or a token file) and write the media file ``path``
        (format from its extension: ``.wav`` / ``.flac``, ``.png``, ``.mp4`` ...) as
        ``anytok decode`` does; returns the path. Missing folders of ``path`` are created;
        a file already there is replaced only once the new one is complete.

        Raises:
            ValueError: ``tokens`` holds more than one item (write ``tokens[i]`` each).
            MediaError: the writer has no format for the extension in this modality
                (checked before decoding), or the file cannot be written.
        """
        from anytok.pipeline import check_media_path, save_media  # it imports this module

        path = Path(path).expanduser()
        if path.is_dir():
            raise IsADirectoryError(
                f"{type(self).__name__}.decode_file: {path} is a folder; name the file to "
                "write, with its format's extension (.wav, .png, .mp4 ...)"
            )
        check_media_path(self, path)
        if not isinstance(tokens, Tokens):
            tokens = Tokens.load(tokens)
        if len(tokens) != 1:
            raise ValueError(
                f"{type(self).__name__}.decode_file: {len(tokens)} items; write one file per "
                "item (tokens[i])"
            )
        device, _ = long_audio._device_and_dtype(self)
        with torch.inference_mode():
            media = self.decode(tokens[0].to(device))
        save_media(self, media[0], path)
        return path

    def _check_media(self, media: Tensor, ndim: int, what: str) -> Tensor:
        """Check a media batch's type and rank; return it in the dtype of the weights.

        A NumPy array is taken as a tensor. Float media of another dtype (fp64 from NumPy,
        fp16 beside fp32 weights) is cast, as the layers need one dtype; autocast still
        computes in its own.
        """
        if isinstance(media, np.ndarray):
            # A copy only for arrays torch cannot view (negative strides: img[:, ::-1]).
            media = torch.from_numpy(np.ascontiguousarray(media))
        if isinstance(media, str | os.PathLike):
            raise TypeError(
                f"{type(self).__name__}.encode: expected a tensor {what}, got the path "
                f"{os.fspath(media)!r}; encode a file with .encode_file(path)"
            )
        if not isinstance(media, Tensor):
            raise TypeError(
                f"{type(self).__name__}.encode: expected a tensor {what}, got {type(media)}"
            )
        if media.ndim != ndim:
            raise ValueError(
                f"{type(self).__name__}.encode: expected {what}, got shape {tuple(media.shape)}"
            )
        if not media.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}.encode: media must be float in [-1, 1], got {media.dtype}"
            )
        _, weight_dtype = long_audio._device_and_dtype(self)
        return media.to(weight_dtype)

    def _check_lengths(
        self, lengths: Any, batch: int, valid: tuple[int, int], unit: str
    ) -> Tensor | None:
        """``lengths`` (a tensor, array or sequence of ints, one per item) as int64 ``(batch,)``.

        Values are checked against ``valid`` (inclusive) only for host lengths: device
        lengths (a training batch's) would make the host wait for the device.

        Raises:
            TypeError / ValueError: not integers, not one per item, or out of range, naming
                ``lengths``.
        """
        if lengths is None:
            return None
        where = f"{type(self).__name__}.encode: lengths"
        if not isinstance(lengths, Tensor):
            try:
                lengths = torch.as_tensor(np.asarray(lengths))
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"{where} must be integers, one per item; got {lengths!r}") from err
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{where} must be integers ({unit}), got dtype {lengths.dtype}")
        # int64 before comparing: torch has no comparison kernels for uint16 / 32 / 64.
        lengths = lengths.long()
        if tuple(lengths.shape) != (batch,):
            raise ValueError(
                f"{where} must have shape ({batch},), one per item; got {tuple(lengths.shape)}"
            )
        low, high = valid
        if lengths.device.type == "cpu" and not bool(((lengths >= low) & (lengths <= high)).all()):
            raise ValueError(f"{where} must be in [{low}, {high}] {unit}; got {lengths.tolist()}")
        return lengths


class AudioTokenizer(Tokenizer):
    """Audio ``(batch, channels, samples)`` at ``sample_rate`` -> codes ``(b, levels, time)``.

    Inputs are right-padded with zeros to a multiple of ``hop_length``; ``lengths`` (samples)
    become token lengths ``ceil(lengths / hop_length)``. ``decode`` returns
    ``frames * hop_length`` samples.

    Long audio and streaming (:mod:`anytok.codecs.long_audio`, which states the guarantees):
    :meth:`encode_long` / :meth:`decode_long` for files of any duration in bounded memory,
    :meth:`stream_encoder` / :meth:`stream_decoder` for causal models, chunk by chunk.
    They use ``encoder`` / ``decoder`` modules and :meth:`codes_from_latent` /
    :meth:`latent_from_codes`, which families with other quantizer calls override.
    """

    modality = "audio"
    sample_rate: int
    channels: int
    hop_length: int
    quantizer: nn.Module

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(
            modality="audio",
            codebook_sizes=tuple(self.quantizer.codebook_sizes),
            layout=("time",),
            frame_rate=self.frame_rate,
            sample_rate=self.sample_rate,
            channels=self.channels,
            name=self.registry_name,
            architecture=self.architecture,
        )

    def pad_input(self, audio: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check ``audio`` and ``lengths`` (samples), zero samples past each item's length
        and right-pad to whole hops; return the audio ``(b, c, t * hop)`` and token lengths
        ``(b,)``."""
        audio = self._check_media(audio, 3, "audio (batch, channels, samples)")
        if audio.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__}: expects {self.channels} channel(s), got {audio.shape[1]}; "
                "convert with anytok.media.to_channels"
            )
        samples = audio.shape[-1]
        if samples == 0:
            raise ValueError(f"{type(self).__name__}.encode: empty audio (0 samples)")
        lengths = self._check_lengths(lengths, audio.shape[0], (0, samples), "samples")
        frames = math.ceil(samples / self.hop_length)
        audio = F.pad(
            long_audio.mask_past_lengths(audio, lengths), (0, frames * self.hop_length - samples)
        )
        if lengths is None:
            # Built on the CPU: checking "all full" later then costs no device synchronisation.
            lengths = torch.full((audio.shape[0],), samples)
        token_lengths = torch.div(
            lengths + self.hop_length - 1, self.hop_length, rounding_mode="floor"
        )
        return audio, token_lengths.long()

    def spec_with_levels(self, n_levels: int | None = None) -> TokenSpec:
        """:attr:`spec` restricted to the first ``n_levels`` levels (bitrate choice)."""
        spec = self.spec
        if n_levels is None or n_levels == spec.num_levels:
            return spec
        repeats = None if spec.code_repeats is None else spec.code_repeats[:n_levels]
        return dataclasses.replace(
            spec, codebook_sizes=spec.codebook_sizes[:n_levels], code_repeats=repeats
        )

    def codes_from_latent(self, latent: Tensor, **encode_kwargs: Any) -> Tensor:
        """Encoder output ``(b, dim, t)`` -> codes ``(b, levels, t)``."""
        return self.quantizer.encode(latent.movedim(1, -1), **encode_kwargs).movedim(-1, 1)

    def latent_from_codes(self, codes: Tensor) -> Tensor:
        """Codes ``(b, levels, t)`` -> decoder input ``(b, dim, t)``."""
        return decode_codes(self.quantizer, codes)

    #: latent steps per token frame (``t' = t * latent_steps_per_frame``; SNAC: its finest
    #: level's stride)
    latent_steps_per_frame: int = 1

    #: Whether the encoder completes a ragged last hop itself (EnCodec's SEANet reflect-pads
    #: its own last stride window): in eval each item is then encoded on exactly its own
    #: samples, as the reference encodes raw audio, instead of on zeros to a whole hop.
    encodes_exact_lengths: bool = False

    @property
    def per_length_eval(self) -> bool:
        """Whether eval batches of different lengths run the encoder once per distinct length
        (:meth:`_latent`): models whose last codes see past an item's end (non-causal)."""
        return not self.causal

    def encode_latent(self, padded: Tensor) -> Tensor:
        """Hop-padded audio ``(b, c, t * hop)`` -> continuous latent ``(b, dim, t')``."""
        return self.encoder(padded)

    def _latent(self, audio: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """``audio (b, c, s)`` -> latent ``(b, dim, t')`` and token lengths ``(b,)``.

        Samples past ``lengths`` are zeroed (:meth:`pad_input`); in eval a
        :attr:`per_length_eval` model runs once per distinct length, each item cropped to its
        own (:func:`~anytok.codecs.long_audio.apply_per_length`), so every item gets the
        latent it gets alone.
        """
        padded, token_lengths = self.pad_input(audio, lengths)
        per_item = None
        if self.per_length_eval and not self.training:
            per_item = token_lengths * self.hop_length
            if self.encodes_exact_lengths:  # each item's own samples, not zero-padded hops
                samples = audio.shape[-1]
                checked = self._check_lengths(lengths, len(token_lengths), (0, samples), "samples")
                per_item = torch.full_like(token_lengths, samples) if checked is None else checked
        latent = long_audio.apply_per_length(
            self.encode_latent, padded, per_item, self.latent_steps_per_frame / self.hop_length
        )
        return latent, token_lengths

    def decode_latent(self, quantized: Tensor) -> Tensor:
        """Quantized latent ``(b, dim, t')`` -> audio ``(b, c, t * hop)``."""
        return self.decoder(quantized)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``audio (b, c, s)`` -> reconstruction ``(b, c, s)``, tokens, losses."""
        latent, token_lengths = self._latent(audio, lengths)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        reconstruction = self.decode_latent(quantized)[..., : audio.shape[-1]]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(out.codes, self.spec, token_lengths),
            losses={"quantizer": out.loss},
            metrics=out.metrics,
            latent=latent,
        )

    def encode(self, audio: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``audio (b, c, s)`` in [-1, 1] -> :class:`Tokens` with codes ``(b, levels, t)``."""
        latent, token_lengths = self._latent(audio, lengths)
        return to_tokens(self.codes_from_latent(latent), self.spec, token_lengths)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, levels, t)`` -> audio ``(b, c, t * hop_length)``.

        With ``tokens.lengths``, samples past each item's length are zero; a
        :attr:`per_length_eval` model decodes once per distinct length on the valid frames
        only, so the batch's padding never reaches an item (a causal one's never does).
        """
        codes = self._audio_codes(tokens)
        lengths = tokens.lengths if isinstance(tokens, Tokens) else None
        if codes.numel() == 0:
            return self._silence(codes)

        def decode(valid: Tensor) -> Tensor:
            return self.decode_latent(self.latent_from_codes(valid))

        if lengths is not None and not self.per_length_eval:
            return long_audio.mask_past_lengths(decode(codes), lengths * self.hop_length)
        return long_audio.apply_per_length(decode, codes, lengths, self.hop_length)

    def _audio_codes(self, tokens: Tokens | Tensor) -> Tensor:
        """The codes ``(batch, levels, time)`` of ``tokens``; another rank is an error (codes
        ``(levels, time)`` of one item would reach a convolution as a batch)."""
        codes = self.codes_of(tokens)
        if codes.ndim != 3:
            raise ValueError(
                f"{type(self).__name__}.decode: expected codes (batch, levels, time), got shape "
                f"{tuple(codes.shape)}"
            )
        if codes.numel() and not torch.compiler.is_compiling() and bool((codes < 0).any()):
            # A residual quantizer reads -1 as "level not run" (its training forward returns
            # that); a codec's tokens never hold one, so here it is a caller's error (an LM's
            # mask or pad id left in), not silence.
            raise ValueError(
                f"{type(self).__name__}.decode: codes must be >= 0, got {int(codes.min())}; "
                "to decode fewer levels give the first k (tokens.codes[:, :k]); replace an "
                "LM's pad or mask ids before decoding"
            )
        return codes

    def _silence(self, codes: Tensor) -> Tensor:
        """Audio ``(b, c, t * hop)`` of zeros for codes with no items or no frames (an LM that
        stopped at once): an iSTFT has no empty batch, a convolution no empty time axis."""
        _, dtype = long_audio._device_and_dtype(self)
        shape = (codes.shape[0], self.channels, codes.shape[-1] * self.hop_length)
        return torch.zeros(shape, dtype=dtype, device=codes.device)

    def encode_long(self, audio: Tensor, **kwargs: Any) -> Tokens:
        """:func:`anytok.codecs.long_audio.encode_long`: ``chunk_seconds``,
        ``context_seconds``, ``lengths`` and ``encode``'s own keywords."""
        return long_audio.encode_long(self, audio, **kwargs)

    def encode_long_stream(self, pieces: Iterable[Tensor], **kwargs: Any) -> Tokens:
        """:func:`anytok.codecs.long_audio.encode_long_stream`: :meth:`encode_long` of audio
        arriving as consecutive ``(batch, channels, n)`` pieces, in bounded memory."""
        return long_audio.encode_long_stream(self, pieces, **kwargs)

    def decode_long(self, tokens: Tokens | Tensor, **kwargs: Any) -> Tensor:
        """:func:`anytok.codecs.long_audio.decode_long`."""
        _check_spec_of(self, tokens, "decode_long")
        return long_audio.decode_long(self, tokens, **kwargs)

    def stream_encoder(self, **encode_kwargs: Any) -> AbstractContextManager[Any]:
        """Context yielding an encoder stream (causal models); see
        :func:`anytok.codecs.long_audio.stream_encoder`."""
        return long_audio.stream_encoder(self, **encode_kwargs)

    def stream_decoder(self) -> AbstractContextManager[Any]:
        """Context yielding a decoder stream (causal models)."""
        return long_audio.stream_decoder(self)

    @property
    def receptive_field(self) -> dict[str, Any]:
        """Measured context of ``encoder`` and ``decoder`` in frames
        (:func:`anytok.codecs.long_audio.receptive_field`)."""
        return long_audio.receptive_field(self)


class ResidualAudioTokenizer(AudioTokenizer):
    """An audio codec whose residual quantizer encodes any first ``k`` of its levels
    (EnCodec, DAC, Mimi): the bitrate is chosen per ``encode`` call (``n_levels``, default
    ``default_levels``), the :class:`Tokens`' spec lists only the levels used, and ``decode``
    takes any number of leading levels.

    A batch of different lengths is encoded and decoded per distinct length in eval mode, so
    every item gets what it gets alone (:func:`~anytok.codecs.long_audio.apply_per_length`);
    subclasses override :meth:`_latent` / :meth:`_decode_latent` where their model needs
    something else, and :meth:`resolve_levels` for other bitrate keywords.
    """

    default_levels: int

    @property
    def default_spec(self) -> TokenSpec:
        return self.spec_with_levels(self.default_levels)

    @property
    def per_length_eval(self) -> bool:
        """Every family, causal ones included (their eval batches are exact either way)."""
        return True

    def resolve_levels(self, n_levels: int | None = None) -> int:
        """The level count of an ``encode`` call: ``n_levels`` (checked), else the default."""
        if n_levels is None:
            return self.default_levels
        levels = as_int(n_levels, f"{type(self).__name__}.encode: n_levels")
        n_q = self.quantizer.num_quantizers
        if not 1 <= levels <= n_q:
            raise ValueError(
                f"{type(self).__name__}.encode: n_levels must be in [1, {n_q}], got {n_levels}"
            )
        return levels

    def codes_from_latent(
        self, latent: Tensor, n_levels: int | None = None, **bitrate: Any
    ) -> Tensor:
        """Latent ``(b, dim, t)`` -> codes ``(b, levels, t)``."""
        levels = self.resolve_levels(n_levels, **bitrate)
        return self.quantizer.encode(latent.movedim(1, -1), n_levels=levels).movedim(-1, 1)

    def _decode_latent(self, latent: Tensor, lengths: Tensor | None) -> Tensor:
        """Quantized latent ``(b, dim, t)`` -> audio ``(b, c, t * hop)``, zeros past
        ``lengths`` (frames)."""
        per_item = None if self.training else lengths
        return long_audio.apply_per_length(self.decoder, latent, per_item, self.hop_length)

    def encode(
        self,
        audio: Tensor,
        lengths: Tensor | None = None,
        n_levels: int | None = None,
        **bitrate: Any,
    ) -> Tokens:
        """``audio (b, c, s)`` in [-1, 1] -> :class:`Tokens` with codes ``(b, levels, t)``."""
        levels = self.resolve_levels(n_levels, **bitrate)
        latent, token_lengths = self._latent(audio, lengths)
        codes = self.codes_from_latent(latent, n_levels=levels)
        return to_tokens(codes, self.spec_with_levels(levels), token_lengths)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """Codes ``(b, k, t)`` of the first ``k`` levels -> audio ``(b, c, t * hop)``; with
        ``tokens.lengths``, zeros past each item's length."""
        lengths = tokens.lengths if isinstance(tokens, Tokens) else None
        codes = self._audio_codes(tokens)
        latent = self.latent_from_codes(codes)  # checks the codes, even of no frames
        if codes.numel() == 0:
            return self._silence(codes)
        audio = self._decode_latent(latent, lengths)
        if self.training and lengths is not None:  # _decode_latent masks in eval only
            audio = long_audio.mask_past_lengths(audio, lengths * self.hop_length)
        return audio

    def leveled_output(
        self,
        audio: Tensor,
        latent: Tensor,
        quantized: Tensor,
        out: QuantizerOutput,
        levels: int,
        token_lengths: Tensor,
        losses: dict[str, Tensor],
    ) -> TokenizerOutput:
        """A training pass's result from the quantized latent ``(b, dim, t)`` of ``levels``
        levels: the reconstruction cropped to ``audio``'s ``s`` samples and the tokens."""
        reconstruction = self._decode_latent(quantized, token_lengths)[..., : audio.shape[-1]]
        codes = out.codes.movedim(-1, 1)[:, :levels]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(codes, self.spec_with_levels(levels), token_lengths),
            losses=losses,
            metrics=out.metrics,
            latent=latent,
        )


class SpatialTiling:
    """Tiled encode / decode for image and video tokenizers (frames larger than the training
    size, in bounded memory); see :mod:`anytok.codecs.tiling`."""

    def encode_tiled(self, media: Tensor, tile: int = 256, overlap: int = 32) -> Tokens:
        """Encode frames larger than the training size in overlapping spatial tiles, in
        bounded memory (:func:`anytok.codecs.tiling.encode_tiled`)."""
        from anytok.codecs import tiling

        return tiling.encode_tiled(self, media, tile, overlap)

    def decode_tiled(self, tokens: Tokens | Tensor, tile: int = 32, overlap: int = 8) -> Tensor:
        """Decode a large latent grid in overlapping, blended latent tiles
        (:func:`anytok.codecs.tiling.decode_tiled`)."""
        from anytok.codecs import tiling

        _check_spec_of(self, tokens, "decode_tiled")
        return tiling.decode_tiled(self, tokens, tile, overlap)


class ImageTokenizer(SpatialTiling, Tokenizer):
    """Images ``(batch, 3, H, W)`` with H, W multiples of ``downsample_factor``.

    ``resize`` says how files of another size are fitted (:data:`anytok.tokens.RESIZE_POLICIES`):
    fully convolutional families accept any multiple of their stride (``"native"``), fixed-size
    ones (ViT tokenizers) resize to cover ``resolution`` and crop (``"cover_crop"``).
    """

    modality = "image"
    resize: str = "cover_crop"
    resolution: tuple[int, int]
    downsample_factor: int
    quantizer: nn.Module

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(
            modality="image",
            codebook_sizes=tuple(self.quantizer.codebook_sizes),
            layout=("height", "width"),
            resolution=tuple(self.resolution),
            name=self.registry_name,
            architecture=self.architecture,
            resize=self.resize,
        )

    def check_input(self, image: Tensor) -> Tensor:
        """Check an image batch; return it in the weights' dtype (see ``_check_media``)."""
        image = self._check_media(image, 4, "images (batch, 3, height, width)")
        h, w = image.shape[-2:]
        f = self.downsample_factor
        if image.shape[1] != 3 or h % f or w % f or h == 0 or w == 0:
            raise ValueError(
                f"{type(self).__name__}: expects (batch, 3, H, W) with H and W multiples of {f}, "
                f"got {tuple(image.shape)}; resize or crop first (anytok.media.load_image(size=...))"
            )
        return image


class VideoTokenizer(SpatialTiling, Tokenizer):
    """Video ``(batch, 3, frames, H, W)``; causal in time with the first frame alone.

    A clip of ``1 + k * temporal_factor`` frames gives ``1 + k`` latent frames. Other frame
    counts are right-padded by repeating the last frame up to the next such count;
    ``lengths`` (frames) become ``1 + ceil((lengths - 1) / temporal_factor)``, and the frames
    past an item's length are replaced by its last frame, the padding it gets alone.
    """

    modality = "video"
    causal = True
    resize: str = "cover_crop"  # see ImageTokenizer
    resolution: tuple[int, int]
    fps: float
    spatial_factor: int
    temporal_factor: int
    quantizer: nn.Module

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(
            modality="video",
            codebook_sizes=tuple(self.quantizer.codebook_sizes),
            layout=("frame", "height", "width"),
            frame_rate=self.fps / self.temporal_factor,
            resolution=tuple(self.resolution),
            fps=self.fps,
            name=self.registry_name,
            architecture=self.architecture,
            resize=self.resize,
        )

    def latent_frames(self, frames: Tensor | int) -> Tensor | int:
        """Latent frames for a clip of ``frames`` frames (>= 1)."""
        s = self.temporal_factor
        if isinstance(frames, Tensor):
            return 1 + torch.div(frames - 1 + s - 1, s, rounding_mode="floor")
        return 1 + math.ceil((frames - 1) / s)

    def pad_input(self, video: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check and pad ``video`` in time; return it and latent lengths ``(batch,)``."""
        video = self._check_media(video, 5, "video (batch, 3, frames, height, width)")
        b, c, t, h, w = video.shape
        f = self.spatial_factor
        if c != 3 or t == 0 or h % f or w % f or h == 0 or w == 0:
            raise ValueError(
                f"{type(self).__name__}: expects (batch, 3, frames>=1, H, W) with H and W "
                f"multiples of {f}, got {tuple(video.shape)}"
            )
        lengths = self._check_lengths(lengths, b, (1, t), "frames")
        target = 1 + (self.latent_frames(t) - 1) * self.temporal_factor
        if target > t:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, target - t, -1, -1)], dim=2)
        if lengths is None:
            lengths = torch.full((b,), t)  # on the CPU: see AudioTokenizer.pad_input
        elif lengths.device.type != "cpu" or not bool((lengths >= t).all()):
            # Frames past an item's length repeat its last frame, as alone. Device lengths
            # (a training batch's) are not checked first: that would wait for the device.
            on_device = lengths.to(video.device)
            kept = torch.arange(target, device=video.device)[None, :] < on_device[:, None]
            last = (on_device - 1).clamp(min=0).view(b, 1, 1, 1, 1)
            last_frame = video.gather(2, last.expand(b, c, 1, h, w))
            video = torch.where(kept[:, None, :, None, None], video, last_frame)
        return video, self.latent_frames(lengths.long())

    def encode_long(self, video: Tensor, **kwargs: Any) -> Tokens:
        """Tokens of a clip of any length in bounded memory, equal to one pass
        (:func:`anytok.codecs.long_video.encode_long`: ``chunk_frames``, ``lengths``)."""
        from anytok.codecs import long_video

        return long_video.encode_long(self, video, **kwargs)

    def encode_long_stream(self, pieces: Iterable[Tensor], **kwargs: Any) -> Tokens:
        """:meth:`encode_long` of a clip arriving as consecutive ``(batch, 3, t, H, W)``
        pieces, in bounded memory (:func:`anytok.codecs.long_video.encode_long_stream`:
        ``chunk_frames``)."""
        from anytok.codecs import long_video

        return long_video.encode_long_stream(self, pieces, **kwargs)

    def decode_long(self, tokens: Tokens | Tensor, **kwargs: Any) -> Tensor:
        """Video from tokens of any length, chunk by chunk, equal to one pass
        (:func:`anytok.codecs.long_video.decode_long`: ``chunk_latents``)."""
        from anytok.codecs import long_video

        _check_spec_of(self, tokens, "decode_long")
        return long_video.decode_long(self, tokens, **kwargs)


def to_tokens(codes: Tensor, spec: TokenSpec, lengths: Tensor | None) -> Tokens:
    """Wrap ``(b, levels, *positions)`` codes; ``lengths`` equal to the full size become None.

    Only host lengths are checked: lengths the model computed itself live on the CPU, so the
    check costs nothing. Device lengths (a training batch's) are kept as they are, since
    checking them would make the host wait for the device.
    """
    on_host = lengths is not None and lengths.device.type == "cpu"
    if on_host and bool((lengths == codes.shape[2]).all()):
        lengths = None
    return Tokens(codes=codes.long(), spec=spec, lengths=lengths)


__all__ = [
    "AudioTokenizer",
    "ImageTokenizer",
    "ResidualAudioTokenizer",
    "SpatialTiling",
    "Tokenizer",
    "TokenizerOutput",
    "VideoTokenizer",
    "build_quantizer",
    "decode_codes",
    "quantize_channel_first",
    "to_tokens",
]
