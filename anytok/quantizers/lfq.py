"""Lookup-free (sign) quantizers: LFQ, BSQ and GroupLFQ.

* :class:`LFQ` — MAGVIT-v2, Yu et al. 2023, "Language Model Beats Diffusion — Tokenizer is
  Key to Visual Generation", https://arxiv.org/abs/2310.05737.
* :class:`BSQ` — Zhao et al. 2024, "Image and Video Tokenization with Binary Spherical
  Quantization", https://arxiv.org/abs/2406.07548.
* :class:`GroupLFQ` — WeTok, Zhuang et al. 2025, "WeTok: Powerful Discrete Tokenization for
  High-Fidelity Visual Reconstruction", https://arxiv.org/abs/2508.05599 (group-wise LFQ).

All three share :class:`SignQuantizer`: each channel becomes one bit, ``x > 0``. The codebook
is never materialised, so 2^18 trains and 2^32 runs on a laptop. The entropy loss is computed
*factorized*: the soft assignment ``softmax_c(4 τ v x·b_c)`` over all ``2^d`` codes factorizes
over bits, so it is evaluated per group of ``entropy_group_size`` bits (``2^g`` sub-codes per
group) with memory ``O(N · d/g · 2^g)`` instead of ``O(N · 2^d)``. The per-sample entropy is
exact for any grouping (independent groups' entropies add up); the codebook (batch) entropy is
approximated by the sum of the groups' batch entropies, an upper bound that is exact when one
group holds all bits (then it equals vector-quantize-pytorch's LFQ loss).

Bit order: within one codebook of ``d`` bits, channel ``k`` is bit ``d - 1 - k`` of the code
(channel 0 is the most significant bit), the order vector-quantize-pytorch's LFQ uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    check_last_dim,
    checked_codes,
    fp32_layer,
    register_quantizer,
    squared_error_mean,
    straight_through,
    zero_loss,
)
from anytok.quantizers.distributed import is_distributed
from anytok.quantizers.fsq import level_metrics

#: int64 codes hold at most this many bits per codebook (sign bit excluded, one spare).
MAX_BITS_PER_CODE = 62

#: Largest entropy group: ``2^16`` sub-codes per group and sample is already a lot of memory.
MAX_ENTROPY_GROUP_BITS = 16


def check_bits_per_code(bits: int, name: str, argument: str, hint: str) -> None:
    """Raise a clear error unless ``bits`` (bits per code, given by ``argument``) fit int64
    codes; ``hint`` says how to get there with this class's own arguments."""
    if not 1 <= bits <= MAX_BITS_PER_CODE:
        raise ValueError(
            f"{name}: {argument} gives {bits} bits per code; it must be 1 to "
            f"{MAX_BITS_PER_CODE} so codes fit int64; {hint}"
        )


def entropy(probs: Tensor, eps: float = 1e-5) -> Tensor:
    """Entropy in nats over the last axis, with ``log`` clamped at ``eps`` (as MAGVIT-v2 code)."""
    return -(probs * probs.clamp_min(eps).log()).sum(dim=-1)


