"""Tokens / TokenSpec / LMVocab: LM id round trips (property tests), pinned formats, safe I/O."""

from __future__ import annotations

import ast
import inspect
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anytok.tokens as tokens_module
from anytok.tokens import PATTERNS, SAVE_EXTENSIONS, LMVocab, Tokens, TokenSpec

# ----------------------------------------------------------------------------- strategies

CODEBOOK_SIZES = st.one_of(
    st.integers(2, 16),
    st.integers(2, 2**20),
    st.integers(2**20, 2**32),
    st.sampled_from([2, 255, 256, 257, 2**16, 2**16 + 1, 2**32 - 1, 2**32]),
)
LAYOUTS = {
    1: [("audio", ("time",)), ("image", ("sequence",))],
    2: [("image", ("height", "width"))],
    3: [("video", ("frame", "height", "width"))],
}


@st.composite
def specs(draw: st.DrawFn) -> TokenSpec:
    levels = draw(st.integers(1, 8))
    sizes = draw(st.lists(CODEBOOK_SIZES, min_size=levels, max_size=levels))
    modality, layout = draw(st.sampled_from(LAYOUTS[draw(st.integers(1, 3))]))
    return TokenSpec(
        modality=modality,
        codebook_sizes=tuple(sizes),
        layout=layout,
        frame_rate=None if modality == "image" else draw(st.sampled_from([12.5, 50.0, 75.0])),
        sample_rate=24000 if modality == "audio" else None,
        channels=draw(st.sampled_from([1, 2])) if modality == "audio" else None,
        resolution=None if modality == "audio" else (256, 256),
        fps=24.0 if modality == "video" else None,
        name=draw(st.sampled_from(["", "test.tiny"])),
    )


@st.composite
def token_batches(draw: st.DrawFn) -> Tokens:
    """Random codes in range (extremes included), random lengths; garbage after each end."""
    spec = draw(specs())
    batch, time = draw(st.integers(0, 3)), draw(st.integers(0, 5))
    rest = draw(
        st.lists(st.integers(1, 3), min_size=len(spec.layout) - 1, max_size=len(spec.layout) - 1)
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    per_level = []
    for size in spec.codebook_sizes:
        c = torch.randint(0, size, (batch, time, *rest), generator=gen)
        if c.numel():
            c.view(-1)[0] = size - 1  # the largest code of every level
        per_level.append(c)
    codes = torch.stack(per_level, dim=1)
    lengths = None
    if draw(st.booleans()):
        lengths = torch.tensor(
            draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch)), dtype=torch.long
        )
    tokens = Tokens(codes, spec, lengths)
    if lengths is not None and draw(st.booleans()):
        tokens.codes[~tokens.valid_mask().unsqueeze(1).expand_as(codes)] = -1  # must be ignored
    return tokens


def assert_same_tokens(back: Tokens, orig: Tokens, from_ids: bool = True) -> None:
    """Equal at valid positions, 0 after each end, same lengths.

    LM ids cannot tell "lengths all full" from "no lengths": from ids, lengths come back None
    iff every item is full; from a file, lengths come back iff they were saved.
    """
    assert back.spec == orig.spec
    assert back.codes.dtype == torch.int64
    assert back.codes.shape == orig.codes.shape
    assert torch.equal(back.valid_lengths, orig.valid_lengths)
    if from_ids:
        assert (back.lengths is None) == bool((orig.valid_lengths == orig.codes.shape[2]).all())
    else:
        assert (back.lengths is None) == (orig.lengths is None)
    mask = orig.valid_mask().unsqueeze(1).expand_as(orig.codes)
    assert torch.equal(back.codes[mask], orig.codes[mask])
    assert bool((back.codes[~mask] == 0).all())
    assert back.equal(orig)


def tiny() -> tuple[TokenSpec, Tokens, LMVocab]:
    """2 levels (codebooks 4 and 3), 3 time steps, offset 10: level ids 10.. and 14.., bos 17."""
    spec = TokenSpec("audio", (4, 3), ("time",), frame_rate=50.0, sample_rate=16000, channels=1)
    tokens = Tokens(torch.tensor([[[0, 1, 2], [2, 0, 1]]]), spec)
    return spec, tokens, LMVocab.from_spec(spec, offset=10)


# --------------------------------------------------------------------- LM id round trips


