"""Audit of long audio / long video / spatial tiling: empty batches outside inference mode,
exact tiled decoding of a local model, the stride grid of tiled encoding, dtypes, argument
checks, ``encode_long``'s ``lengths`` convention and the streaming advice."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import anytok
from anytok.codecs import tiling
from anytok.codecs.long_audio import apply_per_length
from anytok.tokens import Tokens, TokenSpec


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _model(name: str) -> nn.Module:
    return anytok.create_model(name, tiny=True, seed=0).eval()


def _audio(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- 1: empty items


def test_apply_per_length_all_empty_gives_a_writable_tensor() -> None:
    """``fn``'s result made under inference_mode was zeroed in place outside it."""

    def under_inference_mode(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return 2 * x

    out = apply_per_length(under_inference_mode, torch.ones(2, 3, 5), torch.tensor([0, 0]), 1.0)
    assert out.shape == (2, 3, 5) and not out.is_inference() and not out.any()
    out.add_(1)  # a normal tensor: writable outside inference_mode


@pytest.mark.parametrize("name", ["dac_24khz", "encodec_24khz", "mimi"])
def test_long_audio_of_empty_items_outside_inference_mode(name: str) -> None:
    model = _model(name)
    audio = _audio(2, 12 * model.hop_length)
    with torch.no_grad():
        alone = model.encode(audio, lengths=[0, 0])
        tokens = model.encode_long(audio, lengths=[0, 0])
        assert tokens.codes.shape == alone.codes.shape
        assert tokens.lengths.tolist() == [0, 0] == alone.lengths.tolist()
        empty = Tokens(alone.codes, alone.spec, torch.tensor([0, 0]))
        decoded = model.decode_long(empty)
        assert torch.equal(decoded, model.decode(empty)) and not decoded.any()


# --------------------------------------------------------------------------- 2, 3: tiling


class LocalConvModel:
    """A purely local tokenizer (zero-padded convs only, stride 2). The decoder's receptive
    field is 2 codes: a 3x3 conv on codes, nearest x2 upsampling, a 3x3 conv on pixels."""

    downsample_factor = 2
    spec = TokenSpec(modality="image", codebook_sizes=(4096,), layout=("height", "width"))

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)

        def conv(c_in: int, c_out: int, kernel: int, **kw: int) -> nn.Conv2d:
            layer = nn.Conv2d(c_in, c_out, kernel, **kw)
            for p in layer.parameters():
                p.data = torch.randn(p.shape, generator=generator) * 0.3
            return layer

        self.encoder = nn.Sequential(conv(3, 4, 3, padding=1), conv(4, 1, 2, stride=2))
        self.decoder_codes = conv(1, 4, 3, padding=1)
        self.decoder_pixels = conv(4, 3, 3, padding=1)

    @torch.no_grad()
    def encode(self, media: torch.Tensor) -> Tokens:
        latent = self.encoder(media)
        return Tokens((latent * 50).round().long().clamp(-2000, 2000) + 2000, self.spec)

    @torch.no_grad()
    def decode(self, tokens: Tokens | torch.Tensor) -> torch.Tensor:
        codes = tokens.codes if isinstance(tokens, Tokens) else tokens
        latent = (codes.float() - 2000) / 50
        return self.decoder_pixels(F.interpolate(self.decoder_codes(latent), scale_factor=2))


@pytest.mark.parametrize("size", [(40, 40), (50, 34), (64, 18), (2, 66)])
def test_tiling_a_local_conv_model_is_exact(size: tuple[int, int]) -> None:
    """Receptive field 2 codes, overlap 8 >= 4 * 2: the linear ramp across the whole overlap
    gave weight to tile-edge pixels decoded against zero padding (max |diff| 0.03)."""
    model = LocalConvModel()
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    one = model.encode(image)
    assert torch.equal(tiling.encode_tiled(model, image, tile=16, overlap=8).codes, one.codes)
    reference = model.decode(one)
    for tile in (10, 12, 16):
        decoded = tiling.decode_tiled(model, one, tile=tile, overlap=8)
        torch.testing.assert_close(decoded, reference, atol=1e-5, rtol=0)


class TileMeanModel:
    """A global 'decoder': each tile decodes to the mean of its codes (a constant), so only
    the blending decides the output across an overlap."""

    downsample_factor = 2
    spec = LocalConvModel.spec

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        mean = codes.float().mean(dim=(-2, -1), keepdim=True)
        return mean.expand(*codes.shape[:-2], 2 * codes.shape[-2], 2 * codes.shape[-1])


