"""Audit of dataset jobs and training loaders: names with braces or not in UTF-8, unreadable
tars, DST that is a file, non-finite segment lengths, Ctrl-C, and the resumable sampler past
its share."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import anytok
from anytok.data import ResumableSampler
from anytok.datasets import DatasetError, encode_dataset, encode_dataset_from_cli, iter_rows
from anytok.datasets.plan import items_digest
from anytok.datasets.sources import SegmentPolicy, list_items, load_item, source_kind
from anytok.pipeline import input_format

SAMPLE_RATE = 24000


def _wav(path: Path, samples: int = 2400, seed: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = 0.3 * np.random.default_rng(seed).standard_normal(samples).astype(np.float32)
    sf.write(path, wave, SAMPLE_RATE)
    return path.read_bytes()


def test_folders_and_manifests_with_braces_are_not_tar_patterns(tmp_path: Path) -> None:
    folder = tmp_path / "songs {live}"
    _wav(folder / "a.wav")
    assert source_kind(folder) == "folder"
    assert [i.id for i in list_items(folder, "audio")] == ["a.wav"]
    manifest = tmp_path / "train{v2}.jsonl"
    manifest.write_text(json.dumps({"path": "songs {live}/a.wav", "text": "hi"}) + "\n")
    assert source_kind(manifest) == "manifest"
    (item,) = list_items(manifest, "audio")
    assert item.error is None and json.loads(item.metadata) == {"text": "hi"}
    # An existing tar whose name holds braces is that tar, not a pattern.
    tar_path = tmp_path / "take{1}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder / "a.wav", arcname="a.wav")
    assert [i.id for i in list_items(tar_path, "audio")] == ["take{1}/a"]
    # Patterns still expand.
    assert source_kind(tmp_path / "data-{000..001}.tar") == "tar"


def test_names_that_are_not_utf8_are_listed_escaped_and_still_encoded(
    tmp_path: Path, audio_ckpt: Path
) -> None:
    src = tmp_path / "src"
    _wav(src / "ok.wav", seed=1)
    raw = os.fsdecode(b"caf\xe9.wav")  # a Latin-1 name, as old archives leave them
    data = _wav(src / "tmp.wav", seed=2)
    os.rename(os.fsencode(src / "tmp.wav"), os.fsencode(src / raw))
    items = list_items(src, "audio")
    assert [i.id for i in items] == ["caf\\xe9.wav", "ok.wav"]
    assert len(items_digest(items)) == 64  # used to raise UnicodeEncodeError

    dst = tmp_path / "out"
    summary = encode_dataset(src, dst, str(audio_ckpt), workers=0)
    assert summary.ok and summary.encoded == 2, summary.failures
    assert sorted(row["id"] for row, _ in iter_rows(dst)) == ["caf\\xe9.wav", "ok.wav"]

    # The same inside a tar (tarfile decodes such names with surrogateescape).
    tar_path = tmp_path / "web.tar"
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(raw)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (item,) = list_items(tar_path, "audio")
    assert item.id == "web/caf\\xe9" and item.source == "web.tar::caf\\xe9.wav"
    assert len(items_digest([item])) == 64
    model = anytok.load(str(audio_ckpt))
    assert load_item(input_format(model), item).shape[-1] == 2400


def test_unreadable_tar_is_one_failed_item_with_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"this is no archive at all" * 40)
    (item,) = list_items(bad, "audio")
    assert item.error and "not a readable tar archive" in item.error
    assert "\n" not in item.error


def test_output_folder_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _wav(src / "a.wav")
    dst = tmp_path / "out"
    dst.write_text("a file, not a folder")
    with pytest.raises(DatasetError, match="not a folder"):
        encode_dataset(src, dst, "seanet_fsq_24khz")
    code = encode_dataset_from_cli([str(src), str(dst), "-m", "seanet_fsq_24khz"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a folder" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("seconds", [math.inf, math.nan, 0.0, -1.0])
def test_segment_seconds_must_be_finite_and_positive(seconds: float) -> None:
    with pytest.raises(DatasetError, match="segment-seconds"):
        SegmentPolicy("split", seconds)


def test_ctrl_c_is_one_line_and_exit_code_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import anytok.datasets.job as job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "encode_dataset", interrupted)
    code = encode_dataset_from_cli([str(tmp_path), str(tmp_path / "out"), "-m", "x"])
    err = capsys.readouterr().err.strip()
    assert code == 130
    assert "interrupted" in err and "resume" in err and "Traceback" not in err


@pytest.mark.parametrize("size", [1, 7, 10])
def test_sampler_covers_every_item_for_any_world_size(size: int) -> None:
    dataset = list(range(size))
    for world in (1, 2, 3, 4):
        shares = []
        for rank in range(world):
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=3)
            sampler.set_position(epoch=2, start=0)
            shares.append([i for i, _ in sampler])
        flat = [i for share in shares for i in share]
        assert sorted(set(flat)) == dataset  # complete
        assert len({len(share) for share in shares}) == 1  # same batches on every rank
        assert len(flat) - size == (-size) % world  # only the padding repeats


def test_sampler_start_past_its_share_is_an_empty_epoch() -> None:
    # A position saved with fewer ranks can exceed this rank's share of the epoch.
    sampler = ResumableSampler(list(range(10)), num_replicas=2, rank=0)
    sampler.set_position(epoch=0, start=8)
    assert len(sampler) == 0 and list(sampler) == []  # list() used to raise (len < 0)
    with pytest.raises(ValueError, match="start"):
        sampler.set_position(epoch=0, start=-1)


def test_manifest_names_and_metadata_not_in_utf8_or_json_are_escaped(tmp_path: Path) -> None:
    """A manifest written by ``json.dumps`` of ``os.listdir`` names (lone surrogates) and a
    NaN duration: the run used to die in the plan digest (UnicodeEncodeError); the metadata
    column must stay strict JSON (NaN becomes null)."""
    src = tmp_path / "media"
    raw = os.fsdecode(b"caf\xe9.wav")
    _wav(src / "tmp.wav")
    os.rename(os.fsencode(src / "tmp.wav"), os.fsencode(src / raw))
    manifest = tmp_path / "train.jsonl"
    line = {"path": f"media/{raw}", "speaker": os.fsdecode(b"Jos\xe9"), "duration": math.nan}
    manifest.write_text(json.dumps(line) + "\n", encoding="utf-8", errors="surrogateescape")
    (item,) = list_items(manifest, "audio")
    assert item.id == item.source == "media/caf\\xe9.wav"
    assert json.loads(item.metadata) == {"duration": None, "speaker": "Jos\\xe9"}
    assert "NaN" not in item.metadata
    assert len(items_digest([item])) == 64


def test_same_size_edit_is_noticed_on_resume(tmp_path: Path) -> None:
    """Re-rendering a file at the same size changes its modification time, so the plan
    digest differs (sizes alone let a resume mix old and new content)."""
    src = tmp_path / "src"
    _wav(src / "a.wav", seed=0)
    before = items_digest(list_items(src, "audio"))
    size = (src / "a.wav").stat().st_size
    _wav(src / "a.wav", seed=5)  # other audio, same length and size
    stat = (src / "a.wav").stat()
    os.utime(src / "a.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert (src / "a.wav").stat().st_size == size
    assert items_digest(list_items(src, "audio")) != before


def test_tar_hard_link_members_are_samples(tmp_path: Path) -> None:
    """GNU tar stores a repeated inode as a hard-link member: it is a sample with its
    target's bytes (it was silently missing from the items and the errors file)."""
    data = _wav(tmp_path / "a.wav")
    tar_path = tmp_path / "web.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "a.wav", arcname="s/a.wav")
        link = tarfile.TarInfo("s/g.wav")
        link.type, link.linkname = tarfile.LNKTYPE, "s/a.wav"
        tar.addfile(link)
    items = list_items(tar_path, "audio")
    assert [i.id for i in items] == ["web/s/a", "web/s/g"]
    model = anytok.create_model("seanet_fsq_24khz", tiny=True)
    from anytok.datasets.sources import read_member

    assert read_member(items[1]) == data
    assert load_item(input_format(model), items[1]).shape[-1] == 2400