@settings(max_examples=200, deadline=None)
@given(
    tokens=token_batches(),
    pattern=st.sampled_from(PATTERNS),
    add_special=st.booleans(),
    shared=st.booleans(),
    offset=st.one_of(st.sampled_from([0, 1, 32000, 2**40]), st.integers(0, 10**6)),
)
def test_lm_ids_round_trip(
    tokens: Tokens, pattern: str, add_special: bool, shared: bool, offset: int
) -> None:
    spec = tokens.spec
    vocab = LMVocab.from_spec(spec, offset=offset, shared_levels=shared)
    ids = tokens.to_lm_ids(vocab, pattern, add_special=add_special)
    extra = 2 * add_special
    if pattern == "flatten":
        assert isinstance(ids, list) and len(ids) == tokens.batch_size
        assert [len(s) for s in ids] == (tokens.tokens_per_item + extra).tolist()
        flat = torch.cat([s.reshape(-1) for s in ids]) if ids else torch.zeros(0, dtype=torch.long)
    else:
        n = int(np.prod(tokens.positions_shape))
        width = n + extra + (spec.num_levels - 1 if pattern == "delay" else 0)
        assert ids.shape == (tokens.batch_size, spec.num_levels, width)
        flat = ids.reshape(-1)
    assert flat.dtype == torch.int64
    assert bool(((flat >= offset) & (flat < vocab.size)).all())
    back = Tokens.from_lm_ids(
        ids, spec, vocab, pattern, add_special=add_special, shape=tokens.positions_shape
    )
    assert_same_tokens(back, tokens)


@settings(max_examples=60, deadline=None)
@given(tokens=token_batches(), pattern=st.sampled_from(PATTERNS), add_special=st.booleans())
def test_time_axis_inferred(tokens: Tokens, pattern: str, add_special: bool) -> None:
    """shape[0] may be None; flatten infers the longest item, parallel/delay the width."""
    vocab = LMVocab.from_spec(tokens.spec)
    ids = tokens.to_lm_ids(vocab, pattern, add_special=add_special)
    shape = (None, *tokens.positions_shape[1:])
    back = Tokens.from_lm_ids(
        ids, tokens.spec, vocab, pattern, add_special=add_special, shape=shape
    )
    if pattern == "flatten":
        longest = int(tokens.valid_lengths.max()) if tokens.batch_size else 0
        assert back.codes.shape[2] == longest
        tokens = Tokens(tokens.codes[:, :, :longest], tokens.spec, tokens.valid_lengths)
    assert_same_tokens(back, tokens)
    if len(tokens.spec.layout) == 1:  # shape=None is fine for a 1-axis layout
        again = Tokens.from_lm_ids(ids, tokens.spec, vocab, pattern, add_special=add_special)
        assert again.equal(back)


def test_flatten_pinned() -> None:
    spec, tokens, vocab = tiny()
    assert vocab.level_offsets == (10, 14)
    assert (vocab.bos, vocab.eos, vocab.pad, vocab.size) == (17, 18, 19, 20)
    # position-major, level 0 first: (0, 2) (1, 0) (2, 1) -> 10 16 | 11 14 | 12 15
    (ids,) = tokens.to_lm_ids(vocab, "flatten")
    assert ids.tolist() == [17, 10, 16, 11, 14, 12, 15, 18]
    (ids,) = tokens.to_lm_ids(vocab, "flatten", add_special=False)
    assert ids.tolist() == [10, 16, 11, 14, 12, 15]
    shared = LMVocab.from_spec(spec, shared_levels=True)
    assert shared.level_offsets == (0, 0)
    assert (shared.bos, shared.eos, shared.pad, shared.size) == (4, 5, 6, 7)
    assert tokens.to_lm_ids(shared, "flatten")[0].tolist() == [4, 0, 2, 1, 0, 2, 1, 5]


def test_flatten_pinned_multi_axis_and_lengths() -> None:
    # video (frame, height, width) = (2, 1, 2), one level: row-major, whole frames per length
    spec = TokenSpec("video", (8,), ("frame", "height", "width"), frame_rate=4.0)
    codes = torch.tensor([[[[[1, 2]], [[3, 4]]]], [[[[5, 6]], [[7, 0]]]]])
    tokens = Tokens(codes, spec, lengths=torch.tensor([2, 1]))
    vocab = LMVocab.from_spec(spec, offset=100)  # codes 100..107, bos 108, eos 109, pad 110
    ids = tokens.to_lm_ids(vocab, "flatten")
    assert [s.tolist() for s in ids] == [[108, 101, 102, 103, 104, 109], [108, 105, 106, 109]]
    back = Tokens.from_lm_ids(ids, spec, vocab, "flatten", shape=(2, 1, 2))
    assert back.lengths.tolist() == [2, 1]
    assert back.codes.tolist() == [[[[[1, 2]], [[3, 4]]]], [[[[5, 6]], [[0, 0]]]]]


