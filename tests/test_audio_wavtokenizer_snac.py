"""WavTokenizer and SNAC: parity with the reference packages (random weights, converted and
loaded strictly), the SNAC frame code layout, padding behaviour and the shared layers.

References: ``snac`` (1.2.1) and ``vocos`` (0.1.0, which brings ``encodec`` 0.1.1) from PyPI;
the parity tests skip without them. Registry-driven checks (shapes, save/load, batch of 1 vs
4 ...) live in test_registry_models.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hub_cache import put_in_hub_cache
from torch import nn

import anytok
from anytok.codecs.audio.snac import SNAC, convert_snac_state_dict
from anytok.codecs.audio.wavtokenizer import (
    WavTokenizer,
    convert_vocos_backbone_state_dict,
    convert_wavtokenizer_state_dict,
)
from anytok.nn.attention import LocalSelfAttention
from anytok.nn.encodec_seanet import EncodecSEANetEncoder, convert_encodec_seanet_keys
from anytok.nn.vocos import ISTFT, AttentionBlock1d, ISTFTHead, VocosBackbone
from anytok.tokens import LMVocab, Tokens

TOL = 1e-5


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values of its own scale (Snake alphas, layer scales, norm
    weights and embeddings included), so parity does not hinge on initial ones and zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("alpha") or "scale.weight" in name:
                p.copy_(1.0 + 0.3 * noise.abs())
            else:
                p.add_(0.1 * noise * (p.std() if p.numel() > 1 else 1.0))
    return module


def old_style_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``parametrizations.weight.original0/1`` -> ``weight_g`` / ``weight_v`` (torch < 2.1)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        out[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return out


# --------------------------------------------------------------------------- SNAC

# Small reference sizes with both code paths: no attention / 3 levels (the speech model's
# shape) and attention / 4 levels (the music models'). The reference's heads are 64 wide.
SNAC_SMALL = [
    dict(
        sampling_rate=24000,
        encoder_dim=8,
        encoder_rates=[2, 4],
        decoder_dim=32,
        decoder_rates=[4, 2],
        attn_window_size=None,
        codebook_size=64,
        codebook_dim=4,
        vq_strides=[4, 2, 1],
    ),
    dict(
        sampling_rate=32000,
        encoder_dim=16,
        encoder_rates=[2, 3],
        decoder_dim=128,
        decoder_rates=[3, 2],
        attn_window_size=4,
        codebook_size=64,
        codebook_dim=4,
        vq_strides=[8, 4, 2, 1],
    ),
]


def snac_pair(ref_config: dict) -> tuple[nn.Module, SNAC]:
    """The reference with random weights, and ours loaded strictly from its state dict."""
    snac_ref = pytest.importorskip("snac")
    torch.manual_seed(0)
    ref = randomize_(snac_ref.SNAC(**ref_config)).eval()
    config = {k: v for k, v in ref_config.items() if k != "sampling_rate"}
    ours = SNAC(sample_rate=ref_config["sampling_rate"], **config).eval()
    ours.load_state_dict(convert_snac_state_dict(ref.state_dict()), strict=True)
    return ref, ours


def check_snac_parity(ref: nn.Module, ours: SNAC, audio: torch.Tensor) -> float:
    """Codes equal the reference's (frame layout <-> per-level lists); returns the max abs
    difference of decoded audio (same noise: same seed, same draws)."""
    with torch.inference_mode():
        ref_codes = ref.encode(audio)
        tokens = ours.encode(audio)
        for level, (a, b) in enumerate(zip(ref_codes, ours.codes_to_levels(tokens))):
            assert torch.equal(a, b), f"level {level} codes differ"
        assert torch.equal(ours.levels_to_tokens(ref_codes).codes, tokens.codes)
        torch.manual_seed(123)
        ref_audio = ref.decode(ref_codes)
        torch.manual_seed(123)
        our_audio = ours.decode(tokens)
    assert our_audio.shape == ref_audio.shape
    return float((our_audio - ref_audio).abs().max())


@pytest.mark.parametrize("config", SNAC_SMALL, ids=["3_levels", "4_levels_attention"])
def test_snac_matches_reference(config: dict) -> None:
    ref, ours = snac_pair(config)
    unit = ours.pad_multiple
    audio = torch.randn(2, 1, 3 * unit, generator=torch.Generator().manual_seed(1)) * 0.3
    assert check_snac_parity(ref, ours, audio) < TOL
    # Any length: the reference pads to its unit too; our codes are its first frames.
    odd = audio[..., : 2 * unit + 5]
    with torch.inference_mode():
        ref_codes = ref.encode(odd)
        tokens = ours.encode(odd)
    frames = math.ceil(odd.shape[-1] / ours.hop_length)
    assert tokens.codes.shape[-1] == frames
    for level, (a, b) in enumerate(zip(ref_codes, ours.codes_to_levels(tokens))):
        assert torch.equal(a[:, : b.shape[-1]], b), f"level {level} differs"


def test_snac_full_speech_config_matches_reference() -> None:
    """The registered snac_24khz configuration is the official one: same parameter count as
    the reference built from hubertsiuzdak/snac_24khz's config.json, and the same output."""
    official = dict(
        sampling_rate=24000,
        encoder_dim=48,
        encoder_rates=[2, 4, 8, 8],
        decoder_dim=1024,
        decoder_rates=[8, 8, 4, 2],
        attn_window_size=None,
        codebook_size=4096,
        codebook_dim=8,
        vq_strides=[4, 2, 1],
        noise=True,
        depthwise=True,
    )
    ref, ours = snac_pair(official)
    registered = anytok.create_model("snac_24khz")
    assert set(registered.state_dict()) == set(ours.state_dict())
    count = sum(p.numel() for p in registered.parameters())
    assert count == sum(p.numel() for p in ref.parameters())  # 19.8 M
    audio = torch.randn(1, 1, 2 * ours.hop_length, generator=torch.Generator().manual_seed(2))
    assert check_snac_parity(ref, ours, 0.3 * audio) < TOL


