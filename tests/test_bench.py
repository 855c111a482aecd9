"""`anytok bench` end to end on tiny registered tokenizers saved as checkpoints, over folders
of real offline media (speech cut from the bundled sample, scikit-image photos, a clip built
from photos) with bad files mixed in; the reports are opened and checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_model
from skimage import data as skdata

import anytok
from anytok.bench import bench_from_cli
from anytok.bench.sweeps import SweepPoint, decode_at, parse_sweep, plan_sweep
from anytok.checkpoint import save_checkpoint
from anytok.cli import main
from anytok.media import save_audio, save_video
from anytok.media.samples import sample_speech, sample_video
from anytok.metrics import speech_models as sm
from anytok.metrics.fid import FIDInceptionV3
from anytok.metrics.regions import CRNN
from anytok.tokens import Tokens

# Face and name-tag boxes in scikit-image's astronaut photo (512x512), and lines of
# handwriting in its text image (448x172): the bundled TokBench-style annotations.
ASTRONAUT_REGIONS = [
    {"kind": "face", "box": [168, 55, 290, 190]},
    {"kind": "text", "box": [278, 338, 330, 374]},
]
TEXT_REGIONS = [
    {"kind": "text", "box": [150, 0, 265, 24]},
    {"kind": "text", "box": [95, 20, 215, 62]},
    {"kind": "text", "box": [0, 75, 290, 172]},
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in ("seanet_fsq_24khz", "seanet_fsq_16khz", "cnn_fsq_256", "cnn3d_fsq_4x8x8"):
        out[name] = save_checkpoint(anytok.create_model(name, tiny=True), root / name)
    return out


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    """Three 1.2 s pieces of real speech, a text file named .wav and an empty .flac."""
    folder = tmp_path_factory.mktemp("speech")
    clip = sample_speech()
    piece = int(1.2 * clip.sample_rate)
    for i in range(3):
        save_audio(folder / f"part{i}.wav", clip.waveform[:, i * piece : (i + 1) * piece], 24000)
    (folder / "notes.wav").write_text("this is not audio")
    (folder / "empty.flac").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> tuple[Path, Path]:
    """skimage's astronaut, text and coffee photos, a corrupt PNG, and region annotations."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.stack([skdata.text()] * 3, axis=-1)).save(folder / "text.png")
    Image.fromarray(skdata.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    annotations = folder.parent / "regions.json"
    annotations.write_text(
        json.dumps({"astronaut.png": ASTRONAUT_REGIONS, "text.png": TEXT_REGIONS})
    )
    return folder, annotations


class FirstFeatures(torch.nn.Module):
    """The first ``count`` features of a feature extractor."""

    def __init__(self, net: torch.nn.Module, count: int):
        super().__init__()
        self.net, self.num_features = net, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, : self.num_features]


