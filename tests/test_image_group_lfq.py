"""WeTok (``group_lfq``): group-wise LFQ codes and the noise-conditioned generative decoder."""

from __future__ import annotations

import pytest
import torch

import anytok
from anytok.codecs.base import decode_codes
from anytok.codecs.image.group_lfq import GenerativeDecoder2d, GroupLFQTokenizer
from anytok.registry import get_arch


def tiny(**overrides) -> GroupLFQTokenizer:
    return anytok.create_model("group_lfq", tiny=True, seed=0, **overrides).eval()


def images(batch: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=gen) * 2 - 1


def test_codes_are_groups_of_lfq_bits_and_any_stride_multiple_encodes() -> None:
    model = tiny()
    assert model.spec.codebook_sizes == (16, 16)  # 8 bits in 2 groups of 4
    assert model.spec.resize == "native"
    with torch.inference_mode():
        tokens = model.encode(images(2, 32, 48))
        recon = model.decode(tokens)
    assert tokens.codes.shape == (2, 2, 8, 12)
    assert tokens.codes.min() >= 0 and tokens.codes.max() < 16
    assert recon.shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(images(1, 30, 32))


def test_full_config_is_wetok_f16() -> None:
    config = get_arch("group_lfq").config()
    assert config["channel_multipliers"] == [1, 1, 2, 2, 4]  # 16x down: 256 positions at 256^2
    assert config["quantizer"] == {"name": "group_lfq", "codebook_dim": 32, "num_groups": 4}


def test_decode_is_deterministic_per_seed_and_seeds_differ() -> None:
    model = tiny()
    with torch.inference_mode():
        tokens = model.encode(images())
        torch.manual_seed(1)
        a = model.decode(tokens)
        torch.manual_seed(2)  # the global RNG plays no part outside training
        b = model.decode(tokens)
        default_seed = model.decode(tokens, seed=model.noise_seed)
        other = model.decode(tokens, seed=7)
        other_again = model.decode(tokens, seed=7)
    assert torch.equal(a, b) and torch.equal(a, default_seed)
    assert torch.equal(other, other_again)
    assert not torch.allclose(a, other)


def test_a_batch_decodes_each_item_as_it_decodes_alone() -> None:
    """Seeded noise is one draw shared by the batch (on the CPU): an item's image does not
    depend on its batch."""
    model = tiny()
    with torch.inference_mode():
        for p in model.decoder.parameters():  # the noise strengths start at zero
            if p.numel() == 1 or (p.ndim == 1 and p.abs().sum() == 0):
                p.fill_(0.5)
        tokens = model.encode(images(batch=3, seed=2))
        batch = model.decode(tokens, seed=4)
        assert not torch.allclose(batch, model.decode(tokens, seed=5))  # noise matters
        for i in range(3):
            alone = model.decode(tokens.codes[i : i + 1], seed=4)
            assert torch.allclose(batch[i : i + 1], alone, atol=1e-5), i


def test_noise_enters_only_through_the_noise_input() -> None:
    model = tiny()
    decoder = model.decoder
    with torch.no_grad():  # give the (zero-initialised) per-resolution strengths a value
        for injection in decoder.injections.values():
            injection.strength.fill_(0.5)
    with torch.inference_mode():
        latent = decode_codes(model.quantizer, model.encode(images()).codes)
        shapes = decoder.noise_shapes(*latent.shape[:1], *latent.shape[-2:])
        assert [s[1] for s in shapes] == [4, 1, 1, 1]  # input noise, then one map per scale
        gen = torch.Generator().manual_seed(3)
        noise = [torch.randn(s, generator=gen) for s in shapes]
        torch.manual_seed(0)
        first = decoder(latent, noise)
        torch.manual_seed(123)
        second = decoder(latent, noise)
        assert torch.equal(first, second)  # explicit noise: nothing else is random
        # each noise input (input channels and every resolution's map) changes the image
        for index in range(len(noise)):
            changed = [n.clone() for n in noise]
            changed[index] = torch.randn(shapes[index], generator=gen)
            assert not torch.allclose(decoder(latent, changed), first), index
        # zero noise == no noise == noise_scale 0, whatever the seed
        silent = decoder(latent, [torch.zeros(s) for s in shapes])
        assert torch.equal(decoder(latent), silent)
        tokens = model.encode(images())
        assert torch.equal(model.decode(tokens, noise_scale=0.0, seed=5), silent)
        assert torch.equal(model.decode(tokens, noise_scale=0.0, seed=6), silent)
    with pytest.raises(ValueError, match="noise must be tensors of shapes"):
        decoder(latent, noise[:-1])
    with pytest.raises(ValueError, match="noise_scale"):
        model.decode(tokens, noise_scale=-1.0)


