"""Media writers audit: save_audio / save_image / save_video and decode_file's path checks.

Each test names what the writer did before: a crash of the whole process (Vorbis at 0 Hz),
a truncated file left where a good one was, integer tensors written as white frames, ``~``
taken literally, libsndfile's "System error" / "Format not recognised", and a long decode
before an extension the writer cannot write was refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from anytok.media import (
    MediaError,
    audio_duration,
    audio_length,
    load_audio,
    load_image,
    load_video,
    save_audio,
    save_image,
    save_video,
    video_duration,
)


def _tone(channels: int = 2, samples: int = 4800) -> torch.Tensor:
    t = torch.arange(samples) / 48000
    return 0.5 * torch.sin(2 * torch.pi * 440 * t).expand(channels, samples).clone()


def test_vorbis_at_an_impossible_rate_is_refused_not_a_crash(tmp_path: Path) -> None:
    # libsndfile 1.2 segfaulted the interpreter for Ogg Vorbis at 0 Hz and above 200 kHz.
    script = textwrap.dedent(
        f"""
        import torch
        from anytok.media import MediaError, save_audio
        wave = torch.zeros(1, 480)
        for rate, error in ((0, ValueError), (200_001, MediaError), (10**6, MediaError)):
            try:
                save_audio({str(tmp_path / "a.ogg")!r}, wave, rate)
            except error as err:
                print(err)
            else:
                raise SystemExit(f"{{rate}} Hz was written")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert "sample_rate must be a whole number of Hz from 1 to 2147483647, got 0" in lines[0]
    assert "Vorbis takes up to 200000 Hz, not 200001 Hz" in lines[1]
    assert not (tmp_path / "a.ogg").exists()
    assert load_audio(save_audio(tmp_path / "b.ogg", _tone(), 200_000)).sample_rate == 200_000


@pytest.mark.parametrize("rate", [0, -8000, 44100.5, float("nan"), float("inf"), 1e12, 2**31])
@pytest.mark.parametrize("suffix", [".wav", ".m4a"])
def test_save_audio_refuses_bad_sample_rates_naming_the_file(
    tmp_path: Path, rate: float, suffix: str
) -> None:
    # Before: 44100.5 was written as 44100 Hz, 1e12 / inf raised a bare OverflowError, NaN a
    # bare ValueError, 0 "SF_INFO struct incomplete", and each left an empty file behind.
    path = tmp_path / f"a{suffix}"
    with pytest.raises(ValueError, match=rf"a\{suffix}: sample_rate must be a whole number"):
        save_audio(path, _tone(), rate)
    assert not path.exists()
    assert load_audio(save_audio(path, _tone(), 44100.0)).sample_rate == 44100


def test_save_audio_shape_and_channel_errors_say_what_to_do(tmp_path: Path) -> None:
    # (samples, channels) was read as 4800 channels: "Format not recognised".
    with pytest.raises(ValueError, match=r"4800 channels of 2 samples.*pass waveform\.T"):
        save_audio(tmp_path / "a.wav", _tone().T, 48000)
    # No samples: a WAV load_audio refuses ("zero length") or, as M4A, no file at all.
    for name in ("empty.wav", "empty.m4a"):
        with pytest.raises(ValueError, match="at least one sample"):
            save_audio(tmp_path / name, torch.zeros(2, 0), 48000)
    # libsndfile said "Format not recognised" for these.
    with pytest.raises(MediaError, match=r"\.mp3 takes at most 2 channels, not 3"):
        save_audio(tmp_path / "a.mp3", _tone(3), 48000)
    with pytest.raises(MediaError, match=r"\.flac takes at most 8 channels, not 9"):
        save_audio(tmp_path / "a.flac", _tone(9), 48000)
    with pytest.raises(MediaError, match=r"MPEG_LAYER_III audio of 1 channels at 1000 Hz \(MPEG"):
        save_audio(tmp_path / "a.mp3", _tone(1), 1000)
    assert sorted(os.listdir(tmp_path)) == []