def test_items_of_a_batch_are_cut_to_their_lengths() -> None:
    spec = TokenSpec("video", (8,), ("frame", "height", "width"), frame_rate=4.0)
    codes = torch.tensor([[[[[1, 2]], [[3, 4]]]], [[[[5, 6]], [[7, 0]]]]])
    tokens = Tokens(codes, spec, lengths=torch.tensor([2, 1]))
    assert len(tokens) == 2
    first, second = tokens.unbind()
    assert first.codes.tolist() == [[[[[1, 2]], [[3, 4]]]]] and first.lengths is None
    assert second.codes.tolist() == [[[[[5, 6]]]]] and second.spec == spec
    assert tokens[-1].codes.tolist() == second.codes.tolist()
    assert [t.codes.shape[2] for t in Tokens(codes, spec).unbind()] == [2, 2]  # no lengths
    with pytest.raises(IndexError, match=r"Tokens\[2\]: the batch holds 2 item"):
        tokens[2]
    with pytest.raises(TypeError, match="index with an int"):
        tokens[0:1]


def test_parallel_and_delay_pinned() -> None:
    spec, tokens, vocab = tiny()
    assert tokens.to_lm_ids(vocab, "parallel").tolist() == [
        [[17, 10, 11, 12, 18], [17, 16, 14, 15, 18]]
    ]
    assert tokens.to_lm_ids(vocab, "parallel", add_special=False).tolist() == [
        [[10, 11, 12], [16, 14, 15]]
    ]
    # level k shifted right by k, empty cells pad (19), bos / eos columns
    assert tokens.to_lm_ids(vocab, "delay").tolist() == [
        [[17, 10, 11, 12, 19, 18], [17, 19, 16, 14, 15, 18]]
    ]
    assert tokens.to_lm_ids(vocab, "delay", add_special=False).tolist() == [
        [[10, 11, 12, 19], [19, 16, 14, 15]]
    ]
    # a second item one step long: eos right after its last delayed code, then pad
    two = Tokens(
        torch.tensor([[[0, 1, 2], [2, 0, 1]], [[3, 3, 3], [1, 1, 1]]]), spec, torch.tensor([3, 1])
    )
    assert two.to_lm_ids(vocab, "delay")[1].tolist() == [
        [17, 13, 19, 18, 19, 19],
        [17, 19, 15, 18, 19, 19],
    ]
    assert two.to_lm_ids(vocab, "parallel")[1].tolist() == [
        [17, 13, 18, 19, 19],
        [17, 15, 18, 19, 19],
    ]
    assert [s.tolist() for s in two.to_lm_ids(vocab, "flatten")][1] == [17, 13, 15, 18]


def test_zero_length_items() -> None:
    spec, _, vocab = tiny()
    tokens = Tokens(torch.zeros(2, 2, 3, dtype=torch.long), spec, torch.tensor([0, 0]))
    assert [s.tolist() for s in tokens.to_lm_ids(vocab, "flatten")] == [[17, 18], [17, 18]]
    assert tokens.to_lm_ids(vocab, "delay")[0].tolist() == [
        [17, 19, 18, 19, 19, 19],
        [17, 19, 18, 19, 19, 19],
    ]
    for pattern in PATTERNS:
        ids = tokens.to_lm_ids(vocab, pattern)
        assert Tokens.from_lm_ids(ids, spec, vocab, pattern, shape=(3,)).lengths.tolist() == [0, 0]


def test_flatten_accepts_2d_tensor() -> None:
    spec, tokens, vocab = tiny()
    ids = torch.stack(tokens.to_lm_ids(vocab, "flatten"))
    assert Tokens.from_lm_ids(ids, spec, vocab, "flatten").equal(tokens)


# ------------------------------------------------------- generated ids (strict=False)