def read_report(out: Path) -> tuple[dict[str, Any], str]:
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_audio_benchmark_compares_two_tokenizers(checkpoints, speech_dir, tmp_path) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "bench",
            "-m", str(checkpoints["seanet_fsq_24khz"]),
            "-m", str(checkpoints["seanet_fsq_16khz"]),
            str(speech_dir),
            "-o", str(out),
            "--levels", "1,2,4",
            "--batch-size", "2",
            "--repeats", "2",
        ]
    )  # fmt: skip
    assert code == 1  # two files were skipped; everything else was benchmarked
    report, md = read_report(out)
    assert report["format"] == "anytok.bench/1"
    assert report["environment"]["packages"]["torch"] == torch.__version__.split("+")[0]
    assert report["environment"]["device"]["type"] == "cpu"
    assert report["settings"]["sweeps"] == {"levels": [1, 2, 4]}
    assert report["settings"]["batch_size"] == 2
    skipped = {Path(s["path"]).name: s["error"] for s in report["skipped"]}
    assert set(skipped) == {"notes.wav", "empty.flac"}
    assert "empty" in skipped["empty.flac"]
    assert [m["label"] for m in report["models"]] == ["seanet_fsq_24khz", "seanet_fsq_16khz"]
    for model in report["models"]:
        assert model["items"] == 3 and model["weights"].startswith("untrained")
        # The tiny variants have 2 residual levels: "levels=2" is the full model, 4 is absent.
        assert model["sweep_points"] == ["full", "levels=1"]
        full, one = model["results"]
        assert one["rate"]["kbps"] == pytest.approx(full["rate"]["kbps"] / 2)
        rate = model["token_spec"]["frame_rate"] * model["bits_per_position"] / 1000
        assert full["rate"]["kbps"] == pytest.approx(rate, rel=0.02)  # hop padding only
        for name in ("mel_distance", "stft_distance", "si_sdr", "pesq_wb", "pesq_nb", "stoi"):
            assert full["metrics"][name]["n"] + full["metrics"][name]["invalid"] == 3
        assert full["metrics"]["mel_distance"]["mean"] > 0
        stats = model["token_stats"]
        assert [lv["codebook_size"] for lv in stats["levels"]] == [125, 125]
        assert stats["levels"][0]["tokens"] == sum(
            int(np.ceil(1.2 * model["token_spec"]["sample_rate"] / 8)) for _ in range(3)
        )
        assert 1 <= stats["levels"][0]["perplexity"] <= 125
        t = model["throughput"]
        assert t["batch_size"] == 2 and t["warmup"] == 1 and t["repeats"] == 2
        assert t["encode"]["items_per_second"] > 0 and t["decode"]["realtime_factor"] > 0
        assert t["peak_memory"]["mib"] > 0
    assert any("levels 4 not available" in note for note in report["notes"])
    assert any("--utmos" in note for note in report["notes"])
    # Markdown: the models side by side, token statistics, throughput, skipped files.
    assert "## Audio" in md and "pesq_wb ↑" in md and "mel_distance ↓" in md
    assert "| seanet_fsq_24khz | levels=1 |" in md and "| seanet_fsq_16khz | full |" in md
    assert "## Token statistics" in md and "## Throughput" in md
    assert "notes.wav" in md and "Untrained weights" in md
    check_png(out / "rate_distortion_audio.png")
    check_png(out / "usage_seanet_fsq_24khz.png")
    check_png(out / "usage_seanet_fsq_16khz.png")
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3
    assert {row["point"] for row in rows} == {"full", "levels=1"}


def test_image_benchmark_with_regions_and_metric_models(
    checkpoints, image_dir, tmp_path, monkeypatch
) -> None:
    folder, annotations = image_dir
    torch.manual_seed(0)
    weights = tmp_path / "weights"
    weights.mkdir()
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    save_model(_LPIPS(pretrained=False, net="alex", pnet_rand=True), str(weights / "lpips.st"))
    save_model(FIDInceptionV3(), str(weights / "inception.safetensors"))
    save_model(CRNN(), str(weights / "crnn.safetensors"))
    save_model(torchvision.models.resnet18(num_classes=32), str(weights / "face.safetensors"))
    # FID's network runs at 299x299 and the Fréchet distance of 2048 features takes seconds
    # on a CPU: the same plumbing at 75x75 with 64 of the features is quick.
    original = FIDInceptionV3.from_weights
    monkeypatch.setattr(
        FIDInceptionV3, "from_weights", lambda path: FirstFeatures(original(path, 75), 64)
    )
    out = tmp_path / "report"
    code = bench_from_cli(
        [
            "-m", str(checkpoints["cnn_fsq_256"]),
            str(folder),
            "-o", str(out),
            "--image-size", "176",
            "--regions", str(annotations),
            "--lpips", f"alex:{weights / 'lpips.st'}",
            "--fid-inception", str(weights / "inception.safetensors"),
            "--ocr-model", str(weights / "crnn.safetensors"),
            "--face-model", f"resnet18:{weights / 'face.safetensors'}",
            "--repeats", "1",
        ]
    )  # fmt: skip
    assert code == 1  # broken.png
    report, md = read_report(out)
    (model,) = report["models"]
    assert model["items"] == 3 and [s["path"] for s in report["skipped"]] == [
        str(folder / "broken.png")
    ]
    metrics = model["results"][0]["metrics"]
    for name in ("psnr", "ssim", "ms_ssim", "lpips"):
        assert metrics[name]["n"] == 3, name
    assert np.isfinite(metrics["rfid"]["mean"]) and metrics["rfid"]["n"] == 3
    assert "Inception" in report["metric_backends"]["rfid"]
    rate = model["results"][0]["rate"]
    assert rate["tokens_per_image"] == (176 // 4) ** 2
    assert rate["bits_per_pixel"] == pytest.approx(np.log2(125) / 16)
    # Regions: the face, the name tag and the lines of handwriting, binned by scale.
    assert metrics["region/face/medium/face_sim"]["n"] == 1
    assert metrics["region/face/medium/psnr"]["n"] == 1
    text_keys = [k for k in metrics if k.startswith("region/text/") and k.endswith("/t_ned")]
    assert sum(metrics[k]["n"] for k in text_keys) == 4
    assert "### Text and face regions" in md and "face / medium" in md
    assert "lpips ↓" in md and "rfid ↓" in md
    check_png(out / "rate_distortion_image.png")
    check_png(out / "usage_cnn_fsq_256.png")
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    astronaut = next(r for r in rows if r["path"].endswith("astronaut.png"))
    assert {r["kind"] for r in astronaut["regions"]} == {"face", "text"}


def tiny_ssl(aux_num_out: int | None = None) -> torch.nn.Module:
    """torchaudio's wav2vec 2.0 at toy width (the real ones are 95M parameters)."""
    import torchaudio

    return torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2), (8, 2, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=16,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=1,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=aux_num_out,
    )


