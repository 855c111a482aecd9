"""Residual vector quantization: :class:`ResidualVQ` and :class:`GroupedResidualVQ`.

Axis legend: ``b`` batch, ``n`` positions, ``d`` channels, ``l`` residual levels (stages),
``g`` groups of channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    check_last_dim,
    checked_codes,
    register_quantizer,
    zero_loss,
)
from anytok.quantizers.distributed import shared_randint
from anytok.quantizers.vq import (
    VectorQuantize,
    fp32_layer,
    fp32_region,
    level_metrics,
    read_kmeans_flags_,
    relevel_metrics,
)


def synced_num_levels(num_quantizers: int, cutoff_index: int, device: torch.device) -> int:
    """Quantizer dropout: how many levels this step uses, ``cutoff_index + 1`` to
    ``num_quantizers``, uniformly, the same on every rank (see :func:`shared_randint`).

    Every rank must use the same count: each level all-reduces its codebook statistics, and a
    rank skipping a level would leave the others waiting in that all-reduce.
    """
    return shared_randint(cutoff_index + 1, num_quantizers + 1, device)


def _check_residual_arguments(
    name: str,
    num_quantizers: int,
    codebook_size: int | Sequence[int],
    shared_codebook: bool,
    quantize_dropout_cutoff_index: int,
) -> tuple[int, ...]:
    """Validate the stage arguments of a residual quantizer called ``name`` (named in every
    message); return the codebook size of each stage."""
    if num_quantizers < 1:
        raise ValueError(f"{name}: num_quantizers must be >= 1, got {num_quantizers}")
    sizes = (
        (codebook_size,) * num_quantizers
        if isinstance(codebook_size, int)
        else tuple(int(k) for k in codebook_size)
    )
    if len(sizes) != num_quantizers:
        raise ValueError(
            f"{name}: codebook_size has {len(sizes)} entries for num_quantizers={num_quantizers}"
        )
    if shared_codebook and len(set(sizes)) != 1:
        raise ValueError(f"{name}: shared_codebook needs one codebook size, got {sizes}")
    if not 0 <= quantize_dropout_cutoff_index < num_quantizers:
        raise ValueError(
            f"{name}: quantize_dropout_cutoff_index must be in [0, num_quantizers), "
            f"got {quantize_dropout_cutoff_index} with num_quantizers={num_quantizers}"
        )
    return sizes


def _pad_dropped_levels(codes: Tensor, num_quantizers: int) -> Tensor:
    """Codes ``(..., used)`` -> ``(..., num_quantizers)``, ``-1`` marking levels not run."""
    return F.pad(codes, (0, num_quantizers - codes.shape[-1]), value=-1)


@register_quantizer("rvq")
class ResidualVQ(Quantizer):
    """Residual vector quantization (Zeghidour et al. 2021, SoundStream, Algorithm 1,
    https://arxiv.org/abs/2107.03312): stage ``i`` quantizes what stages ``0 .. i-1`` left.

    Each stage is a :class:`VectorQuantize` built with ``vq_kwargs`` (e.g. ``codebook_dim=8,
    use_cosine_sim=True, learnable_codebook=True`` for DAC-style factorized stages,
    https://arxiv.org/abs/2306.06546). The residual passed on is ``r - q`` with the stage's
    straight-through output, so the sum of the stages has an identity gradient to the input
    and each stage's commitment loss trains that stage (as in DAC). Where a stage has no
    projection, no normalisation and no rotation trick, that residual's gradient is exactly
    zero, so it is detached: the same gradients without a graph through the later stages.

    Args:
        dim: channels of the channel-last input ``(..., dim)``.
        num_quantizers: number of stages (levels).
        codebook_size: codes per stage, one int or one per stage.
        shared_codebook: one codebook (one :class:`VectorQuantize`) for every stage; its
            statistics are updated once per step from every stage's inputs.
        quantize_dropout: in training, use a random number of leading stages per batch (the
            same on every rank), so that fewer levels decode well (bitrate choice at inference).
        quantize_dropout_cutoff_index: the last stage used is at least this one (0-based).
        **vq_kwargs: forwarded to every :class:`VectorQuantize`.

    Codes: ``(..., num_quantizers)`` int64, level ``i`` in column ``i``. When training with
    quantizer dropout (or ``forward(z, n_levels=k)``) the columns of levels not run hold ``-1``.
    ``encode(z, n_levels=k)`` returns ``(..., k)``; ``decode`` accepts any ``k`` leading levels
    and reads ``-1`` as a level not run.
    """

    def __init__(
        self,
        dim: int,
        num_quantizers: int,
        codebook_size: int | Sequence[int],
        *,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        **vq_kwargs: Any,
    ):
        super().__init__()
        sizes = _check_residual_arguments(
            type(self).__name__,
            num_quantizers,
            codebook_size,
            shared_codebook,
            quantize_dropout_cutoff_index,
        )
        self.dim = dim
        self.num_quantizers = num_quantizers
        self.codebook_sizes = sizes
        self.shared_codebook = shared_codebook
        self.quantize_dropout = quantize_dropout and num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        distinct = sizes[:1] if shared_codebook else sizes
        self.layers = nn.ModuleList(VectorQuantize(dim, k, **vq_kwargs) for k in distinct)

    def stage(self, level: int) -> VectorQuantize:
        """The quantizer of stage ``level`` (the same module for all with a shared codebook)."""
        return self.layers[0 if self.shared_codebook else level]

    def _check_levels(self, n_levels: int | None) -> int:
        if n_levels is None:
            return self.num_quantizers
        if not 1 <= n_levels <= self.num_quantizers:
            raise ValueError(
                f"{type(self).__name__}: n_levels must be in [1, {self.num_quantizers}], "
                f"got {n_levels}"
            )
        return n_levels

    def forward(self, z: Tensor, *, n_levels: int | None = None) -> QuantizerOutput:
        """Quantize ``z (..., dim)`` with every stage, or the first ``n_levels``.

        Without ``n_levels``, training with ``quantize_dropout`` draws the count per batch.
        Metrics are per level: ``perplexity/i``, ``usage/i``, ... (``.../shared`` for the
        usage statistics of a shared codebook).
        """
        check_last_dim(z, self.dim, type(self).__name__)
        if n_levels is None and self.training and self.quantize_dropout:
            n_levels = synced_num_levels(
                self.num_quantizers, self.quantize_dropout_cutoff_index, z.device
            )
        n_levels = self._check_levels(n_levels)
        update_each_stage = not self.shared_codebook
        if self.training:  # every stage, also those quantizer dropout skips this time
            for layer in self.layers:
                layer.broadcast_codebook_once_()
            read_kmeans_flags_(self.layers)
        with fp32_region(z):
            residual = z.float()
            quantized = torch.zeros_like(residual)
            loss = zero_loss(z)
            codes, metrics, stage_inputs = [], {}, []
            if self.training and self.shared_codebook:
                shared = self.stage(0)
                shared.prepare_codebook_(
                    rearrange(shared.to_codebook_space(residual), "... c -> (...) c").detach()
                )
            for level in range(n_levels):
                layer = self.stage(level)
                if self.training and self.shared_codebook:
                    with torch.no_grad():
                        stage_inputs.append(layer.to_codebook_space(residual))
                out = layer(residual, update_codebook=update_each_stage)
                residual = residual - out.quantized
                if layer.output_gradient_is_identity:
                    # Its gradient is g - g = 0 exactly: later stages' commitment losses
                    # cannot reach the input, so they need no graph (two input-sized saved
                    # tensors per stage, and their backward).
                    residual = residual.detach()
                quantized = quantized + out.quantized
                loss = loss + out.loss
                codes.append(out.codes)
                metrics.update(relevel_metrics(out.metrics, level))
            if stage_inputs:
                inputs = torch.cat([rearrange(x, "... c -> (...) c") for x in stage_inputs])
                indices = torch.cat([c.reshape(-1) for c in codes])
                metrics.update(level_metrics(shared.update_codebook_(inputs, indices), "shared"))
        codes = _pad_dropped_levels(torch.cat(codes, dim=-1), self.num_quantizers)
        return QuantizerOutput(quantized.to(z.dtype), codes, loss, metrics)

    def encode(self, z: Tensor, n_levels: int | None = None) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., n_levels)`` (default: every level)."""
        check_last_dim(z, self.dim, type(self).__name__)
        n_levels = self._check_levels(n_levels)
        with fp32_region(z):
            residual = z.float()
            codes = []
            for level in range(n_levels):
                layer = self.stage(level)
                level_codes = layer.encode(residual)
                residual = residual - layer.lookup(level_codes[..., 0])  # == layer.decode
                codes.append(level_codes)
        return torch.cat(codes, dim=-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., k)`` of the first ``k <= num_quantizers`` levels -> fp32 ``(..., dim)``.

        A code of ``-1`` (a level that quantizer dropout or ``n_levels`` did not run, as
        ``forward`` returns them) contributes nothing, as in :class:`ResidualFSQ` and
        vector-quantize-pytorch's ``get_output_from_indices``.
        """
        name = type(self).__name__
        codes = checked_codes(codes, self.codebook_sizes, name, prefix=True, dropped=True)
        with fp32_region(codes):
            quantized = torch.zeros(*codes.shape[:-1], self.dim, device=codes.device)
            for level in range(codes.shape[-1]):
                level_codes = codes[..., level]
                codewords = self.stage(level).lookup(level_codes.clamp_min(0))
                quantized = quantized + codewords.masked_fill((level_codes < 0).unsqueeze(-1), 0)
        return quantized


@register_quantizer("grvq")
class GroupedResidualVQ(Quantizer):
    """Grouped residual VQ (Yang et al. 2023, HiFi-Codec, https://arxiv.org/abs/2305.02765):
    the channels are split into ``groups`` equal slices, each with its own :class:`ResidualVQ`.

    Codes: ``(..., groups * num_quantizers)`` in group-major order, column
    ``g * num_quantizers + i`` = group ``g``, level ``i``
    (``rearrange(codes, '... (g l) -> ... g l', g=groups)`` recovers the grid).
    ``encode(z, n_levels=k)`` returns ``(..., groups * k)`` in the same order, and ``decode``
    accepts it. Quantizer dropout draws one level count per batch for every group. Metrics
    are keyed by code column (``perplexity/5`` is group 1, level 2 with 3 levels), and
    ``.../shared.g`` for group ``g``'s shared codebook.

    Args:
        dim: channels, divisible by ``groups``.
        groups: number of channel groups.
        num_quantizers: residual stages per group.
        codebook_size: codes per stage (one int or one per stage), the same for every group.
        quantize_dropout: random number of leading levels per batch in training.
        quantize_dropout_cutoff_index: the last level used is at least this one (0-based).
        **rvq_kwargs: forwarded to every :class:`ResidualVQ` (and on to its stages).
    """

    def __init__(
        self,
        dim: int,
        groups: int,
        num_quantizers: int,
        codebook_size: int | Sequence[int],
        *,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        **rvq_kwargs: Any,
    ):
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"GroupedResidualVQ: dim {dim} must split into {groups} equal groups")
        # checked here too (each group's ResidualVQ checks again), so errors name this class
        _check_residual_arguments(
            type(self).__name__,
            num_quantizers,
            codebook_size,
            bool(rvq_kwargs.get("shared_codebook", False)),
            quantize_dropout_cutoff_index,
        )
        self.dim = dim
        self.groups = groups
        self.num_quantizers = num_quantizers
        self.quantize_dropout = quantize_dropout and num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.rvqs = nn.ModuleList(
            ResidualVQ(
                dim // groups,
                num_quantizers,
                codebook_size,
                quantize_dropout_cutoff_index=quantize_dropout_cutoff_index,
                **rvq_kwargs,
            )
            for _ in range(groups)
        )
        self.codebook_sizes = tuple(k for rvq in self.rvqs for k in rvq.codebook_sizes)

    def forward(self, z: Tensor, *, n_levels: int | None = None) -> QuantizerOutput:
        """Quantize ``z (..., dim)``; codes ``(..., groups * num_quantizers)``, group-major."""
        check_last_dim(z, self.dim, type(self).__name__)
        if n_levels is None and self.training and self.quantize_dropout:
            n_levels = synced_num_levels(
                self.num_quantizers, self.quantize_dropout_cutoff_index, z.device
            )
        outputs = [
            rvq(chunk, n_levels=n_levels)
            for rvq, chunk in zip(self.rvqs, z.chunk(self.groups, dim=-1))
        ]
        metrics = {}
        for group, out in enumerate(outputs):
            metrics.update(
                _offset_level_metrics(
                    out.metrics, group * self.num_quantizers, lambda label, g=group: f"{label}.{g}"
                )
            )
        return QuantizerOutput(
            quantized=torch.cat([out.quantized for out in outputs], dim=-1),
            codes=torch.cat([out.codes for out in outputs], dim=-1),
            loss=sum((out.loss for out in outputs), zero_loss(z)),
            metrics=metrics,
        )

    def encode(self, z: Tensor, n_levels: int | None = None) -> Tensor:
        """``(..., dim)`` -> codes ``(..., groups * n_levels)``, group-major."""
        check_last_dim(z, self.dim, type(self).__name__)
        chunks = z.chunk(self.groups, dim=-1)
        return torch.cat([rvq.encode(c, n_levels) for rvq, c in zip(self.rvqs, chunks)], dim=-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., groups * k)``, group-major, ``k <= num_quantizers`` -> ``(..., dim)``."""
        # Checked here (the groups' decode checks again), so errors name this class and the
        # codes as given.
        levels = codes.shape[-1] // self.groups if codes.ndim else 0
        if codes.shape[-1:] != (levels * self.groups,) or not 1 <= levels <= self.num_quantizers:
            raise ValueError(
                f"{type(self).__name__}.decode: expected codes (..., groups * k) with "
                f"groups={self.groups}, 1 <= k <= {self.num_quantizers}, got {tuple(codes.shape)}"
            )
        sizes = tuple(k for rvq in self.rvqs for k in rvq.codebook_sizes[:levels])
        codes = checked_codes(codes, sizes, type(self).__name__, dropped=True)
        per_group = rearrange(codes, "... (g l) -> g ... l", g=self.groups)
        return torch.cat([rvq.decode(c) for rvq, c in zip(self.rvqs, per_group)], dim=-1)


def _offset_level_metrics(
    metrics: dict[str, Tensor], offset: int, rename: Callable[[str], str]
) -> dict[str, Tensor]:
    """``perplexity/2`` -> ``perplexity/{2 + offset}``; a label that is not a level number
    (``.../shared``) becomes ``.../{rename(label)}``."""
    out = {}
    for name, value in metrics.items():
        base, label = name.rsplit("/", 1)
        out[f"{base}/{int(label) + offset if label.isdigit() else rename(label)}"] = value
    return out


@register_quantizer("split_rvq")
class SplitResidualVQ(Quantizer):
    """Split residual VQ (Mimi, Défossez et al. 2024, https://arxiv.org/abs/2410.00037): a
    *semantic* residual VQ of ``num_semantic`` levels and an *acoustic* one of the other
    ``num_quantizers - num_semantic`` levels quantize the same input side by side, each
    behind its own bias-free linear projection ``dim -> codebook_dim`` and back; the output
    is the sum of the two. Keeping the semantic levels out of the acoustic residual lets them
    be distilled from a semantic teacher without the acoustic levels having to undo it.

    Args:
        dim: channels of the channel-last input ``(..., dim)``.
        num_quantizers: levels in all, semantic first.
        codebook_size: codes per level.
        num_semantic: semantic levels (Mimi: 1).
        codebook_dim: channels of the codebook space (default ``dim``: no projections).
        quantize_dropout: in training, draw how many acoustic levels run (0 to all), the
            same on every rank; the semantic levels always run.
        **vq_kwargs: :class:`VectorQuantize` arguments of every level.

    Shapes: codes ``(..., num_quantizers)``, semantic levels first; ``decode`` takes the
    first ``k`` levels, any ``1 <= k <= num_quantizers``.
    """

    def __init__(
        self,
        dim: int,
        num_quantizers: int,
        codebook_size: int,
        *,
        num_semantic: int = 1,
        codebook_dim: int | None = None,
        quantize_dropout: bool = False,
        **vq_kwargs: Any,
    ):
        super().__init__()
        if not 1 <= num_semantic <= num_quantizers:
            raise ValueError(
                f"SplitResidualVQ: num_semantic must be in [1, num_quantizers={num_quantizers}], "
                f"got {num_semantic}"
            )
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim = dim
        self.codebook_dim = codebook_dim
        self.num_quantizers = num_quantizers
        self.num_semantic = num_semantic
        self.num_acoustic = num_quantizers - num_semantic
        self.codebook_sizes = (int(codebook_size),) * num_quantizers
        self.quantize_dropout = quantize_dropout and self.num_acoustic > 0

        def projection(d_in: int, d_out: int) -> nn.Module:
            return nn.Linear(d_in, d_out, bias=False) if d_in != d_out else nn.Identity()

        self.semantic_in = projection(dim, codebook_dim)
        self.semantic = ResidualVQ(codebook_dim, num_semantic, codebook_size, **vq_kwargs)
        self.semantic_out = projection(codebook_dim, dim)
        self.acoustic: ResidualVQ | None = None
        if self.num_acoustic:
            self.acoustic_in = projection(dim, codebook_dim)
            self.acoustic = ResidualVQ(codebook_dim, self.num_acoustic, codebook_size, **vq_kwargs)
            self.acoustic_out = projection(codebook_dim, dim)

    def training_levels(self, device: torch.device) -> int:
        """Levels a call without ``n_levels`` runs: in training with quantizer dropout, a
        draw from ``num_semantic .. num_quantizers`` (the same on every rank); else all."""
        if self.training and self.quantize_dropout:
            return synced_num_levels(self.num_quantizers, self.num_semantic - 1, device)
        return self.num_quantizers

    def _check_levels(self, n_levels: int | None, lowest: int) -> int:
        if n_levels is None:
            return self.num_quantizers
        if not lowest <= n_levels <= self.num_quantizers:
            raise ValueError(
                f"{type(self).__name__}: n_levels must be in [{lowest}, {self.num_quantizers}] "
                f"({self.num_semantic} semantic level(s) always run), got {n_levels}"
            )
        return int(n_levels)

    def forward(self, z: Tensor, *, n_levels: int | None = None) -> QuantizerOutput:
        """Quantize ``z (..., dim)`` with the semantic levels and the first
        ``n_levels - num_semantic`` acoustic ones (quantizer dropout draws that in training
        when not given). Levels not run have code ``-1``."""
        return self.forward_split(z, n_levels=n_levels)[0]

    def forward_split(
        self, z: Tensor, *, n_levels: int | None = None
    ) -> tuple[QuantizerOutput, Tensor]:
        """:meth:`forward`, plus the semantic levels' part of the output ``(..., dim)`` (what
        a semantic teacher is distilled into; straight-through gradient to ``z``)."""
        check_last_dim(z, self.dim, type(self).__name__)
        if n_levels is None:
            n_levels = self.training_levels(z.device)
        n_levels = self._check_levels(n_levels, self.num_semantic)
        with fp32_region(z):
            x = z.float()
            semantic = self.semantic(fp32_layer(self.semantic_in, x))
            quantized = semantic_part = fp32_layer(self.semantic_out, semantic.quantized)
            loss, codes, metrics = semantic.loss, [semantic.codes], dict(semantic.metrics)
            acoustic_levels = n_levels - self.num_semantic
            if acoustic_levels:
                assert self.acoustic is not None
                acoustic = self.acoustic(fp32_layer(self.acoustic_in, x), n_levels=acoustic_levels)
                quantized = quantized + fp32_layer(self.acoustic_out, acoustic.quantized)
                loss = loss + acoustic.loss
                codes.append(acoustic.codes[..., :acoustic_levels])
                metrics.update(
                    _offset_level_metrics(
                        acoustic.metrics,
                        self.num_semantic,
                        lambda label: f"{self.num_semantic}.{label}",
                    )
                )
        codes_out = _pad_dropped_levels(torch.cat(codes, dim=-1), self.num_quantizers)
        out = QuantizerOutput(quantized.to(z.dtype), codes_out, loss, metrics)
        return out, semantic_part.to(z.dtype)

    def encode(self, z: Tensor, n_levels: int | None = None) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., n_levels)`` (default: every level)."""
        check_last_dim(z, self.dim, type(self).__name__)
        n_levels = self._check_levels(n_levels, self.num_semantic)
        with fp32_region(z):
            x = z.float()
            codes = [self.semantic.encode(fp32_layer(self.semantic_in, x))]
            if n_levels > self.num_semantic:
                assert self.acoustic is not None
                codes.append(
                    self.acoustic.encode(
                        fp32_layer(self.acoustic_in, x), n_levels - self.num_semantic
                    )
                )
        return torch.cat(codes, dim=-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., k)`` of the first ``k`` levels -> fp32 ``(..., dim)``; ``-1`` marks a
        level not run (it contributes nothing)."""
        codes = checked_codes(
            codes, self.codebook_sizes, type(self).__name__, prefix=True, dropped=True
        )
        with fp32_region(codes):
            quantized = fp32_layer(
                self.semantic_out, self.semantic.decode(codes[..., : self.num_semantic])
            )
            if codes.shape[-1] > self.num_semantic:
                assert self.acoustic is not None
                acoustic = self.acoustic.decode(codes[..., self.num_semantic :])
                quantized = quantized + fp32_layer(self.acoustic_out, acoustic)
        return quantized
