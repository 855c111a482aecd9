"""BinaryQuantizer: a 2^128 (or larger) binary codebook stored as groups of bits.

UniWeTok (Zhuang et al. 2026, "UniWeTok: An Unified Binary Tokenizer with Codebook Size 2^128
for Unified Multimodal Large Language Model", https://arxiv.org/abs/2602.14178) quantizes each
latent vector to 128 sign bits, building on WeTok's group-wise lookup-free quantization
(https://arxiv.org/abs/2508.05599). A 128-bit index fits no integer type, so the bits are
stored as ``bits / bits_per_code`` smaller codes — e.g. 8 codes of 16 bits (65536 values) —
which is also how a language model consumes them (one embedding table per level, or a flat
vocabulary with per-level offsets).
"""

from __future__ import annotations

from anytok.quantizers.base import register_quantizer
from anytok.quantizers.lfq import MAX_BITS_PER_CODE, SignQuantizer, check_bits_per_code


@register_quantizer("binary")
class BinaryQuantizer(SignQuantizer):
    """Sign quantization of ``bits`` channels into ``bits / bits_per_code`` codes.

    Each projected channel becomes one bit (``x > 0``) with value ``±codebook_scale`` and a
    straight-through gradient. The joint codebook has ``2^bits`` entries; the entropy loss is
    factorized over groups of ``entropy_group_size`` bits (see :mod:`anytok.quantizers.lfq`), so
    memory stays ``O(N · bits · 2^g / g)``.

    Codes: ``(..., bits / bits_per_code)`` int64, level ``i`` holding bits
    ``[i * bits_per_code, (i + 1) * bits_per_code)`` of the projected vector, its first channel
    the most significant bit; ``codebook_sizes = (2**bits_per_code,) * (bits / bits_per_code)``.

    Args:
        dim: input channels (projected to ``bits`` when different).
        bits: total bits per vector (128 in UniWeTok).
        bits_per_code: bits stored per code level; must divide ``bits`` and be at most 62.
        entropy_group_size: bits per entropy group (``2^g`` sub-codes each); at most
            ``bits_per_code``.
        entropy_loss_weight, commitment_loss_weight, diversity_gamma, inv_temperature,
        codebook_scale, has_projections, projection_has_bias: as :class:`~anytok.quantizers.LFQ`.
    """

    def __init__(
        self,
        *,
        dim: int,
        bits: int = 128,
        bits_per_code: int = 16,
        entropy_group_size: int | None = 8,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        codebook_scale: float = 1.0,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
    ):
        if bits < 1 or bits_per_code < 1 or bits % bits_per_code:
            raise ValueError(
                f"BinaryQuantizer: bits_per_code ({bits_per_code}) must divide bits ({bits})"
            )
        check_bits_per_code(
            bits_per_code,
            "BinaryQuantizer",
            f"bits_per_code={bits_per_code}",
            f"use a smaller bits_per_code (at most {MAX_BITS_PER_CODE}) that divides "
            f"bits={bits}, e.g. 16: more code levels of fewer bits",
        )
        super().__init__(
            dim=dim,
            codebook_dim=bits_per_code,
            num_codebooks=bits // bits_per_code,
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
        self.bits = bits
        self.bits_per_code = bits_per_code