def test_snac_full_music_configs_load_reference_weights() -> None:
    """snac_32khz / snac_44khz: the official configuration's state dict loads strictly."""
    snac_ref = pytest.importorskip("snac")
    for name, rate in (("snac_32khz", 32000), ("snac_44khz", 44100)):
        ref = snac_ref.SNAC(
            sampling_rate=rate,
            encoder_dim=64,
            encoder_rates=[2, 3, 8, 8],
            decoder_dim=1536,
            decoder_rates=[8, 8, 3, 2],
            attn_window_size=32,
            codebook_size=4096,
            codebook_dim=8,
            vq_strides=[8, 4, 2, 1],
        )
        ours = anytok.create_model(name)
        ours.load_state_dict(convert_snac_state_dict(ref.state_dict()), strict=True)
        assert ours.pad_multiple == ref.hop_length * 32
        assert ours.spec.num_levels == 15


def test_snac_converter_accepts_old_style_weight_norm() -> None:
    ref, ours = snac_pair(SNAC_SMALL[0])
    converted = convert_snac_state_dict(old_style_weight_norm(ref.state_dict()))
    fresh = SNAC(
        sample_rate=24000,
        **{k: v for k, v in SNAC_SMALL[0].items() if k != "sampling_rate"},
    )
    fresh.load_state_dict(converted, strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_snac_frame_layout_and_lm_ids() -> None:
    """Frames hold [c0, c1a, c2a, c2b, c1b, c2c, c2d]: the depth-first order LMs use, with one
    id range per position in the frame."""
    model = anytok.create_model("snac_24khz", tiny=True, vq_strides=[4, 2, 1]).eval()
    q = model.quantizer
    assert q.column_levels == (0, 1, 2, 2, 1, 2, 2)
    assert model.spec.num_levels == 7 and model.hop_length == 4 * model.latent_hop
    frames = 3
    levels = [
        torch.arange(frames * n).view(1, -1) + 100 * level for level, n in enumerate((1, 2, 4))
    ]
    tokens = model.levels_to_tokens(levels)
    assert tokens.codes.shape == (1, 7, frames)
    assert tokens.codes[0, :, 1].tolist() == [1, 102, 204, 205, 103, 206, 207]
    for a, b in zip(levels, model.codes_to_levels(tokens)):
        assert torch.equal(a, b)
    # LM ids: offset + position_in_frame * codebook_size + code, frame after frame.
    codes = torch.randint(0, 32, (2, 7, frames))
    tokens = Tokens(codes=codes, spec=model.spec)
    vocab = LMVocab.from_spec(model.spec, offset=1000)
    ids = tokens.to_lm_ids(vocab, "flatten", add_special=False)
    position = torch.arange(7).repeat(frames)
    assert torch.equal(ids[1], 1000 + position * 32 + codes[1].T.reshape(-1))
    again = Tokens.from_lm_ids(ids, model.spec, vocab, "flatten", add_special=False)
    assert torch.equal(again.codes, codes)


def test_snac_decode_seed_and_padding() -> None:
    model = anytok.create_model("snac_32khz", tiny=True).eval()
    gen = torch.Generator().manual_seed(3)
    audio = torch.rand(2, 1, 20 * model.hop_length + 3, generator=gen) - 0.5
    with torch.inference_mode():
        tokens = model.encode(audio)
        state = torch.get_rng_state()
        a = model.decode(tokens, seed=7)
        b = model.decode(tokens, seed=7)
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, b) and not torch.equal(a, model.decode(tokens, seed=8))
        # Right padding changes only codes near the end (receptive field / last window) ...
        short = audio[:1, :, : 12 * model.hop_length]
        alone = model.encode(short).codes
        padded = model.encode(torch.cat([short, torch.zeros_like(short)], dim=-1)).codes
        # ... so a batch of different lengths is encoded per length: every item exact.
        swapped = audio.flip(0)  # item 1 is now the one `short` was cut from
        batch = model.encode(swapped, torch.tensor([audio.shape[-1], short.shape[-1]]))
    keep = 12 - model.pad_multiple // model.hop_length - 2
    assert torch.equal(alone[..., :keep], padded[..., :keep])
    assert not torch.equal(alone, padded[..., :12])  # the padding does reach the tail
    assert torch.equal(batch.codes[1, :, :12], alone[0]) and batch.lengths.tolist() == [21, 12]
    assert torch.equal(batch.codes[0], tokens.codes[1])