@settings(max_examples=150, deadline=None)
@given(
    tokens=token_batches(),
    pattern=st.sampled_from(PATTERNS),
    add_special=st.booleans(),
    data=st.data(),
)
def test_generated_ids_decode_leniently(
    tokens: Tokens, pattern: str, add_special: bool, data: st.DataObject
) -> None:
    """What an LM generates: cut short anywhere (no eos, an incomplete last step), junk
    after eos, flatten without bos. strict=False keeps every whole time step before the end;
    on what to_lm_ids wrote it is the exact inverse."""
    spec = tokens.spec
    vocab = LMVocab.from_spec(spec, offset=5)
    rest = tokens.positions_shape[1:]
    spatial, levels = int(np.prod(rest)), spec.num_levels
    ids = tokens.to_lm_ids(vocab, pattern, add_special=add_special)
    exact = Tokens.from_lm_ids(
        ids, spec, vocab, pattern, add_special=add_special, shape=tokens.positions_shape
    )
    lenient = Tokens.from_lm_ids(
        ids,
        spec,
        vocab,
        pattern,
        add_special=add_special,
        shape=tokens.positions_shape,
        strict=False,
    )
    assert lenient.equal(exact)
    junk = st.integers(0, vocab.size - 1)
    steps: list[int] = []
    if pattern == "flatten":
        generated = []
        for seq in ids:
            codes = seq[1:-1] if add_special else seq
            cut = data.draw(st.integers(0, codes.numel()))
            kept = codes[: codes.numel() - cut].tolist()
            if add_special and data.draw(st.booleans()):
                kept = [vocab.bos, *kept]
            if add_special and cut == 0:  # it ended: eos, then whatever the LM went on with
                kept += [vocab.eos, *data.draw(st.lists(junk, max_size=4))]
            generated.append(torch.tensor(kept, dtype=torch.long))
            steps.append((codes.numel() - cut) // (levels * spatial))
    else:
        start, extra = int(add_special), levels - 1 if pattern == "delay" else 0
        width = ids.shape[2]
        w = data.draw(st.integers(max(start, 1), width)) if width else 0
        generated = ids[:, :, :w].clone()
        room = max(w - start - extra, 0)
        room -= room % spatial
        if add_special and w:
            for item in range(tokens.batch_size):
                eos_col = start + int(tokens.valid_lengths[item]) * spatial + extra
                if eos_col + 1 < w:  # junk after this item's eos column
                    fill = data.draw(st.lists(junk, min_size=1, max_size=1))[0]
                    generated[item, :, eos_col + 1 :] = fill
        steps = [min(int(n) * spatial, room) // spatial for n in tokens.valid_lengths]
        if not w:
            return  # nothing generated: the strict width error stands
    back = Tokens.from_lm_ids(
        generated,
        spec,
        vocab,
        pattern,
        add_special=add_special,
        shape=(None, *rest),
        strict=False,
    )
    time = max(steps, default=0)
    expected = Tokens(tokens.codes[:, :, :time], spec, torch.tensor(steps, dtype=torch.long))
    assert_same_tokens(back, expected)


def test_generated_ids_pinned() -> None:
    spec, tokens, vocab = tiny()  # level ids 10.. and 14.., bos 17, eos 18, pad 19
    first = Tokens(tokens.codes[:, :, :1], spec)
    # cut inside step 1 (its level-1 id missing), no eos
    cut = Tokens.from_lm_ids([torch.tensor([17, 10, 16, 11])], spec, vocab, strict=False)
    assert cut.equal(first)
    # no bos, eos then junk
    junk = torch.tensor([10, 16, 11, 14, 18, 10, 17, 99])
    two = Tokens.from_lm_ids([junk], spec, vocab, strict=False)
    assert two.codes.tolist() == [[[0, 1], [2, 0]]] and two.lengths is None
    with pytest.raises(ValueError, match=r"position 0: id 10 .* where the bos token \(17\)"):
        Tokens.from_lm_ids([junk], spec, vocab)  # strict: the same ids are an error
    # a batch: one item ended, one cut short; lengths recovered
    batch = Tokens.from_lm_ids(
        [torch.tensor([17, 10, 16, 18]), torch.tensor([17, 10, 16, 11, 14, 12])],
        spec,
        vocab,
        strict=False,
    )
    assert batch.lengths.tolist() == [1, 2]
    # delay cut after two columns of codes: positions whose every level arrived
    delay = tokens.to_lm_ids(vocab, "delay")  # [[17, 10, 11, 12, 19, 18], [17, 19, 16, 14, 15, 18]]
    for width, steps in ((6, 3), (5, 3), (4, 2), (3, 1), (2, 0), (1, 0)):
        back = Tokens.from_lm_ids(delay[:, :, :width], spec, vocab, "delay", strict=False)
        assert back.codes.shape[2] == steps, width
        assert torch.equal(back.codes, tokens.codes[:, :, :steps])
    # a parallel item cut short next to one that ended
    parallel = torch.tensor(
        [[[17, 10, 11, 12], [17, 16, 14, 15]], [[17, 13, 18, 10], [17, 15, 18, 12]]]
    )
    back = Tokens.from_lm_ids(parallel, spec, vocab, "parallel", strict=False)
    assert back.codes.shape == (2, 2, 3) and back.lengths.tolist() == [3, 1]
    assert torch.equal(back.codes[0], tokens.codes[0]) and back.codes[1, :, 0].tolist() == [3, 1]
    # invalid ids before the end are still errors, named as in strict mode
    with pytest.raises(ValueError, match=r"item 0, position 2: id 17 \(the bos token\)"):
        Tokens.from_lm_ids([torch.tensor([17, 10, 17, 11, 14])], spec, vocab, strict=False)
    bad = delay.clone()
    bad[0, 1, 0] = 10
    with pytest.raises(ValueError, match=r"stream 1, column 0: id 10 .* where the bos token"):
        Tokens.from_lm_ids(bad[:, :, :4], spec, vocab, "delay", strict=False)
    bad = delay.clone()
    bad[0, 1, 2] = 19  # pad where a level-1 code belongs, before the cut
    with pytest.raises(ValueError, match=r"stream 1, column 2: id 19 \(the pad token\)"):
        Tokens.from_lm_ids(bad[:, :, :4], spec, vocab, "delay", strict=False)
    with pytest.raises(ValueError, match=r"item 0 has 3 time steps, more than shape\[0\] = 2"):
        Tokens.from_lm_ids(delay, spec, vocab, "delay", shape=(2,), strict=False)
    padded_out = Tokens.from_lm_ids(delay[:, :, :4], spec, vocab, "delay", shape=(3,), strict=False)
    assert padded_out.codes.shape == (1, 2, 3) and padded_out.lengths.tolist() == [2]


# ---------------------------------------------------------------- inverse-mapping errors


def test_flatten_errors_name_position_and_id() -> None:
    spec, _, vocab = tiny()
    with pytest.raises(
        ValueError,
        match=r"item 0, position 2: id 17 \(the bos token\) where a level-1 code id in \[14, 17\)",
    ):
        Tokens.from_lm_ids([torch.tensor([17, 10, 17, 11, 14, 18])], spec, vocab)
    with pytest.raises(
        ValueError, match=r"item 0, position 1: id 14 \(level 1 code 0\) where a level-0 code"
    ):
        Tokens.from_lm_ids([torch.tensor([17, 14, 14, 18])], spec, vocab)
    with pytest.raises(
        ValueError, match=r"item 0, position 3: id 99 \(outside the vocabulary \[0, 20\)\)"
    ):
        Tokens.from_lm_ids([torch.tensor([17, 10, 14, 99])], spec, vocab)
    with pytest.raises(ValueError, match=r"item 0, position 0: id 10 .* the bos token \(17\)"):
        Tokens.from_lm_ids([torch.tensor([10, 14, 18])], spec, vocab)
    with pytest.raises(ValueError, match=r"item 1 has 3 code ids, not a whole number"):
        Tokens.from_lm_ids(
            [torch.tensor([17, 18]), torch.tensor([17, 10, 14, 11, 18])], spec, vocab
        )
    with pytest.raises(ValueError, match=r"item 0 has 2 time steps, more than shape\[0\] = 1"):
        Tokens.from_lm_ids([torch.tensor([17, 10, 14, 11, 14, 18])], spec, vocab, shape=(1,))
    with pytest.raises(ValueError, match=r"below the code offset 10"):
        Tokens.from_lm_ids([torch.tensor([3, 14])], spec, vocab, add_special=False)
    with pytest.raises(TypeError, match="integer tensor"):
        Tokens.from_lm_ids([torch.tensor([17.0, 18.0])], spec, vocab)


def test_stream_errors_name_position_and_id() -> None:
    spec, tokens, vocab = tiny()
    delay = tokens.to_lm_ids(vocab, "delay")
    bad = delay.clone()
    bad[0, 0, 4] = 10  # a code where the delay pattern needs pad
    with pytest.raises(
        ValueError,
        match=r"item 0, stream 0, column 4: id 10 \(level 0 code 0\) where the pad token \(19\)",
    ):
        Tokens.from_lm_ids(bad, spec, vocab, "delay")
    bad = delay.clone()
    bad[0, 1, 2] = 19  # pad where a level-1 code belongs
    with pytest.raises(
        ValueError, match=r"stream 1, column 2: id 19 \(the pad token\) where a level-1 code id"
    ):
        Tokens.from_lm_ids(bad, spec, vocab, "delay")
    bad = delay.clone()
    bad[0, 0, 5] = 19
    with pytest.raises(ValueError, match=r"item 0 has no eos token \(18\) in stream 0"):
        Tokens.from_lm_ids(bad, spec, vocab, "delay")
    bad = delay.clone()
    bad[0, 1, 5] = 19  # eos missing from stream 1 only
    with pytest.raises(
        ValueError, match=r"stream 1, column 5: id 19 \(the pad token\) where the eos token \(18\)"
    ):
        Tokens.from_lm_ids(bad, spec, vocab, "delay")
    bad = tokens.to_lm_ids(vocab, "parallel").clone()
    bad[0, 1, 0] = 10
    with pytest.raises(
        ValueError, match=r"stream 1, column 0: id 10 .* where the bos token \(17\)"
    ):
        Tokens.from_lm_ids(bad, spec, vocab, "parallel")
    with pytest.raises(ValueError, match=r"width 1 does not fit the delay pattern"):
        Tokens.from_lm_ids(delay[:, :, :1], spec, vocab, "delay")
    with pytest.raises(ValueError, match=r"must be \(batch, 2, width\)"):
        Tokens.from_lm_ids(delay[:, :1], spec, vocab, "delay")
    with pytest.raises(ValueError, match=r"gives 3 time steps, but shape\[0\] = 4"):
        Tokens.from_lm_ids(delay, spec, vocab, "delay", shape=(4,))


def test_mapping_argument_errors() -> None:
    spec, tokens, vocab = tiny()
    with pytest.raises(ValueError, match="pattern must be one of"):
        tokens.to_lm_ids(vocab, "zigzag")
    other = LMVocab((4, 4))
    with pytest.raises(
        ValueError, match=r"vocab codebook sizes \(4, 4\) do not match the spec's \(4, 3\)"
    ):
        tokens.to_lm_ids(other)
    with pytest.raises(ValueError, match="do not match"):
        Tokens.from_lm_ids([torch.tensor([8, 9])], spec, other)
    image = TokenSpec("image", (16,), ("height", "width"))
    with pytest.raises(ValueError, match=r"has several axes; pass shape=\(time, width\)"):
        Tokens.from_lm_ids(
            torch.zeros(1, 1, 4, dtype=torch.long), image, LMVocab.from_spec(image), "parallel"
        )
    out_of_range = Tokens(torch.tensor([[[0, 4, 1], [0, 0, 0]]]), spec)
    with pytest.raises(
        ValueError,
        match=r"code 4 at item 0, level 0, position \(1,\) is outside the codebook \[0, 4\)",
    ):
        out_of_range.to_lm_ids(vocab)


# ------------------------------------------------------------------------------ LMVocab


def test_vocab_ids() -> None:
    _, _, vocab = tiny()
    assert vocab.code_to_id(1, 2) == 16
    assert vocab.id_to_code(1, 16) == 2
    assert vocab.code_to_id(0, torch.tensor([0, 3])).tolist() == [10, 13]
    assert vocab.id_to_code(0, torch.tensor([10, 13])).tolist() == [0, 3]
    assert vocab.describe(18) == "the eos token"
    with pytest.raises(ValueError, match=r"code 3 outside \[0, 3\) at level 1"):
        vocab.code_to_id(1, 3)
    with pytest.raises(ValueError, match=r"id 13 is level 0 code 3, not a level-1 code"):
        vocab.id_to_code(1, 13)
    with pytest.raises(ValueError, match="level 2 outside"):
        vocab.code_to_id(2, 0)
    assert LMVocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    with pytest.raises(ValueError, match="do not fit in int64"):
        LMVocab((2**62, 2**62))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        LMVocab((4,), offset=-1)
    assert LMVocab((2**32,) * 8, offset=2**40).size == 2**40 + 8 * 2**32 + 3


# ---------------------------------------------------------------------- spec and tokens


@settings(max_examples=50, deadline=None)
@given(spec=specs())
def test_spec_dict_round_trip(spec: TokenSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))
    back = TokenSpec.from_dict(data)
    assert back == spec
    assert isinstance(back.codebook_sizes, tuple) and isinstance(back.layout, tuple)
    assert back.resolution is None or isinstance(back.resolution, tuple)
    assert TokenSpec.from_json(spec.to_json()) == spec


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="modality must be one of"):
        TokenSpec("text", (4,), ("time",))
    with pytest.raises(ValueError, match=r"codebook_sizes\[1\] = 1"):
        TokenSpec("audio", (4, 1), ("time",))
    with pytest.raises(ValueError, match="codebook_sizes is empty"):
        TokenSpec("audio", (), ("time",))
    with pytest.raises(TypeError, match="must be an integer"):
        TokenSpec("audio", (4.0,), ("time",))
    with pytest.raises(ValueError, match="layout is empty"):
        TokenSpec("audio", (4,), ())
    with pytest.raises(TypeError, match="sequence of axis names"):
        TokenSpec("audio", (4,), "time")
    with pytest.raises(ValueError, match="distinct"):
        TokenSpec("image", (4,), ("h", "h"))
    with pytest.raises(ValueError, match="frame_rate must be a finite positive"):
        TokenSpec("audio", (4,), ("time",), frame_rate=0)
    with pytest.raises(ValueError, match=r"resolution must be \(height, width\)"):
        TokenSpec("image", (4,), ("h", "w"), resolution=(1, 2, 3))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        TokenSpec.from_dict(
            {"modality": "audio", "codebook_sizes": [4], "layout": ["time"], "bogus": 1}
        )
    spec = TokenSpec("audio", [1024, np.int64(1024)], ["time"], sample_rate=16000.0)
    assert spec.codebook_sizes == (1024, 1024) and spec.layout == ("time",)  # normalised
    assert spec.sample_rate == 16000 and isinstance(spec.sample_rate, int)
    with pytest.raises(TypeError, match="sample_rate must be an integer"):
        TokenSpec("audio", (4,), ("time",), sample_rate=16000.5)
    assert hash(spec) == hash(TokenSpec("audio", (1024, 1024), ("time",), sample_rate=16000))


