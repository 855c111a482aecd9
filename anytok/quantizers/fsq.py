"""Finite scalar quantization: FSQ and its residual stack, ResidualFSQ.

* :class:`FSQ` — Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
  https://arxiv.org/abs/2309.15505. Each of ``len(levels)`` channels is bounded and rounded to
  one of ``levels[i]`` values; the implied codebook is the grid, ``prod(levels)`` codes.
* :class:`ResidualFSQ` — FSQ stages applied to the residual, each at a finer per-channel scale
  (``levels ** -stage``), with the symmetric quantizer of Tuan et al. 2024,
  https://arxiv.org/abs/2411.19842 (section 3.2), as in vector-quantize-pytorch.

The two also hold the helpers the rest of the scalar / lookup-free family shares
(:func:`level_metrics`; ``straight_through`` and ``fp32_layer`` live in ``base``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    check_last_dim,
    checked_codes,
    fp32_layer,
    register_quantizer,
    straight_through,
    zero_loss,
)
from anytok.quantizers.distributed import shared_randint
from anytok.quantizers.stats import batch_code_metrics

# --------------------------------------------------------------------------- shared helpers


def level_metrics(
    codes: Tensor, codebook_sizes: Sequence[int], *, synced: bool
) -> dict[str, Tensor]:
    """``perplexity/i`` and ``usage/i`` for each level ``i`` of ``codes`` ``(..., levels)``.

    ``synced``: sum the counts over ranks (pass ``self.training``; in eval mode the metrics
    describe this rank's batch and no collective runs, so rank-0-only validation cannot hang).
    Skipped under ``torch.compile`` (the statistics need host synchronisation), so eval-mode
    forwards stay one graph.
    """
    if torch.compiler.is_compiling():
        return {}
    metrics: dict[str, Tensor] = {}
    for level, size in enumerate(codebook_sizes):
        for key, value in batch_code_metrics(codes[..., level], size, synced=synced).items():
            metrics[f"{key}/{level}"] = value
    return metrics


def check_levels(levels: Sequence[int], name: str, allow_two: bool) -> list[int]:
    """Validate FSQ ``levels``: a non-empty list of integers >= 2 (>= 3 unless ``allow_two``)."""
    given = list(levels)
    try:  # operator.index accepts Python, NumPy and 0-d tensor integers, refuses floats
        levels = [operator.index(level) for level in given]
    except TypeError:
        levels = []
    if not levels or any(isinstance(level, bool) for level in given):
        raise ValueError(f"{name}: levels must be a non-empty list of integers, got {given!r}")
    smallest = 2 if allow_two else 3
    if min(levels) < smallest:
        hint = "" if allow_two else " (a level of 2 needs preserve_symmetry=True)"
        raise ValueError(f"{name}: every level must be >= {smallest}, got {levels}{hint}")
    if math.prod(levels) > 2**62:
        raise ValueError(f"{name}: prod(levels) = {math.prod(levels)} does not fit int64 codes")
    return levels


# --------------------------------------------------------------------------- FSQ


@register_quantizer("fsq")
class FSQ(Quantizer):
    """Finite scalar quantization (https://arxiv.org/abs/2309.15505).

    The input ``(..., dim)`` is projected (when ``dim != len(levels) * num_codebooks``) to
    ``num_codebooks`` groups of ``len(levels)`` channels. Channel ``i`` is bounded with
    ``tanh`` to ``levels[i]`` values and rounded with a straight-through gradient; even levels
    get the paper's half-step offset so the grid stays centred. Values lie in ``[-1, 1]``.

    Codes: ``(..., num_codebooks)``, each in ``[0, prod(levels))``, mixed radix with channel 0
    the least significant digit (``index = sum_i level_index[i] * prod(levels[:i])``), exactly
    as vector-quantize-pytorch's ``FSQ`` indices.

    Args:
        levels: values per channel, e.g. ``[8, 5, 5, 5]`` (~2^10) or ``[8, 8, 8, 5, 5, 5]``
            (~2^16, the paper's recommendations).
        dim: input channels; defaults to ``len(levels) * num_codebooks`` (no projection).
        num_codebooks: independent FSQ codes per vector (the last axis of ``codes``).
        projection_has_bias: bias in the input / output projections.
        preserve_symmetry: use the symmetric quantizer of https://arxiv.org/abs/2411.19842
            (values ``-1 + 2k / (L - 1)``, allows a level of 2).
        bound_hard_clamp: bound with ``clamp(-1, 1)`` instead of ``tanh`` (for inputs that are
            already soft-clamped, as in :class:`ResidualFSQ`).
    """

    #: level constants of the fp32 math (see :class:`~anytok.quantizers.base.Fp32Buffers`)
    fp32_buffers = ("_levels", "_half_width", "_step")

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        num_codebooks: int = 1,
        projection_has_bias: bool = True,
        preserve_symmetry: bool = False,
        bound_hard_clamp: bool = False,
    ):
        super().__init__()
        levels = check_levels(levels, "FSQ", allow_two=preserve_symmetry)
        if num_codebooks < 1:
            raise ValueError(f"FSQ: num_codebooks must be >= 1, got {num_codebooks}")
        self.levels = levels
        self.codebook_dim = len(levels)
        self.num_codebooks = num_codebooks
        self.preserve_symmetry = preserve_symmetry
        self.bound_hard_clamp = bound_hard_clamp
        projected = self.codebook_dim * num_codebooks
        self.dim = projected if dim is None else dim
        if self.dim < 1:
            raise ValueError(f"FSQ: dim must be >= 1, got {dim}")
        self.has_projections = self.dim != projected
        if self.has_projections:
            self.project_in: nn.Module = nn.Linear(self.dim, projected, bias=projection_has_bias)
            self.project_out: nn.Module = nn.Linear(projected, self.dim, bias=projection_has_bias)
        else:
            self.project_in = self.project_out = nn.Identity()
        self.codebook_size = math.prod(levels)
        self.codebook_sizes = (self.codebook_size,) * num_codebooks

        # Everything below is derived from ``levels``: not saved in the state dict.
        levels_tensor = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), dim=0)
        self.register_buffer("_levels", levels_tensor, persistent=False)
        self.register_buffer("_levels_int", levels_tensor.long(), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", (levels_tensor.long() // 2).float(), persistent=False)
        # size of one step in the value domain: d value / d level index
        step = 2.0 / (levels_tensor - 1) if preserve_symmetry else 1.0 / self._half_width
        self.register_buffer("_step", step, persistent=False)

    # ---------------------------------------------------------------- scalar quantization

    def quantize_levels(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantize fp32 ``z`` ``(..., len(levels))`` channel by channel.

        Returns ``(values, level_indices)``: values in ``[-1, 1]`` with a straight-through
        gradient to ``z``, and float level indices in ``[0, levels[i])``.
        """
        if self.preserve_symmetry:
            bounded = z.clamp(-1.0, 1.0) if self.bound_hard_clamp else torch.tanh(z)
            # continuous level coordinate; its floor is the level index (arXiv 2411.19842 eq. 6)
            coordinate = (self._levels - 1) * (bounded + 1) / 2 + 0.5
            level_indices = coordinate.detach().floor()
        else:
            eps = 1e-3
            half_range = (self._levels - 1) * (1 + eps) / 2
            offset = torch.where(self._levels_int % 2 == 0, 0.5, 0.0)
            if self.bound_hard_clamp:
                coordinate = (z + offset / half_range).clamp(-1.0, 1.0) * half_range - offset
            else:
                shift = torch.atanh(offset / half_range)
                coordinate = torch.tanh(z + shift) * half_range - offset
            # round in the centred domain, then shift to [0, L): keeps round-half-even ties
            # identical to the paper's reference code
            level_indices = coordinate.detach().round() + self._half_width
        # A NaN input has no level: give it the middle one, so that codes stay in range (a NaN
        # cast to int64 is an arbitrary integer, which crashed the usage histogram and would
        # make an embedding lookup fail on a GPU) and encode / decode / forward still agree.
        # Checking for NaN instead would cost a host sync every step; the loss and gradients
        # of such a vector are NaN, so training still shows it.
        level_indices = torch.where(level_indices.isnan(), self._half_width, level_indices)
        values = self.level_indices_to_values(level_indices)
        return straight_through(values, coordinate, self._step), level_indices

    def level_indices_to_values(self, level_indices: Tensor) -> Tensor:
        """Float level indices ``(..., len(levels))`` to values in ``[-1, 1]``."""
        if self.preserve_symmetry:
            return level_indices * self._step - 1.0
        return (level_indices - self._half_width) / self._half_width

    def level_indices_to_codes(self, level_indices: Tensor) -> Tensor:
        """``(..., len(levels))`` level indices to int64 codes ``(...)`` (mixed radix)."""
        return (level_indices.long() * self._basis).sum(dim=-1)

    def codes_to_level_indices(self, codes: Tensor) -> Tensor:
        """Int codes ``(...)`` to float level indices ``(..., len(levels))``."""
        return ((codes.long().unsqueeze(-1) // self._basis) % self._levels_int).float()

    # ---------------------------------------------------------------- contract

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_last_dim(z, self.dim, type(self).__name__)
        projected = fp32_layer(self.project_in, z.float())
        with torch.autocast(device_type=z.device.type, enabled=False):
            grouped = rearrange(projected.float(), "... (c d) -> ... c d", c=self.num_codebooks)
            values, level_indices = self.quantize_levels(grouped)
            codes = self.level_indices_to_codes(level_indices)
            values = rearrange(values, "... c d -> ... (c d)").to(projected.dtype)
        return values, codes

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z``.

        Shapes: ``z`` ``(..., dim)`` -> quantized ``(..., dim)``, codes ``(..., num_codebooks)``.
        """
        values, codes = self._quantize(z)
        quantized = fp32_layer(self.project_out, values.float()).to(z.dtype)
        return QuantizerOutput(
            quantized=quantized,
            codes=codes,
            loss=zero_loss(z),
            metrics=level_metrics(codes, self.codebook_sizes, synced=self.training),
        )

    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., num_codebooks)``."""
        return self._quantize(z)[1]

    def decode(self, codes: Tensor) -> Tensor:
        """Int codes ``(..., num_codebooks)`` -> quantized ``(..., dim)``."""
        codes = checked_codes(codes, self.codebook_sizes, type(self).__name__)
        values = self.level_indices_to_values(self.codes_to_level_indices(codes))
        values = rearrange(values, "... c d -> ... (c d)")
        return fp32_layer(self.project_out, values.float())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, num_codebooks={self.num_codebooks}"


# --------------------------------------------------------------------------- Residual FSQ


@register_quantizer("rfsq", "residual_fsq")
class ResidualFSQ(Quantizer):
    """Residual FSQ: ``num_quantizers`` FSQ stages, each quantizing what the previous left.

    Follows vector-quantize-pytorch's ``ResidualFSQ`` (itself Algorithm 1 of SoundStream,
    https://arxiv.org/abs/2107.03312, with FSQ stages): the projected input is soft-clamped to
    ``±(1 + 1 / (L - 1))``, stage ``k`` quantizes ``residual / L**-k`` with the symmetric,
    hard-clamped quantizer and contributes ``value * L**-k``.

    Codes: ``(..., num_quantizers)``, stage ``k`` in ``[0, prod(levels))`` (FSQ's mixed radix).
    With quantize dropout (training only) a random prefix of stages is kept and the dropped
    stages' codes are ``-1``; :meth:`decode` reads ``-1`` as "no contribution" and accepts a
    prefix ``(..., k)`` of stages, as :meth:`encode` with ``n_levels=k`` returns.

    Args:
        levels: values per channel of every stage, e.g. ``[8, 5, 5, 5]``.
        num_quantizers: number of residual stages.
        dim: input channels; defaults to ``len(levels)`` (no projection).
        quantize_dropout: in training, keep only the first ``k`` stages for random ``k``.
        quantize_dropout_cutoff_index: the smallest stage index dropout may stop at.
        quantize_dropout_multiple_of: round the kept number of stages up to a multiple of this.
        projection_has_bias: bias in the input / output projections.
    """

    #: stage scales of the fp32 math (see :class:`~anytok.quantizers.base.Fp32Buffers`)
    fp32_buffers = ("scales", "soft_clamp")

    def __init__(
        self,
        levels: Sequence[int],
        num_quantizers: int,
        dim: int | None = None,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        quantize_dropout_multiple_of: int = 1,
        projection_has_bias: bool = True,
    ):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"ResidualFSQ: num_quantizers must be >= 1, got {num_quantizers}")
        if not 0 <= quantize_dropout_cutoff_index < num_quantizers:
            raise ValueError(
                "ResidualFSQ: quantize_dropout_cutoff_index must be in [0, num_quantizers), "
                f"got {quantize_dropout_cutoff_index} with num_quantizers={num_quantizers}"
            )
        if quantize_dropout_multiple_of < 1:
            raise ValueError("ResidualFSQ: quantize_dropout_multiple_of must be >= 1")
        # one parameter-free FSQ serves every stage: only the scale differs
        self.stage = FSQ(levels, preserve_symmetry=True, bound_hard_clamp=True)
        self.levels = self.stage.levels
        self.num_quantizers = num_quantizers
        self.codebook_dim = len(self.levels)
        self.dim = self.codebook_dim if dim is None else dim
        if self.dim < 1:
            raise ValueError(f"ResidualFSQ: dim must be >= 1, got {dim}")
        self.has_projections = self.dim != self.codebook_dim
        if self.has_projections:
            self.project_in: nn.Module = nn.Linear(self.dim, self.codebook_dim, projection_has_bias)
            self.project_out: nn.Module = nn.Linear(
                self.codebook_dim, self.dim, projection_has_bias
            )
        else:
            self.project_in = self.project_out = nn.Identity()
        self.quantize_dropout = quantize_dropout and num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.quantize_dropout_multiple_of = quantize_dropout_multiple_of
        self.codebook_size = self.stage.codebook_size
        self.codebook_sizes = (self.codebook_size,) * num_quantizers

        levels_tensor = torch.tensor(self.levels, dtype=torch.float32)
        scales = torch.stack([levels_tensor**-stage for stage in range(num_quantizers)])
        self.register_buffer("scales", scales, persistent=False)  # (num_quantizers, codebook_dim)
        self.register_buffer("soft_clamp", 1 + 1 / (levels_tensor - 1), persistent=False)

    def _dropout_stages(self) -> int:
        """Number of stages to run this step (all of them unless quantize dropout applies)."""
        if not (self.training and self.quantize_dropout and torch.is_grad_enabled()):
            return self.num_quantizers
        last = shared_randint(  # every rank drops the same stages
            self.quantize_dropout_cutoff_index, self.num_quantizers, self.scales.device
        )
        multiple = self.quantize_dropout_multiple_of
        last = min(math.ceil((last + 1) / multiple) * multiple - 1, self.num_quantizers - 1)
        return last + 1

    def _quantize(self, z: Tensor, num_stages: int) -> tuple[Tensor, Tensor]:
        check_last_dim(z, self.dim, type(self).__name__)
        projected = fp32_layer(self.project_in, z.float())
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = projected.float()
            residual = torch.tanh(residual / self.soft_clamp) * self.soft_clamp
            total: Tensor | float = 0.0
            all_codes = []
            for stage in range(num_stages):
                scale = self.scales[stage]
                values, level_indices = self.stage.quantize_levels(residual / scale)
                contribution = values * scale
                residual = residual - contribution.detach()
                total = total + contribution
                all_codes.append(self.stage.level_indices_to_codes(level_indices))
            codes = torch.stack(all_codes, dim=-1)
            values = torch.as_tensor(total).to(projected.dtype)
        return values, codes

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z``.

        Shapes: ``z`` ``(..., dim)`` -> quantized ``(..., dim)``, codes ``(..., num_quantizers)``
        (``-1`` for stages removed by quantize dropout).
        """
        num_stages = self._dropout_stages()
        values, codes = self._quantize(z, num_stages)
        if num_stages < self.num_quantizers:
            dropped = codes.new_full((*codes.shape[:-1], self.num_quantizers - num_stages), -1)
            codes = torch.cat([codes, dropped], dim=-1)
        quantized = fp32_layer(self.project_out, values.float()).to(z.dtype)
        metrics = level_metrics(
            codes[..., :num_stages], self.codebook_sizes[:num_stages], synced=self.training
        )
        return QuantizerOutput(quantized=quantized, codes=codes, loss=zero_loss(z), metrics=metrics)

    def encode(self, z: Tensor, n_levels: int | None = None) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., n_levels)`` from the first ``n_levels`` stages."""
        n_levels = self.num_quantizers if n_levels is None else n_levels
        if not 1 <= n_levels <= self.num_quantizers:
            raise ValueError(
                f"ResidualFSQ.encode: n_levels must be in [1, {self.num_quantizers}], got {n_levels}"
            )
        return self._quantize(z, n_levels)[1]

    def decode(self, codes: Tensor) -> Tensor:
        """Int codes ``(..., k)``, ``k <= num_quantizers`` (``-1`` = stage dropped) -> ``(..., dim)``."""
        codes = checked_codes(codes, self.codebook_sizes, "ResidualFSQ", prefix=True, dropped=True)
        total: Tensor | float = 0.0
        for stage in range(codes.shape[-1]):
            stage_codes = codes[..., stage]
            level_indices = self.stage.codes_to_level_indices(stage_codes.clamp_min(0))
            contribution = self.stage.level_indices_to_values(level_indices) * self.scales[stage]
            contribution = contribution.masked_fill((stage_codes < 0).unsqueeze(-1), 0.0)
            total = total + contribution
        values = torch.as_tensor(total)
        return fp32_layer(self.project_out, values.float())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_quantizers={self.num_quantizers}, dim={self.dim}"
