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
from token_datasets import finished_token_dataset
from torch.nn.utils.rnn import pad_sequence

from anytok.datasets import DatasetError, iter_rows
from anytok.datasets.export import (
    document_tokens,
    export_tokens,
    iter_documents,
    read_export_meta,
    read_megatron_index,
)
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
    return {k: (spec, finished_token_dataset(root / k, spec, c)) for k, (spec, c) in out.items()}


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
    dst = finished_token_dataset(
        tmp_path / "ds", spec, [good, bad_level1, bad_levels], shard_size=3
    )
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


# ------------------------------------------------- the public API of tokenizers and Tokens


def _tiny(name: str):
    import anytok

    return anytok.create_model(name, tiny=True).eval()


def test_decode_refuses_another_tokenizers_tokens() -> None:
    """Tokens carry their spec: another tokenizer's (another rate, codebook or modality)
    are an error naming the fields that differ, not media decoded from the wrong codes."""
    encodec, mimi = _tiny("encodec_24khz"), _tiny("mimi")
    vqgan, cnn_fsq = _tiny("vqgan"), _tiny("cnn_fsq_256")
    with torch.inference_mode():
        audio_tokens = encodec.encode(torch.rand(1, 1, 2400) - 0.5)
        image_tokens = vqgan.encode(torch.rand(1, 3, 32, 32) - 0.5)
        with pytest.raises(ValueError, match=r"Mimi.decode: .*frame_rate 3000.0 vs 1500.0"):
            mimi.decode(audio_tokens)
        with pytest.raises(ValueError, match=r"Mimi.decode_long: .*frame_rate"):
            mimi.decode_long(audio_tokens)
        with pytest.raises(ValueError, match=r"codebook_sizes \(64,\) vs \(125,\)") as err:
            cnn_fsq.decode(image_tokens)
        assert "vqgan" in str(err.value) and "cnn_fsq_256" in str(err.value)
        with pytest.raises(ValueError, match=r"decode_tiled: .*codebook_sizes"):
            cnn_fsq.decode_tiled(image_tokens)
        with pytest.raises(ValueError, match=r"modality 'audio' vs 'image'"):
            cnn_fsq.decode(audio_tokens)
        # A residual codec decodes a prefix of its levels, never more levels than it has.
        extra = Tokens(
            torch.zeros(1, 5, 3, dtype=torch.long),
            TokenSpec("audio", (16,) * 5, ("time",), frame_rate=3000.0),
        )
        with pytest.raises(ValueError, match=r"codebook_sizes .* vs a leading prefix of"):
            encodec.decode(extra)


def test_decode_takes_its_own_tokens_in_every_form(tmp_path: Path) -> None:
    """What the spec check must let through: files (named by another path), fewer residual
    levels, hierarchical's coarse layer, adaptive-length prefixes, tokens rebuilt from LM ids,
    hand-written specs that leave the rates out, bare code tensors."""
    import dataclasses

    dac, cnn_fsq = _tiny("dac_44khz"), _tiny("cnn_fsq_256")
    with torch.inference_mode():
        tokens = dac.encode(torch.rand(2, 1, 2000) - 0.5, lengths=[2000, 900])
        loaded = Tokens.load(tokens.save(tmp_path / "a.safetensors"))
        moved = Tokens(loaded.codes, dataclasses.replace(loaded.spec, name="/elsewhere/ckpt"))
        assert torch.equal(dac.decode(loaded), dac.decode(tokens))
        assert dac.decode(moved).shape == dac.decode(tokens).shape
        assert dac.decode(dac.encode(torch.rand(1, 1, 2000) - 0.5, n_levels=1)).ndim == 3
        bare = TokenSpec("audio", dac.spec.codebook_sizes, ("time",))
        assert dac.decode(Tokens(tokens.codes, bare)).shape[0] == 2
        image = cnn_fsq.encode(torch.rand(2, 3, 32, 32) - 0.5)
        vocab = LMVocab.from_spec(image.spec)
        ids = image.to_lm_ids(vocab, "parallel")
        rebuilt = Tokens.from_lm_ids(
            ids, image.spec, vocab, "parallel", shape=(None, *image.positions_shape[1:])
        )
        assert torch.equal(cnn_fsq.decode(rebuilt), cnn_fsq.decode(image))
        assert cnn_fsq.decode(image.codes).shape == (2, 3, 32, 32)
        hier = _tiny("hierarchical")
        layers = hier.encode_layers(torch.rand(1, 3, 5, 32, 32) - 0.5)
        assert hier.decode(layers["coarse"], layers="coarse").shape[2] == 5
        flextok = _tiny("flextok_d12_d12")
        prefix = flextok.encode(torch.rand(1, 3, 32, 32) - 0.5, num_tokens=2)
        assert flextok.decode(prefix, steps=1).shape == (1, 3, 32, 32)