def distributed_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over ranks, differentiable (identity outside distributed runs)."""
    if not is_distributed() or torch.compiler.is_compiling():
        return tensor
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor) / dist.get_world_size()


def bit_patterns(num_bits: int) -> Tensor:
    """``(2^num_bits, num_bits)`` float 0/1: row ``j`` is ``j`` in binary, most significant first."""
    shifts = torch.arange(num_bits - 1, -1, -1)
    return ((torch.arange(2**num_bits).unsqueeze(-1) >> shifts) & 1).float()


def factorized_entropies(logits: Tensor, patterns: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample and codebook entropy of independent-bit soft codes, grouped by ``g`` bits.

    ``logits`` ``(n, c, d)``: per-bit log-odds ``log p(bit=1) - log p(bit=0)`` of ``n`` samples
    in ``c`` codebooks of ``d`` bits. ``patterns`` ``(2^g, g)``: :func:`bit_patterns` of the
    group size ``g``. Bits are split into groups of ``g`` (the last group may be shorter); the
    joint over a group's ``2^g`` sub-codes is ``softmax_j(logits · pattern_j)``.

    Returns ``(per_sample_entropy, codebook_entropy)``, scalars: the per-sample entropy summed
    over groups and averaged over samples and codebooks; the entropy of the batch-mean
    distribution summed over groups and averaged over codebooks.
    """
    group_size = patterns.shape[-1]
    per_sample = logits.new_zeros(())
    codebook = logits.new_zeros(())
    for start in range(0, logits.shape[-1], group_size):
        chunk = logits[..., start : start + group_size]  # (n, c, g)
        # a shorter last group of r bits: the rows of `patterns` whose low g - r bits are 0
        short = group_size - chunk.shape[-1]
        chunk_patterns = patterns[:: 2**short, : chunk.shape[-1]].to(chunk.dtype)
        probs = torch.einsum("ncg,jg->ncj", chunk, chunk_patterns).softmax(dim=-1)
        per_sample = per_sample + entropy(probs).mean()
        batch_probs = distributed_mean(reduce(probs, "n c j -> c j", "mean"))
        codebook = codebook + entropy(batch_probs).mean()
    return per_sample, codebook


