"""Regressions from an audit of the tokenizer API as researchers call it: another
architecture's tokens, level prefixes, NumPy codes, negative codes, ``~`` and folder paths,
unbatched clips into ``omni``."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import anytok
from anytok.datasets.plan import spec_without_name
from anytok.tokens import Tokens, TokenSpec


@pytest.fixture(scope="module")
def vqgans() -> tuple[torch.nn.Module, torch.nn.Module, Tokens]:
    """Tiny ``vqgan`` (stride 16 in full) and ``vqgan_f8``: specs equal but for the
    architecture, and the ``vqgan`` tokens of a 32 x 32 image."""
    torch.manual_seed(0)
    f16 = anytok.create_model("vqgan", tiny=True).eval()
    f8 = anytok.create_model("vqgan_f8", tiny=True).eval()
    with torch.inference_mode():
        tokens = f16.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    return f16, f8, tokens


def test_another_architecture_with_an_equal_spec_is_refused(vqgans) -> None:
    f16, f8, tokens = vqgans
    assert tokens.spec.architecture == "vqgan"
    assert dataclasses.replace(tokens.spec, architecture=None, name="") == dataclasses.replace(
        f8.spec, architecture=None, name=""
    )  # only the architecture tells them apart
    with pytest.raises(ValueError, match=r"architecture 'vqgan' vs 'vqgan_f8'"):
        f8.decode(tokens)
    with torch.inference_mode():
        assert f16.decode(tokens).shape == (1, 3, 32, 32)


def test_tokens_without_an_architecture_still_decode(vqgans, tmp_path) -> None:
    """Files written before specs carried the architecture (and specs of models built by
    their class) leave it ``None``: not compared, not written."""
    f16, _, tokens = vqgans
    old = Tokens(tokens.codes, dataclasses.replace(tokens.spec, architecture=None))
    assert "architecture" not in old.spec.to_dict()
    with torch.inference_mode():
        torch.testing.assert_close(f16.decode(old), f16.decode(tokens))
    path = tokens.save(tmp_path / "a.tokens.safetensors")
    assert Tokens.load(path).spec.architecture == "vqgan"
    assert TokenSpec.from_json(tokens.spec.to_json()) == tokens.spec
    with pytest.raises(TypeError, match="architecture must be a str"):
        dataclasses.replace(tokens.spec, architecture=3)


def test_every_registered_architecture_is_in_its_spec() -> None:
    for name in anytok.list_models():
        model = anytok.create_model(name, tiny=True)
        assert model.spec.architecture == name, name
        assert model.default_spec.architecture == name, name


def test_dataset_plans_ignore_the_architecture() -> None:
    """A dataset job planned before specs carried the architecture resumes: the plan's
    fingerprint covers the architecture already."""
    spec = TokenSpec("audio", (8, 8), ("time",), 50.0, name="x", architecture="dac_24khz")
    old = json.loads(spec.to_json())
    del old["architecture"]
    assert spec_without_name(spec.to_json()) == spec_without_name(json.dumps(old))


def test_a_level_prefix_for_a_codec_that_decodes_every_level_says_so() -> None:
    model = anytok.create_model("snac_24khz", tiny=True).eval()
    with torch.inference_mode():
        tokens = model.encode(torch.rand(1, 1, 2400) * 2 - 1)
    first = Tokens(
        tokens.codes[:, :1],
        dataclasses.replace(tokens.spec, codebook_sizes=tokens.spec.codebook_sizes[:1]),
    )
    with pytest.raises(ValueError, match=r"decodes all 3 levels together.*only the first 1"):
        model.decode(first)


@pytest.mark.parametrize("name", ["seanet_fsq_24khz", "cnn_fsq_256", "titok_s128", "omni"])
def test_numpy_codes_decode_as_tensors(name: str) -> None:
    model = anytok.create_model(name, tiny=True).eval()
    torch.manual_seed(0)
    media = {
        "audio": lambda: torch.rand(2, model.channels if hasattr(model, "channels") else 1, 960),
        "image": lambda: torch.rand(2, 3, *model.resolution),
        "video": lambda: torch.rand(2, 3, 5, *model.resolution),
    }[model.spec.modality]()
    with torch.inference_mode():
        codes = model.encode(media * 2 - 1).codes
        torch.testing.assert_close(model.decode(codes.numpy()), model.decode(codes))
    with pytest.raises(TypeError, match="got list"):
        model.decode(codes.tolist())
    with pytest.raises(TypeError, match=r"got str; load a token file with Tokens.load"):
        model.decode("x.tokens.safetensors")


def test_audio_codecs_refuse_negative_codes() -> None:
    """-1 means "level not run" to a residual quantizer; in a codec's tokens it is an LM's
    pad or mask id left in, which decoded silently before."""
    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    with torch.inference_mode():
        tokens = model.encode(torch.rand(1, 1, 960) * 2 - 1)
        codes = tokens.codes.clone()
        codes[0, -1, 2] = -1
        with pytest.raises(ValueError, match=r"codes must be >= 0, got -1.*tokens.codes\[:, :k\]"):
            model.decode(codes)
        with pytest.raises(ValueError, match="codes must be >= 0"):
            model.decode(Tokens(codes, tokens.spec))
        assert model.decode(tokens.codes[:, :1]).shape == (1, 1, 960)  # fewer levels


def test_decode_file_expands_home_and_refuses_a_folder(tmp_path, monkeypatch) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    with torch.inference_mode():
        tokens = model.encode(torch.rand(1, 1, 960) * 2 - 1)
    tokens.save("~/t.tokens.safetensors")
    written = model.decode_file("~/t.tokens.safetensors", "~/out.wav")
    assert written == home / "out.wav" and written.is_file()
    assert model.encode_file("~/out.wav").codes.shape == tokens.codes.shape
    assert not (elsewhere / "~").exists()
    with pytest.raises(IsADirectoryError, match=r"is a folder; name the file to write"):
        model.decode_file(tokens, home)


def test_token_files_and_folders(tmp_path) -> None:
    tokens = Tokens(torch.zeros(1, 1, 4, dtype=torch.long), TokenSpec("audio", (4,), ("time",)))
    folder = tmp_path / "a.tokens.safetensors"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"is a folder; name the file to write inside"):
        tokens.save(folder)
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a token file"):
        Tokens.load(folder)
    assert os.listdir(folder) == []  # no temporary file left inside


def test_omni_names_an_unbatched_clip_as_given() -> None:
    model = anytok.create_model("omni", tiny=True).eval()
    h, w = model.resolution
    with pytest.raises(ValueError, match=rf"got shape \(3, 5, {h}, {w}\); .*clip\[None\]"):
        model.encode(torch.zeros(3, 5, h, w))
    with torch.inference_mode():
        assert model.encode(torch.zeros(2, 3, h, w)).codes.shape[:3] == (2, 1, 1)  # images


def test_tokens_of_a_file_without_the_architecture_equal_the_models(vqgans) -> None:
    """Re-encoding and comparing with stored tokens must not fail on every file written
    before specs carried the architecture; another architecture still differs."""
    _, _, tokens = vqgans
    old = Tokens(tokens.codes, dataclasses.replace(tokens.spec, architecture=None))
    assert old == tokens and tokens == old
    other = Tokens(tokens.codes, dataclasses.replace(tokens.spec, architecture="vqgan_f8"))
    assert other != tokens
    assert old.spec != tokens.spec  # TokenSpec == compares every field
