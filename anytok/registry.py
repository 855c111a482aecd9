"""One registry for every tokenizer: architectures and their named checkpoints.

Names follow timm's ``arch.tag`` convention: the architecture (a variant with a full default
configuration), then which weights. ``anytok.load("arch")`` uses the architecture's default
tag; ``anytok.load("arch.tag")`` a specific one; ``anytok.load("path/to/dir")`` a checkpoint
directory; ``anytok.load("hf-hub:org/name")`` a checkpoint on the Hugging Face Hub.

Weights of a tag are searched, in order, in

1. ``$ANYTOK_HOME/checkpoints/<arch>.<tag>/`` (default ``~/.cache/anytok``),
2. the Hugging Face cache (``huggingface_hub``; respects ``HF_HOME`` / ``HF_HUB_CACHE``),
3. the Hugging Face Hub, unless offline (``HF_HUB_OFFLINE=1`` or ``ANYTOK_OFFLINE=1``).

The built-in tag ``untrained`` builds the architecture with a fixed-seed random
initialisation: it exists for smoke tests and demos, and everything that reports on a model
says "untrained" plainly when it is used.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

UNTRAINED = "untrained"
MODALITIES = ("audio", "image", "video")

#: The tokenizer each modality uses when none is named (CLI, demo).
DEFAULT_MODELS: dict[str, str] = {
    "audio": "seanet_fsq_24khz",
    "image": "cnn_fsq_256",
    "video": "cnn3d_fsq_4x8x8",
}


class WeightsNotFoundError(FileNotFoundError):
    """The weights of a named checkpoint are nowhere this machine can reach."""


class UnknownModelError(KeyError):
    """A name that is neither a registered architecture, a tag of one, nor a directory."""

    def __str__(self) -> str:  # KeyError quotes its message; people should read plain text
        return str(self.args[0])


@dataclass(frozen=True)
class PretrainedCfg:
    """Where one named set of weights lives and what it expects.

    Attributes:
        tag: the part after the dot in ``arch.tag``.
        hf_hub_id: ``"org/repo"`` on the Hugging Face Hub holding ``config.json`` and
            ``model.safetensors`` (anytok format), or ``None``.
        revision: Hub revision (branch, tag or commit).
        subfolder: folder inside the Hub repository.
        description: what these weights were trained on and how.
        license: the weights' license.
        importer: name of a converter (:func:`register_importer`) when the Hub repository
            holds another project's ``model.safetensors`` instead of an anytok checkpoint;
            :func:`load` then builds the architecture and converts the file's state dict.
            Such a tag is the architecture's default only when ``register`` names it.
    """

    tag: str
    hf_hub_id: str | None = None
    revision: str | None = None
    subfolder: str | None = None
    description: str = ""
    license: str | None = None
    importer: str | None = None

    @property
    def trained(self) -> bool:
        return self.tag != UNTRAINED


@dataclass
class ArchInfo:
    """A registered architecture: a builder plus its full default configuration.

    Attributes:
        name: architecture name (the part before the dot).
        modality: ``"audio"``, ``"image"`` or ``"video"``.
        builder: class or function called with the configuration as keyword arguments.
        default_config: the architecture's real, full-size configuration.
        description: one line saying what it is.
        paper: link to the paper or source the design follows.
        tiny_config: overrides that make a tiny variant for fast tests (same code paths).
        pretrained: named weights, by tag; ``untrained`` is always present.
        default_tag: the tag ``anytok.load(name)`` uses.
    """

    name: str
    modality: str
    builder: Callable[..., nn.Module]
    default_config: dict[str, Any]
    description: str
    paper: str = ""
    tiny_config: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, PretrainedCfg] = field(default_factory=dict)
    default_tag: str = UNTRAINED

    def config(self, tiny: bool = False, **overrides: Any) -> dict[str, Any]:
        """The default configuration, with the tiny overrides and then ``overrides`` applied."""
        config = copy.deepcopy(self.default_config)
        if tiny:
            config.update(copy.deepcopy(self.tiny_config))
        config.update(overrides)
        return config


_ARCHS: dict[str, ArchInfo] = {}

#: Converters of other projects' state dicts, by the name a :class:`PretrainedCfg` gives.
_IMPORTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {}


def register_importer(
    name: str, convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> None:
    """Make ``convert`` (another project's state dict -> an anytok model's) available to
    checkpoints registered with ``PretrainedCfg(importer=name)``."""
    if name in _IMPORTERS and _IMPORTERS[name] is not convert:
        raise ValueError(f"importer {name!r} is already registered")
    _IMPORTERS[name] = convert


def register(
    name: str,
    *,
    modality: str,
    description: str,
    default_config: Mapping[str, Any],
    paper: str = "",
    tiny_config: Mapping[str, Any] | None = None,
    pretrained: list[PretrainedCfg] | None = None,
    default_tag: str | None = None,
    builder: Callable[..., nn.Module] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an architecture; usable as a decorator or, with ``builder=``, directly.

    Example::

        @anytok.register("my_codec_24khz", modality="audio", description="...",
                         default_config={"channels": 32}, tiny_config={"channels": 4})
        class MyCodec(Tokenizer): ...
    """
    if modality not in MODALITIES:
        raise ValueError(f"register({name!r}): modality must be one of {MODALITIES}")
    if "." in name or "/" in name or not name:
        raise ValueError(f"register({name!r}): names may not be empty or contain '.' or '/'")
    tags = {cfg.tag: cfg for cfg in (pretrained or [])}
    tags.setdefault(UNTRAINED, PretrainedCfg(UNTRAINED, description="random initialisation"))
    # Imported weights (another project's) are opt-in: only anytok's own become the default.
    own = (t for t, cfg in tags.items() if t != UNTRAINED and not cfg.importer)
    chosen_default = default_tag or next(own, UNTRAINED)
    if chosen_default not in tags:
        raise ValueError(f"register({name!r}): default_tag {chosen_default!r} is not a tag")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHS and _ARCHS[name].builder is not fn:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHS[name] = ArchInfo(
            name=name,
            modality=modality,
            builder=fn,
            default_config=dict(default_config),
            description=description,
            paper=paper,
            tiny_config=dict(tiny_config or {}),
            pretrained=tags,
            default_tag=chosen_default,
        )
        return fn

    if builder is not None:
        decorate(builder)
    return decorate


