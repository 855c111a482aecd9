"""Rate / quality sweeps: decode the same tokens at several operating points.

A *sweep axis* is a knob that trades bits or compute for fidelity at decode time. Two axes
are built in:

- ``levels``: for tokenizers whose quantizer's ``encode`` accepts ``n_levels`` (residual
  quantizers: ``ResidualVQ``, ``ResidualFSQ`` ...), keep the first ``k`` levels of the codes
  ``encode`` gives (Mimi: 8 of its 32 by default) and decode them. Residual stages are
  sequential, so these are exactly the codes ``encode(z, n_levels=k)`` gives, and the
  bitrate drops with ``k``.
- ``perturb`` (every tokenizer; ``anytok bench --perturb 0.05,0.1``): replace a fraction of
  the codes by uniformly random ones (fixed seed) before decoding. FID and the other metrics
  at a perturbation rate are robustness scores in the spirit of the pFID of "Image
  Tokenizer Needs Post-Training" (https://arxiv.org/abs/2509.12474): how gracefully a
  decoder handles a generator's mistakes. They are not that paper's numbers: its error
  model replaces a code by one of its nearest codebook neighbours, a milder error than a
  uniformly random code.

Any tokenizer can add axes of its own (prefix lengths of flexible 1D tokenizers, sampling
steps of diffusion decoders ...) by implementing the :class:`Sweepable` protocol::

    def sweep_options(self) -> dict[str, list]:
        return {"prefix": [32, 64, 128, 256], "steps": [1, 4, 25]}

    def sweep_decode(self, tokens: Tokens, axis: str, value) -> tuple[Tensor, Tensor]:
        # the reconstruction, and the codes it used (b, levels, *positions): a prefix of the
        # sequence for "prefix", all of them for "steps"; the benchmark counts bits from them
        ...

The benchmark always evaluates the tokenizer as it is (the ``full`` point) and then every
requested value of every axis the tokenizer supports; requests it does not support become
notes in the report, not errors.

Decoders whose ``decode`` takes a ``seed`` (SNAC adds noise in its decoder; diffusion
decoders sample) are called with ``seed=DECODE_SEED`` (:func:`decode_options`), so two runs
give the same numbers whatever the batch.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from anytok.tokens import Tokens

LEVELS = "levels"
PERTURB = "perturb"
PERTURB_SEED = 0
#: The seed of every decode of a decoder that takes one (noise, samplers).
DECODE_SEED = 0


@runtime_checkable
class Sweepable(Protocol):
    """A tokenizer with decode-time operating points of its own."""

    def sweep_options(self) -> dict[str, Sequence[Any]]: ...

    def sweep_decode(self, tokens: Tokens, axis: str, value: Any) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class SweepPoint:
    """One operating point: ``axis=None`` is the tokenizer as it is."""

    axis: str | None = None
    value: Any = None

    @property
    def label(self) -> str:
        return "full" if self.axis is None else f"{self.axis}={self.value}"

    def to_dict(self) -> dict[str, Any]:
        return {} if self.axis is None else {self.axis: self.value}


FULL = SweepPoint()


def level_count(model: nn.Module) -> int | None:
    """Levels of the codes a tokenizer's ``encode`` gives (its ``default_spec``: Mimi 8 of
    32), if its quantizer can encode a prefix of them and there are several, else None."""
    quantizer = getattr(model, "quantizer", None)
    encode = getattr(quantizer, "encode", None)
    if encode is None:
        return None
    try:
        accepts = "n_levels" in inspect.signature(encode).parameters
    except (TypeError, ValueError):
        return None
    levels = len(getattr(quantizer, "codebook_sizes", ()))
    default_spec = getattr(model, "default_spec", None)
    if default_spec is not None:  # a prefix of the codes, not levels encode never gives
        levels = min(levels, default_spec.num_levels)
    return levels if accepts and levels > 1 else None


def sweep_options(model: nn.Module) -> dict[str, list[Any]]:
    """Every sweep axis ``model`` supports, with the values it allows."""
    options: dict[str, list[Any]] = {PERTURB: []}  # any rate in [0, 1]; see plan_sweep
    levels = level_count(model)
    if levels is not None:
        options[LEVELS] = list(range(1, levels + 1))
    if isinstance(model, Sweepable):
        options.update({axis: list(values) for axis, values in model.sweep_options().items()})
    return options


def plan_sweep(
    model: nn.Module, requested: dict[str, list[Any]], name: str | None = None
) -> tuple[list[SweepPoint], list[str]]:
    """The points to evaluate for ``model`` and notes on requests it cannot serve.

    ``full`` comes first; a requested value equal to the tokenizer as it is (the levels its
    ``encode`` gives) is not repeated, and more levels than that are skipped with a note.
    The notes name the model ``name`` (the name it was given by), else its registry name.
    """
    options = sweep_options(model)
    points, notes = [FULL], []
    if name is None:
        name = getattr(model, "registry_name", type(model).__name__)
    for axis, values in requested.items():
        if axis not in options:
            supported = ", ".join(sorted(options)) or "none"
            notes.append(f"{name}: no '{axis}' sweep (its sweep axes: {supported}); skipped")
            continue
        allowed = options[axis]
        if axis == PERTURB:
            skipped = [v for v in values if not (isinstance(v, (int, float)) and 0 < v <= 1)]
        else:
            skipped = [v for v in values if v not in allowed]
        if skipped:
            what = "rates in (0, 1]" if axis == PERTURB else ", ".join(map(str, allowed))
            notes.append(
                f"{name}: {axis} {', '.join(map(str, skipped))} not available "
                f"(allowed: {what}); skipped"
            )
        for value in values:
            if value in skipped or (axis == LEVELS and value == allowed[-1]):
                continue
            point = SweepPoint(axis, value)
            if point not in points:
                points.append(point)
    return points, notes


def decode_options(model: nn.Module, seed: int = DECODE_SEED) -> dict[str, Any]:
    """Keyword arguments that make ``model.decode`` repeatable: ``{"seed": seed}`` when it
    takes a ``seed`` (SNAC's decoder noise, samplers of diffusion decoders), else none."""
    try:
        parameters = inspect.signature(model.decode).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    return {"seed": seed} if "seed" in parameters else {}


def decode_at(model: nn.Module, tokens: Tokens, point: SweepPoint) -> tuple[Tensor, Tensor]:
    """Decode ``tokens`` at ``point``: the media and the codes ``(b, levels, *positions)`` used.

    A decoder that takes a ``seed`` gets :data:`DECODE_SEED` (:func:`decode_options`); the
    axes a tokenizer decodes itself (``sweep_decode``) follow its own seeding.
    """
    seeding = decode_options(model)
    if point.axis is None:
        return model.decode(tokens, **seeding), tokens.codes
    if point.axis == PERTURB:
        from anytok.regularizers import perturb_codes

        generator = torch.Generator().manual_seed(PERTURB_SEED)
        noisy = perturb_codes(
            tokens.codes.cpu(), tokens.spec.codebook_sizes, float(point.value), generator
        ).to(tokens.codes.device)
        perturbed = Tokens(codes=noisy, spec=tokens.spec, lengths=tokens.lengths)
        return model.decode(perturbed, **seeding), tokens.codes
    if point.axis == LEVELS and (
        not isinstance(model, Sweepable) or LEVELS not in model.sweep_options()
    ):
        levels = int(point.value)
        if not 1 <= levels <= tokens.codes.shape[1]:
            raise ValueError(
                f"decode_at: levels={point.value} but the tokens have "
                f"{tokens.codes.shape[1]} level(s)"
            )
        codes = tokens.codes[:, :levels]
        # The first ``levels`` levels with their own spec, and the lengths kept: a bare code
        # tensor decoded the padded batch in one pass, so a non-causal model's padding
        # reached the shorter items (scores changed with the batch size).
        spec = dataclasses.replace(
            tokens.spec, codebook_sizes=tuple(tokens.spec.codebook_sizes[:levels])
        )
        levels_tokens = Tokens(codes=codes, spec=spec, lengths=tokens.lengths)
        return model.decode(levels_tokens, **seeding), codes
    return model.sweep_decode(tokens, point.axis, point.value)


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``"axis=1,2,4"`` -> ``("axis", [1, 2, 4])``; values become int or float when they can.

    Raises:
        ValueError: for a malformed sweep.
    """
    axis, sep, values = text.partition("=")
    axis = axis.strip()
    if not sep or not axis or not values.strip():
        raise ValueError(f"--sweep {text!r}: write AXIS=V1,V2,... (e.g. levels=1,2,4)")
    return axis, [_number(v.strip()) for v in values.split(",") if v.strip()]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


__all__ = [
    "DECODE_SEED",
    "FULL",
    "LEVELS",
    "SweepPoint",
    "Sweepable",
    "decode_at",
    "decode_options",
    "level_count",
    "parse_sweep",
    "plan_sweep",
    "sweep_options",
]
