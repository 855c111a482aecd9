"""Recipes: YAML files (data, not code) checked against one schema.

The dataclasses below are the schema and the defaults, the single source of truth for what a
recipe may say; OmegaConf merges ``schema <- base recipe <- recipe <- command-line
overrides`` and rejects unknown keys and wrong types with the key's full name.

A recipe may start with ``base: other.yaml`` (relative to the recipe's folder) to override
another recipe, e.g. a tiny CI variant of a full recipe. Values may use OmegaConf
interpolation (``${train.steps}``).
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRECISIONS = ("bf16", "fp32")
SCHEDULES = ("cosine", "constant")


class RecipeError(ValueError):
    """A recipe that cannot be run as written: the message names the file and the key."""


@dataclass
class ModelConfig:
    """The tokenizer to train: a registry architecture, its tiny variant, overrides."""

    name: str = MISSING  # registry architecture, e.g. seanet_fsq_24khz
    tiny: bool = False  # apply the architecture's tiny test configuration first
    config: dict[str, Any] = field(default_factory=dict)  # constructor overrides
    init_from: str | None = None  # start from these weights: arch.tag, a folder, hf-hub:...


@dataclass
class AugmentConfig:
    """Random augmentation of training items (see :class:`anytok.data.Augment`)."""

    random_crop: bool = True  # random segment / crop / clip position
    hflip: float = 0.0  # probability of a horizontal flip (image, video)
    gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # audio gain range
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # zoom range before cropping


@dataclass
class DataConfig:
    """Training and validation data, and how items are cut."""

    train: Any = MISSING  # folder, JSONL manifest or file, or a list of them
    val: Any = None  # the same; None: take val_fraction of train by hash of path
    val_fraction: float = 0.0
    segment_seconds: float = 1.0  # audio segment length
    crop_size: list[int] | None = None  # image / video (height, width); None: the model's
    clip_frames: int = 17  # video frames per clip (1 + k * temporal factor is exact)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 2
    max_attempts: int = 16  # files tried per item before giving up (bad files are replaced)


@dataclass
class BalancerConfig:
    """EnCodec's gradient balancer over the losses on the reconstruction."""

    enabled: bool = False
    total_norm: float = 1.0
    ema_decay: float = 0.999


@dataclass
class LossConfig:
    """Loss weights (0 switches a term off) and their settings.

    Reconstruction terms: ``l1``, ``l2``, ``stft`` (multi-resolution STFT, audio), ``mel``
    (multi-scale log-mel, audio), ``msspec`` (EnCodec's multi-scale mel, audio),
    ``perceptual`` (VGG features, image / video; needs
    ``perceptual_weights``). Adversarial terms (once the discriminator starts):
    ``adversarial``, ``feature_matching``. Every entry of the model's
    ``TokenizerOutput.losses`` (quantizer, diffusion ...) is added with weight
    ``aux.get(name, 1.0)``.

    ``reduction`` says how each multi-part term combines its parts (STFT sizes, mel windows,
    sub-discriminators, feature maps): ``mean`` (EnCodec: adding a part keeps the scale) or
    ``sum`` (HiFi-GAN, DAC). ``feature_matching_norm``: ``relative`` divides each map's L1
    by the real map's mean magnitude (EnCodec), ``none`` keeps the plain L1 (HiFi-GAN,
    DAC). ``mel_scale``: ``htk`` (torchaudio's filterbank; Vocos) or ``slaney`` (librosa's,
    area-normalised; DAC).
    """

    l1: float = 0.0
    l2: float = 0.0
    stft: float = 0.0
    mel: float = 0.0
    msspec: float = 0.0  # EnCodec's multi-scale mel L1 + log-mel MSE (AudioCraft's msspec)
    perceptual: float = 0.0
    adversarial: float = 0.0
    feature_matching: float = 0.0
    gan: str = "hinge"  # hinge | hinge_nonsat | least_squares
    reduction: str = "mean"  # mean | sum over scales, sub-discriminators and feature maps
    feature_matching_norm: str = "relative"  # relative | none
    mel_scale: str = "htk"  # htk | slaney
    mel_floor: float = 1e-5  # mel magnitudes clamped below before the log (DAC 1e-5, Vocos 1e-7)
    aux: dict[str, float] = field(default_factory=dict)
    stft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    mel_windows: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_bins: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    perceptual_weights: str | None = None  # local safetensors of torchvision VGG16 features
    balancer: BalancerConfig = field(default_factory=BalancerConfig)


