"""Long items stream: ``iter_audio`` / ``iter_video`` read a file piece by piece and join to
what ``load_audio`` / ``load_video`` return, and ``encode-dataset --segment split`` takes
items in pieces, so files over the length limits split, and an item that breaks part-way
fails as a whole while every other item is kept."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from bench_scripts import run_smoke

import anytok
from anytok.datasets import encode_dataset, iter_rows, sources
from anytok.datasets import local as local_engine
from anytok.datasets.sources import Item, SegmentPolicy, iter_segments
from anytok.media import MediaError, MediaLimits, iter_audio, iter_video, load_audio, load_video
from anytok.media import audio as media_audio
from anytok.pipeline import InputFormat, load_input

AUDIO_MODEL = "seanet_fsq_24khz"


def chirp(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``(samples, channels)`` float32: a chirp with a little noise, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    waves = [
        0.4 * np.sin(2 * np.pi * (150 + 400 * t + 90 * c) * t) + 0.05 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(waves, axis=1).astype(np.float32)


def write_flac(path: Path, rate: int, seconds: float, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, chirp(rate, seconds, channels, seed), rate, subtype="PCM_16")
    return path


def write_alac_m4a(path: Path, rate: int, seconds: float) -> Path:
    """Lossless M4A: a format FFmpeg decodes and libsndfile does not (decoded whole)."""
    pcm = (chirp(rate, seconds)[:, 0] * 32767).round().astype(np.int16)[None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("alac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, "s16p", "mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def counting_video(path: Path, frames: int, fps: float, size: int = 24) -> Path:
    """Frame ``i`` is a flat gray of level ``20 + 8 * i``, over a gradient (so resizing and
    cropping show)."""
    levels = torch.tensor([20 + 8 * i for i in range(frames)], dtype=torch.float32)
    ramp = torch.linspace(-0.2, 0.2, size).view(1, 1, 1, size)
    video = (levels / 127.5 - 1.0).view(1, frames, 1, 1) + ramp
    video = video.expand(3, frames, size + 8, size).clamp(-1, 1).contiguous()
    return anytok.media.save_video(path, video, fps)


# --------------------------------------------------------------------------- media


@pytest.mark.parametrize(
    ("name", "rate", "channels", "out_rate", "out_channels", "chunk"),
    [
        ("a.flac", 44100, 2, 24000, 1, 10_007),  # resampled and mixed down, odd chunks
        ("b.wav", 24000, 1, None, None, 24000),  # read as stored
        ("c.flac", 22050, 1, 48000, 2, 5_000),  # upsampled, duplicated to stereo
    ],
)
def test_iter_audio_chunks_join_to_load_audio(
    tmp_path: Path, name, rate, channels, out_rate, out_channels, chunk
) -> None:
    path = tmp_path / name
    sf.write(path, chirp(rate, 2.3, channels), rate, subtype="PCM_16")
    whole = load_audio(path, out_rate, out_channels).waveform
    chunks = list(iter_audio(path, chunk, out_rate, out_channels))
    assert [c.shape[1] for c in chunks[:-1]] == [chunk] * (len(chunks) - 1)
    assert 0 < chunks[-1].shape[1] <= chunk and len(chunks) == math.ceil(whole.shape[1] / chunk)
    assert all(c.dtype == torch.float32 and c.is_contiguous() for c in chunks)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-6, rtol=0)


def test_iter_audio_streams_ffmpeg_formats_in_one_decoding_pass(tmp_path: Path) -> None:
    """M4A has no length libsndfile can read: one decoding pass, each chunk resampled from
    the samples its window needs; past the 1 s length limit too."""
    path = write_alac_m4a(tmp_path / "tone.m4a", 16000, 1.5)
    whole = load_audio(path, 24000).waveform
    chunks = list(iter_audio(path, 7000, 24000))
    assert [c.shape[1] for c in chunks] == [7000] * 5 + [1000]
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-6, rtol=0)
    # Each chunk holds its window and the filter's margin, not the file.
    assert all(c.untyped_storage().nbytes() < 8000 * 4 for c in chunks)
    short = MediaLimits(max_audio_seconds=1.0)
    with pytest.raises(MediaError, match="too long"):
        load_audio(path, 24000, limits=short)
    streamed = torch.cat(list(iter_audio(path, 7000, 24000, limits=short)), dim=1)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    with pytest.raises(MediaError, match="too long"):  # a chunk over the limit is refused
        next(iter_audio(path, 30000, 24000, limits=short))
    same_rate = torch.cat(list(iter_audio(path, 999, channels=2)), dim=1)
    assert torch.equal(same_rate, load_audio(path, channels=2).waveform)


@pytest.mark.skipif("libmp3lame" not in av.codecs_available, reason="no MP3 encoder")
def test_iter_audio_streams_an_mp3_without_a_length_header(tmp_path: Path) -> None:
    """libsndfile only estimates such a file's length: it is read block by block, once."""
    path = tmp_path / "vbr_no_xing.mp3"
    rate = 48000
    with av.open(str(path), "w", options={"write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.options = {"q": "2"}  # VBR: the estimate from the first frame is wrong
        frame = av.AudioFrame.from_ndarray(chirp(rate, 2.0).T.copy(), "fltp", "mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for out in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(out))
        container.mux(stream.encode())
    assert media_audio.audio_length(path) is None
    whole = load_audio(path, 16000).waveform
    chunks = list(iter_audio(path, 5000, 16000))
    assert [c.shape[1] for c in chunks[:-1]] == [5000] * (len(chunks) - 1)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-6, rtol=0)


def test_iter_audio_streams_a_file_over_the_length_limit(tmp_path: Path) -> None:
    """``max_audio_seconds`` bounds what is held: a chunk, not the file."""
    path = write_flac(tmp_path / "long.flac", 32000, 3.0)
    short = MediaLimits(max_audio_seconds=1.0)
    with pytest.raises(MediaError, match="too long"):
        load_audio(path, 24000, limits=short)
    chunks = list(iter_audio(path, 12000, 24000, limits=short))
    whole = load_audio(path, 24000).waveform
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-6, rtol=0)
    with pytest.raises(MediaError, match="too long"):  # a chunk over the limit is refused
        next(iter_audio(path, 48000, 24000, limits=short))


def test_iter_audio_errors(tmp_path: Path) -> None:
    path = write_flac(tmp_path / "x.flac", 16000, 2.0)
    with pytest.raises(ValueError, match="chunk_samples must be >= 1, got 0"):
        iter_audio(path, 0)
    with pytest.raises(MediaError, match="missing.flac"):  # at the call, before any chunk
        iter_audio(tmp_path / "missing.flac", 100)
    # A FLAC cut short: the chunks before the cut come, the one reaching it raises.
    data = path.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(MediaError, match="cut.flac"):
        for chunk in iter_audio(cut, 4000):
            got.append(chunk)
    assert 2 <= len(got) < 8
    # What load_audio refuses, the stream refuses with the same message.
    for bad in (counting_video(tmp_path / "v.mp4", 4, 8.0), tmp_path / "empty.m4a"):
        if not bad.exists():
            bad.write_bytes(b"\0" * 64)
        with pytest.raises(MediaError) as want:
            load_audio(bad, 16000)
        with pytest.raises(MediaError) as got_err:
            list(iter_audio(bad, 1000, 16000))
        assert str(got_err.value) == str(want.value)


@pytest.mark.parametrize(
    ("fps", "size", "chunk"),
    [(10.0, None, 3), (None, 16, 4), (10.0, (12, 20), 1), (50.0, None, 7)],
)
def test_iter_video_chunks_join_to_load_video(tmp_path: Path, fps, size, chunk) -> None:
    """25 -> 10 fps puts every other target halfway between two frames (ties), 25 -> 50
    shows each frame twice: one pass, so the chunks pick what the whole clip picks."""
    path = counting_video(tmp_path / "count.mp4", 23, 25.0)
    whole = load_video(path, fps=fps, size=size).video
    chunks = list(iter_video(path, chunk, fps=fps, size=size))
    assert [c.shape[1] for c in chunks[:-1]] == [chunk] * (len(chunks) - 1)
    assert 0 < chunks[-1].shape[1] <= chunk and chunks[0].dtype == torch.float32
    assert torch.equal(torch.cat(chunks, dim=1), whole)


def test_iter_video_streams_past_the_frame_limit_and_takes_transforms(tmp_path: Path) -> None:
    path = counting_video(tmp_path / "count.mp4", 12, 8.0)
    few = MediaLimits(max_video_frames=5)
    with pytest.raises(MediaError, match="too many frames"):
        load_video(path, limits=few)
    chunks = list(iter_video(path, 4, limits=few))
    assert [c.shape[1] for c in chunks] == [4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=1), load_video(path).video)
    with pytest.raises(ValueError, match="chunk_frames must be from 1 to .* = 5, got 6"):
        iter_video(path, 6, limits=few)
    with pytest.raises(ValueError, match="fps must be positive"):
        iter_video(path, 2, fps=0.0)

    def corner(frame: torch.Tensor) -> torch.Tensor:
        return frame[:, :8, :8]

    cut = torch.cat(list(iter_video(path, 5, transform=corner)), dim=1)
    assert torch.equal(cut, load_video(path, transform=corner).video)