def test_decode_tiled_blends_the_middle_of_each_overlap() -> None:
    """Tiles [0, 12) and [4, 16) share 8 codes: 2 codes next to each tile's inner edge weigh
    0 and the middle 4 ramp linearly (2 pixels per code), so seams are still blended."""
    codes = torch.zeros(1, 1, 4, 16, dtype=torch.long)
    codes[..., 8:] = 100  # tile A's mean 100 * 4 / 12, tile B's 100 * 8 / 12
    row = tiling.decode_tiled(TileMeanModel(), codes, tile=12, overlap=8)[0, 0, 0]
    a, b = 400 / 12, 800 / 12
    assert torch.allclose(row[:12], torch.full((12,), a))  # up to 2 codes into the overlap
    assert torch.allclose(row[20:], torch.full((12,), b))  # B alone near A's edge
    ramp = (torch.arange(8) + 0.5) / 8
    torch.testing.assert_close(row[12:20], a + (b - a) * ramp)


def test_encode_tiled_refuses_sizes_off_the_stride_grid() -> None:
    """30 rows at stride 4 gave 8 rows of codes from a last tile starting at pixel 14."""
    model = _model("vqgan")
    image = torch.rand(1, 3, 30, 48) * 2 - 1
    with pytest.raises(ValueError, match=r"VQGAN.*multiples of its stride 4, got 30 x 48"):
        model.encode_tiled(image, tile=16, overlap=8)
    with pytest.raises(ValueError, match=r"stride 2, got 31 x 40"):
        tiling.encode_tiled(LocalConvModel(), torch.randn(1, 3, 31, 40), 16, 4)
    for size in range(4, 80, 4):  # on the grid, every tile starts on it
        for tile, overlap in [(16, 8), (12, 8), (32, 16), (8, 0)]:
            assert all(v % 4 == 0 for span in tiling._spans(size, tile, overlap) for v in span)


# --------------------------------------------------------------------------- 4a: dtype


@pytest.mark.parametrize("name", ["encodec_24khz", "mimi"])
def test_decode_long_keeps_the_bf16_dtype_of_decode(name: str) -> None:
    model = _model(name).to(torch.bfloat16)
    audio = _audio(1, 40 * model.hop_length)
    with torch.inference_mode():
        tokens = model.encode(audio)
        assert model.decode(tokens).dtype == torch.bfloat16
        long = model.decode_long(tokens, chunk_seconds=4 / model.frame_rate)
        assert long.dtype == torch.bfloat16
        with model.stream_decoder() as decoder:
            parts = [decoder(tokens.codes[..., :4]), decoder.flush()]
        assert [p.dtype for p in parts] == [torch.bfloat16] * 2


# --------------------------------------------------------------------------- 4b, 4c: arguments