def test_snac_decode_respects_lengths() -> None:
    """With lengths, items decode on their valid frames only: zeros past them, and (without
    the noise blocks) exactly the audio they decode to alone."""
    model = anytok.create_model("snac_24khz", tiny=True, noise=False).eval()
    gen = torch.Generator().manual_seed(4)
    audio = torch.rand(2, 1, 14 * model.hop_length, generator=gen) - 0.5
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([14 * model.hop_length, 6 * model.hop_length]))
        batched = model.decode(tokens)
        alone = model.decode(tokens.codes[1:, :, :6])
        noisy = anytok.create_model("snac_24khz", tiny=True).eval().decode(tokens, seed=1)
    assert batched.shape == (2, 1, 14 * model.hop_length)
    torch.testing.assert_close(batched[1:, :, : 6 * model.hop_length], alone, atol=1e-6, rtol=0)
    assert not batched[1, :, 6 * model.hop_length :].any()
    assert not noisy[1, :, 6 * model.hop_length :].any()


def test_snac_seeded_decode_is_the_same_for_an_item_alone_or_in_a_batch() -> None:
    """``decode(seed=...)`` draws one noise for the batch: each item of a batch (full or
    shorter) decodes as it does alone with that seed. Before, the noise depended on the
    item's place in the batch (0.84 off)."""
    model = anytok.create_model("snac_32khz", tiny=True).eval()
    hop = model.hop_length
    audio = torch.rand(3, 1, 16 * hop, generator=torch.Generator().manual_seed(5)) - 0.5
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([16 * hop, 16 * hop, 9 * hop]))
        batch = model.decode(tokens, seed=11)
        for i, frames in enumerate(tokens.lengths.tolist()):
            alone = model.decode(tokens[i], seed=11)
            torch.testing.assert_close(
                batch[i : i + 1, :, : frames * hop], alone, atol=1e-5, rtol=0
            )
        other = model.decode(tokens[0], seed=12)
    assert not torch.allclose(other, batch[:1], atol=1e-3)  # the seed does choose the noise
    assert all(
        block.generator is None for block in model.decoder.modules() if hasattr(block, "generator")
    )


def test_snac_trains() -> None:
    model = anytok.create_model("snac_24khz", tiny=True).train()
    audio = torch.rand(2, 1, 10 * model.hop_length) - 0.5
    out = model(audio)
    assert out.losses["quantizer"] > 0
    assert {"perplexity/0", "usage/1", "commitment/0"} <= set(out.metrics)
    ((out.reconstruction - audio).abs().mean() + out.losses["quantizer"]).backward()
    assert model.quantizer.quantizers[1].codebook.weight.grad.abs().sum() > 0
    assert model.encoder.block[0].parametrizations.weight.original1.grad.abs().sum() > 0


