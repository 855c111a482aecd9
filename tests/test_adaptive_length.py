"""Variable-length 1D tokens: prefix draws, length choice by binary search, padding."""

from __future__ import annotations

import pytest
import torch

from anytok.codecs.adaptive_length import (
    choose_length,
    encode_adaptive,
    pad_redundant,
    prefix_mask,
    sample_prefix_lengths,
    trim,
)
from anytok.tokens import Tokens, TokenSpec

SPEC = TokenSpec("image", [16], ("sequence",), resolution=(8, 8))


class FakeModel:
    """Decodes a prefix of n tokens to ``target * min(1, n / needed[i])``: image i reaches a
    given quality at a known length; counts decode calls."""

    def __init__(self, needed: list[int]):
        self.needed = torch.tensor(needed)
        self.calls = 0

    def encode(self, images: torch.Tensor) -> Tokens:
        codes = torch.arange(images.shape[0])[:, None, None].expand(-1, 1, 16).contiguous()
        return Tokens(codes=codes, spec=SPEC)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n = codes.shape[-1]
        rows = codes[:, 0, 0]
        fraction = (n / self.needed[rows].float()).clamp(max=1.0)
        return fraction.view(-1, 1, 1, 1) * torch.ones(len(rows), 3, 8, 8)


def test_prefix_draws_and_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = sample_prefix_lengths(1000, 16, "pow2", gen)
    assert set(lengths.tolist()) == {1, 2, 4, 8, 16}
    assert set(sample_prefix_lengths(1000, 12, "pow2", gen).tolist()) == {1, 2, 4, 8, 12}
    uniform = sample_prefix_lengths(2000, 5, "uniform", gen)
    assert set(uniform.tolist()) == {1, 2, 3, 4, 5}
    assert prefix_mask(torch.tensor([1, 3]), 4).tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="distribution must be one of"):
        sample_prefix_lengths(2, 4, "geometric")


def test_choose_length_finds_the_smallest_sufficient_prefix() -> None:
    needed = [1, 3, 8, 16, 5]
    model = FakeModel(needed)
    images = torch.ones(5, 3, 8, 8)
    # Target: the exact image (-L1 of 0): the length where the fraction reaches 1.
    chosen = choose_length(model, images, -1e-6, metric="l1")
    assert chosen.tolist() == [1, 4, 8, 16, 8]  # smallest of 1, 2, 4, 8, 16 with n >= needed
    assert model.calls <= 5 * 3  # log2(5 candidates) rounds, batched per length
    exact = choose_length(FakeModel(needed), images, -1e-6, metric="l1", candidates=range(1, 17))
    assert exact.tolist() == needed
    # Unreachable targets give the longest candidate.
    assert choose_length(FakeModel(needed), images, 1e9, metric="psnr").tolist() == [16] * 5


def test_encode_adaptive_and_redundant_padding() -> None:
    model = FakeModel([2, 16])
    pieces = encode_adaptive(model, torch.ones(2, 3, 8, 8), -1e-6, metric="l1")
    assert [p.codes.shape[-1] for p in pieces] == [2, 16]
    padded = pad_redundant(pieces, 16)
    assert padded.codes.shape == (2, 1, 16) and padded.lengths.tolist() == [2, 16]
    a = Tokens(codes=torch.tensor([[[3, 4, 5]]]), spec=SPEC)
    cycled = pad_redundant([a], 7)
    assert cycled.codes.tolist() == [[[3, 4, 5, 3, 4, 5, 3]]]
    assert torch.equal(trim(cycled)[0].codes, a.codes)
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_redundant([a], 2)


def test_pad_redundant_refuses_an_empty_sequence() -> None:
    spec = TokenSpec(modality="image", codebook_sizes=(16,), layout=("sequence",))
    good = Tokens(torch.tensor([[[1, 2, 3]]]), spec)
    empty = Tokens(torch.zeros(1, 1, 0, dtype=torch.long), spec)
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pad_redundant([good, empty], 4)