def test_unsigned_integer_lengths_encode() -> None:
    """uint16 / 32 / 64 lengths (a manifest's) encode as int64 ones do; torch has no
    comparison kernels for them, so they are converted before the range check."""
    audio, video = _tiny("seanet_fsq_24khz"), _tiny("cnn3d_fsq_4x8x8")
    x, v = torch.rand(2, 1, 800) - 0.5, torch.rand(2, 3, 5, 16, 16) - 0.5
    with torch.inference_mode():
        want_audio = audio.encode(x, [800, 400]).lengths.tolist()
        want_video = video.encode(v, [5, 3]).lengths.tolist()
        for dtype in (np.uint16, np.uint32, np.uint64):
            assert audio.encode(x, np.array([800, 400], dtype=dtype)).lengths.tolist() == want_audio
            assert video.encode(v, np.array([5, 3], dtype=dtype)).lengths.tolist() == want_video
        lengths = torch.tensor([800, 400], dtype=torch.uint32)
        assert audio.encode(x, lengths).lengths.tolist() == want_audio
        with pytest.raises(ValueError, match=r"lengths must be in \[0, 800\]"):
            audio.encode(x, np.array([801, 400], dtype=np.uint32))


def test_tokens_compare_with_eq() -> None:
    """``a == b`` answers :meth:`Tokens.equal` (the dataclass comparison raised on tensors)."""
    spec = TokenSpec("audio", (4, 8), ("time",), frame_rate=10.0)
    codes = torch.tensor([[[0, 1, 2, 3], [7, 6, 5, 4]]])
    a, b = Tokens(codes, spec, torch.tensor([2])), Tokens(codes.clone(), spec, torch.tensor([2]))
    b.codes[0, :, 3] = 0  # past the valid length: no information
    c = Tokens(codes, spec)
    assert a == b and a in [b] and [a] == [b]
    assert a != c and [a] != [c]
    assert a != "tokens" and a != codes
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


def test_unbatched_audio_codes_are_a_clear_error() -> None:
    """Codes ``(levels, time)`` of one item reached a convolution as a batch."""
    for name in ("encodec_24khz", "seanet_fsq_24khz"):
        model = _tiny(name)
        with torch.inference_mode():
            codes = model.encode(torch.rand(1, 1, 4 * model.hop_length) - 0.5).codes
            with pytest.raises(ValueError, match=r"expected codes \(batch, levels, time\)"):
                model.decode(codes[0])


def test_encodec_bandwidth_must_be_finite_and_positive() -> None:
    model = _tiny("encodec_24khz")
    x = torch.rand(1, 1, 800) - 0.5
    with torch.inference_mode():
        for bad in (float("nan"), float("inf"), -float("inf"), 0.0):
            with pytest.raises(ValueError, match=rf"bandwidth {bad} kbps is outside \(0, "):
                model.encode(x, bandwidth=bad)
        for bad in ("6", True, [6]):
            with pytest.raises(TypeError, match="bandwidth must be a number"):
                model.encode(x, bandwidth=bad)


def test_integer_counts_refuse_floats_and_bools() -> None:
    """``n_levels=2.9`` was 2 levels and ``True`` one; ``num_tokens=3.7`` three tokens."""
    dac, flextok = _tiny("dac_44khz"), _tiny("flextok_d12_d12")
    x, image = torch.rand(1, 1, 2000) - 0.5, torch.rand(1, 3, 32, 32) - 0.5
    with torch.inference_mode():
        assert dac.encode(x, n_levels=np.int64(2)).codes.shape[1] == 2
        for bad in (2.9, 2.0, True):
            with pytest.raises(TypeError, match=r"DAC.encode: n_levels must be an integer"):
                dac.encode(x, n_levels=bad)
        assert flextok.encode(image, num_tokens=torch.tensor(3)).codes.shape[-1] == 3
        for bad in (3.7, False):
            with pytest.raises(TypeError, match=r"FlexTok.encode: num_tokens must be an integer"):
                flextok.encode(image, num_tokens=bad)


