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

    portable = getattr(model, "portable_config", None)  # e.g. TiTok's proxy by config, not path
    if callable(portable):
        config = portable(config)
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

    Files are written to temporaries and renamed, so a crash never leaves half a checkpoint;
    a failure (a configuration value JSON cannot hold, a full disk) removes the temporaries.

    Raises:
        CheckpointError: the configuration (or ``extra``) holds a value JSON cannot store
            (paths are stored as strings).
    """
    out = Path(directory).expanduser()
    config = model_config(model)
    if extra:
        config["extra"] = extra
    try:  # before touching the disk: a value JSON cannot hold must not leave debris
        text = json.dumps(config, indent=2, sort_keys=True, default=_json_value)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{out / CONFIG_NAME}: the configuration of {config['architecture']!r} cannot be "
            f"written as JSON ({err}); pass plain values (str, numbers, lists, dicts)"
        ) from err
    out.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    try:
        with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as handle:
            temporaries.append(Path(handle.name))
            handle.write(text)
        weights_tmp = out / (WEIGHTS_NAME + ".tmp")
        temporaries.append(weights_tmp)
        # save_model deduplicates tied tensors, which save_file would refuse.
        save_model(model, str(weights_tmp), metadata={"format": "pt", "anytok": "1"})
        os.replace(weights_tmp, out / WEIGHTS_NAME)
        os.replace(temporaries[0], out / CONFIG_NAME)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
    return out


def _json_value(value: Any) -> Any:
    """Paths in a configuration (a REPA teacher folder ...) are stored as strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``."""
    path = Path(directory).expanduser() / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    for key in ("architecture", "config"):
        if key not in config:
            raise CheckpointError(f"{path}: missing the {key!r} entry")
    if not isinstance(config["architecture"], str):
        raise CheckpointError(
            f"{path}: 'architecture' must be a name, got {config['architecture']!r}"
        )
    if not isinstance(config["config"], dict):
        raise CheckpointError(
            f"{path}: 'config' must be an object of arguments, got "
            f"{type(config['config']).__name__}"
        )
    return config


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing or unexpected key, or a shape mismatch, is an
    error that lists them all."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(set(state) & set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in common
        if state[k].shape != expected[k].shape
    ]
    # Another float precision is cast on load (a bf16 export loads into an fp32 model), but
    # floats where the model keeps integers (or the reverse) would be truncated silently.
    wrong_kind = [
        f"{k}: checkpoint {state[k].dtype} vs model {expected[k].dtype}"
        for k in common
        if _dtype_kind(state[k].dtype) != _dtype_kind(expected[k].dtype)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if wrong_kind:
        problems.append("dtype mismatches: " + "; ".join(wrong_kind))
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the model:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def _pickle_hint(path: Path) -> str:
    """A hint when ``path`` starts like a ``torch.save`` file (a zip archive or a raw pickle)
    rather than safetensors (an 8-byte header length, then JSON)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return ""
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return (
            "; it looks like a torch.save / pickle file, which anytok never opens (unpickling "
            "runs code): where you trust it, convert it to safetensors "
            "(safetensors.torch.save_file of its state dict) and save the checkpoint again"
        )
    return ""


def load_checkpoint(
    directory: str | os.PathLike[str], *, device: str = "cpu", source: str | None = None
) -> nn.Module:
    """Build the architecture named in ``config.json`` and load ``model.safetensors`` strictly.

    ``source`` is what the model's token files name as their tokenizer (``registry_name``):
    by default the resolved directory; ``"hf-hub:org/name"`` for a Hub snapshot, whose cache
    path is of this machine only. The directory itself is kept as ``anytok_checkpoint_dir``.
    """
    from anytok.registry import UnknownModelError, attach_identity, get_arch

    directory = Path(directory).expanduser()
    config = read_config(directory)
    config_file = directory / CONFIG_NAME
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} beside {CONFIG_NAME}")
    arch = config["architecture"]
    if "." in arch:  # a registry tag is no architecture: config.json names the bare one
        raise CheckpointError(
            f"{config_file}: 'architecture' must be a bare registered name, got {arch!r} "
            "(an 'arch.tag' names weights, not an architecture)"
        )
    try:
        info = get_arch(arch)
    except UnknownModelError as err:
        raise CheckpointError(
            f"{config_file}: architecture {arch!r} is not registered in this anytok "
            "(a typo, or a checkpoint of a newer version?); `anytok list` shows every name"
        ) from err
    try:
        model = info.builder(**config["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{config_file}: cannot build {arch!r} from its 'config' ({type(err).__name__}: {err})"
        ) from err
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{weights}: cannot read safetensors file ({err}){_pickle_hint(weights)}"
        ) from err
    # save_model drops tied duplicates; tie them back before the strict comparison.
    # (Empty tensors are skipped: they may all report the same data pointer.)
    own = model.state_dict()
    saved_by_storage = {
        value.data_ptr(): name for name, value in own.items() if name in state and value.numel()
    }
    for name, value in own.items():
        if name not in state and value.numel() and value.data_ptr() in saved_by_storage:
            state[name] = state[saved_by_storage[value.data_ptr()]]
    load_state_dict_strict(model, state, str(weights))
    attach_identity(
        model,
        info.name,
        config["config"],
        tag=config.get("trained_from") or "local",
        source=source or str(directory.resolve()),
    )
    model.anytok_checkpoint_dir = str(directory.resolve())  # type: ignore[assignment]
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
    # "hf-hub:org/name" loads the default revision: another revision's tokens name the folder.
    return load_checkpoint(path, source=f"hf-hub:{repo_id}" if revision is None else None)
