"""Long video (chunked, equal to one pass) and spatial tiling (bounded memory, no seams)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import anytok
from anytok.codecs.tiling import _spans


@pytest.mark.parametrize(
    "name", ["cnn3d_fsq_4x8x8", "causal3d_4x8x8_fsq", "causal3d_8x8x8_fsq", "hierarchical"]
)
def test_long_video_tokens_equal_one_pass(name: str) -> None:
    """hierarchical: its causal heads after the encoder widen the context
    (``encoder_temporal_context``); with the encoder's alone, chunks changed codes."""
    model = anytok.create_model(name, tiny=True, seed=0).eval()
    s = model.temporal_factor
    context = getattr(model, "encoder_temporal_context", None) or model.encoder.temporal_context
    # Longer than the encoder's causal context, so chunks really start mid-clip.
    frames = 1 + s * (context // s + 6) - 1  # not of the form 1 + k*s
    video = torch.rand(2, 3, frames, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lengths = torch.tensor([frames, frames - 3 * s])
    with torch.no_grad():
        one = model.encode(video, lengths)
        for chunk in (s, 3 * s):
            long = model.encode_long(video, chunk_frames=chunk, lengths=lengths)
            assert torch.equal(long.codes, one.codes)
            assert torch.equal(long.lengths, one.lengths)
        decoded = model.decode(one)
        for chunk in (1, 4):
            long_video = model.decode_long(one, chunk_latents=chunk)
            if name == "hierarchical":  # its 1x1 convs round differently on 1-frame chunks
                torch.testing.assert_close(long_video, decoded, atol=1e-5, rtol=0)
            else:
                assert torch.equal(long_video, decoded)


@pytest.mark.parametrize("name", ["causal3d_4x8x8_fsq", "cnn3d_fsq_4x8x8"])
def test_decoder_context_is_its_measured_reach_with_two_time_upsamplings(name: str) -> None:
    """Each TimeUpsample's own conv runs before it doubles the rate: counted after, it was
    half its reach, so the full-size decoders (two upsamplings) reported 2 latent frames too
    few and decode_long differed from one pass by 3e-4."""
    model = anytok.create_model(
        name, tiny=True, seed=0, channel_multipliers=[1, 2, 2], temporal_downsample=[True, True]
    ).eval()
    decoder, s = model.decoder, model.temporal_factor
    z = torch.randn(1, decoder.model[0].conv.in_channels, 60, 1, 1)
    moved = z.clone()
    moved[:, :, 3] += 1
    with torch.no_grad():
        changed = (decoder(moved) - decoder(z)).abs().amax(dim=(0, 1, 3, 4)) > 0
    last_frame = int(changed.nonzero().max())
    assert 1 + (last_frame - 1) // s - 3 == decoder.temporal_context
    video = torch.rand(1, 3, 1 + s * 40, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(video)
        one = model.decode(tokens)
        assert (model.decode_long(tokens, chunk_latents=4) - one).abs().max() < 1e-5


def test_long_video_needs_a_bounded_context() -> None:
    model = anytok.create_model("divot", tiny=True).eval()
    tokens = model.encode(torch.rand(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="no bounded causal context"):
        model.decode_long(tokens)


def test_spans_cover_the_axis_once() -> None:
    for size, tile, overlap in [(64, 16, 4), (64, 64, 8), (70, 32, 8), (48, 16, 0)]:
        spans = _spans(size, tile, overlap)
        kept = [k for _, _, a, b in spans for k in range(a, b)]
        assert kept == list(range(size))
        assert all(stop - start == min(tile, size) for start, stop, _, _ in spans)
        assert all(start <= a and b <= stop for start, stop, a, b in spans)


class LocalModel:
    """A purely local 'tokenizer': codes are 4x4 average-pooled pixels (quantised), decode
    repeats them. Tiling must reproduce one pass exactly."""

    downsample_factor = 4

    def __init__(self) -> None:
        self.largest = 0

    def encode(self, media: torch.Tensor):
        self.largest = max(self.largest, media.shape[-1] * media.shape[-2])
        codes = (F.avg_pool2d(media[:, :1], 4) * 100).round().long()
        from anytok.tokens import Tokens, TokenSpec

        return Tokens(codes=codes + 1000, spec=TokenSpec("image", [4096], ("height", "width")))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, codes.shape[-1] * codes.shape[-2] * 16)
        return F.interpolate((codes - 1000).float() / 100, scale_factor=4, mode="nearest")


def test_tiling_is_exact_for_a_local_model_and_bounds_memory() -> None:
    from anytok.codecs.tiling import decode_tiled, encode_tiled

    model = LocalModel()
    image = torch.rand(1, 3, 96, 160) * 2 - 1
    tiled = encode_tiled(model, image, tile=32, overlap=8)
    assert model.largest == 32 * 32  # never more than one tile at a time
    assert torch.equal(tiled.codes, model.encode(image).codes)
    model.largest = 0
    decoded = decode_tiled(model, tiled, tile=8, overlap=2)
    assert model.largest == 32 * 32
    assert torch.allclose(decoded, model.decode(tiled.codes), atol=1e-6)  # blends of equal values
    with pytest.raises(ValueError, match="multiple of twice the stride"):
        encode_tiled(model, image, tile=32, overlap=4)


@pytest.mark.parametrize("name", ["vqgan", "causal3d_4x8x8_fsq", "hierarchical"])
def test_tiled_real_models_shapes_and_single_tile_equality(name: str) -> None:
    """hierarchical: codes lie on its fine grid (``code_factor``), half its input stride;
    tiles cut by the input stride gave half-size grids and a failing decode."""
    model = anytok.create_model(name, tiny=True, seed=0).eval()
    f = getattr(model, "downsample_factor", None) or model.spatial_factor
    shape = (1, 3, 64, 96) if model.modality == "image" else (1, 3, 5, 64, 96)
    media = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        one = model.encode(media)
        tiled = model.encode_tiled(media, tile=16 * f, overlap=4 * f)
        assert tiled.codes.shape == one.codes.shape
        assert torch.equal(
            model.encode_tiled(media, tile=max(media.shape[-2:]), overlap=0).codes, one.codes
        )
        decoded = model.decode_tiled(one, tile=8, overlap=4)
        reference = model.decode(one)
        assert decoded.shape == reference.shape and torch.isfinite(decoded).all()
        # One tile covering the grid is the one-pass decode (random weights and per-tile
        # GroupNorm make smaller tiles differ; the stitching itself is tested exactly above).
        whole = model.decode_tiled(one, tile=max(one.codes.shape[-2:]), overlap=0)
        assert torch.equal(whole, reference)


@pytest.mark.parametrize("name", ["titok_l32", "flextok_d12_d12"])
def test_tiling_refuses_1d_token_sequences(name: str) -> None:
    """1D tokenizers have no grid to stitch: tiling returned a meaningless sequence."""
    model = anytok.create_model(name, tiny=True, seed=0).eval()
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with pytest.raises(ValueError, match=r"encode_tiled: .* laid out as \('sequence',\), not on"):
        model.encode_tiled(image, tile=32, overlap=16)
    with pytest.raises(ValueError, match=r"decode_tiled: .*not on a height x width grid"):
        model.decode_tiled(torch.zeros(1, 1, 8, dtype=torch.long), tile=4, overlap=2)