# --------------------------------------------------------------------------- segments


def test_split_segments_equal_cutting_the_whole_file(tmp_path: Path, monkeypatch) -> None:
    """Window by window (audio) and chunk by chunk (video), the segments and their starts
    are those of loading everything and cutting it."""
    monkeypatch.setattr(sources, "SPLIT_WINDOW_BYTES", 3 * 2400 * 4)  # 3 segments a window
    audio = write_flac(tmp_path / "a.flac", 44100, 2.05, channels=2)
    fmt = InputFormat("audio", sample_rate=24000, channels=1)
    policy = SegmentPolicy("split", 0.1)
    item = Item(id="a", source="a.flac", path=str(audio))
    got = list(iter_segments(fmt, policy, item))
    want = policy.apply(fmt, load_input(fmt, audio))
    assert len(got) == len(want) == 21
    for (start, media), (start_ref, media_ref) in zip(got, want, strict=True):
        assert start == start_ref
        torch.testing.assert_close(media, media_ref, atol=1e-6, rtol=0)

    video = counting_video(tmp_path / "v.mp4", 17, 25.0)
    for resize in ("cover_crop", "native"):
        fmt = InputFormat("video", resolution=(16, 16), fps=10.0, resize=resize, multiple=8)
        policy = SegmentPolicy("split", 0.3)
        item = Item(id="v", source="v.mp4", path=str(video))
        got = list(iter_segments(fmt, policy, item))
        want = policy.apply(fmt, load_input(fmt, video))
        assert [s for s, _ in got] == [s for s, _ in want] == pytest.approx([0.0, 0.3, 0.6])
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


