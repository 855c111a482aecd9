"""The training loop: one function that reads top to bottom (setup, train loop, save,
cleanup), no trainer class and no callbacks.

Each step:

1. **Generator**: ``grad_accum`` micro-batches through the tokenizer; reconstruction terms,
   then (once ``discriminator.start_step`` is reached) adversarial and feature-matching terms
   through a frozen discriminator, plus every entry of ``TokenizerOutput.losses`` (quantizer
   losses; ``"diffusion"`` for diffusion / flow-matching decoders). Backward (optionally
   through EnCodec's gradient balancer), clip, optimizer and scheduler step, EMA update.
2. **Discriminator**, every ``discriminator.update_every`` steps once started: real and
   (detached) reconstructed media of the same micro-batches in one forward, hinge or
   least-squares loss, clip, step.
3. Log (``log.every``), validate (``log.val_every``), write samples (``log.samples_every``),
   checkpoint (``checkpoint.every``); each also at the last step. After SIGINT / SIGTERM
   (:mod:`anytok.train.signals`) the step is finished, logged and checkpointed, and the run
   stops; ``--resume`` continues it as if it had never stopped.

Under ``torchrun`` the generator and discriminator are wrapped in DistributedDataParallel;
every rank runs the same code and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, DistributedSampler

from anytok.checkpoint import load_state_dict_strict
from anytok.codecs.base import Tokenizer
from anytok.data import (
    AudioSegments,
    Augment,
    Batch,
    ImageCrops,
    ManifestError,
    MediaDataset,
    ResumableSampler,
    VideoClips,
    collate,
    scan_sources,
    split_items,
    without_files_of,
)
from anytok.decoders.gan import (
    build_discriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from anytok.media import other_media_note
from anytok.pipeline import OUTPUT_EXTENSION, autocast_for, save_media
from anytok.registry import create_model
from anytok.registry import load as load_model
from anytok.regularizers import teacher_projector_keys
from anytok.train.config import RecipeError, data_sources, load_recipe, to_dict
from anytok.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    collective_device,
    final_barrier,
    gather_bytes,
    init_distributed,
)
from anytok.train.ema import make_ema, set_ema_count, update_ema
from anytok.train.logger import RunLogger, StepProgress, read_log
from anytok.train.losses import (
    RECONSTRUCTION_TERMS,
    LossBalancer,
    ReconstructionLoss,
    finite_or_raise,
    zero_padding,
)
from anytok.train.signals import StopRequest, ignore_interrupts_in_worker
from anytok.train.state import (
    latest_checkpoint,
    load_training_checkpoint,
    read_summary,
    remove_stale_temporaries,
    rng_state,
    save_training_checkpoint,
    tree_bytes,
)

RECIPE_NAME = "recipe.yaml"

T = TypeVar("T")


@dataclass
class TrainResult:
    """What :func:`train` leaves behind.

    Attributes:
        run_dir: the run's folder (log, samples, checkpoints).
        step: steps completed.
        model: the trained generator (unwrapped).
        ema: the EMA generator, or None when ``train.ema_decay`` is 0.
        checkpoint: the last checkpoint written (None on ranks other than 0).
        stopped_by: the signal (SIGINT / SIGTERM) that stopped the run before its last
            step, after a checkpoint at ``step``; None when it ran to the end.
    """

    run_dir: Path
    step: int
    model: Tokenizer
    ema: Tokenizer | None
    checkpoint: Path | None
    stopped_by: int | None = None


def default_run_dir(recipe: Any) -> Path:
    """``runs/<recipe file name>`` for a recipe path (relative to the working directory)."""
    if isinstance(recipe, (str, os.PathLike)):
        return Path("runs") / Path(recipe).stem
    raise RecipeError("a recipe given as a mapping needs an explicit run_dir")


def train(
    recipe: str | os.PathLike[str] | DictConfig | Mapping[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    device: str | None = None,
) -> TrainResult:
    """Train the tokenizer a recipe describes.

    Args:
        recipe: a YAML recipe path, or a recipe mapping.
        run_dir: where the run writes (default ``runs/<recipe name>``).
        overrides: dotted ``key=value`` overrides applied on top of the recipe.
        resume: continue from the newest checkpoint in ``run_dir`` (a fresh start, with a
            note, when there is none yet).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:K"``; default CUDA when available.

    Raises:
        RecipeError: the recipe is invalid, or ``run_dir`` holds a run and ``resume`` is off.
        FileNotFoundError: the training data is missing.
        anytok.data.DataError: too many files in a row failed to load.
    """
    # ====================================================================== setup
    cfg = load_recipe(recipe if not isinstance(recipe, Mapping) else dict(recipe), overrides)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    device_ = info.device
    logger: RunLogger | None = None
    progress: StepProgress | None = None
    stop = StopRequest()
    restore_signals = stop.install()
    try:
        checkpoint = latest_checkpoint(run_dir) if resume else None
        # Every rank checks (they read the same folder): a refusal on rank 0 alone left the
        # others waiting at the barrier until torchrun killed them.
        if checkpoint is not None:
            _check_data_layout(checkpoint, cfg, info)
        _check_run_dir(run_dir, cfg, resume, checkpoint, info)
        stale: list[Path] = []
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stale = remove_stale_temporaries(run_dir)  # no checkpoint is being written yet
        barrier(info)
        start_step = _step_of(checkpoint)
        logger = RunLogger(
            run_dir,
            enabled=info.is_main,
            tensorboard=cfg.log.tensorboard,
            resume_step=start_step if resume else None,
        )
        for path in stale:
            logger.note(f"removed {path}: a checkpoint write that did not finish")
        if resume and checkpoint is None:
            logger.note(f"no checkpoint in {run_dir} yet: starting from step 0")
        elif checkpoint is not None:
            logger.note(f"resuming from {checkpoint}")
        tc, lc, dc = cfg.train, cfg.loss, cfg.discriminator

        # ---- models: generator (+ EMA), discriminator, losses
        _seed_everything(tc.seed)
        model: Tokenizer = _built(
            "model.config",
            lambda: create_model(
                cfg.model.name, tiny=cfg.model.tiny, seed=tc.seed, **to_dict(cfg.model.config)
            ),
        )
        if cfg.model.init_from:  # fine-tuning: start from existing weights
            source = load_model(cfg.model.init_from)
            fresh = _load_init_from(
                model, source.state_dict(), f"model.init_from={cfg.model.init_from}"
            )
            if fresh:
                logger.note(
                    f"model.init_from={cfg.model.init_from} has no teacher projector (an "
                    f"export drops it with the teacher): {', '.join(fresh)} start fresh"
                )
        model.anytok_tag = f"run-{run_dir.resolve().name}"  # type: ignore[assignment]
        model.to(device_).train()
        ema = make_ema(model, tc.ema_decay) if tc.ema_decay > 0 else None
        disc: nn.Module | None = None
        if dc.networks:
            channels = model.channels if model.modality == "audio" else 3  # type: ignore[attr-defined]
            disc = _built(
                "discriminator.networks",
                lambda: build_discriminator(to_dict(dc.networks), channels=channels),
            )
            disc.to(device_).train()
        recon_loss = ReconstructionLoss(
            {k: lc[k] for k in RECONSTRUCTION_TERMS},
            model.modality,
            sample_rate=getattr(model, "sample_rate", None),
            stft_sizes=list(lc.stft_sizes),
            mel_windows=list(lc.mel_windows),
            mel_bins=list(lc.mel_bins),
            mel_scale=lc.mel_scale,
            mel_floor=lc.mel_floor,
            reduction=lc.reduction,
            perceptual_weights=lc.perceptual_weights,
        ).to(device_)
        gan_weights = {"adversarial": lc.adversarial, "feature_matching": lc.feature_matching}
        weights = {**recon_loss.weights, **{k: v for k, v in gan_weights.items() if v > 0}}
        aux_weights: dict[str, float] = to_dict(lc.aux)
        balancer = (
            LossBalancer(weights, lc.balancer.total_norm, lc.balancer.ema_decay)
            if lc.balancer.enabled
            else None
        )

        # ---- optimizers and schedules (warmup + cosine, torch.optim.lr_scheduler)
        g_opt = _built("optimizer", lambda: _optimizer(model.named_parameters(), cfg.optimizer))
        g_sched = _scheduler(g_opt, cfg.optimizer, tc.steps)
        d_opt = d_sched = None
        if disc is not None:
            d_updates = max(1, math.ceil((tc.steps - dc.start_step) / dc.update_every))
            d_opt = _built(
                "discriminator.optimizer", lambda: _optimizer(disc.named_parameters(), dc.optimizer)
            )
            d_sched = _scheduler(d_opt, dc.optimizer, d_updates)

        # ---- data
        # A bad value found building the datasets (a segment under one sample) names the
        # section; a manifest's own errors stay ManifestErrors.
        train_set, val_set = _built(
            "data", lambda: _datasets(cfg, model, logger.note), keep=(ManifestError,)
        )
        if len(train_set) < tc.batch_size * info.world_size:
            raise RecipeError(
                f"data.train has {len(train_set)} usable files, fewer than train.batch_size "
                f"({tc.batch_size}) x ranks ({info.world_size}); add data or lower the batch"
            )
        sampler = ResumableSampler(
            train_set, info.world_size, info.rank, shuffle=True, seed=tc.seed
        )
        loader = _loader(
            train_set, sampler, tc.batch_size, cfg.data.num_workers, device_, drop_last=True
        )
        val_loader = None
        if val_set is not None and cfg.log.val_every:
            val_sampler = DistributedSampler(val_set, info.world_size, info.rank, shuffle=False)
            val_loader = _loader(val_set, val_sampler, tc.batch_size, cfg.data.num_workers, device_)
        sample_set = val_set if val_set is not None else train_set
        samples = (
            collate([sample_set[i % len(sample_set)] for i in range(cfg.log.num_samples)])
            if cfg.log.num_samples and cfg.log.samples_every
            else None
        )
        for entry in samples.bad_files if samples is not None else ():
            _report_bad_file(logger, 0, entry, "samples")

        # ---- resume: weights, optimizer / scheduler states, data position, RNG
        state: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "bad_files": 0}
        if checkpoint is not None:
            saved = load_training_checkpoint(
                checkpoint,
                model=model,
                ema=ema.module if ema is not None else None,
                discriminator=disc,
                rank=info.rank,
                warn=logger.note,
            )
            state.update(saved["loop"])
            g_opt.load_state_dict(saved["optimizers"]["generator"])
            g_sched.load_state_dict(saved["schedulers"]["generator"])
            if d_opt is not None and d_sched is not None and "discriminator" in saved["optimizers"]:
                d_opt.load_state_dict(saved["optimizers"]["discriminator"])
                d_sched.load_state_dict(saved["schedulers"]["discriminator"])
            if ema is not None and saved.get("ema_n_averaged") is not None:
                set_ema_count(ema, int(saved["ema_n_averaged"]))
            if balancer is not None and saved.get("balancer"):
                balancer.load_state_dict(saved["balancer"])

        if info.is_main:  # only now: a start that failed above leaves no record behind
            _write_recipe(run_dir, cfg)

        # ---- distributed wrappers and compilation (after weights are final)
        gen: nn.Module = model
        disc_train: nn.Module | None = disc
        if info.distributed:
            # Buffers are not broadcast: quantizers keep their codebooks in sync themselves
            # (all-reduced statistics), and a broadcast per forward would hide a bug there.
            ddp_args: dict[str, Any] = {
                "broadcast_buffers": False,
                "find_unused_parameters": tc.find_unused_parameters,
                "device_ids": [device_.index] if device_.type == "cuda" else None,
            }
            gen = DDP(model, **ddp_args)
            disc_train = DDP(disc, **ddp_args) if disc is not None else None
        gen_forward, disc_forward, disc_train_forward = gen, disc, disc_train
        if tc.compile:
            gen_forward = torch.compile(gen)
            disc_forward = torch.compile(disc) if disc is not None else None
            disc_train_forward = torch.compile(disc_train) if disc_train is not None else None

        def amp() -> contextlib.AbstractContextManager[None]:
            return autocast_for(device_) if tc.precision == "bf16" else contextlib.nullcontext()

        def batches() -> Iterator[Batch]:
            """Batches forever, tracking (epoch, position) in ``state`` for resuming."""
            while True:
                sampler.set_position(state["epoch"], state["position"] * tc.batch_size)
                for batch in loader:
                    state["position"] += 1
                    yield batch
                state["epoch"] += 1
                state["position"] = 0

        data = batches()
        takes_lengths = model.modality != "image"
        # Text-conditioned models (e.g. a TaDiCodec-style decoder) get the manifest's texts.
        takes_text = "text" in inspect.signature(model.forward).parameters
        # Logged scalars stay on the device until a log line: one host sync per line, none
        # per step (a float() per scalar made the host wait for the GPU every step).
        window: dict[str, list[Tensor | float]] = defaultdict(lambda: [0.0, 0])
        items_per_step = tc.batch_size * tc.grad_accum * info.world_size
        progress = StepProgress(
            tc.steps, state["step"], info.is_main and cfg.log.progress, logger.console
        )
        last_checkpoint: Path | None = None
        # Throughput is timed over a logging window, from its first step to the host sync of
        # its log line: a step's own host time only measures how fast kernels are queued.
        window_started, window_steps = time.perf_counter(), 0
        # This rank's replaced training files since the ranks last met: (step, "path: problem")
        replaced: list[tuple[int, str]] = []
        shown_rate, shown_status = 0.0, ""  # of the last log line, for the progress bar

        eval_model = ema.module if ema is not None else model

        # Validation and samples draw random numbers (a diffusion decoder's noise and times)
        # from forked RNG states, so training never depends on log.val_every / samples_every,
        # and a run stopped at such a step (which skips them) resumes exactly.
        def validate(at: int) -> None:
            val_replaced: list[tuple[int, str]] = []

            def bad_val_file(entry: str) -> None:
                val_replaced.append((at, entry))
                _report_bad_file(logger, at, entry, "val")  # rank 0's at once, the rest below

            assert val_loader is not None
            with _isolated_rng(device_):
                val = _evaluate(
                    eval_model,
                    val_loader,
                    recon_loss,
                    cfg.log.val_batches,
                    amp,
                    info,
                    on_bad_file=bad_val_file,
                )
            val["val/bad_files"] = float(_gather_bad_files(val_replaced, logger, info, "val"))
            logger.scalars(at, val)

        def write_samples(at: int) -> None:
            assert samples is not None
            with _isolated_rng(device_):
                _write_samples(
                    eval_model, samples, run_dir / "samples" / f"step_{at:06d}", amp, info
                )

        # A run stopped mid-window resumes its log window and what was due at its last step.
        if "window" in state:
            window.update(state.pop("window"))
            window_steps = state.pop("window_steps")
        if state.pop("pending_val", False) and val_loader is not None:
            validate(state["step"])
        if state.pop("pending_samples", False) and samples is not None:
            write_samples(state["step"])

        stopped_by = 0  # the signal the ranks agreed to stop after, 0 while running
        stop_agreed = _StopAgreement(stop, info, state["step"])
        aux_checked = False  # loss.aux names are checked against the first step's losses
        # ====================================================================== train loop
        while state["step"] < tc.steps:
            step = state["step"] + 1
            if window_steps == 0:
                window_started = time.perf_counter()
            window_steps += 1
            gan_on = disc is not None and state["step"] >= dc.start_step
            scalars: dict[str, Tensor | float] = {}
            held: list[tuple[Tensor, Tensor]] = []  # (real, detached fake) for the D update

            # ---- generator update
            for micro in range(tc.grad_accum):
                batch = next(data)
                for entry in batch.bad_files:
                    replaced.append((step, entry))
                    _report_bad_file(logger, step, entry)  # rank 0's at once, the rest later
                media = batch.media.to(device_, non_blocking=True)
                lengths = batch.lengths.to(device_, non_blocking=True)
                sync = micro == tc.grad_accum - 1
                with _no_sync(gen, not sync):
                    with amp():
                        text_kwargs = _text_kwargs(batch, takes_text)
                        out = gen_forward(media, lengths if takes_lengths else None, **text_kwargs)
                        if not aux_checked:
                            _check_aux_names(aux_weights, out.losses)
                            aux_checked = True
                        terms = recon_loss(out.reconstruction, media, lengths)
                        # The discriminator sees what the reconstruction terms score: audio
                        # padding zeroed as in the real batch (else it tells fakes by it).
                        judged = (
                            zero_padding(out.reconstruction, lengths, model.modality)
                            if disc is not None
                            else out.reconstruction
                        )
                        if gan_on:
                            assert disc is not None and disc_forward is not None
                            disc.requires_grad_(False)  # gradients reach the generator only
                            fake = disc_forward(judged)
                            if lc.adversarial > 0:
                                terms["adversarial"] = generator_loss(
                                    fake.logits, lc.gan, lc.reduction
                                )
                            if lc.feature_matching > 0:
                                with torch.no_grad():
                                    real = disc_forward(media)
                                terms["feature_matching"] = feature_matching_loss(
                                    real.features,
                                    fake.features,
                                    lc.reduction,
                                    lc.feature_matching_norm,
                                )
                    # Auxiliary losses come weighted by the model; a recipe may rescale them.
                    # A diffusion / flow-matching decoder reports losses["diffusion"] here.
                    aux = {k: v * aux_weights.get(k, 1.0) for k, v in out.losses.items()}
                    aux_total = (
                        torch.stack([v.float() for v in aux.values()]).sum() if aux else None
                    )
                    weighted = [weights[k] * v for k, v in terms.items() if k in weights]
                    total = (
                        torch.stack(weighted).sum() if weighted else torch.zeros((), device=device_)
                    )
                    if aux_total is not None:
                        total = total + aux_total
                    if balancer is not None:
                        norms = balancer.backward(
                            terms, out.reconstruction, aux_total, scale=1 / tc.grad_accum
                        )
                        scalars.update({f"balancer/grad_norm/{k}": v for k, v in norms.items()})
                    else:
                        (total / tc.grad_accum).backward()
                held.append((media, judged.detach()))
                _add(scalars, "loss/total", total, tc.grad_accum)
                _add(scalars, "loss/reconstruction", recon_loss.total(terms), tc.grad_accum)
                for key, value in [*terms.items(), *aux.items()]:
                    _add(scalars, f"loss/{key}", value, tc.grad_accum)
                for key, value in out.metrics.items():
                    _add(scalars, f"codebook/{key}", value, tc.grad_accum)
            scalars["grad_norm/generator"] = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optimizer.clip_grad_norm or math.inf
            )
            g_opt.step()
            g_opt.zero_grad(set_to_none=True)
            g_sched.step()
            if ema is not None:
                update_ema(ema, model)

            # ---- discriminator update
            if gan_on and (state["step"] - dc.start_step) % dc.update_every == 0:
                assert (
                    disc is not None
                    and disc_train is not None
                    and d_opt is not None
                    and d_sched is not None
                )
                disc.requires_grad_(True)
                for i, (real_media, fake_media) in enumerate(held):
                    with _no_sync(disc_train, i < len(held) - 1):
                        # Real and fake in one forward: DDP expects one forward per backward.
                        with amp():
                            both = disc_train_forward(torch.cat([real_media, fake_media]))
                        n = real_media.shape[0]
                        d_loss = discriminator_loss(
                            [x[:n] for x in both.logits],
                            [x[n:] for x in both.logits],
                            lc.gan,
                            lc.reduction,
                        )
                        (d_loss / len(held)).backward()
                    _add(scalars, "loss/discriminator", d_loss, len(held))
                scalars["grad_norm/discriminator"] = torch.nn.utils.clip_grad_norm_(
                    disc.parameters(), dc.optimizer.clip_grad_norm or math.inf
                )
                d_opt.step()
                d_opt.zero_grad(set_to_none=True)
                d_sched.step()

            state["step"] = step
            for key, value in scalars.items():
                total, count = window[key]
                window[key] = [total + value, count + 1]

            # ---- log, validate, samples, checkpoint
            final = step == tc.steps
            log_now = bool(cfg.log.every and step % cfg.log.every == 0)
            checkpoint_now = (final and cfg.checkpoint.final) or bool(
                cfg.checkpoint.every and step % cfg.checkpoint.every == 0
            )
            stopped_by = 0 if final else stop_agreed(step, log_now or checkpoint_now)
            # A stop's own checkpoint keeps the open log window (and the validation and
            # samples due now) for the resumed run, so its log equals an uninterrupted one's.
            stop_only = bool(stopped_by) and not (checkpoint_now or log_now)
            checkpoint_now = checkpoint_now or bool(stopped_by)
            if stop_only or final or checkpoint_now or log_now:  # the ranks meet here
                state["bad_files"] += _gather_bad_files(replaced, logger, info)
                replaced.clear()
            if stop_only:
                totals = _mean_over_ranks(_to_floats({k: t for k, (t, _) in window.items()}), info)
                state["window"] = {k: [totals[k], window[k][1]] for k in totals}
                state["window_steps"] = window_steps
            if (final or checkpoint_now or log_now) and not stop_only:
                # Flushing the window at checkpoints too makes a resumed run's log identical.
                totals = _to_floats({k: total for k, (total, _) in window.items()})
                step_seconds = max(time.perf_counter() - window_started, 1e-9) / window_steps
                local = {k: totals[k] / window[k][1] for k in totals}
                local["perf/step_seconds"] = step_seconds
                local["perf/items_per_second"] = items_per_step / step_seconds
                means = _mean_over_ranks(local, info)
                means.update(
                    {
                        "lr/generator": g_opt.param_groups[0]["lr"],
                        "data/epoch": float(state["epoch"]),
                        "data/bad_files": float(state["bad_files"]),
                    }
                )
                if d_opt is not None:
                    means["lr/discriminator"] = d_opt.param_groups[0]["lr"]
                logger.scalars(step, means)
                window.clear()
                window_steps = 0
                shown_rate, shown_status = means["perf/items_per_second"], _status(means)
                finite_or_raise(torch.tensor(means["loss/total"]), "loss/total", step)
                progress.line(step, tc.steps, shown_status)
            val_now = val_loader is not None and (final or step % cfg.log.val_every == 0)
            samples_now = samples is not None and (final or step % cfg.log.samples_every == 0)
            if stopped_by:  # a stopping run goes straight to its checkpoint; these wait for it
                state["pending_val"], state["pending_samples"] = val_now, samples_now
            else:
                if val_now:
                    validate(step)
                if samples_now:
                    write_samples(step)
            if checkpoint_now:
                last_checkpoint = _save(
                    run_dir,
                    step,
                    cfg,
                    info,
                    model,
                    ema,
                    disc,
                    state,
                    optimizers={"generator": g_opt, "discriminator": d_opt},
                    schedulers={"generator": g_sched, "discriminator": d_sched},
                    balancer=balancer,
                )
            progress.update(step, shown_rate, shown_status)
            if stopped_by:
                break

        # ====================================================================== cleanup
        # (the last checkpoint was saved inside the loop, at the last step)
        progress.close()
        if info.is_main and stopped_by:
            logger.note(
                f"stopped by {signal.Signals(stopped_by).name} at step {state['step']} of "
                f"{tc.steps}: checkpoint saved; `--resume` continues; run folder {run_dir}"
            )
        elif info.is_main:
            logger.note(f"finished {tc.steps} steps; run folder {run_dir}")
        final_barrier(info)  # keeps its handle: tearing the group down cannot deadlock
        return TrainResult(
            run_dir=run_dir,
            step=state["step"],
            model=model,
            ema=ema.module if ema is not None else None,  # type: ignore[arg-type]
            checkpoint=last_checkpoint,
            stopped_by=stopped_by or None,
        )
    finally:
        restore_signals()
        if progress is not None:
            progress.close()
        if logger is not None:
            logger.close()
        if owns_group:
            cleanup_distributed()


# ========================================================================== helpers


def _holds_run(run_dir: Path) -> bool:
    """A checkpoint, or a log with trained steps: what a failed start never leaves."""
    return latest_checkpoint(run_dir) is not None or any(
        record.get("step", 0) > 0 for record in read_log(run_dir)
    )


#: recipe keys that shape the learning-rate schedules a checkpoint's schedulers hold
SCHEDULE_KEYS = (
    "train.steps",
    *(
        f"{optimizer}.{key}"
        for optimizer in ("optimizer", "discriminator.optimizer")
        for key in ("lr", "schedule", "warmup_steps", "min_lr_ratio")
    ),
    "discriminator.start_step",
    "discriminator.update_every",
)


def _check_run_dir(
    run_dir: Path, cfg: DictConfig, resume: bool, checkpoint: Path | None, info: DistInfo
) -> None:
    """Refuse to start over a run without ``resume``, and to resume a checkpoint with another
    learning-rate schedule (its schedulers would keep the old one, so the rate would follow
    neither). Reads only; rank 0 notes recipe changes."""
    if not resume and _holds_run(run_dir):
        raise RecipeError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
            "--run-dir"
        )
    recipe_path = run_dir / RECIPE_NAME
    if not (resume and recipe_path.is_file()):
        return
    before = OmegaConf.load(recipe_path)
    old_sections, new_sections = to_dict(before), to_dict(cfg)  # type: ignore[arg-type]
    changed = sorted(key for key in new_sections if old_sections.get(key) != new_sections[key])
    if changed and info.is_main:
        print(f"anytok train: note: the recipe differs from the run's in: {', '.join(changed)}")
    if checkpoint is None:
        return
    moved = [
        f"{key} {OmegaConf.select(before, key)!r} -> {OmegaConf.select(cfg, key)!r}"
        for key in SCHEDULE_KEYS
        if OmegaConf.select(before, key) != OmegaConf.select(cfg, key)
    ]
    if moved:
        raise RecipeError(
            f"cannot resume {checkpoint} with another learning-rate schedule ({'; '.join(moved)}): "
            "its schedulers keep the run's. Resume with the run's values (its resolved recipe: "
            f"`anytok train {recipe_path} --run-dir {run_dir} --resume`), or start another "
            "--run-dir with model.init_from= an exported checkpoint of this run"
        )


def _check_data_layout(checkpoint: Path, cfg: DictConfig, info: DistInfo) -> None:
    """Refuse to resume with another world size or ``train.batch_size``: the data position
    is saved in batches per rank, so either change would repeat or skip items of the epoch
    (and the ranks' RNG states would not match theirs)."""
    summary = read_summary(checkpoint)
    saved_world = summary.get("world_size")
    saved_batch = (summary.get("recipe") or {}).get("train", {}).get("batch_size")
    now = (info.world_size, cfg.train.batch_size)
    if (saved_world or now[0], saved_batch or now[1]) == now:
        return
    raise RecipeError(
        f"cannot resume {checkpoint}: it was saved by {saved_world} process(es) with "
        f"train.batch_size={saved_batch}, and this run has {info.world_size} with "
        f"train.batch_size={cfg.train.batch_size}; its data position counts batches per "
        "process, so the resumed epoch would repeat or skip items. Resume with "
        f"{saved_world} process(es) (torchrun --nproc_per_node) and train.batch_size="
        f"{saved_batch} (train.grad_accum may change), or start another --run-dir with "
        "model.init_from= an exported checkpoint of this run"
    )


def _write_recipe(run_dir: Path, cfg: DictConfig) -> None:
    """Write the recipe the run trains with (atomically)."""
    recipe_path = run_dir / RECIPE_NAME
    tmp = recipe_path.with_name(f".{RECIPE_NAME}.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, recipe_path)


#: what a replaced file was read for, in its note (None: a training batch)
_BAD_FILE_USE = {
    None: "a bad file",
    "val": "a bad validation file",
    "samples": "a bad file for the samples",
}


def _report_bad_file(
    logger: RunLogger, step: int, entry: str, split: str | None = None, rank: int | None = None
) -> None:
    """One ``bad_file`` event (with its ``split`` outside training, and the ``rank`` that
    read it where that is not rank 0) and one note per file the data replaced."""
    fields = {"split": split} if split else {}
    if rank:
        fields["rank"] = rank
    logger.event(step, "bad_file", file=entry, **fields)
    where = f" on rank {rank}" if rank else ""
    logger.note(f"skipped {_BAD_FILE_USE[split]}{where} (replaced by another): {entry}")


def _gather_bad_files(
    replaced: Sequence[tuple[int, str]],
    logger: RunLogger,
    info: DistInfo,
    split: str | None = None,
) -> int:
    """How many files every rank replaced: ``replaced`` holds this rank's ``(step, "path:
    problem")`` since the ranks last met. Rank 0 named its own as they came; here it names
    the other ranks' (their loggers are off), so the log lists every bad file of the run.
    Every rank calls it at the same point (a collective under torchrun)."""
    if not info.distributed:
        return len(replaced)
    blobs = gather_bytes(json.dumps(list(replaced)).encode(), info)
    total = 0
    for rank, blob in enumerate(blobs):
        entries = json.loads(blob)
        total += len(entries)
        for step, entry in entries if rank else ():
            _report_bad_file(logger, step, entry, split, rank)
    return total


def _built(section: str, build: Callable[[], T], keep: tuple[type[Exception], ...] = ()) -> T:
    """``build()``; a constructor's ``TypeError`` / ``ValueError`` / ``RuntimeError`` (an
    unknown keyword, a bad value in a free-form mapping the schema cannot check, options
    torch refuses together) becomes a :class:`RecipeError` naming the recipe section. Out of
    memory, and errors of the types in ``keep``, stay what they are."""
    try:
        return build()
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, (RecipeError, torch.OutOfMemoryError, *keep)):
            raise
        raise RecipeError(f"{section}: {err}") from err


def _load_init_from(model: nn.Module, state: dict[str, Tensor], source: str) -> list[str]:
    """Load ``state`` strictly, except that a teacher projector missing as a whole (an export
    drops it with its teacher) keeps its fresh weights. Returns those projectors' keys."""
    fresh: list[str] = []
    own = model.state_dict()
    for keys in teacher_projector_keys(model).values():
        if keys and not any(k in state for k in keys):
            fresh.extend(keys)
    if fresh:
        state = {**state, **{k: own[k] for k in fresh}}
    load_state_dict_strict(model, state, source)
    return fresh


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("_")[-1]) if checkpoint is not None else 0


