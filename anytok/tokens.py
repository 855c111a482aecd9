"""Tokens: codes plus the spec that says what they mean, LM vocabulary mapping, safe I/O.

- :class:`TokenSpec` describes a tokenizer's codes (modality, codebook sizes, layout, rates).
- :class:`Tokens` holds a batch of int64 codes ``(batch, levels, *positions)``, its spec and
  valid lengths along the first position axis (time / frames).
- :class:`LMVocab` maps ``(level, code)`` to language-model ids: an ``offset`` (so the codes
  can follow a text vocabulary), one id range per level (or one shared range), then the
  special ids ``bos``, ``eos`` and ``pad``.
- :meth:`Tokens.to_lm_ids` / :meth:`Tokens.from_lm_ids` lay the ids out with the
  ``flatten``, ``parallel`` or ``delay`` (MusicGen) pattern and invert them exactly.
- :meth:`Tokens.save` / :meth:`Tokens.load` write ``.safetensors`` or ``.npz`` without pickle;
  codes are stored in the smallest unsigned dtype that holds the codebook.

Positions beyond ``lengths`` carry no information: the LM patterns emit ``pad`` there (or
nothing, for ``flatten``), ``save`` writes 0 there, and ``from_lm_ids`` / ``load`` return 0
there.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors
import safetensors.numpy
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from anytok.files import atomic_output

MODALITIES = ("audio", "image", "video")
PATTERNS = ("flatten", "delay", "parallel")
Pattern = Literal["flatten", "delay", "parallel"]

#: Codes are int64 in memory, so a codebook holds at most 2**63 entries.
MAX_CODEBOOK_SIZE = 2**63
#: How images / video frames are fitted to a tokenizer (see :attr:`TokenSpec.resize`).
RESIZE_POLICIES = ("cover_crop", "native")
_MAX_ID = 2**63 - 1
_FILE_FORMAT = "anytok.tokens/1"
SAVE_EXTENSIONS = (".safetensors", ".npz")


def _is_int_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def as_int(value: Any, what: str) -> int:
    """``value`` as a Python int (numpy / 0-d tensor ints accepted; bool, float and str not)."""
    if isinstance(value, (bool, float, str, bytes)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | Tensor | np.ndarray):
        raise TypeError(f"{what} must be a sequence of integers, got {values!r}")
    return tuple(as_int(v, f"{what}[{i}]") for i, v in enumerate(values))


def _positive_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{what} must be a positive number or None, got {value!r}")
    out = float(value)
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"{what} must be a finite positive number or None, got {value!r}")
    return out


def _positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # 16000.0 is fine
        value = int(value)
    out = as_int(value, what)
    if out <= 0:
        raise ValueError(f"{what} must be a positive integer or None, got {value!r}")
    return out


@dataclass(frozen=True)
class TokenSpec:
    """What a tokenizer's codes mean.

    Attributes:
        modality: ``"audio"``, ``"image"`` or ``"video"``.
        codebook_sizes: one codebook size per level (residual stage or group).
        layout: names of the position axes of ``codes`` after ``(batch, level)``, e.g.
            ``("time",)`` for audio, ``("height", "width")`` for a 2D image grid,
            ``("sequence",)`` for 1D image tokens, ``("frame", "height", "width")`` for video.
        frame_rate: positions per second along the time axis (audio: code frames per second;
            video: latent frames per second); ``None`` for images.
        sample_rate: audio sample rate the tokenizer expects at its input.
        channels: audio channels the tokenizer expects at its input.
        resolution: ``(height, width)`` the tokenizer was trained at (images / video).
        fps: video frame rate the tokenizer expects at its input.
        name: registry name of the tokenizer that produced the codes (``"arch.tag"``).
        resize: how images / video frames of another size were fitted to the tokenizer, one
            of :data:`RESIZE_POLICIES`: ``"cover_crop"`` (resize to cover ``resolution``,
            keeping the aspect ratio, then crop the centre: fixed-size tokenizers) or
            ``"native"`` (keep the size, crop the centre to a multiple of the stride: fully
            convolutional tokenizers; the token grid then follows the input's shape).
        code_repeats: ``None`` (every position holds its own code), or per level, per layout
            axis, how many consecutive positions hold one code: a level stored repeated on a
            finer grid (hierarchical video's coarse level, ``((1, 2, 2), (1, 1, 1))``).
            The rates (:attr:`bits_per_position`, :meth:`tokens_per_second`,
            :attr:`Tokens.bits_per_item` ...) count each such code once; the codes and LM
            ids keep every stored position. Written to JSON only when set, so files without
            it (older ones) read as ``None``.
        architecture: the registered architecture that produced the codes (``"dac_24khz"``),
            ``None`` for a model built outside the registry. Two architectures can share
            every other field (EnCodec and DAC at 24 kHz, VQGAN at stride 16 and 8) while
            their codes mean different things, so decoders compare it where both set it.
            Written to JSON only when set (older files read as ``None``).

    Lists are accepted for the tuple fields and stored as tuples; numbers are checked
    (codebook sizes in ``[2, 2**63]``, rates positive and finite).
    """

    modality: str
    codebook_sizes: tuple[int, ...]
    layout: tuple[str, ...]
    frame_rate: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    resolution: tuple[int, int] | None = None
    fps: float | None = None
    name: str = ""
    resize: str | None = None
    code_repeats: tuple[tuple[int, ...], ...] | None = None
    architecture: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(
                f"TokenSpec: modality must be one of {MODALITIES}, got {self.modality!r}"
            )
        sizes = _int_tuple(self.codebook_sizes, "TokenSpec.codebook_sizes")
        if not sizes:
            raise ValueError("TokenSpec: codebook_sizes is empty; give one size per level")
        for level, size in enumerate(sizes):
            if not 2 <= size <= MAX_CODEBOOK_SIZE:
                raise ValueError(
                    f"TokenSpec: codebook_sizes[{level}] = {size}; every codebook size must be "
                    f"in [2, 2**63]"
                )
        if isinstance(self.layout, (str, bytes)) or not isinstance(self.layout, Sequence):
            raise TypeError(
                f"TokenSpec: layout must be a sequence of axis names such as ('time',), "
                f"got {self.layout!r}"
            )
        layout = tuple(self.layout)
        if not layout:
            raise ValueError("TokenSpec: layout is empty; name at least one position axis")
        if not all(isinstance(a, str) and a for a in layout):
            raise TypeError(f"TokenSpec: layout axis names must be non-empty strings, got {layout}")
        if len(set(layout)) != len(layout):
            raise ValueError(f"TokenSpec: layout axis names must be distinct, got {layout}")
        resolution = self.resolution
        if resolution is not None:
            resolution = _int_tuple(resolution, "TokenSpec.resolution")
            if len(resolution) != 2 or min(resolution) <= 0:
                raise ValueError(
                    f"TokenSpec: resolution must be (height, width) > 0, got {self.resolution!r}"
                )
        if self.resize is not None and self.resize not in RESIZE_POLICIES:
            raise ValueError(
                f"TokenSpec: resize must be one of {RESIZE_POLICIES} or None, got {self.resize!r}"
            )
        if not isinstance(self.name, str):
            raise TypeError(f"TokenSpec: name must be a str, got {self.name!r}")
        if self.architecture is not None and not isinstance(self.architecture, str):
            raise TypeError(
                f"TokenSpec: architecture must be a str or None, got {self.architecture!r}"
            )
        set_ = object.__setattr__  # frozen dataclass: normalise in place
        set_(self, "codebook_sizes", sizes)
        set_(self, "layout", layout)
        set_(self, "resolution", resolution)
        set_(self, "frame_rate", _positive_float(self.frame_rate, "TokenSpec.frame_rate"))
        set_(self, "fps", _positive_float(self.fps, "TokenSpec.fps"))
        set_(self, "sample_rate", _positive_int(self.sample_rate, "TokenSpec.sample_rate"))
        set_(self, "channels", _positive_int(self.channels, "TokenSpec.channels"))
        set_(self, "code_repeats", self._checked_repeats())

    def _checked_repeats(self) -> tuple[tuple[int, ...], ...] | None:
        """``code_repeats`` as tuples, checked: one tuple of ``len(layout)`` integers >= 1
        per level; all ones is ``None`` (the same tokens)."""
        if self.code_repeats is None:
            return None
        where = "TokenSpec.code_repeats"
        if isinstance(self.code_repeats, (str, bytes)) or not isinstance(
            self.code_repeats, Sequence
        ):
            raise TypeError(
                f"{where} must be None or one tuple per level, got {self.code_repeats!r}"
            )
        repeats = tuple(_int_tuple(r, f"{where}[{k}]") for k, r in enumerate(self.code_repeats))
        shape_ok = len(repeats) == self.num_levels and all(
            len(r) == len(self.layout) for r in repeats
        )
        if not shape_ok or any(n < 1 for r in repeats for n in r):
            raise ValueError(
                f"{where} must give, for each of the {self.num_levels} level(s), one integer "
                f">= 1 per layout axis {self.layout}; got {self.code_repeats!r}"
            )
        return None if all(n == 1 for r in repeats for n in r) else repeats

    def level_repeats(self, level: int) -> tuple[int, ...]:
        """Positions per code of ``level`` along each layout axis (all 1 without
        :attr:`code_repeats`)."""
        if self.code_repeats is None:
            return (1,) * len(self.layout)
        return self.code_repeats[level]

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def bits_per_position(self) -> float:
        """Bits carried by one position (all levels); a level whose code fills ``r``
        positions (:attr:`code_repeats`) adds ``log2(size) / r``."""
        return float(
            sum(
                math.log2(k) / math.prod(self.level_repeats(level))
                for level, k in enumerate(self.codebook_sizes)
            )
        )

    @property
    def storage_dtype(self) -> np.dtype:
        """Smallest unsigned numpy dtype that holds ``max(codebook_sizes) - 1``."""
        top = max(self.codebook_sizes) - 1
        for dtype in (np.uint8, np.uint16, np.uint32):
            if top <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        return np.dtype(np.uint64)

    def tokens_per_second(self, spatial_shape: Sequence[int] = ()) -> float:
        """Tokens (all levels) per second of audio or video.

        ``frame_rate × levels × prod(spatial_shape)``, where ``spatial_shape`` gives the sizes
        of the layout axes after the first (time) one: ``()`` for audio ``("time",)``,
        ``(h, w)`` for video ``("frame", "height", "width")``. :attr:`Tokens.tokens_per_second`
        reads them from the codes. A level stored repeated (:attr:`code_repeats`) counts
        each code once.
        """
        rate = self._frame_rate_or_raise("tokens_per_second")
        self._spatial(spatial_shape)  # checks it
        return rate * sum(
            self.codes_per_step(level, spatial_shape) / self.level_repeats(level)[0]
            for level in range(self.num_levels)
        )

    def codes_per_step(self, level: int, spatial_shape: Sequence[int] = ()) -> int:
        """Codes of ``level`` in one step of the first layout axis over ``spatial_shape``
        (the other axes' sizes): ``prod(spatial_shape)``, or fewer where the level's code
        fills several positions (:attr:`code_repeats`; a part block counts as one code)."""
        repeats = self.level_repeats(level)[1:]
        return math.prod(-(-size // r) for size, r in zip(spatial_shape, repeats, strict=True))

    def bits_per_second(self, spatial_shape: Sequence[int] = ()) -> float:
        """Bitrate ``frame_rate × bits_per_position × prod(spatial_shape)``; see
        :meth:`tokens_per_second` for ``spatial_shape`` (and :attr:`code_repeats`)."""
        rate = self._frame_rate_or_raise("bits_per_second")
        spatial = self._spatial(spatial_shape)
        if self.code_repeats is None:
            return rate * self.bits_per_position * spatial
        return rate * sum(
            math.log2(k) * self.codes_per_step(level, spatial_shape) / self.level_repeats(level)[0]
            for level, k in enumerate(self.codebook_sizes)
        )

    def _frame_rate_or_raise(self, what: str) -> float:
        if self.frame_rate is None:
            raise ValueError(
                f"TokenSpec.{what}: {self.modality} spec {self.name or self.layout} has no "
                "frame_rate (images have no time axis); use Tokens.tokens_per_item instead"
            )
        return self.frame_rate

    def _spatial(self, spatial_shape: Sequence[int]) -> int:
        sizes = _int_tuple(spatial_shape, "spatial_shape")
        if len(sizes) != len(self.layout) - 1:
            raise ValueError(
                f"TokenSpec: spatial_shape must give the sizes of the layout axes after "
                f"{self.layout[0]!r}, i.e. {self.layout[1:]}, got {tuple(sizes)}"
            )
        return math.prod(sizes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); :meth:`from_dict` inverts it.
        ``code_repeats`` and ``architecture`` appear only when set, so files without them
        read in versions that predate them; a file that has them does not (``from_dict``
        refuses unknown keys), and every registry model sets ``architecture``."""
        out = asdict(self)
        if out["architecture"] is None:
            del out["architecture"]
        for key in ("codebook_sizes", "layout", "resolution"):
            if out[key] is not None:
                out[key] = list(out[key])
        if out["code_repeats"] is None:
            del out["code_repeats"]
        else:
            out["code_repeats"] = [list(r) for r in out["code_repeats"]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors."""
        if not isinstance(data, Mapping):
            raise TypeError(f"TokenSpec.from_dict: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"TokenSpec.from_dict: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        missing = [k for k in ("modality", "codebook_sizes", "layout") if k not in data]
        if missing:
            raise ValueError(f"TokenSpec.from_dict: missing key(s) {missing}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TokenSpec:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class LMVocab:
    """How codes become language-model ids.

    Ids ``[0, offset)`` are left to the LM's own (e.g. text) vocabulary. Code ids follow:
    with ``shared_levels=False`` level ``k`` owns ``[level_offsets[k], level_offsets[k] +
    codebook_sizes[k])`` and the ranges are consecutive; with ``shared_levels=True`` every
    level uses ``[offset, offset + max(codebook_sizes))``. Then come ``bos``, ``eos`` and
    ``pad`` (always reserved), so ``size = pad + 1`` ids are used in all, offset included.

    Build one with :meth:`from_spec`.
    """

    codebook_sizes: tuple[int, ...]
    offset: int = 0
    shared_levels: bool = False

    def __post_init__(self) -> None:
        sizes = _int_tuple(self.codebook_sizes, "LMVocab.codebook_sizes")
        if not sizes or min(sizes) < 2:
            raise ValueError(f"LMVocab: codebook sizes must be >= 2, got {sizes}")
        offset = as_int(self.offset, "LMVocab.offset")
        if offset < 0:
            raise ValueError(f"LMVocab: offset must be >= 0, got {offset}")
        if not isinstance(self.shared_levels, bool):
            raise TypeError(f"LMVocab: shared_levels must be a bool, got {self.shared_levels!r}")
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "offset", offset)
        if self.size - 1 > _MAX_ID:
            raise ValueError(f"LMVocab: {self.size} ids do not fit in int64")

    @classmethod
    def from_spec(cls, spec: TokenSpec, *, offset: int = 0, shared_levels: bool = False) -> LMVocab:
        return cls(spec.codebook_sizes, offset=offset, shared_levels=shared_levels)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """First id of each level's range (``offset`` included): ``id = level_offsets[k] + code``."""
        if self.shared_levels:
            return (self.offset,) * self.num_levels
        starts = [self.offset]
        for size in self.codebook_sizes[:-1]:
            starts.append(starts[-1] + size)
        return tuple(starts)

    @property
    def num_code_ids(self) -> int:
        """Ids used by codes: ``sum(codebook_sizes)``, or ``max`` with shared levels."""
        sizes = self.codebook_sizes
        return max(sizes) if self.shared_levels else sum(sizes)

    @property
    def bos(self) -> int:
        return self.offset + self.num_code_ids

    @property
    def eos(self) -> int:
        return self.bos + 1

    @property
    def pad(self) -> int:
        return self.bos + 2

    @property
    def size(self) -> int:
        """Total ids used, offset included (an LM embedding table needs this many rows)."""
        return self.bos + 3

    def code_to_id(self, level: int, code: int | Tensor) -> int | Tensor:
        """Id of ``code`` at ``level`` (an int, or an integer tensor of any shape)."""
        size = self._level_size(level)
        if isinstance(code, Tensor):
            bad = (code < 0) | (code >= size)
            if bool(bad.any()):
                value = int(code[bad][0])
                raise ValueError(
                    f"LMVocab.code_to_id: code {value} outside [0, {size}) at level {level}"
                )
            return code.long() + self.level_offsets[level]
        code = as_int(code, "code")
        if not 0 <= code < size:
            raise ValueError(
                f"LMVocab.code_to_id: code {code} outside [0, {size}) at level {level}"
            )
        return self.level_offsets[level] + code

    def id_to_code(self, level: int, token_id: int | Tensor) -> int | Tensor:
        """Inverse of :meth:`code_to_id`; ids outside the level's range are errors."""
        size, start = self._level_size(level), self.level_offsets[level]
        if isinstance(token_id, Tensor):
            bad = (token_id < start) | (token_id >= start + size)
            if bool(bad.any()):
                value = int(token_id[bad][0])
                raise ValueError(
                    f"LMVocab.id_to_code: id {value} is {self.describe(value)}, not a level-{level} code"
                )
            return token_id.long() - start
        token_id = as_int(token_id, "token_id")
        if not start <= token_id < start + size:
            raise ValueError(
                f"LMVocab.id_to_code: id {token_id} is {self.describe(token_id)}, not a level-{level} code"
            )
        return token_id - start

    def describe(self, token_id: int) -> str:
        """Human-readable meaning of an id, for error messages."""
        special = {self.bos: "bos", self.eos: "eos", self.pad: "pad"}
        if token_id in special:
            return f"the {special[token_id]} token"
        if token_id < 0 or token_id >= self.size:
            return f"outside the vocabulary [0, {self.size})"
        if token_id < self.offset:
            return f"below the code offset {self.offset} (a text id?)"
        hits = [
            f"level {k} code {token_id - start}"
            for k, (start, size) in enumerate(zip(self.level_offsets, self.codebook_sizes))
            if start <= token_id < start + size
        ]
        return " / ".join(hits) if hits else "in the shared code range but above every codebook"

    def to_dict(self) -> dict[str, Any]:
        return {
            "codebook_sizes": list(self.codebook_sizes),
            "offset": self.offset,
            "shared_levels": self.shared_levels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LMVocab:
        return cls(
            data["codebook_sizes"],
            offset=data.get("offset", 0),
            shared_levels=data.get("shared_levels", False),
        )

    def _level_size(self, level: int) -> int:
        if not 0 <= level < self.num_levels:
            raise ValueError(f"LMVocab: level {level} outside [0, {self.num_levels})")
        return self.codebook_sizes[level]

    def _ranges(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-level first and last code id, each ``(levels,)`` int64 (``last`` fits int64)."""
        lo = torch.tensor(self.level_offsets, dtype=torch.long, device=device)
        top = torch.tensor([k - 1 for k in self.codebook_sizes], dtype=torch.long, device=device)
        return lo, lo + top


# Cell kinds of a parallel / delay id array.
_CODE, _BOS, _EOS, _PAD = 0, 1, 2, 3


def _grid(
    n: Tensor, levels: int, num_pos: int, pattern: str, add_special: bool
) -> tuple[Tensor, Tensor]:
    """What each cell of a ``(batch, levels, width)`` parallel / delay id array holds.

    Args:
        n: ``(batch,)`` valid flattened positions per item (``<= num_pos``).
    Returns:
        ``index`` ``(batch, levels, width)``: the flattened position a code cell reads, and
        ``num_pos`` for every other cell; ``kind`` of the same shape: ``_CODE`` / ``_BOS`` /
        ``_EOS`` / ``_PAD``.
    """
    start = int(add_special)
    extra = levels - 1 if pattern == "delay" else 0
    width = num_pos + extra + 2 * start
    device = n.device
    col = torch.arange(width, device=device)
    shift = _stream_shifts(levels, pattern, device)
    pos = (col[None, :] - start - shift[:, None]).unsqueeze(0)  # (1, L, W)
    is_code = (pos >= 0) & (pos < n[:, None, None])  # (B, L, W)
    index = torch.where(is_code, pos, num_pos)
    kind = torch.where(is_code, _CODE, _PAD)
    if add_special:
        kind[:, :, 0] = _BOS
        eos_col = (start + n + extra)[:, None, None]
        kind = torch.where(col[None, None, :] == eos_col, _EOS, kind)
    return index, kind


def _lay_out_streams(
    ids: Tensor, n: Tensor, vocab: LMVocab, pattern: str, add_special: bool
) -> Tensor:
    """Code ids ``(batch, levels, num_pos)`` (level offsets added) with ``n (batch,)`` valid
    positions -> the parallel / delay array ``(batch, levels, width)``."""
    batch, levels, num_pos = ids.shape
    index, kind = _grid(n, levels, num_pos, pattern, add_special)
    ext = torch.cat([ids, ids.new_full((batch, levels, 1), vocab.pad)], dim=2)
    out = torch.gather(ext, 2, index.expand(batch, -1, -1).contiguous())
    out = torch.where(kind == _BOS, vocab.bos, out)
    return torch.where(kind == _EOS, vocab.eos, out)


def _stream_shifts(levels: int, pattern: str, device: torch.device) -> Tensor:
    """``(levels,)`` columns stream ``k`` is shifted right by: ``k`` for delay, else 0."""
    shift = torch.arange(levels, device=device)
    return shift if pattern == "delay" else torch.zeros_like(shift)


def _strip_trailing_pad(seq: Tensor, pad: int) -> Tensor:
    """A 1D id sequence without its trailing ``pad`` ids (no code, bos or eos id equals pad)."""
    kept = (seq != pad).nonzero()
    return seq[: int(kept[-1]) + 1 if kept.numel() else 0]


def _first_column(mask: Tensor) -> Tensor:
    """``(batch,)`` index of the first True in each row of ``(batch, width)``, else ``width``."""
    sentinel = mask.new_ones(mask.shape[0], 1)
    return torch.cat([mask, sentinel], dim=1).long().argmax(dim=1)  # argmax: first maximum


def _first_true(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


@dataclass
class Tokens:
    """A batch of codes and their spec.

    Attributes:
        codes: int64 ``(batch, levels, *positions)`` with the position axes named by
            ``spec.layout``. Other integer dtypes are converted to int64.
        spec: the :class:`TokenSpec`.
        lengths: int64 ``(batch,)`` valid lengths along the first position axis (time or
            frames), or ``None`` when every position is valid.
    """

    codes: Tensor
    spec: TokenSpec
    lengths: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, TokenSpec):
            raise TypeError(f"Tokens: spec must be a TokenSpec, got {type(self.spec).__name__}")
        codes = self.codes
        if not isinstance(codes, Tensor):
            raise TypeError(f"Tokens: codes must be a torch.Tensor, got {type(codes).__name__}")
        if not _is_int_dtype(codes.dtype):
            raise TypeError(f"Tokens: codes must be an integer tensor (int64), got {codes.dtype}")
        layout = self.spec.layout
        if codes.ndim != 2 + len(layout):
            axes = ", ".join(("batch", "levels", *layout))
            raise ValueError(
                f"Tokens: codes must have {2 + len(layout)} dims ({axes}) for layout {layout}, "
                f"got shape {tuple(codes.shape)}"
            )
        if codes.shape[1] != self.spec.num_levels:
            raise ValueError(
                f"Tokens: codes.shape[1] = {codes.shape[1]} but the spec has "
                f"{self.spec.num_levels} levels (codebook_sizes={self.spec.codebook_sizes})"
            )
        self.codes = codes.long()
        if self.lengths is not None:
            lengths = self.lengths
            if not isinstance(lengths, Tensor):
                lengths = torch.as_tensor(lengths)
            if not _is_int_dtype(lengths.dtype):
                raise TypeError(f"Tokens: lengths must be an integer tensor, got {lengths.dtype}")
            if lengths.shape != (codes.shape[0],):
                raise ValueError(
                    f"Tokens: lengths must have shape (batch,) = ({codes.shape[0]},), got {tuple(lengths.shape)}"
                )
            lengths = lengths.to(device=codes.device, dtype=torch.long)
            bad = (lengths < 0) | (lengths > codes.shape[2])
            if not lengths.is_meta and bool(bad.any()):  # meta tensors hold no values
                item = _first_true(bad)[0]
                raise ValueError(
                    f"Tokens: lengths[{item}] = {int(lengths[item])} outside [0, {codes.shape[2]}] "
                    f"(the size of axis {layout[0]!r})"
                )
            self.lengths = lengths

    def to(self, device: torch.device | str) -> Tokens:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Tokens(self.codes.to(device), self.spec, lengths)

    def __len__(self) -> int:
        """The batch size."""
        return self.codes.shape[0]

    def __getitem__(self, item: int) -> Tokens:
        """Item ``item`` of the batch alone: codes ``(1, levels, length, ...)`` cut to its
        valid length, ``lengths`` None (negative indices count from the end)."""
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"Tokens[{item!r}]: index with an int (use unbind() for all items)")
        if not -len(self) <= item < len(self):
            raise IndexError(f"Tokens[{item}]: the batch holds {len(self)} item(s)")
        item %= len(self)
        codes = self.codes[item : item + 1]
        if self.lengths is not None:
            codes = codes[:, :, : int(self.lengths[item])]
        return Tokens(codes=codes.contiguous(), spec=self.spec, lengths=None)

    def unbind(self) -> list[Tokens]:
        """One :class:`Tokens` per batch item, each cut to its valid length (see ``[i]``)."""
        return [self[i] for i in range(len(self))]

    # ----------------------------------------------------------------- shape helpers
    @property
    def batch_size(self) -> int:
        return self.codes.shape[0]

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def positions_shape(self) -> tuple[int, ...]:
        """Sizes of the layout axes, ``codes.shape[2:]``."""
        return tuple(self.codes.shape[2:])

    @property
    def valid_lengths(self) -> Tensor:
        """``(batch,)`` int64 lengths along the first position axis (full size when None)."""
        if self.lengths is not None:
            return self.lengths
        return torch.full(
            (self.batch_size,), self.codes.shape[2], dtype=torch.long, device=self.codes.device
        )

    def valid_mask(self) -> Tensor:
        """``(batch, *positions)`` bool: True where a position is within ``lengths``."""
        t = torch.arange(self.codes.shape[2], device=self.codes.device)
        mask = t[None, :] < self.valid_lengths[:, None]
        mask = mask.reshape(mask.shape + (1,) * (self.codes.ndim - 3))
        return mask.expand(self.batch_size, *self.positions_shape)

    def equal(self, other: Tokens) -> bool:
        """Same spec, shape, valid lengths and codes at every valid position. A spec without
        an ``architecture`` (a file written before specs carried it) matches one with it, as
        :meth:`~anytok.codecs.base.Tokenizer.check_token_spec` lets it decode."""
        if not isinstance(other, Tokens):
            raise TypeError(f"Tokens.equal: expected Tokens, got {type(other).__name__}")
        mine, theirs = self.spec, other.spec
        if None in (mine.architecture, theirs.architecture):
            mine = replace(mine, architecture=None)
            theirs = replace(theirs, architecture=None)
        if mine != theirs or self.codes.shape != other.codes.shape:
            return False
        if not torch.equal(self.valid_lengths.cpu(), other.valid_lengths.cpu()):
            return False
        mask = self.valid_mask().unsqueeze(1).cpu()
        return bool(((self.codes.cpu() == other.codes.cpu()) | ~mask).all())

    def __eq__(self, other: object) -> bool:
        """``a == b`` is :meth:`equal` (the generated dataclass comparison of code tensors
        has no truth value)."""
        if not isinstance(other, Tokens):
            return NotImplemented
        return self.equal(other)

    __hash__ = None  # mutable, compared by value: unhashable, as a dataclass with eq is

    # ------------------------------------------------------------------------ rates
    def _codes_per_level(self) -> list[Tensor]:
        """``(batch,)`` int64 valid codes of each level, a code stored repeated over several
        positions (:attr:`TokenSpec.code_repeats`) counted once."""
        spatial = self.positions_shape[1:]
        out = []
        for level in range(self.num_levels):
            steps = -(-self.valid_lengths // self.spec.level_repeats(level)[0])  # ceil
            out.append(steps * self.spec.codes_per_step(level, spatial))
        return out

    @property
    def tokens_per_item(self) -> Tensor:
        """``(batch,)`` int64 valid tokens per item, all levels (no special tokens); a code
        stored repeated (:attr:`TokenSpec.code_repeats`) counts once."""
        if self.spec.code_repeats is None:
            return self.valid_lengths * (math.prod(self.positions_shape[1:]) * self.num_levels)
        return torch.stack(self._codes_per_level()).sum(0)

    @property
    def bits_per_item(self) -> Tensor:
        """``(batch,)`` float64 information per item: valid positions × bits per position
        (a code stored repeated counts once, as in :attr:`tokens_per_item`)."""
        if self.spec.code_repeats is None:
            positions = self.valid_lengths * math.prod(self.positions_shape[1:])
            return positions.double() * self.spec.bits_per_position
        counts = self._codes_per_level()
        return sum(
            count.double() * math.log2(k) for count, k in zip(counts, self.spec.codebook_sizes)
        )

    @property
    def tokens_per_second(self) -> float:
        """Tokens per second (audio / video), spatial sizes taken from the codes; a code
        stored repeated (:attr:`TokenSpec.code_repeats`) counts once."""
        return self.spec.tokens_per_second(self.positions_shape[1:])

    @property
    def bits_per_second(self) -> float:
        """Bitrate (audio / video), spatial sizes taken from the codes."""
        return self.spec.bits_per_second(self.positions_shape[1:])

    # ---------------------------------------------------------------- LM id mapping
    def _check_codes(self, where: str) -> None:
        """Raise if a valid code is outside its level's codebook."""
        batch, levels = self.codes.shape[:2]
        flat = self.codes.reshape(batch, levels, math.prod(self.positions_shape))
        top = [k - 1 for k in self.spec.codebook_sizes]  # a size of 2**63 overflows int64
        top = torch.tensor(top, dtype=torch.long, device=flat.device)
        valid = self.valid_mask().reshape(batch, 1, math.prod(self.positions_shape))
        bad = valid & ((flat < 0) | (flat > top[None, :, None]))
        if bool(bad.any()):
            item, level, p = _first_true(bad)
            pos = tuple(int(i) for i in np.unravel_index(p, self.positions_shape))
            raise ValueError(
                f"{where}: code {int(flat[item, level, p])} at item {item}, level {level}, "
                f"position {pos} is outside the codebook [0, {self.spec.codebook_sizes[level]})"
            )

    def _check_vocab(self, vocab: LMVocab, where: str) -> None:
        if vocab.codebook_sizes != self.spec.codebook_sizes:
            raise ValueError(
                f"{where}: vocab codebook sizes {vocab.codebook_sizes} do not match the spec's "
                f"{self.spec.codebook_sizes}; build it with LMVocab.from_spec(spec)"
            )

    def to_lm_ids(
        self, vocab: LMVocab, pattern: Pattern = "flatten", add_special: bool = True
    ) -> list[Tensor] | Tensor:
        """Map codes to LM ids.

        Positions are flattened row-major over the layout axes (time first); only valid
        positions (within ``lengths``) carry codes.

        - ``"flatten"``: a list of ``batch`` 1D int64 tensors (always a list; lengths differ
          when ``lengths`` is set): ``[bos] p0l0 p0l1 … p1l0 … [eos]``, all levels of a
          position consecutive, ``n_b × levels (+2)`` ids.
        - ``"parallel"``: ``(batch, levels, positions (+2))``, stream ``k`` holds level ``k``;
          ``bos`` / ``eos`` columns in every stream; cells after an item's end are ``pad``.
        - ``"delay"``: like parallel but stream ``k`` is shifted right by ``k`` columns
          (MusicGen), empty cells ``pad``: ``(batch, levels, positions + levels - 1 (+2))``.
          The ``eos`` column follows an item's last delayed code in every stream.
        """
        where = "Tokens.to_lm_ids"
        if pattern not in PATTERNS:
            raise ValueError(f"{where}: pattern must be one of {PATTERNS}, got {pattern!r}")
        self._check_vocab(vocab, where)
        self._check_codes(where)
        batch, levels = self.codes.shape[:2]
        lo, _ = vocab._ranges(self.codes.device)
        ids = (
            self.codes.reshape(batch, levels, math.prod(self.positions_shape)) + lo[None, :, None]
        )  # (B, L, N)
        num_pos = ids.shape[2]
        n = self.valid_lengths * math.prod(self.positions_shape[1:])  # valid flattened positions
        if pattern == "flatten":
            seq = ids.transpose(1, 2).reshape(batch, num_pos * levels)
            start = int(add_special)
            if add_special:
                seq = torch.cat(
                    [seq.new_full((batch, 1), vocab.bos), seq, seq.new_full((batch, 1), vocab.pad)],
                    dim=1,
                )
                seq.scatter_(1, (1 + n * levels)[:, None], vocab.eos)
            ends = (n * levels + 2 * start).tolist()
            return [seq[i, :end] for i, end in enumerate(ends)]
        return _lay_out_streams(ids, n, vocab, pattern, add_special)

    @classmethod
    def from_lm_ids(
        cls,
        ids: Tensor | Sequence[Tensor],
        spec: TokenSpec,
        vocab: LMVocab,
        pattern: Pattern = "flatten",
        *,
        add_special: bool = True,
        shape: Sequence[int | None] | None = None,
        strict: bool = True,
    ) -> Tokens:
        """Inverse of :meth:`to_lm_ids` (same ``vocab``, ``pattern`` and ``add_special``).

        Args:
            ids: ``flatten``: a sequence of 1D int tensors (one per item) or a 2D tensor whose
                rows are items; trailing ``pad`` ids of an item are dropped, so a batch padded
                to one width with ``vocab.pad`` decodes as its items; ``parallel`` /
                ``delay``: ``(batch, levels, width)``.
            shape: the positions shape ``(time, *rest)`` of the codes to rebuild, one size per
                layout axis; ``time`` may be ``None`` (inferred: the longest item for flatten,
                the width for parallel / delay). Required when the layout has more than one
                axis; ``None`` means ``(None,)`` for a 1-axis layout.
            strict: ``False`` reads what an LM generated: an item ends at its first ``eos``
                (stream 0's for parallel / delay; whatever follows is ignored) or, with no
                ``eos``, where its ids run out (generation stopped at a length limit);
                ``flatten`` items may lack ``bos``; an incomplete last time step (some of
                its levels or positions missing) is dropped; an inferred ``time`` is the
                longest item's for every pattern. Ids before the end must still be valid
                codes.

        Returns:
            :class:`Tokens` with codes equal to the originals at valid positions (0 after an
            item's end) and ``lengths`` recovered from the ``eos`` / ``pad`` placement
            (``None`` when every item is full length).

        Raises:
            ValueError: on ids outside the expected level's range, misplaced or missing special
                tokens (the message names item, position and id), or sizes that do not fit.
        """
        where = "Tokens.from_lm_ids"
        if pattern not in PATTERNS:
            raise ValueError(f"{where}: pattern must be one of {PATTERNS}, got {pattern!r}")
        if vocab.codebook_sizes != spec.codebook_sizes:
            raise ValueError(
                f"{where}: vocab codebook sizes {vocab.codebook_sizes} do not match the spec's "
                f"{spec.codebook_sizes}; build it with LMVocab.from_spec(spec)"
            )
        time, rest = _resolve_shape(spec, shape, where)
        spatial = math.prod(rest)
        if pattern == "flatten":
            first_code = None  # where each item's first code id is in the ids passed
            if not strict:
                ids, first_code = _complete_flat(ids, vocab, add_special, spatial, where)
            codes, n = _from_flat(ids, vocab, add_special, time, spatial, where, first_code)
        else:
            if not strict:
                ids = _complete_streams(ids, vocab, pattern, add_special, time, spatial, where)
            codes, n = _from_streams(ids, vocab, pattern, add_special, time, spatial, where)
        t = codes.shape[2] // spatial if spatial else 0
        lengths = n // spatial
        codes = codes.reshape(codes.shape[0], vocab.num_levels, t, *rest)
        full = bool((lengths == t).all())
        return cls(codes, spec, None if full else lengths)

    # ----------------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.safetensors`` or ``.npz`` (no pickle); returns the path.

        Codes go to disk in :attr:`TokenSpec.storage_dtype` (0 at positions beyond
        ``lengths``), ``lengths`` as int64 when present, the spec as JSON (safetensors metadata
        ``"spec"``, or a 0-d unicode array ``spec_json`` in npz). The file is written to a
        temporary name and renamed, so a crash never leaves a half-written file at ``path``.
        """
        path = Path(path).expanduser()
        suffix = _suffix(path, "Tokens.save")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"Tokens.save: folder {path.parent} of {path} does not exist")
        if path.is_dir():
            raise IsADirectoryError(
                f"Tokens.save: {path} is a folder; name the file to write inside it "
                "(e.g. item.tokens.safetensors)"
            )
        self._check_codes(f"Tokens.save({path})")
        codes = torch.where(self.valid_mask().unsqueeze(1), self.codes, 0)
        # C order: safetensors writes the raw buffer, and astype keeps a view's strides.
        codes = codes.detach().cpu().contiguous().numpy()
        arrays = {"codes": np.ascontiguousarray(codes.astype(self.spec.storage_dtype))}
        if self.lengths is not None:
            lengths = self.lengths.detach().cpu().contiguous().numpy()
            arrays["lengths"] = np.ascontiguousarray(lengths.astype(np.int64))
        spec_json = self.spec.to_json()
        with atomic_output(path) as tmp:
            if suffix == ".safetensors":
                meta = {"format": _FILE_FORMAT, "spec": spec_json}
                safetensors.numpy.save_file(arrays, str(tmp), metadata=meta)
            else:
                with open(tmp, "wb") as f:  # a file object: np.savez appends no suffix
                    np.savez(
                        f, **arrays, spec_json=np.array(spec_json), format=np.array(_FILE_FORMAT)
                    )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Tokens:
        """Read a file written by :meth:`save`; codes come back as int64 on ``device``."""
        path = Path(path).expanduser()
        if not path.exists():  # before the extension: "nonexist" is missing, not misnamed
            raise FileNotFoundError(f"Tokens.load: no such file: {path}")
        suffix = _suffix(path, "Tokens.load")
        if path.is_dir():
            raise IsADirectoryError(
                f"Tokens.load: {path} is a folder, not a token file (Tokens.load reads one "
                "file; `anytok decode FOLDER` decodes every token file in a folder)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"Tokens.load: no such file: {path}")
        try:
            if suffix == ".safetensors":
                with safetensors.safe_open(str(path), framework="np") as f:
                    meta = dict(f.metadata() or {})
                    arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            else:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                meta = {}
                for key, name in (("spec_json", "spec"), ("format", "format")):
                    if key in arrays:
                        meta[name] = str(arrays.pop(key))
        except Exception as e:  # the readers raise many types for a corrupt file
            raise ValueError(f"Tokens.load: {path} is not a readable {suffix} file: {e}") from e
        return _tokens_from_arrays(cls, arrays, meta, path, device)


# --------------------------------------------------------------------------- helpers


def _suffix(path: Path, where: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SAVE_EXTENSIONS:
        raise ValueError(
            f"{where}: unsupported file extension for {path}; use one of {SAVE_EXTENSIONS}"
        )
    return suffix


def _tokens_from_arrays(
    cls: type[Tokens],
    arrays: dict[str, np.ndarray],
    meta: dict[str, str],
    path: Path,
    device: torch.device | str,
) -> Tokens:
    def fail(problem: str) -> ValueError:
        return ValueError(f"Tokens.load: {path}: {problem}")

    if meta.get("format") != _FILE_FORMAT:
        raise fail(
            f"not an anytok tokens file (format {meta.get('format')!r}, expected {_FILE_FORMAT!r})"
        )
    try:
        spec = TokenSpec.from_json(meta["spec"])
    except (KeyError, ValueError, TypeError) as e:
        raise fail(f"missing or invalid spec: {e}") from e
    unexpected = sorted(set(arrays) - {"codes", "lengths"})
    if unexpected:
        raise fail(f"unexpected array(s) {unexpected}")
    if "codes" not in arrays:
        raise fail("no 'codes' array")
    tensors: dict[str, Tensor] = {}
    for key, arr in arrays.items():
        if arr.dtype.kind not in "ui":
            raise fail(f"{key!r} has dtype {arr.dtype}, expected an integer dtype")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _MAX_ID:
            raise fail(f"{key!r} holds a value above the int64 range")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(arr).astype(np.int64))
    try:
        tokens = cls(tensors["codes"], spec, tensors.get("lengths"))
        tokens._check_codes("codes")
    except (ValueError, TypeError) as e:
        raise fail(str(e)) from e
    return tokens.to(device)


def _resolve_shape(
    spec: TokenSpec, shape: Sequence[int | None] | None, where: str
) -> tuple[int | None, tuple[int, ...]]:
    """``(time or None, rest)`` from the ``shape`` argument of :meth:`Tokens.from_lm_ids`."""
    if shape is None:
        if len(spec.layout) != 1:
            raise ValueError(
                f"{where}: layout {spec.layout} has several axes; pass shape=(time, "
                f"{', '.join(spec.layout[1:])}) (time may be None)"
            )
        return None, ()
    shape = tuple(shape)
    if len(shape) != len(spec.layout):
        raise ValueError(f"{where}: shape {shape} must give one size per layout axis {spec.layout}")
    time = None if shape[0] is None else as_int(shape[0], "shape[0]")
    rest = _int_tuple(shape[1:], "shape[1:]")
    if (time is not None and time < 0) or any(s < 1 for s in rest):
        raise ValueError(f"{where}: shape {shape} needs time >= 0 and other sizes >= 1")
    return time, rest


def _int_ids(x: Any, where: str, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if not _is_int_dtype(x.dtype):
        raise TypeError(f"{where}: {what} must be an integer tensor, got {x.dtype}")
    return x.long()


def _bad_id(vocab: LMVocab, token_id: int, expected: str) -> str:
    return f"id {token_id} ({vocab.describe(token_id)}) where {expected} was expected"


def _level_range(vocab: LMVocab, level: int) -> str:
    start = vocab.level_offsets[level]
    return f"a level-{level} code id in [{start}, {start + vocab.codebook_sizes[level]})"


def _flat_items(ids: Tensor | Sequence[Tensor], where: str) -> list[Tensor]:
    """Flatten ids as one integer tensor per item (a 2D tensor's rows, or the sequence)."""
    if isinstance(ids, Tensor):
        ids = _int_ids(ids, where, "ids")
        if ids.ndim != 2:
            raise ValueError(
                f"{where}: flatten ids must be a list of 1D tensors or a 2D tensor, got shape {tuple(ids.shape)}"
            )
        return list(ids.unbind(0))
    return [_int_ids(s, where, f"ids[{i}]") for i, s in enumerate(ids)]


def _complete_flat(
    ids: Tensor | Sequence[Tensor], vocab: LMVocab, add_special: bool, spatial: int, where: str
) -> tuple[list[Tensor], list[int]]:
    """Generated flatten ids -> what :meth:`Tokens.to_lm_ids` writes (``strict=False``): each
    item cut at its first ``eos`` (or kept whole), ``bos`` optional, trailing ``pad`` and an
    incomplete last time step dropped; ``bos`` / ``eos`` put back with ``add_special``. Also
    where each item's first code id was in ``ids`` (1 after a ``bos``, else 0), so errors
    name the caller's positions."""
    step = vocab.num_levels * spatial
    items, first_code = [], []
    for seq in _flat_items(ids, where):
        skipped = 0
        if seq.ndim == 1:
            if add_special:
                ends = (seq == vocab.eos).nonzero()
                seq = seq[: int(ends[0])] if ends.numel() else seq
                skipped = int(seq.numel() > 0 and int(seq[0]) == vocab.bos)
                seq = seq[skipped:]
            seq = _strip_trailing_pad(seq, vocab.pad)
            seq = seq[: seq.numel() - seq.numel() % step]
            if add_special:
                seq = torch.cat([seq.new_full((1,), vocab.bos), seq, seq.new_full((1,), vocab.eos)])
        items.append(seq)  # not 1D: _from_flat names it
        first_code.append(skipped)
    return items, first_code


def _complete_streams(
    ids: Tensor,
    vocab: LMVocab,
    pattern: str,
    add_special: bool,
    time: int | None,
    spatial: int,
    where: str,
) -> Tensor:
    """Generated parallel / delay ids -> what :meth:`Tokens.to_lm_ids` writes
    (``strict=False``): each item ends at stream 0's first ``eos`` (``pad`` without
    ``add_special``) or where every level's ids run out, cut to whole time steps; the cells
    after its end are rewritten. Code cells before the end are kept as they are, so
    :func:`_from_streams` still checks them (and ``bos``)."""
    ids = _int_ids(ids, where, "ids")
    levels, start = vocab.num_levels, int(add_special)
    if ids.ndim == 3 and ids.shape[1] == levels and ids.shape[2] == 0 and not add_special:
        ids = ids.new_full((ids.shape[0], levels, 1), vocab.pad)  # nothing generated: empty
    if ids.ndim != 3 or ids.shape[1] != levels or ids.shape[2] < max(start, 1):
        return ids  # _from_streams names the shape
    batch, _, width = ids.shape
    device = ids.device
    shift = _stream_shifts(levels, pattern, device)
    extra = levels - 1 if pattern == "delay" else 0
    room = max(width - start - extra, 0)  # positions with a cell in every stream
    if add_special:  # the eos column follows the last delayed code
        n = _first_column(ids[:, 0, :] == vocab.eos) - start - extra
    else:  # stream 0 is not delayed: its first pad follows its last code
        n = _first_column(ids[:, 0, :] == vocab.pad)
    n = n.clamp(0, room)
    n = n - n % spatial
    # Like flatten's: an inferred time axis is the longest item's (cut ids have no width rule).
    num_pos = (int(n.max()) if batch else 0) if time is None else time * spatial
    if bool((n > num_pos).any()):
        item = _first_true(n > num_pos)[0]
        raise ValueError(
            f"{where}: item {item} has {int(n[item]) // spatial} time steps, more than "
            f"shape[0] = {time}"
        )
    position = torch.arange(num_pos, device=device)
    columns = (position[None, :] + start + shift[:, None]).clamp(max=width - 1)  # (L, N)
    codes = torch.gather(ids, 2, columns.expand(batch, -1, -1).contiguous())
    first_code = torch.tensor(vocab.level_offsets, device=device)[None, :, None]
    codes = torch.where(position[None, None, :] >= n[:, None, None], first_code, codes)
    laid_out = _lay_out_streams(codes, n, vocab, pattern, add_special)
    if add_special:
        laid_out[:, :, 0] = ids[:, :, 0]  # bos is checked, not rewritten
    return laid_out


def _from_flat(
    ids: Tensor | Sequence[Tensor],
    vocab: LMVocab,
    add_special: bool,
    time: int | None,
    spatial: int,
    where: str,
    first_code: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Flatten inverse: codes ``(batch, levels, time * spatial)`` and valid positions
    ``(batch,)``. ``first_code``: per item, where its first code id was in the caller's ids
    (errors name positions there); None: right after ``bos`` when ``add_special``."""
    seqs = _flat_items(ids, where)
    levels, start = vocab.num_levels, int(add_special)
    device = seqs[0].device if seqs else torch.device("cpu")
    cores: list[Tensor] = []
    for item, seq in enumerate(seqs):  # one pass per item, not per position
        if seq.ndim != 1:
            raise ValueError(f"{where}: ids[{item}] must be 1D, got shape {tuple(seq.shape)}")
        # Trailing pads: a batch of items padded to one width (pad_sequence(..., vocab.pad), or
        # an LM's batched generation).
        seq = _strip_trailing_pad(seq, vocab.pad)
        if add_special:
            if seq.numel() < 2:
                raise ValueError(
                    f"{where}: item {item} has {seq.numel()} ids; bos and eos are missing"
                )
            last = seq.numel() - 1
            for pos, want, name in ((0, vocab.bos, "bos"), (last, vocab.eos, "eos")):
                if int(seq[pos]) != want:
                    got = _bad_id(vocab, int(seq[pos]), f"the {name} token ({want})")
                    raise ValueError(f"{where}: item {item}, position {pos}: {got}")
            seq = seq[1:-1]
        if seq.numel() % (levels * spatial):
            raise ValueError(
                f"{where}: item {item} has {seq.numel()} code ids, not a whole number of time "
                f"steps of {spatial} position(s) × {levels} level(s)"
            )
        cores.append(seq.to(device))
    n = torch.tensor([c.numel() // levels for c in cores], dtype=torch.long, device=device)
    longest = int(n.max()) // spatial if cores else 0
    if time is None:
        time = longest
    elif longest > time:
        item = int(n.argmax())
        raise ValueError(
            f"{where}: item {item} has {longest} time steps, more than shape[0] = {time}"
        )
    num_pos = time * spatial
    batch = len(cores)
    flat = torch.full((batch, num_pos * levels), vocab.pad, dtype=torch.long, device=device)
    if cores and num_pos:
        padded = pad_sequence(cores, batch_first=True, padding_value=vocab.pad)
        flat[:, : padded.shape[1]] = padded
    grid = flat.reshape(batch, num_pos, levels).transpose(1, 2)  # (B, L, N)
    lo, last = vocab._ranges(device)
    valid = (torch.arange(num_pos, device=device)[None, :] < n[:, None]).unsqueeze(1)
    bad = valid & ((grid < lo[None, :, None]) | (grid > last[None, :, None]))
    if bool(bad.any()):
        item, level, p = _first_true(bad)
        got = _bad_id(vocab, int(grid[item, level, p]), _level_range(vocab, level))
        offset = start if first_code is None else first_code[item]
        raise ValueError(f"{where}: item {item}, position {offset + p * levels + level}: {got}")
    return torch.where(valid, grid - lo[None, :, None], 0), n


def _from_streams(
    ids: Tensor,
    vocab: LMVocab,
    pattern: str,
    add_special: bool,
    time: int | None,
    spatial: int,
    where: str,
) -> tuple[Tensor, Tensor]:
    """Parallel / delay inverse: codes ``(batch, levels, time * spatial)`` and valid positions."""
    ids = _int_ids(ids, where, "ids")
    levels, start = vocab.num_levels, int(add_special)
    if ids.ndim != 3 or ids.shape[1] != levels:
        raise ValueError(
            f"{where}: {pattern} ids must be (batch, {levels}, width), got shape {tuple(ids.shape)}"
        )
    batch, _, width = ids.shape
    extra = levels - 1 if pattern == "delay" else 0
    num_pos = width - extra - 2 * start
    if num_pos < 0 or num_pos % spatial:
        raise ValueError(
            f"{where}: width {width} does not fit the {pattern} pattern with {levels} level(s)"
            f"{' and bos/eos' if add_special else ''} and {spatial} position(s) per time step"
        )
    if time is not None and time * spatial != num_pos:
        raise ValueError(
            f"{where}: width {width} gives {num_pos // spatial} time steps, but shape[0] = {time}"
        )
    stream0 = ids[:, 0, :]
    if add_special:
        eos_col = _first_column(stream0 == vocab.eos)
        if bool((eos_col == width).any()):
            item = _first_true(eos_col == width)[0]
            raise ValueError(
                f"{where}: item {item} has no eos token ({vocab.eos}) in stream 0 of ids "
                f"(cut short, e.g. generation stopped before eos?)"
            )
        n = (eos_col - start - extra).clamp(min=0)
    else:
        n = _first_column(stream0 == vocab.pad).clamp(max=num_pos)
    _, kind = _grid(n, levels, num_pos, pattern, add_special)
    lo, last = vocab._ranges(ids.device)
    lo, last = lo[None, :, None], last[None, :, None]
    special = torch.where(kind == _BOS, vocab.bos, torch.where(kind == _EOS, vocab.eos, vocab.pad))
    ok = torch.where(kind == _CODE, (ids >= lo) & (ids <= last), ids == special)
    if not bool(ok.all()):
        item, level, col = _first_true(~ok)
        kinds = {_BOS: "the bos token", _EOS: "the eos token", _PAD: "the pad token"}
        k = int(kind[item, level, col])
        expected = (
            _level_range(vocab, level)
            if k == _CODE
            else f"{kinds[k]} ({int(special[item, level, col])})"
        )
        got = _bad_id(vocab, int(ids[item, level, col]), expected)
        raise ValueError(f"{where}: item {item}, stream {level}, column {col}: {got}")
    if bool((n % spatial != 0).any()):
        item = _first_true(n % spatial != 0)[0]
        raise ValueError(
            f"{where}: item {item} ends after {int(n[item])} positions, not a whole number of time steps of {spatial}"
        )
    # Code of position p at level k sits in column p + start + shift_k (gather: deterministic).
    p = torch.arange(num_pos, device=ids.device)
    shift = _stream_shifts(levels, pattern, ids.device)
    src = (p[None, :] + start + shift[:, None]).expand(batch, -1, -1)  # (B, L, N)
    codes = torch.gather(ids, 2, src) - lo
    valid = (p[None, :] < n[:, None]).unsqueeze(1)
    return torch.where(valid, codes, 0), n


__all__ = ["MODALITIES", "PATTERNS", "SAVE_EXTENSIONS", "LMVocab", "Pattern", "TokenSpec", "Tokens"]