def _ensure_families_imported() -> None:
    """Import the codec packages so their ``register`` calls have run."""
    import anytok.codecs  # noqa: F401


def list_models(modality: str | None = None, *, tags: bool = False) -> list[str]:
    """Registered architecture names (or every ``arch.tag`` with ``tags=True``), sorted."""
    _ensure_families_imported()
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"list_models: modality must be one of {MODALITIES}, got {modality!r}")
    archs = [a for a in _ARCHS.values() if modality is None or a.modality == modality]
    if not tags:
        return sorted(a.name for a in archs)
    return sorted(f"{a.name}.{t}" for a in archs for t in a.pretrained)


def close_names(word: str, names: Iterable[str], limit: int = 5) -> list[str]:
    """Names that ``word`` may have meant, best first: spelling (case and ``-``/``_`` ignored:
    ``encdec_24khz``, ``DAC-44khz``), then names sharing its first ``_`` part (``seanet``)."""

    def key(text: str) -> str:
        return text.lower().replace("-", "_")

    by_key = {key(n): n for n in sorted(names)}
    spelled = difflib.get_close_matches(key(word), list(by_key), n=limit, cutoff=0.75)
    close = [by_key[k] for k in spelled]
    head = key(word).split("_")[0]
    close += [n for k, n in by_key.items() if head and head in k and n not in close]
    return close[:limit]


def get_arch(name: str) -> ArchInfo:
    """The :class:`ArchInfo` of an architecture name (a ``.tag`` suffix is ignored)."""
    _ensure_families_imported()
    arch, _, _ = name.partition(".")
    if arch not in _ARCHS:
        close = close_names(arch, _ARCHS)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: not a registered architecture nor a checkpoint "
            f"directory.{hint} Run `anytok list` to see every name."
        )
    return _ARCHS[arch]


