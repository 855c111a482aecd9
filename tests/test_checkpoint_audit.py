"""Regressions from an audit of getting weights in and out: importer tags reading a damaged
Hub-cache file, hand-edited ``config.json`` values of the wrong type, newer formats."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import torch

import anytok
from anytok.checkpoint import CheckpointError, check_argument_types, save_checkpoint
from anytok.registry import get_arch, list_models

ROOT = Path(__file__).resolve().parents[1]


def test_an_importer_tag_names_a_damaged_hub_file(tmp_path, monkeypatch) -> None:
    """A transformers-layout file with a key the converter does not know raised a bare
    KeyError, and a truncated one a bare SafetensorError, neither naming the file."""
    transformers = pytest.importorskip("transformers")
    from hub_cache import put_in_hub_cache

    state = transformers.EncodecModel(transformers.EncodecConfig()).state_dict()
    put_in_hub_cache(
        tmp_path, "facebook/encodec_24khz", {**state, "extra.key": torch.zeros(1)}, monkeypatch
    )
    weights = next((tmp_path / "hub").rglob("model.safetensors"))
    with pytest.raises(
        CheckpointError, match=rf"^{weights}: not encodec_24khz.facebook's .*'extra.key'"
    ):
        anytok.load("encodec_24khz.facebook")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"^{weights}: cannot read safetensors file"):
        anytok.load("encodec_24khz.facebook")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ckpt") / "seanet"
    save_checkpoint(anytok.create_model("seanet_fsq_24khz", tiny=True), folder)
    return folder, json.loads((folder / "config.json").read_text())


def _edited(folder: Path, original: dict, tmp_path: Path, **changes) -> Path:
    """A copy of the checkpoint ``folder`` with ``changes`` to its ``config.json`` (a key
    ``format`` changes the top level, the others the builder's arguments)."""
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads(json.dumps(original))
    if "format" in changes:
        config["format"] = changes.pop("format")
    config["config"].update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"causal": "false"},
            r"'causal' must be true or false \(its default is True\), got 'false'",
        ),
        ({"causal": None}, r"'causal' must be true or false"),
        ({"sample_rate": "24000"}, r"'sample_rate' must be a number .* got '24000'"),
        ({"format": 2}, r"checkpoint format 2 is newer than this anytok reads \(1\)"),
        ({"format": "1"}, r"'format' must be a positive integer, got '1'"),
    ],
)
def test_hand_edited_config_values_of_the_wrong_type_are_named(
    saved, tmp_path, changes: dict, message: str
) -> None:
    """``"causal": "false"`` loaded as a causal model (a truthy string), ``null`` silently
    as a non-causal one, a string sample rate failed at the first encode, a newer format was
    read as format 1."""
    folder, original = saved
    edited = _edited(folder, original, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=rf"{edited / 'config.json'}: .*{message}"):
        anytok.load(edited)


def test_values_a_builder_takes_still_load(saved) -> None:
    """A float over an int default (a recipe's ``dropout: 0.1`` over ``0``), null over a
    number, and the file as saved all pass."""
    folder, _ = saved
    builder = get_arch("seanet_fsq_24khz").builder
    check_argument_types(builder, {"sample_rate": 24000.0, "channels": None}, "x")
    assert anytok.load(folder).sample_rate == 24000


def test_every_registered_and_recipe_config_passes_the_type_check() -> None:
    """The check refuses nothing anytok itself writes: every registered configuration (full
    and tiny) and every recipe's model."""
    from omegaconf import DictConfig, OmegaConf

    from anytok.train import RecipeError, load_recipe

    for name in list_models():
        info = get_arch(name)
        for tiny in (False, True):
            check_argument_types(info.builder, info.config(tiny=tiny), name)
    checked = 0
    for recipe in sorted(glob.glob(str(ROOT / "recipes" / "**" / "*.yaml"), recursive=True)):
        try:
            model = load_recipe(recipe, ["data.train=x"]).model
        except RecipeError:  # recipes that need a checkpoint to start from
            continue
        config = model.config
        overrides = OmegaConf.to_container(config) if isinstance(config, DictConfig) else {}
        info = get_arch(model.name)
        check_argument_types(info.builder, info.config(tiny=bool(model.tiny), **overrides), recipe)
        checked += 1
    assert checked >= 20
