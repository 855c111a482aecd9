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
from torchvision.transforms.v2 import functional as TF

from anytok.media import (
    MediaError,
    MediaLimits,
    audio_length,
    iter_video,
    load_audio,
    load_image,
    load_video,
    resample,
    resize_cover,
    save_audio,
    save_image,
    save_video,
    video_duration,
)
from anytok.media.audio import RESAMPLE_FILTER, _resample_direct
from anytok.media.video import VideoClip
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
    # Its windows are read by seeking too; past its end the message gives its real length.
    window = load_audio(plain, offset=1.0, duration=0.5).waveform
    torch.testing.assert_close(window, clip.waveform[:, 48000:72000], atol=1e-6, rtol=0)
    seconds = clip.waveform.shape[-1] / 48000
    with pytest.raises(MediaError, match=rf"offset 5 s is at or past the end .*\({seconds:g} s\)"):
        load_audio(plain, offset=5.0)
    tagged = _mp3(tmp_path / "vbr.mp3", {})
    with pytest.raises(MediaError, match="truncated"):  # its header does state the length
        load_audio(_truncate(tagged, 0.6))


# ---------------------------------------------------------------- audio windows

#: (offset, duration) seconds: the start, ragged middles, to the end, past the end, one sample
_WINDOWS = [(0.0, 0.5), (0.3137, 0.25), (1.0, None), (1.9, 1.0), (0.0001, 0.00002)]


def _write_windows_file(path: Path, rate: int) -> Path:
    noise = np.random.default_rng(0).normal(0, 0.05, (rate * 2, 2))
    wave = np.clip(_sine(rate, 2.0, channels=2) + noise, -1, 1)
    if path.suffix == ".mp3":
        save_audio(path, torch.from_numpy(wave.T.astype(np.float32)), rate)
    elif path.suffix == ".m4a":  # ALAC through FFmpeg
        pcm = np.ascontiguousarray(np.round(wave.T * 32767).astype(np.int16))
        with av.open(str(path), "w") as container:
            stream = container.add_stream("alac", rate=rate, layout="stereo")
            frame = av.AudioFrame.from_ndarray(pcm, "s16p", "stereo")
            frame.sample_rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
    else:
        sf.write(path, wave, rate, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3", ".m4a"])
@pytest.mark.parametrize(("file_rate", "rate"), [(44100, None), (44100, 24000), (22050, 48000)])
def test_audio_windows_equal_the_whole_decode_sliced(
    tmp_path: Path, suffix: str, file_rate: int, rate: int | None
) -> None:
    # libsndfile formats read only the window and the resampling filter's margin (FFmpeg
    # ones decode from the start); either way the samples are the whole decode's, sliced.
    if suffix == ".mp3" and "MP3" not in sf.available_formats():
        pytest.skip("libsndfile without MP3")
    path = _write_windows_file(tmp_path / f"tone{suffix}", file_rate)
    whole = load_audio(path, sample_rate=rate, channels=1).waveform
    out_rate = rate or file_rate
    assert audio_length(path, rate) == (None if suffix == ".m4a" else whole.shape[-1])
    for offset, duration in _WINDOWS:
        clip = load_audio(path, sample_rate=rate, channels=1, offset=offset, duration=duration)
        first = round(offset * out_rate)
        stop = None if duration is None else first + max(1, round(duration * out_rate))
        expected = whole[:, first:stop]
        assert clip.sample_rate == out_rate and clip.waveform.shape == expected.shape
        torch.testing.assert_close(clip.waveform, expected, atol=1e-6, rtol=0)


def test_audio_windows_at_coprime_rates_and_bad_windows(tmp_path: Path) -> None:
    # 44,101 -> 24,000 Hz resamples output by output (no filter bank): same margins.
    path = tmp_path / "odd.wav"
    sf.write(path, _sine(44101, 1.0), 44101, subtype="FLOAT")
    whole = load_audio(path, sample_rate=24000).waveform
    window = load_audio(path, sample_rate=24000, offset=0.4, duration=0.1).waveform
    torch.testing.assert_close(window, whole[:, 9600:12000], atol=1e-6, rtol=0)
    with pytest.raises(MediaError, match=r"odd\.wav: offset 1\.5 s is at or past the end .*1 s"):
        load_audio(path, offset=1.5)
    with pytest.raises(ValueError, match="offset must be a finite number of seconds >= 0"):
        load_audio(path, offset=-0.1)
    with pytest.raises(ValueError, match="duration must be > 0 seconds"):
        load_audio(path, duration=0)


def test_audio_window_reads_only_its_part_of_a_long_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, _sine(16000, 30.0), 16000)
    reads: list[tuple[int, int | None]] = []
    real_read = sf.read

    def spy(*args: object, **kwargs: object) -> object:
        reads.append((kwargs.get("start", 0), kwargs.get("stop")))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(sf, "read", spy)
    clip = load_audio(path, sample_rate=24000, offset=20.0, duration=0.5)
    assert clip.waveform.shape == (1, 12000)
    ((start, stop),) = reads
    assert 20.0 * 16000 - 400 < start <= 20.0 * 16000 and stop - start < 8000 + 800