def _seed_everything(seed: int) -> None:
    # Every rank gets the same seed: the same initial weights (DDP broadcasts them anyway)
    # and the same random choices inside models (e.g. codebook initialisation). Data
    # randomness comes from per-item seeds, which include the rank.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay: Sequence[str],
) -> list[dict[str, Any]]:
    """Parameter groups: those ``no_decay`` names (``"1d"``: fewer than 2 dims; any other
    entry: a substring of the parameter's name) at weight decay 0, the rest at
    ``weight_decay``; one group without ``no_decay``. Empty groups are left out."""
    params = list(named_parameters)
    if not no_decay:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    names = [entry for entry in no_decay if entry != "1d"]

    def exempt(name: str, param: nn.Parameter) -> bool:
        return ("1d" in no_decay and param.ndim < 2) or any(n in name for n in names)

    groups = [
        {"params": [p for n, p in params if not exempt(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in params if exempt(n, p)], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]], cfg: DictConfig
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(groups, lr, weight_decay[, betas], **kwargs)``, the groups from
    :func:`decay_groups` (``cfg.no_decay``)."""
    for entry in cfg.no_decay:
        if not isinstance(entry, str) or not entry:
            raise ValueError(
                f"optimizer.no_decay entries are '1d' or parameter-name substrings, got {entry!r}"
            )
    params = decay_groups(named_parameters, cfg.weight_decay, list(cfg.no_decay))
    cls = getattr(torch.optim, cfg.name)
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **to_dict(cfg.kwargs)}
    accepted = inspect.signature(cls).parameters
    if "betas" in accepted:
        kwargs.setdefault("betas", tuple(cfg.betas))
    if "foreach" in accepted and not kwargs.get("fused"):
        # torch picks the multi-tensor update only for CUDA parameters; on the CPU its
        # per-parameter Python loop costs ~20% of a tiny model's step (the same arithmetic).
        # Not with fused=True, which torch refuses together with foreach=True.
        kwargs.setdefault("foreach", True)
    return cls(params, **kwargs)


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int
) -> lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at
    ``total_steps`` (or a constant rate)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total_steps - warmup, 1), eta_min=cfg.lr * cfg.min_lr_ratio
        )
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def _datasets(
    cfg: DictConfig, model: Tokenizer, note: Callable[[str], None] | None = None
) -> tuple[MediaDataset, MediaDataset | None]:
    """Training and validation datasets cut the way the model expects. Files of
    ``data.val`` are left out of training (a validation folder inside the training one),
    which ``note`` reports."""
    data = cfg.data
    modality = model.modality
    items = scan_sources(data_sources(data.train), modality)
    if data.val is not None:
        val_items = scan_sources(data_sources(data.val), modality)
        trained = without_files_of(items, val_items)
        if len(trained) < len(items) and note is not None:
            note(
                f"data.val: {len(items) - len(trained)} of its files are also reached by "
                "data.train; they are left out of training"
            )
        items = trained
    elif data.val_fraction > 0:
        items, val_items = split_items(items, data.val_fraction)
    else:
        val_items = []
    aug = data.augment
    augment = Augment(aug.random_crop, aug.hflip, tuple(aug.gain_db), tuple(aug.scale))  # type: ignore[arg-type]

    def build(subset: list, augment: Augment) -> MediaDataset:
        if modality == "audio":
            segment = round(data.segment_seconds * model.sample_rate)  # type: ignore[attr-defined]
            return AudioSegments(
                subset, model.sample_rate, model.channels, segment, augment, data.max_attempts
            )  # type: ignore[attr-defined]
        size = list(data.crop_size) if data.crop_size is not None else list(model.resolution)  # type: ignore[attr-defined]
        factor = model.downsample_factor if modality == "image" else model.spatial_factor  # type: ignore[attr-defined]
        if size[0] % factor or size[1] % factor:
            raise RecipeError(
                f"data.crop_size {size} must be multiples of the model's factor {factor}"
            )
        if modality == "image":
            return ImageCrops(subset, size, augment, data.max_attempts)
        return VideoClips(subset, model.fps, data.clip_frames, size, augment, data.max_attempts)  # type: ignore[attr-defined]

    if not items:
        held_out = (
            f" left after data.val_fraction={data.val_fraction} held {len(val_items)} out"
            if val_items and data.val is None
            else ""
        )
        sources = data_sources(data.train)
        note = "" if held_out else other_media_note(sources, modality)
        raise RecipeError(f"data.train: no {modality} files{held_out} in {sources}{note}")
    return build(items, augment), (build(val_items, augment) if val_items else None)


def _loader(
    dataset: MediaDataset,
    sampler: Any,
    batch_size: int,
    workers: int,
    device: torch.device,
    drop_last: bool = False,
) -> DataLoader:
    # A private generator: creating a loader iterator draws a base seed, and drawing it from
    # the global RNG would make a resumed run's random stream differ from an uninterrupted one.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_interrupts_in_worker if workers > 0 else None,
    )


#: seconds between the ranks' stop agreements (torchrun kills its workers 30 s after it
#: forwards SIGTERM: the agreement, the step and the stop's checkpoint must fit in that)
STOP_AGREEMENT_SECONDS = 2.0


class _StopAgreement:
    """The signal after which every rank stops at this step, 0 for none. One process: as
    soon as a signal came. Several: the ranks agree (the largest signal number any rank got)
    at steps they all pick alike, so that no rank waits in a collective another has left:
    log lines and checkpoints, and about every :data:`STOP_AGREEMENT_SECONDS` in between.
    Each agreement also takes the slowest rank's seconds since the previous one, and every
    rank derives the next agreement's step from that same number; between agreements a
    step makes no collective and no device sync."""

    def __init__(self, stop: StopRequest, info: DistInfo, start_step: int) -> None:
        self.stop, self.info = stop, info
        self.next_step, self.last_step = start_step + 1, start_step
        self.last_time = time.perf_counter()

    def __call__(self, step: int, sync_point: bool) -> int:
        if not self.info.distributed:
            return self.stop.signum or 0
        if not (sync_point or step >= self.next_step):
            return 0
        now = time.perf_counter()
        values = torch.tensor(
            [float(self.stop.signum or 0), now - self.last_time],
            dtype=torch.float64,
            device=self.info.device,
        )
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        signum, seconds = values.tolist()
        step_seconds = max(seconds / max(step - self.last_step, 1), 1e-6)
        self.next_step = step + max(1, int(STOP_AGREEMENT_SECONDS / step_seconds))
        self.last_step, self.last_time = step, now
        return int(signum)


def _isolated_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Torch's CPU (and this CUDA device's) RNG states restored on exit."""
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _check_aux_names(aux_weights: Mapping[str, float], losses: Mapping[str, Any]) -> None:
    """``loss.aux`` may only name losses the model reports (a misspelled name would
    otherwise leave the loss it meant at weight 1 without a word)."""
    unknown = sorted(set(aux_weights) - set(losses))
    if unknown:
        raise RecipeError(
            f"loss.aux: {', '.join(unknown)} not among the losses the model reports "
            f"({', '.join(sorted(losses)) or 'none'})"
        )


def _no_sync(module: nn.Module | None, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` for all but the last micro-batch of an accumulated step."""
    if skip and isinstance(module, DDP):
        return module.no_sync()
    return contextlib.nullcontext()


def _add(scalars: dict[str, Tensor | float], key: str, value: Tensor | float, count: int) -> None:
    """Accumulate the mean over ``count`` micro-batches (on the device for tensors)."""
    if isinstance(value, Tensor):
        value = value.detach().double()  # float64, as host floats were
    scalars[key] = scalars.get(key, 0.0) + value / count


def _to_floats(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    """Host floats of logged scalars; the device ones come in one copy per device."""
    floats = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    by_device: dict[torch.device, list[str]] = defaultdict(list)
    for key, value in values.items():
        if isinstance(value, Tensor):
            by_device[value.device].append(key)
    for keys in by_device.values():
        stacked = torch.stack([values[k].detach().double().reshape(()) for k in keys])
        floats.update(zip(keys, stacked.tolist()))
    return {k: floats[k] for k in values}


def _mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average each scalar over ranks (every rank logs the same keys, sorted for order)."""
    keys = sorted(values)
    if not info.distributed or not keys:
        return {k: values[k] for k in keys}
    tensor = torch.tensor(
        [values[k] for k in keys], dtype=torch.float64, device=collective_device(info)
    )
    reduced = all_reduce_mean(tensor, info).tolist()
    return dict(zip(keys, reduced))


def _status(values: Mapping[str, float]) -> str:
    shown = [("loss", "loss/total"), ("rec", "loss/reconstruction"), ("disc", "loss/discriminator")]
    return " ".join(f"{label} {values[key]:.4f}" for label, key in shown if key in values)


@torch.no_grad()
def _text_kwargs(batch: Batch, takes_text: bool) -> dict[str, Any]:
    """``{"text": [...]}`` for models whose ``forward`` takes text, when the batch has any."""
    if takes_text and any(t is not None for t in batch.texts):
        return {"text": list(batch.texts)}
    return {}


@torch.no_grad()
def _evaluate(
    model: Tokenizer,
    loader: DataLoader,
    recon_loss: ReconstructionLoss,
    max_batches: int,
    amp: Any,
    info: DistInfo,
    on_bad_file: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Mean reconstruction terms and the model's own losses (quantizer, diffusion ...) over
    up to ``max_batches`` validation batches per rank; ``on_bad_file`` hears of every file
    this rank replaced (the caller counts and names them, as in training).

    Every rank runs it (quantizers all-reduce code statistics inside ``forward``), over its
    share of the validation set.
    """
    was_training = model.training
    model.eval()
    device = info.device
    sums: dict[str, Tensor | float] = defaultdict(float)
    count = 0
    for batch in itertools.islice(loader, max_batches):
        media = batch.media.to(device, non_blocking=True)
        lengths = batch.lengths.to(device, non_blocking=True)
        takes_text = "text" in inspect.signature(model.forward).parameters
        with amp():
            out = model(
                media,
                lengths if model.modality != "image" else None,
                **_text_kwargs(batch, takes_text),
            )
        terms = recon_loss(out.reconstruction, media, lengths)
        for entry in batch.bad_files if on_bad_file is not None else ():
            on_bad_file(entry)
        sums["val/reconstruction"] += recon_loss.total(terms).double()
        for key, value in [*terms.items(), *out.losses.items()]:  # + quantizer, diffusion ...
            sums[f"val/{key}"] += value.double()
        count += 1
    model.train(was_training)
    totals = _to_floats(sums)  # one host sync for the whole evaluation
    return _mean_over_ranks({k: v / max(count, 1) for k, v in totals.items()}, info)


@torch.no_grad()
def _write_samples(model: Tokenizer, batch: Batch, folder: Path, amp: Any, info: DistInfo) -> None:
    """Inputs and reconstructions as WAV / PNG / MP4 in ``folder`` (rank 0 writes; every
    rank runs the forward pass, which may all-reduce codebook statistics)."""
    was_training = model.training
    model.eval()
    media, lengths = batch.media.to(info.device), batch.lengths
    with amp():
        out = model(media, lengths.to(info.device) if model.modality != "image" else None)
    model.train(was_training)
    if not info.is_main:
        return
    extension = OUTPUT_EXTENSION[model.modality]
    for i in range(media.shape[0]):
        real, fake = media[i].float().cpu(), out.reconstruction[i].float().cpu()
        if model.modality != "image":  # trim padding: samples (audio) or frames (video)
            real, fake = real[:, : int(lengths[i])], fake[:, : int(lengths[i])]
        save_media(model, real, folder / f"{i:02d}_input{extension}")
        save_media(model, fake, folder / f"{i:02d}_output{extension}")


def _save(
    run_dir: Path,
    step: int,
    cfg: DictConfig,
    info: DistInfo,
    model: Tokenizer,
    ema: Any,
    disc: nn.Module | None,
    state: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer | None],
    schedulers: Mapping[str, lr_scheduler.LRScheduler | None],
    balancer: LossBalancer | None,
) -> Path | None:
    """Gather every rank's RNG state and write a checkpoint on rank 0."""
    rng_files = gather_bytes(tree_bytes(rng_state()), info)
    path = None
    if info.is_main:
        train_state = {
            "loop": dict(state),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items() if o is not None},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items() if s is not None},
            "balancer": balancer.state_dict() if balancer is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else None,
        }
        path = save_training_checkpoint(
            run_dir,
            step,
            model=model,
            ema=ema.module if ema is not None else None,
            discriminator=disc,
            train_state=train_state,
            rng_files=dict(enumerate(rng_files)),
            summary={
                "epoch": state["epoch"],
                "world_size": info.world_size,
                "recipe": to_dict(cfg),
            },
            keep=cfg.checkpoint.keep,
        )
    barrier(info)
    return path


__all__ = ["RECIPE_NAME", "TrainResult", "default_run_dir", "train"]
