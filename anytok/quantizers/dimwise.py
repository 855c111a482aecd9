"""Dimension-wise post-training quantization (TokenBridge).

Wang et al. 2025, "Bridging Continuous and Discrete Tokens for Autoregressive Visual
Generation", https://arxiv.org/abs/2503.16430: a tokenizer trained with continuous latents is
discretised afterwards by quantizing every channel independently to ``B`` bins, so the
continuous model needs no retraining and an autoregressive model predicts one categorical per
channel.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    check_last_dim,
    checked_codes,
    register_quantizer,
    straight_through,
    zero_loss,
)
from anytok.quantizers.stats import code_counts

BINNINGS = ("gaussian", "uniform")

#: Samples per channel ``calibrate`` looks at; more are subsampled (quantiles stay accurate).
MAX_CALIBRATION_SAMPLES = 1 << 20


def gaussian_bins(mean: Tensor, std: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Equal-probability bins of ``N(mean, std²)`` per channel.

    Edges are the ``k / num_bins`` quantiles; each centre is the conditional mean of the
    Gaussian inside its bin (the MSE-optimal reconstruction for that bin).

    Shapes: ``mean``, ``std`` ``(dim,)`` -> edges ``(dim, num_bins - 1)``,
    centres ``(dim, num_bins)``.
    """
    probs = torch.arange(1, num_bins, dtype=torch.float64) / num_bins
    unit_edges = torch.special.ndtri(probs)  # standard-normal quantiles
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    lower = torch.cat([-inf, unit_edges])
    upper = torch.cat([unit_edges, inf])
    density = torch.distributions.Normal(0.0, 1.0)
    mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)  # = 1 / num_bins
    unit_centers = (density.log_prob(lower).exp() - density.log_prob(upper).exp()) / mass
    mean, std = mean.double().unsqueeze(-1), std.double().unsqueeze(-1)
    return mean + std * unit_edges, mean + std * unit_centers