class SignQuantizer(Quantizer):
    """Shared engine of the lookup-free family: ``num_codebooks`` codebooks of ``codebook_dim``
    sign bits each, optional projection, commitment and factorized entropy losses.

    Values: ``±codebook_scale`` per channel, or for ``spherical`` quantizers (BSQ) the input is
    L2-normalised per codebook and values are ``±codebook_scale / sqrt(codebook_dim)``.

    The auxiliary losses are computed in training mode only (eval returns a zero loss):
    ``entropy_loss_weight * (H_sample - diversity_gamma * H_codebook)
    + commitment_loss_weight * mse(x, quantized)``.
    """

    #: entropy bit patterns of the fp32 math (see :class:`~anytok.quantizers.base.Fp32Buffers`)
    fp32_buffers = ("_entropy_patterns",)

    def __init__(
        self,
        *,
        dim: int | None,
        codebook_dim: int,
        num_codebooks: int = 1,
        spherical: bool = False,
        codebook_scale: float = 1.0,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_group_size: int | None = 8,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        # subclasses check their own argument first (named in the message); this is the net
        check_bits_per_code(
            codebook_dim, name, f"codebook_dim={codebook_dim}", "split the bits over codebooks"
        )
        if num_codebooks < 1:
            raise ValueError(f"{name}: num_codebooks must be >= 1, got {num_codebooks}")
        if entropy_group_size is not None and entropy_group_size < 1:
            raise ValueError(f"{name}: entropy_group_size must be >= 1, got {entropy_group_size}")
        if codebook_scale <= 0 or inv_temperature <= 0:
            raise ValueError(f"{name}: codebook_scale and inv_temperature must be positive")
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        projected = codebook_dim * num_codebooks
        self.dim = projected if dim is None else dim
        self.has_projections = self.dim != projected if has_projections is None else has_projections
        if not self.has_projections and self.dim != projected:
            raise ValueError(
                f"{name}: dim {self.dim} != codebook_dim * num_codebooks = {projected} needs "
                "has_projections=True"
            )
        if self.has_projections:
            self.project_in: nn.Module = nn.Linear(self.dim, projected, bias=projection_has_bias)
            self.project_out: nn.Module = nn.Linear(projected, self.dim, bias=projection_has_bias)
        else:
            self.project_in = self.project_out = nn.Identity()
        self.spherical = spherical
        self.codebook_scale = codebook_scale
        # magnitude of one channel of a code
        self.code_value = codebook_scale / math.sqrt(codebook_dim) if spherical else codebook_scale
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.inv_temperature = inv_temperature
        self.entropy_group_size = min(entropy_group_size or codebook_dim, codebook_dim)
        if self.entropy_group_size > MAX_ENTROPY_GROUP_BITS:
            raise ValueError(
                f"{name}: entropy groups of {self.entropy_group_size} bits need "
                f"2^{self.entropy_group_size} probabilities per vector; set entropy_group_size "
                f"<= {MAX_ENTROPY_GROUP_BITS} (e.g. 8) to factorize the entropy"
            )
        self.codebook_size = 2**codebook_dim
        self.codebook_sizes = (self.codebook_size,) * num_codebooks
        shifts = torch.arange(codebook_dim - 1, -1, -1, dtype=torch.int64)
        self.register_buffer("_shifts", shifts, persistent=False)
        self.register_buffer("_bit_weights", torch.ones_like(shifts) << shifts, persistent=False)
        patterns = bit_patterns(self.entropy_group_size)
        self.register_buffer("_entropy_patterns", patterns, persistent=False)

    # ---------------------------------------------------------------- helpers

    def bits_to_values(self, bits: Tensor) -> Tensor:
        """Bool bits ``(..., codebook_dim)`` to code values ``±code_value`` (fp32)."""
        return torch.where(bits, self.code_value, -self.code_value).float()

    def bits_to_codes(self, bits: Tensor) -> Tensor:
        """Bool bits ``(..., codebook_dim)`` to int64 codes ``(...)`` (channel 0 = top bit)."""
        return (bits.long() * self._bit_weights).sum(dim=-1)

    def codes_to_bits(self, codes: Tensor) -> Tensor:
        """Int codes ``(...)`` to bool bits ``(..., codebook_dim)``."""
        return ((codes.long().unsqueeze(-1) >> self._shifts) & 1).bool()

    def auxiliary_losses(self, x: Tensor, values: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted entropy + commitment loss of fp32 ``x`` ``(..., c, d)`` and its code values."""
        logits = (4 * self.inv_temperature * self.code_value) * x  # per-bit log-odds
        logits = rearrange(logits, "... c d -> (...) c d")
        per_sample, codebook = factorized_entropies(logits, self._entropy_patterns)
        entropy_loss = per_sample - self.diversity_gamma * codebook
        commitment = squared_error_mean(x, values.detach())
        loss = self.entropy_loss_weight * entropy_loss + self.commitment_loss_weight * commitment
        metrics = {
            "entropy/per_sample": per_sample.detach(),
            "entropy/codebook": codebook.detach(),
            "commitment": commitment.detach(),
        }
        return loss, metrics

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (fp32 pre-quantization ``x`` ``(..., c, d)``, values ``(..., c, d)``, codes)."""
        check_last_dim(z, self.dim, type(self).__name__)
        projected = fp32_layer(self.project_in, z.float())
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = rearrange(projected.float(), "... (c d) -> ... c d", c=self.num_codebooks)
            if self.spherical:
                x = F.normalize(x, dim=-1) * self.codebook_scale
            bits = x > 0
            values = self.bits_to_values(bits)
            codes = self.bits_to_codes(bits)
        return x, values, codes

    # ---------------------------------------------------------------- contract

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z``.

        Shapes: ``z`` ``(..., dim)`` -> quantized ``(..., dim)``, codes ``(..., num_codebooks)``
        int64 in ``[0, 2^codebook_dim)``.
        """
        x, values, codes = self._quantize(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized = straight_through(values, x)
            if self.training:
                loss, metrics = self.auxiliary_losses(x, values)
            else:
                loss, metrics = zero_loss(z), {}
        quantized = rearrange(quantized, "... c d -> ... (c d)")
        quantized = fp32_layer(self.project_out, quantized.float())
        metrics.update(level_metrics(codes, self.codebook_sizes, synced=self.training))
        return QuantizerOutput(
            quantized=quantized.to(z.dtype), codes=codes, loss=loss, metrics=metrics
        )

    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., num_codebooks)``."""
        return self._quantize(z)[2]

    def decode(self, codes: Tensor) -> Tensor:
        """Int codes ``(..., num_codebooks)`` -> quantized ``(..., dim)``."""
        codes = checked_codes(codes, self.codebook_sizes, type(self).__name__)
        values = rearrange(self.bits_to_values(self.codes_to_bits(codes)), "... c d -> ... (c d)")
        return fp32_layer(self.project_out, values.float())

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_dim={self.codebook_dim}, "
            f"num_codebooks={self.num_codebooks}, spherical={self.spherical}, "
            f"entropy_group_size={self.entropy_group_size}"
        )


def _bits_of(codebook_size: int, name: str) -> int:
    if codebook_size < 2 or codebook_size & (codebook_size - 1):
        suggestion = 2 ** math.ceil(math.log2(max(codebook_size, 2)))
        raise ValueError(
            f"{name}: codebook_size must be a power of 2 >= 2, got {codebook_size} "
            f"(nearest larger: {suggestion})"
        )
    return codebook_size.bit_length() - 1


@register_quantizer("lfq")
class LFQ(SignQuantizer):
    """Lookup-free quantization (MAGVIT-v2, https://arxiv.org/abs/2310.05737).

    Each of ``log2(codebook_size)`` channels (per codebook) is quantized to ``±codebook_scale``
    by its sign; the code is the bit pattern (channel 0 = most significant bit). An entropy loss
    makes each sample's soft assignment confident and the batch's spread over the codebook;
    it is factorized (see the module docstring), so ``codebook_size=2**32`` is fine.

    Codes: ``(..., num_codebooks)`` int64, each in ``[0, codebook_size)``.

    Args:
        dim: input channels; defaults to ``log2(codebook_size) * num_codebooks``.
        codebook_size: codes per codebook, a power of 2 up to 2^62; defaults to ``2**dim``
            per codebook (as vector-quantize-pytorch: with ``num_codebooks > 1`` the input is
            then projected to ``dim * num_codebooks`` channels).
        num_codebooks: independent codebooks; the projected channels are split between them.
        entropy_loss_weight: weight of ``H_sample - diversity_gamma * H_codebook``.
        commitment_loss_weight: weight of ``mse(x, quantized)``.
        diversity_gamma: weight of the codebook entropy inside the entropy loss.
        inv_temperature: sharpness of the soft assignment used by the entropy loss.
        entropy_group_size: bits per entropy group (``2^g`` sub-codes each); larger groups
            estimate the codebook entropy better at ``2^g / g`` times the memory. Groups never
            exceed one codebook; ``None`` puts all of a codebook's bits in one group (exact, as
            vector-quantize-pytorch; only for small codebooks).
        codebook_scale: magnitude of each code channel.
        has_projections: force / forbid the linear projections (default: ``dim`` differs from
            ``log2(codebook_size) * num_codebooks``).
        projection_has_bias: bias in the projections.
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_group_size: int | None = 8,
        codebook_scale: float = 1.0,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
    ):
        if dim is None and codebook_size is None:
            raise ValueError("LFQ: give dim or codebook_size (or both)")
        if num_codebooks < 1:
            raise ValueError(f"LFQ: num_codebooks must be >= 1, got {num_codebooks}")
        if codebook_size is None:
            # 2**dim codes per codebook, as vector-quantize-pytorch (projected to
            # dim * num_codebooks channels when num_codebooks > 1)
            assert dim is not None
            codebook_dim = dim
            check_bits_per_code(
                codebook_dim,
                "LFQ",
                f"dim={dim} without codebook_size (2**dim codes per codebook)",
                "give codebook_size (codes per codebook) and split the bits over num_codebooks",
            )
        else:
            codebook_dim = _bits_of(codebook_size, "LFQ")
            check_bits_per_code(
                codebook_dim,
                "LFQ",
                f"codebook_size=2**{codebook_dim}",
                "split the bits over num_codebooks (or use BinaryQuantizer for very large "
                "codebooks)",
            )
        super().__init__(
            dim=dim,
            codebook_dim=codebook_dim,
            num_codebooks=num_codebooks,
            spherical=False,
            codebook_scale=codebook_scale,
            entropy_loss_weight=entropy_loss_weight,
            commitment_loss_weight=commitment_loss_weight,
            diversity_gamma=diversity_gamma,
            inv_temperature=inv_temperature,
            entropy_group_size=entropy_group_size,
            has_projections=has_projections,
            projection_has_bias=projection_has_bias,
        )


@register_quantizer("bsq")
class BSQ(SignQuantizer):
    """Binary spherical quantization (https://arxiv.org/abs/2406.07548).

    The input is projected to ``codebook_dim`` channels (per codebook), L2-normalised onto the
    unit sphere and sign-quantized to ``±1/sqrt(codebook_dim)`` — a code on the sphere, so the
    quantization error is bounded. The entropy loss uses the paper's factorized approximation
    (groups of ``entropy_group_size`` bits); commitment is ``mse(u, û)`` on the sphere.

    Codes: ``(..., num_codebooks)`` int64, each in ``[0, 2^codebook_dim)`` (channel 0 = most
    significant bit). Same losses and arguments as :class:`LFQ`, with ``codebook_dim`` (bits
    per codebook) in place of ``codebook_size``.
    """

    def __init__(
        self,
        *,
        dim: int,
        codebook_dim: int = 18,
        num_codebooks: int = 1,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_group_size: int | None = 9,
        codebook_scale: float = 1.0,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
    ):
        check_bits_per_code(
            codebook_dim,
            "BSQ",
            f"codebook_dim={codebook_dim}",
            "split the bits over num_codebooks (or use BinaryQuantizer for very large codebooks)",
        )
        super().__init__(
            dim=dim,
            codebook_dim=codebook_dim,
            num_codebooks=num_codebooks,
            spherical=True,
            codebook_scale=codebook_scale,
            entropy_loss_weight=entropy_loss_weight,
            commitment_loss_weight=commitment_loss_weight,
            diversity_gamma=diversity_gamma,
            inv_temperature=inv_temperature,
            entropy_group_size=entropy_group_size,
            has_projections=has_projections,
            projection_has_bias=projection_has_bias,
        )


@register_quantizer("group_lfq", "gfq")
class GroupLFQ(SignQuantizer):
    """Group-wise lookup-free quantization (WeTok, https://arxiv.org/abs/2508.05599).

    ``codebook_dim`` bits are split into ``num_groups`` groups of ``codebook_dim / num_groups``
    bits; each group is an LFQ with its own code and its own exact entropy over its
    ``2^(codebook_dim / num_groups)`` sub-codes, so the cost grows linearly in the number of
    groups while the joint codebook is ``2^codebook_dim``.

    Codes: ``(..., num_groups)`` int64, each in ``[0, 2^(codebook_dim / num_groups))``.

    Args:
        dim: input channels (projected to ``codebook_dim`` when different).
        codebook_dim: total bits.
        num_groups: groups; must divide ``codebook_dim``.
        entropy_group_size: ``None`` (default) = exact per group; smaller values factorize
            further inside a group.
        The remaining arguments are :class:`LFQ`'s.
    """

    def __init__(
        self,
        *,
        dim: int,
        codebook_dim: int = 32,
        num_groups: int = 4,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_group_size: int | None = None,
        codebook_scale: float = 1.0,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
    ):
        if num_groups < 1 or codebook_dim % num_groups:
            raise ValueError(
                f"GroupLFQ: num_groups ({num_groups}) must divide codebook_dim ({codebook_dim})"
            )
        check_bits_per_code(
            codebook_dim // num_groups,
            "GroupLFQ",
            f"codebook_dim={codebook_dim} in num_groups={num_groups}",
            "use more num_groups",
        )
        super().__init__(
            dim=dim,
            codebook_dim=codebook_dim // num_groups,
            num_codebooks=num_groups,
            spherical=False,
            codebook_scale=codebook_scale,
            entropy_loss_weight=entropy_loss_weight,
            commitment_loss_weight=commitment_loss_weight,
            diversity_gamma=diversity_gamma,
            inv_temperature=inv_temperature,
            entropy_group_size=entropy_group_size,
            has_projections=has_projections,
            projection_has_bias=projection_has_bias,
        )
        self.num_groups = num_groups
