"""Samplers for the diffusion decoders: diffusers' schedulers, by name.

Samplers are separate, swappable components (diffusers' design): the denoiser predicts a
velocity (rectified flow) or noise / v (DDPM); a scheduler turns predictions into the next
sample. Each entry of :data:`SCHEDULERS` builds a fresh scheduler for one call, so sampling
never shares state between calls.

Time convention everywhere in anytok: ``t`` in [0, 1] is the noise level, ``t = 1`` pure
noise. diffusers' flow-matching schedulers use ``timestep = sigma * num_train_timesteps``
with the same orientation: under the flow objective the denoiser sees the scheduler's sigma
at each step (``timestep / num_train_timesteps``, up to the integer rounding some schedulers
apply), under DDPM objectives ``timestep / num_train_timesteps``. Use :func:`set_timesteps`
rather than ``scheduler.set_timesteps``: it gives the Euler sampler a grid on which every
step does work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

NUM_TRAIN_TIMESTEPS = 1000
OBJECTIVES = ("flow", "epsilon", "v")

# DDPM noise schedule of the epsilon / v objectives (Stable Diffusion's scaled-linear betas).
DDPM_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def _flow(name: str, shift: float) -> Any:
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    if name == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    common = dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
    )
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common)
    return UniPCMultistepScheduler(**common)


def _ddpm(name: str, objective: str) -> Any:
    prediction = "epsilon" if objective == "epsilon" else "v_prediction"
    if name == "ddim":
        # "trailing" spacing starts at the last training timestep (999) for any step count;
        # DDIMScheduler's default "leading" one starts at 1000 - 1000 / steps, so steps=1 ran
        # the model once at t=0 on pure noise and returned noise (Lin et al. 2024,
        # https://arxiv.org/abs/2305.08891, section 3.3).
        return DDIMScheduler(
            **DDPM_SCHEDULE,
            prediction_type=prediction,
            clip_sample=False,
            set_alpha_to_one=True,  # the last step lands on x0, not on t = 0's noise
            timestep_spacing="trailing",
        )
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            **DDPM_SCHEDULE, prediction_type=prediction, solver_order=2
        )
    return UniPCMultistepScheduler(**DDPM_SCHEDULE, prediction_type=prediction, solver_order=2)


#: ``name -> (objectives it serves, builder(objective, shift))``.
SCHEDULERS: dict[str, tuple[tuple[str, ...], Callable[[str, float], Any]]] = {
    "euler": (("flow",), lambda objective, shift: _flow("euler", shift)),
    "heun": (("flow",), lambda objective, shift: _flow("heun", shift)),
    "dpm++": (OBJECTIVES, lambda o, s: _flow("dpm++", s) if o == "flow" else _ddpm("dpm++", o)),
    "unipc": (OBJECTIVES, lambda o, s: _flow("unipc", s) if o == "flow" else _ddpm("unipc", o)),
    "ddim": (("epsilon", "v"), lambda objective, shift: _ddpm("ddim", objective)),
}


def make_scheduler(name: str, objective: str = "flow", shift: float = 1.0) -> Any:
    """A fresh diffusers scheduler ``name`` for ``objective`` (``flow``: time ``shift`` as
    SD3, https://arxiv.org/abs/2403.03206).

    Raises:
        ValueError: unknown name, or a scheduler that does not serve this objective.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    objectives, build = SCHEDULERS[name]
    if objective not in objectives:
        usable = sorted(k for k, (objs, _) in SCHEDULERS.items() if objective in objs)
        raise ValueError(
            f"scheduler {name!r} does not sample the {objective!r} objective; use one of {usable}"
        )
    return build(objective, float(shift))


#: the sampler a diffusion tokenizer decodes with unless told otherwise, per objective
DEFAULT_SCHEDULER = {"flow": "euler", "epsilon": "ddim", "v": "ddim"}


def checked_scheduler(owner: str, objective: str, scheduler: str | None, shift: float) -> str:
    """``scheduler``, or ``objective``'s :data:`DEFAULT_SCHEDULER` when None, once
    :func:`make_scheduler` accepts it: a tokenizer refuses a sampler at construction rather
    than at its first ``decode``. Errors start with ``owner`` (``"FlexTok: scheduler"``)."""
    name = DEFAULT_SCHEDULER.get(objective, "euler") if scheduler is None else scheduler
    if objective in OBJECTIVES:  # else the decoder names the unknown objective
        try:
            make_scheduler(name, objective, shift)
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
    return name


def set_timesteps(scheduler: Any, steps: int, device: torch.device | str | None = None) -> None:
    """``scheduler.set_timesteps(steps)``, with every one of the ``steps`` model calls doing
    work.

    diffusers' ``FlowMatchEulerDiscreteScheduler`` spaces ``steps`` sigmas from 1 down to
    ``1 / num_train_timesteps`` and then appends 0, so its last step only moves from 0.001 to 0:
    ``steps=2`` equals ``steps=1`` to 0.1 %, and every count wastes one model call. The Euler
    sampler takes the uniform grid ``1, 1 - 1/steps, ..., 1/steps`` (then 0; diffusers' Flux
    pipelines pass the same sigmas), time-shifted by the scheduler as before. Heun keeps
    diffusers' grid: there a tiny last step is the right final Euler step after ``steps - 1``
    second-order ones. DPM-Solver++ / UniPC / DDIM already use every call.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigmas = np.linspace(1.0, 1.0 / steps, steps)
        scheduler.set_timesteps(sigmas=sigmas.tolist(), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


__all__ = [
    "DDPM_SCHEDULE",
    "DEFAULT_SCHEDULER",
    "NUM_TRAIN_TIMESTEPS",
    "OBJECTIVES",
    "SCHEDULERS",
    "checked_scheduler",
    "make_scheduler",
    "set_timesteps",
]
