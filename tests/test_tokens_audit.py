"""Audit of the token side: LM id patterns against independent references, padded batches,
truncated generations, files on disk, and the LM exports read back by an independent
Megatron-LM ``MMapIndexedDataset`` reader. Synthetic token datasets (no tokenizer) keep it fast.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from torch.nn.utils.rnn import pad_sequence

from anytok.datasets import iter_rows
from anytok.datasets.export import (
    document_tokens,
    export_tokens,
    iter_documents,
    read_export_meta,
    read_megatron_index,
)
from anytok.datasets.plan import Plan
from anytok.datasets.shards import ItemResult, SegmentCodes, finalize, write_shard
from anytok.datasets.sources import Item
from anytok.tokens import PATTERNS, SAVE_EXTENSIONS, LMVocab, Tokens, TokenSpec

# --------------------------------------------------------------------------- helpers

AUDIO = TokenSpec("audio", (1024, 512, 7), ("time",), frame_rate=75.0, sample_rate=24000)
IMAGE = TokenSpec("image", (16, 4096), ("height", "width"), resolution=(64, 64))
VIDEO = TokenSpec("video", (1000, 64000), ("frame", "height", "width"), frame_rate=4.0, fps=24.0)
SEQUENCE = TokenSpec("image", (4096,), ("sequence",), resolution=(256, 256))  # TiTok-like 1D


def random_tokens(spec: TokenSpec, shape: tuple[int, ...], lengths: list[int] | None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths) if lengths is not None else 2
    codes = torch.stack(
        [torch.randint(0, k, (batch, *shape), generator=gen) for k in spec.codebook_sizes], 1
    )
    top = torch.tensor(spec.codebook_sizes).reshape(1, -1, *[1] * (len(shape) - 1)) - 1
    codes[:, :, 0] = top  # the largest code of every level
    return Tokens(codes, spec, None if lengths is None else torch.tensor(lengths))


CASES = [
    (AUDIO, (6,), [6, 2, 0]),
    (AUDIO, (5,), None),
    (IMAGE, (3, 4), [3, 1]),
    (VIDEO, (3, 2, 2), [3, 1, 2]),
    (SEQUENCE, (32,), [32, 8, 1]),
]


def musicgen_delay(codes: np.ndarray, special: int) -> np.ndarray:
    """audiocraft ``DelayedPatternProvider`` (delays 0..K-1) + ``build_pattern_sequence``,
    re-derived: ``(K, T)`` codes -> ``(K, 1 + T + K - 1)``; step 0 is all special, stream ``k``
    at step ``s`` holds time ``s - 1 - k`` when that is in ``[0, T)``, else ``special``."""
    k, t = codes.shape
    out = np.full((k, 1 + t + k - 1), special, dtype=np.int64)
    for s in range(1, out.shape[1]):
        for q in range(k):
            if 0 <= s - 1 - q < t:
                out[q, s] = codes[q, s - 1 - q]
    return out


# --------------------------------------------------------------------------- LM id patterns


@pytest.mark.parametrize(("spec", "shape", "lengths"), CASES)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("add_special", [True, False])
@pytest.mark.parametrize("offset", [0, 50257, 2**31 - 5])
def test_round_trip_layouts(spec, shape, lengths, pattern, add_special, offset) -> None:
    tokens = random_tokens(spec, shape, lengths)
    vocab = LMVocab.from_spec(spec, offset=offset)
    ids = tokens.to_lm_ids(vocab, pattern, add_special)
    back = Tokens.from_lm_ids(ids, spec, vocab, pattern, add_special=add_special, shape=shape)
    assert back.equal(tokens)
    assert back.codes.dtype == torch.int64
    assert torch.equal(back.valid_lengths, tokens.valid_lengths)


def test_delay_matches_musicgen() -> None:
    """Stream k shifted right by k; one special column first; the tail triangle special."""
    spec = AUDIO
    tokens = random_tokens(spec, (5,), None)
    vocab = LMVocab.from_spec(spec, offset=100)
    ids = tokens.to_lm_ids(vocab, "delay", add_special=True)
    no_special = tokens.to_lm_ids(vocab, "delay", add_special=False)
    offsets = torch.tensor(vocab.level_offsets)[:, None]
    for b in range(len(tokens)):
        ref = musicgen_delay((tokens.codes[b] + offsets).numpy(), vocab.pad)
        ours = ids[b].numpy()
        assert (ours[:, 0] == vocab.bos).all() and (ours[:, -1] == vocab.eos).all()
        assert np.array_equal(ours[:, 1:-1], ref[:, 1:])  # MusicGen's step 0 is our bos column
        # audiocraft with the initial special step omitted (empty_initial=-1)
        assert np.array_equal(no_special[b].numpy(), ref[:, 1:])


def test_flatten_accepts_a_batch_padded_to_one_width() -> None:
    """An LM's batched output: items of different lengths padded with ``pad``."""
    for spec, shape, lengths in CASES:
        tokens = random_tokens(spec, shape, lengths)
        vocab = LMVocab.from_spec(spec, offset=7)
        for add_special in (True, False):
            ids = tokens.to_lm_ids(vocab, "flatten", add_special)
            padded = pad_sequence(ids, batch_first=True, padding_value=vocab.pad)
            padded = torch.cat([padded, padded.new_full((len(ids), 3), vocab.pad)], dim=1)
            back = Tokens.from_lm_ids(
                padded, spec, vocab, "flatten", add_special=add_special, shape=shape
            )
            assert back.equal(tokens)
            listed = [torch.cat([s, s.new_full((2,), vocab.pad)]) for s in ids]
            assert Tokens.from_lm_ids(
                listed, spec, vocab, "flatten", add_special=add_special, shape=shape
            ).equal(tokens)
    # pads are only dropped at the end: inside an item they are still errors
    spec = AUDIO
    vocab = LMVocab.from_spec(spec)
    ids = random_tokens(spec, (2,), None).to_lm_ids(vocab, "flatten")[0].clone()
    ids[2] = vocab.pad
    with pytest.raises(ValueError, match=r"position 2: id \d+ \(the pad token\)"):
        Tokens.from_lm_ids([ids], spec, vocab, "flatten")


