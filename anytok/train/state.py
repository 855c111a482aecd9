"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``<run>/checkpoints/step_000123/`` holding

======================  ==================================================================
``config.json``,        the generator, as :func:`anytok.checkpoint.save_checkpoint` writes
``model.safetensors``   it (``anytok.load`` opens the folder directly)
``ema/``                the EMA generator, in the same format (when the EMA is on)
``discriminator.*``     discriminator weights (``safetensors``)
``train_state.*``       optimizers, schedulers, balancer, data position, counters: a tree
                        whose tensors are safetensors entries and whose structure is JSON
                        in the file's metadata (optimizer state dicts are flattened so)
``buffers.*``           non-persistent buffers (e.g. codebook usage windows), for an exact
                        resume
``rng_rank<r>.*``       RNG states of rank ``r`` (torch CPU/CUDA as uint8 tensors, Python
                        and NumPy states as JSON + tensors)
``state.json``          a readable summary (step, epoch, time); written last
======================  ==================================================================

Everything is written into a temporary folder that is renamed into place, and
``checkpoints/latest`` is replaced atomically afterwards, so a run killed at any moment
leaves its previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save, save_file, save_model
from torch import Tensor, nn

from anytok.checkpoint import WEIGHTS_NAME, CheckpointError, save_checkpoint
from anytok.files import set_new_file_mode

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TREE_KEY = "anytok_tree"

# --------------------------------------------------------------------------- tree codec
# A "tree" is nested dicts / lists / tuples of JSON scalars, tensors and numpy arrays: what
# optimizer and scheduler state dicts, RNG states and counters are made of. Tensors go to
# safetensors under their path; the structure, with markers in their place, goes to JSON.


