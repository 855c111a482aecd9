"""Every ``anytok ...`` command line shown in the README, docs/ and the recipes' headers
parses with the parser of that command, and the README's Python example runs: the
documentation cannot drift from the CLI and the API."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from anytok.bench.cli import build_parser as bench_parser
from anytok.cli import DELEGATED, build_parser
from anytok.datasets.cli import encode_dataset_parser, export_tokens_parser
from anytok.train.cli import parse_export_args, parse_train_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))

PARSERS: dict[str, Callable[[list[str]], object]] = {
    "train": parse_train_args,
    "export": parse_export_args,
    "bench": lambda argv: bench_parser().parse_args(argv),
    "encode-dataset": lambda argv: encode_dataset_parser().parse_args(argv),
    "export-tokens": lambda argv: export_tokens_parser().parse_args(argv),
}


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command line)`` for each command in a fenced block or a recipe comment."""
    found = []
    for path in DOCS + RECIPES:
        lines = path.read_text(encoding="utf-8").splitlines()
        in_block = path.suffix == ".yaml"
        joined: list[tuple[int, str]] = []
        for number, line in enumerate(lines, 1):
            if path.suffix == ".md" and line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            text = line.strip()
            if path.suffix == ".yaml":
                if not text.startswith("#"):
                    continue
                text = text.lstrip("#").strip()
            if not in_block:
                continue
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + text)
            else:
                joined.append((number, text))
        for number, text in joined:
            if text.startswith("anytok ") or "-m anytok.cli " in text:
                found.append((f"{path.relative_to(ROOT)}:{number}", text))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    shown = {shlex.split(text, comments=True)[1] for _, text in COMMANDS if "anytok " in text}
    assert {"encode", "decode", "train", "export", "bench", "encode-dataset"} <= shown


@pytest.mark.parametrize(("where", "text"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where: str, text: str) -> None:
    words = shlex.split(text, comments=True)
    start = words.index("anytok.cli") + 1 if "anytok.cli" in words else words.index("anytok") + 1
    command, argv = words[start], words[start + 1 :]
    try:
        if command in DELEGATED:
            PARSERS[command](argv)
        else:
            build_parser().parse_args([command, *argv])
    except SystemExit as err:
        pytest.fail(f"{where}: `{text}` does not parse (exit {err.code})")


TRAIN_COMMANDS = [(w, t) for w, t in COMMANDS if " train recipes/" in t]


@pytest.mark.parametrize(("where", "text"), TRAIN_COMMANDS, ids=[w for w, _ in TRAIN_COMMANDS])
def test_documented_training_overrides_name_real_recipe_keys(where: str, text: str) -> None:
    from anytok.train.config import load_recipe

    args = parse_train_args(shlex.split(text, comments=True)[text.split().index("train") + 1 :])
    # "..." stands for the user's own data: a bare "..." or a value "key=...".
    overrides = [o.replace("=...", "=/data") for o in args.overrides if o != "..."]
    if not any(o.startswith("data.train=") for o in overrides):
        overrides.append("data.train=/data")
    load_recipe(ROOT / args.recipe, overrides)  # RecipeError names an unknown key or bad value


def test_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    # The README's "Use" block, as written, on one second of generated audio.
    import torch

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = readme.split("```python\n")[1:]
    assert blocks, "the README shows no Python example"
    code = blocks[0].split("```")[0]
    monkeypatch.chdir(tmp_path)
    audio = torch.rand(1, 1, 24000, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    namespace = {"audio": audio}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README, as users read it
    assert namespace["audio_again"].shape == (1, 1, 24000)
    assert (tmp_path / "speech.tokens.safetensors").is_file()
    tokens, vocab = namespace["tokens"], namespace["vocab"]
    back = type(tokens).from_lm_ids(namespace["ids"], tokens.spec, vocab, "delay")
    assert torch.equal(back.codes, tokens.codes)
