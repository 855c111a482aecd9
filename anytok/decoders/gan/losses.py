"""Adversarial and feature-matching losses over :class:`DiscriminatorOutput` lists.

Every loss takes one tensor (or list of feature maps) per sub-discriminator. By default
(``reduction="mean"``) it averages over sub-discriminators (and feature maps), so adding a
discriminator does not change the loss scale (EnCodec, https://arxiv.org/abs/2210.13438,
section 3.4); ``reduction="sum"`` sums them as HiFi-GAN and DAC do. Feature matching
divides each map's L1 by the real map's mean magnitude (``norm="relative"``, EnCodec) or
not (``norm="none"``, HiFi-GAN, DAC).

Kinds:

* ``"hinge"``: ``D: relu(1 - D(x)) + relu(1 + D(G(z)))``, ``G: relu(1 - D(G(z)))``
  (the bounded generator form of the EnCodec paper and Vocos: no gradient once a fake
  logit passes 1).
* ``"hinge_nonsat"``: the same discriminator loss, ``G: -D(G(z))`` (the unbounded form of
  MelGAN's code, AudioCraft's ``hinge_loss`` and taming-transformers' VQGAN ``g_loss``).
* ``"least_squares"``: ``D: (1 - D(x))^2 + D(G(z))^2``, ``G: (1 - D(G(z)))^2`` (LSGAN,
  https://arxiv.org/abs/1611.04076; HiFi-GAN, DAC).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

GAN_LOSSES = ("hinge", "hinge_nonsat", "least_squares")
GAN_REDUCTIONS = ("mean", "sum")
FEATURE_MATCHING_NORMS = ("relative", "none")


def _check_kind(kind: str, reduction: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {GAN_LOSSES}")
    _check_reduction(reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in GAN_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {GAN_REDUCTIONS}")


def reduce_parts(total: Tensor, parts: float, reduction: str) -> Tensor:
    """The sum ``total`` of a loss's ``parts`` (sub-discriminators, feature maps, scales)
    as their mean (``"mean"``) or unchanged (``"sum"``)."""
    return total / max(parts, 1) if reduction == "mean" else total


def discriminator_loss(
    real: Sequence[Tensor], fake: Sequence[Tensor], kind: str = "hinge", reduction: str = "mean"
) -> Tensor:
    """Loss of the discriminator: real logits pushed up, fake logits pushed down.

    Args:
        real: logits on real media, one tensor (any shape) per sub-discriminator.
        fake: logits on reconstructions (detached from the generator), same structure.
        kind: one of :data:`GAN_LOSSES` (``"hinge_nonsat"`` trains the discriminator as
            ``"hinge"``).
        reduction: ``"mean"`` or ``"sum"`` over sub-discriminators.

    Returns:
        Scalar: mean (or sum) over sub-discriminators of each one's mean loss.
    """
    _check_kind(kind, reduction)
    if len(real) != len(fake) or not real:
        raise ValueError(
            f"expected matching non-empty logit lists, got {len(real)} and {len(fake)}"
        )
    total = real[0].new_zeros((), dtype=torch.float32)
    for r, f in zip(real, fake):
        r, f = r.float(), f.float()
        if kind in ("hinge", "hinge_nonsat"):
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        else:
            total = total + (1 - r).pow(2).mean() + f.pow(2).mean()
    return reduce_parts(total, len(real), reduction)


def generator_loss(fake: Sequence[Tensor], kind: str = "hinge", reduction: str = "mean") -> Tensor:
    """Adversarial loss of the generator: fake logits pushed toward "real".

    Args:
        fake: logits on reconstructions (with gradient to the generator), one per
            sub-discriminator.
        kind: one of :data:`GAN_LOSSES` (see the module docstring).
        reduction: ``"mean"`` or ``"sum"`` over sub-discriminators.

    Returns:
        Scalar: mean (or sum) over sub-discriminators of each one's mean loss.
    """
    _check_kind(kind, reduction)
    if not fake:
        raise ValueError("generator_loss: no logits")
    total = fake[0].new_zeros((), dtype=torch.float32)
    for f in fake:
        f = f.float()
        if kind == "hinge":
            total = total + F.relu(1 - f).mean()
        elif kind == "hinge_nonsat":
            total = total - f.mean()
        else:
            total = total + (1 - f).pow(2).mean()
    return reduce_parts(total, len(fake), reduction)


def feature_matching_loss(
    real: Sequence[Sequence[Tensor]],
    fake: Sequence[Sequence[Tensor]],
    reduction: str = "mean",
    norm: str = "relative",
) -> Tensor:
    """L1 between the discriminator's feature maps on real and reconstructed media.

    With ``norm="relative"`` each layer's L1 is divided by the mean magnitude of the real
    features, so layers of very different scales weigh alike (EnCodec's relative feature
    loss); ``norm="none"`` keeps the plain L1 (HiFi-GAN, DAC). The result is the mean (or,
    with ``reduction="sum"``, the sum) over layers and sub-discriminators.

    Args:
        real: per sub-discriminator, its feature maps on real media (treated as constants).
        fake: the same on reconstructions.
        reduction: ``"mean"`` or ``"sum"``.
        norm: ``"relative"`` or ``"none"``.
    """
    _check_reduction(reduction)
    if norm not in FEATURE_MATCHING_NORMS:
        raise ValueError(
            f"unknown feature-matching norm {norm!r}; choose one of {FEATURE_MATCHING_NORMS}"
        )
    if len(real) != len(fake) or not real:
        raise ValueError(
            f"expected matching non-empty feature lists, got {len(real)} and {len(fake)}"
        )
    total = fake[0][0].new_zeros((), dtype=torch.float32)
    count = 0
    for real_maps, fake_maps in zip(real, fake):
        for r, f in zip(real_maps, fake_maps):
            r = r.detach().float()
            distance = F.l1_loss(f.float(), r)
            if norm == "relative":
                distance = distance / r.abs().mean().clamp_min(1e-8)
            total = total + distance
            count += 1
    return reduce_parts(total, count, reduction)


__all__ = [
    "FEATURE_MATCHING_NORMS",
    "GAN_LOSSES",
    "GAN_REDUCTIONS",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
    "reduce_parts",
]