@dataclass
class OptimizerConfig:
    """A ``torch.optim`` optimizer with linear warmup and a cosine (or constant) schedule."""

    name: str = "AdamW"  # any class in torch.optim
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    # Parameters kept out of weight decay: "1d" (biases, norm gains: fewer than 2 dims) and
    # substrings of parameter names (e.g. "latent_tokens", "_pos"), as timm / TiTok do.
    no_decay: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)  # more constructor arguments
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    clip_grad_norm: float | None = None  # None: no clipping (the norm is still logged)


@dataclass
class DiscriminatorConfig:
    """GAN discriminators (none: train with reconstruction losses alone)."""

    networks: list[dict[str, Any]] = field(default_factory=list)  # [{name: msstft, ...}]
    start_step: int = 0  # generator steps before the adversarial losses start
    update_every: int = 1  # one discriminator update per this many generator steps
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class TrainConfig:
    """Length, batch, precision and the rest of the optimisation set-up."""

    steps: int = 100_000  # generator optimizer steps
    batch_size: int = 8  # items per rank per micro-batch
    grad_accum: int = 1  # micro-batches per step
    precision: str = "bf16"  # bf16: autocast on CUDA (fp32 elsewhere) | fp32
    compile: bool = False  # torch.compile the generator and discriminator
    seed: int = 0
    ema_decay: float = 0.999  # EMA of generator weights; 0 disables it
    find_unused_parameters: bool = False  # DDP option for models with unused branches


@dataclass
class LogConfig:
    """Logging cadence (in steps); 0 disables a periodic task."""

    every: int = 50  # scalars (mean over the window) to log.jsonl and TensorBoard
    val_every: int = 1000
    val_batches: int = 8
    samples_every: int = 1000  # reconstruction samples (WAV / PNG / MP4)
    num_samples: int = 4
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress: bool = True  # rich progress bar on a terminal (rank 0)


@dataclass
class CheckpointConfig:
    every: int = 1000  # 0: no periodic checkpoints
    keep: int = 3  # most recent checkpoints kept
    final: bool = True  # also write one at the last step


@dataclass
class Recipe:
    """A whole recipe. ``base`` is consumed while loading."""

    description: str = ""
    base: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


#: The recipes that ship inside the package (``recipes/`` in a checkout links here).
BUNDLED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def bundled_recipes() -> list[str]:
    """Names of the shipped recipes, ``<modality>/<name>`` (``audio/dac_44khz`` ...)."""
    return sorted(p.relative_to(BUNDLED_RECIPES).with_suffix("").as_posix()
                  for p in BUNDLED_RECIPES.glob("*/*.yaml"))  # fmt: skip


