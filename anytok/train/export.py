"""Export a training run's generator as a plain anytok checkpoint (``anytok.load`` opens it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from anytok.checkpoint import load_checkpoint, save_checkpoint
from anytok.registry import create_model
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
    model = _without_teachers(load_checkpoint(weights))
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


def _without_teachers(model: nn.Module) -> nn.Module:
    """Frozen teachers (``semantic_teacher``, FlexTok's ``repa``) are training-only folders
    outside the checkpoint: rebuild without them and drop their projectors, so an export
    loads where the teacher does not exist."""
    config = dict(model.anytok_config)  # type: ignore[arg-type]
    drop = [key for key in ("semantic_teacher", "repa") if config.get(key)]
    if not drop:
        return model
    config.update(dict.fromkeys(drop))
    slim = create_model(model.anytok_arch, **config)  # type: ignore[arg-type]
    keep = slim.state_dict().keys()
    slim.load_state_dict({k: v for k, v in model.state_dict().items() if k in keep}, strict=True)
    slim.anytok_tag = model.anytok_tag  # type: ignore[assignment]
    return slim


__all__ = ["export_run"]
