"""The vqgan family: native sizes, the seed papers' training options."""

from __future__ import annotations

from pathlib import Path

import torch

import anytok


def test_native_size_grid() -> None:
    model = anytok.create_model("vqgan", tiny=True).eval()
    assert model.spec.resize == "native" and model.downsample_factor == 4
    tokens = model.encode(torch.rand(1, 3, 48, 80) * 2 - 1)
    assert tokens.codes.shape == (1, 1, 12, 20)
    assert model.decode(tokens).shape == (1, 3, 48, 80)


def test_latent_perturbation_changes_training_decodes_only() -> None:
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    clean = anytok.create_model("vqgan", tiny=True, seed=0)
    noisy = anytok.create_model("vqgan", tiny=True, seed=0, latent_perturbation=0.5)
    noisy.load_state_dict(clean.state_dict())
    torch.manual_seed(0)
    a = clean.train()(image).reconstruction
    torch.manual_seed(0)
    b = noisy.train()(image).reconstruction
    assert not torch.allclose(a, b)
    clean.eval(), noisy.eval()
    assert torch.equal(clean(image).reconstruction, noisy(image).reconstruction)


def test_train_decoder_only_freezes_encoder_and_codebook() -> None:
    model = anytok.create_model("vqgan", tiny=True, seed=0, train_decoder_only=True).train()
    assert not model.encoder.training and not model.quantizer.training
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    (out.reconstruction.abs().mean() + sum(out.losses.values())).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.quantizer.state_dict().items())


def test_semantic_loss_with_a_random_local_teacher(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(tmp_path)
    model = anytok.create_model("vqgan", tiny=True, semantic_teacher=str(tmp_path)).train()
    out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert "semantic" in out.losses and torch.isfinite(out.losses["semantic"])
    out.losses["semantic"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert not any("teacher" in k for k in model.state_dict())
