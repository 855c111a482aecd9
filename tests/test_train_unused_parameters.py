"""DDP (torchrun) with ``find_unused_parameters=False`` needs a gradient for every parameter in
every step, else the next step fails ("Expected to have finished reduction in the prior
iteration"). Models that drop quantizer levels in training (DAC's quantizer dropout, Mimi's
acoustic levels, EnCodec's random bandwidth) or never use a branch leave some without one, so
their recipes set ``train.find_unused_parameters``."""

from __future__ import annotations

import random
from numbers import Real
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchrun_ranks import as_torchrun_rank, free_port

from anytok.data.synthetic import make_dataset
from anytok.registry import create_model
from anytok.train import load_recipe, read_log, train
from anytok.train.config import Recipe, to_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "recipes")) for p in RECIPES]
TINY = [p for p in RECIPES if p.stem.endswith("_tiny")]

pytestmark = pytest.mark.usefixtures("one_thread")


def drops_levels_in_training(model: nn.Module) -> bool:
    """Whether a training step may run fewer quantizer levels than the model has, read from
    the built model: DAC's ``quantizer_dropout`` (a probability), ``quantize_dropout`` of
    ResidualVQ / ResidualFSQ / Mimi's split quantizer, EnCodec's ``train_random_bandwidth``."""
    for module in model.modules():
        rate = getattr(module, "quantizer_dropout", 0.0)
        if isinstance(rate, Real) and rate > 0:
            return True
        if getattr(module, "quantize_dropout", False) is True:
            return True
        if getattr(module, "train_random_bandwidth", False) is True:
            return True
    return False


def recipe_model(recipe: Path) -> tuple[Recipe, nn.Module]:
    # (fine-tuning recipes require model.init_from; the model here is built, never loaded)
    cfg = load_recipe(recipe, ["data.train=unused", "model.init_from=unused"])
    kwargs = to_dict(cfg.model.config)
    try:  # no weights needed: the meta device builds the full-size models in a fraction
        with torch.device("meta"):
            model = create_model(cfg.model.name, tiny=cfg.model.tiny, **kwargs)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors
        # (nonzero; torchaudio's mel filterbank mixes a CPU tensor in once dynamo has run)
        model = create_model(cfg.model.name, tiny=cfg.model.tiny, **kwargs)
    return cfg, model


def test_level_dropout_is_detected() -> None:
    """The check below is not vacuous: the recipes that drop levels are found."""
    dropping = {p.stem for p in RECIPES if p.stem.split("_")[0] in {"dac", "mimi", "encodec"}}
    assert len(dropping) == 6
    for recipe in RECIPES:
        if recipe.stem in dropping:
            assert drops_levels_in_training(recipe_model(recipe)[1]), recipe


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipes_with_level_dropout_find_unused_parameters(recipe: Path) -> None:
    cfg, model = recipe_model(recipe)
    if drops_levels_in_training(model):
        assert cfg.train.find_unused_parameters, (
            f"{recipe}: the model drops quantizer levels in training; set "
            "train.find_unused_parameters: true (DDP fails otherwise)"
        )


def _input(cfg: Recipe, model: nn.Module, modality: str) -> torch.Tensor:
    data = cfg.data
    if modality == "audio":
        samples = int(data.segment_seconds * model.sample_rate)
        return torch.randn(2, model.channels, samples) * 0.1
    size = list(data.crop_size) if data.crop_size else [32, 32]
    if modality == "image":
        return torch.rand(2, 3, *size) * 2 - 1
    return torch.rand(2, 3, data.clip_frames, *size) * 2 - 1


@pytest.mark.parametrize("recipe", TINY, ids=[p.stem for p in TINY])
def test_parameters_without_gradient_need_find_unused_parameters(recipe: Path) -> None:
    """The ground truth for the tiny recipes: a few training steps (the reconstruction and the
    model's own losses); a parameter left without a gradient in any of them needs the flag."""
    cfg = load_recipe(recipe, ["data.train=unused"])
    torch.manual_seed(0)
    random.seed(0)  # quantizer dropout draws from Python's random
    model = create_model(cfg.model.name, tiny=True, **to_dict(cfg.model.config)).train()
    x = _input(cfg, model, recipe.parent.name)
    unused: set[str] = set()
    for _ in range(8):
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss = out.reconstruction.float().square().mean() + sum(out.losses.values())
        loss.backward()
        unused |= {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    if unused:
        assert cfg.train.find_unused_parameters, (
            f"{recipe}: {sorted(unused)[:4]} get no gradient in some training steps; set "
            "train.find_unused_parameters: true (DDP fails otherwise)"
        )


def _dac_worker(rank: int, world: int, port: int, data: str, run_dir: str) -> None:
    as_torchrun_rank(rank, world, port)
    overrides = [
        f"data.train={data}",
        "train.steps=5",
        "train.batch_size=2",
        "discriminator.start_step=100",
        "log.every=1",
        "log.val_every=0",
        "log.samples_every=0",
        "log.progress=false",
        "checkpoint.every=0",
        "checkpoint.final=false",
    ]
    train(ROOT / "recipes/audio/dac_44khz_tiny.yaml", run_dir, overrides=overrides, device="cpu")


@pytest.mark.slow
def test_dac_tiny_trains_on_two_gloo_ranks(tmp_path: Path) -> None:
    """Quantizer dropout under DDP: the run failed at step 4 without the recipe's flag."""
    data = tmp_path / "data"
    make_dataset("audio", data, 8, seconds=0.3)
    run_dir = tmp_path / "run"
    mp.spawn(_dac_worker, args=(2, free_port(), str(data), str(run_dir)), nprocs=2, join=True)
    assert [r["step"] for r in read_log(run_dir) if "loss/total" in r] == [1, 2, 3, 4, 5]