def resolve(name: str) -> tuple[ArchInfo, PretrainedCfg]:
    """Split ``arch[.tag]`` and look both up; the tag defaults to the arch's default tag."""
    info = get_arch(name)
    _, _, tag = name.partition(".")
    tag = tag or info.default_tag
    if tag not in info.pretrained:
        raise UnknownModelError(
            f"{info.name!r} has no checkpoint tagged {tag!r}; its tags are: "
            f"{', '.join(sorted(info.pretrained))}"
        )
    return info, info.pretrained[tag]


def create_model(name: str, *, tiny: bool = False, seed: int = 0, **overrides: Any) -> nn.Module:
    """Build an architecture with random weights (fixed ``seed``), without loading anything.

    ``tiny=True`` applies the architecture's tiny test overrides.
    """
    info = get_arch(name)
    check_argument_names(info, overrides)
    config = info.config(tiny=tiny, **overrides)
    model = _build_seeded(info, config, seed)
    attach_identity(model, info.name, config, tag=UNTRAINED)
    return model


def check_argument_names(info: ArchInfo, arguments: Mapping[str, Any]) -> None:
    """Refuse arguments the architecture's builder does not take, naming the close ones
    (``n_filter``: ``n_filters``) and every name it takes, instead of the builder's bare
    ``TypeError`` (``__init__() got an unexpected keyword argument``).

    Raises:
        TypeError: an argument is not a parameter of the builder.
    """
    try:
        parameters = inspect.signature(info.builder).parameters
    except (TypeError, ValueError):  # no signature to go by: the builder decides
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    names = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [a for a in arguments if a not in parameters]
    if not unknown:
        return
    hints = [
        f"{a} (did you mean {', '.join(c)}?)"
        if (c := difflib.get_close_matches(a, names, n=3, cutoff=0.75))
        else a
        for a in unknown
    ]
    raise TypeError(
        f"{info.name} takes no argument {'; '.join(hints)}; its arguments are "
        f"{', '.join(sorted(names))}"
    )


def _build_seeded(info: ArchInfo, config: dict[str, Any], seed: int) -> nn.Module:
    """``info.builder(**config)`` under a fixed seed, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return info.builder(**config)


def attach_identity(
    model: nn.Module, arch: str, config: dict[str, Any], tag: str, source: str | None = None
) -> None:
    """Record on the model what it is, so checkpoints, token files and reports can say so.

    ``source`` is where a model was loaded from, as :func:`load` takes it: the checkpoint
    directory, or ``"hf-hub:org/name"`` (``None`` for registry names); token files name it so
    ``anytok decode`` finds the same weights.
    """
    model.anytok_arch = arch  # type: ignore[assignment]
    model.anytok_config = copy.deepcopy(config)  # type: ignore[assignment]
    model.anytok_tag = tag  # type: ignore[assignment]
    model.anytok_source = source  # type: ignore[assignment]


def anytok_home() -> Path:
    """Root of anytok's local files: ``$ANYTOK_HOME`` or ``~/.cache/anytok``."""
    return Path(os.environ.get("ANYTOK_HOME", Path.home() / ".cache" / "anytok"))