def test_generation_stopped_early_is_a_clear_error() -> None:
    spec = AUDIO
    vocab = LMVocab.from_spec(spec)
    tokens = random_tokens(spec, (4,), [4, 2])
    for pattern in ("delay", "parallel"):
        ids = tokens.to_lm_ids(vocab, pattern)
        cut = ids[:, :, :-2]  # item 0 ran out of room before its eos
        with pytest.raises(ValueError, match=r"item 0 has no eos token .* \(cut short"):
            Tokens.from_lm_ids(cut, spec, vocab, pattern)
    ids = tokens.to_lm_ids(vocab, "flatten")
    with pytest.raises(ValueError, match=r"item 0, position \d+: id .* where the eos token"):
        Tokens.from_lm_ids([ids[0][:-2], ids[1]], spec, vocab, "flatten")
    # an eos in stream 0 right after the last code, before the delayed tail: misplaced
    ids = tokens.to_lm_ids(vocab, "delay")[:1].clone()
    ids[0, 0, 5] = vocab.eos
    with pytest.raises(ValueError, match=r"item 0, stream \d, column \d+: id"):
        Tokens.from_lm_ids(ids, spec, vocab, "delay")


def test_out_of_vocab_ids_name_item_and_position() -> None:
    spec = IMAGE
    vocab = LMVocab.from_spec(spec, offset=10)
    tokens = random_tokens(spec, (2, 2), None)
    ids = tokens.to_lm_ids(vocab, "parallel").clone()
    ids[1, 1, 3] = vocab.size + 5
    with pytest.raises(ValueError, match=r"item 1, stream 1, column 3: id \d+ \(outside the voc"):
        Tokens.from_lm_ids(ids, spec, vocab, "parallel", shape=(2, 2))
    with pytest.raises(ValueError, match=r"width 6 gives 2 time steps, but shape\[0\] = 3"):
        Tokens.from_lm_ids(ids, spec, vocab, "parallel", shape=(3, 2))
    with pytest.raises(ValueError, match="width 5 does not fit the parallel pattern"):
        Tokens.from_lm_ids(ids[:, :, :-1], spec, vocab, "parallel", shape=(None, 2))


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("ext", SAVE_EXTENSIONS)
@pytest.mark.parametrize(
    ("size", "dtype"),
    [(256, np.uint8), (257, np.uint16), (2**16, np.uint16), (2**16 + 1, np.uint32),
     (2**32, np.uint32), (2**32 + 1, np.uint64)],
)  # fmt: skip
def test_dtype_on_disk_is_the_smallest_unsigned(tmp_path: Path, ext, size, dtype) -> None:
    spec = TokenSpec("video", (2, size), ("frame", "height", "width"), frame_rate=2.0)
    codes = torch.zeros(2, 2, 3, 1, 2, dtype=torch.long)
    codes[0, 1, 0, 0, 0] = size - 1
    codes[1, :, 2] = -5  # past item 1's length: ignored, stored as 0
    tokens = Tokens(codes, spec, torch.tensor([3, 2]))
    path = tokens.save(tmp_path / f"t{ext}")
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            stored = z["codes"]
    else:
        stored = safetensors.numpy.load_file(str(path))["codes"]
    assert stored.dtype == dtype and int(stored.max()) == size - 1 and int(stored.min()) == 0
    back = Tokens.load(path)
    assert back.equal(tokens) and back.spec == spec and back.lengths.tolist() == [3, 2]


