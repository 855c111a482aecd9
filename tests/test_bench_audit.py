"""`anytok bench` audit fixes: files reached twice, files of several modalities named
directly, a batch that fails mid-run, seeded decoders (SNAC), plot names that collide, and
a report folder written twice. Tiny tokenizers saved as checkpoints, tiny synthetic media."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import test_bench
import torch

import anytok
from anytok.bench import BenchSettings, run_bench, write_reports
from anytok.bench.runner import _distribution_states, _files, _restore_distributions
from anytok.bench.sweeps import DECODE_SEED, decode_options
from anytok.checkpoint import save_checkpoint
from anytok.cli import main
from anytok.media import save_audio, save_image
from anytok.metrics.fid import FrechetDistance

RATE = 24000

checkpoints = test_bench.checkpoints  # tiny seanet_fsq_24khz / _16khz, cnn_fsq_256 ... saved
read_report = test_bench.read_report


def tone(seconds: float, frequency: float) -> torch.Tensor:
    """A mono sine with a little noise, ``(1, samples)`` at 24 kHz."""
    t = torch.arange(int(seconds * RATE)) / RATE
    noise = 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(int(frequency)))
    return (0.4 * torch.sin(2 * math.pi * frequency * t) + noise)[None]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """``audio/a0.wav``, ``audio/a1.wav``, ``audio/sub/a2.wav`` (0.3 s to 0.5 s) and
    ``images/i0.png`` (32x32)."""
    root = tmp_path_factory.mktemp("media")
    (root / "audio" / "sub").mkdir(parents=True)
    save_audio(root / "audio" / "a0.wav", tone(0.4, 220.0), RATE)
    save_audio(root / "audio" / "a1.wav", tone(0.3, 330.0), RATE)
    save_audio(root / "audio" / "sub" / "a2.wav", tone(0.5, 440.0), RATE)
    (root / "images").mkdir()
    gradient = torch.linspace(-1, 1, 32)
    image = torch.stack([gradient[None].expand(32, 32), gradient[:, None].expand(32, 32)] * 2)
    save_image(root / "images" / "i0.png", image[:3])
    return root


def settings(models: list[str], data: list[Path], **options: Any) -> BenchSettings:
    """Quick settings: no warm-up, one timed call."""
    return BenchSettings(models=models, data=data, warmup=0, repeats=1, **options)


def read_items(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- 1. duplicates


def test_a_file_reached_twice_is_benchmarked_once(checkpoints, media, tmp_path, monkeypatch):
    """A folder, a folder inside it and a file inside that: three files, three items (not
    3 + 2 + 1); the sweep note names the model as given, not by its absolute path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").symlink_to(checkpoints["seanet_fsq_24khz"])
    audio = media / "audio"
    data = [audio, audio / "sub", audio / "sub" / "a2.wav", audio / "a0.wav"]
    report = run_bench(settings(["ckpt"], data, sweeps={"levels": [1, 4]}))
    model = report["models"][0]
    assert model["items"] == 3 and model["token_stats"]["items"] == 3
    assert [r["items"] for r in model["results"]] == [3, 3]
    assert model["results"][0]["rate"]["seconds"] == pytest.approx(1.2)
    paths = [row["path"] for row in report["_items"] if row["point"] == "full"]
    assert paths == [str(audio / "a0.wav"), str(audio / "a1.wav"), str(audio / "sub" / "a2.wav")]
    assert "ckpt: levels 4 not available (allowed: 1, 2); skipped" in report["notes"]
    # First reached, first kept: the file named directly keeps no folder.
    assert _files([audio / "a1.wav", audio], "audio") == [
        (audio / "a1.wav", None),
        (audio / "a0.wav", audio),
        (audio / "sub" / "a2.wav", audio),
    ]


# --------------------------------------------------------------------------- 2. named files


