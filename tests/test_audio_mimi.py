"""Mimi against ``transformers``' ``MimiModel`` (random weights, converted), the split
residual VQ, and the causal transformer's window, blocks and stream."""

from __future__ import annotations

import pytest
import torch
from hub_cache import put_in_hub_cache
from torch import Tensor

import anytok
from anytok.codecs.audio.mimi import Mimi, convert_mimi_state_dict
from anytok.nn.causal_transformer import CausalTransformer, window_mask
from anytok.nn.streaming import streaming
from anytok.quantizers import SplitResidualVQ

transformers = pytest.importorskip("transformers")

# A small Mimi of transformers' own configuration: every kind of layer, the 2x stride convs,
# a 6-frame attention window (inputs below are longer), 1 semantic + 3 acoustic levels.
SMALL = dict(
    hidden_size=32,
    num_filters=4,
    upsampling_ratios=[4, 2],
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    sliding_window=6,
    codebook_size=16,
    codebook_dim=8,
    vector_quantization_hidden_dimension=8,
    num_quantizers=4,
    upsample_groups=32,
)
OURS_SMALL = dict(
    n_filters=4,
    ratios=[4, 2],
    dimension=32,
    transformer_layers=2,
    transformer_heads=2,
    transformer_hidden=64,
    context=6,
    n_q=4,
    bins=16,
    codebook_dim=8,
    n_levels=4,
)


def _randomize(reference: torch.nn.Module, seed: int = 0) -> None:
    """Random codebooks and layer scales (transformers initialises them to zeros / 0.01)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("embed_sum"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif name.endswith("cluster_usage"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 4 + 0.1)
            elif name.endswith("layer_scale.scale"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.1)
            elif name.endswith("layernorm.bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


def reference_and_ours(**overrides) -> tuple[torch.nn.Module, Mimi]:
    torch.manual_seed(0)
    config = transformers.MimiConfig(**{**SMALL, **overrides.pop("reference", {})})
    reference = transformers.MimiModel(config).eval()
    _randomize(reference)
    ours = Mimi(**{**OURS_SMALL, **overrides}).eval()
    ours.load_state_dict(convert_mimi_state_dict(reference.state_dict()), strict=True)
    return reference, ours


def _flat(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official checkpoint's flat layout from a transformers >= 5 state dict."""
    prefixes = {
        "encoder.encoder_seanet.layers.": "encoder.layers.",
        "encoder.encoder_transformer.": "encoder_transformer.",
        "encoder.downsample.": "downsample.",
        "decoder.upsample.": "upsample.",
        "decoder.decoder_transformer.": "decoder_transformer.",
        "decoder.decoder_seanet.layers.": "decoder.layers.",
    }
    out = {}
    for key, value in state.items():
        for nested, flat in prefixes.items():
            if key.startswith(nested):
                key = flat + key[len(nested) :]
                break
        out[key] = value
    return out


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_mimi_matches_transformers(frames: int) -> None:
    reference, ours = reference_and_ours()
    audio = torch.randn(2, 1, frames * ours.hop_length) * 0.3
    with torch.no_grad():
        latent = reference.encoder(audio).latents
        codes = reference.encode(audio).audio_codes
        decoded = reference.decode(codes).audio_values
        our_latent = ours.encoder(audio)
        tokens = ours.encode(audio)
        our_decoded = ours.decode(tokens)
    torch.testing.assert_close(our_latent, latent, atol=1e-5, rtol=1e-5)
    assert torch.equal(tokens.codes, codes)
    if frames > 5:  # the random codebooks are used, not one code everywhere
        assert all(codes[:, level].unique().numel() > 3 for level in range(4))
    torch.testing.assert_close(our_decoded, decoded, atol=1e-5, rtol=1e-4)


def test_mimi_fewer_levels_match_transformers() -> None:
    reference, ours = reference_and_ours()
    audio = torch.randn(1, 1, 9 * ours.hop_length) * 0.3
    with torch.no_grad():
        for levels in (1, 2, 4):
            codes = reference.encode(audio, num_quantizers=levels).audio_codes
            tokens = ours.encode(audio, n_levels=levels)
            assert torch.equal(tokens.codes, codes)
            assert tokens.spec.num_levels == levels
            torch.testing.assert_close(
                ours.decode(tokens), reference.decode(codes).audio_values, atol=1e-5, rtol=1e-4
            )


