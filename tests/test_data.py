"""Training data: sources, manifests, splits, datasets, bad files, sampler, synthetic data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from bench_scripts import run_smoke
from torch.utils.data import DataLoader

from anytok.data import (
    AudioSegments,
    Augment,
    DataError,
    ImageCrops,
    ManifestError,
    MediaItem,
    ResumableSampler,
    SourceError,
    VideoClips,
    collate,
    read_manifest,
    scan_sources,
    split_items,
    split_value,
)
from anytok.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset("audio", root / "audio", 6, seconds=0.5)
    make_dataset("image", root / "image", 4, size=48)
    make_dataset("video", root / "video", 3, size=32, frames=9)
    return root


def test_make_dataset_is_deterministic_and_recursive(tmp_path: Path) -> None:
    first = make_dataset("audio", tmp_path / "a", 3, seconds=0.2)
    second = make_dataset("audio", tmp_path / "b", 3, seconds=0.2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert {p.parent.name for p in first} == {"a", "b"}  # two subfolders
    with pytest.raises(ValueError, match="modality"):
        make_dataset("text", tmp_path / "c", 1)


def test_scan_folder_recursive_manifest_and_missing(data_root: Path, tmp_path: Path) -> None:
    items = scan_sources(data_root / "audio", "audio")
    assert len(items) == 6
    assert all(not Path(i.key).is_absolute() for i in items)  # keys relative to the folder
    assert scan_sources(data_root / "audio", "image") == []
    manifest = tmp_path / "m.jsonl"
    rel = items[0].path.relative_to(data_root)  # audio/a/0000.wav, beside the manifest
    lines = [
        json.dumps({"path": str(items[1].path), "duration": 0.5, "text": "hello"}),
        "",
        "# a comment",
        json.dumps({"path": str(rel)}),
    ]
    manifest.write_text("\n".join(lines))
    (tmp_path / "audio").symlink_to(data_root / "audio")
    read = read_manifest(manifest)
    assert [r.text for r in read] == ["hello", None] and read[0].duration == 0.5
    assert read[1].path == tmp_path / rel and read[1].path.is_file()  # manifest-relative
    # The manifest's two files are in the folder too: each file is listed once, where it
    # first appears (the manifest first: its text and duration are kept).
    both = scan_sources([data_root / "audio", manifest], "audio")
    assert len(both) == 6 and [i.path for i in both] == [i.path for i in items]
    first = scan_sources([manifest, data_root / "audio"], "audio")
    assert len(first) == 6 and first[0].text == "hello" and first[0].duration == 0.5
    with pytest.raises(FileNotFoundError, match="no-such"):
        scan_sources(tmp_path / "no-such", "audio")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"file": "a.wav"}', '"path" string'),
        ('{"path": "a.wav", "duration": "long"}', "duration"),
        # Python's json reads these; an infinite duration crashed the epoch, a non-string
        # text crashed TaDiCodec's text encoder whenever that line was drawn
        ('{"path": "a.wav", "duration": Infinity}', "finite number"),
        ('{"path": "a.wav", "duration": -1}', "finite number"),
        ('{"path": "a.wav", "duration": true}', "finite number"),
        ('{"path": "a.wav", "text": 42}', '"text" must be a string'),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"path": "ok.wav"}) + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=rf"bad.jsonl, line 2: .*{problem}"):
        read_manifest(manifest)


def test_split_is_deterministic_and_stable_when_data_grows() -> None:
    items = [MediaItem(Path(f"/x/{i}.wav"), key=f"{i}.wav") for i in range(400)]
    train, val = split_items(items, 0.25)
    assert 60 < len(val) < 140 and len(train) + len(val) == 400
    assert split_items(items, 0.25) == (train, val)
    more = [*items, *(MediaItem(Path(f"/x/new{i}.wav"), key=f"new{i}.wav") for i in range(50))]
    _, val_more = split_items(more, 0.25)
    assert set(v.key for v in val) <= set(v.key for v in val_more)  # nobody changes sides
    assert 0 <= split_value("anything") < 1
    # a file name that is not UTF-8 (surrogate escapes) hashes its bytes; it raised before
    assert 0 <= split_value("caf\udce9.wav") < 1 and split_value("café.wav") != split_value(
        "caf\udce9.wav"
    )
    with pytest.raises(ValueError):
        split_items(items, 1.0)


def test_audio_segments_crop_gain_and_determinism(data_root: Path) -> None:
    items = scan_sources(data_root / "audio", "audio")
    ds = AudioSegments(
        items, sample_rate=16000, channels=2, segment=1600, augment=Augment(gain_db=(-12.0, -6.0))
    )
    a, b = ds[(0, 7)]["media"], ds[(0, 7)]["media"]
    assert a.shape == (2, 1600) and torch.equal(a, b)  # same seed, same item
    assert not torch.equal(a, ds[(0, 8)]["media"])  # another seed: another crop / gain
    plain = ds[0]["media"]  # validation access: the start, no gain
    assert plain.abs().max() > a.abs().max()
    long = AudioSegments(items, 16000, 1, segment=10**6)
    assert long[0]["media"].shape == (1, 8000)  # shorter files come whole (0.5 s)


def test_audio_segments_decode_only_the_crop_and_match_the_whole_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header's length picks the crop and only the crop is decoded; the crops and the
    # random stream are those of cropping the whole decode.
    import anytok.data.datasets as datasets_module

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.flac", rng.normal(0, 0.1, (44100 * 20, 2)), 44100)
    items = scan_sources(tmp_path, "audio")
    ds = AudioSegments(items, 24000, 1, 2400, augment=Augment(gain_db=(-3.0, 0.0)))
    windowed = [ds[(0, seed)]["media"] for seed in range(4)] + [ds[0]["media"]]
    monkeypatch.setattr(datasets_module, "audio_length", lambda path, rate: None)
    monkeypatch.setattr(datasets_module, "audio_duration", lambda path: None)  # no estimate
    whole = [ds[(0, seed)]["media"] for seed in range(4)] + [ds[0]["media"]]
    for a, b in zip(windowed, whole, strict=True):
        assert a.shape == (1, 2400)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len({float(w.sum()) for w in windowed}) == 5  # different crops


def test_audio_segments_seek_ffmpeg_files_to_the_crop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An M4A states no exact length: its header's estimate picks the crop and FFmpeg seeks
    # to it (exact=False) instead of decoding up to it; MP4 places samples exactly, so the
    # crops are those of cropping the whole decode.
    import anytok.data.datasets as datasets_module
    import anytok.media.audio as audio_module

    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.uniform(-0.1, 0.1, (1, 16000 * 8)).astype(np.float32))
    audio_module.save_audio(tmp_path / "long.m4a", wave, 16000, subtype="ALAC")
    starts: list[int] = []
    seek = audio_module._audio_frames

    def spy(container: Any, stream: Any, rate: int, start: int) -> Any:
        first, frames = seek(container, stream, rate, start)
        starts.append(first)
        return first, frames

    monkeypatch.setattr(audio_module, "_audio_frames", spy)
    ds = AudioSegments(scan_sources(tmp_path, "audio"), 16000, 1, 4000)
    sought = [ds[(0, seed)]["media"] for seed in range(4)]
    assert max(starts) > 16000  # the crops were sought to, not decoded up to
    monkeypatch.setattr(datasets_module, "audio_duration", lambda path: None)  # no estimate
    whole = [ds[(0, seed)]["media"] for seed in range(4)]
    for a, b in zip(sought, whole, strict=True):
        assert a.shape == (1, 4000) and torch.equal(a, b)
    assert len({float(w.sum()) for w in sought}) == 4  # different crops


def test_image_and_video_crops(data_root: Path) -> None:
    images = ImageCrops(
        scan_sources(data_root / "image", "image"), (32, 24), Augment(hflip=1.0, scale=(1.0, 1.5))
    )
    x = images[(1, 3)]["media"]
    assert x.shape == (3, 32, 24) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(images[(1, 3)]["media"], x)
    video = VideoClips(
        scan_sources(data_root / "video", "video"),
        fps=8,
        frames=5,
        size=(16, 16),
        augment=Augment(hflip=0.5),
    )
    clip = video[(0, 1)]["media"]
    assert clip.shape == (3, 5, 16, 16)
    short = VideoClips(video.items, fps=8, frames=50, size=(16, 16))
    assert short[0]["media"].shape == (3, 9, 16, 16)  # a shorter file keeps its frames
    batch = collate([short[0], video[(0, 1)]])
    assert batch.media.shape == (2, 3, 9, 16, 16) and batch.lengths.tolist() == [9, 5]
    assert torch.equal(batch.media[1, :, 5:], batch.media[1, :, 4:5].expand(-1, 4, -1, -1))


def test_video_manifest_duration_seeks(data_root: Path, tmp_path: Path) -> None:
    path = scan_sources(data_root / "video", "video")[0].path
    manifest = tmp_path / "v.jsonl"
    manifest.write_text(json.dumps({"path": str(path), "duration": 9 / 8}) + "\n")
    ds = VideoClips(read_manifest(manifest), fps=8, frames=3, size=(16, 16))
    starts = {ds[(0, seed)]["media"][:, 0].sum().item() for seed in range(6)}
    assert len(starts) > 1  # different seeds start at different frames


@pytest.mark.parametrize("container", [".mp4", ".mkv"])
def test_video_clips_seek_by_the_header_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, container: str
) -> None:
    # A folder of videos (no manifest durations): the header's duration picks the start and
    # only the clip decodes; the clips are those of decoding the whole file. A header that
    # overstates the video falls back to that decode instead of calling the file bad.
    import anytok.data.datasets as datasets_module
    from anytok.media import save_video, video_duration

    ramp = torch.linspace(-1, 1, 60)[None, :, None, None].expand(3, 60, 16, 16)
    path = save_video(tmp_path / f"ramp{container}", ramp.contiguous(), fps=25)
    assert video_duration(path) == pytest.approx(60 / 25, abs=0.05)
    items = scan_sources(tmp_path, "video")
    ds = VideoClips(items, fps=25, frames=5, size=(16, 16))
    calls: list[tuple[float, int | None]] = []
    real_load = datasets_module.load_video

    def spy(path: Path, **kwargs: Any) -> Any:
        calls.append((kwargs.get("start", 0.0), kwargs.get("max_frames")))
        return real_load(path, **kwargs)

    monkeypatch.setattr(datasets_module, "load_video", spy)
    seeked = [ds[(0, seed)]["media"] for seed in range(5)]
    assert all(max_frames == 5 for _, max_frames in calls) and max(s for s, _ in calls) > 0
    assert len({float(clip[0, 0].mean()) for clip in seeked}) > 1  # different starts

    def header_says(seconds: float | None) -> Any:
        """``video_duration`` with this header; measuring from the packets is real."""
        return lambda path, from_packets=False: (
            video_duration(path, from_packets=True) if from_packets else seconds
        )

    monkeypatch.setattr(datasets_module, "video_duration", lambda path, from_packets=False: None)
    del calls[:]
    whole = [ds[(0, seed)]["media"] for seed in range(5)]
    # No duration, no timestamps: a pass counts the frames (dropping each), and the clip is
    # cut as with a duration: the same clips, one full-size frame in memory.
    assert all(max_frames == 5 for _, max_frames in calls)
    for a, b in zip(seeked, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=0)
    # No duration in the header (a WebM recorded to a stream): the packets say how long
    # the video is, and the clip is sought as by the header.
    monkeypatch.setattr(datasets_module, "video_duration", header_says(None))
    del calls[:]
    measured = [ds[(0, seed)]["media"] for seed in range(5)]
    assert all(max_frames == 5 for _, max_frames in calls)
    for a, b in zip(seeked, measured, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    monkeypatch.setattr(datasets_module, "video_duration", header_says(100.0))
    clip = ds[(0, 3)]
    assert clip["media"].shape == (3, 5, 16, 16) and clip["bad_files"] == []
    assert calls[-2][0] > 60 / 25 and calls[-1][0] <= 55 / 25 and calls[-1][1] == 5
    # Overstated by less than a clip: a start near the end gives fewer frames than asked,
    # which also means the header lied, so the clip is sought by the packets' duration.
    monkeypatch.setattr(datasets_module, "video_duration", header_says(2.6))  # 65 frames
    del calls[:]
    assert all(ds[(0, seed)]["media"].shape == (3, 5, 16, 16) for seed in range(60))
    assert all(max_frames == 5 for _, max_frames in calls)  # never the whole file


def test_video_clips_are_cut_frame_by_frame_as_cutting_the_clip(tmp_path: Path) -> None:
    # Training clips are cropped as each frame decodes (one full-size frame in memory): the
    # same crop, flip and values as decoding the clip and cropping it, for the same draws.
    from anytok.data.datasets import _CropEachFrame, _random_resized_crop
    from anytok.media import load_video, save_video

    generator = torch.Generator().manual_seed(1)
    video = torch.rand(3, 12, 40, 72, generator=generator) * 2 - 1
    path = save_video(tmp_path / "wide.mp4", video, fps=25)
    augment = Augment(hflip=0.5, scale=(1.0, 1.6))
    for seed in range(6):
        for crop_augment in (augment, None):
            cut = _CropEachFrame((16, 24), torch.Generator().manual_seed(seed), crop_augment)
            frames = load_video(path, fps=25, start=0.2, max_frames=5, transform=cut).video
            whole = load_video(path, fps=25, start=0.2, max_frames=5).video
            expected = _random_resized_crop(
                whole.transpose(0, 1), (16, 24), torch.Generator().manual_seed(seed), crop_augment
            ).transpose(0, 1)
            assert frames.shape == (3, 5, 16, 24) and frames.dtype == torch.float32
            torch.testing.assert_close(frames, expected, atol=1e-6, rtol=0)
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def record(frame: torch.Tensor) -> torch.Tensor:
        seen.append((frame.dtype, tuple(frame.shape)))
        return frame[:, :8, :8]

    assert load_video(path, max_frames=3, transform=record).video.shape == (3, 3, 8, 8)
    assert seen == [(torch.uint8, (3, 40, 72))] * 3  # upright uint8 frames, one call each


def test_bad_files_are_replaced_and_reported(data_root: Path, tmp_path: Path) -> None:
    good = scan_sources(data_root / "audio", "audio")[:2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    items = [MediaItem(broken, "broken.wav"), MediaItem(empty, "empty.wav"), *good]
    ds = AudioSegments(items, 24000, 1, 2400)
    examples = [ds[(i, 11)] for i in range(len(items))]
    assert all(ex["media"].shape == (1, 2400) for ex in examples)
    batch = collate(examples)
    assert len(batch.bad_files) >= 2
    assert any(entry.startswith(str(broken)) for entry in batch.bad_files)
    assert any("empty" in entry for entry in batch.bad_files)
    all_bad = AudioSegments(items[:2], 24000, 1, 2400, max_attempts=4)
    with pytest.raises(DataError, match="4 files in a row failed") as info:
        all_bad[(0, 1)]
    named = str(info.value).splitlines()[1:-1]  # each bad file once, not the same one thrice
    assert len(named) == len(set(named)) == 2


def test_resumable_sampler_splits_ranks_and_resumes() -> None:
    dataset = list(range(10))
    ranks = [ResumableSampler(dataset, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_position(epoch=3, start=0)
    epochs = [[i for i, _ in s] for s in ranks]
    assert sorted(epochs[0] + epochs[1]) == list(range(10))  # disjoint, complete
    whole = list(ranks[0])
    ranks[0].set_position(epoch=3, start=2)
    assert list(ranks[0]) == whole[2:] and len(ranks[0]) == 3  # mid-epoch restart
    ranks[0].set_position(epoch=4, start=0)
    assert [i for i, _ in ranks[0]] != epochs[0]  # another epoch, another order
    # Seeds differ between ranks even for the same position.
    assert whole[0][1] != next(iter(ranks[1]))[1]


def test_dataloader_batches_with_workers_match(data_root: Path) -> None:
    ds = AudioSegments(
        scan_sources(data_root / "audio", "audio"), 24000, 1, 2400, Augment(gain_db=(-6.0, 0.0))
    )

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ResumableSampler(ds, seed=1)
        loader = DataLoader(
            ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate
        )
        return [b.media for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2)))


def test_manifest_texts_reach_the_batch(tmp_path: Path) -> None:
    make_dataset("audio", tmp_path / "a", 3, seconds=0.2)
    files = sorted((tmp_path / "a").rglob("*.wav"))
    manifest = tmp_path / "m.jsonl"
    lines = [{"path": str(files[0]), "text": "hello there"}, {"path": str(files[1])}]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = AudioSegments(read_manifest(manifest), sample_rate=16000, channels=1, segment=1600)
    batch = collate([ds[0], ds[1]])
    assert batch.texts == ["hello there", None]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_speech_dataset_has_transcripts(tmp_path: Path) -> None:
    from anytok.data.synthetic import make_speech_dataset

    manifest = make_speech_dataset(tmp_path / "speech", 2, sample_rate=16000)
    items = read_manifest(manifest)
    assert len(items) == 2 and all(item.text and item.text.endswith(".") for item in items)
    assert all(item.path.is_file() and item.duration and item.duration > 0.5 for item in items)
    assert make_speech_dataset(tmp_path / "again", 2, sample_rate=16000).read_text().replace(
        "again", "speech"
    ) == manifest.read_text().replace("again", "speech")  # same seed, same texts


def test_video_cuts_switch_photos(tmp_path: Path) -> None:
    from anytok.media import load_video

    def largest_jump(paths: list[Path]) -> float:
        jumps = []
        for path in paths:
            video = load_video(path).video  # (3, T, H, W)
            jumps.append(float((video[:, 1:] - video[:, :-1]).abs().mean(dim=(0, 2, 3)).max()))
        return max(jumps)

    plain = make_dataset("video", tmp_path / "plain", 12, frames=9, size=16)
    cut = make_dataset("video", tmp_path / "cut", 12, frames=9, size=16, cuts=True)
    assert largest_jump(cut) > 1.5 * largest_jump(plain)


def test_augment_scale_below_one_is_refused() -> None:
    """A factor below 1 clamped height and width separately and squashed the image."""
    with pytest.raises(ValueError, match="1 <= low <= high"):
        Augment(scale=(0.5, 1.0))
    assert Augment(scale=(1.0, 1.25)).scale == (1.0, 1.25)


def _gray_video(path: Path, frames: int, fps: float) -> None:
    """Frame ``k`` is a uniform gray of level ``k / 32 - 0.9``."""
    from anytok.media import save_video

    levels = torch.arange(frames) / 32.0 - 0.9
    save_video(path, levels.view(1, frames, 1, 1).expand(3, frames, 16, 16).clone(), fps)


@pytest.mark.parametrize(
    ("frames", "file_fps", "duration", "expected"),
    [
        # 2.3 s x 10 fps: floor((2.3 - 1.0) * 10) = floor(12.999999999999998) lost start 13
        (23, 10, 2.3, list(range(14))),
        # 28 frames at 30 fps read at 10 fps: 10 frames, whose last clip start (5, source
        # frame 15) a floor of the non-whole (0.933 - 0.5) * 10 lost
        (28, 30, 28 / 30, list(range(0, 16, 3))),
    ],
)
def test_video_clip_starts_with_duration_match_decoding_the_file(
    tmp_path: Path, frames: int, file_fps: float, duration: float, expected: list[int]
) -> None:
    _gray_video(tmp_path / "v.mp4", frames, file_fps)
    manifest = tmp_path / "v.jsonl"
    manifest.write_text(json.dumps({"path": "v.mp4", "duration": duration}) + "\n")
    seeked = VideoClips(
        read_manifest(manifest), fps=10, frames=10 if frames == 23 else 5, size=(16, 16)
    )
    whole = VideoClips(
        [MediaItem(tmp_path / "v.mp4", "v.mp4")], fps=10, frames=seeked.frames, size=(16, 16)
    )

    def first_frames(ds: VideoClips) -> set[int]:
        firsts = set()
        for seed in range(150):
            clip = ds[(0, seed)]["media"]
            assert clip.shape[1] == ds.frames  # every start leaves a whole clip
            firsts.add(round((float(clip[:, 0].mean()) + 0.9) * 32))
        return firsts

    assert first_frames(seeked) == set(expected) == first_frames(whole)


def test_segment_of_no_samples_is_refused(data_root: Path) -> None:
    items = scan_sources(data_root / "audio", "audio")
    with pytest.raises(ValueError, match=r"data\.segment_seconds .*0 samples at 16000 Hz"):
        AudioSegments(items, sample_rate=16000, channels=1, segment=0)
    assert AudioSegments(items, 16000, 1, segment=1)[(0, 1)]["media"].shape == (1, 1)


class _ResizeSpy:
    """Stands in for torchvision's functional module: records the size of every resize
    output (and crop box) and refuses an intermediate larger than ``limit`` pixels before it
    is allocated."""

    def __init__(self, limit: int):
        import torchvision.transforms.v2.functional as real

        self.real, self.limit = real, limit
        self.outputs: list[tuple[int, int]] = []
        self.boxes: list[tuple[int, int]] = []

    def _check(self, size: list[int]) -> None:
        self.outputs.append((size[0], size[1]))
        assert size[0] * size[1] <= self.limit, f"resized the whole image to {size}"

    def resize(self, media: torch.Tensor, size: list[int], **kwargs) -> torch.Tensor:
        self._check(size)
        return self.real.resize(media, size, **kwargs)

    def resized_crop(
        self,
        media: torch.Tensor,
        top: int,
        left: int,
        height: int,
        width: int,
        size: list[int],
        **kwargs,
    ) -> torch.Tensor:
        self._check(size)
        self.boxes.append((height, width))
        return self.real.resized_crop(media, top, left, height, width, size, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_extreme_aspect_crops_resize_only_the_box(tmp_path: Path, monkeypatch) -> None:
    """A 1 x 20000 strip cropped to 256 x 256 resized the whole strip to 256 x 5,120,000
    (~15.7 GB) before cropping; now only the crop's box is resized."""
    from PIL import Image

    import anytok.data.datasets as datasets

    spy = _ResizeSpy(limit=16 * 256 * 256)
    monkeypatch.setattr(datasets, "TF", spy)
    ramp = torch.linspace(0, 255, 20000).round().to(torch.uint8)
    strip = ramp.view(1, -1, 1).expand(1, -1, 3).contiguous().numpy()
    Image.fromarray(strip).save(tmp_path / "strip.png")
    ds = ImageCrops(
        [MediaItem(tmp_path / "strip.png", "strip.png")],
        (256, 256),
        Augment(hflip=0.5, scale=(1.0, 1.5)),
    )
    for seed in range(3):
        out = ds[(0, seed)]
        assert out["bad_files"] == [] and out["media"].shape == (3, 256, 256)
    centre = ds[0]["media"]  # validation: the middle of the ramp
    assert centre.shape == (3, 256, 256) and abs(float(centre.mean())) < 0.01
    assert spy.outputs and all(size == (256, 256) for size in spy.outputs)
    assert all(box == (1, 1) for box in spy.boxes)  # a square box for a square crop