def test_local_attention_partial_window() -> None:
    """A last, partial window attends within itself; full windows are unaffected by it."""
    torch.manual_seed(0)
    attn = LocalSelfAttention(16, window_size=4, head_dim=8).eval()
    x = torch.randn(2, 16, 10)
    with torch.no_grad():
        out = attn(x)
        assert torch.allclose(out[..., :8], attn(x[..., :8]), atol=1e-6)
        assert torch.allclose(out[..., 8:], attn(x[..., 8:]), atol=1e-6)
        # Windows are independent and positions restart at 0 in each.
        assert torch.allclose(out[..., 4:8], attn(x[..., 4:8]), atol=1e-6)


# --------------------------------------------------------------------------- WavTokenizer


def encodec_encoder_pair(ratios_decoder_order: list[int], dimension: int, n_filters: int):
    encodec = pytest.importorskip("encodec")
    torch.manual_seed(0)
    ref = encodec.modules.SEANetEncoder(  # WavTokenizer's EncodecFeatures arguments
        channels=1,
        dimension=dimension,
        n_filters=n_filters,
        n_residual_layers=1,
        ratios=ratios_decoder_order,
        norm="weight_norm",
        causal=False,
        pad_mode="reflect",
        true_skip=False,
        compress=2,
        lstm=2,
    )
    ref = randomize_(ref).eval()
    ours = EncodecSEANetEncoder(
        dimension=dimension, n_filters=n_filters, ratios=ratios_decoder_order[::-1]
    ).eval()
    ours.load_state_dict(convert_encodec_seanet_keys(ref.state_dict()), strict=True)
    return ref, ours


@pytest.mark.parametrize("samples", [640, 1001, 37])  # exact, ragged, shorter than padding
def test_encodec_seanet_encoder_matches_reference(samples: int) -> None:
    ref, ours = encodec_encoder_pair([4, 2], dimension=16, n_filters=4)
    audio = torch.randn(2, 1, samples, generator=torch.Generator().manual_seed(samples))
    with torch.no_grad():
        expected, got = ref(audio), ours(audio)
    assert got.shape == expected.shape == (2, 16, math.ceil(samples / 8))
    assert float((got - expected).abs().max()) < TOL


def vocos_pair(attention: bool = False, **sizes):
    vocos_models = pytest.importorskip("vocos.models")
    vocos_heads = pytest.importorskip("vocos.heads")
    torch.manual_seed(0)
    b, h = sizes["backbone"], sizes["head"]
    ref_backbone = randomize_(vocos_models.VocosBackbone(**b)).eval()
    ref_head = randomize_(vocos_heads.ISTFTHead(**h), seed=1).eval()
    ours_backbone = VocosBackbone(**b, attention=attention).eval()
    ours_head = ISTFTHead(**h).eval()
    state = {
        **{f"backbone.{k}": v for k, v in ref_backbone.state_dict().items()},
        **{f"head.{k}": v for k, v in ref_head.state_dict().items()},
    }
    converted = convert_vocos_backbone_state_dict(state)
    ours_backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in converted.items() if k.startswith("backbone.")},
        strict=True,
    )
    ours_head.load_state_dict(
        {k.removeprefix("head."): v for k, v in converted.items() if k.startswith("head.")},
        strict=True,
    )
    return ref_backbone, ref_head, ours_backbone, ours_head


