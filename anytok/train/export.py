"""Export a training run's generator as a plain anytok checkpoint (``anytok.load`` opens it)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from anytok.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    build_loaded,
    load_checkpoint,
    read_config,
    read_weights,
    save_checkpoint,
)
from anytok.registry import UnknownModelError, attach_identity, create_model, get_arch
from anytok.train.loop import RECIPE_NAME
from anytok.train.state import latest_checkpoint


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    use_ema: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the EMA (or raw) generator of a run's newest checkpoint to ``out_dir``.

    Args:
        run_dir: a folder ``anytok train`` wrote (``~`` is expanded, as in every path here).
        out_dir: destination; gets ``config.json`` and ``model.safetensors``. The config's
            ``extra`` records the run, step, which weights, and the recipe.
        use_ema: export the EMA weights (the usual choice) or the raw ones.
        checkpoint: a specific ``checkpoints/step_*`` folder instead of the newest.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: the run has no checkpoint yet.
        ValueError: ``use_ema`` for a run trained without an EMA.
    """
    run = Path(run_dir).expanduser()
    if checkpoint is None and not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    source = Path(checkpoint).expanduser() if checkpoint is not None else latest_checkpoint(run)
    if source is None or not (source / "state.json").is_file():
        raise FileNotFoundError(
            f"{run}: no complete checkpoint to export (see {run / 'checkpoints'})"
        )
    weights = source / "ema" if use_ema else source
    if use_ema and not (weights / "config.json").is_file():
        raise ValueError(
            f"{source} has no EMA weights (trained with train.ema_decay: 0); export the raw "
            "weights instead (use_ema=False, or --no-ema)"
        )
    model = _load_without_teachers(weights)
    summary = json.loads((source / "state.json").read_text())
    step = int(summary["step"])
    model.anytok_tag = f"{run.resolve().name}.step{step}"  # type: ignore[assignment]
    recipe_file = run / RECIPE_NAME
    recipe = OmegaConf.to_container(OmegaConf.load(recipe_file)) if recipe_file.is_file() else None
    extra = {
        "run_dir": str(run.resolve()),
        "step": step,
        "weights": "ema" if use_ema else "raw",
        "recipe": recipe,
    }
    return save_checkpoint(model, out_dir, extra=extra)


TEACHER_OPTIONS = ("semantic_teacher", "repa")
# the weights those options add: SemanticRegularizer projectors (options.semantic, decoder.repa)
TEACHER_WEIGHTS = re.compile(r"(^|\.)(semantic|repa)\.projector\.")


def _teacherless(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` with the frozen-teacher options set to None, and the options it cleared."""
    drop = [key for key in TEACHER_OPTIONS if config.get(key)]
    return {**config, **dict.fromkeys(drop)}, drop


def _load_without_teachers(directory: Path) -> nn.Module:
    """Load a checkpoint as the model without its teachers, built from ``config.json`` with
    the teacher options cleared (so the teacher folders are never read: a run copied to
    another machine exports), and its weights less the teachers' projectors."""
    meta = read_config(directory)
    config, dropped = _teacherless(meta["config"])
    if not dropped:
        return load_checkpoint(directory)
    cannot_build = f"{directory / CONFIG_NAME}: cannot build {meta['architecture']!r} without "
    cannot_build += ", ".join(dropped)
    try:
        info = get_arch(meta["architecture"])
    except UnknownModelError as err:
        raise CheckpointError(f"{cannot_build} ({type(err).__name__}: {err})") from err
    file = directory / WEIGHTS_NAME
    slim = build_loaded(  # only the teachers' projectors may go; any other surplus key fails
        lambda: info.builder(**config),
        read_weights(file),
        str(file),
        droppable=lambda key: TEACHER_WEIGHTS.search(key) is not None,
        cannot_build=cannot_build,
    )
    attach_identity(slim, info.name, config, tag=meta.get("trained_from") or "local")
    return slim


def _without_teachers(model: nn.Module) -> nn.Module:
    """Frozen teachers (``semantic_teacher``, FlexTok's ``repa``) are training-only folders
    outside the checkpoint: rebuild without them and drop their projectors, so an export
    loads where the teacher does not exist."""
    config, drop = _teacherless(dict(model.anytok_config))  # type: ignore[arg-type]
    if not drop:
        return model
    slim = create_model(model.anytok_arch, **config)  # type: ignore[arg-type]
    keep = slim.state_dict().keys()
    slim.load_state_dict({k: v for k, v in model.state_dict().items() if k in keep}, strict=True)
    slim.anytok_tag = model.anytok_tag  # type: ignore[assignment]
    return slim


__all__ = ["export_run"]