def test_official_flat_layout_converts_the_same() -> None:
    reference, _ = reference_and_ours()
    nested = convert_mimi_state_dict(reference.state_dict())
    flat = convert_mimi_state_dict(_flat(reference.state_dict()))
    assert nested.keys() == flat.keys()
    assert all(torch.equal(nested[k], flat[k]) for k in nested)


def test_official_checkpoint_file_converts_and_round_trips(tmp_path) -> None:
    """The documented path: a flat-layout safetensors file -> Mimi -> anytok checkpoint."""
    from safetensors.torch import load_file, save_file

    from anytok.checkpoint import load_checkpoint, save_checkpoint

    reference, _ = reference_and_ours()
    save_file(_flat(reference.state_dict()), tmp_path / "model.safetensors")
    model = anytok.create_model("mimi", **OURS_SMALL).eval()
    model.load_state_dict(convert_mimi_state_dict(load_file(tmp_path / "model.safetensors")))
    save_checkpoint(model, tmp_path / "mimi-kyutai")
    loaded = load_checkpoint(tmp_path / "mimi-kyutai").eval()
    audio = torch.randn(1, 1, 7 * model.hop_length) * 0.3
    with torch.no_grad():
        expected = reference.encode(audio).audio_codes
        assert torch.equal(loaded.encode(audio).codes, expected)


def test_registered_mimi_has_the_published_sizes(tmp_path, monkeypatch) -> None:
    """The default transformers MimiConfig is kyutai/mimi's: its weights load strictly, and
    ``anytok.load("mimi.kyutai")`` converts the Hub file found in the Hugging Face cache."""
    torch.manual_seed(0)
    reference = transformers.MimiModel(transformers.MimiConfig()).eval()
    ours = anytok.create_model("mimi").eval()
    ours.load_state_dict(convert_mimi_state_dict(reference.state_dict()), strict=True)

    # the Hub repository in the Hugging Face cache, in its flat layout (as kyutai/mimi is)
    put_in_hub_cache(tmp_path, "kyutai/mimi", _flat(reference.state_dict()), monkeypatch)
    loaded = anytok.load("mimi.kyutai")
    assert loaded.registry_name == "mimi.kyutai"
    audio = torch.randn(1, 1, 1920 * 4) * 0.3
    with torch.no_grad():
        expected = reference.encode(audio, num_quantizers=8).audio_codes
        assert torch.equal(loaded.encode(audio).codes, expected)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    assert ours.hop_length == 1920 and ours.frame_rate == 12.5
    assert ours.spec.codebook_sizes == (2048,) * 32
    assert ours.encode(torch.zeros(1, 1, 1920 * 3)).codes.shape == (1, 8, 3)
    assert ours.kbps_per_level == pytest.approx(0.1375)