def test_integer_media_is_refused_not_clipped_to_white(tmp_path: Path) -> None:
    # uint8 pixels were taken as floats in [-1, 1], so every pixel above 0 was written as
    # 255; int16 samples became full-scale square waves.
    with pytest.raises(TypeError, match=r"u8\.png: expected a float image .*torch\.uint8"):
        save_image(tmp_path / "u8.png", torch.full((3, 4, 4), 100, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"expected a float waveform .*torch\.int16.*32768"):
        save_audio(tmp_path / "i16.wav", torch.full((1, 8), 1000, dtype=torch.int16), 8000)
    with pytest.raises(TypeError, match=r"expected a float video .*torch\.uint8"):
        save_video(tmp_path / "u8.mp4", torch.zeros(3, 1, 8, 8, dtype=torch.uint8), 8)
    assert sorted(os.listdir(tmp_path)) == []


def test_writers_take_numpy_arrays_and_half_precision(tmp_path: Path) -> None:
    # NumPy arrays failed deep inside ('numpy.ndarray' object has no attribute 'detach').
    image = np.linspace(-1, 1, 3 * 6 * 5, dtype=np.float64).reshape(3, 6, 5)
    loaded = load_image(save_image(tmp_path / "a.png", image)).image
    torch.testing.assert_close(loaded, torch.from_numpy(image).float(), atol=1 / 127.5, rtol=0)
    wave = _tone().numpy()[:, ::2]  # a strided view
    loaded = load_audio(save_audio(tmp_path / "a.wav", wave, 24000)).waveform
    torch.testing.assert_close(loaded, torch.from_numpy(wave.copy()), atol=1e-4, rtol=0)
    half = torch.full((3, 2, 8, 8), 0.5, dtype=torch.float16)
    assert load_video(save_video(tmp_path / "a.mp4", half, 8)).video.shape == (3, 2, 8, 8)


def test_writers_expand_home_and_name_missing_or_wrong_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "~" was taken literally: libsndfile said "System error", Pillow and FFmpeg "No such
    # file or directory", as they did for a missing folder; a folder named x.wav was a
    # "System error" too.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert save_audio("~/a.wav", _tone(), 48000) == home / "a.wav"
    assert save_image("~/a.png", torch.zeros(3, 4, 4)) == home / "a.png"
    assert save_video("~/a.mp4", torch.zeros(3, 1, 4, 4), 8) == home / "a.mp4"
    assert sorted(os.listdir(home)) == ["a.mp4", "a.png", "a.wav"]
    # ... and the loaders and header probes read what the writers wrote there
    assert load_audio("~/a.wav").waveform.shape == (2, 4800)
    assert audio_length("~/a.wav") == 4800 and audio_duration("~/a.wav") == 0.1
    assert load_image("~/a.png").image.shape == (3, 4, 4)
    assert load_video("~/a.mp4").video.shape[1] == 1 and video_duration("~/a.mp4") == 0.125
    writers = {
        "wav": lambda p: save_audio(p, _tone(), 48000),
        "m4a": lambda p: save_audio(p, _tone(), 48000),
        "png": lambda p: save_image(p, torch.zeros(3, 4, 4)),
        "mp4": lambda p: save_video(p, torch.zeros(3, 1, 4, 4), 8),
    }
    for ext, write in writers.items():
        missing = tmp_path / "nope" / f"x.{ext}"
        with pytest.raises(MediaError, match=rf"the folder {tmp_path / 'nope'} does not exist"):
            write(missing)
        folder = tmp_path / f"dir.{ext}"
        folder.mkdir()
        with pytest.raises(MediaError, match=r"is a folder; name the \w+ file to write"):
            write(folder)
        assert os.listdir(folder) == []


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, n: int) -> None:
    """Make ``owner.name`` raise KeyboardInterrupt on its ``n``-th call (Ctrl-C mid-write)."""
    real, calls = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def test_a_failed_or_interrupted_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every writer opened the target itself: a failure left a truncated file (a 44-byte
    # WAV header, a 0-byte WebP) where a good file had been.
    wav, webp, mp4, m4a = (tmp_path / n for n in ("a.wav", "a.webp", "a.mp4", "a.m4a"))
    save_audio(wav, _tone(), 48000)
    save_image(webp, torch.zeros(3, 8, 8))
    save_video(mp4, torch.zeros(3, 4, 16, 16), 8)
    save_audio(m4a, _tone(samples=48000), 48000)
    before = {p: p.read_bytes() for p in (wav, webp, mp4, m4a)}

    def disk_full(*args, **kwargs):
        raise RuntimeError("Error : No space left on device")

    with monkeypatch.context() as m:
        m.setattr(sf.SoundFile, "write", disk_full)
        with pytest.raises(MediaError, match="No space left on device"):
            save_audio(wav, _tone(samples=9600), 48000)
    with pytest.raises(MediaError, match="exceeds WebP limit"):  # Pillow fails mid-save
        save_image(webp, torch.zeros(3, 1, 20000))
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _interrupt_after(m, av.VideoFrame, "from_ndarray", 3)
        save_video(mp4, torch.ones(3, 6, 16, 16) * 0.5, 8)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _interrupt_after(m, av.AudioFrame, "from_ndarray", 3)
        save_audio(m4a, _tone(samples=48000) * 0.1, 48000)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["a.m4a", "a.mp4", "a.wav", "a.webp"]  # no temps
    # A link stays a link; its target gets the new file.
    target, link = tmp_path / "t.wav", tmp_path / "link.wav"
    save_audio(target, _tone(samples=100), 48000)
    link.symlink_to(target)
    save_audio(link, _tone(samples=300), 48000)
    assert link.is_symlink() and load_audio(target).waveform.shape == (2, 300)
    # A replaced file keeps its permission bits.
    os.chmod(target, 0o640)
    save_audio(target, _tone(samples=200), 48000)
    assert target.stat().st_mode & 0o777 == 0o640


def test_save_video_checks_size_fps_and_extension_up_front(tmp_path: Path) -> None:
    # A 0x0 frame was an IndexError, fps 1e12 a bare OverflowError, "25" a TypeError.
    with pytest.raises(ValueError, match=r"T, H, W >= 1, got \(3, 2, 0, 0\)"):
        save_video(tmp_path / "a.mp4", torch.zeros(3, 2, 0, 0), 8)
    for fps in (1e12, "25", -1):
        with pytest.raises(ValueError, match="fps must be a positive finite number up to"):
            save_video(tmp_path / "a.mp4", torch.zeros(3, 1, 8, 8), fps)
    # .ogv failed with "Invalid argument" and left a 0-byte file; .gif and .png named
    # libx264 instead of what can be written.
    for name in ("a.ogv", "a.gif", "a.png", "noext"):
        with pytest.raises(MediaError, match=r"writable extensions are .*\.mkv.*\.mp4.*\.webm"):
            save_video(tmp_path / name, torch.zeros(3, 1, 8, 8), 8)
    assert os.listdir(tmp_path) == []
    # .webm ("'webm' format does not support 'libx264' codec") is VP9, odd sizes padded.
    ramp = torch.linspace(-0.8, 0.8, 17).expand(3, 3, 9, 17).clone()
    clip = load_video(save_video(tmp_path / "a.webm", ramp, Fraction(25)))
    with av.open(str(tmp_path / "a.webm")) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
    assert clip.video.shape == (3, 3, 10, 18) and clip.fps == 25
    assert (clip.video[:, :, :9, :17] - ramp).abs().mean() < 0.03


def test_save_image_unknown_extensions_are_named_before_writing(tmp_path: Path) -> None:
    for name in ("a.xyz", "noext", "a.mp4"):
        with pytest.raises(MediaError, match=r"cannot write an image with the extension"):
            save_image(tmp_path / name, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"expects \(3, H, W\), got \(3, 0, 4\)"):
        save_image(tmp_path / "a.png", torch.zeros(3, 0, 4))
    assert os.listdir(tmp_path) == []


def test_decode_file_refuses_an_unwritable_extension_before_decoding(tmp_path: Path) -> None:
    # The whole item was decoded (minutes for a long video on a GPU) before the writer
    # refused the extension.
    import anytok

    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    with torch.inference_mode():
        tokens = model.encode(torch.rand(1, 1, 960) * 2 - 1)
    calls = []
    real = model.decode
    model.decode = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    for name in ("out.png", "out.mp4", "sub/out.xyz"):
        with pytest.raises(MediaError, match="cannot write audio with the extension"):
            model.decode_file(tokens, tmp_path / name)
    assert calls == [] and os.listdir(tmp_path) == []
    written = model.decode_file(tokens, tmp_path / "sub" / "out.flac")
    assert calls == [1] and load_audio(written).waveform.shape == (1, 960)