@pytest.mark.parametrize("adanorm", [None, 4])
def test_vocos_backbone_and_istft_head_match_reference(adanorm: int | None) -> None:
    ref_b, ref_h, ours_b, ours_h = vocos_pair(
        backbone=dict(
            input_channels=8,
            dim=32,
            intermediate_dim=48,
            num_layers=2,
            adanorm_num_embeddings=adanorm,
        ),
        head=dict(dim=32, n_fft=64, hop_length=16, padding="same"),
    )
    features = torch.randn(2, 8, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        kwargs = {"bandwidth_id": torch.tensor([0])} if adanorm else {}
        expected = ref_h(ref_b(features, **kwargs))
        got = ours_h(ours_b(features, condition_id=0))
    assert got.shape == expected.shape == (2, 11 * 16)
    assert float((got - expected).abs().max()) < TOL * max(1.0, float(expected.abs().max()))


def test_istft_same_padding_inverts_a_same_padded_stft_and_matches_vocos() -> None:
    spectral_ops = pytest.importorskip("vocos.spectral_ops")
    n_fft, hop, frames = 64, 16, 9
    signal = torch.randn(2, frames * hop, generator=torch.Generator().manual_seed(0))
    pad = (n_fft - hop) // 2
    window = torch.hann_window(n_fft)
    spec = torch.stft(
        nn.functional.pad(signal, (pad, pad)), n_fft, hop, window=window, center=False,
        return_complex=True,
    )  # fmt: skip
    assert spec.shape[-1] == frames
    ours = ISTFT(n_fft, hop, "same")
    assert torch.allclose(ours(spec), signal, atol=1e-5)
    reference = spectral_ops.ISTFT(n_fft, hop, n_fft, padding="same")
    assert torch.allclose(ours(spec), reference(spec), atol=1e-6)
    centre = ISTFT(n_fft, hop, "center")
    expected = torch.istft(spec, n_fft, hop, n_fft, window, center=True)
    assert torch.equal(centre(spec), expected)
    assert centre(spec).shape[-1] == centre.output_length(frames)


def test_attention_stage_block_is_softmax_attention() -> None:
    """WavTokenizer's AttnBlock: GroupNorm, 1x1 q/k/v, softmax(q^T k / sqrt(c)) over time."""
    torch.manual_seed(0)
    block = randomize_(AttentionBlock1d(32)).eval()
    x = torch.randn(2, 32, 7)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = block.q(h), block.k(h), block.v(h)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
        expected = x + block.proj_out(torch.einsum("bij,bcj->bci", weights, v))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_wavtokenizer_matches_encodec_and_vocos_pipeline() -> None:
    """A WavTokenizer-format state dict assembled from the reference parts (EnCodec SEANet
    encoder + EnCodec RVQ with one level + Vocos backbone and head), converted by
    convert_wavtokenizer_state_dict and loaded strictly, gives the same codes and audio.
    (The attention stage has no PyPI reference; it is checked above against its formula.)"""
    quantization = pytest.importorskip("encodec.quantization")
    ref_encoder, _ = encodec_encoder_pair([4, 2], dimension=16, n_filters=4)
    ref_quantizer = quantization.ResidualVectorQuantizer(
        dimension=16, n_q=1, bins=64, kmeans_init=True, threshold_ema_dead_code=2
    ).eval()
    with torch.no_grad():
        codebook = ref_quantizer.vq.layers[0]._codebook
        codebook.embed.normal_(0, 1, generator=torch.Generator().manual_seed(4))
        codebook.embed_avg.copy_(codebook.embed)
        codebook.inited.fill_(1)
    ref_b, ref_h, _, _ = vocos_pair(
        backbone=dict(
            input_channels=16, dim=32, intermediate_dim=48, num_layers=2, adanorm_num_embeddings=4
        ),
        head=dict(dim=32, n_fft=32, hop_length=8, padding="same"),
    )
    state = {
        **{f"feature_extractor.encodec.encoder.{k}": v for k, v in ref_encoder.state_dict().items()},
        **{f"feature_extractor.encodec.quantizer.{k}": v for k, v in ref_quantizer.state_dict().items()},
        **{f"backbone.{k}": v for k, v in ref_b.state_dict().items()},
        **{f"head.{k}": v for k, v in ref_h.state_dict().items()},
        "feature_extractor.encodec.decoder.model.0.conv.conv.bias": torch.zeros(1),  # dropped
    }  # fmt: skip
    ours = WavTokenizer(
        ratios=[2, 4],
        n_filters=4,
        dimension=16,
        backbone_dim=32,
        backbone_intermediate_dim=48,
        backbone_layers=2,
        attention=False,
        n_fft=32,
        quantizer={"name": "vq", "codebook_size": 64, "kmeans_init": True},
    ).eval()
    ours.load_state_dict(convert_wavtokenizer_state_dict(state), strict=True)
    audio = torch.randn(2, 1, 8 * 25, generator=torch.Generator().manual_seed(5)) * 0.3
    with torch.no_grad():
        latent = ref_encoder(audio)
        result = ref_quantizer(latent, 3000)  # (x, frame rate): one level
        expected_audio = ref_h(ref_b(result.quantized, bandwidth_id=torch.tensor([0])))
        tokens = ours.encode(audio)
        got_audio = ours.decode(tokens)
    assert torch.equal(tokens.codes[:, 0], result.codes[0])
    assert float((got_audio[:, 0] - expected_audio).abs().max()) < TOL


def test_wavtokenizer_full_configs() -> None:
    """Official sizes: hop 600 / 320, n_fft 4 x hop, 512-d latent, 4096 codes, 768-d backbone
    with 12 ConvNeXt blocks and the attention stage (72 M parameters with the encoder)."""
    for name, hop, rate in (
        ("wavtokenizer_24khz_40hz", 600, 40),
        ("wavtokenizer_24khz_75hz", 320, 75),
    ):
        model = anytok.create_model(name)
        assert model.hop_length == hop and model.spec.frame_rate == rate
        assert model.spec.codebook_sizes == (4096,)
        assert model.head.istft.n_fft == 4 * hop and model.backbone.pos_net is not None
        assert len(model.backbone.convnext) == 12
        assert 70e6 < sum(p.numel() for p in model.parameters()) < 75e6


def test_wavtokenizer_decode_respects_lengths() -> None:
    """Items are decoded on their valid frames: each as it would be alone (the attention and
    GroupNorm of the decoder span the whole sequence)."""
    model = anytok.create_model("wavtokenizer_24khz_75hz", tiny=True).eval()
    audio = torch.rand(2, 1, 16 * model.hop_length) - 0.5
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([16 * model.hop_length, 9 * model.hop_length]))
        batched = model.decode(tokens)
        alone = model.decode(tokens.codes[1:, :, :9])
    assert torch.allclose(batched[1:, :, : alone.shape[-1]], alone, atol=1e-6)
    assert bool((batched[1, :, alone.shape[-1] :] == 0).all())
    # One frame decodes (the tiny GroupNorm had one value a group and raised).
    with torch.inference_mode():
        one = model.decode(tokens.codes[:1, :, :1])
    assert one.shape == (1, 1, model.hop_length) and bool(torch.isfinite(one).all())


