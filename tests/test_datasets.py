"""Dataset jobs: folder / manifest / tar inputs, bad items, exact resume after SIGKILL,
determinism across batch size / workers / engines, exporters round-tripping to Tokens.

Tiny tokenizers (``tiny=True``) saved as checkpoints keep the whole file fast on a CPU.
"""

from __future__ import annotations

import filecmp
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image
from token_datasets import finished_token_dataset

import anytok
from anytok.checkpoint import save_checkpoint
from anytok.datasets import (
    DatasetError,
    document_tokens,
    encode_dataset,
    encode_dataset_from_cli,
    export_files,
    export_tokens,
    export_tokens_from_cli,
    iter_documents,
    iter_rows,
    list_items,
    read_export_meta,
)
from anytok.datasets.export import read_megatron_index
from anytok.datasets.files import temp_path
from anytok.datasets.shards import read_shard_info
from anytok.pipeline import load_for_model
from anytok.tokens import LMVocab, Tokens, TokenSpec

AUDIO_MODEL, IMAGE_MODEL = "seanet_fsq_24khz", "cnn_fsq_256"
SAMPLE_RATE = 24000
CORRUPT = ("bad.wav", "empty.wav", "sub/truncated.wav", "image.flac")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image_ckpt")
    save_checkpoint(anytok.create_model(IMAGE_MODEL, tiny=True), path)
    return path