def find_recipe(recipe: str | os.PathLike[str]) -> Path:
    """A recipe file: ``recipe`` itself when it exists, else the shipped recipe of that name
    (``dac_44khz_tiny``, ``audio/dac_44khz_tiny`` or ``recipes/audio/dac_44khz_tiny.yaml``
    all name it), so a pip install trains from recipes without a checkout.

    Raises:
        RecipeError: neither a file nor a shipped recipe; the message lists the shipped ones.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removesuffix(".yml")
    name = name.removeprefix("recipes/")
    names = bundled_recipes()
    matches = [n for n in names if n == name or n.split("/", 1)[1] == name]
    if len(matches) == 1:
        return BUNDLED_RECIPES / f"{matches[0]}.yaml"
    short = {n.split("/", 1)[1]: n for n in names}
    close = difflib.get_close_matches(name.rsplit("/", 1)[-1], list(short), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(short[c] for c in close)}?" if close else ""
    raise RecipeError(
        f"recipe not found: {os.fspath(recipe)} is not a file nor a shipped recipe{hint} "
        f"(shipped: {', '.join(names)})"
    )


def _read_with_base(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """The recipe at ``path`` merged over its ``base`` chain."""
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"{path}: 'base' recipes form a cycle: {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise RecipeError(f"{path}: not a readable YAML recipe ({err})") from err
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, not a list")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    parent = _read_with_base(path.parent / str(base), (*chain, path))
    return OmegaConf.merge(_without_renamed_components(parent, cfg), cfg)  # type: ignore[return-value]


def _without_renamed_components(base: DictConfig, top: DictConfig) -> DictConfig:
    """``base`` with every component of ``model.config`` that ``top`` renames removed, so
    merging ``top`` replaces it instead of mixing two components' arguments.

    A component is a mapping with a ``name`` (a quantizer, ``fine_quantizer`` ...): over a
    VQ quantizer, ``model.config.quantizer={name: fsq, levels: [8, 5, 5]}`` must not keep
    ``codebook_size``. A mapping of the same name (or none) still merges key by key.
    """
    top_config = OmegaConf.select(top, "model.config")
    base_config = OmegaConf.select(base, "model.config")
    if not isinstance(top_config, DictConfig) or not isinstance(base_config, DictConfig):
        return base
    base = base.copy()

    def prune(old: DictConfig, new: DictConfig) -> None:
        for key, value in new.items_ex(resolve=False):
            before = old.get(key) if key in old else None
            if not isinstance(value, DictConfig) or not isinstance(before, DictConfig):
                continue
            if "name" in value and value.get("name") != before.get("name"):
                old[key] = None  # merged over, the new mapping replaces it whole
            else:
                prune(before, value)

    prune(base.model.config, top_config)
    return base


def load_recipe(
    recipe: str | os.PathLike[str] | DictConfig | dict[str, Any],
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Load a recipe file (or a mapping), apply ``key=value`` overrides, check it.

    Args:
        recipe: a YAML path or a shipped recipe's name (:func:`find_recipe`), or an
            already built mapping / DictConfig.
        overrides: dotted overrides such as ``["data.train=/data/speech", "train.steps=500"]``.

    Returns:
        The merged recipe, with every key of the schema present.

    Raises:
        RecipeError: unreadable file, unknown key, wrong type, missing required value, or a
            value outside its choices; the message names the source and the key.
    """
    source = str(recipe) if isinstance(recipe, (str, os.PathLike)) else "<recipe>"
    try:
        if isinstance(recipe, (str, os.PathLike)):
            loaded: DictConfig = _read_with_base(find_recipe(recipe))
        else:
            loaded = OmegaConf.create(recipe)  # type: ignore[assignment]
            loaded.pop("base", None)
        for item in overrides:
            if "=" not in item:
                raise RecipeError(f"override {item!r} is not of the form key=value")
        try:
            cli = OmegaConf.from_dotlist(list(overrides))
        except yaml.YAMLError as err:  # OmegaConf parses override values as YAML
            raise RecipeError(
                f"cannot parse the overrides {list(overrides)} ({str(err).splitlines()[0]}); "
                "YAML flow mappings need a space after each colon: key={a: 1, b: [2, 3]}"
            ) from err
        loaded = _without_renamed_components(loaded, cli)
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), loaded, cli)
    except OmegaConfBaseException as err:
        raise RecipeError(f"{source}: {_omegaconf_message(err)}") from err
    assert isinstance(merged, DictConfig)
    validate(merged, source)
    return merged


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    # OmegaConf appends "full_key: ... object_type=..." lines; keep the sentence and the key.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = getattr(err, "full_key", None)
    text = lines[0] if lines else type(err).__name__
    return f"{text} (key: {key})" if key else text