@pytest.mark.filterwarnings("ignore:Not enough STFT frames:RuntimeWarning")  # 0.3 s clips
def test_speech_model_metrics_through_the_cli(
    checkpoints, speech_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sm.SSL_ARCHITECTURES, "tiny", tiny_ssl)
    torch.manual_seed(0)
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("utmos", "spk", "asr")}
    save_model(sm.UTMOS22Strong("tiny"), str(paths["utmos"]))
    save_model(sm.SpeakerEncoder("tiny"), str(paths["spk"]))
    save_model(sm.CTCRecognizer("tiny"), str(paths["asr"]))
    transcripts = tmp_path / "transcripts.json"
    transcripts.write_text(json.dumps({"part0.wav": "tokenizers turn sound"}))
    out = tmp_path / "report"
    code = bench_from_cli(
        [
            "-m", str(checkpoints["seanet_fsq_16khz"]),
            str(speech_dir / "part0.wav"),
            str(speech_dir / "part1.wav"),
            "-o", str(out),
            "--max-seconds", "0.3",
            "--utmos", f"tiny:{paths['utmos']}",
            "--speaker-model", f"tiny:{paths['spk']}",
            "--asr-model", f"tiny:{paths['asr']}",
            "--transcripts", str(transcripts),
            "--repeats", "1",
            "--warmup", "0",
            "--no-plots",
        ]
    )  # fmt: skip
    assert code == 0
    report, md = read_report(out)
    metrics = report["models"][0]["results"][0]["metrics"]
    assert metrics["utmos"]["n"] == 2 and metrics["spk_sim"]["n"] == 2
    assert -1 <= metrics["spk_sim"]["mean"] <= 1
    # part0 has a transcript (WER); part1 has none, so the input's ASR is the reference.
    assert metrics["wer"]["n"] == 1 and metrics["dwer"]["n"] == 1
    # The summaries are corpus rates (one item each: its rate); the word counts that weigh
    # them are in the item rows, not summarised as metrics.
    assert metrics["wer"]["mean"] == pytest.approx(metrics["wer"]["item_mean"])
    assert "wer_words" not in metrics and "dwer_words" not in metrics
    assert "utmos ↑" in md and "spk_sim ↑" in md
    assert report["settings"]["metric_models"]["utmos"]["arch"] == "tiny"
    assert not list(out.glob("*.png"))