def test_training_draws_fresh_noise_and_learns_its_strength() -> None:
    model = tiny().train()
    x = images(seed=1)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert torch.equal(a.tokens.codes, b.tokens.codes)
    assert not torch.allclose(a.reconstruction, b.reconstruction)  # a new noise sample
    loss = (a.reconstruction - x).abs().mean() + sum(a.losses.values())
    loss.backward()
    for name, injection in model.decoder.injections.items():
        assert injection.strength.grad is not None and injection.strength.grad.abs().sum() > 0, name
    model.eval()
    with torch.inference_mode():  # evaluation forwards use the fixed noise seed
        assert torch.equal(model(x).reconstruction, model(x).reconstruction)


def test_other_quantizers_plug_in_by_name() -> None:
    model = tiny(quantizer={"name": "fsq", "levels": [5, 5, 5]})
    with torch.inference_mode():
        tokens = model.encode(images())
        assert tokens.codes.shape == (2, 1, 8, 8)
        assert model.decode(tokens).shape == (2, 3, 32, 32)


def test_noise_can_be_switched_off() -> None:
    model = tiny(noise_channels=0, noise_injection=False)
    assert isinstance(model.decoder, GenerativeDecoder2d)
    assert model.decoder.noise_shapes(2, 8, 8) == []
    with torch.inference_mode():
        tokens = model.encode(images())
        assert torch.equal(model.decode(tokens, seed=1), model.decode(tokens, seed=2))


def test_train_decoder_only_freezes_encoder_and_quantizer() -> None:
    model = tiny(train_decoder_only=True).train()
    assert not model.encoder.training and not model.quantizer.training
    x = images(seed=2)
    out = model(x)
    assert float(out.losses["quantizer"]) == 0.0  # an eval-mode quantizer adds no loss
    (out.reconstruction - x).abs().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.quantizer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="latent_perturbation"):
        tiny(latent_perturbation=1.5)
    with pytest.raises(ValueError, match="noise_channels"):
        tiny(noise_channels=-1)


def test_latent_perturbation_changes_decoder_input_in_training_only() -> None:
    quiet = {"noise_channels": 0, "noise_injection": False}  # no decoder noise to confound
    model = tiny(latent_perturbation=0.5, **quiet).train()
    clean = tiny(**quiet).train()
    x = images(seed=3)
    perturbed_out, clean_out = model(x), clean(x)
    assert torch.equal(perturbed_out.tokens.codes, clean_out.tokens.codes)  # codes are clean
    assert not torch.allclose(perturbed_out.reconstruction, clean_out.reconstruction)
    perturbed_out.reconstruction.abs().mean().backward()  # still reaches the encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.eval()
    clean.eval()
    with torch.inference_mode():
        assert torch.equal(model(x).reconstruction, clean(x).reconstruction)


def test_semantic_regularization_towards_a_local_teacher(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "teacher")
    model = tiny(semantic_teacher=str(tmp_path / "teacher"), semantic_weight=2.0).train()
    out = model(images(seed=4))
    assert 0.0 < float(out.losses["semantic"].detach()) <= 4.0  # weight * (1 - cosine) in [0, 2w]
    out.losses["semantic"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # the projector is saved with the model, the frozen teacher is not
    keys = model.state_dict().keys()
    assert any("semantic.projector" in k for k in keys)
    assert not any("teacher" in k for k in keys)
    model.eval()
    with torch.inference_mode():
        assert "semantic" not in model(images(seed=4)).losses