def _check(condition: bool, source: str, key: str, problem: str) -> None:
    if not condition:
        raise RecipeError(f"{source}: {key}: {problem}")


def validate(cfg: DictConfig, source: str = "<recipe>") -> None:
    """Check what types alone cannot: choices, ranges, required values, known names."""
    from anytok.decoders.gan import (
        DISCRIMINATORS,
        FEATURE_MATCHING_NORMS,
        GAN_LOSSES,
        GAN_REDUCTIONS,
    )
    from anytok.registry import UnknownModelError, get_arch
    from anytok.train.losses import MEL_SCALES, RECONSTRUCTION_TERMS

    missing = sorted(OmegaConf.missing_keys(cfg))
    _check(not missing, source, ", ".join(missing), "required but not set (pass key=value)")
    try:
        get_arch(cfg.model.name)
    except UnknownModelError as err:
        raise RecipeError(f"{source}: model.name: {err}") from err
    model_config = cfg.model.config or {}
    frozen_encoder = bool(model_config.get("train_decoder_only")) or (
        model_config.get("training_stage") == "pixel"
    )
    _check(
        not frozen_encoder or bool(cfg.model.init_from),
        source,
        "model.init_from",
        "required when the encoder is frozen (model.config.train_decoder_only, or TiTok's "
        "training_stage=pixel): without trained weights the decoder would learn from a "
        "random encoder and quantizer; pass model.init_from=<an exported run>",
    )
    train = cfg.train
    _check(train.steps > 0, source, "train.steps", "must be positive")
    _check(train.batch_size > 0, source, "train.batch_size", "must be positive")
    _check(train.grad_accum > 0, source, "train.grad_accum", "must be positive")
    _check(train.precision in PRECISIONS, source, "train.precision", f"one of {PRECISIONS}")
    _check(0 <= train.ema_decay < 1, source, "train.ema_decay", "must be in [0, 1)")
    loss = cfg.loss
    _check(loss.gan in GAN_LOSSES, source, "loss.gan", f"one of {GAN_LOSSES}")
    _check(loss.reduction in GAN_REDUCTIONS, source, "loss.reduction", f"one of {GAN_REDUCTIONS}")
    _check(
        loss.feature_matching_norm in FEATURE_MATCHING_NORMS,
        source,
        "loss.feature_matching_norm",
        f"one of {FEATURE_MATCHING_NORMS}",
    )
    _check(loss.mel_scale in MEL_SCALES, source, "loss.mel_scale", f"one of {MEL_SCALES}")
    _check(loss.mel_floor > 0, source, "loss.mel_floor", "must be positive")
    for name in (*RECONSTRUCTION_TERMS, "adversarial", "feature_matching"):
        _check(cfg.loss[name] >= 0, source, f"loss.{name}", "weights cannot be negative")
    _check(
        cfg.loss.perceptual == 0 or cfg.loss.perceptual_weights is not None,
        source,
        "loss.perceptual_weights",
        "the perceptual loss needs a local VGG16 weights file (see docs/training.md)",
    )
    _check(
        len(cfg.loss.mel_windows) == len(cfg.loss.mel_bins),
        source,
        "loss.mel_bins",
        "needs one entry per loss.mel_windows entry",
    )
    _check(0 <= cfg.data.val_fraction < 1, source, "data.val_fraction", "must be in [0, 1)")
    _check(cfg.data.num_workers >= 0, source, "data.num_workers", "must be >= 0")
    _check(cfg.data.max_attempts >= 1, source, "data.max_attempts", "must be >= 1")
    _check(cfg.data.segment_seconds > 0, source, "data.segment_seconds", "must be positive")
    _check(cfg.data.clip_frames > 0, source, "data.clip_frames", "must be positive")
    crop = cfg.data.crop_size
    _check(crop is None or len(crop) == 2, source, "data.crop_size", "is [height, width]")
    _check(
        crop is None or all(side >= 1 for side in crop),
        source,
        "data.crop_size",
        f"[height, width] must both be >= 1 pixel, got {list(crop) if crop is not None else None}",
    )
    for key in ("gain_db", "scale"):
        _check(len(cfg.data.augment[key]) == 2, source, f"data.augment.{key}", "is [low, high]")
    _check(
        0 <= cfg.data.augment.hflip <= 1,
        source,
        "data.augment.hflip",
        f"is a probability in [0, 1], got {cfg.data.augment.hflip}",
    )
    _check(
        cfg.data.augment.gain_db[0] <= cfg.data.augment.gain_db[1],
        source,
        "data.augment.gain_db",
        f"must be [low, high] with low <= high (dB), got {list(cfg.data.augment.gain_db)}",
    )
    _check(
        1.0 <= cfg.data.augment.scale[0] <= cfg.data.augment.scale[1],
        source,
        "data.augment.scale",
        "must be [low, high] with 1 <= low <= high (a factor below 1 cannot cover the crop)",
    )
    optimizers = [("optimizer", cfg.optimizer)]
    disc = cfg.discriminator
    if disc.networks:
        optimizers.append(("discriminator.optimizer", disc.optimizer))
        _check(disc.update_every >= 1, source, "discriminator.update_every", "must be >= 1")
        _check(disc.start_step >= 0, source, "discriminator.start_step", "must be >= 0")
        for i, net in enumerate(disc.networks):
            _check(
                net.get("name") in DISCRIMINATORS,
                source,
                f"discriminator.networks[{i}].name",
                f"one of {', '.join(sorted(DISCRIMINATORS))}, got {net.get('name')!r}",
            )
    else:  # a GAN weight without a discriminator would be silently ignored
        for name in ("adversarial", "feature_matching"):
            _check(
                cfg.loss[name] == 0,
                source,
                f"loss.{name}",
                "needs a discriminator (discriminator.networks is empty); set it to 0 or add one",
            )
    for key, opt in optimizers:
        cls = getattr(torch.optim, opt.name, None)
        _check(
            inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer),
            source,
            f"{key}.name",
            f"{opt.name!r} is not an optimizer in torch.optim",
        )
        _check(opt.schedule in SCHEDULES, source, f"{key}.schedule", f"one of {SCHEDULES}")
        _check(opt.lr > 0, source, f"{key}.lr", "must be positive")
        _check(opt.warmup_steps >= 0, source, f"{key}.warmup_steps", "must be >= 0")
        _check(0 <= opt.min_lr_ratio <= 1, source, f"{key}.min_lr_ratio", "must be in [0, 1]")
        _check(
            opt.clip_grad_norm is None or opt.clip_grad_norm > 0,
            source,
            f"{key}.clip_grad_norm",
            "must be positive, or null for no clipping",
        )
    for key in ("every", "val_every", "samples_every", "val_batches", "num_samples"):
        _check(cfg.log[key] >= 0, source, f"log.{key}", "must be >= 0")
    _check(cfg.checkpoint.every >= 0, source, "checkpoint.every", "must be >= 0")
    _check(cfg.checkpoint.keep >= 1, source, "checkpoint.keep", "must be >= 1")


def data_sources(value: Any) -> list[str]:
    """``data.train`` / ``data.val`` as a list of paths (a single string is one source)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    return [str(v) for v in value]


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain, resolved ``dict`` of (part of) a recipe."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "AugmentConfig",
    "BalancerConfig",
    "CheckpointConfig",
    "DataConfig",
    "DiscriminatorConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "data_sources",
    "load_recipe",
    "to_dict",
    "validate",
]
