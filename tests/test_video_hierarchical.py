"""Hierarchical video tokens: coarse + fine layers, coarse-only decoding."""

from __future__ import annotations

import pytest
import torch

import anytok
from anytok.codecs.video.hierarchical import coarse_codes


def test_layers_grids_and_lossless_combined_layout() -> None:
    model = anytok.create_model("hierarchical", tiny=True, seed=0).eval()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    layers = model.encode_layers(video)
    assert layers["coarse"].codes.shape == (2, 1, 3, 4, 4)
    assert layers["fine"].codes.shape == (2, 1, 3, 8, 8)
    assert layers["coarse"].spec.codebook_sizes == (64,)
    combined = model.encode(video)
    assert combined.codes.shape == (2, 2, 3, 8, 8)
    assert combined.spec.codebook_sizes == (64, 125)
    assert torch.equal(coarse_codes(combined.codes), layers["coarse"].codes)
    assert torch.equal(combined.codes[:, 1:], layers["fine"].codes)


def test_decode_from_coarse_alone_or_all_layers() -> None:
    model = anytok.create_model("hierarchical", tiny=True, seed=0).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    tokens = model.encode(video)
    full = model.decode(tokens)
    coarse = model.decode(tokens, layers="coarse")
    assert full.shape == coarse.shape == video.shape
    assert not torch.allclose(full, coarse)
    # The coarse-only decode ignores the fine codes entirely.
    scrambled = tokens.codes.clone()
    scrambled[:, 1] = torch.randint(0, 125, scrambled[:, 1].shape)
    assert torch.equal(model.decode(scrambled, layers="coarse"), coarse)
    assert torch.equal(model.decode(coarse_codes(tokens.codes), layers="coarse"), coarse)
    with pytest.raises(ValueError, match="layers must be one of"):
        model.decode(tokens, layers="fine")


def test_training_drops_the_fine_layer_for_some_items() -> None:
    model = anytok.create_model("hierarchical", tiny=True, seed=0, coarse_only_rate=1.0).train()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    out = model(video)
    out.reconstruction.abs().mean().backward()
    assert model.absent_fine.grad is not None and model.absent_fine.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.from_fine.parameters())


def test_codes_of_the_wrong_rank_are_refused_by_name() -> None:
    model = anytok.create_model("hierarchical", tiny=True).eval()
    with pytest.raises(ValueError, match=r"decode: expected codes \(batch, 2, T, h, w\)"):
        model.decode(torch.zeros(1, 3, 4, 4, dtype=torch.long))  # the level axis dropped
