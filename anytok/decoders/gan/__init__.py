"""GAN discriminators and adversarial losses, buildable by name from recipes.

========================  ==========================================================  =======
name                      discriminator                                               input
========================  ==========================================================  =======
``mpd``                   :class:`MultiPeriodDiscriminator` (HiFi-GAN)                 audio
``msstft``                :class:`MultiScaleSTFTDiscriminator` (EnCodec)               audio
``mrd``                   :class:`MultiBandSTFTDiscriminator` (DAC multi-band STFT)    audio
``patchgan``              :class:`PatchGAN` (pix2pix / VQGAN)                          image
``patchgan3d``            :class:`PatchGAN3D`                                          video
========================  ==========================================================  =======

A recipe lists one or more ``{"name": ..., **kwargs}`` entries; :func:`build_discriminator`
returns one module whose output concatenates theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from anytok.decoders.gan.audio import (
    BandSTFTDiscriminator,
    MultiBandSTFTDiscriminator,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
    PeriodDiscriminator,
    STFTDiscriminator,
)
from anytok.decoders.gan.base import CombinedDiscriminator, DiscriminatorOutput
from anytok.decoders.gan.image import PatchGAN, PatchGAN3D
from anytok.decoders.gan.losses import (
    FEATURE_MATCHING_NORMS,
    GAN_LOSSES,
    GAN_REDUCTIONS,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)

DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "mpd": MultiPeriodDiscriminator,
    "msstft": MultiScaleSTFTDiscriminator,
    "mrd": MultiBandSTFTDiscriminator,
    "patchgan": PatchGAN,
    "patchgan3d": PatchGAN3D,
}


def build_discriminator(
    specs: Mapping[str, Any] | Sequence[Mapping[str, Any]], channels: int
) -> nn.Module:
    """Build one discriminator, or a :class:`CombinedDiscriminator` of several.

    Args:
        specs: ``{"name": ..., **kwargs}`` or a list of them (see the table above).
        channels: channels of the media (audio channels, 3 for images and video); a spec may
            not set it itself.

    Raises:
        ValueError: an unknown name, a spec without a name, or an empty list.
    """
    if isinstance(specs, Mapping):
        specs = [specs]
    if not specs:
        raise ValueError("build_discriminator: no discriminator given")
    built = []
    for spec in specs:
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if name not in DISCRIMINATORS:
            raise ValueError(
                f"unknown discriminator {name!r} in {dict(spec)!r}; "
                f"known: {', '.join(sorted(DISCRIMINATORS))}"
            )
        if "channels" in kwargs:
            raise ValueError(
                f"discriminator {name!r}: 'channels' comes from the model, do not set it"
            )
        built.append(DISCRIMINATORS[name](channels=channels, **kwargs))
    return built[0] if len(built) == 1 else CombinedDiscriminator(built)


__all__ = [
    "DISCRIMINATORS",
    "FEATURE_MATCHING_NORMS",
    "GAN_LOSSES",
    "GAN_REDUCTIONS",
    "BandSTFTDiscriminator",
    "CombinedDiscriminator",
    "DiscriminatorOutput",
    "MultiBandSTFTDiscriminator",
    "MultiPeriodDiscriminator",
    "MultiScaleSTFTDiscriminator",
    "PatchGAN",
    "PatchGAN3D",
    "PeriodDiscriminator",
    "STFTDiscriminator",
    "build_discriminator",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
]