def uniform_bins(low: Tensor, high: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """``num_bins`` equal-width bins over ``[low, high]`` per channel; centres at midpoints.

    Shapes: ``low``, ``high`` ``(dim,)`` -> edges ``(dim, num_bins - 1)``,
    centres ``(dim, num_bins)``.
    """
    fractions = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
    low, high = low.double().unsqueeze(-1), high.double().unsqueeze(-1)
    boundaries = low + (high - low) * fractions
    return boundaries[:, 1:-1], (boundaries[:, 1:] + boundaries[:, :-1]) / 2


def interpolated_quantile(ordered: Tensor, q: float) -> Tensor:
    """Quantile ``q`` of each column of column-sorted ``ordered`` ``(n, dim)``, linear
    interpolation between order statistics (``torch.quantile``'s default)."""
    position = q * (ordered.shape[0] - 1)
    below = int(position)
    above = min(below + 1, ordered.shape[0] - 1)
    weight = position - below
    return ordered[below] * (1 - weight) + ordered[above] * weight


@register_quantizer("dimwise", "dimension_wise")
class DimensionWiseQuantizer(Quantizer):
    """Quantize each channel of a continuous latent independently to ``num_bins`` bins.

    ``binning="gaussian"``: bins of equal probability under a per-channel Gaussian fitted by
    :meth:`calibrate` (mean, std), centres at the Gaussian's conditional means — fine where the
    density is high, as for VAE latents. ``binning="uniform"``: equal-width bins between
    per-channel quantiles ``clip_quantile`` and ``1 - clip_quantile`` (out-of-range values fall
    in the outer bins). Until calibrated, the bins assume a standard normal per channel
    (uniform: ``[-3, 3]``).

    The bins live in buffers (``edges``, ``centers``, ``calibrated``) saved in the state dict.
    No training is needed: ``forward``'s loss is zero and its output passes a straight-through
    gradient, so the quantizer can also sit inside a model being fine-tuned.

    Codes: ``(..., dim)`` int64, channel ``i``'s bin in ``[0, num_bins)``, bins ordered by value.

    Args:
        dim: channels of the latent.
        num_bins: bins per channel (the codebook size of every level).
        binning: ``"gaussian"`` or ``"uniform"``.
        clip_quantile: for uniform bins, the tail fraction left outside the range on each side.
    """

    #: calibrated bins, compared in fp32 (see :class:`~anytok.quantizers.base.Fp32Buffers`)
    fp32_buffers = ("edges", "centers")

    def __init__(
        self,
        dim: int,
        num_bins: int = 64,
        binning: str = "gaussian",
        clip_quantile: float = 1e-3,
    ):
        super().__init__()
        if dim < 1:
            raise ValueError(f"DimensionWiseQuantizer: dim must be >= 1, got {dim}")
        if num_bins < 2:
            raise ValueError(f"DimensionWiseQuantizer: num_bins must be >= 2, got {num_bins}")
        if binning not in BINNINGS:
            raise ValueError(
                f"DimensionWiseQuantizer: binning must be one of {BINNINGS}, got {binning!r}"
            )
        if not 0.0 <= clip_quantile < 0.5:
            raise ValueError(
                f"DimensionWiseQuantizer: clip_quantile must be in [0, 0.5), got {clip_quantile}"
            )
        self.dim = dim
        self.num_bins = num_bins
        self.binning = binning
        self.clip_quantile = clip_quantile
        self.codebook_size = num_bins
        self.codebook_sizes = (num_bins,) * dim
        if binning == "gaussian":
            edges, centers = gaussian_bins(torch.zeros(dim), torch.ones(dim), num_bins)
        else:
            edges, centers = uniform_bins(
                torch.full((dim,), -3.0), torch.full((dim,), 3.0), num_bins
            )
        self.register_buffer("edges", edges.float())  # (dim, num_bins - 1), sorted per channel
        self.register_buffer("centers", centers.float())  # (dim, num_bins)
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("_offsets", torch.arange(dim) * num_bins, persistent=False)

    @torch.no_grad()
    def calibrate(self, z: Tensor) -> None:
        """Fit the bins to a sample of latents ``z`` ``(..., dim)`` (at least 2 vectors).

        Gaussian bins use each channel's mean and standard deviation; uniform bins its
        ``clip_quantile`` and ``1 - clip_quantile`` quantiles. Statistics are computed in
        float64 on at most ``MAX_CALIBRATION_SAMPLES`` vectors (a random subset beyond that).
        """
        check_last_dim(z, self.dim, "DimensionWiseQuantizer.calibrate")
        samples = rearrange(z.detach(), "... d -> (...) d").double()
        if samples.shape[0] < 2:
            raise ValueError("DimensionWiseQuantizer.calibrate: need at least 2 vectors")
        if not bool(torch.isfinite(samples).all()):
            raise ValueError("DimensionWiseQuantizer.calibrate: z holds NaN or Inf values")
        if samples.shape[0] > MAX_CALIBRATION_SAMPLES:
            keep = torch.randperm(samples.shape[0], device=samples.device)
            samples = samples[keep[:MAX_CALIBRATION_SAMPLES]]
        if self.binning == "gaussian":
            std = samples.std(dim=0).clamp_min(1e-8)
            edges, centers = gaussian_bins(samples.mean(dim=0).cpu(), std.cpu(), self.num_bins)
        else:
            # torch.quantile refuses inputs over 2^24 elements: interpolate a sort instead
            ordered = samples.cpu().sort(dim=0).values
            low, high = (
                interpolated_quantile(ordered, q)
                for q in (self.clip_quantile, 1.0 - self.clip_quantile)
            )
            high = torch.maximum(high, low + 1e-8)
            edges, centers = uniform_bins(low, high, self.num_bins)
        self.edges.copy_(edges)
        self.centers.copy_(centers)
        self.calibrated.fill_(True)

    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., dim)`` in ``[0, num_bins)``."""
        check_last_dim(z, self.dim, type(self).__name__)
        with torch.autocast(device_type=z.device.type, enabled=False):
            values = rearrange(z.detach().float(), "... d -> d (...)").contiguous()
            codes = torch.searchsorted(self.edges, values)  # (dim, n)
        return rearrange(codes, "d n -> n d").reshape(z.shape)

    def decode(self, codes: Tensor) -> Tensor:
        """Int codes ``(..., dim)`` -> bin centres ``(..., dim)`` (float32)."""
        codes = checked_codes(codes, self.codebook_sizes, type(self).__name__)
        return self.centers.reshape(-1)[codes + self._offsets]

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(..., dim)``: bin centres with a straight-through gradient, zero loss.

        Metrics: mean and minimum over channels of the per-channel perplexity and usage.
        """
        codes = self.encode(z)
        centers = self.centers.reshape(-1)[codes + self._offsets]
        quantized = straight_through(centers.to(z.dtype), z)
        return QuantizerOutput(
            quantized=quantized, codes=codes, loss=zero_loss(z), metrics=self._metrics(codes)
        )

    def _metrics(self, codes: Tensor) -> dict[str, Tensor]:
        if torch.compiler.is_compiling():
            return {}
        # one histogram for all channels: channel i's bins are offset by i * num_bins
        flat = rearrange(codes.detach() + self._offsets, "... d -> (...) d").reshape(-1)
        # summed over ranks in training only: eval (rank-0-only validation) runs no collective
        counts = code_counts(flat, self.dim * self.num_bins, synced=self.training)
        counts = rearrange(counts, "(d b) -> d b", d=self.dim)
        total = counts.sum(dim=-1, keepdim=True)
        probs = counts / total.clamp_min(1e-12)
        channel_perplexity = (-(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)).exp()
        possible = total.squeeze(-1).clamp(min=1, max=self.num_bins)
        usage = (counts > 0).sum(dim=-1).float() / possible
        return {
            "perplexity/mean": channel_perplexity.mean(),
            "perplexity/min": channel_perplexity.min(),
            "usage/mean": usage.mean(),
            "usage/min": usage.min(),
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_bins={self.num_bins}, binning={self.binning!r}"
