"""Metrics against reference implementations on fixed inputs, and the plumbing of the
model-based metrics with randomly initialised models (no weights can be downloaded here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio
from safetensors.torch import save_file, save_model
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from anytok.media import resize_cover
from anytok.media.audio import RESAMPLE_FILTER
from anytok.media.samples import sample_image, sample_speech
from anytok.metrics import (
    TokenStatistics,
    entropy_bits,
    frame_psnr,
    frame_ssim,
    mel_distance,
    ms_ssim,
    pesq,
    psnr,
    si_sdr,
    ssim,
    stft_distance,
    stoi,
    temporal_consistency,
    zipf_fit,
)
from anytok.metrics import speech_models as sm
from anytok.metrics.fid import FIDInceptionV3, FrechetDistance
from anytok.metrics.i3d import I3DFeatures, InceptionI3d
from anytok.metrics.image import LPIPS
from anytok.metrics.regions import (
    CRNN,
    FaceEmbedder,
    Region,
    map_box_cover,
    normalized_edit_similarity,
    scale_bin,
    score_regions,
)
from anytok.metrics.weights import MetricWeightsError, ModelWeights, load_weights


def tiny_ssl(aux_num_out: int | None = None) -> torch.nn.Module:
    """A wav2vec 2.0 of torchaudio's architecture at toy width, for plumbing tests."""
    return torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2), (8, 2, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=16,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=aux_num_out,
    )


@pytest.fixture
def tiny_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(sm.SSL_ARCHITECTURES, "tiny_test", tiny_ssl)
    return "tiny_test"


