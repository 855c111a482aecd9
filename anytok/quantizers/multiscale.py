"""Multi-scale residual quantization of 2D and 3D latents, VAR-style.

Axis legend: ``b`` batch, ``d`` channels, ``t h w`` latent frames / height / width,
``s`` tokens of all scales together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    checked_codes,
    register_quantizer,
    squared_error_mean,
    straight_through,
    zero_loss,
)
from anytok.quantizers.vq import (
    VectorQuantize,
    fp32_layer,
    fp32_region,
    level_metrics,
    local_code_metrics,
)

#: The scales of VAR's 256x256 tokenizer (16x16 latent).
VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def _normalise_scales(
    scales: Sequence[int | Sequence[int]], spatial_dims: int
) -> tuple[tuple[int, ...], ...]:
    """Each scale as one size per latent axis; checked to grow, coarse to fine."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"MultiScaleResidualVQ: spatial_dims must be 2 or 3, got {spatial_dims}")
    if not scales:
        raise ValueError("MultiScaleResidualVQ: scales must not be empty")
    sizes = []
    for scale in scales:
        size = (int(scale),) * spatial_dims if isinstance(scale, int) else tuple(map(int, scale))
        if len(size) != spatial_dims or min(size) < 1:
            raise ValueError(
                f"MultiScaleResidualVQ: scale {scale!r} must be a positive int or {spatial_dims} "
                "positive ints (one per latent axis)"
            )
        sizes.append(size)
    for coarse, fine in itertools.pairwise(sizes):
        if any(c > f for c, f in zip(coarse, fine)):
            raise ValueError(
                f"MultiScaleResidualVQ: scales must grow coarse to fine, got {coarse} before {fine}"
            )
    return tuple(sizes)


def refiner_indices(num_scales: int, num_refiners: int) -> tuple[int, ...]:
    """The refinement convolution each of ``num_scales`` scales uses, coarse to fine.

    VAR's ``PhiPartiallyShared`` (FoundationVision/VAR, ``models/quant.py``): convolution ``j``
    of ``K`` sits at tick ``linspace(1 / (3K), 1 - 1 / (3K), K)[j]`` when ``K == 4``, else
    ``linspace(1 / (2K), 1 - 1 / (2K), K)[j]``; scale ``k`` uses the one whose tick is nearest
    ``k / (num_scales - 1)`` (the first on a tie). Empty when ``num_refiners == 0``.
    """
    if num_refiners < 1:
        return ()
    k = num_refiners
    start = 1 / 3 / k if k == 4 else 1 / 2 / k
    stop = 1 - start
    # numpy.linspace's arithmetic, float for float: ties (a scale halfway between two ticks)
    # then resolve exactly as in VAR
    step = (stop - start) / (k - 1) if k > 1 else 0.0
    ticks = [j * step + start for j in range(k - 1)] + [stop if k > 1 else start]
    indices = []
    for scale in range(num_scales):
        position = scale / max(num_scales - 1, 1)
        distances = [abs(tick - position) for tick in ticks]
        indices.append(distances.index(min(distances)))
    return tuple(indices)