def write_clips(folder: Path, count: int, seed: int, low: int = 1500, high: int = 7000) -> None:
    """Noisy chirps of random lengths (wav, 24 kHz mono), some in a subfolder."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(low, high))
        t = np.arange(n) / SAMPLE_RATE
        wave = 0.4 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.1 * rng.standard_normal(n)
        path = folder / ("sub" if i % 3 == 0 else "") / f"clip{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), SAMPLE_RATE)


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    """10 good clips and 4 bad files (text, empty, truncated, an image named .flac)."""
    root = tmp_path_factory.mktemp("audio")
    write_clips(root, 10, seed=0)
    (root / "bad.wav").write_text("this is not audio\n")
    (root / "empty.wav").write_bytes(b"")
    whole = (root / "clip01.wav").read_bytes()
    (root / "sub" / "truncated.wav").write_bytes(whole[: len(whole) // 3])
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    (root / "image.flac").write_bytes(png.getvalue())
    (root / "notes.txt").write_text("not media: ignored by folder listing")
    return root


def rows_by_id(dst: Path) -> dict[tuple[str, int], tuple[dict, Tokens]]:
    return {(row["id"], row["segment"]): (row, tokens) for row, tokens in iter_rows(dst)}


@pytest.fixture(scope="module")
def audio_dataset(tmp_path_factory, audio_folder, audio_ckpt) -> Path:
    """The folder encoded once with the local engine (the reference of several tests)."""
    dst = tmp_path_factory.mktemp("audio_ds") / "out"
    encode_dataset(audio_folder, dst, str(audio_ckpt), batch_size=3, workers=2, shard_size=4)
    return dst


def dataset_files(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.iterdir() if not p.name.startswith("."))


def assert_same_dataset(a: Path, b: Path) -> None:
    """Byte-identical shards, manifest, errors file and plan."""
    names = dataset_files(a)
    assert names == dataset_files(b)
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs"


# --------------------------------------------------------------------------- folder input


def test_folder_with_corrupt_files_lists_them_and_encodes_the_rest(
    audio_folder, audio_dataset, audio_ckpt
) -> None:
    manifest = json.loads((audio_dataset / "manifest.json").read_text())
    assert manifest["items"] == 14 and manifest["encoded"] == 10 and manifest["failed"] == 4
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{k:05d}.parquet" for k in range(4)]
    errors = [
        json.loads(line) for line in (audio_dataset / "errors.jsonl").read_text().splitlines()
    ]
    assert sorted(e["id"] for e in errors) == sorted(CORRUPT)
    assert all(e["error"] for e in errors)
    by_source = {e["source"]: e["error"] for e in errors}
    assert "empty" in by_source["empty.wav"]
    assert "truncated" in by_source["sub/truncated.wav"]

    # Every good file's row holds exactly what the tokenizer gives for that file alone.
    model = anytok.load(str(audio_ckpt))
    rows = rows_by_id(audio_dataset)
    assert len(rows) == 10
    for (item_id, _), (row, tokens) in rows.items():
        media = load_for_model(model, audio_folder / item_id)
        with torch.inference_mode():
            expected = model.encode(media[None])
        assert torch.equal(tokens.codes, expected.codes), item_id
        assert row["duration_seconds"] == pytest.approx(media.shape[-1] / SAMPLE_RATE)
        assert row["num_tokens"] == tokens.codes.numel() and row["length"] == row["shape"][1]

    # The Parquet file carries the tokenizer's identity and spec.
    meta = pq.read_schema(audio_dataset / "shard-00000.parquet").metadata
    spec = anytok.TokenSpec.from_json(meta[b"anytok.token_spec"].decode())
    assert spec == model.spec
    assert meta[b"anytok.tokenizer"].decode() == model.registry_name
    assert meta[b"anytok.version"].decode() == anytok.__version__
    assert read_shard_info(audio_dataset / "shard-00000.parquet").items == 4


def test_same_tokens_for_any_batch_size_and_worker_count(
    tmp_path, audio_folder, audio_dataset, audio_ckpt
) -> None:
    dst = tmp_path / "batch1"
    encode_dataset(audio_folder, dst, str(audio_ckpt), batch_size=1, workers=0, shard_size=4)
    assert_same_dataset(audio_dataset, dst)


def test_changed_input_or_model_is_an_error(tmp_path, audio_folder, audio_ckpt) -> None:
    src = tmp_path / "src"
    write_clips(src, 4, seed=1)
    dst = tmp_path / "out"
    summary = encode_dataset(src, dst, str(audio_ckpt), shard_size=2, workers=0)
    assert summary.ok and summary.shards_written == 2
    again = encode_dataset(src, dst, str(audio_ckpt), shard_size=2, workers=0)
    assert again.shards_written == 0 and again.shards_skipped == 2

    write_clips(src / "more", 1, seed=2)
    with pytest.raises(DatasetError, match="input items"):
        encode_dataset(src, dst, str(audio_ckpt), shard_size=2, workers=0)
    other = tmp_path / "other_ckpt"
    save_checkpoint(anytok.create_model(AUDIO_MODEL, tiny=True, seed=1), other)
    with pytest.raises(DatasetError, match="weights"):
        encode_dataset(audio_folder, dst, str(other), shard_size=2, workers=0)
    with pytest.raises(DatasetError, match="shard size"):
        encode_dataset(src, dst, str(audio_ckpt), shard_size=3, workers=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "unrelated.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        encode_dataset(src, tmp_path / "full", str(audio_ckpt))


# --------------------------------------------------------------------------- kill and resume


def _shards_on_disk(dst: Path) -> int:
    return len(list(dst.glob("shard-*.parquet"))) if dst.is_dir() else 0


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_result(
    tmp_path, audio_ckpt
) -> None:
    src = tmp_path / "src"
    write_clips(src, 30, seed=3, low=4000, high=9000)
    (src / "broken.wav").write_text("corrupt")
    reference = tmp_path / "reference"
    encode_dataset(src, reference, str(audio_ckpt), batch_size=4, workers=0, shard_size=3)
    num_shards = _shards_on_disk(reference)
    assert num_shards == 11

    dst = tmp_path / "killed"
    command = [
        sys.executable, "-m", "anytok.cli", "encode-dataset", str(src), str(dst),
        "-m", str(audio_ckpt), "--shard-size", "3", "--batch-size", "2", "--workers", "1",
        "--no-progress",
    ]  # fmt: skip
    rng = random.Random(1234)
    # Kill once during start-up, then three times right after shard t (t random, increasing)
    # at a random instant of the next shard: loading, encoding or writing it.
    targets = [0, *sorted(rng.sample(range(1, num_shards), 3))]
    killed_unfinished = 0
    for target in targets:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if target == 0:  # imports, listing, the plan
            time.sleep(rng.uniform(0.5, 2.0))
        else:
            deadline = time.monotonic() + 120
            while _shards_on_disk(dst) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_unfinished += not (dst / "manifest.json").exists()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert killed_unfinished >= 3, "the runs ended before they could be killed"

    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 1, final.stderr  # one corrupt file: skipped, exit code 1
    assert "broken.wav" in final.stderr
    assert_same_dataset(reference, dst)
    assert not [p for p in dst.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- other inputs


def test_manifest_input_keeps_metadata(tmp_path, audio_folder, audio_dataset, audio_ckpt) -> None:
    lines = [
        {"path": str(audio_folder / "clip01.wav"), "id": "utt-b", "text": "hello", "speaker": 7},
        {"path": f"{audio_folder.name}/sub/clip00.wav", "id": "utt-a"},
        {"path": "missing.wav", "id": "utt-c", "text": "gone"},
    ]
    # A manifest beside the folder, relative paths resolved against the manifest's folder.
    manifest = audio_folder.parent / f"{audio_folder.name}.jsonl"
    manifest.write_text("# comment\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    dst = tmp_path / "out"
    summary = encode_dataset(manifest, dst, str(audio_ckpt), shard_size=2, workers=0)
    assert (summary.items, summary.encoded, summary.failed) == (3, 2, 1)
    assert summary.failures[0]["id"] == "utt-c"
    rows = rows_by_id(dst)
    reference = rows_by_id(audio_dataset)
    assert [key[0] for key in rows] == ["utt-a", "utt-b"]  # sorted by id
    row_b, tokens_b = rows[("utt-b", 0)]
    assert json.loads(row_b["metadata"]) == {"speaker": 7, "text": "hello"}
    assert row_b["source"] == lines[0]["path"]
    assert torch.equal(tokens_b.codes, reference[("clip01.wav", 0)][1].codes)
    assert torch.equal(rows[("utt-a", 0)][1].codes, reference[("sub/clip00.wav", 0)][1].codes)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav"}\n{"nope": 1}\n')
    with pytest.raises(DatasetError, match="line 2"):
        list_items(bad, "audio")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"path": "a.wav"}\n{"path": "a.wav"}\n')
    with pytest.raises(DatasetError, match="twice"):
        list_items(dup, "audio")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_shards_input_groups_members_like_webdataset(
    tmp_path, audio_folder, audio_dataset, audio_ckpt, suffix
) -> None:
    clips = sorted(p for p in audio_folder.rglob("clip*.wav"))
    mode = "w:gz" if suffix == ".tar.gz" else "w"
    for shard in range(2):
        with tarfile.open(tmp_path / f"data-{shard:03d}{suffix}", mode) as tar:
            for i, clip in enumerate(clips[shard * 3 : shard * 3 + 3]):
                key = f"sample{shard}{i}"
                _add(tar, f"{key}.wav", clip.read_bytes())
                _add(tar, f"{key}.json", json.dumps({"clip": clip.name}).encode())
                _add(tar, f"{key}.txt", b"a caption\n")
            if shard == 1:
                _add(tar, "dir/orphan.json", b'{"only": "metadata"}')
                _add(tar, "dir/corrupt.wav", b"RIFF....WAVEjunk")
    pattern = str(tmp_path / ("data-{000..001}" + suffix))
    dst = tmp_path / "out"
    summary = encode_dataset(pattern, dst, str(audio_ckpt), shard_size=4, workers=1)
    assert (summary.items, summary.encoded, summary.failed) == (8, 6, 2)
    failed = {f["id"]: f["error"] for f in summary.failures}
    assert "no audio member" in failed["data-001/dir/orphan"]
    assert "data-001/dir/corrupt" in failed
    reference = {key[0]: tokens for key, (_, tokens) in rows_by_id(audio_dataset).items()}
    rows = rows_by_id(dst)
    assert len(rows) == 6
    for (item_id, _), (row, tokens) in rows.items():
        meta = json.loads(row["metadata"])
        assert meta["txt"] == "a caption"
        clip = next(c for c in clips if c.name == meta["clip"])
        assert torch.equal(tokens.codes, reference[clip.relative_to(audio_folder).as_posix()].codes)
        assert row["source"] == f"{item_id.split('/')[0]}{suffix}::{item_id.split('/')[1]}.wav"


def test_segment_policies_split_and_crop(tmp_path, audio_folder, audio_dataset, audio_ckpt) -> None:
    dst = tmp_path / "split"
    encode_dataset(
        audio_folder, dst, str(audio_ckpt), segment="split", segment_seconds=0.1, workers=0
    )
    reference = rows_by_id(audio_dataset)
    rows = rows_by_id(dst)
    for (item_id, _), (row, _) in reference.items():
        segments = sorted(s for i, s in rows if i == item_id)
        assert segments == list(range(int(np.ceil(row["duration_seconds"] / 0.1 - 1e-9))))
    row, _ = rows[("clip01.wav", 1)]
    assert row["start_seconds"] == pytest.approx(0.1)
    dst = tmp_path / "crop"
    encode_dataset(audio_folder, dst, str(audio_ckpt), segment="crop", segment_seconds=0.1)
    for row, tokens in iter_rows(dst):
        assert row["duration_seconds"] <= 0.1 + 1e-9
        full = reference[(row["id"], 0)][1].codes
        # Causal codec: the codes of the first 0.1 s are a prefix of the whole file's.
        assert torch.equal(tokens.codes, full[..., : tokens.codes.shape[-1]])
    with pytest.raises(DatasetError, match="segment-seconds"):
        encode_dataset(audio_folder, tmp_path / "x", str(audio_ckpt), segment="split")


# --------------------------------------------------------------------------- exporters


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory, image_ckpt) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 32), (32, 32), (64, 48), (20, 50), (33, 35)]):
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    dst = root / "out"
    summary = encode_dataset(root, dst, str(image_ckpt), shard_size=2, batch_size=2, workers=0)
    assert summary.failed == 1 and summary.encoded == 5
    return dst


@pytest.mark.parametrize(
    ("which", "layout", "pattern", "offset", "shared", "special"),
    [
        ("audio", "bin", "flatten", 0, False, True),
        ("audio", "megatron", "delay", 50257, False, True),
        ("audio", "bin", "parallel", 0, True, True),
        ("audio", "megatron", "flatten", 0, False, False),
        ("image", "bin", "flatten", 1000, False, True),
        ("image", "megatron", "delay", 0, False, True),
    ],
)
def test_exporters_round_trip_through_from_lm_ids(
    tmp_path, audio_dataset, image_dataset, which, layout, pattern, offset, shared, special
) -> None:
    dataset = audio_dataset if which == "audio" else image_dataset
    out = tmp_path / "lm" / "tokens"
    summary = export_tokens(
        dataset,
        out,
        layout=layout,
        pattern=pattern,
        offset=offset,
        shared_levels=shared,
        add_special=special,
    )
    meta = read_export_meta(out)
    rows = list(iter_rows(dataset))
    assert summary.documents == meta["documents"] == len(rows)
    vocab = LMVocab.from_dict(meta["vocab"])
    assert meta["vocab_size"] == vocab.size and meta["bos"] == vocab.bos
    # The smallest dtype holding the vocabulary (this tiny codebook: 8 bits without offset).
    expected = "uint8" if vocab.size <= 256 else "uint16"
    assert meta["dtype"] == expected
    docs = list(iter_documents(out))
    assert len(docs) == len(rows)
    for doc, (_, tokens) in zip(docs, rows):
        back = document_tokens(doc, meta)
        assert back.equal(tokens)
    bin_size = (out.parent / "tokens.bin").stat().st_size
    assert bin_size == summary.tokens * np.dtype(meta["dtype"]).itemsize
    if layout == "megatron":
        # The index, read field by field as documented (Megatron-LM MMapIndexedDataset v1).
        idx = (out.parent / "tokens.idx").read_bytes()
        assert idx[:9] == b"MMIDIDX\x00\x00"
        version, code, n, d = struct.unpack_from("<QBQQ", idx, 9)
        assert (version, n, d) == (1, len(rows), len(rows) + 1)
        assert code == {"uint8": 1, "uint16": 8}[meta["dtype"]]
        lengths = np.frombuffer(idx, "<i4", n, 34)
        pointers = np.frombuffer(idx, "<i8", n, 34 + 4 * n)
        assert np.array_equal(np.frombuffer(idx, "<i8", d, 34 + 12 * n), np.arange(n + 1))
        assert len(idx) == 34 + 12 * n + 8 * d
        assert np.array_equal(lengths, [doc.size for doc in docs])
        itemsize = np.dtype(meta["dtype"]).itemsize
        assert np.array_equal(pointers, np.concatenate([[0], np.cumsum(lengths)[:-1]]) * itemsize)
        assert read_megatron_index(out.parent / "tokens.idx")[0] == np.dtype(meta["dtype"])


def test_export_cli(tmp_path, audio_dataset, capsys) -> None:
    out = tmp_path / "nano"
    assert export_tokens_from_cli([str(audio_dataset), str(out), "--format", "megatron"]) == 0
    assert "exported 10 document(s)" in capsys.readouterr().out
    assert (tmp_path / "nano.idx").is_file() and (tmp_path / "nano.json").is_file()
    assert export_tokens_from_cli([str(tmp_path / "nothing"), str(out)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_export_refuses_an_out_inside_the_dataset(tmp_path, audio_dataset, capsys) -> None:
    """``export-tokens DS DS/manifest`` removed the dataset's manifest.json, then failed; an
    OUT under a file was a FileExistsError traceback."""
    files = sorted(p.name for p in audio_dataset.iterdir())
    assert export_tokens_from_cli([str(audio_dataset), str(audio_dataset / "manifest")]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
    assert sorted(p.name for p in audio_dataset.iterdir()) == files
    (tmp_path / "afile").write_text("x")
    assert export_tokens_from_cli([str(audio_dataset), str(tmp_path / "afile" / "x")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_export_path_may_name_the_bin(tmp_path, audio_dataset) -> None:
    # `tokens.bin` (nanoGPT's data path) and `tokens.idx` name the prefix `tokens`, not
    # `tokens.bin.bin`; a prefix with another dot keeps it.
    prefix = tmp_path / "lm" / "tokens"
    files = [prefix.with_name("tokens" + s) for s in (".bin", ".idx", ".json")]
    assert export_files(prefix) == export_files(f"{prefix}.bin") == tuple(files)
    assert export_files(tmp_path / "v1.2")[0] == tmp_path / "v1.2.bin"
    summary = export_tokens(audio_dataset, f"{prefix}.bin", layout="megatron")
    assert summary.files == files and sorted((tmp_path / "lm").iterdir()) == sorted(files)
    docs = list(iter_documents(f"{prefix}.idx"))
    assert [d.size for d in docs] == [d.size for d in iter_documents(prefix)]
    assert sum(d.size for d in docs) == summary.tokens
    with pytest.raises(DatasetError, match="names no file"):
        export_files("")
    for folder in (f"{tmp_path}/", tmp_path):  # a folder is not a prefix: say what to give
        with pytest.raises(DatasetError, match=r"is a folder; give a path prefix inside it"):
            export_files(folder)


def token_dataset(dst: Path, codes: list[np.ndarray], shard_size: int = 2) -> Path:
    """A finished dataset of audio codes ``(2, time)`` (no tokenizer)."""
    spec = TokenSpec("audio", (16, 16), ("time",), frame_rate=10.0)
    return finished_token_dataset(dst, spec, codes, shard_size)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("layout", ["megatron", "bin"])
def test_export_without_ids_is_refused_not_an_empty_bin(tmp_path, layout, capsys) -> None:
    """Megatron-LM's IndexedDataset (and nanoGPT's np.memmap) cannot map a 0-byte .bin; the
    export reported success and wrote one."""
    empty = token_dataset(tmp_path / "empty", [])
    out = tmp_path / "lm" / "tokens"
    assert export_tokens_from_cli([str(empty), str(out), "--format", layout]) == 2
    err = one_error_line(capsys)
    assert f"no ids to export: {empty}: it has no rows" in err
    assert not (tmp_path / "lm").exists() or not list((tmp_path / "lm").iterdir())
    blank = token_dataset(tmp_path / "blank", [np.zeros((2, 0), np.uint8)] * 3)
    argv = [str(blank), str(out), "--format", layout, "--no-special"]
    assert export_tokens_from_cli(argv) == 2
    assert "no ids to export" in one_error_line(capsys)
    assert not list((tmp_path / "lm").iterdir())  # no .bin, and no temporary file
    # With special tokens the same empty rows are documents of [bos, eos].
    assert export_tokens_from_cli([str(blank), str(out), "--format", layout]) == 0
    assert [d.size for d in iter_documents(out)] == [2, 2, 2]


def test_export_removes_the_temporaries_a_killed_export_left(tmp_path) -> None:
    dataset = token_dataset(tmp_path / "ds", [np.ones((2, 3), np.uint8)])
    lm = tmp_path / "lm"
    lm.mkdir()
    assert temp_path(lm / "x.bin").name == f".x.bin.{os.getpid()}.tmp"  # the writer's names
    stale = [".x.bin.4242.tmp", ".x.idx.17.tmp", ".x.json.99.tmp"]
    others = [".y.bin.4242.tmp", ".x.bin.v2.bin.5.tmp", ".x.bin.tmp", "x.tmp", "notes.txt"]
    for name in stale + others:
        (lm / name).write_bytes(b"partial")
    export_tokens(dataset, lm / "x", layout="megatron")
    assert sorted(p.name for p in lm.iterdir()) == sorted(["x.bin", "x.idx", "x.json", *others])


def test_export_out_may_name_a_bin_next_to_the_dataset_folder(tmp_path, capsys) -> None:
    """`export-tokens tokens/libri tokens/libri.bin` was refused: 'tokens/libri.bin' is a
    folder (it was the prefix, tokens/libri, the dataset folder)."""
    dataset = token_dataset(tmp_path / "tokens" / "libri", [np.ones((2, 3), np.uint8)])
    files = sorted(p.name for p in dataset.iterdir())
    assert export_tokens_from_cli([str(dataset), str(tmp_path / "tokens" / "libri.bin")]) == 0
    names = sorted(p.name for p in (tmp_path / "tokens").iterdir())
    assert names == ["libri", "libri.bin", "libri.json"]
    assert sorted(p.name for p in dataset.iterdir()) == files
    assert [d.size for d in iter_documents(tmp_path / "tokens" / "libri.bin")] == [8]
    capsys.readouterr()
    # OUT itself a folder, or a folder where one of its files goes: refused, naming it.
    assert export_tokens_from_cli([str(dataset), str(tmp_path / "tokens")]) == 2
    assert "is a folder; give a path prefix inside it" in one_error_line(capsys)
    (tmp_path / "lm" / "x.json").mkdir(parents=True)
    assert export_tokens_from_cli([str(dataset), str(tmp_path / "lm" / "x")]) == 2
    assert f"{tmp_path / 'lm' / 'x.json'} is a folder" in one_error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["x.json"]


def test_export_names_a_missing_or_unreadable_shard(tmp_path, capsys) -> None:
    """A missing shard was reported as its bare path; a truncated one was a traceback and
    exit code 3."""
    dataset = token_dataset(tmp_path / "ds", [np.ones((2, 3), np.uint8)] * 3)
    shard = dataset / "shard-00001.parquet"
    good = shard.read_bytes()
    out = tmp_path / "lm" / "x"
    shard.unlink()
    assert export_tokens_from_cli([str(dataset), str(out)]) == 2
    assert f"{shard}: listed in manifest.json but missing" in one_error_line(capsys)
    with pytest.raises(DatasetError, match="listed in manifest.json but missing"):
        next(iter_rows(dataset))  # before the first row, not after the shards before it
    shard.write_bytes(good[: len(good) // 2])
    assert export_tokens_from_cli([str(dataset), str(out)]) == 2
    assert f"{shard}: not a readable Parquet file: " in one_error_line(capsys)
    assert not list(out.parent.iterdir())  # neither a .bin nor a temporary file
    shard.write_bytes(good)
    assert export_tokens_from_cli([str(dataset), str(out)]) == 0


def test_export_offset_past_int64_is_a_usage_error(tmp_path, capsys) -> None:
    dataset = token_dataset(tmp_path / "ds", [np.ones((2, 3), np.uint8)])
    offset = str(2**63 - 10)
    assert export_tokens_from_cli([str(dataset), str(tmp_path / "x"), "--offset", offset]) == 2
    assert f"--offset {offset}: too large" in one_error_line(capsys)
    with pytest.raises(DatasetError, match=r"--offset \d+: too large"):
        export_tokens(dataset, tmp_path / "x", offset=2**63 - 10)


# --------------------------------------------------------------------------- CLI


def test_encode_dataset_cli_exit_codes(tmp_path, audio_folder, audio_ckpt, capsys) -> None:
    good = tmp_path / "good"
    write_clips(good, 2, seed=5)
    common = ["-m", str(audio_ckpt), "--workers", "0", "--no-progress"]
    assert encode_dataset_from_cli([str(good), str(tmp_path / "o1"), *common]) == 0
    assert "encoded 2 of 2 item(s)" in capsys.readouterr().out
    code = encode_dataset_from_cli([str(audio_folder), str(tmp_path / "o2"), *common, "--json"])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 4 and summary["encoded"] == 10
    for argv in (
        [str(tmp_path / "missing"), str(tmp_path / "o3"), *common],
        [str(good), str(tmp_path / "o4")],  # no -m
        [str(good), str(tmp_path / "o5"), *common, "--batch-size", "0"],
        [str(good), str(tmp_path / "o6"), *common, "--engine", "spark"],
        [str(good), str(tmp_path / "o7"), "-m", "no_such_model"],
    ):
        assert encode_dataset_from_cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert encode_dataset_from_cli(["--help"]) == 0
    # Retrying the shards that recorded failures re-encodes them, with the same result.
    before = (tmp_path / "o2" / "manifest.json").read_bytes()
    summary = encode_dataset(audio_folder, tmp_path / "o2", str(audio_ckpt), retry_failed=True)
    assert summary.shards_written == 1 and summary.failed == 4
    assert (tmp_path / "o2" / "manifest.json").read_bytes() == before


# --------------------------------------------------------------------------- Ray


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Ray Data
def test_ray_engine_on_a_local_cluster_matches_the_local_engine(
    tmp_path, audio_folder, audio_dataset, audio_ckpt
) -> None:
    pytest.importorskip("ray.data")
    dst = tmp_path / "ray"
    summary = encode_dataset(
        audio_folder,
        dst,
        str(audio_ckpt),
        engine="ray",
        ray_num_cpus=2,
        devices="cpu",
        batch_size=3,
        shard_size=4,
    )
    assert summary.engine == "ray" and summary.failed == 4
    assert_same_dataset(audio_dataset, dst)


def test_one_job_per_output_folder(tmp_path) -> None:
    """A second job on the same folder in another process is refused while the first runs
    (a killed run's lock goes with its process: the SIGKILL test resumes right away)."""
    from anytok.datasets.files import folder_lock

    folder = tmp_path / "locked"
    folder.mkdir()
    code = (
        "import sys; from pathlib import Path; from anytok.datasets.files import folder_lock\n"
        "from anytok.datasets import DatasetError\n"
        "try:\n    with folder_lock(Path(sys.argv[1])): print('got')\n"
        "except DatasetError: print('refused')\n"
    )
    with folder_lock(folder):
        out = subprocess.run(
            [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120
        )
    assert out.stdout.strip() == "refused", out.stderr


def test_auto_devices_mean_every_visible_gpu(monkeypatch) -> None:
    from anytok.datasets.job import parse_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_devices("auto") == [torch.device("cpu")]
    with pytest.raises(DatasetError, match="CUDA is not available"):
        parse_devices("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert parse_devices("auto") == [torch.device("cuda", i) for i in range(3)]
    assert parse_devices("cuda:0, cuda:2") == [torch.device("cuda", 0), torch.device("cuda", 2)]
    with pytest.raises(DatasetError, match="cuda:3: this machine has 3 CUDA device"):
        parse_devices("cuda:3")


def test_a_codec_encoding_fewer_levels_by_default_keeps_its_items(tmp_path) -> None:
    """Mimi encodes 8 of its 32 levels by default: the plan and the per-item check used
    ``spec`` (every level), so every item failed with "codes ... do not fit the spec"."""
    model = anytok.create_model("mimi", tiny=True, n_q=4, n_levels=2)
    ckpt = save_checkpoint(model, tmp_path / "mimi")
    src = tmp_path / "src"
    write_clips(src, 3, seed=4)
    summary = encode_dataset(src, tmp_path / "out", str(ckpt), shard_size=4, workers=0)
    assert summary.ok and summary.encoded == 3
    for row, tokens in iter_rows(tmp_path / "out"):
        assert tokens.spec.codebook_sizes == model.default_spec.codebook_sizes
        path = src / row["id"]
        audio = load_for_model(model, path)
        with torch.no_grad():
            expected = model.eval().encode(audio[None]).codes[0, :, : tokens.codes.shape[-1]]
        assert torch.equal(tokens.codes[0], expected)


def test_a_folder_without_items_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "talk.webm").write_bytes(b"x")
    (tmp_path / "clips" / "cover.png").write_bytes(b"x")
    with pytest.raises(
        DatasetError,
        match=r"clips: no audio items found \(found 1 image file \(\.png\); 1 video file "
        r"\(\.webm\) instead: folders are searched by extension; a video container holding "
        r"audio is read when named directly or listed in a JSONL manifest\)",
    ):
        list_items(tmp_path / "clips", "audio")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no image items found$"):
        list_items(tmp_path / "empty", "image")


def test_segments_shorter_than_a_token_frame_are_refused(
    tmp_path, audio_folder, audio_ckpt
) -> None:
    with pytest.raises(
        DatasetError, match=r"--segment-seconds 1e-06 is shorter than one token frame"
    ):
        encode_dataset(
            audio_folder, tmp_path / "ds", str(audio_ckpt), segment="split", segment_seconds=1e-6
        )
    assert not (tmp_path / "ds").exists()  # refused before anything is written