def test_named_files_of_two_modalities_go_to_their_tokenizers(checkpoints, media, tmp_path):
    image, wav = media / "images" / "i0.png", media / "audio" / "a0.wav"
    audio_ckpt, image_ckpt = checkpoints["seanet_fsq_24khz"], checkpoints["cnn_fsq_256"]
    out = tmp_path / "out"
    args = ["bench", "-m", str(audio_ckpt), "-m", str(image_ckpt), str(image), str(wav)]
    code = main([*args, "-o", str(out), "--repeats", "1", "--no-plots"])
    report, _ = read_report(out)
    assert code == 0 and report["skipped"] == []
    assert [(m["modality"], m["items"], m["skipped"]) for m in report["models"]] == [
        ("audio", 1, []),
        ("image", 1, []),
    ]
    # A named file of an unknown extension is still tried (and reported) by every
    # tokenizer; without a tokenizer of its modality, a named file is tried as well.
    odd = tmp_path / "clip.xyz"
    odd.write_bytes(b"not media")
    named = [image, wav, odd]
    assert _files(named, "audio", {"image"}) == [(wav, None), (odd, None)]
    assert _files(named, "image", {"audio"}) == [(image, None), (odd, None)]
    assert _files(named, "audio") == [(image, None), (wav, None), (odd, None)]


# --------------------------------------------------------------------------- 3. failures


def failing_on_calls(monkeypatch, method: str, calls: set[int] | None, error: Exception) -> None:
    """Make ``anytok.load``'s models raise ``error`` from ``method`` on these calls (counted
    from 1; None: every call)."""
    real_load = anytok.load

    def load(name: str, **kwargs: Any) -> Any:
        model = real_load(name, **kwargs)
        real, count = getattr(model, method), [0]

        def wrapped(*args: Any, **kw: Any) -> Any:
            count[0] += 1
            if calls is None or count[0] in calls:
                raise error
            return real(*args, **kw)

        setattr(model, method, wrapped)
        return model

    monkeypatch.setattr(anytok, "load", load)


def test_a_failing_batch_skips_its_items_and_keeps_the_others(
    checkpoints, media, tmp_path, monkeypatch
):
    """The second batch fails in its second decode (the levels=1 point, after its full
    point was scored): its item is skipped with the error, the first and third are kept,
    and report.json and items.jsonl agree."""
    oom = RuntimeError("CUDA out of memory (simulated)")
    failing_on_calls(monkeypatch, "decode", {4}, oom)
    name = str(checkpoints["seanet_fsq_24khz"])
    data = [media / "audio"]
    report = run_bench(settings([name], data, batch_size=1, sweeps={"levels": [1]}))
    model = report["models"][0]
    assert "error" not in model and model["items"] == 2
    assert [r["items"] for r in model["results"]] == [2, 2]
    assert model["token_stats"]["items"] == 2 and model["throughput"] is not None
    failed = str(media / "audio" / "a1.wav")
    reason = "RuntimeError: CUDA out of memory (simulated) (its batch of 1 item(s) failed)"
    assert model["skipped"] == [{"path": failed, "error": reason}]
    assert report["skipped"] == model["skipped"]
    out = tmp_path / "out"
    write_reports(report, out, plots=False)
    rows = read_items(out)
    assert len(rows) == 4 and failed not in {row["path"] for row in rows}
    assert json.loads((out / "report.json").read_text())["models"][0]["items"] == 2


def test_a_tokenizer_failing_on_every_batch_reports_its_error(
    checkpoints, media, tmp_path, monkeypatch
):
    failing_on_calls(monkeypatch, "encode", None, TypeError("bug in encode"))
    names = [str(checkpoints["seanet_fsq_24khz"]), str(checkpoints["seanet_fsq_16khz"])]
    report = run_bench(settings(names, [media / "audio"], batch_size=2))
    for model in report["models"]:
        assert model == {
            "name": model["name"],
            "label": model["label"],
            "error": "TypeError: bug in encode",
        }
    assert report["_items"] == [] and report["skipped"] == []


