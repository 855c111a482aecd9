"""The quantizer contract shared by every quantizer in :mod:`anytok.quantizers`.

Every quantizer is an ``nn.Module`` over channel-last input ``(..., dim)``:

* ``forward(z) -> QuantizerOutput`` (quantized, codes, loss, metrics),
* ``encode(z) -> codes`` with codes ``(..., levels)`` int64,
* ``decode(codes) -> quantized`` ``(..., dim)``,
* ``codebook_sizes``: one entry per level,

and ``decode(encode(z)) == forward(z).quantized`` in eval mode.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns.

    Attributes:
        quantized: ``(..., dim)``, same shape as the input, straight-through gradient to it.
        codes: ``(..., levels)`` int64 code indices (levels = residual stages or groups).
        loss: scalar auxiliary loss, already weighted (commitment, codebook, entropy).
        metrics: detached scalars such as ``perplexity/0``, ``usage/0``, ``dead_codes/0``.
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Quantizer(nn.Module, abc.ABC):
    """Base class: subclasses implement ``forward``, ``encode``, ``decode`` and set
    ``dim`` and ``codebook_sizes``."""

    dim: int
    codebook_sizes: tuple[int, ...]

    @property
    def num_levels(self) -> int:
        """Number of code levels (residual stages or groups): the last axis of ``codes``."""
        return len(self.codebook_sizes)

    @property
    def bits_per_vector(self) -> float:
        """Bits one input vector costs: the sum of ``log2`` of each level's codebook size."""
        import math

        return float(sum(math.log2(k) for k in self.codebook_sizes))

    @abc.abstractmethod
    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., levels)``."""

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., levels)`` -> quantized ``(..., dim)``."""


def zero_loss(like: Tensor) -> Tensor:
    """A scalar zero on the device of ``like`` (for quantizers without an auxiliary loss)."""
    return torch.zeros((), device=like.device, dtype=torch.float32)


def check_last_dim(z: Tensor, dim: int, name: str) -> None:
    """Raise a clear error when the channel-last input does not end in ``dim``."""
    if z.ndim < 1 or z.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected channel-last input (..., {dim}), got shape {tuple(z.shape)}; "
            "move the channel axis last (e.g. einops.rearrange(z, 'b d n -> b n d'))"
        )


def check_codes(codes: Tensor, codebook_sizes: tuple[int, ...], name: str) -> None:
    """Raise a clear error when codes are not integer ``(..., levels)`` within range."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"{name}.decode: codes must be an integer tensor, got {codes.dtype}")
    if codes.ndim < 1 or codes.shape[-1] != len(codebook_sizes):
        raise ValueError(
            f"{name}.decode: expected codes (..., {len(codebook_sizes)}), got {tuple(codes.shape)}"
        )
    if codes.numel() and not torch.compiler.is_compiling():
        low = int(codes.min())
        high = codes.amax(dim=tuple(range(codes.ndim - 1))) if codes.ndim > 1 else codes
        sizes = torch.tensor(codebook_sizes, device=codes.device, dtype=torch.float64)
        if low < 0 or bool((high.to(torch.float64) >= sizes).any()):
            raise ValueError(
                f"{name}.decode: codes out of range: min {low}, codebook sizes {codebook_sizes}"
            )


# --------------------------------------------------------------------------- registry

QuantizerT = TypeVar("QuantizerT", bound=type[nn.Module])
_QUANTIZERS: dict[str, type[nn.Module]] = {}


def register_quantizer(*names: str) -> Callable[[QuantizerT], QuantizerT]:
    """Class decorator: make a quantizer constructible by name with :func:`build`."""

    def decorate(cls: QuantizerT) -> QuantizerT:
        for name in names:
            if name in _QUANTIZERS and _QUANTIZERS[name] is not cls:
                raise ValueError(f"quantizer name {name!r} is already registered")
            _QUANTIZERS[name] = cls
        return cls

    return decorate


def build(name: str, **kwargs: object) -> nn.Module:
    """Build a quantizer by registered name, e.g. ``build("rvq", dim=128, num_quantizers=8)``."""
    key = name.lower()
    if key not in _QUANTIZERS:
        known = ", ".join(sorted(_QUANTIZERS))
        raise KeyError(f"unknown quantizer {name!r}; registered quantizers: {known}")
    return _QUANTIZERS[key](**kwargs)


def list_quantizers() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_QUANTIZERS)