def is_offline() -> bool:
    """True when the Hub must not be contacted."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("ANYTOK_OFFLINE", ""))
    return any(v.strip().lower() in {"1", "true", "yes", "on"} for v in flags)


def local_checkpoint(info: ArchInfo, cfg: PretrainedCfg) -> Path:
    """Where an anytok checkpoint of ``arch.tag`` is looked for first:
    ``$ANYTOK_HOME/checkpoints/<arch>.<tag>``."""
    return anytok_home() / "checkpoints" / f"{info.name}.{cfg.tag}"


def find_weights(info: ArchInfo, cfg: PretrainedCfg) -> Path:
    """Return the directory holding ``config.json`` + ``model.safetensors`` for a tag.

    Raises:
        WeightsNotFoundError: naming the checkpoint, every place searched, and what to do.
    """
    full_name = f"{info.name}.{cfg.tag}"
    searched: list[str] = []
    local = local_checkpoint(info, cfg)
    searched.append(f"local directory {local}")
    if (local / "config.json").is_file() and (local / "model.safetensors").is_file():
        return local
    if cfg.hf_hub_id:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        # an imported repository needs only its weights (its config.json is its project's)
        patterns = ["model.safetensors"] if cfg.importer else ["config.json", "model.safetensors"]
        if cfg.subfolder:
            patterns = [f"{cfg.subfolder}/{p}" for p in patterns]
        searched.append(f"Hugging Face cache for {cfg.hf_hub_id}")
        try:
            path = snapshot_download(
                cfg.hf_hub_id,
                revision=cfg.revision,
                allow_patterns=patterns,
                local_files_only=True,
            )
            return Path(path) / (cfg.subfolder or "")
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            pass
        if not is_offline():
            searched.append(f"Hugging Face Hub {cfg.hf_hub_id}")
            try:
                path = snapshot_download(
                    cfg.hf_hub_id, revision=cfg.revision, allow_patterns=patterns
                )
                return Path(path) / (cfg.subfolder or "")
            except Exception as err:  # network errors come in many types
                searched[-1] += f" (failed: {type(err).__name__}: {err})"
        else:
            searched.append("Hugging Face Hub skipped: offline (HF_HUB_OFFLINE/ANYTOK_OFFLINE)")
    places = "\n  - ".join(searched)
    raise WeightsNotFoundError(
        f"no weights found for checkpoint {full_name!r}. Searched:\n  - {places}\n"
        f"To fix: put config.json and model.safetensors (anytok format) in {local}, "
        + (f"or download {cfg.hf_hub_id} while online, " if cfg.hf_hub_id else "")
        + f"or use '{info.name}.{UNTRAINED}' for random weights."
    )


def import_checkpoint(info: ArchInfo, cfg: PretrainedCfg, directory: Path) -> nn.Module:
    """Build ``info`` (default configuration) and load ``directory/model.safetensors``, another
    project's weights, through the importer ``cfg`` names (strict: every key must match)."""
    from anytok.checkpoint import CheckpointError, build_loaded, read_weights

    if cfg.importer not in _IMPORTERS:
        raise UnknownModelError(
            f"{info.name}.{cfg.tag}: importer {cfg.importer!r} is not registered "
            f"(known: {', '.join(sorted(_IMPORTERS)) or 'none'})"
        )
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise WeightsNotFoundError(
            f"{info.name}.{cfg.tag}: {directory} has no model.safetensors (the importer "
            f"{cfg.importer!r} reads safetensors only; pickled weights are never opened)"
        )
    tensors = read_weights(weights)  # an unreadable file: a CheckpointError naming it
    try:
        state = _IMPORTERS[cfg.importer](tensors)
    except (KeyError, ValueError) as err:  # a key or shape the converter does not know
        reason = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise CheckpointError(
            f"{weights}: not {info.name}.{cfg.tag}'s published weights as the importer "
            f"{cfg.importer!r} reads them ({reason}); delete the file to download it again, "
            "or load another folder by path"
        ) from err
    config = info.config()
    source = f"{weights} (converted by {cfg.importer!r})"
    model = build_loaded(lambda: _build_seeded(info, config, seed=0), state, source)
    attach_identity(model, info.name, config, tag=cfg.tag)
    return model


def is_checkpoint_path(text: str) -> bool:
    """Whether :func:`load` reads ``text`` as a directory rather than a registry name.

    Anything path-like (a separator, a leading ``.`` or ``~``) is a directory. A bare word is
    a directory when one by that name exists here, unless it is also a registered name and
    the directory holds no ``config.json``: a folder ``./divot`` of outputs must not hide the
    architecture ``divot``.
    """
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if any(s in text for s in seps) or text.startswith((".", "~")):
        return True
    folder = Path(text)
    if not folder.is_dir():
        return False
    if (folder / "config.json").is_file():
        return True
    _ensure_families_imported()
    return text.partition(".")[0] not in _ARCHS