def test_save_into_a_missing_folder_names_it(tmp_path: Path) -> None:
    tokens = random_tokens(AUDIO, (3,), None)
    for ext in SAVE_EXTENSIONS:
        with pytest.raises(FileNotFoundError, match=r"folder .*nowhere of .*nowhere/t\."):
            tokens.save(tmp_path / "nowhere" / f"t{ext}")


# --------------------------------------------------------------------------- exports


def make_dataset(dst: Path, spec: TokenSpec, codes: list[np.ndarray], shard_size: int = 2) -> Path:
    """A finished token dataset written by the real shard writer (no tokenizer involved)."""
    dst.mkdir(parents=True)
    plan = Plan(
        tokenizer="fake.tiny",
        tokenizer_fingerprint="0" * 64,
        token_spec=spec.to_json(),
        anytok_version="0",
        precision="fp32",
        segment={"policy": "full"},
        num_items=len(codes),
        items_digest="0" * 64,
        shard_size=shard_size,
        src="src",
    )
    items = [Item(id=f"i{k:03d}", source=f"i{k}", path=f"/x/i{k}") for k in range(len(codes))]
    for s in range(plan.num_shards):
        a, b = plan.shard_range(s)
        results = [
            ItemResult(i, [SegmentCodes(0, 0.0, None, np.asarray(codes[i]))]) for i in range(a, b)
        ]
        write_shard(dst, plan, s, items[a:b], results)
    finalize(dst, plan)
    return dst


MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                   6: np.float64, 7: np.float32, 8: np.uint16}  # fmt: skip