def test_crash_is_exit_code_3_not_skipped_items(tmp_path: Path, monkeypatch, capsys) -> None:
    """An unexpected error (a killed loader worker) is not "some items were skipped" (1):
    exit 3 with the traceback and a one-line summary that says the same command resumes."""
    import anytok.datasets.job as job

    def crashed(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed.")

    monkeypatch.setattr(job, "encode_dataset", crashed)
    code = encode_dataset_from_cli([str(tmp_path), str(tmp_path / "out"), "-m", "x"])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" in err and "failed" in err and "resume" in err


def test_retry_removes_the_finished_summary_until_it_is_rewritten(
    tmp_path: Path, audio_ckpt: Path, monkeypatch
) -> None:
    """A --retry-failed run that is killed must not leave the old manifest.json and
    errors.jsonl beside rewritten shards, looking finished."""
    src = tmp_path / "src"
    _wav(src / "a.wav")
    (src / "b.wav").write_bytes(b"not audio")
    dst = tmp_path / "out"
    first = encode_dataset(src, dst, str(audio_ckpt), workers=0, shard_size=1)
    assert first.failed == 1 and (dst / "manifest.json").exists()

    import anytok.datasets.local as local

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "run_local", killed)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(src, dst, str(audio_ckpt), workers=0, shard_size=1, retry_failed=True)
    assert not (dst / "manifest.json").exists() and not (dst / "errors.jsonl").exists()
    monkeypatch.undo()
    again = encode_dataset(src, dst, str(audio_ckpt), workers=0, shard_size=1, retry_failed=True)
    assert again.failed == 1 and (dst / "manifest.json").exists()
