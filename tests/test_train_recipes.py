"""Every recipe in recipes/ loads, validates, builds its model and trains one step on tiny
generated data; recipe errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from anytok.data.synthetic import make_dataset
from anytok.registry import get_arch
from anytok.train import RecipeError, load_recipe, read_log, train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "recipes")) for p in RECIPES]

# Small inputs the full-size architectures accept, so one step is quick on a CPU; the
# architecture, losses and discriminators are the recipe's own.
SMALL_INPUTS = {
    "audio": ["data.segment_seconds=0.1"],
    "image": ["data.crop_size=[64,64]"],
    "video": ["data.crop_size=[32,32]", "data.clip_frames=5"],
}
ONE_STEP = [
    "train.steps=1",
    "train.batch_size=1",
    "train.grad_accum=1",
    "data.num_workers=0",
    "discriminator.start_step=0",  # exercise the discriminator in the one step
    "log.val_every=0",
    "log.samples_every=0",
    "log.progress=false",
    "checkpoint.every=0",
    "checkpoint.final=false",  # full-size checkpoints would be hundreds of MB
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe_data")
    make_dataset("audio", root / "audio", 4, seconds=0.3)
    make_dataset("image", root / "image", 4, size=64)
    make_dataset("video", root / "video", 4, size=32, frames=9)
    return {m: root / m for m in ("audio", "image", "video")}


def modality_of(recipe: Path) -> str:
    return recipe.parent.name


def test_recipes_exist_for_each_family_with_tiny_variants() -> None:
    names = {p.stem for p in RECIPES}
    for full in ("seanet_fsq_24khz", "cnn_fsq_256", "cnn3d_fsq_4x8x8"):
        assert full in names and f"{full}_tiny" in names


#: Recipes that fine-tune a trained model with its encoder frozen: they need model.init_from.
FINE_TUNING = ("vqgan_posttrain", "titok_pixel")


def init_from_same_model(recipe: Path, overrides: list[str], monkeypatch) -> list[str]:
    """Make ``model.init_from=same-configuration`` (in ``overrides``) load an untrained model
    of the recipe's own configuration (built in memory: a full-size export would be hundreds
    of MB), for the recipes of :data:`FINE_TUNING`."""
    if recipe.stem not in FINE_TUNING:
        return overrides
    import anytok
    import anytok.train.loop as loop
    from anytok.train.config import to_dict

    cfg = load_recipe(recipe, overrides)

    def load_model(name: str):
        assert name == "same-configuration"
        return anytok.create_model(
            cfg.model.name, tiny=cfg.model.tiny, seed=1, **to_dict(cfg.model.config)
        )

    monkeypatch.setattr(loop, "load_model", load_model)
    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_validates(recipe: Path, data: dict[str, Path]) -> None:
    modality = modality_of(recipe)
    if recipe.stem in FINE_TUNING:  # a decoder tuned against a random frozen encoder: refused
        with pytest.raises(RecipeError, match=r"model\.init_from: required"):
            load_recipe(recipe, [f"data.train={data[modality]}"])
    extra = ["model.init_from=runs/trained/exported"] if recipe.stem in FINE_TUNING else []
    cfg = load_recipe(recipe, [f"data.train={data[modality]}", *extra])
    assert cfg.description
    assert get_arch(cfg.model.name).modality == modality  # recipes/<modality>/ matches
    assert cfg.model.tiny == recipe.stem.endswith("_tiny")
    if not cfg.model.tiny:
        with pytest.raises(RecipeError, match=r"data\.train.*required"):
            load_recipe(recipe)  # real recipes do not guess where data lives


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_trains_one_step(
    recipe: Path, data: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    modality = modality_of(recipe)
    overrides = [f"data.train={data[modality]}", *ONE_STEP]
    if recipe.stem in FINE_TUNING:
        overrides.append("model.init_from=same-configuration")
    if not recipe.stem.endswith("_tiny"):
        overrides += SMALL_INPUTS[modality]
        builder = get_arch(load_recipe(recipe, overrides).model.name).builder
        if modality == "image" and getattr(builder, "resize", None) == "cover_crop":
            overrides.append("model.config.resolution=[64,64]")  # fixed-size ViTs: match the crop
    overrides = init_from_same_model(recipe, overrides, monkeypatch)
    result = train(recipe, tmp_path / "run", overrides=overrides)
    assert result.step == 1
    cfg = load_recipe(recipe, overrides)
    expected = get_arch(cfg.model.name).config(tiny=cfg.model.tiny, **cfg.model.config)
    assert result.model.anytok_config == expected
    logged = [r for r in read_log(tmp_path / "run") if "loss/total" in r]
    assert len(logged) == 1 and logged[0]["step"] == 1
    if cfg.discriminator.networks:
        assert "loss/discriminator" in logged[0]  # the GAN part ran
    assert any(key.startswith("codebook/perplexity/") for key in logged[0])
    assert (tmp_path / "run" / "recipe.yaml").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()  # checkpoint.final=false


def test_unknown_key_bad_type_and_choices(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "audio" / "seanet_fsq_24khz_tiny.yaml"
    ok = ["data.train=/x"]
    with pytest.raises(RecipeError, match=r"seanet_fsq_24khz_tiny.yaml: .*trian"):
        load_recipe(recipe, [*ok, "trian.steps=3"])
    with pytest.raises(RecipeError, match=r"train\.steps"):
        load_recipe(recipe, [*ok, "train.steps=many"])
    with pytest.raises(RecipeError, match=r"train\.precision: one of"):
        load_recipe(recipe, [*ok, "train.precision=fp8"])
    for key, value in (
        ("reduction", "max"),
        ("feature_matching_norm", "l2"),
        ("mel_scale", "mels"),
    ):
        with pytest.raises(RecipeError, match=rf"loss\.{key}: one of \("):
            load_recipe(recipe, [*ok, f"loss.{key}={value}"])
    with pytest.raises(RecipeError, match=r"loss\.mel_floor: must be positive"):
        load_recipe(recipe, [*ok, "loss.mel_floor=0"])
    with pytest.raises(RecipeError, match=r"optimizer\.name: 'Adamm' is not an optimizer"):
        load_recipe(recipe, [*ok, "optimizer.name=Adamm"])
    with pytest.raises(RecipeError, match=r"discriminator\.networks\[0\]\.name"):
        load_recipe(recipe, [*ok, "discriminator.networks=[{name: vgg}]"])
    with pytest.raises(RecipeError, match=r"model\.name: unknown model"):
        load_recipe(recipe, [*ok, "model.name=nope"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(recipe, ["train.steps"])
    with pytest.raises(RecipeError, match="space after each colon"):
        load_recipe(recipe, [*ok, "model.config.quantizer={name:fsq,levels:[5,5]}"])
    with pytest.raises(RecipeError, match="perceptual_weights"):
        load_recipe(ROOT / "recipes/image/cnn_fsq_256.yaml", [*ok, "loss.perceptual=1.0"])
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # each was accepted: a zero / negative crop then reported every good image as bad
        ("data.crop_size=[0,0]", r"data\.crop_size: .*>= 1"),
        ("data.crop_size=[-256,-256]", r"data\.crop_size: .*>= 1"),
        ("data.crop_size=[16,0]", r"data\.crop_size: .*>= 1"),
        ("data.augment.hflip=1.5", r"data\.augment\.hflip: .*\[0, 1\]"),
        ("data.augment.hflip=-1", r"data\.augment\.hflip: .*\[0, 1\]"),
        ("data.augment.gain_db=[6,-6]", r"data\.augment\.gain_db: .*low <= high"),
    ],
)
def test_data_values_out_of_range_are_refused(override: str, message: str) -> None:
    recipe = ROOT / "recipes" / "image" / "cnn_fsq_256_tiny.yaml"
    with pytest.raises(RecipeError, match=rf"cnn_fsq_256_tiny.yaml: {message}"):
        load_recipe(recipe, ["data.train=/x", override])
    for fine in ("data.augment.hflip=1", "data.augment.gain_db=[-6,-6]", "data.crop_size=[1,1]"):
        load_recipe(recipe, ["data.train=/x", fine])


def test_segment_shorter_than_a_sample_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    """data.segment_seconds=1e-5 gave 0-sample segments (empty batches) without a word."""
    recipe = ROOT / "recipes" / "audio" / "seanet_fsq_24khz_tiny.yaml"
    overrides = [f"data.train={data['audio']}", *ONE_STEP, "data.segment_seconds=0.00001"]
    with pytest.raises(
        RecipeError, match=r"^data: .*data\.segment_seconds .*0 samples at 24000 Hz"
    ):
        train(recipe, tmp_path / "run", overrides=overrides)


def test_base_chain_and_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "model: {name: cnn_fsq_256}\ntrain: {steps: 7, batch_size: 3}\n"
    )
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {steps: 9}\ndata: {train: /d}\n")
    cfg = load_recipe(tmp_path / "b.yaml", ["train.batch_size=5"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.model.name) == (9, 5, "cnn_fsq_256")
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "c.yaml")


def test_existing_run_dir_needs_resume(data: dict[str, Path], tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "image" / "cnn_fsq_256_tiny.yaml"
    overrides = [f"data.train={data['image']}", *ONE_STEP]
    train(recipe, tmp_path / "run", overrides=overrides)
    with pytest.raises(RecipeError, match="already holds a run; pass --resume"):
        train(recipe, tmp_path / "run", overrides=overrides)
    with pytest.raises(RecipeError, match="fewer than train.batch_size"):
        train(recipe, tmp_path / "other", overrides=[*overrides, "train.batch_size=64"])


def test_shipped_recipes_are_found_by_name_and_a_file_wins(tmp_path: Path, monkeypatch) -> None:
    from anytok.train.config import BUNDLED_RECIPES, bundled_recipes, find_recipe

    # The checkout's recipes/ is the package's (one set of files, shipped in the wheel).
    assert (ROOT / "recipes").resolve() == BUNDLED_RECIPES
    assert bundled_recipes() == sorted(i.removesuffix(".yaml") for i in IDS)
    shipped = BUNDLED_RECIPES / "audio" / "seanet_fsq_24khz_tiny.yaml"
    monkeypatch.chdir(tmp_path)  # away from the checkout: names only
    for name in ("seanet_fsq_24khz_tiny", "audio/seanet_fsq_24khz_tiny",
                 "recipes/audio/seanet_fsq_24khz_tiny.yaml"):  # fmt: skip
        assert find_recipe(name) == shipped, name
    own = tmp_path / "seanet_fsq_24khz_tiny"  # a file of that name wins over the shipped one
    own.write_text("base: " + str(shipped) + "\ntrain:\n  steps: 7\n")
    assert find_recipe("seanet_fsq_24khz_tiny").resolve() == own
    cfg = load_recipe("seanet_fsq_24khz_tiny", ["data.train=/data"])
    assert cfg.train.steps == 7
    with pytest.raises(RecipeError, match=r"recipe not found: nope .*shipped: audio/dac_44khz"):
        find_recipe("nope")
