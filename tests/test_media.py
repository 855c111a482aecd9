"""anytok.media: round trips, resampling, channel and frame-rate conversion, bundled samples,
and one clear MediaError for every kind of bad file."""

from __future__ import annotations

import copy
import math
import os
import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anytok.media import (
    AudioClip,
    ImageData,
    MediaError,
    MediaLimits,
    VideoClip,
    find_media,
    iter_audio,
    load_audio,
    load_image,
    load_media,
    load_video,
    modality_of,
    other_media_note,
    resample,
    resize_cover,
    samples,
    save_audio,
    save_image,
    save_video,
    to_channels,
)
from anytok.media.errors import sniff

# ---------------------------------------------------------------- helpers


def sine(freq: float, sample_rate: int, seconds: float, channels: int = 1) -> torch.Tensor:
    """``(channels, samples)`` sine at 0.5 amplitude; channel c is shifted in phase."""
    t = torch.arange(round(sample_rate * seconds)) / sample_rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * freq * t + c) for c in range(channels)])


def peak_frequency(wave: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * sample_rate / wave.shape[-1]


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish uint8 ``(H, W, 3)`` image (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A real 8x8 PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb)."""
    Image.fromarray(random_image(8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def counting_video(path: Path, frames: int, fps: float, size: int = 32) -> Path:
    """Frame ``i`` is a flat gray of level ``20 + 10 * i`` (recover ``i`` with frame_index)."""
    levels = torch.tensor([20 + 10 * i for i in range(frames)], dtype=torch.float32)
    video = (levels / 127.5 - 1.0).view(1, frames, 1, 1).expand(3, frames, size, size)
    return save_video(path, video, fps)


def frame_index(video: torch.Tensor) -> list[int]:
    """Inverse of :func:`counting_video` for ``(3, T, H, W)``."""
    levels = (video.mean(dim=(0, 2, 3)) + 1.0) * 127.5
    return [round((float(v) - 20) / 10) for v in levels]


@pytest.fixture
def wav_file(tmp_path: Path) -> Path:
    return save_audio(tmp_path / "tone.wav", sine(440, 16000, 0.5, channels=2), 16000)


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    Image.fromarray(random_image(40, 56)).save(path)
    return path


@pytest.fixture
def mp4_file(tmp_path: Path) -> Path:
    return counting_video(tmp_path / "clip.mp4", frames=12, fps=8)


# ---------------------------------------------------------------- errors


def test_media_error_fields() -> None:
    err = MediaError("a/b.wav", "file is empty (0 bytes)")
    assert err.path == Path("a/b.wav")
    assert err.problem == "file is empty (0 bytes)"
    assert str(err) == f"{Path('a/b.wav')}: file is empty (0 bytes)"
    clone = copy.copy(err)
    assert (clone.path, clone.problem) == (err.path, err.problem)


def test_limits_defaults() -> None:
    limits = MediaLimits()
    assert limits.max_audio_seconds == 4 * 3600
    assert limits.max_image_pixels == 100_000_000
    assert limits.max_video_frames > 0 and limits.max_video_pixels_per_frame > 0


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_round_trip(tmp_path: Path, suffix: str) -> None:
    wave = sine(440, 16000, 0.5, channels=2)
    path = save_audio(tmp_path / f"tone{suffix}", wave, 16000)
    clip = load_audio(path)
    assert isinstance(clip, AudioClip)
    assert clip.waveform.shape == (2, 8000) and clip.waveform.dtype == torch.float32
    assert clip.sample_rate == clip.original_sample_rate == 16000
    assert clip.original_channels == 2 and clip.path == path
    assert clip.duration == pytest.approx(0.5)
    torch.testing.assert_close(clip.waveform, wave, atol=1 / 32768 + 1e-6, rtol=0)


@pytest.mark.parametrize(("name", "codec"), [("tone.m4a", "ALAC"), ("tone.mka", "PCM_16")])
def test_ffmpeg_audio_containers_decode_exactly(tmp_path: Path, name: str, codec: str) -> None:
    # Containers libsndfile cannot read go through FFmpeg; lossless codecs give the samples
    # back bit for bit, so the FFmpeg path is checked exactly, channels and rate included.
    wave = torch.round(sine(440, 22050, 0.5, channels=2) * 32767) / 32767
    wave[1] *= 0.5
    path = save_audio(tmp_path / name, wave, 22050, subtype=codec)
    with av.open(str(path)) as container:  # what FFmpeg itself finds in the file
        stream = container.streams.audio[0]
        assert stream.codec_context.name == {"ALAC": "alac", "PCM_16": "pcm_s16le"}[codec]
        assert (stream.codec_context.sample_rate, stream.channels) == (22050, 2)
    clip = load_audio(path)
    assert clip.sample_rate == clip.original_sample_rate == 22050
    assert clip.original_channels == 2 and clip.waveform.shape == (2, 11025)
    torch.testing.assert_close(clip.waveform, wave, atol=1 / 32767, rtol=0)
    assert load_audio(path, sample_rate=16000, channels=1).waveform.shape == (1, 8000)
    assert find_media(tmp_path, modality="audio") == [path]  # folder walks find them too


def noise_wave(rate: int, seconds: float, channels: int = 2) -> torch.Tensor:
    """Quantized noise (exact in 16-bit PCM): a window's place in it is unambiguous."""
    gen = torch.Generator().manual_seed(0)
    wave = (torch.rand(channels, int(rate * seconds), generator=gen) - 0.5).mul(32767).round()
    return wave / 32767


def first_sample_placed(path: Path, offset: float) -> int:
    """File sample where :func:`load_audio` ``exact=False`` starts decoding for ``offset``."""
    from anytok.media.audio import _audio_frames

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        return _audio_frames(container, stream, rate, round(offset * rate))[0]


@pytest.mark.parametrize("resample_to", [None, 24000])
def test_inexact_windows_seek_mp4_to_the_sample(tmp_path: Path, resample_to: int | None) -> None:
    # MP4 stamps audio in samples: a sought window (ALAC: a stateless codec) holds exactly
    # the whole decode's samples, resampled or not, and the seek really happened.
    wave = noise_wave(16000, 6.0)
    path = save_audio(tmp_path / "long.m4a", wave, 16000, subtype="ALAC")
    whole = load_audio(path, sample_rate=resample_to).waveform
    rate = resample_to or 16000
    for offset in (0.2, 2.5, 4.75, 5.9):
        window = load_audio(path, sample_rate=resample_to, offset=offset, duration=0.5, exact=False)
        first = round(offset * rate)
        assert torch.equal(window.waveform, whole[:, first : first + window.waveform.shape[1]])
    assert window.waveform.shape[1] == round(0.1 * rate)  # the last one reaches the end
    assert first_sample_placed(path, 0.2) == 0  # within the warm-up: from the start
    assert 0 < first_sample_placed(path, 4.75) <= (4.75 - 0.5) * 16000
    with pytest.raises(MediaError, match="offset 7 s is at or past the end"):
        load_audio(path, offset=7.0, duration=0.5, exact=False)


def test_inexact_windows_of_matroska_audio_are_within_a_millisecond(tmp_path: Path) -> None:
    # Matroska stamps milliseconds: a sought window is the whole decode's shifted by less
    # than one; raw ADTS has no index and is never sought.
    wave = noise_wave(16000, 6.0)
    path = save_audio(tmp_path / "long.mka", wave, 16000, subtype="PCM_16")
    whole = load_audio(path).waveform
    window = load_audio(path, offset=4.0, duration=0.25, exact=False).waveform
    shifts = [s for s in range(-16, 17) if torch.equal(window, whole[:, 64000 + s : 68000 + s])]
    assert len(shifts) == 1 and abs(shifts[0]) <= 16  # a tick
    assert 0 < first_sample_placed(path, 4.0) <= 3.5 * 16000
    exact = load_audio(path, offset=4.0, duration=0.25).waveform
    assert torch.equal(exact, whole[:, 64000:68000])
    adts = save_audio(tmp_path / "tone.aac", sine(440, 16000, 3.0), 16000)
    assert first_sample_placed(adts, 2.0) == 0


@pytest.mark.parametrize("name", ["speech.webm", "speech.mkv"])
def test_matroska_audio_under_video_names_is_read(tmp_path: Path, name: str) -> None:
    # yt-dlp saves Opus audio as .webm: libsndfile refuses it, FFmpeg reads it, whole, in
    # windows and chunk by chunk.
    wave = sine(440, 48000, 2.0)
    path = save_audio(tmp_path / "speech.weba", wave, 48000).rename(tmp_path / name)
    clip = load_audio(path)
    assert clip.sample_rate == 48000 and clip.waveform.shape == (1, 96000)
    assert peak_frequency(clip.waveform[0], 48000) == pytest.approx(440, abs=2)
    window = load_audio(path, offset=1.0, duration=0.5).waveform
    torch.testing.assert_close(window, clip.waveform[:, 48000:72000], atol=0, rtol=0)
    chunks = list(iter_audio(path, 40000))
    torch.testing.assert_close(torch.cat(chunks, 1), clip.waveform, atol=0, rtol=0)


def test_aac_m4a_decodes_and_bad_m4a_files_are_named(tmp_path: Path) -> None:
    # Lossy AAC: the tone comes back (encoder delay aside); an M4A named .wav is still read
    # by FFmpeg (libsndfile would refuse it), a truncated one is a MediaError.
    wave = sine(440, 48000, 1.0)
    path = save_audio(tmp_path / "tone.m4a", wave, 48000)
    clip = load_audio(path)
    assert clip.sample_rate == 48000 and clip.waveform.shape[0] == 1
    decoded, tone = clip.waveform[0].numpy(), wave[0, :24000].numpy()
    lag = max(range(0, 4096), key=lambda k: float(np.dot(decoded[k : k + 24000], tone)))
    assert np.corrcoef(decoded[lag : lag + 24000], tone)[0, 1] > 0.99
    renamed = tmp_path / "really_m4a.wav"
    renamed.write_bytes(path.read_bytes())
    assert load_audio(renamed).waveform.shape == clip.waveform.shape
    truncated = tmp_path / "cut.m4a"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(MediaError, match=r"cut\.m4a: .*cannot be decoded"):
        load_audio(truncated)
    text = tmp_path / "notes.m4a"
    text.write_text("not audio at all " * 8)
    with pytest.raises(MediaError, match="looks like a text file"):
        load_audio(text)


@pytest.mark.parametrize(
    ("name", "subtype", "codec", "lossless"),
    [
        ("a.m4a", None, "aac", False),
        ("a.m4b", "ALAC", "alac", True),
        ("a.aac", None, "aac", False),
        ("a.mka", None, "flac", True),
        ("b.mka", "pcm_16", "pcm_s16le", True),
        ("c.mka", "OPUS", "opus", False),
        ("a.weba", None, "opus", False),
    ],
)
def test_save_audio_writes_ffmpeg_formats(
    tmp_path: Path, name: str, subtype: str | None, codec: str, lossless: bool
) -> None:
    # M4A / M4B / ADTS / Matroska / WebM through FFmpeg: the codec asked for, read back
    # exactly (16-bit) or, lossy, the same tone after the encoder's delay.
    wave = torch.round(sine(440, 48000, 0.5, channels=2) * 32767) / 32767
    wave[1] *= 0.5
    path = save_audio(tmp_path / name, wave, 48000, subtype=subtype)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == codec
    clip = load_audio(path)
    assert clip.sample_rate == 48000 and clip.waveform.shape[0] == 2
    if lossless:
        torch.testing.assert_close(clip.waveform, wave, atol=1 / 32767, rtol=0)
    else:  # AAC pads to whole frames (ADTS keeps its priming too): at least the input
        decoded, tone = clip.waveform[0].numpy(), wave[0, :12000].numpy()
        lag = max(range(0, 4096), key=lambda k: float(np.dot(decoded[k : k + 12000], tone)))
        assert np.corrcoef(decoded[lag : lag + 12000], tone)[0, 1] > 0.99


def test_save_audio_ffmpeg_errors_and_eight_channels(tmp_path: Path) -> None:
    wave = sine(440, 44100, 0.1, channels=8)
    with pytest.raises(
        MediaError, match=r"x\.m4a: cannot write \.m4a as 'FLAC': the subtypes are AAC, ALAC"
    ):
        save_audio(tmp_path / "x.m4a", wave, 44100, subtype="FLAC")
    with pytest.raises(
        MediaError, match=r"Opus takes 8000, 12000, 16000, 24000, 48000 Hz only, not 44100"
    ):
        save_audio(tmp_path / "x.weba", wave, 44100)
    with pytest.raises(MediaError, match="cannot write AAC audio of 2 channels at 1000 Hz"):
        save_audio(tmp_path / "x.m4a", sine(100, 1000, 0.5, channels=2), 1000)
    with pytest.raises(MediaError, match="1 to 8 channels here, not 9"):
        save_audio(tmp_path / "y.mka", sine(440, 44100, 0.1, channels=9), 44100)
    with pytest.raises(
        MediaError, match=r"extensions are \.wav, .*\.m4a, \.m4b, \.aac, \.mka, \.weba"
    ):
        save_audio(tmp_path / "x.xyz", wave, 44100)
    # 7.1 through FFmpeg: PyAV's to_ndarray of an 8-channel planar frame crashed the
    # process; reading goes through interleaved frames. ALAC takes 7.1 as "7.1(wide)".
    quantized = torch.round(wave * 32767) / 32767
    for name, subtype in (("surround.mka", None), ("surround.m4a", "ALAC")):
        path = save_audio(tmp_path / name, quantized, 44100, subtype=subtype)
        torch.testing.assert_close(load_audio(path).waveform, quantized, atol=1 / 32767, rtol=0)
        chunks = torch.cat(list(iter_audio(path, 1000)), 1)
        assert torch.equal(chunks, load_audio(path).waveform)
    for channels in (3, 4, 7):  # layouts ALAC and Opus take, not FFmpeg's defaults
        three = sine(440, 48000, 0.1, channels=channels)
        assert (
            load_audio(
                save_audio(tmp_path / f"{channels}.m4a", three, 48000, "ALAC")
            ).waveform.shape[0]
            == channels
        )
        assert (
            load_audio(save_audio(tmp_path / f"{channels}.weba", three, 48000)).waveform.shape[0]
            == channels
        )


def test_audio_float_round_trip_is_exact_and_clipped(tmp_path: Path) -> None:
    wave = sine(300, 8000, 0.25)
    wave[0, 10] = 1.7  # out of range: clipped on save
    path = save_audio(tmp_path / "float.wav", wave, 8000, subtype="FLOAT")
    clip = load_audio(path)
    assert clip.waveform[0, 10] == 1.0
    wave[0, 10] = 1.0
    torch.testing.assert_close(clip.waveform, wave)


def test_audio_mono_1d_save(tmp_path: Path) -> None:
    path = save_audio(tmp_path / "mono.wav", sine(200, 8000, 0.1)[0], 8000)
    assert load_audio(path).waveform.shape == (1, 800)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_names_that_are_not_utf8(tmp_path: Path, suffix: str) -> None:
    """A Latin-1 name (old archives leave them): soundfile would encode the str as UTF-8 and
    fail; anytok hands it the name's bytes, so loading, saving and errors all work."""
    name = tmp_path / os.fsdecode(b"caf\xe9" + suffix.encode())
    wave = sine(440, 8000, 0.1)
    save_audio(name, wave, 8000)
    assert b"caf\xe9" + suffix.encode() in os.listdir(os.fsencode(tmp_path))  # the raw bytes
    clip = load_audio(name)
    assert clip.path == name and clip.waveform.shape == (1, 800)
    torch.testing.assert_close(clip.waveform, wave, atol=1e-4, rtol=0)
    bad = tmp_path / os.fsdecode(b"bad\xe9.wav")
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(MediaError, match=r"bad.\.wav: .*cannot be decoded") as info:
        load_audio(bad)
    assert "Error opening" not in str(info.value)  # soundfile's prefix is stripped


def test_load_audio_resamples(wav_file: Path) -> None:
    clip = load_audio(wav_file, sample_rate=24000)
    assert clip.sample_rate == 24000 and clip.original_sample_rate == 16000
    assert clip.waveform.shape == (2, 12000)
    assert peak_frequency(clip.waveform[0], 24000) == pytest.approx(440, abs=2)
    assert clip.waveform.abs().max() <= 1.0


def test_resample_helper() -> None:
    wave = sine(1000, 48000, 0.1, channels=2).unsqueeze(0)  # batch axis is fine
    down = resample(wave, 48000, 16000)
    assert down.shape == (1, 2, 1600)
    assert peak_frequency(down[0, 0], 16000) == pytest.approx(1000, abs=10)
    assert resample(wave, 16000, 16000) is wave
    with pytest.raises(ValueError):
        resample(wave, 0, 16000)
    with pytest.raises(TypeError, match="floating-point waveform, got torch.int16"):
        resample(torch.zeros(1, 100, dtype=torch.int16), 48000, 16000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rates", [(44100, 24000), (16000, 24000), (48000, 16000)])
def test_resample_matches_torchaudio_and_keeps_its_filter(
    rates: tuple[int, int], dtype: torch.dtype
) -> None:
    """The kept filter bank gives torchaudio's functional resample bit for bit, in the
    input's dtype, and is built once per (rates, dtype, device)."""
    import torchaudio.functional as AF

    from anytok.media.audio import RESAMPLE_FILTER, _resampler

    orig, new = rates
    wave = torch.randn(3, 2, 4410, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _resampler.cache_clear()
    out = resample(wave, orig, new)
    assert out.dtype == dtype
    assert torch.equal(out, AF.resample(wave, orig, new, **RESAMPLE_FILTER))
    # The second call reuses the bank. Bits match torchaudio on the same shape; across batch
    # shapes the conv backend may sum in another order (seen in fp64 on an AMD EPYC).
    one = resample(wave[:, :1], orig, new)
    assert torch.equal(one, AF.resample(wave[:, :1], orig, new, **RESAMPLE_FILTER))
    torch.testing.assert_close(one, out[:, :1])
    info = _resampler.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_resample_filter_made_in_inference_mode_serves_autograd() -> None:
    from anytok.media.audio import _resampler

    _resampler.cache_clear()
    with torch.inference_mode():
        resample(torch.randn(1, 3000), 30000, 20000)
    wave = torch.randn(1, 3000, requires_grad=True)
    resample(wave, 30000, 20000).square().sum().backward()
    assert wave.grad is not None and wave.grad.abs().sum() > 0


def test_to_channels() -> None:
    mono = torch.randn(1, 100)
    stereo = torch.randn(2, 100)
    assert torch.equal(to_channels(mono, 3), mono.repeat(3, 1))
    torch.testing.assert_close(to_channels(stereo, 1), stereo.mean(0, keepdim=True))
    assert to_channels(stereo, 2) is stereo
    batched = torch.randn(4, 2, 50)
    assert to_channels(batched, 1).shape == (4, 1, 50)
    with pytest.raises(ValueError, match="downmix"):
        to_channels(torch.randn(3, 100), 2)


def test_load_audio_channel_conversion(tmp_path: Path, wav_file: Path) -> None:
    mono = load_audio(wav_file, channels=1)
    assert mono.waveform.shape == (1, 8000) and mono.original_channels == 2
    six = save_audio(tmp_path / "surround.wav", torch.zeros(6, 100), 8000)
    with pytest.raises(MediaError) as info:
        load_audio(six, channels=2)
    assert "surround.wav" in str(info.value) and "channels" in info.value.problem


# ---------------------------------------------------------------- images


def test_image_round_trip_png(tmp_path: Path) -> None:
    image = torch.rand(3, 24, 40) * 2 - 1
    path = save_image(tmp_path / "img.png", image)
    data = load_image(path)
    assert isinstance(data, ImageData)
    assert data.image.shape == (3, 24, 40) and data.image.dtype == torch.float32
    assert data.original_size == (24, 40) and data.path == path
    torch.testing.assert_close(data.image, image, atol=1 / 127.5, rtol=0)


def test_image_round_trip_jpeg(tmp_path: Path) -> None:
    image = torch.from_numpy(random_image(64, 48)).permute(2, 0, 1).float() / 127.5 - 1
    path = save_image(tmp_path / "img.jpg", image)
    data = load_image(path)
    assert data.image.shape == (3, 64, 48)
    assert (data.image - image).abs().mean() < 0.03


def test_load_image_resizes_with_centre_crop(png_file: Path) -> None:
    data = load_image(png_file, size=(20, 20))
    assert data.image.shape == (3, 20, 20) and data.original_size == (40, 56)
    assert load_image(png_file, size=16).image.shape == (3, 16, 16)
    assert data.image.min() >= -1 and data.image.max() <= 1


def test_resize_cover() -> None:
    x = torch.rand(2, 3, 30, 60)
    assert resize_cover(x, (10, 10)).shape == (2, 3, 10, 10)
    assert resize_cover(x, (40, 20)).shape == (2, 3, 40, 20)
    assert resize_cover(x, (30, 60)) is x


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_converts_modes_to_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(random_image(16, 16))
    if mode == "I;16":
        im = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    elif mode == "RGBA":
        im = rgb.convert("RGBA")
        im.putalpha(0)  # fully transparent: composited on white
    else:
        im = rgb.convert(mode)
    path = tmp_path / f"mode_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path)
    data = load_image(path)
    assert data.image.shape == (3, 16, 16)
    if mode in ("I;16", "RGBA"):
        assert torch.allclose(data.image, torch.ones(3, 16, 16))


# ---------------------------------------------------------------- video


def test_video_round_trip(tmp_path: Path) -> None:
    clip = samples.sample_video(frames=9, size=64, fps=8)
    path = save_video(tmp_path / "clip.mp4", clip.video, clip.fps)
    loaded = load_video(path)
    assert isinstance(loaded, VideoClip)
    assert loaded.video.shape == (3, 9, 64, 64) and loaded.video.dtype == torch.float32
    assert loaded.fps == loaded.original_fps == 8 and loaded.original_frames == 9
    assert loaded.original_size == (64, 64) and loaded.path == path
    assert loaded.duration == pytest.approx(9 / 8)
    assert (loaded.video - clip.video).abs().mean() < 0.05


def test_save_video_pads_odd_sizes(tmp_path: Path) -> None:
    video = torch.zeros(3, 3, 33, 47)
    loaded = load_video(save_video(tmp_path / "odd.mp4", video, Fraction(30000, 1001)))
    assert loaded.video.shape == (3, 3, 34, 48)
    assert loaded.original_fps == pytest.approx(29.97, abs=0.01)


def test_video_frames_are_in_order(mp4_file: Path) -> None:
    assert frame_index(load_video(mp4_file).video) == list(range(12))


@pytest.mark.parametrize(
    ("fps", "start", "max_frames", "expected"),
    [
        (4, 0.0, None, [0, 2, 4, 6, 8, 10]),
        (16, 0.0, 6, [0, 0, 1, 1, 2, 2]),
        (8, 0.5, None, [4, 5, 6, 7, 8, 9, 10, 11]),
        (None, 0.5, 3, [4, 5, 6]),
        # Targets at 0, 1.6, 3.2, ... 11.2 source frames (12 frames = 1.5 s): nearest wins.
        (5, 0.0, None, [0, 2, 3, 5, 6, 8, 10, 11]),
    ],
)
def test_load_video_fps_sampling(
    mp4_file: Path, fps: float | None, start: float, max_frames: int | None, expected: list[int]
) -> None:
    clip = load_video(mp4_file, fps=fps, start=start, max_frames=max_frames)
    assert frame_index(clip.video) == expected
    assert clip.fps == (fps or 8) and clip.original_fps == 8


def test_load_video_resizes(mp4_file: Path) -> None:
    clip = load_video(mp4_file, size=(16, 24), max_frames=2)
    assert clip.video.shape == (3, 2, 16, 24) and clip.original_size == (32, 32)


# ---------------------------------------------------------------- dispatch and discovery


def test_modality_of() -> None:
    assert modality_of("a/b.WAV") == "audio"
    assert modality_of("x.flac") == "audio"
    assert modality_of("x.jpeg") == "image"
    assert modality_of("x.mkv") == "video"
    assert modality_of("x.txt") is None
    assert modality_of("noext") is None


def test_load_media_dispatch(wav_file: Path, png_file: Path, mp4_file: Path) -> None:
    assert isinstance(load_media(wav_file, sample_rate=8000), AudioClip)
    assert isinstance(load_media(png_file), ImageData)
    assert isinstance(load_media(mp4_file, max_frames=2), VideoClip)
    odd = png_file.with_suffix(".bin")
    odd.write_bytes(png_file.read_bytes())
    assert isinstance(load_media(odd, modality="image"), ImageData)
    with pytest.raises(MediaError, match="extension"):
        load_media(odd)
    with pytest.raises(ValueError):
        load_media(odd, modality="text")  # type: ignore[arg-type]


def test_find_media(tmp_path: Path) -> None:
    for rel in ["b.wav", "a.flac", "sub/c.WAV", "sub/deep/d.wav", "x.png", "v.mp4", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "e.wav").write_bytes(b"x")
    (tmp_path / "._f.wav").write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in find_media(tmp_path, "audio")]
    assert names == ["a.flac", "b.wav", "sub/c.WAV", "sub/deep/d.wav"]
    flat = find_media([tmp_path], modality="audio", recursive=False)
    assert [p.name for p in flat] == ["a.flac", "b.wav"]
    every = [p.relative_to(tmp_path).as_posix() for p in find_media([tmp_path])]
    assert every == ["a.flac", "b.wav", "sub/c.WAV", "sub/deep/d.wav", "v.mp4", "x.png"]
    # Files named directly come back as given (the loader reports what is wrong with them),
    # in argument order, without duplicates.
    named = find_media([tmp_path / "notes.txt", tmp_path / "b.wav", tmp_path], "audio")
    assert named[:2] == [tmp_path / "notes.txt", tmp_path / "b.wav"] and len(named) == 5
    with pytest.raises(MediaError, match="no such file"):
        find_media([tmp_path / "missing"])


def test_other_media_note_says_what_a_fruitless_search_found(tmp_path: Path) -> None:
    for rel in ["clips/a.webm", "clips/b.mp4", "pics/x.png", "pics/y.JPG", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert other_media_note(tmp_path / "clips", "audio") == (
        " (found 2 video files (.mp4, .webm) instead: folders are searched by extension; a "
        "video container holding audio is read when named directly or listed in a JSONL "
        "manifest)"
    )
    assert other_media_note([tmp_path / "pics"], "video") == (
        " (found 2 image files (.jpg, .png) instead: a video tokenizer reads video files only)"
    )
    assert "1 image file (.png); 1 video file (.webm)" in other_media_note(
        [tmp_path / "pics/x.png", tmp_path / "clips/a.webm"], "audio"
    )
    assert other_media_note([tmp_path / "notes.txt", tmp_path / "missing"], "audio") == ""


# ---------------------------------------------------------------- bundled samples


def test_sample_assets_are_small_and_present() -> None:
    paths = samples.sample_paths()
    assert set(paths) == {"astronaut", "coffee", "speech"}
    assert all(p.is_file() for p in paths.values())
    assets = Path(samples.__file__).parent.parent / "assets"
    assert sum(p.stat().st_size for p in assets.iterdir()) < 400_000


def test_sample_media() -> None:
    image = samples.sample_image()
    assert image.image.shape == (3, 256, 256) and image.image.std() > 0.2
    assert samples.sample_image("coffee", size=64).image.shape == (3, 64, 64)
    speech = samples.sample_speech()
    assert speech.sample_rate == 24000 and speech.waveform.shape[0] == 1
    assert 3.0 < speech.duration < 6.0 and speech.waveform.abs().max() > 0.5
    assert samples.sample_speech(sample_rate=16000).waveform.shape[-1] == round(
        speech.waveform.shape[-1] * 2 / 3
    )
    video = samples.sample_video()
    assert video.video.shape == (3, 17, 128, 128) and video.fps == 8
    assert video.video.min() >= -1 and video.video.max() <= 1
    # Consecutive frames move a little; the cut to the second photo is a big jump.
    steps = (video.video[:, 1:] - video.video[:, :-1]).abs().mean(dim=(0, 2, 3))
    assert int(steps.argmax()) == 17 * 2 // 3 - 1 and float(steps.min()) > 0
    assert samples.sample_video(frames=3, size=(32, 48)).video.shape == (3, 3, 32, 48)


# ---------------------------------------------------------------- bad files

Maker = Callable[[Path], Path]


def _copy_truncated(source: Callable[[Path], Path], keep: float) -> Maker:
    def make(dir_: Path) -> Path:
        good = source(dir_ / "good")
        bad = dir_ / f"broken{good.suffix}"
        data = good.read_bytes()
        bad.write_bytes(data[: int(len(data) * keep)])
        return bad

    return make


def _good_wav(base: Path) -> Path:
    return save_audio(base.with_suffix(".wav"), sine(440, 16000, 1.0), 16000)


def _good_flac(base: Path) -> Path:
    return save_audio(base.with_suffix(".flac"), sine(440, 16000, 1.0), 16000)


def _good_png(base: Path) -> Path:
    Image.fromarray(random_image(64, 64)).save(base.with_suffix(".png"))
    return base.with_suffix(".png")


def _good_jpg(base: Path) -> Path:
    Image.fromarray(random_image(64, 64)).save(base.with_suffix(".jpg"))
    return base.with_suffix(".jpg")


def _good_mp4(base: Path) -> Path:
    return save_video(base.with_suffix(".mp4"), samples.sample_video(12, 32).video, 8)


def _good_mp4_faststart(base: Path) -> Path:
    # moov atom first (as web videos are): a truncated copy still opens, frames are missing.
    path = base.with_suffix(".mp4")
    video = samples.sample_video(24, 32).video
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i, array in enumerate(((video + 1) * 127.5).round().byte().permute(1, 2, 3, 0)):
            frame = av.VideoFrame.from_ndarray(array.numpy(), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _named(name: str, data: bytes) -> Maker:
    def make(dir_: Path) -> Path:
        (dir_ / name).write_bytes(data)
        return dir_ / name

    return make


def _renamed(source: Callable[[Path], Path], name: str) -> Maker:
    def make(dir_: Path) -> Path:
        good = source(dir_ / "good")
        return good.rename(dir_ / name)

    return make


def _nan_wav(dir_: Path) -> Path:
    data = np.zeros((800, 1), dtype=np.float32)
    data[100, 0], data[200, 0] = np.nan, np.inf
    sf.write(dir_ / "nan.wav", data, 8000, subtype="FLOAT")
    return dir_ / "nan.wav"


def _zero_wav(dir_: Path) -> Path:
    sf.write(dir_ / "silent.wav", np.zeros((0, 1), dtype=np.float32), 8000)
    return dir_ / "silent.wav"


def _zero_frame_avi(dir_: Path) -> Path:
    path = dir_ / "empty_stream.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        container.start_encoding()
        container.mux(stream.encode())
    return path


def _folder(dir_: Path) -> Path:
    (dir_ / "folder.wav").mkdir()
    return dir_ / "folder.wav"


RANDOM = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
Load = Callable[..., object]

BAD_FILES: list[tuple[str, Load, Maker, str]] = [
    # (id, loader, make the bad file, a word the problem must contain)
    ("audio-missing", load_audio, lambda d: d / "missing.wav", "not found"),
    ("image-missing", load_image, lambda d: d / "missing.png", "not found"),
    ("video-missing", load_video, lambda d: d / "missing.mp4", "not found"),
    ("audio-folder", load_audio, _folder, "folder"),
    ("audio-empty", load_audio, _named("empty.wav", b""), "empty"),
    ("image-empty", load_image, _named("empty.png", b""), "empty"),
    ("video-empty", load_video, _named("empty.mp4", b""), "empty"),
    ("wav-truncated", load_audio, _copy_truncated(_good_wav, 0.5), "truncated"),
    ("wav-truncated-header", load_audio, _copy_truncated(_good_wav, 0.0005), "truncated"),
    ("flac-truncated", load_audio, _copy_truncated(_good_flac, 0.5), "truncated"),
    ("png-truncated", load_image, _copy_truncated(_good_png, 0.5), "truncated"),
    ("jpg-truncated", load_image, _copy_truncated(_good_jpg, 0.5), "truncated"),
    ("mp4-truncated", load_video, _copy_truncated(_good_mp4, 0.6), "truncated"),
    ("mp4-faststart-truncated", load_video, _copy_truncated(_good_mp4_faststart, 0.5), "truncated"),
    ("audio-corrupt", load_audio, _named("noise.wav", RANDOM), "corrupt"),
    ("image-corrupt", load_image, _named("noise.png", RANDOM), "corrupt"),
    ("video-corrupt", load_video, _named("noise.mp4", RANDOM), "corrupt"),
    ("audio-text", load_audio, _named("notes.wav", b"hello, this is not audio\n" * 20), "text"),
    ("png-as-wav", load_audio, _renamed(_good_png, "photo.wav"), "PNG"),
    ("jpg-as-flac", load_audio, _renamed(_good_jpg, "photo.flac"), "JPEG"),
    ("wav-as-png", load_image, _renamed(_good_wav, "sound.png"), "WAV"),
    ("mp4-as-jpg", load_image, _renamed(_good_mp4, "clip.jpg"), "MP4"),
    ("png-as-mp4", load_video, _renamed(_good_png, "photo.mp4"), "PNG"),
    ("wav-as-mp4", load_video, _renamed(_good_wav, "sound.mp4"), "WAV"),
    ("audio-zero-length", load_audio, _zero_wav, "no audio samples"),
    ("video-zero-frames", load_video, _zero_frame_avi, "no video frames"),
    ("audio-nan", load_audio, _nan_wav, "NaN"),
    (
        "image-bomb",
        load_image,
        lambda d: png_with_header_size(d / "bomb.png", 10**5, 10**5),
        "large",
    ),
    (
        "image-absurd",
        load_image,
        lambda d: png_with_header_size(d / "wide.png", 12000, 9000),
        "megapixels",
    ),
    (
        "image-zero-width",
        load_image,
        lambda d: png_with_header_size(d / "thin.png", 0, 64),
        "corrupt",
    ),
]


@pytest.mark.parametrize(
    ("loader", "make", "word"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_files_raise_clear_media_errors(
    tmp_path: Path, loader: Load, make: Maker, word: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(MediaError) as info:
        loader(path)
    err = info.value
    assert type(err) is MediaError
    assert path.name in str(err) and err.path == path
    assert word.lower() in err.problem.lower(), err.problem


@pytest.mark.parametrize(
    ("loader", "make", "limits", "kwargs", "word"),
    [
        (load_audio, _good_wav, MediaLimits(max_audio_seconds=0.5), {}, "too long"),
        (load_audio, _good_wav, MediaLimits(min_audio_samples=10**6), {}, "too short"),
        (load_image, _good_png, MediaLimits(max_image_pixels=1000), {}, "too large"),
        (load_image, _good_png, MediaLimits(min_image_side=100), {}, "too small"),
        (load_video, _good_mp4, MediaLimits(max_video_pixels_per_frame=100), {}, "too large"),
        (load_video, _good_mp4, MediaLimits(min_video_side=64), {}, "too small"),
        (load_video, _good_mp4, MediaLimits(max_video_frames=5), {}, "too many frames"),
        (load_video, _good_mp4, MediaLimits(max_video_frames=5), {"max_frames": 5}, None),
        (load_video, _good_mp4, None, {"start": 10.0}, "start"),
    ],
)
def test_limits(
    tmp_path: Path,
    loader: Load,
    make: Callable[[Path], Path],
    limits: MediaLimits | None,
    kwargs: dict[str, object],
    word: str | None,
) -> None:
    path = make(tmp_path / "sample")
    if word is None:
        loader(path, limits=limits, **kwargs)
        return
    with pytest.raises(MediaError, match=word) as info:
        loader(path, limits=limits, **kwargs)
    assert path.name in str(info.value)


@pytest.mark.parametrize(
    ("loader", "make"),
    [
        (load_audio, _good_wav),
        (load_audio, _good_flac),
        (load_image, _good_png),
        (load_image, _good_jpg),
        (load_video, _good_mp4),
        (load_video, _good_mp4_faststart),
    ],
    ids=["wav", "flac", "png", "jpg", "mp4", "mp4-faststart"],
)
def test_no_raw_decoder_errors_on_damaged_files(
    tmp_path: Path, loader: Load, make: Callable[[Path], Path]
) -> None:
    """Truncations and byte flips anywhere: either a clean load or a MediaError, never a
    raw soundfile / Pillow / PyAV exception."""
    good = make(tmp_path / "good")
    data = good.read_bytes()
    rng = np.random.default_rng(1)
    variants = [data[:n] for n in (1, 3, 8, 12, 20, 40, 100, len(data) // 3, len(data) - 1)]
    for _ in range(4):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), 16):
            flipped[pos] ^= 0xFF
        variants.append(bytes(flipped))
    for i, variant in enumerate(variants):
        path = tmp_path / f"damaged{i}{good.suffix}"
        path.write_bytes(variant)
        try:
            loader(path)
        except MediaError as err:
            assert path.name in str(err)


def test_save_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="extension"):
        save_audio(tmp_path / "x.xyz", torch.zeros(1, 10), 8000)
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "x.wav", torch.full((1, 10), float("nan")), 8000)
    with pytest.raises(ValueError):
        save_image(tmp_path / "x.png", torch.zeros(4, 8, 8))
    with pytest.raises(MediaError):
        save_image(tmp_path / "x.unknownext", torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        save_video(tmp_path / "x.mp4", torch.zeros(3, 8, 8), 8)
    with pytest.raises(MediaError):
        save_audio(tmp_path / "no" / "such" / "dir.wav", torch.zeros(1, 10), 8000)


def test_sniff() -> None:
    paths = samples.sample_paths()
    assert sniff(paths["astronaut"]) == ("a JPEG image", "image")
    assert sniff(paths["speech"]) == ("FLAC audio", "audio")
    assert sniff(os.devnull) is None
