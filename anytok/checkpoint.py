"""Checkpoints: a directory with ``config.json`` (architecture + arguments) and
``model.safetensors``. Loading is strict and never executes code from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is."""


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` content of a model built through the registry."""
    arch = getattr(model, "anytok_arch", None)
    config = getattr(model, "anytok_config", None)
    if arch is None or config is None:
        raise CheckpointError(
            f"{type(model).__name__} was not built through anytok's registry, so its "
            "architecture is unknown: build it with anytok.create_model(...) or anytok.load(...)"
        )
    from anytok import __version__

    return {
        "format": FORMAT_VERSION,
        "architecture": arch,
        "config": config,
        "trained_from": getattr(model, "anytok_tag", None),
        "anytok_version": __version__,
    }


def save_checkpoint(
    model: nn.Module, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Files are written to temporaries and renamed, so a crash never leaves half a checkpoint.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(model)
    if extra:
        config["extra"] = extra
    with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        config_tmp = handle.name
    weights_tmp = out / (WEIGHTS_NAME + ".tmp")
    # save_model deduplicates tied tensors, which save_file would refuse.
    save_model(model, str(weights_tmp), metadata={"format": "pt", "anytok": "1"})
    os.replace(weights_tmp, out / WEIGHTS_NAME)
    os.replace(config_tmp, out / CONFIG_NAME)
    return out


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    for key in ("architecture", "config"):
        if key not in config:
            raise CheckpointError(f"{path}: missing the {key!r} entry")
    return config


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing or unexpected key, or a shape mismatch, is an
    error that lists them all."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the model:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(directory: str | os.PathLike[str], *, device: str = "cpu") -> nn.Module:
    """Build the architecture named in ``config.json`` and load ``model.safetensors`` strictly."""
    from anytok.registry import attach_identity, get_arch

    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} beside {CONFIG_NAME}")
    info = get_arch(config["architecture"])
    model = info.builder(**config["config"])
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: cannot read safetensors file ({err})") from err
    # save_model drops tied duplicates; tie them back before the strict comparison.
    saved_by_storage = {
        value.data_ptr(): name for name, value in model.state_dict().items() if name in state
    }
    for name, value in model.state_dict().items():
        if name not in state and value.data_ptr() in saved_by_storage:
            state[name] = state[saved_by_storage[value.data_ptr()]]
    load_state_dict_strict(model, state, str(weights))
    attach_identity(
        model,
        info.name,
        config["config"],
        tag=config.get("trained_from") or "local",
        source=str(directory.resolve()),
    )
    return model


def push_to_hub(
    model: nn.Module, repo_id: str, *, private: bool = False, token: str | None = None
) -> str:
    """Upload a model as an anytok checkpoint to the Hugging Face Hub; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tmp)
        api.upload_folder(repo_id=repo_id, folder_path=tmp)
    return f"https://huggingface.co/{repo_id}"


def pull_from_hub(repo_id: str, *, revision: str | None = None) -> nn.Module:
    """Download (or take from the cache) an anytok checkpoint from the Hub and load it."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    return load_checkpoint(path)
