"""The `anytok` command: list, info, encode (with a corrupt file), decode, user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

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


def test_info_describes_a_checkpoint_folder(capsys, tiny_audio_ckpt) -> None:
    assert main(["info", str(tiny_audio_ckpt), "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    model = anytok.load(tiny_audio_ckpt)
    assert details["architecture"] == AUDIO and details["modality"] == "audio"
    assert details["config"] == model.anytok_config  # the tiny config, not the default
    assert details["parameters"] == sum(p.numel() for p in model.parameters())
    assert details["token_spec"]["codebook_sizes"] == list(model.spec.codebook_sizes)
    assert details["weights"] == f"checkpoint {tiny_audio_ckpt}"


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
    assert info["license"] is None  # random weights: no license stated ...
    assert main(["info", AUDIO]) == 0
    table = capsys.readouterr().out
    assert "None" not in table and re.search(r"license\s+│ -\s", table)  # ... not "None"
    assert main(["list", "--recipes", "--modality", "audio", "--json"]) == 0
    recipes = json.loads(capsys.readouterr().out)
    assert "audio/seanet_fsq_24khz_tiny" in recipes and all(r.startswith("audio/") for r in recipes)


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
    for name in ("a.wav", "sub/b.wav"):  # encode_file: the CLI's loading, in Python
        cli_tokens = anytok.Tokens.load(out / f"{name}.tokens.safetensors")
        assert torch.equal(model.encode_file(data / name).codes, cli_tokens.codes)
    written = model.decode_file(out / "a.wav.tokens.safetensors", tmp_path / "a_again.flac")
    with torch.inference_mode():
        expected = model.decode(tokens)[0].clamp(-1, 1)
    again, rate = sf.read(written, dtype="float32", always_2d=True)
    assert rate == model.sample_rate
    torch.testing.assert_close(torch.from_numpy(again.T), expected, atol=1 / 32768 + 1e-5, rtol=0)
    two = anytok.Tokens(torch.cat([tokens.codes, tokens.codes]), tokens.spec)
    with pytest.raises(ValueError, match=r"2 items; write one file per item \(tokens\[i\]\)"):
        model.decode_file(two, tmp_path / "two.wav")

    recon = tmp_path / "recon"
    result = run_cli("decode", str(out), "-m", str(tiny_audio_ckpt), "-o", str(recon))
    assert result.returncode == 0, result.stderr
    # The token tree is mirrored, as encode mirrors the media tree.
    decoded = sorted(p.relative_to(recon).as_posix() for p in recon.rglob("*.wav"))
    assert decoded == ["a.wav", "c.wav", "sub/b.wav"]
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


def test_encode_missing_input_reports_it(tmp_path, tiny_audio_ckpt, capsys) -> None:
    from anytok.media import save_audio

    out, missing = tmp_path / "out", str(tmp_path / "nope.wav")
    # No input exists: a usage error before any model loads (it had loaded the model, then
    # reported the file as skipped; without -m it said to name a tokenizer).
    for extra in (["-m", str(tiny_audio_ckpt)], []):
        assert main(["encode", missing, *extra, "-o", str(out)]) == 2
        assert f"no such file or folder: {missing}" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "nope.tokens.safetensors"), "-o", str(out)]) == 2
    # One of two exists: it is encoded and the missing one reported as skipped.
    wav = save_audio(tmp_path / "x.wav", torch.zeros(1, 2400), 24000)
    assert main(["encode", missing, str(wav), "-m", str(tiny_audio_ckpt), "-o", str(out)]) == 1
    assert (out / "x.wav.tokens.safetensors").is_file()
    assert "nope.wav: no such file or folder" in capsys.readouterr().err
    # A folder without media says what encode looks for, not to name a tokenizer.
    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no media files in" in err and "by their extension" in err and "-m/--model" not in err


def test_parse_device_reads_auto_and_names_missing_devices(monkeypatch) -> None:
    from anytok.devices import DeviceError, parse_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_device("auto").type == parse_device(None).type == expected
    assert parse_device(" AUTO ").type == expected
    assert parse_device("cpu") == parse_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^--device 'gpu': not a device \(use auto, cpu"):
        parse_device("gpu")
    with pytest.raises(DeviceError, match="^--devices 'cuda:x'"):
        parse_device("cuda:x", option="--devices")
    with pytest.raises(DeviceError, match="meta: the meta device holds no data"):
        parse_device("meta")  # it passed, and every file then failed on "unsupported scalarType"
    # No CUDA, or fewer GPUs than the index asks for: said before anything loads.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="cuda:0: CUDA is not available on this machine"):
        parse_device("cuda:0")
    assert parse_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="cuda:2: this machine has 2 CUDA device"):
        parse_device("cuda:2")


@pytest.mark.parametrize("command", ["encode", "decode", "bench", "encode-dataset", "train"])
def test_every_command_refuses_a_bad_device_in_one_line(tmp_path, tiny_audio_ckpt, command):
    write_wav(tmp_path / "a.wav", 0.2)
    model = ["-m", str(tiny_audio_ckpt)]
    argv = {
        "encode": ["encode", str(tmp_path), *model, "-o", str(tmp_path / "o")],
        "decode": ["decode", str(tmp_path), "-o", str(tmp_path / "o")],
        "bench": ["bench", str(tmp_path), *model, "-o", str(tmp_path / "o")],
        "encode-dataset": ["encode-dataset", str(tmp_path), str(tmp_path / "o"), *model],
        "train": [
            "train",
            str(Path(__file__).parents[1] / "recipes/audio/seanet_fsq_24khz_tiny.yaml"),
            f"data.train={tmp_path}",
            "--run-dir",
            str(tmp_path / "o"),
        ],
    }[command]
    if command == "decode":  # one token file, so the device is the only problem
        assert main(["encode", str(tmp_path / "a.wav"), *model, "-o", str(tmp_path)]) == 0
    result = run_cli(*argv, "--device", "gpu")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "'gpu': not a device" in result.stderr
    assert not (tmp_path / "o").exists()


def test_same_relative_paths_never_overwrite_each_other(tmp_path, tiny_audio_ckpt) -> None:
    # Two speakers' folders with the same file names, given as two inputs: one output path
    # each would collide, so the second is skipped and named, and the first stays intact.
    for speaker, seconds in (("spk1", 0.5), ("spk2", 0.25)):
        (tmp_path / speaker).mkdir()
        write_wav(tmp_path / speaker / "001.wav", seconds)
    model = ["-m", str(tiny_audio_ckpt)]
    out = tmp_path / "tokens"
    result = run_cli(
        "encode", str(tmp_path / "spk1"), str(tmp_path / "spk2"), *model, "-o", str(out)
    )
    assert result.returncode == 1, result.stderr
    assert "encoded 1 file(s)" in result.stdout
    assert f"{tmp_path / 'spk2' / '001.wav'}: its output" in result.stderr
    assert "already that of" in result.stderr and "common parent folder" in result.stderr
    kept = anytok.Tokens.load(out / "001.wav.tokens.safetensors")
    hop = anytok.load(tiny_audio_ckpt).hop_length
    assert kept.codes.shape[-1] == -(-8000 // hop)  # spk1's half second at 16 kHz -> 24 kHz
    # Their common parent mirrors both, and decode mirrors the token tree back.
    assert main(["encode", str(tmp_path), *model, "-o", str(out)]) == 0
    tree = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tokens.safetensors"))
    assert tree[-2:] == ["spk1/001.wav.tokens.safetensors", "spk2/001.wav.tokens.safetensors"]
    recon = tmp_path / "recon"
    assert main(["decode", str(out / "spk1"), str(out / "spk2"), "-o", str(recon)]) == 1
    assert main(["decode", str(out), "-o", str(recon)]) == 0  # three distinct paths
    assert sorted(p.relative_to(recon).as_posix() for p in recon.rglob("*.wav")) == [
        "001.wav",
        "spk1/001.wav",
        "spk2/001.wav",
    ]


def test_decode_keeps_the_source_extension_where_two_token_files_would_collide(
    tmp_path, tiny_audio_ckpt
) -> None:
    # a.wav and a.flac encode to two token files; both used to decode to a.wav (the second
    # was skipped, exit 1): the one whose name would collide keeps its source extension.
    write_wav(tmp_path / "a.wav", 0.2)
    write_wav(tmp_path / "a.flac", 0.2)
    model = ["-m", str(tiny_audio_ckpt)]
    assert main(["encode", str(tmp_path), *model, "-o", str(tmp_path / "tok")]) == 0
    result = run_cli("decode", str(tmp_path / "tok"), "-o", str(tmp_path / "rec"))
    assert result.returncode == 0, result.stderr
    assert "decoded 2 file(s)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["a.flac.wav", "a.wav"]


def test_one_item_failing_its_batch_loses_only_that_item(tmp_path, tiny_audio_ckpt) -> None:
    # A tokenizer that runs out of memory on batches holding the long file: the batch is
    # retried item by item; the long file is reported, the others are written and equal a
    # direct encode, and a write error is reported per file too.
    from anytok.pipeline import encode_files, load_for_model

    model = anytok.load(tiny_audio_ckpt)
    for name, seconds in (("a", 0.2), ("long", 2.0), ("b", 0.3)):
        write_wav(tmp_path / f"{name}.wav", seconds)
    real_encode = model.encode
    calls: list[int] = []

    def encode(audio, lengths=None):
        calls.append(audio.shape[0])
        if audio.shape[-1] > model.sample_rate:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_encode(audio, lengths)

    model.encode = encode
    out = tmp_path / "tokens"
    report = encode_files(model, [tmp_path], out, batch_size=3)
    assert calls == [3, 1, 1, 1]
    assert [f.path.name for f in report.failures] == ["long.wav"]
    assert report.failures[0].error == (
        "encoding failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB"
    )
    assert sorted(p.name for p in report.written) == [
        "a.wav.tokens.safetensors",
        "b.wav.tokens.safetensors",
    ]
    with torch.inference_mode():
        direct = real_encode(load_for_model(model, tmp_path / "b.wav").unsqueeze(0))
    assert torch.equal(anytok.Tokens.load(out / "b.wav.tokens.safetensors").codes, direct.codes)
    # An output folder that cannot be written: every item is reported, nothing raises.
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    report = encode_files(model, [tmp_path / "a.wav"], tmp_path / "blocked", batch_size=3)
    assert report.items == 0 and report.failures[0].error.startswith("cannot write")


def test_a_folder_of_webm_audio_is_explained_and_its_files_encode(
    tiny_audio_ckpt: Path, tmp_path: Path
) -> None:
    # yt-dlp saves Opus audio as .webm, a video extension: a folder search for audio finds
    # none and says what it found; the file named directly is encoded from its audio.
    from anytok.media import save_audio
    from anytok.pipeline import encode_files, load_for_model

    model = anytok.load(tiny_audio_ckpt)
    (tmp_path / "downloads").mkdir()
    tone = 0.3 * torch.sin(torch.arange(48000) * 2 * torch.pi * 440 / 48000)
    webm = save_audio(tmp_path / "talk.weba", tone, 48000).rename(tmp_path / "downloads/talk.webm")
    report = encode_files(model, [tmp_path / "downloads"], tmp_path / "out")
    assert report.items == 0 and report.failures[0].error == (
        "no audio files found (found 1 video file (.webm) instead: folders are searched by "
        "extension; a video container holding audio is read when named directly or listed "
        "in a JSONL manifest)"
    )
    report = encode_files(model, [webm], tmp_path / "out")
    assert report.items == 1 and not report.failures
    codes = anytok.Tokens.load(tmp_path / "out" / "talk.webm.tokens.safetensors").codes
    with torch.inference_mode():
        direct = model.encode(load_for_model(model, webm).unsqueeze(0)).codes
    assert torch.equal(codes, direct)


def test_unknown_command_suggests_the_closest_and_lists_all(capsys) -> None:
    assert main(["trian", "recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian' (did you mean 'train'?)" in err
    assert "encode-dataset" in err and "decode" in err  # delegated and built-in commands
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"anytok {anytok.__version__}"
    module = subprocess.run(
        [sys.executable, "-m", "anytok", "list", "--json"], capture_output=True, text=True
    )
    assert module.returncode == 0 and json.loads(module.stdout) == anytok.list_models()


def test_long_files_go_through_encode_long_and_others_in_one_batch(tmp_path, tiny_audio_ckpt):
    # Past long_seconds a file is encoded alone in bounded memory: read in pieces into
    # encode_long_stream when its header states the length (the tokens of encode_long: one
    # pass), loaded whole into encode_long when it does not; a model without a chunked path
    # (SNAC) encodes it in one pass instead, still alone: short files are never padded to a
    # long one's length.
    from anytok import pipeline
    from anytok.pipeline import encode_files, load_for_model

    write_wav(tmp_path / "short.wav", 0.2)
    write_wav(tmp_path / "long.wav", 1.0)
    for model in (anytok.load(tiny_audio_ckpt), anytok.create_model("snac_24khz", tiny=True)):
        model.eval()
        for header_tells in (True, False):
            chunked: list[tuple[str, int]] = []

            def spy(audio, chunked=chunked, real=model.encode_long, **kwargs):
                chunked.append(("whole", audio.shape[-1]))
                return real(audio, **kwargs)

            def spy_stream(pieces, chunked=chunked, real=model.encode_long_stream, **kwargs):
                read = [0]  # samples the model pulled from the file

                def counted():
                    for piece in pieces:
                        read[0] += piece.shape[-1]
                        yield piece

                try:
                    return real(counted(), **kwargs)
                finally:
                    chunked.append(("stream", read[0]))

            model.encode_long, model.encode_long_stream = spy, spy_stream
            out = tmp_path / f"{type(model).__name__}{header_tells}"
            with pytest.MonkeyPatch.context() as patch:
                if not header_tells:
                    patch.setattr(pipeline, "header_seconds", lambda model, path: None)
                report = encode_files(model, [tmp_path], out, long_seconds=0.5)
            assert report.ok and report.items == 2
            assert report.media_seconds == pytest.approx(1.2)
            if header_tells and type(model).__name__ != "SNAC":
                assert chunked == [("stream", model.sample_rate)]  # only the long file
            elif header_tells:  # refused before reading a piece, then loaded whole
                assert chunked == [("stream", 0), ("whole", model.sample_rate)]
            else:
                assert chunked == [("whole", model.sample_rate)]
            for name in ("short.wav", "long.wav"):
                with torch.inference_mode():
                    direct = model.encode(load_for_model(model, tmp_path / name).unsqueeze(0))
                written = anytok.Tokens.load(out / f"{name}.tokens.safetensors")
                assert torch.equal(written.codes, direct.codes), (type(model).__name__, name)
            del model.encode_long, model.encode_long_stream
    assert main(["encode", str(tmp_path), "-m", str(tiny_audio_ckpt), "-o", str(tmp_path / "c"),
                 "--long-seconds", "-1"]) == 0  # fmt: skip


def test_long_token_files_go_through_decode_long(tmp_path, tiny_audio_ckpt) -> None:
    from anytok.pipeline import decode_files

    model = anytok.load(tiny_audio_ckpt)
    write_wav(tmp_path / "a.wav", 0.2)
    write_wav(tmp_path / "b.wav", 1.0)
    assert (
        main(["encode", str(tmp_path), "-m", str(tiny_audio_ckpt), "-o", str(tmp_path / "t")]) == 0
    )
    chunked: list[int] = []

    def spy(tokens, real=model.decode_long, **kwargs):
        chunked.append(tokens.codes.shape[-1])
        return real(tokens, **kwargs)

    model.decode_long = spy
    report = decode_files([tmp_path / "t"], tmp_path / "r", lambda _: model, long_seconds=0.5)
    assert report.ok and report.items == 2
    long_tokens = anytok.Tokens.load(tmp_path / "t" / "b.wav.tokens.safetensors")
    assert chunked == [long_tokens.codes.shape[-1]]  # the long file only
    with torch.inference_mode():
        one_pass = model.decode(long_tokens)[0].clamp(-1, 1)
    written, rate = sf.read(tmp_path / "r" / "b.wav", dtype="float32", always_2d=True)
    assert rate == model.sample_rate
    torch.testing.assert_close(torch.from_numpy(written.T), one_pass, atol=1 / 32768 + 1e-5, rtol=0)


def test_encode_and_decode_report_as_json(tmp_path, tiny_audio_ckpt) -> None:
    write_wav(tmp_path / "good.wav", 0.2)
    (tmp_path / "bad.wav").write_bytes(b"")
    out = tmp_path / "tok"
    result = run_cli("encode", str(tmp_path), "-m", str(tiny_audio_ckpt), "-o", str(out), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # stdout holds the JSON alone
    assert report["ok"] is False and report["items"] == 1 and report["tokens"] > 0
    assert report["written"] == [str(out / "good.wav.tokens.safetensors")]
    assert report["failures"] == [
        {"path": str(tmp_path / "bad.wav"), "error": "file is empty (0 bytes)"}
    ]
    result = run_cli("decode", str(out), "-o", str(tmp_path / "rec"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["written"] == [str(tmp_path / "rec" / "good.wav")]


def test_encode_without_a_model_picks_the_inputs_modality_default(tmp_path) -> None:
    audio = tmp_path / "speech"
    audio.mkdir()
    write_wav(audio / "a.wav", 0.2)
    result = run_cli("encode", str(audio), "-o", str(tmp_path / "t"))
    assert result.returncode == 0, result.stderr
    default = anytok.DEFAULT_MODELS["audio"]
    assert f"audio files: using the default tokenizer {default}" in result.stderr
    tokens = anytok.Tokens.load(tmp_path / "t" / "a.wav.tokens.safetensors")
    assert tokens.spec.name.startswith(default)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.png")
    result = run_cli("encode", str(tmp_path), "-o", str(tmp_path / "t2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "audio and image files in" in result.stderr and "--modality" in result.stderr


def test_decode_writes_every_item_of_a_batch_file_cut_to_its_length(
    tmp_path, tiny_audio_ckpt
) -> None:
    """A token file of several items (a saved batch) wrote only item 0, untrimmed, exit 0;
    a file naming a tokenizer this install lacks stopped the whole run (exit 2, no report)."""
    from anytok.tokens import Tokens

    model = anytok.load(tiny_audio_ckpt)
    hop = model.hop_length
    tokens = model.encode(torch.randn(2, 1, 30 * hop) * 0.1, torch.tensor([10 * hop, 30 * hop]))
    folder = tmp_path / "tokens"
    folder.mkdir()
    tokens.save(folder / "a.tokens.safetensors")
    single = model.encode(torch.randn(1, 1, 5 * hop) * 0.1)
    single.save(folder / "c.tokens.safetensors")
    spec = dict(single.spec.to_dict(), name="no_such_model")
    from anytok.tokens import TokenSpec

    Tokens(single.codes, TokenSpec.from_dict(spec)).save(folder / "b.tokens.safetensors")
    out = tmp_path / "out"
    assert main(["decode", str(folder), "-o", str(out)]) == 1  # b skipped, the rest written
    assert sorted(p.name for p in out.iterdir()) == ["a.0.wav", "a.1.wav", "c.wav"]
    assert sf.info(out / "a.0.wav").frames == 10 * hop
    assert sf.info(out / "a.1.wav").frames == 30 * hop
    alone, _ = sf.read(out / "a.0.wav", dtype="float32")
    expected = model.decode(tokens[0])[0, 0].detach().numpy()
    np.testing.assert_allclose(alone, np.clip(expected, -1, 1), atol=1e-4)


def test_brackets_in_names_are_printed_as_they_are(tmp_path, tiny_audio_ckpt) -> None:
    """Rich read ``[red]`` in a file name as a style (the name lost it) and ``[/x]`` as a
    closing tag (a MarkupError traceback)."""
    folder = tmp_path / "in[red]"
    folder.mkdir()
    (folder / "take[bold].wav").write_bytes(b"")
    result = run_cli("encode", str(folder), "-m", str(tiny_audio_ckpt), "-o", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr
    assert "take[bold].wav: file is empty" in result.stderr
    result = run_cli("info", str(tmp_path / "ck[/x]"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ck[/x]" in result.stderr


def test_info_of_an_arch_name_beside_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    """A folder ./<arch> without config.json must not hide the architecture (as in load)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / AUDIO).mkdir()
    assert main(["info", AUDIO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == f"{AUDIO}.untrained"


def test_unusable_output_folders_and_bad_numbers_fail_before_any_work(
    tmp_path: Path, tiny_audio_ckpt: Path, capsys, monkeypatch
) -> None:
    # Refused up front (exit 2), not after encoding / decoding every file.
    import anytok.cli as cli

    loads: list[str] = []
    monkeypatch.setattr(cli, "_load_model", lambda name, device: loads.append(name))
    write_wav(tmp_path / "a.wav", 0.2)
    blocker = tmp_path / "afile"
    blocker.write_text("a file where the output folder should be")
    assert (
        main(["encode", "-m", str(tiny_audio_ckpt), str(tmp_path / "a.wav"), "-o", str(blocker)])
        == 2
    )
    assert f"-o/--output {blocker}: exists and is not a folder" in capsys.readouterr().err
    assert main(["decode", str(tmp_path), "-o", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    assert (
        main(
            ["encode", str(tmp_path / "a.wav"), "-o", str(tmp_path / "o"), "--long-seconds", "nan"]
        )
        == 2
    )
    assert "--long-seconds must be a number of seconds" in capsys.readouterr().err
    assert loads == []  # no model was loaded for any of them


def test_decode_names_a_file_twice_once_and_keeps_multi_line_reasons(
    tmp_path: Path, tiny_audio_ckpt: Path, capsys, monkeypatch
) -> None:
    write_wav(tmp_path / "a.wav", 0.2)
    assert (
        main(
            [
                "encode",
                "-m",
                str(tiny_audio_ckpt),
                str(tmp_path / "a.wav"),
                "-o",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    token_file = str(tmp_path / "t" / "a.wav.tokens.safetensors")
    capsys.readouterr()
    assert (
        main(
            [
                "decode",
                "-m",
                str(tiny_audio_ckpt),
                token_file,
                token_file,
                str(tmp_path / "t"),
                "-o",
                str(tmp_path / "d"),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 1 and report["written"] == [str(tmp_path / "d" / "a.wav")]
    # A per-file reason of several lines (the places searched, how to fix) is printed whole.
    monkeypatch.setenv("ANYTOK_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["decode", "-m", "dac_44khz.descript", token_file, "-o", str(tmp_path / "d2")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "a.wav.tokens.safetensors: no weights found for checkpoint 'dac_44khz.descript'" in err
    assert "\n    To fix:" in err


def test_global_debug_option_reaches_delegated_commands(tmp_path: Path) -> None:
    result = run_cli("--debug", "export", str(tmp_path / "no_run"), "-o", str(tmp_path / "x"))
    assert result.returncode == 2, result.stderr
    assert "no such run folder" in result.stderr and "invalid choice" not in result.stderr
