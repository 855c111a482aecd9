"""A DiT-style flow-matching decoder: denoises a target sequence conditioned on tokens.

One module serves every diffusion de-tokenizer in anytok: image patches (FlexTok,
https://arxiv.org/abs/2502.13967), mel frames (TaDiCodec, https://arxiv.org/abs/2508.16790),
spatio-temporal video patches (Divot, https://arxiv.org/abs/2412.04432).

* **Denoiser**: a transformer (:class:`anytok.nn.transformer.Transformer`) over the noisy
  target, adaLN-Zero conditioned on the diffusion time (+ class label), with fixed
  sinusoidal positions over the target's grid, so any length or grid size works.
* **Condition**: token embeddings ``(b, m, cond_dim)`` through cross-attention
  (``conditioning="cross"``) or as in-context prefix tokens (``"in_context"``), with a key
  mask for variable-length conditions (prefixes of 1D tokens, padded audio). An optional
  extra condition sequence (e.g. text embeddings) is always cross-attended.
* **Objectives**: rectified flow (``"flow"``: ``x_t = (1 - t) x_0 + t ε``, the network
  predicts the velocity ``ε - x_0``; Liu et al. 2022, https://arxiv.org/abs/2209.03003), or
  DDPM with epsilon / v prediction (``"epsilon"`` / ``"v"``).
* **Classifier-free guidance** (https://arxiv.org/abs/2207.12598): in training the condition
  is replaced by a learned null embedding with probability ``cond_dropout``;
  ``sample(guidance_scale=s)`` mixes conditional and unconditional predictions.
* **Samplers**: diffusers schedulers by name (:mod:`anytok.decoders.diffusion.schedulers`).
* **REPA** (representation alignment, https://arxiv.org/abs/2410.06940): optional alignment of
  a block's hidden states to a frozen local model's features of the clean target.

Axis legend: ``b`` batch, ``n`` target positions, ``m`` condition positions, ``d`` width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from anytok.decoders.diffusion.schedulers import (
    DDPM_SCHEDULE,
    NUM_TRAIN_TIMESTEPS,
    OBJECTIVES,
    make_scheduler,
    set_timesteps,
)
from anytok.nn.transformer import (
    Transformer,
    init_weights,
    sincos_embedding,
    sincos_grid_embedding,
    timestep_features,
)

CONDITIONINGS = ("cross", "in_context")
TIME_SAMPLING = ("logit_normal", "uniform")


@dataclass
class FlowLossOutput:
    """What :meth:`FlowDecoder.loss` returns.

    Attributes:
        loss: scalar loss (the REPA term included when configured, in training only).
        denoised: ``(b, n, target_dim)`` one-step estimate of the clean target at the sampled
            noise level (for logged reconstructions; not a sample).
        metrics: detached scalars (``diffusion/repa`` ...).
    """

    loss: Tensor
    denoised: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class FlowDecoder(nn.Module):
    """Denoise ``(b, n, target_dim)`` targets conditioned on ``(b, m, cond_dim)`` tokens.

    Args:
        target_dim: channels of one target position (patch pixels, mel bins ...).
        cond_dim: channels of the condition tokens.
        dim, depth, heads, mlp_ratio: transformer size.
        conditioning: ``"cross"`` (cross-attention) or ``"in_context"`` (prefix tokens).
        extra_cond_dim: channels of an optional extra condition sequence (text embeddings),
            cross-attended.
        num_classes: optional class-label condition (adds to the time embedding).
        cond_dropout: probability of dropping the condition (and, separately, the extra
            condition and the label) in training, for classifier-free guidance.
        objective: ``"flow"`` (velocity), ``"epsilon"`` or ``"v"`` (DDPM).
        time_shift: SD3 time shift ``t' = s t / (1 + (s - 1) t)``; > 1 spends more of
            training and sampling at high noise (large targets want it). Flow only: the
            DDPM objectives train on uniform integer timesteps and sample on the scheduler's.
        time_sampling: ``"logit_normal"`` (SD3) or ``"uniform"`` training times; flow only
            (None: logit-normal).
        repa: ``{"teacher": path, "weight": w, "layer": k}`` for REPA on block ``k``
            (optional ``image_size``: the teacher's input side, default its processor's).
        gradient_checkpointing: recompute block activations in backward.
    """

    def __init__(
        self,
        target_dim: int,
        cond_dim: int,
        *,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        conditioning: str = "cross",
        extra_cond_dim: int | None = None,
        num_classes: int | None = None,
        cond_dropout: float = 0.1,
        objective: str = "flow",
        time_shift: float = 1.0,
        time_sampling: str | None = None,
        repa: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective != "flow" and (time_shift != 1.0 or time_sampling is not None):
            option = "time_shift" if time_shift != 1.0 else "time_sampling"
            raise ValueError(
                f"{option} applies to objective='flow' only; objective={objective!r} trains on "
                "uniform DDPM timesteps (leave time_shift=1.0 and time_sampling unset)"
            )
        time_sampling = "logit_normal" if time_sampling is None else time_sampling
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        if time_shift <= 0:
            raise ValueError(f"time_shift must be > 0, got {time_shift}")
        self.target_dim, self.cond_dim, self.dim = target_dim, cond_dim, dim
        self.conditioning = conditioning
        self.objective = objective
        self.time_shift = float(time_shift)
        self.time_sampling = time_sampling
        self.cond_dropout = cond_dropout
        self.time_features = 256
        self.time_embed = nn.Sequential(
            nn.Linear(self.time_features, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.in_proj = nn.Linear(target_dim, dim)
        self.cond_proj = nn.Linear(cond_dim, dim)
        self.null_cond = nn.Parameter(torch.zeros(dim))
        self.extra_proj = nn.Linear(extra_cond_dim, dim) if extra_cond_dim else None
        self.null_extra = nn.Parameter(torch.zeros(dim)) if extra_cond_dim else None
        # Index num_classes is the "no label" class used for guidance.
        self.class_embed = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.num_classes = num_classes
        has_context = conditioning == "cross" or extra_cond_dim is not None
        self.transformer = Transformer(
            dim,
            depth,
            heads,
            mlp_ratio,
            context_dim=dim if has_context else None,
            cond_dim=dim,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.out_proj = nn.Linear(dim, target_dim)
        # ViT init everywhere (adaLN-Zero gates stay zero). The output layer is not zeroed as
        # in DiT: a small random one lets the very first step send gradient through the
        # cross-attention into the token embeddings, so encoders train from step one.
        self.apply(init_weights)
        nn.init.normal_(self.null_cond, std=0.02)
        if self.null_extra is not None:
            nn.init.normal_(self.null_extra, std=0.02)
        self.repa_layer: int | None = None
        self.repa: nn.Module | None = None
        if repa:
            from anytok.regularizers import SemanticRegularizer

            self.repa_layer = int(repa.get("layer", depth // 3))
            if not 0 <= self.repa_layer < depth:
                raise ValueError(f"repa.layer must be in [0, {depth}), got {self.repa_layer}")
            self.repa = SemanticRegularizer(
                dim,
                repa["teacher"],
                weight=float(repa.get("weight", 0.5)),
                modality=repa.get("modality", "image"),
                image_size=repa.get("image_size"),
            )
        alphas = _ddpm_alphas_cumprod()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    # ------------------------------------------------------------------ the network

    def _conditions(
        self,
        cond: Tensor,
        cond_mask: Tensor | None,
        extra: Tensor | None,
        extra_mask: Tensor | None,
        labels: Tensor | None,
        drop_cond: Tensor | None,
        drop_extra: Tensor | None,
        drop_label: Tensor | None,
        cond_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """Project conditions; dropped items (bool ``(b,)``) get the null embeddings; condition
        tokens get a sinusoidal embedding of ``cond_positions`` (in-context: ``0 .. m-1`` by
        default). Returns ``(cond_tokens, cond_mask, extra_tokens, extra_mask, label)``."""
        if cond.ndim != 3 or cond.shape[-1] != self.cond_dim:
            raise ValueError(
                f"cond must be (batch, positions, {self.cond_dim}), got {tuple(cond.shape)}"
            )
        # Quantizers hand over fp32 codes: cast to the weights (a bf16 decoder outside autocast).
        tokens = self.cond_proj(cond.to(self.cond_proj.weight.dtype))
        if drop_cond is not None:
            tokens = torch.where(drop_cond[:, None, None], self.null_cond.to(tokens.dtype), tokens)
            # A dropped condition is one visible null token, however long the (padded)
            # sequence: the unconditional branch must not depend on the batch's padding.
            cond_mask = _drop_mask(cond_mask, drop_cond, tokens.shape[1])
        if cond_positions is None and self.conditioning == "in_context":
            cond_positions = torch.arange(tokens.shape[1], device=tokens.device)
        if cond_positions is not None:
            if cond_positions.shape != (tokens.shape[1],):
                raise ValueError(
                    f"cond_positions must be ({tokens.shape[1]},), got {tuple(cond_positions.shape)}"
                )
            tokens = tokens + sincos_embedding(cond_positions, self.dim).to(tokens.dtype)
        extra_tokens = None
        if extra is None and self.null_extra is not None and self.conditioning == "in_context":
            # The only cross-attended sequence: absent text is the null text (as when dropped).
            extra_tokens = self.null_extra.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        if extra is not None:
            if self.extra_proj is None or self.null_extra is None:
                raise ValueError("this decoder was built without extra_cond_dim: pass no extra")
            extra_tokens = self.extra_proj(extra.to(self.extra_proj.weight.dtype))
            if drop_extra is not None:
                null = self.null_extra.to(extra_tokens.dtype)
                extra_tokens = torch.where(drop_extra[:, None, None], null, extra_tokens)
                extra_mask = _drop_mask(extra_mask, drop_extra, extra_tokens.shape[1])
        label = None
        if labels is not None:
            if self.class_embed is None or self.num_classes is None:
                raise ValueError("this decoder was built without num_classes: pass no labels")
            if drop_label is not None:
                labels = torch.where(drop_label, torch.full_like(labels, self.num_classes), labels)
            label = self.class_embed(labels)
        return tokens, cond_mask, extra_tokens, extra_mask, label

    def velocity(
        self,
        x: Tensor,
        t: Tensor,
        conditions: tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None],
        grid: Sequence[int],
        return_hidden: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Network output (velocity, noise or v) ``(b, n, target_dim)`` for noisy ``x`` at
        times ``t (b,)`` in [0, 1] under projected ``conditions`` (:meth:`_conditions`)."""
        tokens, cond_mask, extra_tokens, extra_mask, label = conditions
        b, n, _ = x.shape
        h = self.in_proj(x) + sincos_grid_embedding(grid, self.dim, x.device).to(x.dtype)
        time = self.time_embed(timestep_features(t, self.time_features).to(h.dtype))
        if label is not None:
            time = time + label
        context_parts, mask_parts = [], []
        attn_mask = None
        prefix = 0
        if self.conditioning == "cross":
            context_parts.append(tokens)
            mask_parts.append(cond_mask)
        else:
            m = tokens.shape[1]
            h = torch.cat([tokens, h], dim=1)
            prefix = m
            if cond_mask is not None:
                ones = torch.ones(b, n, dtype=torch.bool, device=x.device)
                attn_mask = torch.cat([cond_mask, ones], dim=1)
        if extra_tokens is not None:
            context_parts.append(extra_tokens)
            mask_parts.append(extra_mask)
        context = context_mask = None
        if context_parts:
            context = torch.cat(context_parts, dim=1)
            if any(mk is not None for mk in mask_parts):
                context_mask = torch.cat(
                    [
                        mk
                        if mk is not None
                        else torch.ones(part.shape[:2], dtype=torch.bool, device=x.device)
                        for part, mk in zip(context_parts, mask_parts)
                    ],
                    dim=1,
                )
        wanted = [self.repa_layer] if return_hidden and self.repa_layer is not None else []
        out = self.transformer(
            h,
            context=context,
            context_mask=context_mask,
            cond=time,
            attn_mask=attn_mask,
            return_hidden=wanted,
        )
        hidden = None
        if wanted:
            out, (hidden,) = out  # type: ignore[misc]
            hidden = hidden[:, prefix:]
        prediction = self.out_proj(out[:, prefix:])  # type: ignore[index]
        return (prediction, hidden) if return_hidden else prediction  # type: ignore[return-value]

    # ------------------------------------------------------------------ training

    def _train_times(self, batch: int, device: torch.device) -> Tensor:
        if self.time_sampling == "logit_normal":
            t = torch.sigmoid(torch.randn(batch, device=device))
        else:
            t = torch.rand(batch, device=device)
        s = self.time_shift
        return s * t / (1 + (s - 1) * t)

    def loss(
        self,
        target: Tensor,
        cond: Tensor,
        *,
        cond_mask: Tensor | None = None,
        cond_positions: Tensor | None = None,
        grid: Sequence[int] | None = None,
        target_mask: Tensor | None = None,
        extra: Tensor | None = None,
        extra_mask: Tensor | None = None,
        labels: Tensor | None = None,
        repa_input: Tensor | None = None,
    ) -> FlowLossOutput:
        """Training loss on clean ``target (b, n, target_dim)``.

        Args:
            target: clean targets.
            cond: condition tokens ``(b, m, cond_dim)`` (gradients flow into them).
            cond_mask: ``(b, m)`` bool, True = a valid condition position.
            cond_positions: ``(m,)`` real positions of the condition tokens in target-position
                units (e.g. the centre frame of each audio token), embedded like the target's.
            grid: the target's grid, ``prod(grid) == n`` (default ``(n,)``).
            target_mask: ``(b, n)`` bool, True = a valid target position (loss only there).
            extra, extra_mask: extra condition ``(b, l, extra_cond_dim)`` and its mask.
            labels: ``(b,)`` class labels.
            repa_input: what the REPA teacher sees (the clean media), when REPA is on. The
                REPA term is a training loss: in eval mode (validation) it is skipped and the
                teacher is never loaded.
        """
        b, n, d = target.shape
        if d != self.target_dim:
            raise ValueError(
                f"target must be (batch, n, {self.target_dim}), got {tuple(target.shape)}"
            )
        grid = _check_grid(grid, n)
        drops: list[Tensor | None] = [None, None, None]
        if self.training and self.cond_dropout > 0:
            drops = [torch.rand(b, device=target.device) < self.cond_dropout for _ in range(3)]
        conditions = self._conditions(
            cond, cond_mask, extra, extra_mask, labels, *drops, cond_positions=cond_positions
        )
        noise = torch.randn_like(target)
        if self.objective == "flow":
            t = self._train_times(b, target.device)
            tt = t[:, None, None].to(target.dtype)
            noisy = (1 - tt) * target + tt * noise
            goal = noise - target
            net_t = t
        else:
            steps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), device=target.device)
            alpha = self.alphas_cumprod.to(target.device)[steps][:, None, None].to(target.dtype)
            noisy = alpha.sqrt() * target + (1 - alpha).sqrt() * noise
            goal = (
                noise
                if self.objective == "epsilon"
                else alpha.sqrt() * noise - (1 - alpha).sqrt() * target
            )
            net_t = steps.float() / NUM_TRAIN_TIMESTEPS
        want_hidden = self.training and self.repa is not None and repa_input is not None
        out = self.velocity(noisy, net_t, conditions, grid, return_hidden=want_hidden)
        prediction, hidden = out if want_hidden else (out, None)  # type: ignore[misc]
        error = (prediction.float() - goal.float()).pow(2).mean(dim=-1)  # (b, n)
        if target_mask is not None:
            weights = target_mask.float()
            loss = (error * weights).sum() / weights.sum().clamp_min(1.0)
        else:
            loss = error.mean()
        with torch.no_grad():
            if self.objective == "flow":
                denoised = noisy - tt * prediction
            elif self.objective == "epsilon":
                denoised = (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt().clamp_min(1e-4)
            else:
                denoised = alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction
        metrics: dict[str, Tensor] = {}
        if want_hidden and self.repa is not None and hidden is not None:
            repa_loss = self.repa(hidden, tuple(grid), repa_input)
            metrics["diffusion/repa"] = repa_loss.detach()
            loss = loss + repa_loss
        return FlowLossOutput(loss=loss, denoised=denoised.detach(), metrics=metrics)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        *,
        num_positions: int | None = None,
        grid: Sequence[int] | None = None,
        cond_mask: Tensor | None = None,
        cond_positions: Tensor | None = None,
        extra: Tensor | None = None,
        extra_mask: Tensor | None = None,
        labels: Tensor | None = None,
        steps: int = 25,
        guidance_scale: float = 1.0,
        scheduler: str = "euler",
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Sample targets ``(b, n, target_dim)`` from noise.

        Args:
            cond, cond_mask, cond_positions, extra, extra_mask, labels: as in :meth:`loss`.
            num_positions / grid: the target's length or grid (one of them).
            steps: sampler steps (>= 1).
            guidance_scale: classifier-free guidance; 1 runs the conditional path only.
            scheduler: a name in :data:`~anytok.decoders.diffusion.schedulers.SCHEDULERS`.
            seed: seeds a CPU generator for the initial noise, one ``(n, target_dim)`` draw
                that every item starts from: an item's sample does not depend on the rest of
                its batch, nor on the device; ignored when ``generator`` or ``noise`` is
                given; None draws fresh noise per item from the global RNG.
            generator: a ``torch.Generator`` for the noise, drawn for the whole batch.
            noise: the initial noise itself, ``(b, n, target_dim)``.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if grid is None:
            if num_positions is None:
                raise ValueError("give num_positions or grid")
            grid = (int(num_positions),)
        n = math.prod(grid)
        b = cond.shape[0]
        device = cond.device
        sched = make_scheduler(scheduler, self.objective, self.time_shift)
        set_timesteps(sched, steps, device)
        if noise is None:
            if generator is not None:
                shape = (b, n, self.target_dim)
                noise = torch.randn(shape, generator=generator, device=generator.device)
            elif seed is not None:
                # One draw shared by the batch: a batched decode gives each item what it
                # gets alone (a per-batch draw would tie an item's noise to its position).
                seeded = torch.Generator().manual_seed(int(seed))
                noise = torch.randn(n, self.target_dim, generator=seeded).expand(b, n, -1)
            else:
                noise = torch.randn(b, n, self.target_dim, device=device)
        elif noise.shape != (b, n, self.target_dim):
            raise ValueError(f"noise must be {(b, n, self.target_dim)}, got {tuple(noise.shape)}")
        x = noise.to(device=device, dtype=torch.float32) * float(
            getattr(sched, "init_noise_sigma", 1.0)
        )
        guided = guidance_scale != 1.0
        conditions = self._conditions(
            cond, cond_mask, extra, extra_mask, labels, None, None, None, cond_positions
        )
        if guided:
            everything = torch.ones(b, dtype=torch.bool, device=device)
            uncond = self._conditions(
                cond,
                cond_mask,
                extra,
                extra_mask,
                labels,
                everything,
                everything,
                everything,
                cond_positions,
            )
            conditions = tuple(  # type: ignore[assignment]
                _cat_branches(c, u) for c, u in zip(conditions, uncond)
            )
        dtype = next(self.parameters()).dtype
        for index, timestep in enumerate(sched.timesteps):
            model_in = (
                sched.scale_model_input(x, timestep) if hasattr(sched, "scale_model_input") else x
            )
            model_in = model_in.to(dtype)
            if self.objective == "flow":
                # The noise level the scheduler integrates at: DPM-Solver++ / UniPC round their
                # flow timesteps down to integers, so timestep / 1000 can miss it by 1e-3.
                level = float(sched.sigmas[index])
            else:  # DDPM: the integer training timestep the network was trained on
                level = float(timestep) / NUM_TRAIN_TIMESTEPS
            t = torch.full((b,), level, device=device)
            if guided:
                out = self.velocity(
                    torch.cat([model_in, model_in]), torch.cat([t, t]), conditions, grid
                )
                cond_out, uncond_out = out.float().chunk(2)  # type: ignore[union-attr]
                prediction = uncond_out + guidance_scale * (cond_out - uncond_out)
            else:
                prediction = self.velocity(model_in, t, conditions, grid).float()  # type: ignore[union-attr]
            x = sched.step(prediction, timestep, x, return_dict=False)[0]
        return x


class SamplingDefaults:
    """Decode-time sampling defaults of a diffusion tokenizer: ``sample_steps``,
    ``sample_scheduler``, ``sample_seed``, ``guidance_scale`` attributes, and
    :meth:`sampling` to merge a call's overrides into them."""

    sample_steps: int
    sample_scheduler: str
    sample_seed: int
    guidance_scale: float

    def sampling(
        self,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for :meth:`FlowDecoder.sample`: each given value, else the
        model's default."""
        return {
            "steps": self.sample_steps if steps is None else steps,
            "guidance_scale": self.guidance_scale if guidance_scale is None else guidance_scale,
            "scheduler": self.sample_scheduler if scheduler is None else scheduler,
            "seed": self.sample_seed if seed is None else seed,
        }


def _cat_branches(c: Tensor | None, u: Tensor | None) -> Tensor | None:
    """Conditional and unconditional halves of one condition entry; a missing mask is all
    True."""
    if c is None and u is None:
        return None
    if c is None or u is None:
        c = torch.ones_like(u) if c is None else c  # type: ignore[arg-type]
        u = torch.ones_like(c) if u is None else u
    return torch.cat([c, u])


def _drop_mask(mask: Tensor | None, drop: Tensor, m: int) -> Tensor:
    """Key mask ``(b, m)`` in which dropped items see only their first (null) position."""
    first = torch.arange(m, device=drop.device)[None] == 0
    if mask is None:
        mask = torch.ones(drop.shape[0], m, dtype=torch.bool, device=drop.device)
    return torch.where(drop[:, None], first, mask)


def _check_grid(grid: Sequence[int] | None, n: int) -> tuple[int, ...]:
    if grid is None:
        return (n,)
    grid = tuple(int(g) for g in grid)
    if math.prod(grid) != n:
        raise ValueError(f"grid {grid} holds {math.prod(grid)} positions, the target has {n}")
    return grid


def _ddpm_alphas_cumprod() -> Tensor:
    """``alphas_cumprod`` of :data:`DDPM_SCHEDULE` (the schedule diffusers' samplers use)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**DDPM_SCHEDULE).alphas_cumprod.float().clone()


__all__ = ["CONDITIONINGS", "TIME_SAMPLING", "FlowDecoder", "FlowLossOutput", "SamplingDefaults"]