def test_numpy_media_with_negative_strides_encode() -> None:
    """``img[:, ::-1]`` (BGR -> RGB) and reversed audio: torch.from_numpy refused them."""
    image_model, audio_model = _tiny("cnn_fsq_256"), _tiny("seanet_fsq_24khz")
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    wav = rng.uniform(-0.5, 0.5, (1, 1, 4000)).astype(np.float32)
    with torch.inference_mode():
        for model, array in ((image_model, img[:, ::-1]), (audio_model, wav[..., ::-1])):
            want = model.encode(torch.from_numpy(array.copy()))
            assert model.encode(array) == want


def test_tokens_files_expand_the_home_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    tokens = random_tokens(AUDIO, (5,), [5, 2])
    for ext in SAVE_EXTENSIONS:
        written = tokens.save(f"~/tokens{ext}")
        assert written == tmp_path / f"tokens{ext}" and written.is_file()
        assert Tokens.load(f"~/tokens{ext}") == tokens


def test_hierarchical_rates_count_the_coarse_code_once(tmp_path: Path) -> None:
    """The coarse level is stored repeated over 2x2 blocks of the fine grid; every rate
    (spec, Tokens, ``anytok info``'s bits per position) counts it once, as the bench's
    :meth:`informative_codes` does."""
    import math

    from anytok.cli import _spec_details

    model = _tiny("hierarchical")
    with torch.inference_mode():
        tokens = model.encode(torch.rand(2, 3, 5, 32, 32) - 0.5, lengths=[5, 1])
    coarse, fine = model.spec.codebook_sizes
    assert tokens.positions_shape == (3, 16, 16) and tokens.lengths.tolist() == [3, 1]
    per_step = {
        "tokens": 8 * 8 + 16 * 16,
        "bits": 8 * 8 * math.log2(coarse) + 16 * 16 * math.log2(fine),
    }
    seconds = 1 / tokens.spec.frame_rate
    assert tokens.tokens_per_item.tolist() == [3 * per_step["tokens"], per_step["tokens"]]
    assert tokens.bits_per_item.tolist() == pytest.approx([3 * per_step["bits"], per_step["bits"]])
    assert tokens.tokens_per_second == pytest.approx(per_step["tokens"] / seconds)
    assert tokens.bits_per_second == pytest.approx(per_step["bits"] / seconds)
    assert model.spec.bits_per_second((16, 16)) == pytest.approx(per_step["bits"] / seconds)
    informative = model.informative_codes(tokens.codes[0])
    assert sum(c.numel() for c in informative) == tokens.tokens_per_item[0]
    bits = math.log2(coarse) / 4 + math.log2(fine)
    assert _spec_details(model)["bits_per_position"] == pytest.approx(bits)
    # The field travels in files; files without it (older ones) still load.
    assert Tokens.load(tokens.save(tmp_path / "h.npz")) == tokens
    old = {k: v for k, v in tokens.spec.to_dict().items() if k != "code_repeats"}
    assert TokenSpec.from_dict(old).code_repeats is None
    assert "code_repeats" not in AUDIO.to_dict()


def test_strict_modes_agree_on_ids_to_lm_ids_wrote() -> None:
    """docs/tokens.md: same codes and lengths; strict parallel / delay take the time axis from
    the width, strict=False from the longest item unless ``shape`` gives it."""
    spec = TokenSpec("audio", (4, 8), ("time",), frame_rate=10.0)
    codes = torch.tensor([[[0, 1, 2, 3], [7, 6, 5, 4]], [[3, 2, 1, 0], [1, 1, 1, 1]]])
    tokens = Tokens(codes, spec, torch.tensor([2, 3]))
    vocab = LMVocab.from_spec(spec)
    for pattern in PATTERNS:
        ids = tokens.to_lm_ids(vocab, pattern)
        strict = Tokens.from_lm_ids(ids, spec, vocab, pattern)
        loose = Tokens.from_lm_ids(ids, spec, vocab, pattern, strict=False)
        assert torch.equal(strict.valid_lengths, loose.valid_lengths)
        assert loose.positions_shape == (3,)
        assert strict.positions_shape == ((3,) if pattern == "flatten" else (4,))
        shape = (strict.positions_shape[0],)
        assert Tokens.from_lm_ids(ids, spec, vocab, pattern, shape=shape, strict=False) == strict