def read_megatron(prefix: Path) -> tuple[np.dtype, np.ndarray, list[np.ndarray]]:
    """Megatron-LM's ``_IndexReader`` + ``IndexedDataset.get``, re-derived field by field."""
    idx = prefix.with_name(prefix.name + ".idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    pos = 9
    (version,) = struct.unpack("<Q", idx[pos : pos + 8])
    (code,) = struct.unpack("<B", idx[pos + 8 : pos + 9])
    (sequences,) = struct.unpack("<Q", idx[pos + 9 : pos + 17])
    (documents,) = struct.unpack("<Q", idx[pos + 17 : pos + 25])
    pos += 25
    assert version == 1 and pos == 34
    lengths = np.frombuffer(idx, np.int32, sequences, pos)
    pointers = np.frombuffer(idx, np.int64, sequences, pos + lengths.nbytes)
    doc_idx = np.frombuffer(idx, np.int64, documents, pos + lengths.nbytes + pointers.nbytes)
    assert pos + lengths.nbytes + pointers.nbytes + doc_idx.nbytes == len(idx)
    dtype = np.dtype(MEGATRON_DTYPES[code])
    data = prefix.with_name(prefix.name + ".bin").read_bytes()
    docs = [np.frombuffer(data, dtype, int(n), int(p)) for n, p in zip(lengths, pointers)]
    return dtype, doc_idx, docs


def lm_document(tokens: Tokens, vocab: LMVocab, pattern: str, add_special: bool) -> np.ndarray:
    ids = tokens.to_lm_ids(vocab, pattern, add_special)
    return (ids[0] if pattern == "flatten" else ids[0].T.reshape(-1)).numpy()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[TokenSpec, Path]]:
    root = tmp_path_factory.mktemp("token_datasets")
    rng = np.random.default_rng(0)

    def codes(spec, *shape):
        return np.stack([rng.integers(0, k, shape) for k in spec.codebook_sizes]).astype(
            spec.storage_dtype
        )

    out = {
        "audio": (AUDIO, [codes(AUDIO, t) for t in (5, 0, 9)]),
        "image": (IMAGE, [codes(IMAGE, 3, 2) for _ in range(3)]),
        "video": (VIDEO, [codes(VIDEO, f, 2, 3) for f in (3, 1, 2)]),
        "sequence": (SEQUENCE, [codes(SEQUENCE, n) for n in (32, 8, 128, 1)]),
    }
    return {k: (spec, make_dataset(root / k, spec, c)) for k, (spec, c) in out.items()}