@register_quantizer("multiscale")
class MultiScaleResidualVQ(Quantizer):
    """Multi-scale residual quantization with one shared codebook (Tian et al. 2024, VAR,
    "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
    https://arxiv.org/abs/2404.02905, Algorithm 1).

    At scale ``k`` the residual ``f - f_hat`` is downsampled (area interpolation) to the scale's
    size, quantized with the shared :class:`VectorQuantize`, upsampled back to the latent size
    (bicubic in 2D, trilinear in 3D), refined by an optional convolution
    ``phi(h) = (1 - refine_ratio) h + refine_ratio conv(h)`` and added to ``f_hat``. The last
    scale is the latent size itself. Training loss (VAR), averaged over scales:
    ``commitment_weight |sg(f_hat_k) - f|^2 + codebook_weight |f_hat_k - sg(f)|^2``; the output
    has a straight-through gradient to the input.

    Args:
        dim: channels of the channel-last latent ``(b, h, w, dim)`` or ``(b, t, h, w, dim)``.
        codebook_size: codes of the shared codebook.
        scales: token grid of each scale, coarse to fine: an int (the same size on every
            latent axis) or one size per axis; the last one is the latent's size.
        spatial_dims: 2 for images ``(b, h, w, d)``, 3 for video ``(b, t, h, w, d)``.
        refine_convs: number of refinement convolutions shared across scales (VAR uses 4);
            scale ``k`` of ``S`` uses the convolution whose tick is nearest ``k / (S - 1)``, as
            VAR's ``PhiPartiallyShared`` (see :func:`refiner_indices`); 0 turns refinement off.
        refine_ratio: mix of the refined and the plain upsampled codes.
        **vq_kwargs: forwarded to the shared :class:`VectorQuantize` (``use_cosine_sim``,
            ``learnable_codebook``, ``decay``, ``kmeans_init``, ``threshold_ema_dead_code``,
            ``commitment_weight``, ``codebook_weight`` ...).

    Codes: ``encode`` returns ``(b, s, 1)`` with ``s = sum(scale_token_counts)``: scale by scale
    from coarse to fine, each scale's grid flattened row-major (``t``, then ``h``, then ``w``).
    :meth:`split_scales` turns them into one ``(b, *scale, 1)`` grid per scale and
    :meth:`merge_scales` back. ``codebook_sizes = (codebook_size,)``.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        scales: Sequence[int | Sequence[int]] = VAR_SCALES,
        spatial_dims: int = 2,
        refine_convs: int = 4,
        refine_ratio: float = 0.5,
        **vq_kwargs: Any,
    ):
        super().__init__()
        if vq_kwargs.get("codebook_dim", dim) != dim:
            raise ValueError(
                "MultiScaleResidualVQ: codebook_dim is not supported (codes are added to the "
                "latent at every scale); project the latent before the quantizer instead"
            )
        if vq_kwargs.get("rotation_trick"):
            raise ValueError(
                "MultiScaleResidualVQ: rotation_trick is not supported; the output has a "
                "straight-through gradient to the input"
            )
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_sizes = (codebook_size,)
        self.spatial_dims = spatial_dims
        self.scales = _normalise_scales(scales, spatial_dims)
        self.latent_size = self.scales[-1]
        self.scale_token_counts = tuple(math.prod(size) for size in self.scales)
        self.upsample_mode = "bicubic" if spatial_dims == 2 else "trilinear"
        self.refine_ratio = refine_ratio
        self.quantizer = VectorQuantize(dim, codebook_size, **vq_kwargs)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.refiners = nn.ModuleList(conv(dim, dim, 3, padding=1) for _ in range(refine_convs))
        #: which refinement convolution each scale uses (VAR's ``PhiPartiallyShared``)
        self.refiner_indices = refiner_indices(len(self.scales), refine_convs)

    # ----------------------------------------------------------------- code layout

    def split_scales(self, codes: Tensor) -> list[Tensor]:
        """Flat codes ``(b, s, 1)`` -> one grid ``(b, *scale, 1)`` per scale, coarse to fine."""
        self._check_flat_codes(codes)
        chunks = codes.split(self.scale_token_counts, dim=1)
        return [chunk.reshape(codes.shape[0], *size, 1) for chunk, size in zip(chunks, self.scales)]

    def merge_scales(self, codes: Sequence[Tensor]) -> Tensor:
        """One grid ``(b, *scale, 1)`` (or ``(b, *scale)``) per scale -> flat ``(b, s, 1)``."""
        if len(codes) != len(self.scales):
            raise ValueError(
                f"MultiScaleResidualVQ.merge_scales: expected {len(self.scales)} scales, "
                f"got {len(codes)}"
            )
        flat = [c.reshape(c.shape[0], -1) for c in codes]
        return torch.cat(flat, dim=1).unsqueeze(-1)

    def _check_flat_codes(self, codes: Tensor) -> None:
        total = sum(self.scale_token_counts)
        if codes.ndim != 3 or codes.shape[1:] != (total, 1):
            raise ValueError(
                f"MultiScaleResidualVQ: expected codes (b, {total}, 1) (all scales, flat), "
                f"got {tuple(codes.shape)}"
            )

    def _check_input(self, z: Tensor) -> None:
        layout = "(b, h, w, d)" if self.spatial_dims == 2 else "(b, t, h, w, d)"
        if z.ndim != self.spatial_dims + 2 or z.shape[-1] != self.dim:
            raise ValueError(
                f"MultiScaleResidualVQ: expected a channel-last latent {layout} with "
                f"d={self.dim}, got shape {tuple(z.shape)}"
            )
        if tuple(z.shape[1:-1]) != self.latent_size:
            raise ValueError(
                f"MultiScaleResidualVQ: latent grid {tuple(z.shape[1:-1])} does not match the "
                f"last scale {self.latent_size}; set scales to end at the latent's size"
            )

    # ----------------------------------------------------------------- quantization

    def _scale_contribution(self, indices: Tensor, scale: int) -> Tensor:
        """Codes of one scale ``(b, *scale)`` -> their refined upsampled codewords
        ``(b, d, *latent)`` (the term added to ``f_hat``)."""
        h = rearrange(self.quantizer.lookup(indices), "b ... d -> b d ...")
        if self.scales[scale] != self.latent_size:
            h = F.interpolate(
                h, size=self.latent_size, mode=self.upsample_mode, align_corners=False
            )
        if len(self.refiners):
            refine = self.refiners[self.refiner_indices[scale]]
            h = (1.0 - self.refine_ratio) * h + self.refine_ratio * fp32_layer(refine, h)
        return h

    def _quantize(self, z: Tensor, train: bool) -> QuantizerOutput:
        self._check_input(z)
        vq = self.quantizer
        with fp32_region(z):
            f = rearrange(z.float(), "b ... d -> b d ...")
            if train:
                vq.prepare_codebook_(
                    rearrange(vq.to_codebook_space(z.detach()), "... c -> (...) c")
                )
            f_hat = torch.zeros_like(f)
            loss = zero_loss(z)
            codes, inputs = [], []
            for scale, size in enumerate(self.scales):
                rest = (f - f_hat).detach()
                if size != self.latent_size:
                    rest = F.interpolate(rest, size=size, mode="area")
                x = vq.to_codebook_space(rearrange(rest, "b d ... -> b ... d"))
                indices = vq.search(x)
                f_hat = f_hat + self._scale_contribution(indices, scale)
                codes.append(indices)
                if train:
                    inputs.append(rearrange(x, "... c -> (...) c"))
                    loss = (
                        loss
                        + vq.commitment_weight * squared_error_mean(f, f_hat.detach())
                        + vq.codebook_weight * squared_error_mean(f_hat, f.detach())
                    )
            flat_codes = self.merge_scales(codes)
            if train:
                loss = loss / len(self.scales)
                # scale-major, as ``inputs`` (``flat_codes`` is batch-major)
                indices = torch.cat([c.reshape(-1) for c in codes])
                metrics = vq.update_codebook_(torch.cat(inputs), indices)
                quantized = straight_through(f_hat, f)
            else:
                metrics = local_code_metrics(flat_codes, self.codebook_size)
                quantized = f_hat
            quantized = rearrange(quantized, "b d ... -> b ... d").to(z.dtype)
        return QuantizerOutput(quantized, flat_codes, loss, level_metrics(metrics, 0))

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize a latent ``(b, h, w, d)`` / ``(b, t, h, w, d)``; codes ``(b, s, 1)``, flat
        (see the class docstring for the order)."""
        return self._quantize(z, train=self.training)

    def encode(self, z: Tensor) -> Tensor:
        """Latent -> flat codes ``(b, s, 1)``, coarse scale first, each grid row-major."""
        with torch.no_grad():
            return self._quantize(z, train=False).codes

    def decode(self, codes: Tensor) -> Tensor:
        """Flat codes ``(b, s, 1)`` -> quantized latent ``(b, *latent, d)``, fp32."""
        self._check_flat_codes(codes)
        codes = checked_codes(codes, self.codebook_sizes, "MultiScaleResidualVQ")
        with fp32_region(codes):
            grids = self.split_scales(codes)
            f_hat = codes.new_zeros(
                codes.shape[0], self.dim, *self.latent_size, dtype=torch.float32
            )
            for scale, grid in enumerate(grids):
                f_hat = f_hat + self._scale_contribution(grid[..., 0], scale)
        return rearrange(f_hat, "b d ... -> b ... d")