def test_extreme_aspect_crops_match_resizing_the_whole_image(monkeypatch) -> None:
    """Cropping the box first draws the same crops as resizing everything (up to a
    sub-pixel shift of the box); images of ordinary shape take the old path unchanged."""
    import anytok.data.datasets as datasets

    wide = torch.linspace(-1, 1, 600).view(1, 1, -1).expand(3, 8, -1).clone()  # 8 x 600 ramp
    wide = wide + 0.05 * torch.linspace(-1, 1, 8).view(1, -1, 1)
    photo = torch.rand(3, 40, 56) * 2 - 1
    augment = Augment(hflip=0.5, scale=(1.0, 1.5))

    def crops(image: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        out = []
        for seed in range(8):
            gen = torch.Generator().manual_seed(seed)
            out.append(datasets._random_resized_crop(image, size, gen, augment))
        out.append(datasets._random_resized_crop(image, size, torch.Generator(), None))
        return out

    spy = _ResizeSpy(limit=10**9)
    monkeypatch.setattr(datasets, "TF", spy)
    box_first = crops(wide, (32, 32))
    assert all(box[0] == box[1] for box in spy.boxes) and len(spy.boxes) == 9
    normal = crops(photo, (24, 24))
    monkeypatch.setattr(datasets, "_MAX_COVER_EXCESS", 10**9)  # always resize everything
    for a, b in zip(box_first, crops(wide, (32, 32))):
        assert a.shape == b.shape == (3, 32, 32)
        assert (a - b).abs().max() < 0.02
    for a, b in zip(normal, crops(photo, (24, 24))):
        assert torch.equal(a, b)


def test_overlapping_sources_and_symlinks_list_each_file_once(tmp_path: Path) -> None:
    """data.train=[d, d/speech] listed d/speech twice under two keys: with val_fraction the
    same file landed in both the training and the validation split."""
    make_dataset("audio", tmp_path / "d" / "speech", 40, seconds=0.05)
    (tmp_path / "link").symlink_to(tmp_path / "d" / "speech")
    items = scan_sources([tmp_path / "d", tmp_path / "d" / "speech", tmp_path / "link"], "audio")
    assert len(items) == 40 and len({i.path.resolve() for i in items}) == 40
    assert items == scan_sources(tmp_path / "d", "audio")  # the first source's items
    train, val = split_items(items, 0.3)
    assert val and not {i.path for i in train} & {i.path for i in val}


def test_manifest_keys_are_normalised(tmp_path: Path) -> None:
    """``./d/x.wav`` and ``d/x.wav`` name the same file: they must land on the same side
    of the split (keys already normal are unchanged, so existing splits stay)."""
    spellings = ["./d/{}.wav", "d//{}.wav", "d/./{}.wav", "d/{}.wav"]
    splits = []
    for n, spelling in enumerate(spellings):
        manifest = tmp_path / f"m{n}.jsonl"
        manifest.write_text(
            "".join(json.dumps({"path": spelling.format(i)}) + "\n" for i in range(60))
        )
        items = read_manifest(manifest)
        assert [i.key for i in items] == [f"d/{i}.wav" for i in range(60)]
        splits.append({i.key for i in split_items(items, 0.3)[1]})
    assert splits[0] and all(split == splits[-1] for split in splits)


def test_manifest_with_byte_order_mark(tmp_path: Path) -> None:
    """Notepad / PowerShell 5 write UTF-8 with a BOM; the first line was 'not valid JSON'."""
    manifest = tmp_path / "bom.jsonl"
    lines = [json.dumps({"path": f"{i}.wav", "text": "héllo"}) for i in range(2)]
    manifest.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    items = read_manifest(manifest)
    assert [i.key for i in items] == ["0.wav", "1.wav"] and items[0].text == "héllo"


def test_tar_shard_is_refused_for_training(data_root: Path, tmp_path: Path) -> None:
    """A tar shard became one 'media file' and the run ended with '16 files in a row failed
    to load'."""
    import tarfile

    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for item in scan_sources(data_root / "audio", "audio")[:2]:
            tar.add(item.path, arcname=item.path.name)
    with pytest.raises(SourceError, match=r"shard-000\.tar is a tar shard.*Extract it"):
        scan_sources([data_root / "audio", shard], "audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "shard-000.tar"}) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl lists shard-000\.tar, which is a tar"):
        scan_sources(manifest, "audio")


def test_training_data_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/training_data.py end to end: crop-only and whole-file reads give the same
    training items."""
    report = run_smoke("training_data", tmp_path, timeout=300)
    rows, memory = report["rows"], report["hd_clip_memory"]
    assert 0 < memory["frame_peak_mib"] < memory["clip_peak_mib"]
    assert [(r["kind"], r["file"]) for r in rows] == [
        ("audio", "long.flac"),
        ("audio", "long.m4a"),
        ("video", "long.mp4"),
    ]
    exact = [rows[0], rows[2]]
    assert all(r["max_abs_difference"] == 0 and r["snr_db"] == math.inf for r in exact)
    assert rows[1]["snr_db"] > 10  # AAC: aligned crops, other synthesized noise
    assert all(r["window_ms"] > 0 for r in rows)
    assert "| crop only ms |" in (tmp_path / "training_data.md").read_text()