#: the weight dtypes a tokenizer runs in, by every name ``load(dtype=...)`` accepts
WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
#: the dtypes themselves (``encode`` / ``decode`` refuse weights of any other)
RUN_DTYPES = frozenset(WEIGHT_DTYPES.values())


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``load``'s ``dtype``: fp32, bf16 or fp16 (a ``torch.dtype`` or a name), else ``None``.

    Raises:
        ValueError: any other dtype (fp64 among them: quantizers and samplers compute in
            fp32, and autocast has no fp64), naming the argument.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in WEIGHT_DTYPES:
            return WEIGHT_DTYPES[key]
    elif dtype in RUN_DTYPES:
        return dtype
    raise ValueError(
        f"dtype: expected float32, bfloat16 or float16 (or one of {sorted(WEIGHT_DTYPES)}), "
        f"got {dtype!r}"
    )


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    eval_mode: bool = True,
) -> nn.Module:
    """Load a tokenizer by registry name (``arch`` or ``arch.tag``), directory, or Hub id.

    Args:
        name_or_path: ``"arch"``, ``"arch.tag"``, a checkpoint directory (``~`` is
            expanded; a bare word names a directory only when no registered name says
            otherwise, see :func:`is_checkpoint_path`), or ``"hf-hub:org/name"``.
        device: where to put the model (``"auto"``: CUDA when available; a device this
            machine lacks is a :class:`~anytok.devices.DeviceError`).
        dtype: parameter dtype: fp32 (``None``), bf16 or fp16, as a ``torch.dtype`` or its
            name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"fp16"``, ``"float32"``);
            bf16 / fp16 models run under autocast.
        eval_mode: put the model in eval mode (the default for encoding).
    """
    from anytok.checkpoint import load_checkpoint
    from anytok.devices import parse_device

    target = parse_device(device, option="device")  # before any download or weight load
    weight_dtype = parse_dtype(dtype)
    text = os.fspath(name_or_path)
    if text.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download

        repo = text.removeprefix("hf-hub:")
        try:
            path = snapshot_download(
                repo,
                allow_patterns=["config.json", "model.safetensors"],
                local_files_only=is_offline(),
            )
        except Exception as err:
            if is_offline():
                raise WeightsNotFoundError(
                    f"checkpoint {text!r}: {repo} is not in the Hugging Face cache, and the Hub "
                    "is skipped: offline (HF_HUB_OFFLINE/ANYTOK_OFFLINE). Download it while "
                    "online, or load its folder by path"
                ) from err
            from anytok.pipeline import error_line

            raise WeightsNotFoundError(
                f"could not get checkpoint {text!r} from the Hugging Face cache or Hub: "
                f"{error_line(err)}"
            ) from err
        # Token files name the Hub id, loadable anywhere, not this machine's cache folder.
        model = load_checkpoint(path, source=text)
    elif is_checkpoint_path(text):
        model = load_checkpoint(Path(text).expanduser())
    else:
        info, cfg = resolve(text)
        if cfg.tag == UNTRAINED:
            model = create_model(info.name)
        else:
            path = find_weights(info, cfg)
            if cfg.importer and path != local_checkpoint(info, cfg):
                model = import_checkpoint(info, cfg, path)
            else:
                model = load_checkpoint(path)
                if model.anytok_arch != info.name:
                    from anytok.checkpoint import CONFIG_NAME, CheckpointError

                    raise CheckpointError(
                        f"{path / CONFIG_NAME}: holds a {model.anytok_arch!r} checkpoint, "
                        f"not one of {info.name!r} (asked for {info.name}.{cfg.tag})"
                    )
            attach_identity(model, info.name, model.anytok_config, tag=cfg.tag)
    model = model.to(device=target)
    if weight_dtype is not None:
        model = model.to(dtype=weight_dtype)
    return model.eval() if eval_mode else model.train()
