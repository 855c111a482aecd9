"""Regressions from an audit of the training data pipeline: video whose header gives no
duration, a validation folder inside the training folder."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
import torch

import anytok.data.datasets as datasets_module
from anytok.data import MediaItem, VideoClips, without_files_of
from anytok.media import load_audio, load_video, save_audio, video_duration
from anytok.train.config import load_recipe
from anytok.train.loop import _datasets

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class _NoSeek:
    """A file object a muxer cannot seek in (a pipe, a browser's MediaRecorder), so it
    writes no duration into the header."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        return self.file.write(data)


def _streamed_webm(path: Path, frames: int = 40, fps: int = 10) -> Path:
    """A VP8 WebM of ``frames`` frames, frame ``i`` a flat grey of level ``6 * i``, written
    to a stream: its header states no duration."""
    with open(path, "wb") as file:
        container = av.open(_NoSeek(file), "w", format="webm")
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            image = np.full((32, 32, 3), 6 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()
    return path


def test_video_without_a_header_duration_is_sought_by_its_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _streamed_webm(tmp_path / "recorded.webm")
    assert video_duration(path) is None
    assert video_duration(path, from_packets=True) == pytest.approx(4.0, abs=1e-6)
    whole = load_video(path, fps=10).video  # (3, 40, 32, 32)
    assert whole.shape[1] == 40

    calls: list[dict[str, Any]] = []
    real_load = datasets_module.load_video

    def spy(path: Path, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(path, **kwargs)

    monkeypatch.setattr(datasets_module, "load_video", spy)
    clips = VideoClips([MediaItem(path, "recorded.webm")], fps=10, frames=5, size=(32, 32))
    starts = set()
    for seed in range(8):
        clip = clips[(0, seed)]["media"]
        first = int(torch.argmin((whole[:, :, 0, 0] - clip[:, 0, 0, 0, None]).abs().sum(0)))
        torch.testing.assert_close(clip, whole[:, first : first + 5], atol=0, rtol=0)
        starts.add(first)
    assert len(starts) > 1
    # Each clip is sought and cut as it decodes: never the whole file at full size.
    assert all(call.get("max_frames") == 5 for call in calls)
    assert any(call.get("start", 0) > 0 for call in calls)


def test_a_damaged_file_has_no_packet_duration(tmp_path: Path) -> None:
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x1aE\xdf\xa3" + os.urandom(64))
    assert video_duration(junk, from_packets=True) is None
    assert video_duration(tmp_path / "missing.webm", from_packets=True) is None


def test_validation_files_inside_the_training_folder_are_not_trained_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    tone = torch.sin(torch.arange(2400) / 10)[None] * 0.5
    for name in ("a.wav", "b.wav", "val/c.wav"):
        save_audio(data / name, tone, 24000)
    cfg = load_recipe(
        RECIPES / "audio" / "seanet_fsq_24khz_tiny.yaml",
        [f"data.train={data}", f"data.val={data}/val/../val"],
    )
    model = SimpleNamespace(modality="audio", sample_rate=24000, channels=1)
    notes: list[str] = []
    train_set, val_set = _datasets(cfg, model, notes.append)
    assert sorted(item.key for item in train_set.items) == ["a.wav", "b.wav"]
    assert [item.key for item in val_set.items] == ["c.wav"]
    assert notes == [
        "data.val: 1 of its files are also reached by data.train; they are left out of training"
    ]


def test_without_files_of_compares_resolved_paths(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "d").mkdir()
    for name in ("x.wav", "y.wav"):
        (tmp_path / "d" / name).write_bytes(b"")
    os.symlink(tmp_path / "d" / "y.wav", tmp_path / "link.wav")
    monkeypatch.chdir(tmp_path)
    items = [MediaItem(Path("d/x.wav"), "x"), MediaItem(tmp_path / "d" / "y.wav", "y")]
    others = [MediaItem(Path("link.wav"), "link")]
    assert [item.key for item in without_files_of(items, others)] == ["x"]
    assert without_files_of(items, []) == items


@pytest.mark.parametrize("rate", [22050, 44100])
def test_mp3_windows_hold_the_whole_decode_samples(tmp_path: Path, rate: int) -> None:
    """A window read seeks into the MP3; without decoding frames before it, the bit
    reservoir and the frame overlap are lost (0.3 off at 22.05 kHz)."""
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(rate * 2) * 0.2)
    path = save_audio(tmp_path / "noise.mp3", noise[None].float(), rate)
    whole = load_audio(path).waveform
    for first in (1000, 7919, 30011):
        window = load_audio(path, offset=first / rate, duration=2000 / rate).waveform
        torch.testing.assert_close(window, whole[:, first : first + 2000], atol=1e-6, rtol=0)