def test_lenient_flatten_errors_name_the_callers_positions() -> None:
    # Without a leading bos the lenient decoder puts one back: positions in its errors
    # still count in the ids the caller passed.
    spec = TokenSpec("audio", (4, 8), ("time",))
    vocab = LMVocab.from_spec(spec)  # level 0: [0, 4), level 1: [4, 12), bos 12, eos 13
    for ids, item, position in (
        ([torch.tensor([0, 4, 1, 99, 13])], 0, 3),
        ([torch.tensor([12, 0, 4, 1, 99, 13])], 0, 4),
        (torch.tensor([[12, 0, 4, 13, 14], [0, 4, 7, 5, 13]]), 1, 2),
    ):
        with pytest.raises(ValueError, match=f"item {item}, position {position}: id"):
            Tokens.from_lm_ids(ids, spec, vocab, "flatten", strict=False)


@pytest.mark.parametrize("pattern", ["parallel", "delay"])
def test_lenient_streams_of_nothing_generated_are_empty_items(pattern: str) -> None:
    spec = TokenSpec("audio", (4, 8), ("time",))
    vocab = LMVocab.from_spec(spec)
    ids = Tokens(torch.tensor([[[1, 2], [3, 4]]]), spec).to_lm_ids(
        vocab, pattern, add_special=False
    )
    empty = ids[:, :, :0]
    tokens = Tokens.from_lm_ids(empty, spec, vocab, pattern, add_special=False, strict=False)
    assert tokens.codes.shape == (1, 2, 0)
    padded = Tokens.from_lm_ids(
        empty, spec, vocab, pattern, add_special=False, strict=False, shape=(2,)
    )
    assert padded.codes.shape == (1, 2, 2) and padded.lengths.tolist() == [0]
    with pytest.raises(ValueError):  # strict decoding still refuses a stream of no width
        Tokens.from_lm_ids(empty, spec, vocab, pattern, add_special=False, shape=(2,))


def test_tokens_with_lengths_move_to_meta(tmp_path: Path) -> None:
    spec = TokenSpec("audio", (4, 8), ("time",))
    tokens = Tokens(torch.zeros(2, 2, 5, dtype=torch.long), spec, torch.tensor([5, 3]))
    moved = tokens.to("meta")
    assert moved.codes.is_meta and moved.lengths.is_meta and moved.lengths.shape == (2,)
    path = tokens.save(tmp_path / "t.npz")
    assert Tokens.load(path, device="meta").lengths.is_meta
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 outside \[0, 5\]"):
        Tokens(torch.zeros(2, 2, 5, dtype=torch.long), spec, torch.tensor([5, 9]))


def test_export_of_codebooks_past_int64_says_what_fits(tmp_path: Path) -> None:
    spec = TokenSpec("audio", (2**62, 2**62), ("time",))
    rows = [np.array([[1, 2], [3, 4]], dtype=np.uint64)]
    dataset = finished_token_dataset(tmp_path / "ds", spec, rows)
    with pytest.raises(DatasetError, match=r"give ids past the int64 range .*--shared-levels"):
        export_tokens(dataset, tmp_path / "out", offset=0)
    assert export_tokens(dataset, tmp_path / "out2", shared_levels=True).vocab_size == 2**62 + 3
    small = finished_token_dataset(
        tmp_path / "small",
        TokenSpec("audio", (8,), ("time",)),
        [np.array([[1, 2]], dtype=np.uint64)],
    )
    with pytest.raises(
        DatasetError, match=r"--offset 9223372036854775800: too large .*give a smaller offset"
    ):
        export_tokens(small, tmp_path / "out3", offset=2**63 - 8)
