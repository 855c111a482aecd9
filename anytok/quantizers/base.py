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


class Fp32Buffers(nn.Module):
    """A module whose buffers named in ``fp32_buffers`` stay fp32 when it is cast
    (``model.to(torch.bfloat16)``): they move with the module but keep their dtype.

    Quantization math runs in fp32 (:func:`fp32_layer`, autocast off), so its constants
    (FSQ steps, residual scales, calibrated bin edges) must not be rounded to bf16, and
    running statistics must not either: a ``1 - decay`` EMA step is below bf16's resolution,
    and the counts and sums blended into them are fp32.
    """

    fp32_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        kept = {name: self._buffers.get(name) for name in self.fp32_buffers}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers.get(name)
            if before is not None and after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)  # moved, not cast
        return self


class Quantizer(Fp32Buffers, abc.ABC):
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


class _StraightThrough(torch.autograd.Function):
    """Forward: ``target`` itself (a view, no copy). Backward: ``scale * grad`` to ``source``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, target: Tensor, source: Tensor, scale: float | Tensor
    ) -> Tensor:
        ctx.source_dtype = source.dtype
        ctx.scale_is_tensor = isinstance(scale, Tensor)
        if ctx.scale_is_tensor:
            ctx.save_for_backward(scale)
        else:
            ctx.scale = scale
        return target.view_as(target)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        scale = ctx.saved_tensors[0] if ctx.scale_is_tensor else ctx.scale
        if not (isinstance(scale, float) and scale == 1.0):
            grad = grad * scale
        return None, grad.to(ctx.source_dtype), None


def straight_through(
    target: Tensor, source: Tensor, gradient_scale: float | Tensor = 1.0
) -> Tensor:
    """``target``'s value exactly, with ``gradient_scale`` times the identity gradient to
    ``source`` (the straight-through estimator, Bengio et al. 2013); same shapes.

    The usual ``source + (target - source).detach()`` rounds (its value is not bit-identical to
    ``target``) and costs two tensors of the input's size in the forward pass. Here the output
    is a view of ``target`` (no memory at all), so ``decode(encode(z)) == forward(z).quantized``
    holds exactly, and the backward pass hands the incoming gradient on unchanged (a copy only
    when scaled or cast to ``source``'s dtype). ``target`` gets no gradient from it.
    """
    if target.shape != source.shape:
        raise ValueError(
            f"straight_through: target {tuple(target.shape)} and source {tuple(source.shape)} "
            "must have the same shape"
        )
    if not (torch.is_grad_enabled() and source.requires_grad):
        return target.detach()  # as the usual formula: nothing for target, even then
    dtype = torch.promote_types(target.dtype, source.dtype)
    # Detached, so that the node does not reach into target's graph at all (as with the
    # usual formula): no undefined gradients sent there, and its saved tensors stay intact.
    return _StraightThrough.apply(target.detach().to(dtype), source, gradient_scale)


class _SquaredErrorMean(torch.autograd.Function):
    """``mean((x - y)^2)`` with one input-sized temporary in each pass (``F.mse_loss`` has two)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, y)
        return torch.sub(x, y).square_().mean()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        if not (need_x or need_y):
            return None, None
        scaled = torch.sub(x, y).mul_(grad * (2.0 / max(x.numel(), 1)))  # d/dx; d/dy = -d/dx
        if need_x and need_y:
            return scaled, -scaled
        return (scaled, None) if need_x else (None, scaled.neg_())


def squared_error_mean(x: Tensor, y: Tensor) -> Tensor:
    """``F.mse_loss(x, y)`` (mean reduction, same shapes) with half its temporaries: the
    forward squares the difference in place, and the backward recomputes the difference
    instead of keeping it. Pass ``y.detach()`` for a one-sided loss such as VQ's commitment."""
    if x.shape != y.shape:
        raise ValueError(f"squared_error_mean: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        return torch.sub(x, y).square_().mean()
    return _SquaredErrorMean.apply(x, y)


def check_last_dim(z: Tensor, dim: int, name: str) -> None:
    """Raise a clear error when the channel-last input does not end in ``dim``."""
    if z.ndim < 1 or z.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected channel-last input (..., {dim}), got shape {tuple(z.shape)}; "
            "move the channel axis last (e.g. einops.rearrange(z, 'b d n -> b n d'))"
        )