def test_converter_rejects_unknown_keys() -> None:
    reference, _ = reference_and_ours()
    state = dict(reference.state_dict())
    state["quantizer.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="quantizer.extra.weight"):
        convert_mimi_state_dict(state)


# --------------------------------------------------------------------------- streaming


def test_mimi_streams_like_one_pass() -> None:
    _, ours = reference_and_ours()
    hop = ours.hop_length
    audio = torch.randn(1, 1, 23 * hop + 5) * 0.3
    with torch.no_grad():
        one_pass = ours.encode(audio)
        decoded = ours.decode(one_pass)
        generator = torch.Generator().manual_seed(1)
        with ours.stream_encoder() as stream:
            parts, start = [], 0
            while start < audio.shape[-1]:
                size = int(torch.randint(1, 3 * hop, (1,), generator=generator))
                parts.append(stream(audio[..., start : start + size]))
                start += size
            parts.append(stream.flush())
        streamed = torch.cat(parts, dim=-1)
        assert torch.equal(streamed, one_pass.codes)
        with ours.stream_decoder() as stream:
            pieces = [stream(one_pass.codes[..., i : i + 2]) for i in range(0, 24, 2)]
            pieces.append(stream.flush())
        torch.testing.assert_close(torch.cat(pieces, dim=-1), decoded, atol=1e-5, rtol=1e-4)
        long = ours.encode_long(audio, chunk_seconds=4 * hop / ours.sample_rate)
        assert torch.equal(long.codes, one_pass.codes)


def test_batch_of_different_lengths_equals_items_alone() -> None:
    _, ours = reference_and_ours()
    hop = ours.hop_length
    lengths = torch.tensor([9 * hop, 4 * hop + 3, 1])
    audio = torch.randn(3, 1, 9 * hop) * 0.3
    with torch.no_grad():
        batch = ours.encode(audio, lengths)
        decoded = ours.decode(batch)
        for i, n in enumerate(lengths.tolist()):
            alone = ours.encode(audio[i : i + 1, :, :n])
            frames = alone.codes.shape[-1]
            assert torch.equal(batch.codes[i : i + 1, :, :frames], alone.codes)
            torch.testing.assert_close(
                decoded[i : i + 1, :, : frames * hop], ours.decode(alone), atol=1e-5, rtol=1e-4
            )
            assert not decoded[i, :, frames * hop :].any()


# --------------------------------------------------------------------------- transformer


def test_window_mask() -> None:
    mask = window_mask(3, 2, 0, 5, context=2)
    assert mask.tolist() == [[False, False, True, True, False], [False, False, False, True, True]]
    assert window_mask(0, 3, 0, 3, None).tolist() == torch.ones(3, 3).tril().bool().tolist()


@pytest.mark.parametrize("context", [1, 4, None])
def test_causal_transformer_blocks_and_stream_equal_dense_pass(context: int | None) -> None:
    torch.manual_seed(0)
    dense = CausalTransformer(16, 2, 2, 32, context, block_size=10_000).eval()
    blocked = CausalTransformer(16, 2, 2, 32, context, block_size=3).eval()
    blocked.load_state_dict(dense.state_dict())
    x = torch.randn(2, 16, 23)
    with torch.no_grad():
        expected = dense(x)
        torch.testing.assert_close(blocked(x), expected, atol=1e-5, rtol=1e-5)
        with streaming(blocked) as stream:
            pieces = ((0, 1), (1, 2), (3, 0), (3, 1), (4, 5), (9, 14))  # shorter and longer
            parts = [stream(x[..., i : i + n]) for i, n in pieces]
            parts.append(stream.flush(x))
    torch.testing.assert_close(torch.cat(parts, dim=-1), expected, atol=1e-5, rtol=1e-5)


def test_causal_transformer_sees_only_its_window() -> None:
    torch.manual_seed(0)
    layer = CausalTransformer(8, 1, 2, 16, context=4).eval()
    x = torch.randn(1, 8, 12)
    with torch.no_grad():
        y = layer(x)
        changed = x.clone()
        changed[..., 6] += torch.randn(8)  # not a constant: LayerNorm would remove it
        diff = (layer(changed) - y).abs().amax(dim=1)[0]
    touched = (diff > 1e-6).nonzero().flatten().tolist()
    assert touched == [6, 7, 8, 9]  # frames 6 .. 6 + context - 1, nothing before or after


# --------------------------------------------------------------------------- quantizer


def test_split_rvq_contract_and_independence() -> None:
    torch.manual_seed(0)
    quantizer = SplitResidualVQ(12, 4, 8, num_semantic=1, codebook_dim=6).eval()
    z = torch.randn(5, 7, 12)
    out = quantizer(z)
    assert out.codes.shape == (5, 7, 4)
    torch.testing.assert_close(quantizer.decode(quantizer.encode(z)), out.quantized)
    torch.testing.assert_close(
        quantizer.decode(out.codes[..., :1]),
        quantizer.semantic_out(quantizer.semantic.decode(out.codes[..., :1])),
    )
    # the acoustic levels quantize the input itself, not what the semantic level leaves
    acoustic = quantizer.acoustic.encode(quantizer.acoustic_in(z))
    assert torch.equal(quantizer.encode(z)[..., 1:], acoustic)
    with torch.no_grad():
        quantizer.semantic.layers[0].embedding.add_(1.0)
    assert torch.equal(quantizer.encode(z)[..., 1:], acoustic)
    assert quantizer.encode(z, n_levels=2).shape == (5, 7, 2)
    with pytest.raises(ValueError, match="n_levels must be in"):
        quantizer(z, n_levels=0)


def test_split_rvq_dropout_keeps_the_semantic_level() -> None:
    torch.manual_seed(0)
    quantizer = SplitResidualVQ(8, 5, 8, num_semantic=2, quantize_dropout=True).train()
    seen = set()
    for _ in range(30):
        out, semantic = quantizer.forward_split(torch.randn(4, 8))
        used = int((out.codes[0] >= 0).sum())
        assert used >= 2 and (out.codes[:, :used] >= 0).all() and (out.codes[:, used:] == -1).all()
        assert semantic.shape == (4, 8)
        seen.add(used)
    assert seen == {2, 3, 4, 5}


def test_quantize_rate_passes_some_items_unquantized() -> None:
    torch.manual_seed(0)
    ours = Mimi(**{**OURS_SMALL, "quantize_rate": 0.5, "quantize_dropout": False}).train()
    audio = torch.randn(16, 1, 4 * ours.hop_length) * 0.3
    captured = {}
    hook = ours.decoder.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    out = ours(audio)
    hook.remove()
    quantized = ours.quantizer.decode(out.tokens.codes.movedim(1, -1)).movedim(-1, 1)
    per_item = (captured["x"] - out.latent).abs().flatten(1).amax(1) == 0
    assert 0 < int(per_item.sum()) < 16  # some items reach the decoder unquantized
    close = (captured["x"] - quantized).abs().flatten(1).amax(1) < 1e-4
    assert bool((per_item | close).all())


def test_semantic_level_is_distilled_from_a_local_speech_model(tmp_path) -> None:
    """A random WavLM at toy width as the teacher: the loss reaches the semantic level and the
    encoder, never the acoustic levels' projection, and the teacher is not saved."""
    config = transformers.WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        num_buckets=8,
    )
    torch.manual_seed(0)
    transformers.WavLMModel(config).save_pretrained(tmp_path / "wavlm")
    ours = Mimi(**{**OURS_SMALL, "semantic_teacher": str(tmp_path / "wavlm")}).train()
    audio = torch.randn(2, 1, 150 * ours.hop_length) * 0.3
    out = ours(audio)
    semantic = out.losses["semantic"]
    assert semantic.ndim == 0 and 0 < float(semantic) <= 2
    semantic.backward()
    assert ours.quantizer.semantic_in.weight.grad.abs().sum() > 0
    assert ours.encoder.seanet.model[0].conv.conv.weight.grad.abs().sum() > 0
    assert ours.quantizer.acoustic_in.weight.grad is None
    keys = ours.state_dict().keys()
    assert any(k.startswith("options.semantic.projector.") for k in keys)
    assert not any("teacher" in k or "wavlm" in k for k in keys)


def test_default_spec_lists_the_levels_encode_gives() -> None:
    """``spec`` lists every level the quantizer has (Mimi: 32); ``default_spec`` the ones
    ``encode`` gives by default (8), which ``anytok info`` and the bench's rate report."""
    from anytok.cli import _spec_details

    model = anytok.create_model("mimi", tiny=True, n_levels=2).eval()
    tokens = model.encode(0.1 * torch.randn(1, 1, 4 * model.hop_length))
    assert model.spec.num_levels > 2
    assert model.default_spec == tokens.spec and tokens.spec.num_levels == 2
    details = _spec_details(model)
    assert details["levels_by_default"] == 2
    assert details["bits_per_position_by_default"] == tokens.spec.bits_per_position
    seanet = anytok.create_model("seanet_fsq_24khz", tiny=True)
    assert seanet.default_spec == seanet.spec and "levels_by_default" not in _spec_details(seanet)
