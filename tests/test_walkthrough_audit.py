"""A new user's first afternoon: what the README and docs/ walk them through, and the
mistakes they make on the way (a misspelt model, recipe or option, an image given to an
audio tokenizer), each answered with an error that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import anytok
from anytok.checkpoint import CheckpointError, save_checkpoint
from anytok.media import MediaError, load_audio, save_image
from anytok.registry import UnknownModelError, get_arch
from anytok.train.config import RecipeError, find_recipe, load_recipe


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_token_files_and_checkpoints_get_the_umask_mode(tmp_path: Path, umask_022) -> None:
    # safetensors (>= 0.8) and tempfile create 0o600 files: token files and exported
    # checkpoints in a shared folder were unreadable to everyone else.
    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    tokens = model.encode(torch.zeros(1, 1, 2400))
    for name in ("a.tokens.safetensors", "a.tokens.npz"):
        assert tokens.save(tmp_path / name).stat().st_mode & 0o777 == 0o644
    out = save_checkpoint(model, tmp_path / "ckpt")
    for name in ("config.json", "model.safetensors"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    # a training checkpoint: its weights, EMA, discriminator and state files alike
    from anytok.train.state import save_training_checkpoint, tree_bytes

    step = save_training_checkpoint(
        tmp_path / "run", 1, model=model, ema=model, discriminator=torch.nn.Linear(2, 2),
        train_state={"step": torch.tensor(1)}, rng_files={0: tree_bytes({"a": torch.zeros(1)})},
        summary={}, keep=2,
    )  # fmt: skip
    files = [f for f in step.rglob("*") if f.is_file()]
    assert len(files) >= 8
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o644 for f in files}


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("encdec_24khz", "encodec_24khz"), ("DAC_44khz", "dac_44khz"), ("dac44khz", "dac_44khz")],
)
def test_a_misspelt_model_name_gets_the_close_names(typo: str, meant: str) -> None:
    with pytest.raises(UnknownModelError, match=f"Did you mean: {meant}"):
        get_arch(typo)


def test_a_missing_checkpoint_folder_is_named_as_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        anytok.load(tmp_path / "my_codec")


def test_a_misspelt_recipe_name_gets_the_close_ones() -> None:
    with pytest.raises(RecipeError, match="did you mean audio/seanet_fsq_24khz_tiny"):
        find_recipe("seanet_fsq_24khz_tin")


def test_an_image_given_to_an_audio_loader_says_which_tokenizer_takes_it(tmp_path: Path) -> None:
    save_image(tmp_path / "photo.png", torch.zeros(3, 8, 8))
    with pytest.raises(MediaError, match="is a PNG image, not audio: encode it with an image"):
        load_audio(tmp_path / "photo.png")
    # A PNG named .wav: there the extension is what is wrong.
    (tmp_path / "clip.wav").write_bytes((tmp_path / "photo.png").read_bytes())
    with pytest.raises(MediaError, match="wrong extension or wrong file"):
        load_audio(tmp_path / "clip.wav")


@pytest.mark.parametrize(
    ("argv", "usage", "meant"),
    [
        (["encode", "in", "-o", "out", "--batchsize", "4"], "anytok encode", "--batch-size"),
        (["list", "--modalty", "audio"], "anytok list", "--modality"),
        (["train", "seanet_fsq_24khz_tiny", "--run_dir", "runs/a"], "anytok train", "--run-dir"),
        (["bench", "-m", "x", "d", "-o", "r", "--max_items", "3"], "anytok bench", "--max-items"),
        (["export", "runs/a", "out", "--no_ema"], "anytok export", "--no-ema"),
    ],
)
def test_a_misspelt_option_names_the_close_one(
    argv: list[str], usage: str, meant: str, capsys
) -> None:
    from anytok.cli import main

    try:
        code = main(argv)
    except SystemExit as err:
        code = err.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"usage: {usage}" in err  # the subcommand's usage, not the top-level one
    assert f"did you mean {meant} for" in err


def test_command_help_states_the_defaults() -> None:
    from anytok.cli import build_parser
    from anytok.datasets.cli import export_tokens_parser
    from anytok.pipeline import LONG_ITEM_SECONDS

    def text(parser) -> str:  # the help as one line: argparse wraps it at the terminal width
        return " ".join(parser.format_help().split())

    commands = next(a for a in build_parser()._actions if a.choices and "encode" in a.choices)
    encode = text(commands.choices["encode"])
    assert "(default: 8)" in encode and "(default: safetensors)" in encode
    assert f"default {LONG_ITEM_SECONDS:g};" in encode
    assert "Encode media files or folders to token files." in encode  # a description
    assert "(default: demo_out)" in text(commands.choices["demo"])
    assert "(default: flatten)" in text(export_tokens_parser())


def test_a_refused_resume_shows_the_command_that_resumes(tmp_path: Path) -> None:
    from anytok.devices import parse_device
    from anytok.train.distributed import DistInfo
    from anytok.train.loop import RECIPE_NAME, _check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    before = load_recipe("seanet_fsq_24khz_tiny", ["data.train=/data", "train.steps=40"])
    OmegaConf.save(before, run / RECIPE_NAME)
    now = load_recipe("seanet_fsq_24khz_tiny", ["data.train=/data"])  # overrides forgotten
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=parse_device("cpu"))
    with pytest.raises(RecipeError, match=r"anytok train .*recipe\.yaml --run-dir .* --resume"):
        _check_run_dir(run, now, True, run / "checkpoints" / "step_000027", info)


def test_the_decode_report_counts_the_media_it_wrote(tmp_path: Path) -> None:
    # `anytok decode --json` said "media_seconds": 0.0 for every job.
    from anytok.pipeline import decode_files

    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    model.encode(torch.zeros(1, 1, 4800)).save(tmp_path / "a.wav.tokens.safetensors")
    report = decode_files(
        [tmp_path / "a.wav.tokens.safetensors"], tmp_path / "out", lambda _: model
    )
    assert report.ok and report.media_seconds == pytest.approx(0.2, abs=0.02)


def test_a_misspelt_model_argument_names_the_close_one() -> None:
    # create_model(..., n_filter=4) (or model.config.n_filter=4 in a recipe) raised the
    # builder's bare "__init__() got an unexpected keyword argument 'n_filter'".
    with pytest.raises(TypeError, match=r"no argument n_filter \(did you mean n_filters\?\)"):
        anytok.create_model("seanet_fsq_24khz", tiny=True, n_filter=4)
    with pytest.raises(TypeError, match="its arguments are causal, channels, dimension"):
        anytok.create_model("seanet_fsq_24khz", tiny=True, zzz=1)
    assert anytok.create_model("seanet_fsq_24khz", tiny=True, n_filters=4) is not None


def test_list_gives_one_line_per_tokenizer_with_whole_names() -> None:
    # At 80 columns descriptions wrapped to 5-7 lines per tokenizer and long names were cut
    # ("causal3d_vidtok_4x8…"), the one thing users copy from the list.
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "anytok", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    names = anytok.list_models()
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == len(names)
    for name, row in zip(names, rows):
        assert row.split("│")[1].split()[0] == name
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