def test_truncated_file_window_before_the_cut_reads_and_after_it_is_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tone.flac"
    sf.write(path, _sine(16000, 4.0), 16000)
    cut = _truncate(path, 0.5)
    assert load_audio(cut, offset=0.1, duration=0.2).waveform.shape == (1, 3200)
    with pytest.raises(MediaError, match=r"cut_tone\.flac: .*truncated"):
        load_audio(cut, offset=3.5, duration=0.2)
    with pytest.raises(MediaError, match="truncated"):
        load_audio(cut)


@pytest.mark.parametrize(("orig", "new"), [(1009, 997), (997, 1009), (7001, 800), (3, 8)])
def test_direct_resampling_matches_torchaudio(orig: int, new: int) -> None:
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(0)) * 0.3
    ref = AF.resample(x, orig, new, **RESAMPLE_FILTER)
    got = _resample_direct(x, orig, new, chunk=333)
    assert got.shape == ref.shape
    # torchaudio builds its filter in float32: large reduced rates round at ~2e-4.
    assert float((got - ref).abs().max()) < (5e-4 if orig > 100 else 1e-5)


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
    expected = AF.resample(x, 44100, 24000, **RESAMPLE_FILTER)
    assert torch.allclose(resample(x, 44100, 24000), expected, atol=1e-6)


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


