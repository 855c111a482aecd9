"""The vqgan family: native sizes, the seed papers' training options."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize(
    ("name", "millions", "lowest_blocks"), [("vqgan", 71.75, 2), ("vqgan_f8", 69.98, 2)]
)
def test_registered_sizes_have_llamagen_attention(
    name: str, millions: float, lowest_blocks: int
) -> None:
    """LlamaGen's VQ-16 / VQ-8 (published 72 M / 70 M): self-attention after every residual
    block of the lowest resolution (2 in the encoder, 3 in the decoder) besides the middle
    block's. With the middle block's alone the network had 66.5 M."""
    from anytok.nn.resnet2d import SelfAttention2d

    model = anytok.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions
    attention = [m for m in model.encoder.modules() if isinstance(m, SelfAttention2d)]
    assert len(attention) == lowest_blocks + 1
    attention = [m for m in model.decoder.modules() if isinstance(m, SelfAttention2d)]
    assert len(attention) == lowest_blocks + 2
    # a checkpoint config written before the option (no key) keeps its network
    plain = anytok.create_model(name, level_attention=False)
    assert sum(isinstance(m, SelfAttention2d) for m in plain.encoder.modules()) == 1