def check_codes(
    codes: Tensor,
    codebook_sizes: tuple[int, ...],
    name: str,
    *,
    prefix: bool = False,
    dropped: bool = False,
) -> int:
    """Raise a clear error when codes are not integer ``(..., levels)`` within range; return
    the number of levels.

    With ``prefix`` any first ``k`` levels ``(..., k)``, ``1 <= k <= len(codebook_sizes)``,
    are accepted (residual quantizers); with ``dropped`` a code of ``-1`` marks a dropped level.
    Any integer dtype is accepted (codes are stored on disk in the smallest unsigned type that
    holds the codebook); decoders use :func:`checked_codes` to get them as int64 as well.
    """
    _check_integer_codes(codes, name)
    codes = codes.long()  # a no-op for int64; uint16 / uint32 have no min / max kernels
    levels = codes.shape[-1] if codes.ndim else 0
    if prefix:
        if not 1 <= levels <= len(codebook_sizes):
            raise ValueError(
                f"{name}.decode: expected codes (..., k) with 1 <= k <= {len(codebook_sizes)}, "
                f"got {tuple(codes.shape)}"
            )
        codebook_sizes = codebook_sizes[:levels]
    elif codes.ndim < 1 or levels != len(codebook_sizes):
        raise ValueError(
            f"{name}.decode: expected codes (..., {len(codebook_sizes)}), got {tuple(codes.shape)}"
        )
    if codes.numel() and not torch.compiler.is_compiling():
        low = int(codes.min())
        high = codes.amax(dim=tuple(range(codes.ndim - 1))) if codes.ndim > 1 else codes
        # int64, not float64: sizes up to 2^62 (LFQ, large FSQ) round in float64 above 2^53
        sizes = torch.tensor(codebook_sizes, device=codes.device, dtype=torch.int64)
        if low < -int(dropped) or bool((high >= sizes).any()):
            per_level = codes.reshape(-1, levels)
            bad = [
                f"level {i}: {int(lo)}..{int(hi)} outside [{-int(dropped)}, {size - 1}]"
                for i, (lo, hi, size) in enumerate(
                    zip(per_level.amin(0), per_level.amax(0), codebook_sizes)
                )
                if lo < -int(dropped) or hi >= size
            ]
            raise ValueError(
                f"{name}.decode: codes out of range ({'; '.join(bad)}), codebook sizes "
                f"{codebook_sizes}" + (" (-1 marks a dropped level)" if dropped else "")
            )
    return levels


def checked_codes(
    codes: Tensor,
    codebook_sizes: tuple[int, ...],
    name: str,
    *,
    prefix: bool = False,
    dropped: bool = False,
) -> Tensor:
    """:func:`check_codes`, then the codes as int64 ``(..., levels)`` (the tensor itself when
    already int64): uint8 / uint16 / uint32 / int16 / int32 codes, as stored on disk, decode
    exactly as their int64 values."""
    _check_integer_codes(codes, name)
    codes = codes.long()
    check_codes(codes, codebook_sizes, name, prefix=prefix, dropped=dropped)
    return codes


def _check_integer_codes(codes: Tensor, name: str) -> None:
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"{name}.decode: codes must be an integer tensor, got {codes.dtype}")


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


def fp32_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` for fp32 ``x``, computed in fp32 whatever the dtype of ``layer``'s weights.

    A quantizer inside a model cast with ``.to(torch.bfloat16)`` (or ``.half()``) keeps its
    projections' math in fp32, as under autocast, instead of failing on mixed dtypes. Linear
    and convolution layers only; anything else (``nn.Identity``) is called as it is.
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or weight.dtype == x.dtype:
        return layer(x)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight.to(x.dtype), bias)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer._conv_forward(x, weight.to(x.dtype), bias)
    return layer(x)
