"""What every discriminator returns, and the combination of several."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class DiscriminatorOutput:
    """Logits and feature maps of one or more sub-discriminators.

    Attributes:
        logits: one logit map per sub-discriminator (any shape; e.g. ``(b, 1, frames, bins)``
            for an STFT scale or ``(b, 1, h', w')`` for a PatchGAN).
        features: per sub-discriminator, its hidden activations in order, not including the
            logit map (used by the feature-matching loss).
    """

    logits: list[Tensor] = field(default_factory=list)
    features: list[list[Tensor]] = field(default_factory=list)

    def append(self, logits: Tensor, features: list[Tensor]) -> None:
        self.logits.append(logits)
        self.features.append(features)

    def extend(self, other: DiscriminatorOutput) -> None:
        self.logits.extend(other.logits)
        self.features.extend(other.features)


class CombinedDiscriminator(nn.Module):
    """Several discriminators over the same input, their outputs concatenated (e.g. MPD and
    MS-STFT for audio, as HiFi-GAN-style codecs combine them)."""

    def __init__(self, discriminators: Iterable[nn.Module]):
        super().__init__()
        self.discriminators = nn.ModuleList(discriminators)
        if not len(self.discriminators):
            raise ValueError("CombinedDiscriminator needs at least one discriminator")

    def forward(self, media: Tensor) -> DiscriminatorOutput:
        out = DiscriminatorOutput()
        for disc in self.discriminators:
            out.extend(disc(media))
        return out


__all__ = ["CombinedDiscriminator", "DiscriminatorOutput"]