def test_video_benchmark(checkpoints, tmp_path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    clip = sample_video(frames=9, size=48, fps=8.0).video
    save_video(folder / "zoom.mp4", clip, 8.0)
    save_video(folder / "mirror.mp4", clip.flip(-1), 8.0)
    (folder / "cut.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    out = tmp_path / "report"
    code = bench_from_cli(
        [
            "-m", str(checkpoints["cnn3d_fsq_4x8x8"]),
            str(folder),
            "-o", str(out),
            "--image-size", "32",
            "--repeats", "1",
        ]
    )  # fmt: skip
    assert code == 1
    report, md = read_report(out)
    (model,) = report["models"]
    assert model["items"] == 2 and Path(report["skipped"][0]["path"]).name == "cut.mp4"
    result = model["results"][0]
    for name in ("psnr", "ssim", "frame_diff_error"):
        assert result["metrics"][name]["n"] == 2
    assert result["rate"]["kbps"] > 0 and result["rate"]["bits_per_pixel"] > 0
    assert model["throughput"]["encode"]["realtime_factor"] > 0
    assert any("--i3d" in note for note in report["notes"])
    assert "## Video" in md and "frame_diff_error ↓" in md
    check_png(out / "rate_distortion_video.png")


# --------------------------------------------------------------------------- sweeps


def test_level_sweep_decodes_the_codes_of_fewer_levels() -> None:
    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    audio = sample_speech().waveform[None, :, :4000]
    with torch.inference_mode():
        tokens = model.encode(audio)
        recon, codes = decode_at(model, tokens, SweepPoint("levels", 1))
        latent = model.encoder(torch.nn.functional.pad(audio, (0, 0))).movedim(1, -1)
        one_level = model.quantizer.encode(latent, n_levels=1).movedim(-1, 1)
        expected = model.decode(one_level)
    assert torch.equal(codes, one_level)
    torch.testing.assert_close(recon, expected)


def test_level_sweep_keeps_the_lengths_of_a_batch() -> None:
    """The level sweep decoded bare codes, without ``lengths``: a non-causal model decoded
    the padded batch in one pass and a short item's scores changed with the batch size."""
    model = anytok.create_model("dac_16khz", tiny=True).eval()
    hop = model.hop_length
    audio = torch.randn(2, 1, 40 * hop, generator=torch.Generator().manual_seed(0)) * 0.2
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([40 * hop, 15 * hop]))
        batch, _ = decode_at(model, tokens, SweepPoint("levels", 1))
        alone, _ = decode_at(model, tokens[1], SweepPoint("levels", 1))
    torch.testing.assert_close(batch[1:, :, : 15 * hop], alone, atol=1e-5, rtol=0)
    assert not batch[1, :, 15 * hop :].any()


def test_a_tokenizer_without_files_of_its_modality_is_not_a_success(
    checkpoints, speech_dir, tmp_path
) -> None:
    """An image tokenizer over a folder of speech measured nothing and exited 0."""
    code = main(
        ["bench", "-m", str(checkpoints["cnn_fsq_256"]), str(speech_dir), "-o",
         str(tmp_path / "r"), "--repeats", "1", "--no-plots"]
    )  # fmt: skip
    assert code == 1
    report, _ = read_report(tmp_path / "r")
    assert report["models"][0]["items"] == 0
    assert any("no image items could be benchmarked" in note for note in report["notes"])


def test_bench_checks_max_seconds_and_the_output_before_any_work(speech_dir, tmp_path) -> None:
    """``--max-seconds 0`` cut every item to one sample (exit 0); ``-o FILE`` failed only
    after the whole benchmark, losing it."""
    (tmp_path / "afile").write_text("x")
    for extra in (["--max-seconds", "0"], ["-o", str(tmp_path / "afile" / "report")]):
        with pytest.raises(SystemExit) as exit_info:
            bench_from_cli(["-m", "x", str(speech_dir), "-o", str(tmp_path / "r"), *extra])
        assert exit_info.value.code == 2


class PrefixTokenizer(torch.nn.Module):
    """A stand-in for a flexible-length 1D tokenizer: decodes any prefix of its sequence."""

    registry_name = "prefix_test"

    def sweep_options(self) -> dict[str, list[int]]:
        return {"prefix": [2, 4, 8]}

    def sweep_decode(self, tokens: Tokens, axis: str, value: int):
        codes = tokens.codes[:, :, :value]
        return codes.float().mean(dim=(1, 2)), codes

    def decode(self, tokens: Tokens) -> torch.Tensor:
        return tokens.codes.float().mean(dim=(1, 2))


def test_tokenizers_define_their_own_sweep_axes() -> None:
    model = PrefixTokenizer()
    points, notes = plan_sweep(model, {"prefix": [2, 16], "levels": [1], "steps": [4]})
    assert [p.label for p in points] == ["full", "prefix=2"]
    assert any("prefix 16 not available" in n for n in notes)
    assert any("no 'levels' sweep" in n for n in notes) and any("'steps'" in n for n in notes)
    spec = anytok.TokenSpec("image", (16,), ("sequence",))
    tokens = Tokens(torch.arange(8).view(1, 1, 8) % 16, spec)
    media, codes = decode_at(model, tokens, points[1])
    assert codes.shape == (1, 1, 2) and media.item() == pytest.approx(0.5)
    assert parse_sweep("steps=1,4,25") == ("steps", [1, 4, 25])
    with pytest.raises(ValueError, match="AXIS=V1"):
        parse_sweep("steps")


def test_usage_errors_and_failed_tokenizers(checkpoints, speech_dir, tmp_path) -> None:
    out = tmp_path / "report"
    missing = main(["bench", "-m", "seanet_fsq_24khz", str(tmp_path / "nowhere"), "-o", str(out)])
    assert missing == 2
    with pytest.raises(SystemExit) as exit_info:
        bench_from_cli(["-m", "x", str(speech_dir), "-o", str(out), "--sweep", "levels"])
    assert exit_info.value.code == 2
    for rate in ("5", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            bench_from_cli(["-m", "x", str(speech_dir), "-o", str(out), "--perturb", rate])
        assert exit_info.value.code == 2
    labels = tmp_path / "labels.json"
    for text in ("5", '{"a": 1}', "not json"):
        labels.write_text(text)
        code = bench_from_cli(
            ["-m", "x", str(speech_dir), "-o", str(out), "--asr-labels", str(labels)]
        )
        assert code == 2  # a usage error naming the file, not a traceback
    bad_weights = main(
        ["bench", "-m", str(checkpoints["cnn_fsq_256"]), str(speech_dir), "-o", str(out),
         "--lpips", str(tmp_path / "lpips.pth")]
    )  # fmt: skip
    assert bad_weights == 2
    # An unknown tokenizer is reported and the others still run.
    code = main(
        ["bench", "-m", "no_such_tokenizer", "-m", str(checkpoints["seanet_fsq_24khz"]),
         str(speech_dir / "part0.wav"), "-o", str(out), "--repeats", "1", "--no-plots"]
    )  # fmt: skip
    assert code == 1
    report, md = read_report(out)
    failed, ok = report["models"]
    assert "unknown model" in failed["error"] and ok["items"] == 1
    assert "## Tokenizers that failed" in md


def test_perturb_sweep_is_the_pfid_style_robustness_point() -> None:
    model = anytok.create_model("vqgan", tiny=True, seed=0).eval()
    points, notes = plan_sweep(model, {"perturb": [0.2, 1.5]})
    assert [p.label for p in points] == ["full", "perturb=0.2"]
    assert any("perturb 1.5 not available" in n for n in notes)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        tokens = model.encode(images)
        clean, _ = decode_at(model, tokens, points[0])
        noisy, codes = decode_at(model, tokens, points[1])
        again, _ = decode_at(model, tokens, points[1])
    assert torch.equal(codes, tokens.codes)  # the bits counted are the tokenizer's own
    assert torch.equal(noisy, again)  # a fixed seed: reports are reproducible
    assert not torch.allclose(noisy, clean)


# --------------------------------------------------------------------------- review fixes


def test_bench_counts_the_levels_encode_gives(speech_dir) -> None:
    """A tokenizer whose default encode gives fewer levels than its quantizer has (Mimi: 8
    of 32) failed the whole bench: token statistics and bits were sized from every level."""
    from anytok.bench.runner import BenchSettings, bench_model
    from anytok.bench.suite import MetricSuite

    model = anytok.create_model("mimi", tiny=True, seed=0, n_levels=2).eval()
    assert model.spec.num_levels == 4 and model.default_spec.num_levels == 2
    settings = BenchSettings(models=["mimi"], data=[speech_dir], warmup=0, repeats=1)
    section = bench_model(model, "mimi", settings, MetricSuite())
    assert section["items"] == 3
    assert len(section["token_stats"]["levels"]) == 2
    assert section["token_spec"]["codebook_sizes"] == list(model.default_spec.codebook_sizes)
    rate = section["results"][0]["rate"]
    bits = np.log2(model.default_spec.codebook_sizes[0])
    assert rate["bits_per_second"] == pytest.approx(rate["tokens_per_second"] * bits)
    assert rate["tokens_per_second"] == pytest.approx(2 * model.default_spec.frame_rate, rel=0.05)


def test_level_sweep_stops_at_the_levels_encode_gives() -> None:
    """Mimi with 2 of 4 levels by default: levels=2 repeated ``full`` and levels=3 decoded 2
    levels under a false label. The default count is ``full``; more is skipped with a note."""
    from anytok.bench.sweeps import sweep_options

    model = anytok.create_model("mimi", tiny=True, seed=0, n_levels=2).eval()
    assert sweep_options(model)["levels"] == [1, 2]
    points, notes = plan_sweep(model, {"levels": [1, 2, 3, 4]})
    assert [p.label for p in points] == ["full", "levels=1"]
    assert notes == [f"{model.registry_name}: levels 3, 4 not available (allowed: 1, 2); skipped"]
    with torch.inference_mode():
        tokens = model.encode(torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(0)))
        _, codes = decode_at(model, tokens, points[1])
        assert codes.shape[1] == 1
        with pytest.raises(ValueError, match="levels=3 but the tokens have 2 level"):
            decode_at(model, tokens, SweepPoint("levels", 3))


def test_unknown_lpips_network_is_a_usage_error_before_any_work(
    checkpoints, image_dir, tmp_path, capsys
) -> None:
    """``--lpips alexnet:...`` gave a raw ValueError traceback (exit 1) after the tokenizer
    had loaded; it is a one-line usage error naming the flag and the networks, up front."""
    from safetensors.torch import save_file

    from anytok.metrics.image import LPIPS
    from anytok.metrics.weights import MetricWeightsError

    weights = tmp_path / "lpips.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    out = tmp_path / "report"
    code = main(
        ["bench", "-m", str(checkpoints["cnn_fsq_256"]), str(image_dir[0]), "-o", str(out),
         "--lpips", f"alexnet:{weights}", "--repeats", "1", "--no-plots"]
    )  # fmt: skip
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "--lpips: unknown network 'alexnet'; choose one of alex, vgg, squeeze" in err
    assert "Traceback" not in err
    with pytest.raises(MetricWeightsError, match="unknown network 'alexnet'; choose one of"):
        LPIPS(None, net="alexnet")


def test_report_prints_a_cuda_memory_peak_under_one_mib(checkpoints, tmp_path) -> None:
    """``fmt(0.62, 0)`` built the format ``.-1e`` and raised: no report.md for a CUDA run
    whose peak memory was under 1 MiB."""
    from anytok.bench.report import fmt, markdown
    from anytok.bench.runner import BenchSettings, run_bench

    cells = {1234.5: "1,234", 12.0: "12", 0.62: "0.6", 0.04: "0.04", 0.0: "0"}
    assert {value: fmt(value, 0) for value in cells} == cells
    Image.fromarray(skdata.astronaut()[:32, :32]).save(tmp_path / "a.png")
    settings = BenchSettings(
        models=[str(checkpoints["cnn_fsq_256"])],
        data=[tmp_path / "a.png"],
        image_size=(32, 32),
        warmup=0,
        repeats=1,
    )
    report = run_bench(settings)
    report["models"][0]["throughput"]["peak_memory"] = {
        "kind": "torch.cuda.max_memory_allocated", "encode_mib": 0.62, "decode_mib": 0.81
    }  # fmt: skip
    assert " 0.6 / 0.8 |" in markdown(report)
