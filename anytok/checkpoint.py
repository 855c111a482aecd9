"""Checkpoints: a directory with ``config.json`` (architecture + arguments) and
``model.safetensors``. Loading is strict and never executes code from the file.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from anytok.files import set_new_file_mode

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
        for tmp in temporaries:
            set_new_file_mode(tmp)
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
    if not path.parent.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
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
    version = config.get("format", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: 'format' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this anytok reads "
            f"({FORMAT_VERSION}); upgrade anytok"
        )
    return config


def check_argument_types(
    builder: Callable[..., Any], arguments: dict[str, Any], where: str
) -> None:
    """Refuse ``config.json`` arguments whose JSON type cannot be what the builder's default
    is: a string or null for a flag (``"causal": "false"`` is truthy), a string for a number
    (``"sample_rate": "24000"`` fails only at the first encode), a number for a string or a
    list. Arguments without a default, or with ``None`` as default, are left to the builder;
    a float where the default is an int is allowed (recipes set ``dropout: 0.1`` over ``0``).

    Raises:
        CheckpointError: naming ``where``, the argument, its value and the type expected.
    """
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # no signature to go by
        return
    for name, value in arguments.items():
        parameter = parameters.get(name)
        if parameter is None or parameter.default in (inspect.Parameter.empty, None):
            continue
        default = parameter.default
        if isinstance(default, bool):
            fits, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int | float):
            fits = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
            expected = "a number"
        elif isinstance(default, str):
            fits, expected = value is None or isinstance(value, str), "a string"
        elif isinstance(default, list | tuple):
            fits, expected = value is None or isinstance(value, list | tuple), "a list"
        else:
            continue
        if not fits:
            raise CheckpointError(
                f"{where}: argument {name!r} must be {expected} (its default is {default!r}), "
                f"got {value!r}"
            )


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing or unexpected key, or a shape mismatch, is an
    error that lists them all."""
    check_state_matches(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def check_state_matches(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str
) -> None:
    """Raise a :class:`CheckpointError` listing every missing or unexpected key, shape
    mismatch, and float-vs-integer mismatch of ``state`` against ``expected``."""
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


def build_loaded(
    build: Callable[[], nn.Module],
    state: dict[str, torch.Tensor],
    source: str,
    *,
    droppable: Callable[[str], bool] | None = None,
    cannot_build: str | None = None,
) -> nn.Module:
    """``build()`` a model and load ``state`` into it strictly (see :func:`load_state_dict_strict`).

    The model is first built with its parameters on the meta device, so no random
    initialisation runs and no second copy of the weights is held: the checkpoint's tensors
    become the parameters (cast to the model's dtypes, as a copy would). A model that computes
    something from its parameter values while it is built, or keeps a parameter outside the
    state dict, cannot be built that way; it is built normally and the weights are copied in.
    ``droppable(key)`` says which checkpoint keys the model may lack without an error.
    Tied weights (saved once by ``save_model``) are tied again. With ``cannot_build``, a
    builder's ``TypeError`` / ``ValueError`` / ``KeyError`` (arguments it refuses) becomes a
    :class:`CheckpointError` with that prefix.
    """
    model = _build_without_init(build)
    if model is not None:
        _load_assigned(model, state, source, droppable)
        if not _has_meta_tensors(model):
            return model
    try:
        model = build()  # the fallback: random initialisation, then a copy of the weights
    except (TypeError, ValueError, KeyError) as err:
        if cannot_build is None:
            raise
        raise CheckpointError(f"{cannot_build} ({type(err).__name__}: {err})") from err
    own = model.state_dict()
    state = _without_droppable(state, own, droppable)
    # Empty tensors are skipped: they may all report the same data pointer.
    saved_by_storage = {
        value.data_ptr(): name for name, value in own.items() if name in state and value.numel()
    }
    for name, value in own.items():
        if name not in state and value.numel() and value.data_ptr() in saved_by_storage:
            state[name] = state[saved_by_storage[value.data_ptr()]]
    load_state_dict_strict(model, state, source)
    return model


def _build_without_init(build: Callable[[], nn.Module]) -> nn.Module | None:
    """``build()`` with every parameter on the meta device (buffers stay real, as the
    model computes them), or ``None`` where the builder needs parameter values."""
    try:
        with _META_PARAMETERS.active():
            return build()
    except Exception:  # any failure (.item() on meta, ...): the caller builds it normally,
        return None  # where an error of the config itself surfaces as it always did


class _MetaParameters:
    """Registers the parameters a thread creates inside :meth:`active` on the meta device.

    Hand-written rather than accelerate's ``init_empty_weights``: that one wraps every
    registered parameter anew, so a parameter assigned to a second module
    (``out.weight = embed.weight``) stops being shared, and its patch of
    ``nn.Module.register_parameter`` acts on every thread, so a model another thread builds
    meanwhile gets meta parameters. Here a parameter already on meta is registered as it is,
    a moved one keeps its class, ``requires_grad`` and attributes, and only threads inside
    :meth:`active` are affected (the patch is installed while any thread is inside).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._original: Callable[..., None] | None = None
        self._inside = threading.local()

        def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            self._register(module, name, param)

        self._patched = register_parameter  # a function, so it binds to the module as a method

    @contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._original = nn.Module.register_parameter
                nn.Module.register_parameter = self._patched  # type: ignore[method-assign]
            self._users += 1
        depth = getattr(self._inside, "depth", 0)
        self._inside.depth = depth + 1
        try:
            yield
        finally:
            self._inside.depth = depth
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    nn.Module.register_parameter = self._original  # type: ignore[method-assign]

    def _register(self, module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        inside = getattr(self._inside, "depth", 0) > 0
        if inside and param is not None and not param.is_meta:
            moved = type(param)(param.data.to("meta"), requires_grad=param.requires_grad)
            moved.__dict__.update(param.__dict__)
            param = moved
        assert self._original is not None
        self._original(module, name, param)


_META_PARAMETERS = _MetaParameters()


def _load_assigned(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    droppable: Callable[[str], bool] | None,
) -> None:
    """Make ``state``'s tensors the model's parameters and buffers (cast to the model's
    dtypes), keeping every tie: names that shared one tensor share one again."""
    own = model.state_dict(keep_vars=True)
    state = _without_droppable(state, own, droppable)
    aliases: dict[int, list[str]] = {}
    for name, value in own.items():
        aliases.setdefault(id(value), []).append(name)
    groups = [names for names in aliases.values() if len(names) > 1]
    for names in groups:  # a tie saved under one of its names serves all of them
        saved = next((name for name in names if name in state), None)
        for name in names:
            if saved is not None and name not in state:
                state[name] = state[saved]
    check_state_matches(own, state, source)
    # Kinds match (checked above); precisions are the model's, as a copy would make them.
    cast = {name: value.to(own[name].dtype) for name, value in state.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    for names in groups:
        tensors = _owners(model, names)
        (first_module, first_leaf, first_kind), *rest = tensors
        shared = getattr(first_module, first_kind)[first_leaf]
        for module, leaf, kind in rest:
            getattr(module, kind)[leaf] = shared


def _owners(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, str, str]]:
    """(module, attribute, ``"_parameters"`` or ``"_buffers"``) of each state-dict name."""
    found = []
    for name in names:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path)
        found.append((module, leaf, "_parameters" if leaf in module._parameters else "_buffers"))
    return found


def _has_meta_tensors(model: nn.Module) -> bool:
    """Whether a parameter, buffer or plain tensor attribute of any module is still meta."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += [value for value in vars(module).values() if isinstance(value, torch.Tensor)]
    return any(tensor.is_meta for tensor in tensors)


def _without_droppable(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    droppable: Callable[[str], bool] | None,
) -> dict[str, torch.Tensor]:
    """``state`` less the keys the model lacks that ``droppable`` lets go (a copy)."""
    if droppable is None:
        return dict(state)
    return {k: v for k, v in state.items() if k in own or not droppable(k)}


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def read_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; an unreadable file is a
    :class:`CheckpointError` naming it (and saying so when it looks like a pickle)."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: cannot read safetensors file ({err}){_pickle_hint(path)}"
        ) from err


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
    check_argument_types(info.builder, config["config"], str(config_file))
    model = build_loaded(
        lambda: info.builder(**config["config"]),
        read_weights(weights, device),
        str(weights),
        cannot_build=f"{config_file}: cannot build {arch!r} from its 'config'",
    )
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
