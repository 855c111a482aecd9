"""Media loading edge cases found in an audit: 16-bit images, truncated AIFF / RF64 / W64 /
Ogg, MP3 files without a length header, coprime sample rates, frame-rate ties, rotated video
and the pipeline's video resizing."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image

from anytok.media import MediaError, load_audio, load_image, load_video, resample
from anytok.media.audio import _resample_direct
from anytok.pipeline import InputFormat, _fit, load_input


def _sine(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)], 1)


# ---------------------------------------------------------------- images


def test_dark_16_bit_image_keeps_its_16_bit_range(tmp_path: Path) -> None:
    gray = np.arange(256, dtype=np.uint16).reshape(16, 16)  # every value <= 255
    Image.fromarray(gray).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    dark = load_image(tmp_path / "dark16.png").image
    assert float(dark.max()) < -0.99  # 255 / 65535 of full scale, not white
    # The same picture at full 16-bit scale loads as its 8-bit version does.
    Image.fromarray(gray * 257).save(tmp_path / "full16.png")
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / "full8.png")
    full16 = load_image(tmp_path / "full16.png").image
    assert torch.equal(full16, load_image(tmp_path / "full8.png").image)


# ---------------------------------------------------------------- audio


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


@pytest.mark.parametrize("suffix", [".aiff", ".rf64", ".w64"])
def test_truncated_aiff_rf64_w64_are_reported(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tone{suffix}"
    sf.write(path, _sine(16000, 1.0), 16000, subtype="PCM_16")
    assert load_audio(path).waveform.shape == (1, 16000)
    cut = _truncate(path, 0.8)
    with pytest.raises(MediaError, match="truncated") as info:
        load_audio(cut)
    assert cut.name in str(info.value)


def test_truncated_ogg_says_truncated_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    sf.write(path, _sine(44100, 1.0), 44100, subtype="VORBIS")
    assert load_audio(path).waveform.shape[-1] == 44100
    for keep in (0.9, 0.5):
        with pytest.raises(MediaError, match="truncated") as info:
            load_audio(_truncate(path, keep))
        assert "no audio samples" not in info.value.problem


def test_truncated_caf_is_named_as_caf(tmp_path: Path) -> None:
    path = tmp_path / "tone.caf"
    sf.write(path, _sine(16000, 1.0), 16000, subtype="PCM_16")
    with pytest.raises(MediaError, match="CAF audio.*truncated or corrupt"):
        load_audio(_truncate(path, 0.8))


def _mp3(path: Path, options: dict[str, str]) -> Path:
    rate = 48000
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.options = {"q": "2"}  # VBR
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        chirp = np.sin(
            2 * np.pi * 440 * np.arange(rate * 2) / rate * (1 + np.arange(rate * 2) / rate)
        )
        frame = av.AudioFrame.from_ndarray(
            (0.3 * chirp).astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate = rate
        for out in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(out))
        container.mux(stream.encode())
    return path


@pytest.mark.skipif("libmp3lame" not in av.codecs_available, reason="no MP3 encoder")
def test_mp3_without_length_header_is_not_called_truncated(tmp_path: Path) -> None:
    # Without a Xing / Info header libsndfile estimates the length from the first frame's
    # bitrate; a VBR file then reads fewer samples than the estimate, which is no truncation.
    plain = _mp3(tmp_path / "vbr_no_xing.mp3", {"write_xing": "0"})
    clip = load_audio(plain)
    assert clip.waveform.shape[-1] > 90000 and clip.sample_rate == 48000
    tagged = _mp3(tmp_path / "vbr.mp3", {})
    with pytest.raises(MediaError, match="truncated"):  # its header does state the length
        load_audio(_truncate(tagged, 0.6))


@pytest.mark.parametrize(("orig", "new"), [(1009, 997), (997, 1009), (7001, 800), (3, 8)])
def test_direct_resampling_matches_torchaudio(orig: int, new: int) -> None:
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(0)) * 0.3
    ref = AF.resample(x, orig, new)
    got = _resample_direct(x, orig, new, chunk=333)
    assert got.shape == ref.shape
    # torchaudio builds its filter in float32: large reduced rates round at ~1e-4.
    assert float((got - ref).abs().max()) < (1e-4 if orig > 100 else 1e-6)


def test_coprime_sample_rates_resample_without_a_huge_filter(tmp_path: Path) -> None:
    # 44,101 -> 24,000 Hz: torchaudio's filter bank would hold 1.06e9 values (4.2 GB).
    path = tmp_path / "odd_rate.wav"
    sf.write(path, _sine(44101, 1.0), 44101, subtype="FLOAT")
    clip = load_audio(path, sample_rate=24000)
    assert clip.waveform.shape == (1, math.ceil(24000 * 44101 / 44101))
    assert clip.sample_rate == 24000 and clip.original_sample_rate == 44101
    # Amplitude and frequency survive: a 330 Hz tone at 0.5.
    inner = clip.waveform[0, 2000:-2000]
    assert abs(float(inner.abs().max()) - 0.5) < 2e-3
    spectrum = torch.fft.rfft(clip.waveform[0]).abs()
    assert abs(int(spectrum.argmax()) - 330) <= 1
    # The usual rates still use torchaudio exactly.
    x = torch.randn(1, 4410, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(resample(x, 44100, 24000), AF.resample(x, 44100, 24000), atol=1e-6)


# ---------------------------------------------------------------- video


def _numbered_video(path: Path, frames: int, h: int = 16, w: int = 24, **kw: object) -> Path:
    """Lossless frames whose red value is 5 x the frame index."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=kw.get("rate", 25))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for i in range(frames):
            array = np.zeros((h, w, 3), np.uint8)
            array[..., 0] = 5 * i
            array[: h // 2, :, 1] = 255  # top half green
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _indices(video: torch.Tensor) -> list[int]:
    return [round(float(v + 1) * 127.5 / 5) for v in video[0, :, 4, 4]]


@pytest.mark.parametrize("fps", [50, 10, 30, 7])
def test_fps_ties_always_take_the_earlier_frame(tmp_path: Path, fps: int) -> None:
    path = _numbered_video(tmp_path / "n.mkv", 50)
    got = _indices(load_video(path, fps=fps).video)
    # Nearest source frame to k / fps, halfway ties to the earlier one.
    expected = [min(49, math.ceil(Fraction(25 * k, fps) - Fraction(1, 2))) for k in range(len(got))]
    assert got == expected
    assert len(got) == math.ceil(2 * fps)  # 2 s of video
    if fps == 50:  # exact 2x: every frame twice
        assert got == [i // 2 for i in range(100)]


def _rotated(source: Path, target: Path, matrix: tuple[int, ...]) -> Path:
    """A copy of an MP4 whose track header carries another display matrix."""
    data = bytearray(source.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 8 + (32 if version == 1 else 20) + 8 + 8
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    target.write_bytes(bytes(data))
    return target


def test_rotated_video_is_turned_upright(tmp_path: Path) -> None:
    with av.open(str(tmp_path / "plain.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(3):
            array = np.zeros((32, 48, 3), np.uint8)
            array[:16, :, 1] = 255  # top half green
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    one = 1 << 16
    plain = load_video(tmp_path / "plain.mp4")
    portrait = _rotated(  # a phone's portrait video: stored landscape, "rotation -90"
        tmp_path / "plain.mp4", tmp_path / "portrait.mp4", (0, one, 0, -one, 0, 0, 0, 0, 1 << 30)
    )
    with av.open(str(portrait)) as container:
        if getattr(next(container.decode(video=0)), "rotation", None) is None:
            pytest.skip("this PyAV does not expose the display matrix")
    assert plain.video.shape == (3, 3, 32, 48)
    clip = load_video(portrait)
    assert clip.video.shape == (3, 3, 48, 32) and clip.original_size == (48, 32)
    green = clip.video[1, 0]
    assert float(green[:, -4:].mean()) > 0.9 and float(green[:, :4].mean()) < -0.9  # top -> right
    upside = load_video(
        _rotated(
            tmp_path / "plain.mp4", tmp_path / "flip.mp4", (-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30)
        )
    )
    assert upside.video.shape == (3, 3, 32, 48)
    assert float(upside.video[1, 0, -4:].mean()) > 0.9  # top -> bottom
    assert load_video(portrait, size=(16, 16)).video.shape == (3, 3, 16, 16)


def test_pipeline_resizes_video_frames_while_decoding(tmp_path: Path) -> None:
    path = _numbered_video(tmp_path / "clip.mkv", 6, h=40, w=72)
    fmt = InputFormat("video", resolution=(16, 16), fps=25)
    fitted = load_input(fmt, path)
    assert fitted.shape == (3, 6, 16, 16)
    # The same as resizing the full-size float frames, up to uint8 rounding.
    full = load_video(path, fps=25).video.transpose(0, 1)
    reference = _fit(full, fmt, path).transpose(0, 1)
    assert float((fitted - reference).abs().max()) <= 1.01 / 127.5
    native = load_input(InputFormat("video", fps=25, resize="native", multiple=16), path)
    assert native.shape == (3, 6, 32, 64)