def test_a_failed_batch_leaves_no_trace_in_distribution_metrics() -> None:
    feature = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    feature.num_features = 12
    fid = FrechetDistance(feature)
    first = torch.rand(3, 3, 8, 8) * 2 - 1
    fid.update(first, first.flip(0))
    before = fid.compute()
    saved = _distribution_states({"full": {"rfid": fid}})
    fid.update(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    assert fid.count == 5
    _restore_distributions(saved)
    assert fid.count == 3 and fid.compute() == pytest.approx(before)


# --------------------------------------------------------------------------- 4. seeds


def test_seeded_decoders_give_the_same_numbers_every_run(media, tmp_path) -> None:
    snac = anytok.create_model("snac_24khz", tiny=True)
    assert decode_options(snac) == {"seed": DECODE_SEED}
    assert decode_options(anytok.create_model("seanet_fsq_24khz", tiny=True)) == {}
    path = str(save_checkpoint(snac, tmp_path / "snac"))
    data = [media / "audio" / "a0.wav", media / "audio" / "sub" / "a2.wav"]
    runs = [run_bench(settings([path], data, batch_size=b)) for b in (2, 2, 1)]
    rows = [[(r["path"], r["scores"]) for r in run["_items"]] for run in runs]
    assert json.dumps(rows[0]) == json.dumps(rows[1])  # NaN (STOI of a short clip) included
    # One noise draw shared by the batch: an item decodes as it does alone.
    for (path_a, batched), (path_b, alone) in zip(rows[0], rows[2]):
        assert path_a == path_b
        assert batched == pytest.approx(alone, rel=1e-4, abs=1e-5, nan_ok=True)


# --------------------------------------------------------------------------- 5, 6. files


def test_usage_plots_of_labels_with_one_file_name_are_all_written(
    checkpoints, media, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    model = anytok.create_model("seanet_fsq_24khz", tiny=True)
    for folder in ("my codec", "my_codec"):
        save_checkpoint(model, tmp_path / folder)
    out = tmp_path / "out"
    wav = str(media / "audio" / "a0.wav")
    code = main(
        ["bench", "-m", "my codec", "-m", "my_codec", wav, "-o", str(out), "--repeats", "1"]
    )
    assert code == 0
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots == ["rate_distortion_audio.png", "usage_my_codec.png", "usage_my_codec_2.png"]
    assert "and 3 plot(s)" in capsys.readouterr().out


def test_a_report_replaces_the_files_of_an_earlier_one(checkpoints, media, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "usage_folder.png").mkdir(parents=True)  # a folder: not something bench wrote
    for name in ("usage_old.png", "rate_distortion_video.png", "items.jsonl", "report.md"):
        (out / name).write_text("from an earlier run")
    (out / "notes.txt").write_text("mine")
    name = str(checkpoints["seanet_fsq_24khz"])
    report = run_bench(settings([name], [media / "audio" / "a0.wav"]))
    written = write_reports(report, out, plots=False)  # items= left out: the report's rows
    assert sorted(p.name for p in out.iterdir()) == [
        "items.jsonl",
        "notes.txt",
        "report.json",
        "report.md",
        "usage_folder.png",
    ]
    assert sorted(written) == ["items", "json", "markdown"]
    assert [row["path"] for row in read_items(out)] == [str(media / "audio" / "a0.wav")]
    assert "from an earlier run" not in (out / "report.md").read_text()


def test_a_tokenizer_that_decodes_only_at_its_resolution_names_image_size(tmp_path) -> None:
    """FlexTok encodes a 64 x 64 image but decodes at its own resolution; the bench said
    only "psnr: shapes differ"."""

    model = anytok.create_model("flextok_d12_d12", tiny=True)
    folder = save_checkpoint(model, tmp_path / "flextok")
    side = 2 * model.resolution[0]
    save_image(tmp_path / "a.png", torch.rand(3, side, side) * 2 - 1)
    settings = BenchSettings(
        models=[str(folder)], data=[tmp_path / "a.png"], image_size=(side, side), repeats=1
    )
    (section,) = run_bench(settings)["models"]
    assert "reconstructs only at its own resolution" in section["error"]
    assert "--image-size" in section["error"]