def test_wavtokenizer_trains_with_kmeans_init() -> None:
    model = anytok.create_model("wavtokenizer_24khz_40hz", tiny=True).train()
    assert not bool(model.quantizer.initted)
    audio = torch.rand(2, 1, 12 * model.hop_length) - 0.5
    out = model(audio)
    assert bool(model.quantizer.initted)
    ((out.reconstruction - audio).abs().mean() + out.losses["quantizer"]).backward()
    assert model.encoder.model[0].conv.conv.parametrizations.weight.original1.grad.abs().sum() > 0


def test_wavtokenizer_full_size_parts_match_references() -> None:
    """wavtokenizer_24khz_40hz at full size: its encoder loads EnCodec's SEANetEncoder built
    with the official arguments (ratios [6, 5, 5, 4], 512-d) and matches it; its backbone
    sizes (without the attention stage, which vocos lacks) and head match vocos's."""
    model = anytok.create_model("wavtokenizer_24khz_40hz").eval()
    ref_encoder, ours_encoder = encodec_encoder_pair([6, 5, 5, 4], dimension=512, n_filters=32)
    model.encoder.load_state_dict(ours_encoder.state_dict(), strict=True)
    audio = torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(6)) * 0.3
    with torch.no_grad():
        latent = model.encoder(audio)
        assert float((latent - ref_encoder(audio)).abs().max()) < TOL
    ref_b, ref_h, ours_b, ours_h = vocos_pair(
        backbone=dict(
            input_channels=512,
            dim=768,
            intermediate_dim=2304,
            num_layers=12,
            adanorm_num_embeddings=4,
        ),
        head=dict(dim=768, n_fft=2400, hop_length=600, padding="same"),
    )
    model.head.load_state_dict(ours_h.state_dict(), strict=True)
    without_attention = {k: v for k, v in model.backbone.state_dict().items() if "pos_net" not in k}
    assert {k: v.shape for k, v in without_attention.items()} == {
        k: v.shape for k, v in ours_b.state_dict().items()
    }
    with torch.no_grad():
        expected = ref_h(ref_b(latent, bandwidth_id=torch.tensor([0])))
        got = model.head(ours_b(latent, condition_id=0))
    assert got.shape == expected.shape == (1, 24000)
    assert float((got - expected).abs().max()) < TOL * max(1.0, float(expected.abs().max()))