def test_long_video_chunk_sizes_must_be_positive_ints() -> None:
    model = _model("cnn3d_fsq_4x8x8")
    video = 0.5 * torch.randn(1, 3, 9, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = model.encode(video)
        for bad in (-5, 0):
            with pytest.raises(ValueError, match="chunk_frames must be a positive integer"):
                model.encode_long(video, chunk_frames=bad)
        for bad in (2.5, 4.0, math.nan, True, "4", None):
            with pytest.raises(TypeError, match="chunk_frames must be an integer"):
                model.encode_long(video, chunk_frames=bad)
        with pytest.raises(ValueError, match="encode_long_stream: chunk_frames"):
            model.encode_long_stream([video], chunk_frames=-5)
        for bad, error in ((-1, ValueError), (0, ValueError), (1.5, TypeError)):
            with pytest.raises(error, match="chunk_latents must be"):
                model.decode_long(one, chunk_latents=bad)
        assert torch.equal(model.encode_long(video, chunk_frames=4).codes, one.codes)
        assert torch.equal(model.decode_long(one, chunk_latents=1), model.decode(one))


def test_video_codes_of_no_latent_frames_are_refused() -> None:
    model = _model("cnn3d_fsq_4x8x8")
    empty = torch.zeros(1, 1, 0, 2, 2, dtype=torch.long)
    for decode in (model.decode, model.decode_long):
        with pytest.raises(ValueError, match=r"\(1, 1, 0, 2, 2\) have 0 latent frames"):
            decode(empty)


@pytest.mark.parametrize("name", ["dac_24khz", "seanet_fsq_24khz"])
def test_long_audio_seconds_must_be_numbers(name: str) -> None:
    model = _model(name)
    audio = _audio(2, 200)
    for bad in ("1", None, torch.tensor(0.001), True):
        with pytest.raises(TypeError, match="chunk_seconds must be a number of seconds"):
            model.encode_long(audio, chunk_seconds=bad)
    with pytest.raises(TypeError, match="context_seconds must be a number of seconds"):
        model.encode_long(audio, context_seconds="2")
    with pytest.raises(ValueError, match="chunk_seconds must be positive and finite, got -1"):
        model.decode_long(model.encode(audio), chunk_seconds=-1)


@pytest.mark.parametrize("name", ["dac_24khz", "seanet_fsq_24khz"])
def test_audio_stream_pieces_must_agree_but_in_samples(name: str) -> None:
    model = _model(name)
    audio = _audio(2, 200)
    for other in (audio[:1], audio.repeat(1, 2, 1)):
        with pytest.raises(ValueError, match=r"piece 1 has shape .*, the first \(2, 1, 200\)"):
            model.encode_long_stream([audio, other])
    empty_first = [audio[:1, :, :0], audio[..., :120], audio[..., 120:]]  # empty pieces skipped
    assert torch.equal(model.encode_long_stream(empty_first).codes, model.encode_long(audio).codes)


def test_video_stream_pieces_must_agree_but_in_frames() -> None:
    model = _model("cnn3d_fsq_4x8x8")
    video = 0.5 * torch.randn(2, 3, 9, 4, 4)
    with pytest.raises(ValueError, match=r"piece 1 has shape \(2, 3, 9, 2, 2\), the first"):
        model.encode_long_stream([video, video[..., :2, :2]])


def test_tiling_sizes_must_be_ints() -> None:
    model = _model("vqgan")
    image = torch.zeros(1, 3, 32, 48)
    with pytest.raises(TypeError, match="encode_tiled: tile must be an integer, got 16.0"):
        model.encode_tiled(image, tile=16.0, overlap=8)
    with pytest.raises(TypeError, match="encode_tiled: overlap must be an integer"):
        model.encode_tiled(image, tile=16, overlap="8")
    with pytest.raises(TypeError, match="decode_tiled: tile must be an integer, got 4.5"):
        model.decode_tiled(model.encode(image), tile=4.5, overlap=2)


# --------------------------------------------------------------------------- 4d: lengths


@pytest.mark.parametrize("name", ["dac_24khz", "seanet_fsq_24khz"])
def test_encode_long_lengths_follow_encode(name: str) -> None:
    """Full lengths gave a lengths tensor where encode gives None; codes past a length are
    0 (documented), the valid ones encode's."""
    model = _model(name)
    hop = model.hop_length
    audio = _audio(2, 10 * hop + 5)
    chunk = 3 / model.frame_rate
    with torch.no_grad():
        for full in ([10 * hop + 5] * 2, [10 * hop + 5, 10 * hop + 1]):  # 11 frames each
            assert model.encode(audio, lengths=full).lengths is None
            long = model.encode_long(audio, lengths=full, chunk_seconds=chunk)
            assert long.lengths is None
            assert torch.equal(long.codes, model.encode(audio, lengths=full).codes)
        lengths = [10 * hop + 5, 3 * hop]
        one = model.encode(audio, lengths=lengths)
        long = model.encode_long(audio, lengths=lengths, chunk_seconds=chunk)
        assert torch.equal(long.lengths, one.lengths) and long.lengths.tolist() == [11, 3]
        assert torch.equal(long.codes[0], one.codes[0])
        assert torch.equal(long.codes[1, :, :3], one.codes[1, :, :3])
        assert not long.codes[1, :, 3:].any()
        assert torch.equal(model.decode_long(long), model.decode(one))


# --------------------------------------------------------------------------- 4e: advice


@pytest.mark.parametrize("name", ["snac_24khz", "tadicodec_24khz_6hz"])
def test_stream_refusal_advises_whole_utterances_where_no_chunked_path(name: str) -> None:
    model = _model(name)
    for stream in (model.stream_encoder, model.stream_decoder):
        with pytest.raises(ValueError, match="not causal") as caught:
            stream().__enter__()
        message = str(caught.value)
        assert "use encode_long" not in message
        assert "no chunked path either" in message and "whole utterances" in message


def test_stream_refusal_advises_encode_long_where_it_applies() -> None:
    model = _model("dac_24khz")
    with pytest.raises(ValueError, match="cannot stream; use encode_long / decode_long"):
        model.stream_encoder().__enter__()
