"""Audit of the reconstruction metrics against independent references, and of the edge cases a
benchmark meets: sample rates PESQ does not take, stereo, clips too short for PESQ / STOI,
silent references, reconstructions a few samples longer or shorter, image sizes MS-SSIM
refuses, data ranges, per-item versus batch values, and token statistics by hand."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torchaudio
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from anytok.bench.runner import PointAccumulator, _invalid_notes
from anytok.bench.suite import MetricSuite
from anytok.bench.sweeps import FULL, SweepPoint
from anytok.media.audio import RESAMPLE_FILTER
from anytok.media.samples import sample_speech
from anytok.metrics import (
    TokenStatistics,
    mel_distance,
    ms_ssim,
    pesq,
    psnr,
    si_sdr,
    ssim,
    stft_distance,
    stoi,
)
from anytok.metrics import token_stats as ts
from anytok.metrics.audio import STOI_MIN_SECONDS
from anytok.metrics.image import MS_SSIM_MIN_SIDE


@pytest.fixture(scope="module")
def speech16() -> torch.Tensor:
    """About 3 s of real speech at 16 kHz, ``(1, 1, n)``."""
    return sample_speech(sample_rate=16000).waveform[None, :, 8000:56000]


def _noisy(x: torch.Tensor, level: float = 0.02, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + level * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """scikit-image's SSIM of ``(H, W, 3)`` images with Wang et al.'s settings (anytok's)."""
    return structural_similarity(
        a, b, channel_axis=2, data_range=data_range, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip


def _unit_hwc(x: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` float64 in [0, 1]."""
    return ((x.double() + 1) / 2).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- audio references


def test_mel_distance_matches_a_numpy_mel_spectrogram(speech16) -> None:
    ref = speech16[..., :12000]
    rec = _noisy(ref, 0.05)
    rate, n_mels = 16000, 80

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    def mel_magnitudes(x: np.ndarray, n_fft: int) -> np.ndarray:
        hop = n_fft // 4
        padded = np.pad(x, n_fft // 2, mode="reflect")
        frames = np.stack(
            [padded[i : i + n_fft] for i in range(0, padded.size - n_fft + 1, hop)], axis=1
        )
        window = np.hanning(n_fft + 1)[:-1]
        mag = np.abs(np.fft.rfft(frames * window[:, None], axis=0))
        freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
        edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2))
        lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        up = (freqs[None] - lower) / (centre - lower)
        down = (upper - freqs[None]) / (upper - centre)
        bank = np.maximum(0.0, np.minimum(up, down))  # HTK triangles, no area normalisation
        return bank @ mag

    expected = np.mean(
        [
            np.abs(
                np.log10(np.maximum(mel_magnitudes(_np(ref[0, 0]), w), 1e-5))
                - np.log10(np.maximum(mel_magnitudes(_np(rec[0, 0]), w), 1e-5))
            ).mean()
            for w in (512, 1024, 2048)
        ]
    )
    assert mel_distance(ref, rec, rate).item() == pytest.approx(expected, rel=2e-4)


def test_pesq_modes_and_rates_match_the_package(speech16) -> None:
    from pesq import pesq as reference

    def to16k(x: torch.Tensor, rate: int) -> np.ndarray:
        return _np(torchaudio.functional.resample(x, rate, 16000, **RESAMPLE_FILTER)[0, 0])

    for rate in (8000, 16000, 22050):
        ref = torchaudio.functional.resample(speech16, 16000, rate, **RESAMPLE_FILTER)
        rec = _noisy(ref)
        for mode in ("wb", "nb"):
            if rate == 8000 and mode == "nb":  # narrow-band keeps 8 kHz
                expected = reference(8000, _np(ref[0, 0]), _np(rec[0, 0]), "nb")
            else:  # everything else is scored at 16 kHz
                expected = reference(16000, to16k(ref, rate), to16k(rec, rate), mode)
            got = pesq(ref, rec, rate, mode).item()
            assert got == pytest.approx(expected, abs=1e-3), (rate, mode)


def test_stereo_and_padded_reconstructions(speech16) -> None:
    from pesq import pesq as reference
    from pystoi import stoi as pystoi_stoi

    left = speech16[0, 0]
    ref = torch.stack([left, 0.5 * left])[None]  # (1, 2, n)
    rec = _noisy(ref, 0.02, seed=1)
    padded = torch.nn.functional.pad(rec, (0, 37))  # codecs pad to their hop
    mono_ref, mono_rec = _np(ref[0].mean(0)), _np(rec[0].mean(0))
    assert pesq(ref, padded, 16000).item() == pytest.approx(
        reference(16000, mono_ref, mono_rec, "wb"), abs=1e-4
    )
    assert stoi(ref, padded, 16000).item() == pytest.approx(
        pystoi_stoi(mono_ref, mono_rec, 16000), abs=1e-5
    )
    per_channel = [si_sdr(ref[:, c : c + 1], rec[:, c : c + 1]).item() for c in range(2)]
    assert si_sdr(ref, padded).item() == pytest.approx(np.mean(per_channel), abs=1e-4)
    # A reconstruction a few samples short: the reference is cropped to it.
    short = rec[..., :-5]
    assert si_sdr(ref, short).item() == pytest.approx(si_sdr(ref[..., :-5], short).item())


# --------------------------------------------------------------------------- audio edge cases


def test_clips_too_short_give_nan_not_errors(speech16) -> None:
    for n in (100, 1000, 3000, 6000):
        ref = speech16[..., 4000 : 4000 + n]
        rec = 0.9 * ref
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pystoi's "returning 1e-5" warning included
            assert math.isnan(stoi(ref, rec, 16000).item()), n
            assert math.isnan(stoi(ref, rec, 16000, extended=True).item()), n
            if n <= 3000:  # PESQ needs about 0.25 s
                assert math.isnan(pesq(ref, rec, 16000).item()), n
            if n <= 1024:  # half the largest FFT / window: was a crash (mel) or 0.0 (STFT)
                assert math.isnan(mel_distance(ref, rec, 16000).item()), n
                assert math.isnan(stft_distance(ref, rec).item()), n
            else:
                assert mel_distance(ref, rec, 16000).item() > 0
                assert stft_distance(ref, rec).item() > 0
        assert math.isfinite(si_sdr(ref, rec).item())
    assert pytest.approx(0.3968) == STOI_MIN_SECONDS


def test_stoi_is_nan_where_pystoi_returns_a_placeholder(speech16) -> None:
    from pystoi import stoi as pystoi_stoi

    # 1 s that is silent but for 0.1 s of speech: too few frames once silence is removed.
    ref = torch.zeros(1, 1, 16000)
    ref[..., 8000:9600] = speech16[..., 20000:21600]
    rec = _noisy(ref, 0.001)
    with pytest.warns(RuntimeWarning, match="Not enough STFT frames"):
        assert pystoi_stoi(_np(ref[0, 0]), _np(rec[0, 0]), 16000) == pytest.approx(1e-5)
    assert math.isnan(stoi(ref, rec, 16000).item())
    # A silent reference has no speech to be intelligible: NaN (pystoi gives 0).
    silent = torch.zeros_like(speech16)
    assert math.isnan(stoi(silent, _noisy(silent), 16000).item())
    # A silent reconstruction of speech is a real, very bad score.
    assert stoi(speech16, torch.zeros_like(speech16), 16000).item() == pytest.approx(0.0)


def test_si_sdr_of_a_silent_reference_is_nan(speech16) -> None:
    silent = torch.zeros(1, 1, 16000)
    noise = _noisy(silent, 0.1)
    assert math.isnan(si_sdr(silent, noise).item())  # torchmetrics' eps gave -178 dB
    assert math.isnan(si_sdr(torch.full_like(noise, 0.3), noise).item())  # zero mean: silent
    # One silent channel: the item is scored on the other.
    ref = torch.cat([speech16, torch.zeros_like(speech16)], dim=1)
    rec = _noisy(ref, 0.02, seed=2)
    assert si_sdr(ref, rec).item() == pytest.approx(si_sdr(ref[:, :1], rec[:, :1]).item())
    # Batch: a silent item does not affect the others.
    batch_ref = torch.cat([speech16[..., :16000], silent])
    batch_rec = torch.cat([_noisy(speech16[..., :16000]), noise])
    values = si_sdr(batch_ref, batch_rec)
    assert math.isfinite(values[0].item()) and math.isnan(values[1].item())
    assert values[0].item() == pytest.approx(si_sdr(batch_ref[:1], batch_rec[:1]).item())


def test_suite_scores_short_and_silent_audio_without_raising(speech16) -> None:
    suite = MetricSuite()
    scores = suite.score_audio(speech16[..., :500], speech16[..., :520], 16000)
    for key in ("mel_distance", "stft_distance", "pesq_wb", "pesq_nb", "stoi"):
        assert math.isnan(scores[key]), key
    silent = suite.score_audio(torch.zeros(1, 1, 16000), _noisy(torch.zeros(1, 1, 16000)), 16000)
    assert math.isnan(silent["si_sdr"]) and math.isnan(silent["stoi"])
    assert math.isnan(silent["pesq_wb"])

    acc = {FULL: PointAccumulator({}), SweepPoint("levels", 1): PointAccumulator({})}
    for a in acc.values():
        for s in (scores, silent):
            a.add_item(s, [], bits=0.0, tokens=0, amount=1.0, pixels=0.0)
    assert acc[FULL].metrics()["stoi"]["invalid"] == 2
    notes = _invalid_notes("tok", acc)
    stoi_note = next(n for n in notes if ": stoi " in n)
    assert "full 2/2" in stoi_note and "levels=1 2/2" in stoi_note and "0.4 s" in stoi_note


# --------------------------------------------------------------------------- images


def _photo(name: str, hw: tuple[int, int]) -> torch.Tensor:
    image = getattr(skdata, name)()
    return torch.from_numpy(image[: hw[0], : hw[1]]).permute(2, 0, 1).float() / 127.5 - 1


def test_image_metrics_per_item_match_scikit_image_in_a_batch() -> None:
    ref = torch.stack([_photo("astronaut", (96, 140)), _photo("coffee", (96, 140))])
    rec = torch.stack([_noisy(ref[0], 0.05, seed=3), _noisy(ref[1], 0.2, seed=4)])
    got_psnr, got_ssim = psnr(ref, rec), ssim(ref, rec)
    for i in range(2):
        a, b = _unit_hwc(ref[i]), _unit_hwc(rec[i])
        # [-1, 1] with range 2 is the same PSNR as [0, 1] with range 1.
        assert got_psnr[i].item() == pytest.approx(
            peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4
        )
        expected = _skimage_ssim(a, b)
        assert got_ssim[i].item() == pytest.approx(expected, abs=1e-4)
        # The uint8 convention (range 255) agrees up to quantisation.
        a8, b8 = (np.round(x * 255).astype(np.uint8) for x in (a, b))
        expected8 = _skimage_ssim(a8, b8, data_range=255)
        assert got_ssim[i].item() == pytest.approx(expected8, abs=2e-3)
    assert abs(got_ssim[0].item() - got_ssim[1].item()) > 0.1  # not a batch mean
    with pytest.raises(ValueError, match="larger than 10"):
        ssim(ref[..., :8, :8], rec[..., :8, :8])


def test_ms_ssim_is_nan_below_its_minimum_and_matches_torchmetrics_above() -> None:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    assert MS_SSIM_MIN_SIDE == 176
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(1, 3, 176, 200, generator=g) * 2 - 1
    rec = _noisy(ref, 0.1)
    # 161..175 a side: torchmetrics raises; the metric must give NaN instead.
    small = (ref[..., :168, :], rec[..., :168, :])
    assert math.isnan(ms_ssim(*small).item())
    assert math.isnan(MetricSuite().score_images(*small)[0]["ms_ssim"])
    expected = multiscale_structural_similarity_index_measure(
        (rec + 1) / 2, (ref + 1) / 2, data_range=1.0
    )
    assert ms_ssim(ref, rec).item() == pytest.approx(expected.item(), abs=1e-5)


# --------------------------------------------------------------------------- token statistics


def test_token_statistics_perplexity_usage_and_raster_order(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    size = 64
    grids = [rng.zipf(1.4, size=(3, 5)) % size for _ in range(3)]  # image codes (h, w)
    stats = TokenStatistics([size])
    for grid in grids:
        stats.update(grid[None])
    level = stats.summary()["levels"][0]
    flat = np.concatenate([g.reshape(-1) for g in grids])
    counts = np.bincount(flat, minlength=size)
    p = counts[counts > 0] / counts.sum()
    assert level["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))  # e^H(nats)
    assert level["used_codes"] == int((counts > 0).sum())
    assert level["usage"] == pytest.approx((counts > 0).mean())
    pairs: dict[tuple[int, int], int] = {}
    for grid in grids:  # raster order, rows continue into the next row, never across items
        seq = grid.reshape(-1)
        for a, b in itertools.pairwise(seq):
            pairs[(a, b)] = pairs.get((a, b), 0) + 1
    q = np.array(list(pairs.values()), dtype=float) / sum(pairs.values())
    assert level["distinct_bigrams"] == len(pairs)
    assert level["bigram_entropy_bits"] == pytest.approx(-(q * np.log2(q)).sum())
    # Compaction of pending counts, and exact pair ids for LFQ-size codebooks, agree.
    monkeypatch.setattr(ts._Histogram, "COMPACT_EVERY", 4)
    for codebook in (size, 1 << 40):
        again = TokenStatistics([codebook])
        for grid in grids:
            again.update(torch.from_numpy(grid)[None])
        other = again.summary()["levels"][0]
        for key in ("unigram_entropy_bits", "bigram_entropy_bits", "distinct_bigrams"):
            assert other[key] == pytest.approx(level[key])


def test_bench_keeps_a_tokenizer_whose_clip_is_too_short_to_score(tmp_path) -> None:
    import anytok
    from anytok.bench import BenchSettings, run_bench
    from anytok.checkpoint import save_checkpoint
    from anytok.media import save_audio

    data = tmp_path / "speech"
    data.mkdir()
    clip = sample_speech(sample_rate=16000).waveform
    save_audio(data / "long.wav", clip[:, :24000], 16000)
    save_audio(data / "blip.wav", clip[:, 8000:8480], 16000)  # 30 ms: a crash before
    checkpoint = save_checkpoint(
        anytok.create_model("seanet_fsq_16khz", tiny=True), tmp_path / "tok"
    )
    report = run_bench(BenchSettings(models=[str(checkpoint)], data=[data], warmup=0, repeats=1))
    (section,) = report["models"]
    assert "error" not in section and section["items"] == 2
    metrics = section["results"][0]["metrics"]
    for key in ("stoi", "pesq_wb", "mel_distance", "stft_distance"):
        assert metrics[key]["n"] == 1 and metrics[key]["invalid"] == 1, key
    assert any(": stoi " in note and "full 1/2" in note for note in report["notes"])


# --------------------------------------------------------------------------- review fixes


def test_si_sdr_keeps_a_nan_of_the_reconstruction(speech16) -> None:
    """Only channels with a silent *input* are left out: a NaN in one reconstructed channel
    used to vanish into nanmean, scoring the item on the other channel alone."""
    ref = torch.cat([speech16, 0.5 * speech16.flip(-1)], dim=1)
    rec = _noisy(ref, 0.02, seed=3)
    rec[0, 1, 100] = math.nan
    assert math.isnan(si_sdr(ref, rec).item())


def test_video_psnr_averages_the_finite_frames() -> None:
    """An exactly reconstructed frame (a black one, clamped to -1) counted as 100 dB and
    pulled a 32 dB clip to 49 dB; a clip identical throughout is inf (invalid, as an image)."""
    from anytok.metrics.video import frame_psnr

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 4, 16, 16, generator=g) * 2 - 1
    ref[:, :, 0] = -1
    rec = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    rec[:, :, 0] = -1
    per_frame = [
        peak_signal_noise_ratio(
            (ref[0, :, t].permute(1, 2, 0).double().numpy() + 1) / 2,
            (rec[0, :, t].permute(1, 2, 0).double().numpy() + 1) / 2,
            data_range=1.0,
        )
        for t in range(1, 4)
    ]
    assert frame_psnr(ref, rec).item() == pytest.approx(np.mean(per_frame), abs=1e-3)
    assert math.isinf(frame_psnr(ref, ref.clone()).item())


def test_ssim_of_flat_images_matches_scikit_image() -> None:
    """Computed in float64: in float32, 1 - SSIM of a flat grey came out 50x too large."""
    for base, shift in ((0.8, 0.004), (0.5, 0.25)):
        ref = torch.full((1, 3, 32, 32), base * 2 - 1)
        rec = ref + 2 * shift
        expected = _skimage_ssim(_unit_hwc(ref[0]), _unit_hwc(rec[0]))
        assert ssim(ref, rec).item() == pytest.approx(expected, abs=1e-6)


def test_bench_scores_images_smaller_than_the_ssim_window() -> None:
    """SSIM of an image under 11 pixels a side is NaN (reported as invalid); it used to raise
    and fail the whole tokenizer (no PSNR, rate or token statistics)."""
    from anytok.bench.runner import INVALID_REASONS

    small = torch.rand(2, 3, 8, 8) * 2 - 1
    scores = MetricSuite().score_images(small, _noisy(small))
    assert all(math.isnan(s["ssim"]) and math.isfinite(s["psnr"]) for s in scores)
    video = torch.rand(1, 3, 3, 8, 8) * 2 - 1
    assert math.isnan(MetricSuite().score_video(video, _noisy(video))["ssim"])
    assert "ssim" in INVALID_REASONS
    with pytest.raises(ValueError, match="larger than 10 pixels a side"):
        ssim(small, small)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"kind": "text", "box": [0, None, 10, 10]}, "'box' must be"),
        ({"kind": "text", "box": ["0", "0", "10", "10"]}, "'box' must be"),
        ({"kind": "text", "box": [False, 0, True, 10]}, "'box' must be"),
        ({"kind": "text", "box": [0, 0, 10, float("inf")]}, "'box' must be"),
        ({"kind": "text", "box": [0, 0, 10, 10], "text": 5}, "'text' must be a string"),
    ],
)
def test_region_annotations_refuse_bad_values(tmp_path, entry, message) -> None:
    """A null coordinate was a TypeError traceback; a numeric transcript failed mid-run."""
    import json

    from anytok.metrics.regions import load_annotations

    path = tmp_path / "regions.json"
    path.write_text(json.dumps({"a.png": [entry]}))
    with pytest.raises(ValueError, match=f"regions.json: 'a.png' entry 0: {message}"):
        load_annotations(path)


def test_bitrate_and_statistics_count_each_level_on_its_own_grid() -> None:
    """Hierarchical video stores its coarse level repeated over 2x2 blocks of the fine grid:
    the bench charged every repeat (9.2 kbps reported as 14.1) and counted level 0 four times
    in the token statistics. Padding past an item's length is not counted either."""
    import anytok
    from anytok.bench.throughput import level_counts

    model = anytok.create_model("hierarchical", tiny=True).eval()
    codes = torch.randint(0, 5, (2, 2, 3, 4, 6))
    coarse, fine = model.informative_codes(codes[0])
    assert torch.equal(coarse, codes[0, 0, :, ::2, ::2]) and torch.equal(fine, codes[0, 1])
    assert level_counts(model, codes, [3, 2]) == [[3 * 2 * 3, 3 * 4 * 6], [2 * 2 * 3, 2 * 4 * 6]]
    audio = anytok.create_model("seanet_fsq_24khz", tiny=True)
    flat = torch.randint(0, 5, (2, 2, 10))
    assert level_counts(audio, flat, [10, 4]) == [[10, 10], [4, 4]]
    stats = TokenStatistics([7, 5])
    stats.update(model.informative_codes(codes[0]))
    assert [lv["tokens"] for lv in stats.summary()["levels"]] == [18, 72]


def test_video_psnr_of_a_clip_with_a_nan_frame_is_nan() -> None:
    """A NaN frame (e.g. a bf16 overflow in the decoder) was left out like an exact frame:
    the clip scored 32 dB. Only infinite (exact) frames are left out; NaN stays NaN."""
    from anytok.metrics.video import frame_psnr

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 4, 32, 32, generator=g) * 2 - 1
    rec = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    assert math.isfinite(frame_psnr(ref, rec).item())
    rec[:, :, 2] = math.nan
    assert math.isnan(psnr(ref[:, :, 2], rec[:, :, 2]).item())  # as an image's PSNR
    assert math.isnan(frame_psnr(ref, rec).item())
    assert math.isnan(MetricSuite().score_video(ref, rec)["psnr"])


def test_frame_diff_error_of_a_single_frame_is_invalid() -> None:
    """A 1-frame clip has no frame-to-frame change: it scored a perfect 0 however wrong the
    reconstruction, and that 0 was averaged in. It is NaN, counted invalid, with a reason."""
    from anytok.bench.runner import INVALID_REASONS
    from anytok.metrics.video import temporal_consistency

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 3, 16, 16, generator=g) * 2 - 1
    rec = torch.rand(1, 3, 3, 16, 16, generator=g) * 2 - 1  # a totally wrong reconstruction
    assert math.isnan(temporal_consistency(ref[:, :, :1], rec[:, :, :1]).item())
    acc = PointAccumulator({})
    suite = MetricSuite()
    for frames in (1, 3):
        scores = suite.score_video(ref[:, :, :frames], rec[:, :, :frames])
        acc.add_item(scores, [], bits=0.0, tokens=0, amount=1.0, pixels=1.0)
    summary = acc.metrics()["frame_diff_error"]
    expected = temporal_consistency(ref, rec).item()
    assert summary["n"] == 1 and summary["invalid"] == 1
    assert summary["mean"] == pytest.approx(expected)
    (note,) = [n for n in _invalid_notes("tok", {FULL: acc}) if "frame_diff_error" in n]
    assert "full 1/2" in note and INVALID_REASONS["frame_diff_error"] in note
    assert "single-frame" in INVALID_REASONS["frame_diff_error"]