@pytest.mark.parametrize("which", ["audio", "image", "video", "sequence"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_megatron_export_read_by_an_independent_reader(tmp_path, datasets, which, pattern):
    spec, dataset = datasets[which]
    rows = [tokens for _, tokens in iter_rows(dataset)]
    # offsets chosen so the vocabulary needs each of Megatron's integer types
    code_ids = LMVocab.from_spec(spec).num_code_ids
    for offset, special in ((0, True), (2**16 - code_ids - 3, False), (2**16, True), (2**31, True)):
        vocab = LMVocab.from_spec(spec, offset=offset)
        out = tmp_path / f"lm{offset}"
        export_tokens(
            dataset, out, layout="megatron", pattern=pattern, offset=offset, add_special=special
        )
        meta = read_export_meta(out)
        dtype, doc_idx, docs = read_megatron(out)
        top = vocab.size - 1
        want = next(d for d in (np.uint8, np.uint16, np.int32, np.int64) if top <= np.iinfo(d).max)
        assert dtype == np.dtype(want) == np.dtype(meta["dtype"])
        assert np.array_equal(doc_idx, np.arange(len(rows) + 1))
        assert len(docs) == len(rows) == meta["documents"]
        for doc, tokens in zip(docs, rows, strict=True):
            assert np.array_equal(
                doc.astype(np.int64), lm_document(tokens, vocab, pattern, special)
            )
            assert document_tokens(doc, meta).equal(tokens)
        assert [d.tolist() for d in iter_documents(out)] == [d.tolist() for d in docs]


def test_flat_bin_boundaries_and_little_endian(tmp_path, datasets) -> None:
    spec, dataset = datasets["video"]
    rows = [tokens for _, tokens in iter_rows(dataset)]
    for pattern in PATTERNS:
        out = tmp_path / pattern
        summary = export_tokens(dataset, out, pattern=pattern, offset=600)
        assert summary.dtype == "uint32"  # 600 + 1000 + 64000 + 3 ids > 2**16
        vocab = LMVocab.from_spec(spec, offset=600)
        data = np.frombuffer((tmp_path / f"{pattern}.bin").read_bytes(), "<u4")
        want = np.concatenate([lm_document(t, vocab, pattern, True) for t in rows])
        assert np.array_equal(data, want)
        docs = list(iter_documents(out))
        assert [d.size for d in docs] == [lm_document(t, vocab, pattern, True).size for t in rows]


def test_bin_export_over_a_megatron_one_removes_the_stale_index(tmp_path, datasets) -> None:
    _, dataset = datasets["audio"]
    out = tmp_path / "lm"
    export_tokens(dataset, out, layout="megatron")
    assert (tmp_path / "lm.idx").is_file()
    export_tokens(dataset, out, layout="bin", pattern="delay", offset=1000)
    assert not (tmp_path / "lm.idx").exists()  # it described the old .bin
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.bin", "lm.json"]


def test_corrupt_exports_name_the_file(tmp_path, datasets) -> None:
    _, dataset = datasets["audio"]
    out = tmp_path / "lm"
    export_tokens(dataset, out, layout="megatron")
    idx, binf = tmp_path / "lm.idx", tmp_path / "lm.bin"
    good_idx, good_bin = idx.read_bytes(), binf.read_bytes()

    idx.write_bytes(good_idx[:-8])
    with pytest.raises(ValueError, match=r"lm\.idx: .* bytes, but a Megatron index of 3"):
        list(iter_documents(out))
    idx.write_bytes(good_idx[:20])
    with pytest.raises(ValueError, match=r"lm\.idx: truncated"):
        read_megatron_index(idx)
    idx.write_bytes(good_idx[:17] + bytes([9]) + good_idx[18:])
    with pytest.raises(ValueError, match=r"lm\.idx: unknown dtype code 9"):
        read_megatron_index(idx)
    idx.write_bytes(good_idx)
    binf.write_bytes(good_bin[:-2])
    with pytest.raises(ValueError, match=r"lm\.bin: holds \d+ ids, but .*lm\.json says"):
        list(iter_documents(out))

    export_tokens(dataset, out, layout="bin")
    binf.write_bytes(binf.read_bytes()[1:] + b"\x00")  # documents no longer start with bos
    with pytest.raises(ValueError, match=r"lm\.bin: found \d+ document\(s\)"):
        list(iter_documents(out))


def test_shard_writer_refuses_codes_outside_the_codebook(tmp_path) -> None:
    spec = TokenSpec("audio", (1000, 7), ("time",), frame_rate=50.0)
    good = np.array([[999, 0], [6, 1]], dtype=np.uint16)
    bad_level1 = np.array([[1, 2], [7, 0]], dtype=np.uint16)  # 7 fits uint16, not the codebook
    bad_levels = np.zeros((3, 2), dtype=np.uint16)
    dst = make_dataset(tmp_path / "ds", spec, [good, bad_level1, bad_levels], shard_size=3)
    rows = list(iter_rows(dst))
    assert [row["id"] for row, _ in rows] == ["i000"]
    assert np.array_equal(rows[0][1].codes[0].numpy(), good)
    errors = (dst / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 2
    assert "code 7 at level 1 is outside the codebook [0, 7)" in errors[0]
    assert "do not fit the spec" in errors[1]


def test_encoder_refuses_codes_outside_the_codebook_before_the_storage_cast() -> None:
    """A negative code would wrap into the unsigned storage dtype (-1 -> 65535) before the
    shard writer could see it; the encoder reports such an item instead, and keeps the rest."""
    import anytok
    from anytok.datasets.encoder import encode_media

    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    encode = model.encode

    def broken_encode(media, lengths=None):  # a tokenizer bug in the first item
        tokens = encode(media, lengths)
        tokens.codes[0, 0, 0] = -1
        return tokens

    model.encode = broken_encode
    rate = model.spec.sample_rate
    items = [torch.zeros(1, rate // 10), torch.zeros(1, rate // 10)]
    first, second = encode_media(model, torch.device("cpu"), items)
    assert isinstance(first, str) and "code -1 at level 0 is outside the codebook" in first
    assert isinstance(second, np.ndarray) and second.dtype == model.spec.storage_dtype
