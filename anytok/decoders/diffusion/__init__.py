"""Diffusion / rectified-flow decoders conditioned on tokens (see docs/diffusion.md).

* :class:`FlowDecoder`: a DiT-style denoiser + flow-matching (or DDPM) objective.
* :data:`SCHEDULERS` / :func:`make_scheduler`: diffusers samplers by name.
* :class:`MelVocoder`: a Vocos-style mel -> waveform stage for speech decoders.
"""

from anytok.decoders.diffusion.flow import (
    CONDITIONINGS,
    FlowDecoder,
    FlowLossOutput,
    SamplingDefaults,
)
from anytok.decoders.diffusion.schedulers import SCHEDULERS, checked_scheduler, make_scheduler

__all__ = [
    "CONDITIONINGS",
    "SCHEDULERS",
    "FlowDecoder",
    "FlowLossOutput",
    "SamplingDefaults",
    "checked_scheduler",
    "make_scheduler",
]
