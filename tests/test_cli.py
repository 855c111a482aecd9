"""The `anytok` command: list, info, encode (with a corrupt file), decode, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import anytok
from anytok.checkpoint import save_checkpoint
from anytok.cli import main

AUDIO = anytok.list_models("audio")[0]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anytok.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_audio_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(anytok.create_model(AUDIO, tiny=True), path)
    return path


def write_wav(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1) -> None:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([wave] * channels, axis=1), sample_rate)


def test_list_and_info(capsys) -> None:
    assert main(["list", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert names == anytok.list_models()
    assert main(["list"]) == 0
    assert AUDIO in capsys.readouterr().out
    assert main(["info", AUDIO, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "audio"
    assert info["token_spec"]["sample_rate"] > 0
    assert "untrained" in info["weights"]


def test_unknown_model_is_one_line_no_traceback() -> None:
    result = run_cli("info", "no_such_model")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no_such_model" in result.stderr


def test_folder_encode_skips_corrupt_file_and_decodes(tmp_path, tiny_audio_ckpt) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_wav(data / "a.wav", 0.5)
    write_wav(data / "sub" / "b.wav", 0.3, sample_rate=44100, channels=2)
    write_wav(data / "c.flac", 0.2, sample_rate=24000)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    out = tmp_path / "tokens"
    result = run_cli(
        "encode", str(data), "-m", str(tiny_audio_ckpt), "-o", str(out), "--batch-size", "2"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "broken.wav" in result.stderr
    assert "encoded 3 file(s)" in result.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tokens.safetensors"))
    assert written == [
        "a.wav.tokens.safetensors",
        "c.flac.tokens.safetensors",
        "sub/b.wav.tokens.safetensors",
    ]
    model = anytok.load(tiny_audio_ckpt)
    tokens = anytok.Tokens.load(out / "a.wav.tokens.safetensors")
    assert tokens.codes.shape[-1] == -(-int(0.5 * model.sample_rate) // model.hop_length)
    # Batched CLI tokens equal a direct single-file encode.
    from anytok.pipeline import load_for_model

    with torch.inference_mode():
        direct = model.encode(load_for_model(model, data / "a.wav").unsqueeze(0))
    assert torch.equal(direct.codes, tokens.codes)

    recon = tmp_path / "recon"
    result = run_cli("decode", str(out), "-m", str(tiny_audio_ckpt), "-o", str(recon))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in recon.rglob("*.wav")) == ["a.wav", "b.wav", "c.wav"]
    info = sf.info(recon / "a.wav")
    assert info.samplerate == model.sample_rate


def test_encode_all_good_exits_zero_and_npz(tmp_path, tiny_audio_ckpt) -> None:
    write_wav(tmp_path / "x.wav", 0.25)
    out = tmp_path / "out"
    assert (
        main(
            [
                "encode",
                str(tmp_path / "x.wav"),
                "-m",
                str(tiny_audio_ckpt),
                "-o",
                str(out),
                "--format",
                "npz",
            ]
        )
        == 0
    )
    assert (out / "x.wav.tokens.npz").is_file()


def test_encode_missing_input_reports_it(tmp_path, tiny_audio_ckpt) -> None:
    code = main(
        ["encode", str(tmp_path / "nope.wav"), "-m", str(tiny_audio_ckpt), "-o", str(tmp_path)]
    )
    assert code == 1