def pack_tree(tree: Any) -> tuple[dict[str, Tensor], str]:
    """Split ``tree`` into ``({path: tensor}, json_structure)``.

    Dicts with non-string keys (optimizer states are keyed by parameter index) and tuples
    are marked so :func:`unpack_tree` restores them exactly.
    """
    tensors: dict[str, Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            # clone: safetensors refuses tensors that share storage
            tensors[path] = value.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(
                value.astype(np.int64) if value.dtype == np.uint32 else value.copy()
            )
            return {"__ndarray__": path, "dtype": str(value.dtype)}
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: encode(v, f"{path}/{k}") for k, v in value.items()}
            return {"__pairs__": [[k, encode(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at {path or '/'} in a checkpoint")

    structure = encode(tree, "")
    return tensors, json.dumps(structure)


def unpack_tree(tensors: Mapping[str, Tensor], structure: str) -> Any:
    """Inverse of :func:`pack_tree`."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
        if "__pairs__" in value:
            return {
                (k if not isinstance(k, list) else tuple(k)): decode(v)
                for k, v in value["__pairs__"]
            }
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        return {k: decode(v) for k, v in value.items()}

    return decode(json.loads(structure))


def save_tree(path: str | os.PathLike[str], tree: Any) -> None:
    """Write a tree as one safetensors file (structure in its metadata)."""
    tensors, structure = pack_tree(tree)
    save_file(tensors, str(path), metadata={_TREE_KEY: structure})


def tree_bytes(tree: Any) -> bytes:
    """The bytes :func:`save_tree` would write (to send between ranks)."""
    tensors, structure = pack_tree(tree)
    return save(tensors, metadata={_TREE_KEY: structure})


def load_tree(path: str | os.PathLike[str]) -> Any:
    """Read a tree written by :func:`save_tree`."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        if _TREE_KEY not in metadata:
            raise ValueError(f"{path}: not an anytok training-state file")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return unpack_tree(tensors, metadata[_TREE_KEY])


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch CPU (and CUDA), Python ``random`` and NumPy."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))


# --------------------------------------------------------------------------- buffers


def volatile_buffers(module: nn.Module) -> dict[str, Tensor]:
    """Buffers registered with ``persistent=False`` (absent from ``state_dict``), such as a
    quantizer's code-usage window: not part of a model, but part of an exact resume."""
    persistent = set(module.state_dict())
    return {name: buf for name, buf in module.named_buffers() if name not in persistent}


def _restore_buffers(module: nn.Module, saved: Mapping[str, Tensor]) -> None:
    own = dict(module.named_buffers())
    for name, value in saved.items():
        if name in own:
            own[name].copy_(value)


# --------------------------------------------------------------------------- checkpoints


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run (``state.json`` present), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or else the newest complete one."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "state.json").is_file():
            return named
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    # Renames are atomic but only durable once the data is on disk; sync before renaming.
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_training_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: nn.Module,
    ema: nn.Module | None,
    discriminator: nn.Module | None,
    train_state: Mapping[str, Any],
    rng_files: Mapping[int, bytes],
    summary: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint (rank 0 only) and prune all but the newest ``keep``.

    Args:
        model: the generator (a registry model, unwrapped from DDP / compile).
        ema: the EMA generator (same architecture) or None.
        discriminator: unwrapped discriminator or None.
        train_state: tree of optimizer / scheduler / balancer states and counters.
        rng_files: ``{rank: bytes}`` from :func:`tree_bytes` of each rank's :func:`rng_state`.
        summary: JSON for ``state.json``.
        keep: checkpoints kept.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_checkpoint(model, tmp)
    buffers: dict[str, Any] = {"model": volatile_buffers(model)}
    if ema is not None:
        save_checkpoint(ema, tmp / "ema")
        buffers["ema"] = volatile_buffers(ema)
    if discriminator is not None:
        save_model(discriminator, str(tmp / "discriminator.safetensors"))
        set_new_file_mode(tmp / "discriminator.safetensors")  # safetensors writes 0o600
    for name, tree in (("buffers", buffers), ("train_state", dict(train_state))):
        save_tree(tmp / f"{name}.safetensors", tree)
        set_new_file_mode(tmp / f"{name}.safetensors")
    for rank, data in rng_files.items():
        (tmp / f"rng_rank{rank}.safetensors").write_bytes(data)
    _write_json(tmp / "state.json", {**summary, "step": step, "saved_at": time.time()})
    _fsync_tree(tmp)
    if final.exists():  # the same step saved again (a resumed run): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _replace_text(root / LATEST, final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete what a process killed while writing a checkpoint left in ``checkpoints/``: its
    ``.tmp-step_*-<pid>`` folder and the ``.latest.tmp`` pointer. Call it at setup on the
    writing rank only, before any checkpoint is written (then no live writer owns them).
    Returns the removed paths."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    stale = sorted(
        p for p in root.iterdir() if p.name.startswith(".tmp-") or p.name == f".{LATEST}.tmp"
    )
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def read_summary(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (step, epoch, world size, the recipe it trained with)."""
    path = Path(checkpoint) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint's summary ({err})") from err


def _load_weights(module: nn.Module, path: Path) -> None:
    """safetensors' ``load_model`` (it restores tied weights), strictly; a mismatch is a
    :class:`~anytok.checkpoint.CheckpointError` naming the file, not a torch traceback."""
    try:
        load_model(module, str(path), strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(
            f"{path}: does not fit the model this recipe builds ({detail[:400]}); resume with "
            "the run's own recipe (its recipe.yaml), or start another --run-dir"
        ) from err


def load_training_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    model: nn.Module,
    ema: nn.Module | None,
    discriminator: nn.Module | None,
    rank: int,
    warn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load weights, buffers and this rank's RNG state; return the ``train_state`` tree
    (the caller restores optimizers and schedulers from it).

    Raises:
        CheckpointError: a weights file that does not match the model.
    """
    folder = Path(checkpoint)
    _load_weights(model, folder / WEIGHTS_NAME)
    buffers = load_tree(folder / "buffers.safetensors")
    _restore_buffers(model, buffers.get("model", {}))
    if ema is not None:
        if (folder / "ema" / WEIGHTS_NAME).is_file():
            _load_weights(ema, folder / "ema" / WEIGHTS_NAME)
            _restore_buffers(ema, buffers.get("ema", {}))
        else:
            warn(f"{folder} has no EMA weights; the EMA starts from the current weights")
            ema.load_state_dict(model.state_dict())
    if discriminator is not None:
        path = folder / "discriminator.safetensors"
        if path.is_file():
            _load_weights(discriminator, path)
        else:
            warn(f"{folder} has no discriminator weights; it starts from scratch")
    rng_file = folder / f"rng_rank{rank}.safetensors"
    if not rng_file.is_file():
        warn(f"{folder} has no RNG state for rank {rank} (another world size?); using rank 0's")
        rng_file = folder / "rng_rank0.safetensors"
    set_rng_state(load_tree(rng_file))
    return load_tree(folder / "train_state.safetensors")


__all__ = [
    "CHECKPOINTS",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_checkpoint",
    "load_tree",
    "pack_tree",
    "read_summary",
    "remove_stale_temporaries",
    "rng_state",
    "save_training_checkpoint",
    "save_tree",
    "set_rng_state",
    "step_dir_name",
    "tree_bytes",
    "unpack_tree",
    "volatile_buffers",
]