def _left_band_video(path: Path, sar: Fraction) -> Path:
    """3 frames of 48x32 stored pixels with sample aspect ratio ``sar``, the left quarter
    (12 columns) green."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.sample_aspect_ratio = sar
        for _ in range(3):
            array = np.zeros((32, 48, 3), np.uint8)
            array[:, :12, 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_non_square_pixels_are_shown_as_a_player_shows_them(tmp_path: Path) -> None:
    """An anamorphic stream (SAR 2:1) is read at its displayed size, 96x32 (FFmpeg's
    scale=iw*sar:ih), so cover-and-crop sees the displayed picture."""
    plain = load_video(_left_band_video(tmp_path / "plain.mp4", Fraction(1)))
    wide_path = _left_band_video(tmp_path / "wide.mp4", Fraction(2))
    with av.open(str(wide_path)) as container:
        assert container.streams.video[0].sample_aspect_ratio == Fraction(2)
    wide = load_video(wide_path)
    assert plain.video.shape == (3, 3, 32, 48) and plain.original_size == (32, 48)
    assert wide.video.shape == (3, 3, 32, 96) and wide.original_size == (32, 96)

    def green_columns(clip: VideoClip) -> int:
        return int((clip.video[1, 0, 16] > 0).sum())

    assert green_columns(plain) == 12 and abs(green_columns(wide) - 24) <= 1
    chunks = list(iter_video(wide_path, 2))
    assert torch.equal(torch.cat(chunks, dim=1), wide.video)
    # 16x16 cover-crops: the plain picture's crop keeps 2 green columns at its left edge;
    # the displayed wide one (16x48 before the crop) has its green band outside the crop.
    assert float(load_video(plain.path, size=16).video[1, 0, :, 0].mean()) > 0.5
    assert float(load_video(wide_path, size=16).video[1, 0].max()) < -0.5


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


def test_load_input_max_steps_reads_only_the_start(tmp_path: Path) -> None:
    # encode-dataset's --segment crop: only the kept samples / frames are decoded, the same
    # values as loading everything and cutting; the audio length limit bounds the crop.
    audio = tmp_path / "long.flac"
    sf.write(audio, _sine(44100, 3.0, channels=2), 44100)
    fmt = InputFormat("audio", sample_rate=24000, channels=1)
    torch.testing.assert_close(
        load_input(fmt, audio, max_steps=2400), load_input(fmt, audio)[:, :2400], atol=1e-6, rtol=0
    )
    video = _numbered_video(tmp_path / "clip.mkv", 6, h=40, w=72)
    for vfmt in (
        InputFormat("video", resolution=(16, 16), fps=25),
        InputFormat("video", fps=25, resize="native", multiple=16),
    ):
        assert torch.equal(load_input(vfmt, video, max_steps=2), load_input(vfmt, video)[:, :2])
    assert load_input(InputFormat("video", fps=25), video, max_steps=50).shape[1] == 6
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        load_input(fmt, audio, max_steps=0)
    short_limit = MediaLimits(max_audio_seconds=1.0)
    assert load_audio(audio, limits=short_limit, duration=0.5).waveform.shape == (2, 22050)
    with pytest.raises(MediaError, match="too long"):
        load_audio(audio, limits=short_limit)


def _coded_video(
    path: Path,
    frames: int,
    *,
    codec: str = "mpeg4",
    fmt: str | None = None,
    gop: int = 300,
    b_frames: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """A 25 fps clip: the left half grey at 20 + 3 x the frame index (lossy, close enough to
    count), the right half a moving texture (so that encoders make P-frames)."""
    texture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = 32, 16
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.gop_size, stream.max_b_frames = gop, b_frames
        if codec == "libx264":
            stream.options = {"qp": "0"}
        else:
            stream.codec_context.qscale = 2
        for i in range(frames):
            array = np.full((16, 32, 3), 20 + 3 * i, np.uint8)
            array[:, 16:] = np.roll(texture, i, axis=1)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _coded_indices(video: torch.Tensor) -> list[int]:
    return [round((float(v + 1) * 127.5 - 20) / 3) for v in video[1, :, 8, 4]]


@pytest.mark.parametrize("suffix", [".ts", ".m2ts"])
def test_start_in_mpeg_ts_finds_the_keyframe_before_it(tmp_path: Path, suffix: str) -> None:
    # MPEG-TS has no index: FFmpeg's seek lands after the keyframe before the target (here
    # past the only one), and decoding from there gave later frames or none at all.
    if "libx264" not in av.codecs_available:
        pytest.skip("no H.264 encoder")
    options = {"mpegts_m2ts_mode": "1"} if suffix == ".m2ts" else {}
    path = _coded_video(  # one keyframe
        tmp_path / f"long{suffix}", 60, codec="libx264", fmt="mpegts", options=options
    )
    for start in (1.0, 1.52, 2.0):
        clip = load_video(path, start=start, max_frames=3)
        assert _coded_indices(clip.video) == [round(start * 25) + k for k in range(3)]
    assert _coded_indices(load_video(path, start=1.0, fps=5, max_frames=2).video) == [25, 30]
    with pytest.raises(MediaError, match="no video frames at or after start"):
        load_video(path, start=30.0)


def test_stream_copy_cut_with_an_edit_list_is_not_called_truncated(tmp_path: Path) -> None:
    # `ffmpeg -ss 1.2 -i src.mp4 -c copy`: the GOP before the cut is kept and an edit list
    # hides it; the header counts 50 samples, 20 frames decode.
    source = _coded_video(tmp_path / "src.mp4", 50)
    cut = tmp_path / "cut.mp4"
    with av.open(str(source)) as src, av.open(str(cut), "w") as out:
        stream_in = src.streams.video[0]
        stream = out.add_stream_from_template(stream_in)
        shift = int(Fraction(30, 25) / stream_in.time_base)
        for packet in src.demux(stream_in):
            if packet.dts is not None:
                packet.pts -= shift
                packet.dts -= shift
                packet.stream = stream
                out.mux(packet)
    clip = load_video(cut)
    assert clip.original_frames == 50
    assert _coded_indices(clip.video) == list(range(30, 50))


@pytest.mark.parametrize(
    ("codec", "b_frames"), [("mpeg4", 0), ("mpeg4", 2), ("libx264", 2), ("mjpeg", 0)]
)
def test_avi_frames_are_timed_by_count(tmp_path: Path, codec: str, b_frames: int) -> None:
    # AVI has no presentation times: with B-frames FFmpeg's times follow decode order
    # (H.264) or start a frame late (MPEG-4 part 2), so fps= and start= picked wrong frames.
    if codec not in av.codecs_available:
        pytest.skip(f"no {codec} encoder")
    path = _coded_video(tmp_path / "clip.avi", 60, codec=codec, gop=12, b_frames=b_frames)
    assert _coded_indices(load_video(path).video) == list(range(60))
    assert _coded_indices(load_video(path, fps=5).video) == list(range(0, 60, 5))
    assert _coded_indices(load_video(path, start=1.0, max_frames=3).video) == [25, 26, 27]
    assert _coded_indices(load_video(path, start=0.4, fps=5, max_frames=3).video) == [10, 15, 20]


def test_mirroring_display_matrices_flip_as_ffmpeg_does(tmp_path: Path) -> None:
    # FFmpeg's autorotate: a mirrored matrix (front cameras, `-display_hflip`) is a flip,
    # not a 180 degree turn; a 90 degree matrix with a mirror is a transpose.
    plain_path = _coded_video(tmp_path / "plain.mp4", 3)
    plain = load_video(plain_path).video
    one = 1 << 16
    cases = {
        "hflip": ((-one, 0, 0, 0, one, 0, 0, 0, 1 << 30), plain.flip(-1)),
        "vflip": ((one, 0, 0, 0, -one, 0, 0, 0, 1 << 30), plain.flip(-2)),
        "transpose": ((0, one, 0, one, 0, 0, 0, 0, 1 << 30), plain.transpose(-2, -1)),
        "anti": ((0, -one, 0, -one, 0, 0, 0, 0, 1 << 30), plain.flip(-1, -2).transpose(-2, -1)),
        "180": ((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30), plain.flip(-1, -2)),
    }
    for name, (matrix, expected) in cases.items():
        clip = load_video(_rotated(plain_path, tmp_path / f"{name}.mp4", matrix))
        assert torch.equal(clip.video, expected), name
        assert clip.original_size == tuple(expected.shape[-2:]), name


# ---------------------------------------------------------------- images (round 4)


def test_rgb_png_with_a_transparent_colour_is_composited_on_white(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[2:] = (10, 200, 30)
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(0, 0, 0))  # a tRNS chunk
    image = load_image(tmp_path / "key.png").image
    assert torch.equal(image[:, :2], torch.ones(3, 2, 4))  # the key colour: white
    assert torch.allclose(image[:, 2, 0], torch.tensor([10, 200, 30]) / 127.5 - 1)


def test_resize_cover_of_a_strip_crops_before_resizing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 3x6000 strip to 256x256 used to be resized to 256x512000 first (1.5 GB, 16 s).
    from anytok.media import image as image_module

    resize = image_module.TF.resize

    def small_resize(x: torch.Tensor, size: list[int], **kw: object) -> torch.Tensor:
        assert size[0] * size[1] <= 16 * 256 * 256, f"intermediate of {size}"
        return resize(x, size, **kw)

    monkeypatch.setattr(image_module.TF, "resize", small_resize)
    strip = torch.linspace(-1, 1, 6000).expand(3, 3, 6000).contiguous()
    out = resize_cover(strip, 256)
    assert out.shape == (3, 256, 256)
    # The centre of the strip, as resizing it whole and cropping gives.
    assert abs(float(out.mean())) < 1e-3 and float(out.max() - out.min()) < 2e-3
    strip = torch.linspace(-1, 1, 600).expand(3, 2, 600).contiguous()
    whole = TF.center_crop(resize(strip, [16, 4800], antialias=True), [16, 16])
    assert float((resize_cover(strip, 16) - whole).abs().max()) < 5e-3
    # Ordinary aspect ratios: exactly as before (resize, then crop).
    photo = torch.rand(3, 50, 90, generator=torch.Generator().manual_seed(0))
    expected = TF.center_crop(resize(photo, [32, 58], antialias=True), [32, 32])
    assert torch.equal(resize_cover(photo, 32), expected)


# ---------------------------------------------------------------- audio (round 4)


@pytest.mark.parametrize("brand", ["isom", "mp42", "dash", "M4A "])
def test_aac_m4a_of_any_brand_is_read(tmp_path: Path, brand: str) -> None:
    # Android recorders write .m4a files branded isom / mp42, YouTube dash: still audio.
    path = tmp_path / "tone.m4a"
    rate = 16000
    with av.open(str(path), "w", format="mp4", options={"brand": brand}) as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        wave = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert path.read_bytes()[8:12] == brand.encode()
    clip = load_audio(path)
    assert clip.sample_rate == rate and abs(clip.waveform.shape[-1] - rate) < 2048
    assert abs(float(clip.waveform[0, 4000:12000].abs().max()) - 0.5) < 0.05
    # A video without sound is still refused, and named as a video.
    video = _coded_video(tmp_path / "silent.mp4", 3)
    for name in ("silent.m4a", "silent.wav"):
        with pytest.raises(MediaError, match="MP4/QuickTime video, not audio"):
            load_audio(video.rename(tmp_path / name))
        video = tmp_path / name


def _tone_level(y: torch.Tensor, freq: float, rate: int) -> float:
    """Amplitude of a ``freq`` tone in ``y`` (Hann-windowed FFT peak), in dB of full scale."""
    window = torch.hann_window(y.shape[-1], periodic=False, dtype=torch.float64)
    spectrum = torch.fft.rfft(y.double() * window).abs() / (window.sum() / 2)
    k = round(freq * y.shape[-1] / rate)
    return 20 * math.log10(float(spectrum[k - 3 : k + 4].max()))


@pytest.mark.parametrize("direct", [False, True])
def test_resampling_suppresses_aliases_and_keeps_the_passband(direct: bool) -> None:
    # 48 -> 24 kHz: a 14 kHz tone must not fold back to 10 kHz (torchaudio's default filter
    # let it through at -22 dB), and a tone at 0.8 x Nyquist must keep its level.
    t = torch.arange(48000, dtype=torch.float64) / 48000

    def down(freq: float) -> torch.Tensor:
        tone = torch.sin(2 * math.pi * freq * t).float()[None]
        out = _resample_direct(tone, 2, 1) if direct else resample(tone, 48000, 24000)
        assert out.shape == (1, 24000)
        return out[0]

    assert _tone_level(down(14000), 10000, 24000) < -60  # the alias
    assert abs(_tone_level(down(9600), 9600, 24000)) < 0.1  # the passband


def test_save_audio_writes_what_load_audio_reads(tmp_path: Path) -> None:
    wave = torch.from_numpy(_sine(48000, 0.5).T.astype(np.float32))
    for name in ("a.opus", "a.aif", "a.aiff", "a.oga"):
        clip = load_audio(save_audio(tmp_path / name, wave, 48000))
        assert clip.sample_rate == 48000 and abs(clip.waveform.shape[-1] - 24000) < 1000, name
    with pytest.raises(MediaError, match=r"writable extensions are \.wav, \.flac.*\.opus.*\.m4a"):
        save_audio(tmp_path / "a.wmv", wave, 48000)


# ---------------------------------------------------------------- pipeline (round 4)


def test_decode_keeps_the_source_extension_where_names_would_collide(tmp_path: Path) -> None:
    # encode keeps photo.png and photo.jpg apart; decode used to map both to photo.png and
    # refuse the second.
    import anytok
    from anytok.pipeline import crowded_token_files, decode_files, encode_files, token_jobs

    model = anytok.create_model("cnn_fsq_256", tiny=True).eval()
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    picture = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name in ("photo.png", "photo.jpg", "other.jpg", "sub/photo.bmp"):
        save_image(folder / name, picture)
    assert encode_files(model, [folder], tmp_path / "tok").ok
    jobs = token_jobs([tmp_path / "tok"])
    assert {p.name for p in crowded_token_files(jobs)} == {
        "photo.png.tokens.safetensors",
        "photo.jpg.tokens.safetensors",
    }
    for order in (jobs, jobs[::-1]):  # the names do not depend on the order
        assert crowded_token_files(order) == crowded_token_files(jobs)
    report = decode_files([tmp_path / "tok"], tmp_path / "out", lambda _: model)
    assert report.ok and report.items == 4
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written)
    assert written == ["other.png", "photo.jpg.png", "photo.png", "sub/photo.png"]
    assert all(p.is_file() for p in report.written)


def test_too_many_frames_names_the_limit_and_how_to_raise_it(tmp_path: Path) -> None:
    from anytok.media import MediaLimits

    path = _coded_video(tmp_path / "clip.mp4", 12)
    with pytest.raises(MediaError) as info:
        load_video(path, limits=MediaLimits(max_video_frames=5))
    problem = info.value.problem
    assert "MediaLimits.max_video_frames = 5" in problem
    assert "limits=MediaLimits(max_video_frames=...)" in problem
    assert "anytok encode has no option" in problem
    assert len(load_video(path, limits=MediaLimits(max_video_frames=12)).video[0]) == 12


def test_find_media_follows_folder_links_and_keeps_broken_file_links(tmp_path) -> None:
    """``data/train -> /mnt/disk1/train``: Path.rglob does not enter linked folders on
    Python 3.11, so their files were silently dropped; a link whose target is gone (an
    unmounted disk) was dropped too, where its loader should name the problem. A link loop
    ends."""
    import numpy as np
    import soundfile as sf

    from anytok.media import find_media

    elsewhere = tmp_path / "disk1" / "spk1"
    elsewhere.mkdir(parents=True)
    src = tmp_path / "src"
    src.mkdir()
    for path in (src / "a.wav", elsewhere / "x.wav", elsewhere / "y.wav"):
        sf.write(path, np.zeros(100, dtype=np.float32), 16000)
    (src / "spk1").symlink_to(elsewhere, target_is_directory=True)
    (src / "c.wav").symlink_to(tmp_path / "gone.wav")
    (src / "loop").symlink_to(src, target_is_directory=True)
    found = [p.relative_to(src).as_posix() for p in find_media(src, modality="audio")]
    assert found == ["a.wav", "c.wav", "spk1/x.wav", "spk1/y.wav"]


def test_decode_lists_token_files_inside_linked_folders_as_encode_finds_media(
    tmp_path: Path,
) -> None:
    """``anytok decode tokens/`` listed token files with ``Path.rglob``, which does not enter
    linked folders on Python 3.11: ``tokens/spk1 -> /mnt/disk1/spk1`` was silently left out.
    It now walks as :func:`find_media` does: links followed, hidden files skipped, a dangling
    link kept for its loader to name, a loop ended."""
    import anytok
    from anytok.pipeline import decode_files, encode_files, token_jobs

    model = anytok.create_model("cnn_fsq_256", tiny=True).eval()
    picture = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    media = tmp_path / "media"
    (media / "spk1").mkdir(parents=True)
    for name in ("a.png", "spk1/b.png"):
        save_image(media / name, picture)
    assert encode_files(model, [media], tmp_path / "disk1").ok
    tokens = tmp_path / "tok"
    tokens.mkdir()
    (tokens / "a.png.tokens.safetensors").symlink_to(tmp_path / "disk1/a.png.tokens.safetensors")
    (tokens / "spk1").symlink_to(tmp_path / "disk1/spk1", target_is_directory=True)
    (tokens / "loop").symlink_to(tokens, target_is_directory=True)
    (tokens / ".hidden.png.tokens.safetensors").write_bytes(b"not tokens")
    (tokens / "gone.png.tokens.safetensors").symlink_to(tmp_path / "gone")
    listed = [(p.relative_to(tokens).as_posix(), root) for p, root in token_jobs([tokens])]
    assert listed == [
        ("a.png.tokens.safetensors", tokens),
        ("gone.png.tokens.safetensors", tokens),
        ("spk1/b.png.tokens.safetensors", tokens),
    ]
    report = decode_files([tokens], tmp_path / "out", lambda _: model)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written)
    assert written == ["a.png", "spk1/b.png"]
    assert [failure.path.name for failure in report.failures] == ["gone.png.tokens.safetensors"]


@pytest.mark.parametrize(
    ("codec", "suffix", "fmt"), [("mjpeg", ".avi", None), ("mpeg2video", ".ts", "mpegts")]
)
def test_a_start_halfway_between_frames_takes_the_earlier_one(
    tmp_path: Path, codec: str, suffix: str, fmt: str | None
) -> None:
    # start=0.5 s at 25 fps is halfway between frames 12 and 13: the earlier wins, as in a
    # decode from the start. AVI's seek rounded to frame 13 and it was taken.
    if codec not in av.codecs_available:
        pytest.skip(f"no {codec} encoder")
    path = _coded_video(tmp_path / f"clip{suffix}", 40, codec=codec, fmt=fmt, gop=1)
    whole = _coded_indices(load_video(path, fps=50).video)
    assert _coded_indices(load_video(path, fps=50, start=0.5, max_frames=6).video) == whole[25:31]
    assert _coded_indices(load_video(path, start=0.5, max_frames=3).video) == [12, 13, 14]


def test_truncated_avi_is_named_truncated(tmp_path: Path) -> None:
    # FFmpeg rebuilds a cut AVI's duration from the index entries present, so the duration
    # disagreeing with the header's frame count is no edit list there.
    path = _coded_video(tmp_path / "full.avi", 60, codec="mjpeg")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"cut\.avi: file is truncated: the header announces 60"):
        load_video(cut)


def test_start_in_a_raw_h264_stream_decodes_from_its_start(tmp_path: Path) -> None:
    # A raw elementary stream cannot seek, and the failed seek left the demuxer at its end:
    # "no video frames at or after start". The file is opened again and read from the start.
    if "libx264" not in av.codecs_available:
        pytest.skip("no H.264 encoder")
    path = _coded_video(tmp_path / "raw.h264", 30, codec="libx264", fmt="h264")
    assert _coded_indices(load_video(path).video) == list(range(30))
    assert _coded_indices(load_video(path, start=0.2, max_frames=3).video) == [5, 6, 7]


def test_matroska_video_duration_is_the_tracks_not_the_longer_audio(tmp_path: Path) -> None:
    if "libx264" not in av.codecs_available:
        pytest.skip("no H.264 encoder")
    path = tmp_path / "talk.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 16, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(25):  # 1 s of video
            frame = av.VideoFrame.from_ndarray(
                np.full((16, 32, 3), 8 * i, np.uint8), format="rgb24"
            )
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for i in range(64):  # 4 s of audio
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    assert video_duration(path) == pytest.approx(1.0)


def test_save_video_refuses_infinite_and_nan_fps(tmp_path: Path) -> None:
    clip = torch.zeros(3, 2, 16, 16)
    for fps in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="fps must be a positive finite number"):
            save_video(tmp_path / "x.mp4", clip, fps)


def test_avi_with_dropped_frames_keeps_its_gaps(tmp_path: Path) -> None:
    # Capture tools drop frames in AVI (no chunk data for them): frames are placed by their
    # packets' slots, not counted back to back, and the file is not called truncated.
    slots = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    path = tmp_path / "dropped.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuvj420p"
        stream.codec_context.qscale = 2
        for index, slot in enumerate(slots):
            frame = av.VideoFrame.from_ndarray(
                np.full((16, 32, 3), 20 + 3 * index, np.uint8), format="rgb24"
            )
            frame.pts = slot
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert _coded_indices(load_video(path).video) == list(range(15))
    timed = [0, 1, 2, 3, 4, 4, 4, 4, 5, 5, 5, 6, 7, 8]  # nearest frame to each 1/25 s
    assert _coded_indices(load_video(path, fps=25, max_frames=14).video) == timed
    assert _coded_indices(load_video(path, start=0.4, max_frames=3).video) == [5, 6, 7]
