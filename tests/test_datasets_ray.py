"""The Ray engine's refusals: tokenizers its workers cannot load again, and workers that
load other weights than the driver's."""

from __future__ import annotations

from pathlib import Path

import pytest

import anytok
from anytok.checkpoint import save_checkpoint
from anytok.data.synthetic import make_dataset
from anytok.datasets import DatasetError, encode_dataset


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "src"
    make_dataset("audio", folder, 3, seconds=0.3)
    return folder


def test_an_in_memory_tokenizer_is_refused_before_ray_starts(src: Path, tmp_path: Path) -> None:
    """Workers load the model's name again: ``seanet_fsq_24khz.untrained`` is the full-size
    model, not this tiny one. Every worker died with a traceback after the cluster had
    started ("every node must see the same checkpoint"); now one line says what to do, and
    it needs no Ray (nothing starts)."""
    model = anytok.create_model("seanet_fsq_24khz", tiny=True)
    with pytest.raises(DatasetError) as err:
        encode_dataset(src, tmp_path / "dst", model, engine="ray", progress=False)
    message = str(err.value)
    assert "--engine ray: the tokenizer passed in differs from what" in message
    assert "'seanet_fsq_24khz.untrained' loads" in message
    assert "save_checkpoint(model, folder)" in message
    assert not (tmp_path / "dst").exists()


def test_a_saved_tokenizer_passes_the_check_and_encodes_like_the_local_engine(
    src: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray.data")
    model = anytok.create_model("seanet_fsq_24khz", tiny=True)
    loaded = anytok.load(save_checkpoint(model, tmp_path / "ckpt"))
    ray_run = encode_dataset(
        src, tmp_path / "ray", loaded, engine="ray", ray_num_cpus=2, progress=False
    )
    local = encode_dataset(src, tmp_path / "local", loaded, progress=False)
    assert ray_run.failed == local.failed == 0 and ray_run.tokens == local.tokens > 0


def test_workers_with_other_weights_end_the_run_in_one_line(
    src: Path, tmp_path: Path, monkeypatch
) -> None:
    """A node with another checkpoint at the same path: Ray's ActorDiedError traceback
    before, a DatasetError naming the tokenizer now (emulated by a driver fingerprint that
    no worker computes)."""
    pytest.importorskip("ray.data")
    from anytok.datasets import job

    folder = save_checkpoint(anytok.create_model("seanet_fsq_24khz", tiny=True), tmp_path / "c")
    monkeypatch.setattr(job, "model_fingerprint", lambda model: "0" * 64)
    with pytest.raises(DatasetError, match="differ from the driver's; every node must see"):
        encode_dataset(src, tmp_path / "dst", folder, engine="ray", ray_num_cpus=2, progress=False)


def test_split_items_stream_through_ray_as_through_the_local_engine(tmp_path: Path) -> None:
    """Rows of a split item are yielded as they load, the count on the item's final row:
    the driver reassembles items of many rows, and a broken file fails as a whole."""
    pytest.importorskip("ray.data")
    from anytok.datasets import iter_rows

    src = tmp_path / "src"
    good = make_dataset("audio", src, 3, seconds=0.45)[0]
    (src / "broken.wav").write_bytes(good.read_bytes()[:2000])  # header promises more
    folder = save_checkpoint(anytok.create_model("seanet_fsq_24khz", tiny=True), tmp_path / "c")
    runs = {}
    for engine in ("ray", "local"):
        runs[engine] = encode_dataset(
            src,
            tmp_path / engine,
            folder,
            engine=engine,
            segment="split",
            segment_seconds=0.1,
            batch_size=3,
            progress=False,
            **({"ray_num_cpus": 2} if engine == "ray" else {}),
        )
    assert runs["ray"].failed == runs["local"].failed == 1
    assert runs["ray"].tokens == runs["local"].tokens > 0
    rows = {
        engine: [(r["id"], r["segment"], t.codes.tolist()) for r, t in iter_rows(tmp_path / engine)]
        for engine in runs
    }
    assert rows["ray"] == rows["local"] and len(rows["ray"]) == 15