def test_tokens_validation() -> None:
    spec, _, _ = tiny()
    with pytest.raises(
        ValueError, match=r"must have 3 dims \(batch, levels, time\).*got shape \(2, 3\)"
    ):
        Tokens(torch.zeros(2, 3, dtype=torch.long), spec)
    with pytest.raises(ValueError, match=r"codes.shape\[1\] = 3 but the spec has 2 levels"):
        Tokens(torch.zeros(1, 3, 5, dtype=torch.long), spec)
    with pytest.raises(TypeError, match="integer tensor"):
        Tokens(torch.zeros(1, 2, 5), spec)
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(1,\)"):
        Tokens(torch.zeros(1, 2, 5, dtype=torch.long), spec, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 outside \[0, 5\]"):
        Tokens(torch.zeros(2, 2, 5, dtype=torch.long), spec, torch.tensor([1, 6]))
    tokens = Tokens(
        torch.zeros(1, 2, 5, dtype=torch.int32), spec, torch.tensor([3], dtype=torch.int32)
    )
    assert tokens.codes.dtype == torch.int64 and tokens.lengths.dtype == torch.int64


def test_rates_and_storage() -> None:
    audio = TokenSpec("audio", (1024,) * 8, ("time",), frame_rate=75.0)
    assert audio.tokens_per_second() == 600.0
    assert audio.bits_per_second() == 6000.0
    video = TokenSpec("video", (2**18,), ("frame", "height", "width"), frame_rate=4.0)
    tokens = Tokens(torch.zeros(2, 1, 3, 16, 16, dtype=torch.long), video, torch.tensor([3, 1]))
    assert tokens.tokens_per_second == 1024.0 == video.tokens_per_second((16, 16))
    assert tokens.bits_per_second == 1024.0 * 18
    assert tokens.tokens_per_item.tolist() == [768, 256]
    assert tokens.bits_per_item.tolist() == [768.0 * 18, 256.0 * 18]
    with pytest.raises(
        ValueError, match=r"spatial_shape must give the sizes of the layout axes after 'frame'"
    ):
        video.tokens_per_second()
    image = Tokens(
        torch.zeros(1, 2, 4, 4, dtype=torch.long), TokenSpec("image", (16, 16), ("height", "width"))
    )
    assert image.tokens_per_item.tolist() == [32]
    with pytest.raises(ValueError, match="no frame_rate"):
        _ = image.tokens_per_second


@pytest.mark.parametrize(
    ("size", "dtype"),
    [
        (2, np.uint8),
        (256, np.uint8),
        (257, np.uint16),
        (2**16, np.uint16),
        (2**16 + 1, np.uint32),
        (2**32, np.uint32),
        (2**32 + 1, np.uint64),
        (2**63, np.uint64),
    ],
)
def test_storage_dtype(size: int, dtype: type) -> None:
    assert TokenSpec("audio", (2, size), ("time",)).storage_dtype == np.dtype(dtype)


# -------------------------------------------------------------------------- save / load


def stored_codes_dtype(path: Path) -> np.dtype:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z["codes"].dtype
    with safetensors.safe_open(str(path), framework="np") as f:
        return f.get_tensor("codes").dtype


@settings(max_examples=40, deadline=None)
@given(tokens=token_batches(), ext=st.sampled_from(SAVE_EXTENSIONS))
def test_save_load_round_trip(tokens: Tokens, ext: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = tokens.save(Path(tmp) / f"shard{ext}")
        assert sorted(p.name for p in Path(tmp).iterdir()) == [f"shard{ext}"]  # no temp file left
        assert stored_codes_dtype(path) == tokens.spec.storage_dtype
        back = Tokens.load(path)
    assert_same_tokens(back, tokens, from_ids=False)


@pytest.mark.parametrize("ext", SAVE_EXTENSIONS)
def test_save_load_keeps_lengths_and_big_codes(tmp_path: Path, ext: str) -> None:
    spec = TokenSpec("audio", (2**32, 3), ("time",), frame_rate=50.0, name="x.y")
    codes = torch.tensor([[[2**32 - 1, 0, 7], [2, 1, 0]], [[5, 6, -1], [0, 2, -1]]])
    tokens = Tokens(codes, spec, torch.tensor([3, 2]))
    back = Tokens.load(tokens.save(tmp_path / f"t{ext}"))
    assert back.codes.dtype == torch.int64 and stored_codes_dtype(tmp_path / f"t{ext}") == np.uint32
    assert back.lengths.tolist() == [3, 2] and back.spec == spec
    assert back.codes.tolist() == [[[2**32 - 1, 0, 7], [2, 1, 0]], [[5, 6, 0], [0, 2, 0]]]


def test_save_load_errors(tmp_path: Path) -> None:
    spec, tokens, _ = tiny()
    with pytest.raises(
        ValueError,
        match=r"unsupported file extension for .*t\.pt; use one of \('\.safetensors', '\.npz'\)",
    ):
        tokens.save(tmp_path / "t.pt")
    (tmp_path / "t.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported file extension for .*t\.bin"):
        Tokens.load(tmp_path / "t.bin")
    with pytest.raises(FileNotFoundError, match="no such file"):
        Tokens.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):  # missing, not misnamed
        Tokens.load(tmp_path / "missing")
    for name in ("bad.safetensors", "bad.npz"):
        (tmp_path / name).write_bytes(b"\x00not a real file at all")
        with pytest.raises(ValueError, match=rf"{name} is not a readable"):
            Tokens.load(tmp_path / name)
    good = tokens.save(tmp_path / "cut.safetensors")
    good.write_bytes(good.read_bytes()[:-3])  # truncated
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        Tokens.load(good)
    # an object array would need pickle: refused, naming the file
    np.savez(
        tmp_path / "obj.npz",
        codes=np.array([{"a": 1}], dtype=object),
        spec_json=np.array(spec.to_json()),
    )
    with pytest.raises(ValueError, match=r"obj\.npz is not a readable \.npz file"):
        Tokens.load(tmp_path / "obj.npz")
    np.savez(tmp_path / "foreign.npz", codes=np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"foreign\.npz: not an anytok tokens file"):
        Tokens.load(tmp_path / "foreign.npz")
    fmt = np.array("anytok.tokens/1")
    np.savez(
        tmp_path / "range.npz",
        codes=np.full((1, 2, 3), 3, np.uint8),
        spec_json=np.array(spec.to_json()),
        format=fmt,
    )
    with pytest.raises(
        ValueError, match=r"range\.npz: .*code 3 at item 0, level 1, position \(0,\) is outside"
    ):
        Tokens.load(tmp_path / "range.npz")
    np.savez(
        tmp_path / "spec.npz",
        codes=np.zeros((1, 2, 3), np.uint8),
        spec_json=np.array("{"),
        format=fmt,
    )
    with pytest.raises(ValueError, match=r"spec\.npz: missing or invalid spec"):
        Tokens.load(tmp_path / "spec.npz")
    np.savez(
        tmp_path / "shape.npz",
        codes=np.zeros((1, 3, 3), np.uint8),
        spec_json=np.array(spec.to_json()),
        format=fmt,
    )
    with pytest.raises(ValueError, match=r"shape\.npz: .*codes.shape\[1\] = 3"):
        Tokens.load(tmp_path / "shape.npz")
    bad_codes = Tokens(torch.tensor([[[0, 9, 0], [0, 0, 0]]]), spec)
    with pytest.raises(ValueError, match=r"code 9 at item 0, level 0"):
        bad_codes.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_module_never_uses_pickle() -> None:
    source = inspect.getsource(tokens_module)
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {
        "pickle",
        "cPickle",
        "_pickle",
        "dill",
        "cloudpickle",
        "joblib",
        "shelve",
        "marshal",
    }
    assert "allow_pickle=True" not in source
    assert "torch.load" not in source and "torch.save" not in source


@pytest.mark.parametrize("ext", SAVE_EXTENSIONS)
def test_save_load_largest_codebook(tmp_path: Path, ext: str) -> None:
    """A 2**63-entry codebook: codes up to 2**63 - 1 stored as uint64, loaded back as int64."""
    spec = TokenSpec("image", (2**63, 2), ("sequence",))
    tokens = Tokens(torch.tensor([[[2**63 - 1, 0], [1, 0]]]), spec)
    path = tokens.save(tmp_path / f"big{ext}")
    assert stored_codes_dtype(path) == np.uint64
    assert Tokens.load(path).codes.tolist() == [[[2**63 - 1, 0], [1, 0]]]
    with pytest.raises(ValueError, match="do not fit in int64"):
        LMVocab.from_spec(spec)


@pytest.mark.parametrize("ext", SAVE_EXTENSIONS)
def test_non_contiguous_codes(tmp_path: Path, ext: str) -> None:
    """Codecs hand out transposed views (e.g. ``(b, t, levels)`` permuted): layout must not leak."""
    spec = TokenSpec("audio", (125, 300), ("time",), frame_rate=50.0)
    base = torch.stack([torch.arange(7), 100 + torch.arange(7)], dim=1)  # (t, levels)
    codes = base.T.unsqueeze(0).expand(2, -1, -1)  # (2, 2, 7), strided view
    assert not codes.is_contiguous()
    tokens = Tokens(codes, spec, torch.tensor([7, 4]))
    back = Tokens.load(tokens.save(tmp_path / f"v{ext}"))
    assert_same_tokens(back, tokens, from_ids=False)
    vocab = LMVocab.from_spec(spec)
    for pattern in PATTERNS:
        ids = tokens.to_lm_ids(vocab, pattern)
        assert Tokens.from_lm_ids(ids, spec, vocab, pattern, shape=(7,)).equal(tokens)