# --------------------------------------------------------------------------- dataset jobs


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory) -> Path:
    """Two good FLACs at 44.1 kHz and one cut at 60 % (it breaks part-way through)."""
    folder = tmp_path_factory.mktemp("long")
    write_flac(folder / "a.flac", 44100, 1.3, seed=1)
    write_flac(folder / "sub" / "b.flac", 44100, 0.9, channels=2, seed=2)
    data = write_flac(folder / "c.flac", 44100, 1.6, seed=3).read_bytes()
    (folder / "c.flac").write_bytes(data[: int(len(data) * 0.6)])
    return folder


def _codes_by_row(dst: Path) -> dict[tuple[str, int], torch.Tensor]:
    return {(row["id"], row["segment"]): tokens.codes for row, tokens in iter_rows(dst)}


@pytest.mark.parametrize("workers", [0, 2])
def test_split_jobs_stream_long_files_and_drop_a_broken_one_whole(
    tmp_path: Path, monkeypatch, long_folder: Path, audio_ckpt: Path, workers: int
) -> None:
    """Windows of 2 segments, pieces of 3: files over the (lowered) 0.5 s length limit split
    as they would whole, and the FLAC cut part-way through leaves no rows, only its error,
    though segments of it were encoded before the cut was reached."""
    reference = encode_dataset(
        long_folder, tmp_path / "ref", str(audio_ckpt), segment="split", segment_seconds=0.2
    )
    assert reference.failed == 1
    monkeypatch.setattr(sources, "SPLIT_WINDOW_BYTES", 2 * 4800 * 4)
    monkeypatch.setattr(local_engine, "SPLIT_WINDOW_BYTES", 3 * 4800 * 4)
    monkeypatch.setattr(media_audio, "DEFAULT_LIMITS", MediaLimits(max_audio_seconds=0.5))
    full = encode_dataset(long_folder, tmp_path / "full", str(audio_ckpt), workers=workers)
    assert full.failed == 3  # whole files are over the limit
    seen = []  # the pieces loaded in this process (workers=0)
    pieces = local_engine.ItemLoader.pieces

    def spy(self, index):
        for piece in pieces(self, index):
            seen.append((index, piece.first, len(piece.segments), piece.last, piece.error))
            yield piece

    monkeypatch.setattr(local_engine.ItemLoader, "pieces", spy)
    dst = tmp_path / "split"
    streamed = encode_dataset(
        long_folder,
        dst,
        str(audio_ckpt),
        segment="split",
        segment_seconds=0.2,
        workers=workers,
        batch_size=2,
    )
    assert streamed.failed == 1 and streamed.tokens == reference.tokens > 0
    rows = _codes_by_row(dst)
    want = _codes_by_row(tmp_path / "ref")
    assert sorted(rows) == sorted(want)
    assert sorted(rows) == [("a.flac", n) for n in range(7)] + [("sub/b.flac", n) for n in range(5)]
    assert all(torch.equal(rows[key], want[key]) for key in rows)
    errors = [json.loads(line) for line in (dst / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["c.flac"] and "truncated" in errors[0]["error"]
    if workers == 0:  # a.flac: 7 segments in pieces of 3; c.flac: 3 segments, then the cut
        assert [p for p in seen if p[0] == 0] == [
            (0, 0, 3, False, None),
            (0, 3, 3, False, None),
            (0, 6, 1, True, None),
        ]
        broken = [p[1:4] for p in seen if p[0] == 1]
        assert broken == [(0, 3, False), (3, 0, True)]


def test_a_loader_hands_a_split_item_over_in_pieces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "SPLIT_WINDOW_BYTES", 4800 * 4)
    path = write_flac(tmp_path / "a.flac", 24000, 1.0)
    fmt = InputFormat("audio", sample_rate=24000, channels=1)
    items = [Item(id="a", source="a.flac", path=str(path))]
    loader = local_engine.ItemLoader(
        fmt, SegmentPolicy("split", 0.1), items, [0], piece_bytes=4 * 2400 * 4
    )
    pieces = list(loader)
    assert [(p.first, len(p.segments), p.last, p.error) for p in pieces] == [
        (0, 4, False, None),
        (4, 4, False, None),
        (8, 2, True, None),
    ]
    starts = [start for p in pieces for start, _ in p.segments]
    assert starts == pytest.approx([n / 10 for n in range(10)])
    # Cut at 60 %: two pieces come, then the error that ends the item.
    data = write_flac(tmp_path / "b.flac", 24000, 1.0, seed=4).read_bytes()
    (tmp_path / "b.flac").write_bytes(data[: int(len(data) * 0.6)])
    items.append(Item(id="b", source="b.flac", path=str(tmp_path / "b.flac")))
    loader = local_engine.ItemLoader(
        fmt, SegmentPolicy("split", 0.1), items, [1], piece_bytes=2 * 2400 * 4
    )
    pieces = list(loader)
    assert [(p.first, len(p.segments), p.last) for p in pieces] == [
        (0, 2, False),
        (2, 2, False),
        (4, 0, True),
    ]
    assert "audio data cannot be decoded" in pieces[-1].error


def test_split_streaming_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/split_streaming.py end to end: streamed and whole reads give the same
    segments, and both tables are written."""
    report = run_smoke("split_streaming", tmp_path)
    assert [row["file"] for row in report["rows"]] == ["long.flac", "long.mp4"]
    assert all(row["same"] and row["stream"]["segments"] >= 2 for row in report["rows"])
    assert "| streamed peak MiB |" in (tmp_path / "split_streaming.md").read_text()


# --------------------------------------------------------------------------- long encodes


def _ragged(x: torch.Tensor, axis: int, seed: int) -> list[torch.Tensor]:
    """``x`` cut along ``axis`` into pieces of random sizes (1 to 40), empty ones included."""
    rng = np.random.default_rng(seed)
    cuts, at = [0], 0
    while at < x.shape[axis]:
        at = min(x.shape[axis], at + int(rng.integers(0, 41)))
        cuts.append(at)
    return [x.narrow(axis, a, b - a) for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("name", ["encodec_24khz", "seanet_fsq_24khz", "dac_24khz"])
def test_encode_long_stream_equals_encode_long(name: str) -> None:
    """Causal models stream, non-causal ones take windows with context: pieces of any size
    give exactly encode_long's codes of the whole signal, read only as far as needed."""
    model = anytok.create_model(name, tiny=True, seed=0).eval()
    hop = model.hop_length
    audio = 0.4 * torch.randn(
        1, model.channels, hop * 37 + 5, generator=torch.Generator().manual_seed(1)
    )
    chunk_seconds = 6 * hop / model.sample_rate
    with torch.inference_mode():
        whole = model.encode_long(audio, chunk_seconds=chunk_seconds)
        pieces = _ragged(audio * 1, -1, seed=2)
        read = []

        def lazily():
            for piece in pieces:
                read.append(piece.shape[-1])
                yield piece

        streamed = model.encode_long_stream(lazily(), chunk_seconds=chunk_seconds)
    assert streamed.codes.device.type == "cpu" and streamed.spec == whole.spec
    assert torch.equal(streamed.codes, whole.codes)
    assert sum(read) == audio.shape[-1]
    with pytest.raises(ValueError, match="empty audio"):
        model.encode_long_stream(iter([audio[..., :0]]))


def test_encode_long_stream_holds_a_chunk_not_the_signal() -> None:
    """The buffer never holds more than a window and a piece (non-causal: context each side)."""
    from anytok.codecs import long_audio

    model = anytok.create_model("dac_24khz", tiny=True, seed=0).eval()
    hop = model.hop_length
    audio = 0.4 * torch.randn(1, 1, hop * 400)
    held = []
    fill = long_audio.PieceBuffer.fill

    def spy(self, upto):
        fill(self, upto)
        held.append(self.end - self.start)

    chunk_seconds = 20 * hop / model.sample_rate
    with pytest.MonkeyPatch.context() as patch, torch.inference_mode():
        patch.setattr(long_audio.PieceBuffer, "fill", spy)
        pieces = iter(audio.split(hop * 7, dim=-1))
        streamed = model.encode_long_stream(pieces, chunk_seconds=chunk_seconds)
    with torch.inference_mode():
        assert torch.equal(
            streamed.codes, model.encode_long(audio, chunk_seconds=chunk_seconds).codes
        )
    # A window is 20 frames and 15 of context each side: 50 hops, plus a piece of 7.
    assert max(held) <= hop * (50 + 7) and len(held) == 21


@pytest.mark.parametrize("name", ["cnn3d_fsq_4x8x8", "hierarchical"])
def test_encode_long_stream_of_video_equals_one_pass(name: str) -> None:
    model = anytok.create_model(name, tiny=True, seed=0).eval()
    s = model.temporal_factor
    context = getattr(model, "encoder_temporal_context", None) or model.encoder.temporal_context
    frames = s * (context // s + 7) + 2  # not of the form 1 + k*s: the last frame repeats
    video = torch.rand(1, 3, frames, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        one = model.encode(video)
        for chunk in (s, 3 * s):
            streamed = model.encode_long_stream(
                iter(_ragged(video, 2, seed=chunk)), chunk_frames=chunk
            )
            assert torch.equal(streamed.codes, one.codes) and streamed.lengths is None
        with pytest.raises(ValueError, match="no video frames"):
            model.encode_long_stream(iter([]))


# --------------------------------------------------------------------------- encode_files


def _codes(folder: Path) -> dict[str, torch.Tensor]:
    from anytok.tokens import Tokens

    return {
        p.relative_to(folder).as_posix(): Tokens.load(p).codes
        for p in sorted(folder.rglob("*.tokens.safetensors"))
    }


def test_encode_files_streams_files_whose_header_says_they_are_long(
    tmp_path: Path, monkeypatch
) -> None:
    """Over ``long_seconds`` by the header, a file is read piece by piece into
    encode_long_stream: the tokens of loading it whole, past the (lowered) length limit,
    and a file cut part-way fails alone."""
    from anytok import pipeline

    model = anytok.create_model(AUDIO_MODEL, tiny=True, seed=0).eval()
    src = tmp_path / "src"
    write_flac(src / "long.flac", 44100, 2.6, seed=5)
    write_alac_m4a(src / "long.m4a", 16000, 2.2)
    write_flac(src / "short.flac", 24000, 0.3, seed=6)
    cut = write_flac(src / "cut.flac", 24000, 2.0, seed=7)
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    whole = pipeline.encode_files(model, [src], tmp_path / "whole", long_seconds=None)
    assert [f.path.name for f in whole.failures] == ["cut.flac"]

    monkeypatch.setattr(pipeline, "LONG_PIECE_SECONDS", 0.25)
    monkeypatch.setattr(media_audio, "DEFAULT_LIMITS", MediaLimits(max_audio_seconds=1.0))
    streamed_files = []
    real = pipeline.encode_long_file
    monkeypatch.setattr(
        pipeline,
        "encode_long_file",
        lambda m, path, d: streamed_files.append(path.name) or real(m, path, d),
    )
    report = pipeline.encode_files(model, [src], tmp_path / "streamed", long_seconds=1.0)
    assert sorted(streamed_files) == ["cut.flac", "long.flac", "long.m4a"]
    assert [f.path.name for f in report.failures] == ["cut.flac"]
    assert "truncated or corrupt" in report.failures[0].error
    assert report.items == 3 and report.tokens == whole.tokens
    assert report.media_seconds == pytest.approx(whole.media_seconds)
    got, want = _codes(tmp_path / "streamed"), _codes(tmp_path / "whole")
    assert sorted(got) == [
        "long.flac.tokens.safetensors",
        "long.m4a.tokens.safetensors",
        "short.flac.tokens.safetensors",
    ]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_encode_files_streams_long_video_past_the_frame_limit(tmp_path: Path, monkeypatch) -> None:
    from anytok import pipeline
    from anytok.media import video as media_video

    model = anytok.create_model("cnn3d_fsq_4x8x8", tiny=True, seed=0).eval()
    path = counting_video(tmp_path / "long.mp4", 30, 10.0)
    want = model.encode(pipeline.load_for_model(model, path).unsqueeze(0)).unbind()[0].codes
    monkeypatch.setattr(pipeline, "LONG_PIECE_FRAMES", 5)
    monkeypatch.setattr(media_video, "DEFAULT_LIMITS", MediaLimits(max_video_frames=8))
    frames = round(30 / 10.0 * model.fps)
    report = pipeline.encode_files(model, [path], tmp_path / "out", long_seconds=1.0)
    assert report.ok and report.media_seconds == pytest.approx(frames / model.fps)
    assert torch.equal(_codes(tmp_path / "out")["long.mp4.tokens.safetensors"], want)
    # Without the streamed path the whole clip is over the limit.
    report = pipeline.encode_files(model, [path], tmp_path / "whole", long_seconds=None)
    assert "too many frames" in report.failures[0].error


def test_a_model_without_a_chunked_path_loads_a_long_file_whole(tmp_path: Path) -> None:
    from anytok import pipeline

    model = anytok.create_model("snac_24khz", tiny=True, seed=0).eval()
    path = write_flac(tmp_path / "a.flac", 24000, 1.2)
    assert pipeline.encode_long_file(model, path, torch.device("cpu")) is None
    report = pipeline.encode_files(model, [path], tmp_path / "out", long_seconds=0.5)
    want = model.encode(pipeline.load_for_model(model, path).unsqueeze(0)).unbind()[0].codes
    assert report.ok and torch.equal(_codes(tmp_path / "out")["a.flac.tokens.safetensors"], want)


def test_long_file_encode_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/long_file_encode.py end to end: streamed and whole encodes give the same
    tokens, and the table is written."""
    row = run_smoke("long_file_encode", tmp_path)["row"]
    assert row["same"] and row["stream"]["tokens"] == row["whole"]["tokens"] > 0
    assert row["stream"]["media_seconds"] == pytest.approx(60.0, abs=0.01)
    assert "| streamed (30 s pieces" in (tmp_path / "long_file_encode.md").read_text()


def test_ray_rows_stream_and_reassemble_an_item_broken_part_way(
    tmp_path: Path, monkeypatch
) -> None:
    """The Ray engine's decode stage and driver, without Ray: rows of a split item come as
    they load, only the final one with the item's row count; a file cut part-way ends with
    an error row after rows already sent, and the driver, fed rows in any order, completes
    each item once all its rows are in (the broken one with no segments)."""
    from anytok.datasets.ray_engine import _Decode, _ItemRows

    monkeypatch.setattr(sources, "SPLIT_WINDOW_BYTES", 2 * 2400 * 4)
    good = write_flac(tmp_path / "good.flac", 24000, 0.5)
    data = write_flac(tmp_path / "cut.flac", 24000, 1.0, seed=4).read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: int(len(data) * 0.6)])
    fmt = InputFormat("audio", sample_rate=24000, channels=1)
    decode = _Decode(fmt, SegmentPolicy("split", 0.1))
    rows = []
    for index, path in enumerate([good, tmp_path / "cut.flac"]):
        item = Item(id=path.name, source=path.name, path=str(path))
        rows += decode({"index": index, "item": json.dumps(item.to_dict())})
    assert [(r["index"], r["segment"], r["count"], bool(r["error"])) for r in rows] == [
        (0, 0, -1, False),
        (0, 1, -1, False),
        (0, 2, -1, False),
        (0, 3, -1, False),
        (0, 4, 5, False),
        (1, 0, -1, False),
        (1, 1, -1, False),
        (1, 2, -1, False),
        (1, 3, 4, True),  # the held-back segment 3 is never sent: the error takes its place
    ]
    # Encoded rows as the encoder stage returns them, in a shuffled order.
    order = [8, 3, 0, 7, 4, 1, 2, 6, 5]
    encoded = [rows[k] for k in order]
    assembler = _ItemRows()
    done = []
    for row in encoded:
        batch = {key: np.asarray([row[key]] if key != "codes" else [None], dtype=object)
                 for key in ("index", "segment", "count", "start", "error")}  # fmt: skip
        fake = np.zeros((1, 2), dtype=np.int64) + row["segment"]
        batch["codes"] = np.empty(1, dtype=object)
        batch["codes"][0] = fake.reshape(-1)
        batch["shape"] = np.empty(1, dtype=object)
        batch["shape"][0] = np.asarray(fake.shape)
        batch["seconds"] = np.asarray([0.1])
        done += [
            (r.index, r.error is None, [s.segment for s in r.segments])
            for r in assembler.add(batch)
        ]
    assert done == [(0, True, [0, 1, 2, 3, 4]), (1, False, [])]
    assert not assembler.partial and not assembler.seen


@pytest.fixture
def ffmpeg_samples_pulled(monkeypatch) -> list[int]:
    """Samples FFmpeg decodes from now on, block by block (a spy on the decoder's blocks)."""
    pulled: list[int] = []
    real = media_audio._ffmpeg_blocks

    def counting(*args, **kwargs):
        for block in real(*args, **kwargs):
            pulled.append(0 if isinstance(block, tuple) else len(block))
            yield block

    monkeypatch.setattr(media_audio, "_ffmpeg_blocks", counting)
    return pulled


def test_an_ffmpeg_window_stops_decoding_at_its_end(
    tmp_path: Path, ffmpeg_samples_pulled: list[int]
) -> None:
    """M4A cannot seek sample-exactly, so a window decodes from the start, but it keeps
    only the window and stops at its end (a 1 s crop of a long M4A no longer decodes all
    of it); the length limit bounds the window."""
    path = write_alac_m4a(tmp_path / "tone.m4a", 16000, 6.0)
    whole = load_audio(path, 24000).waveform
    for offset, duration in [(0.0, 0.5), (2.0, 1.0), (5.5, None), (4.9, 3.0)]:
        ffmpeg_samples_pulled.clear()
        got = load_audio(path, 24000, offset=offset, duration=duration).waveform
        first = round(offset * 24000)
        stop = None if duration is None else first + round(duration * 24000)
        torch.testing.assert_close(got, whole[:, first:stop], atol=1e-6, rtol=0)
        if duration is not None and offset + duration < 5:
            assert sum(ffmpeg_samples_pulled) < 16000 * (
                offset + duration + 0.5
            )  # stopped near the end
    short = MediaLimits(max_audio_seconds=2.0)
    with pytest.raises(MediaError, match="too long"):
        load_audio(path, 24000, limits=short)
    window = load_audio(path, 24000, limits=short, offset=3.0, duration=1.5).waveform
    torch.testing.assert_close(window, whole[:, 72000:108000], atol=1e-6, rtol=0)
    with pytest.raises(MediaError, match="offset 7 s is at or past the end"):
        load_audio(path, 24000, offset=7.0, duration=1.0)


def test_training_crops_of_a_file_without_a_stated_length_decode_up_to_the_crop(
    tmp_path: Path, monkeypatch, ffmpeg_samples_pulled: list[int]
) -> None:
    """An M4A states no exact length: the header's estimate picks the crop, FFmpeg stops at
    its end, and the crops are those of decoding the whole file; an estimate that overstates
    the length falls back to the whole decode for a crop that comes back short."""
    import torch.nn.functional as F

    from anytok.data import datasets as datasets_module
    from anytok.data.datasets import AudioSegments
    from anytok.data.sources import MediaItem

    path = write_alac_m4a(tmp_path / "tone.m4a", 16000, 4.0)
    ds = AudioSegments([MediaItem(path, path.name)], 24000, 1, segment=2400)
    windowed = [ds[(0, seed)]["media"] for seed in range(5)]
    windowed_pulled = sum(ffmpeg_samples_pulled)
    ffmpeg_samples_pulled.clear()
    with monkeypatch.context() as patch:
        patch.setattr(datasets_module, "audio_duration", lambda path: None)
        whole = [ds[(0, seed)]["media"] for seed in range(5)]
    assert windowed_pulled < 0.8 * sum(
        ffmpeg_samples_pulled
    )  # 5 crops decode less than 5 whole files
    for a, b in zip(windowed, whole, strict=True):
        assert a.shape == (1, 2400)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len({float(w.sum()) for w in windowed}) == 5  # different crops

    # An estimate of 10 s for 4 s of audio: crops past the end come back short -> whole.
    monkeypatch.setattr(datasets_module, "audio_duration", lambda path: 10.0)
    signal = load_audio(path, 24000, 1).waveform
    for seed in range(6):
        crop = ds[(0, seed)]["media"]
        assert crop.shape == (1, 2400)
        match = F.conv1d(signal[None], crop[None]) / crop.square().sum()  # 1 where it fits
        offset = int((match[0, 0] - 1).abs().argmin())
        torch.testing.assert_close(crop, signal[:, offset : offset + 2400], atol=1e-6, rtol=0)