@pytest.fixture(scope="module")
def speech_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """2 s of real speech at 16 kHz and a noisy copy, ``(1, 1, n)`` each."""
    ref = sample_speech(sample_rate=16000).waveform[None, :, 8000:40000]
    g = torch.Generator().manual_seed(0)
    return ref, (ref + 0.01 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """The astronaut photo (256x256) and a noisy copy, ``(1, 3, 256, 256)`` in [-1, 1]."""
    ref = sample_image("astronaut").image[None]
    g = torch.Generator().manual_seed(1)
    return ref, (ref + 0.08 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# --------------------------------------------------------------------------- audio


def test_pesq_matches_the_pesq_package(speech_pair) -> None:
    from pesq import pesq as reference

    ref, rec = speech_pair
    for mode in ("wb", "nb"):
        expected = reference(16000, _np(ref[0, 0]), _np(rec[0, 0]), mode)
        assert pesq(ref, rec, 16000, mode).item() == pytest.approx(expected, abs=1e-4)
    # Silence has no utterance: NaN, not an exception that would stop a benchmark.
    assert math.isnan(pesq(torch.zeros(1, 1, 16000), torch.zeros(1, 1, 16000), 16000).item())


def test_pesq_resamples_other_rates(speech_pair) -> None:
    from pesq import pesq as reference

    ref16, rec16 = speech_pair
    ref24 = torchaudio.functional.resample(ref16, 16000, 24000, **RESAMPLE_FILTER)
    rec24 = torchaudio.functional.resample(rec16, 16000, 24000, **RESAMPLE_FILTER)
    back_ref = torchaudio.functional.resample(ref24, 24000, 16000, **RESAMPLE_FILTER)
    back_rec = torchaudio.functional.resample(rec24, 24000, 16000, **RESAMPLE_FILTER)
    expected = reference(16000, _np(back_ref[0, 0]), _np(back_rec[0, 0]), "wb")
    assert pesq(ref24, rec24, 24000).item() == pytest.approx(expected, abs=1e-3)


def test_stoi_matches_pystoi(speech_pair) -> None:
    from pystoi import stoi as reference

    ref, rec = speech_pair
    assert stoi(ref, rec, 16000).item() == pytest.approx(
        reference(_np(ref[0, 0]), _np(rec[0, 0]), 16000), abs=1e-5
    )
    assert stoi(ref, rec, 16000, extended=True).item() == pytest.approx(
        reference(_np(ref[0, 0]), _np(rec[0, 0]), 16000, extended=True), abs=1e-5
    )


def test_si_sdr_matches_the_formula(speech_pair) -> None:
    ref, rec = speech_pair
    rec = 0.5 * rec  # scale invariance: the gain must not matter
    r, d = _np(ref[0, 0]), _np(rec[0, 0])
    r, d = r - r.mean(), d - d.mean()
    target = (d @ r) / (r @ r) * r
    expected = 10 * np.log10((target @ target) / ((d - target) @ (d - target)))
    assert si_sdr(ref, rec).item() == pytest.approx(expected, abs=1e-3)


def test_stft_distance_matches_a_numpy_stft() -> None:
    g = torch.Generator().manual_seed(2)
    ref = 0.3 * torch.randn(2, 1, 6000, generator=g)
    rec = ref + 0.05 * torch.randn(2, 1, 6000, generator=g)

    def magnitudes(x: np.ndarray, win: int) -> np.ndarray:
        padded = np.pad(x, win // 2, mode="reflect")  # torch.stft(center=True)
        hop = win // 4
        frames = np.stack(
            [padded[i : i + win] for i in range(0, padded.size - win + 1, hop)], axis=1
        )
        window = np.hanning(win + 1)[:-1]  # periodic Hann, torch.hann_window's default
        return np.abs(np.fft.rfft(frames * window[:, None], axis=0))

    expected = []
    for a, b in zip(_np(ref[:, 0]), _np(rec[:, 0])):
        total = 0.0
        for win in (2048, 512):
            ma, mb = magnitudes(a, win), magnitudes(b, win)
            la = np.log10(np.maximum(ma, 1e-5) ** 2)
            lb = np.log10(np.maximum(mb, 1e-5) ** 2)
            total += np.abs(la - lb).mean() + np.abs(ma - mb).mean()
        expected.append(total)
    np.testing.assert_allclose(stft_distance(ref, rec).numpy(), expected, rtol=1e-4)
    assert stft_distance(ref, ref).abs().max() < 1e-6


def test_spectral_distances_are_zero_for_identical_audio(speech_pair) -> None:
    ref, rec = speech_pair
    assert mel_distance(ref, ref, 16000).item() == 0.0
    assert mel_distance(ref, rec, 16000).item() > 0.0
    # Reconstructions padded to the hop length are cropped to the input.
    padded = torch.nn.functional.pad(ref, (0, 100))
    assert mel_distance(ref, padded, 16000).item() == 0.0


# --------------------------------------------------------------------------- images


def test_psnr_matches_scikit_image(image_pair) -> None:
    ref, rec = image_pair
    expected = peak_signal_noise_ratio(_np(ref[0]), _np(rec[0]), data_range=2.0)
    assert psnr(ref, rec).item() == pytest.approx(expected, abs=1e-4)


def test_ssim_matches_scikit_image(image_pair) -> None:
    ref, rec = image_pair
    unit = [((x[0] + 1) / 2).permute(1, 2, 0).double().numpy() for x in (ref, rec)]
    expected = structural_similarity(
        *unit,
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(ref, rec).item() == pytest.approx(expected, abs=1e-4)
    assert ssim(ref, ref).item() == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_matches_torchmetrics(image_pair) -> None:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    ref, rec = image_pair
    expected = multiscale_structural_similarity_index_measure(
        (rec + 1) / 2, (ref + 1) / 2, data_range=1.0
    )
    assert ms_ssim(ref, rec).item() == pytest.approx(expected.item(), abs=1e-5)
    assert math.isnan(ms_ssim(ref[..., :64, :64], rec[..., :64, :64]).item())  # too small


def test_lpips_loads_user_weights_and_matches_torchmetrics(tmp_path, image_pair) -> None:
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    reference_net = _LPIPS(pretrained=False, net="alex", pnet_rand=True).eval()
    path = tmp_path / "lpips_alex.safetensors"
    save_model(reference_net, str(path))
    metric = LPIPS(path, net="alex")
    ref, rec = image_pair
    ref, rec = ref[..., :64, :64], rec[..., :64, :64]
    with torch.no_grad():
        expected = reference_net(ref, rec).reshape(-1)
    torch.testing.assert_close(metric(ref, rec), expected)
    assert metric(ref, ref).abs().max() < 1e-6


# --------------------------------------------------------------------------- video


def test_video_frame_metrics_match_per_frame_references() -> None:
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(1, 3, 4, 32, 32, generator=g) * 2 - 1
    rec = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    frames = range(ref.shape[2])
    expected_psnr = np.mean(
        [
            peak_signal_noise_ratio(_np(ref[0, :, t]), _np(rec[0, :, t]), data_range=2)
            for t in frames
        ]
    )
    assert frame_psnr(ref, rec).item() == pytest.approx(expected_psnr, abs=1e-4)
    expected_ssim = np.mean([ssim(ref[:, :, t], rec[:, :, t]).item() for t in frames])
    assert frame_ssim(ref, rec).item() == pytest.approx(expected_ssim, abs=1e-6)


def test_temporal_consistency_is_the_frame_difference_error() -> None:
    ref = torch.zeros(1, 3, 3, 8, 8)
    ref[:, :, 1] = 0.5
    # A constant offset keeps the motion: no temporal error.
    assert temporal_consistency(ref, ref + 0.2).item() == pytest.approx(0.0, abs=1e-7)
    # A frozen reconstruction misses both changes (0 -> 0.5 -> 0): |0 - 0.5| on each step.
    frozen = torch.zeros_like(ref)
    assert temporal_consistency(ref, frozen).item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- token statistics


def test_token_statistics_match_hand_computation() -> None:
    stats = TokenStatistics([4, 8])
    stats.update(torch.tensor([[0, 0, 1, 2], [5, 5, 5, 5]]))
    stats.update(torch.tensor([[1, 0], [5, 6]]))
    level0, level1 = stats.summary()["levels"]
    # level 0 unigrams: 0 x3, 1 x2, 2 x1 over 6 tokens
    p = np.array([3, 2, 1]) / 6
    assert level0["unigram_entropy_bits"] == pytest.approx(-(p * np.log2(p)).sum())
    assert level0["perplexity"] == pytest.approx(2 ** -(p * np.log2(p)).sum())
    assert level0["used_codes"] == 3 and level0["usage"] == pytest.approx(3 / 4)
    # bigrams within items only: (0,0) (0,1) (1,2) | (1,0): four distinct, once each
    assert level0["distinct_bigrams"] == 4
    assert level0["bigram_entropy_bits"] == pytest.approx(2.0)
    # level 1: 5 x5, 6 x1; bigrams (5,5) x3, (5,6) x1
    q = np.array([5, 1]) / 6
    assert level1["unigram_entropy_bits"] == pytest.approx(-(q * np.log2(q)).sum())
    b = np.array([3, 1]) / 4
    assert level1["bigram_entropy_bits"] == pytest.approx(-(b * np.log2(b)).sum())
    assert level1["max_entropy_bits"] == 3.0
    assert entropy_bits(np.array([7])) == 0.0


def test_zipf_fit_recovers_the_exponent() -> None:
    ranks = np.arange(1, 200)
    fit = zipf_fit(1e6 * ranks**-1.3)
    assert fit["exponent"] == pytest.approx(1.3, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert math.isnan(zipf_fit(np.array([5, 1]))["exponent"])


# --------------------------------------------------------------------------- Fréchet distances


def test_frechet_distance_matches_the_closed_form() -> None:
    from scipy import linalg

    class Flatten(torch.nn.Module):
        num_features = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :4].double()

    g = torch.Generator().manual_seed(4)
    ref = torch.rand(32, 1, 2, 2, generator=g) * 2 - 1
    rec = (ref * 0.7 + 0.1 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    metric = FrechetDistance(Flatten())
    metric.update(ref, rec)
    a, b = ((ref.flatten(1).double() + 1) / 2).numpy(), ((rec.flatten(1).double() + 1) / 2).numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean)
    assert metric.compute() == pytest.approx(expected, rel=1e-5)
    single = FrechetDistance(Flatten())
    single.update(ref[:1], rec[:1])
    assert math.isnan(single.compute())


def test_fid_inception_loads_its_weights_layout(tmp_path) -> None:
    torch.manual_seed(0)
    source = FIDInceptionV3()
    keys = set(source.state_dict())
    # torchvision's names, as in the converted pt_inception-2015-12-05 weights.
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"} <= keys
    assert source.fc.out_features == 1008
    path = tmp_path / "inception.safetensors"
    save_model(source, str(path))
    model = FIDInceptionV3.from_weights(path, input_size=75)  # 299 in real use; small is quick
    source.input_size = 75
    images = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        out = model(images)
        torch.testing.assert_close(out, source.eval()(images))
    assert out.shape == (2, 2048)


def test_i3d_layout_and_fvd_plumbing(tmp_path) -> None:
    torch.manual_seed(0)
    i3d = InceptionI3d()
    keys = set(i3d.state_dict())
    # pytorch-i3d's names, so its converted Kinetics checkpoint loads as it is.
    assert {
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_1a_7x7.bn.running_var",
        "Mixed_5c.b3b.conv3d.weight",
        "logits.conv3d.bias",
    } <= keys
    path = tmp_path / "i3d.safetensors"
    save_model(i3d, str(path))
    features = I3DFeatures.from_weights(path, input_size=64)  # 224 in real use; small is quick
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(2, 3, 9, 32, 32, generator=g) * 2 - 1
    metric = FrechetDistance(features)
    metric.update(ref, ref.flip(-1))
    assert metric.count == 2 and math.isfinite(metric.compute())


# --------------------------------------------------------------------------- speech models


def test_speech_model_plumbing_with_random_weights(tmp_path, tiny_arch, speech_pair) -> None:
    ref, rec = (x[..., :2000] for x in speech_pair)
    torch.manual_seed(0)
    utmos = sm.UTMOS22Strong(tiny_arch)
    path = tmp_path / "utmos.safetensors"
    save_model(utmos, str(path))
    loaded = sm.UTMOS22Strong.from_weights(path, tiny_arch)
    score = sm.utmos(loaded, torch.cat([ref, rec]), 16000)
    assert score.shape == (2,) and torch.isfinite(score).all()

    speaker = sm.SpeakerEncoder(tiny_arch, head_dim=8)
    path = tmp_path / "speaker.safetensors"
    save_model(speaker, str(path))
    loaded = sm.SpeakerEncoder.from_weights(tiny_arch, path)
    assert loaded.head is not None and loaded.head.out_features == 8  # read from the weights
    same = sm.speaker_similarity(loaded, ref, ref, 16000)
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= sm.speaker_similarity(loaded, ref, rec, 16000).item() <= 1.0


def test_ctc_greedy_decoding_and_wer(tiny_arch) -> None:
    asr = sm.CTCRecognizer(tiny_arch)
    labels = asr.labels
    path_ids = [labels.index(c) for c in "-CC-A-TT|||SA-T"]
    log_probs = torch.full((1, len(path_ids), len(labels)), -10.0)
    log_probs[0, torch.arange(len(path_ids)), path_ids] = 0.0
    assert asr.greedy_decode(log_probs) == ["CAT SAT"]
    assert sm.word_error_rate("cat sat", "The cat, sat.") == pytest.approx(1 / 3)
    assert sm.word_error_rate("", "") == 0.0
    assert sm.word_error_rate("a b c d", "a x c") == pytest.approx(2 / 3)


def test_corpus_wer_matches_jiwer_and_keeps_the_item_mean() -> None:
    # The bench's wer / dwer summary is the corpus rate (all errors over all reference
    # words, as jiwer and SpeechBrain's ErrorRateStats report); the item mean is kept.
    jiwer = pytest.importorskip("jiwer")
    from anytok.bench.runner import corpus_rate

    references = ["the cat sat on the mat", "hello", "a b c d e f g h", "yes no"]
    hypotheses = ["the cat sat on mat", "yellow world", "a b x d e f g h i", "yes"]
    counted = [sm.word_errors(h, r) for h, r in zip(hypotheses, references, strict=True)]
    rates = [sm.word_error_rate(h, r) for h, r in zip(hypotheses, references, strict=True)]
    expected = jiwer.process_words([r.upper() for r in references], [h.upper() for h in hypotheses])
    assert sum(e for e, _ in counted) == (
        expected.substitutions + expected.deletions + expected.insertions
    )
    summary = corpus_rate(rates, [w for _, w in counted])
    assert summary["mean"] == pytest.approx(expected.wer)
    assert summary["item_mean"] == pytest.approx(sum(rates) / len(rates))
    assert summary["mean"] != pytest.approx(summary["item_mean"])  # they differ here
    assert summary["n"] == 4 and summary["invalid"] == 0
    # An empty reference adds its insertions to the errors and no words; none at all: NaN.
    with_empty = corpus_rate([*rates, 2.0], [*(w for _, w in counted), 0])
    errors, words = (sum(column) for column in zip(*counted, strict=True))
    assert words == 17 and with_empty["mean"] == pytest.approx((errors + 2) / words)
    assert math.isnan(corpus_rate([1.0], [0])["mean"])


def test_weights_are_loaded_strictly_and_only_from_safetensors(tmp_path) -> None:
    model = torch.nn.Linear(3, 2)
    good = tmp_path / "w.safetensors"
    save_file({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, str(good))
    load_weights(model, good, what="test")
    assert torch.equal(model.weight, torch.ones(2, 3))
    missing = tmp_path / "missing.safetensors"
    save_file({"weight": torch.ones(2, 3)}, str(missing))
    with pytest.raises(MetricWeightsError, match="bias"):
        load_weights(model, missing, what="test")
    pickled = tmp_path / "w.pth"
    pickled.write_bytes(b"\x80\x04not really")
    with pytest.raises(MetricWeightsError, match="safetensors"):
        load_weights(model, pickled, what="test")
    text = tmp_path / "w.safetensors.txt"
    text.write_text("hello")
    with pytest.raises(MetricWeightsError, match="not a safetensors file"):
        load_weights(model, text, what="test")
    assert ModelWeights.parse("wavlm_base:/w/a.safetensors").arch == "wavlm_base"
    assert ModelWeights.parse("/w/a.safetensors", "x") == ModelWeights(
        "x", ModelWeights.parse("/w/a.safetensors").path
    )


# --------------------------------------------------------------------------- regions


def test_boxes_follow_resize_cover() -> None:
    # A white box on black, resized and centre-cropped: the mapped box must cover it.
    image = -torch.ones(3, 120, 200)
    box = (120.0, 30.0, 160.0, 90.0)
    image[:, 30:90, 120:160] = 1.0
    resized = resize_cover(image, (64, 64))
    mapped = map_box_cover(box, (120, 200), (64, 64))
    assert mapped is not None
    x0, y0, x1, y1 = mapped
    inside = resized[0, y0:y1, x0:x1]
    assert inside.mean() > 0.6
    outside = resized[0].clone()
    outside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = -1
    assert outside.max() < 0  # nothing white left outside the box (and its edge pixels)
    assert map_box_cover((0, 0, 10, 10), (120, 200), (64, 64)) is None  # cropped away
    assert scale_bin((0, 0, 5, 5), (100, 100)) == "small"
    assert scale_bin((0, 0, 20, 5), (100, 100)) == "medium"
    assert scale_bin((0, 0, 50, 50), (100, 100)) == "large"


def test_regions_on_skimage_text_and_face(tmp_path) -> None:
    astronaut = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1
    image = resize_cover(astronaut, (128, 128))
    noisy = (
        image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(6))
    ).clamp(-1, 1)
    ssim_map = ssim(image[None], noisy[None], full_map=True)[0]
    regions = [
        Region("face", (168, 55, 290, 190)),  # the face in skimage's astronaut photo
        Region("text", (278, 338, 330, 374), text="eileen"),  # her name tag
    ]
    torch.manual_seed(0)
    ocr_path, face_path = tmp_path / "crnn.safetensors", tmp_path / "face.safetensors"
    save_model(CRNN(), str(ocr_path))
    save_model(torchvision_resnet18(64), str(face_path))
    rows = score_regions(
        image,
        noisy,
        ssim_map,
        regions,
        (512, 512),
        ocr=CRNN.from_weights(ocr_path),
        face=FaceEmbedder.from_weights("resnet18", face_path),
    )
    face, text = rows
    assert face["kind"] == "face" and face["scale"] == "medium"
    x0, y0, x1, y1 = face["box"]
    expected = peak_signal_noise_ratio(
        _np(image[:, y0:y1, x0:x1]), _np(noisy[:, y0:y1, x0:x1]), data_range=2
    )
    assert face["psnr"] == pytest.approx(expected, abs=1e-4)
    assert -1 <= face["face_sim"] <= 1
    assert text["kind"] == "text" and text["ocr_target"] == "eileen"
    assert 0 <= text["t_ned"] <= 1 and text["t_acc"] in (0.0, 1.0)
    assert normalized_edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


def torchvision_resnet18(features: int) -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=features)