# --------------------------------------------------------------------------- transformers oracle


def _randomize_wavtokenizer(reference: nn.Module) -> None:
    """Random codebook, AdaLayerNorm and ConvNeXt scales (transformers starts them at
    zeros / ones / 1e-6, which would hide mistakes)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("codebook.embed"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif name.endswith(("norm.scale.weight", "norm.shift.weight", ".gamma")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5 + 0.5)


def _checked_transformers_reference(name: str, ratios: list[int]) -> nn.Module:
    """transformers' WavTokenizerModel (the swiss-ai release's layout) at a registered size,
    attention stage included, checked against ``name`` converted and loaded strictly: same
    codes and audio. Returns the reference."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WavTokenizerConfig(upsampling_ratios=ratios)
    reference = transformers.WavTokenizerModel(config).eval()
    _randomize_wavtokenizer(reference)
    hop = reference.hop_length
    # a ragged last hop: the reference encodes raw audio (its convolutions reflect-pad the
    # last window; zero-padding to whole hops first changed the last 4 of 41 frames)
    audio = torch.randn(2, 1, 12 * hop - 123) * 0.3
    with torch.no_grad():
        # codewords near this audio's latents, so that many different codes are chosen
        latent = reference.encoder_model.encoder(audio).transpose(1, 2).flatten(0, 1)
        book = reference.encoder_model.quantizer.codebook.embed
        picks = torch.randint(0, latent.shape[0], (book.shape[0],))
        book.copy_(latent[picks] + 0.1 * latent.std() * torch.randn_like(book))
    ours = anytok.create_model(name).eval()
    ours.load_state_dict(convert_wavtokenizer_state_dict(reference.state_dict()), strict=True)
    with torch.no_grad():
        codes = reference.encode(audio).audio_codes
        assert codes.unique().numel() > 10
        decoded = reference.decode(codes).audio_values
        tokens = ours.encode(audio)
        assert torch.equal(tokens.codes, codes)
        torch.testing.assert_close(ours.decode(tokens), decoded, atol=2e-5, rtol=1e-4)
    return reference


@pytest.mark.parametrize(
    ("name", "ratios"),
    [("wavtokenizer_24khz_40hz", [6, 5, 5, 4]), ("wavtokenizer_24khz_75hz", [8, 5, 4, 2])],
)
def test_wavtokenizer_matches_transformers_full_model(name: str, ratios: list[int]) -> None:
    _checked_transformers_reference(name, ratios)


def test_wavtokenizer_large_unify_tag_imports_the_hub_file(tmp_path, monkeypatch) -> None:
    """``anytok.load("wavtokenizer_24khz_40hz.large_unify")`` converts the transformers-format
    file found in the Hugging Face cache."""
    reference = _checked_transformers_reference("wavtokenizer_24khz_40hz", [6, 5, 5, 4])
    repo = "swiss-ai/wavtokenizer-large-unify-40token"
    put_in_hub_cache(tmp_path, repo, reference.state_dict(), monkeypatch)
    loaded = anytok.load("wavtokenizer_24khz_40hz.large_unify")
    assert loaded.registry_name == "wavtokenizer_24khz_40hz.large_unify"
    audio = torch.randn(1, 1, 9 * 600) * 0.3
    with torch.no_grad():
        assert torch.equal(loaded.encode(audio).codes, reference.encode(audio).audio_codes)


def test_wavtokenizer_transformers_layout_with_old_weight_norm() -> None:
    """The same file saved with old-style weight norm (weight_g / weight_v) converts the same."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WavTokenizerConfig(
        upsampling_ratios=[4, 2],
        num_filters=4,
        hidden_size=8,
        codebook_dim=8,
        codebook_size=32,
        num_lstm_layers=1,
        decoder_hidden_size=32,
        decoder_intermediate_size=64,
        decoder_num_layers=1,
    )
    reference = transformers.WavTokenizerModel(config).eval()
    state = reference.state_dict()
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }
    new, converted = convert_wavtokenizer_state_dict(state), convert_wavtokenizer_state_dict(old)
    assert new.keys() == converted.keys()
    assert all(torch.equal(new[k], converted[k]) for k in new)
    with pytest.raises(KeyError, match="encoder_model.extra"):
        convert_wavtokenizer_state_dict({**state, "encoder_model.extra": torch.zeros(1)})
