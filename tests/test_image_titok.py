"""TiTok: 1D tokens, two-stage training through a frozen proxy, prefix decoding."""

from __future__ import annotations

import pytest
import torch

import anytok


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def proxy_model(stage: str):
    # The tiny cnn_fsq_256 has stride 4; a TiTok with patch 4 matches its code grid.
    return anytok.create_model(
        "titok_b64",
        tiny=True,
        seed=0,
        patch_size=4,
        training_stage=stage,
        proxy_tokenizer="cnn_fsq_256",
        proxy_tiny=True,
    )


def test_one_dimensional_tokens_and_spec() -> None:
    model = anytok.create_model("titok_l32", tiny=True).eval()
    tokens = model.encode(images())
    assert tokens.codes.shape == (2, 1, 8)
    assert tokens.spec.layout == ("sequence",) and tokens.spec.resize == "cover_crop"
    with pytest.raises(ValueError, match="expects 32x32 images"):
        model.encode(torch.rand(1, 3, 64, 64))


def test_proxy_stage_distils_the_frozen_proxys_codes() -> None:
    model = proxy_model("proxy").train()
    out = model(images())
    assert "proxy" in out.losses and out.losses["proxy"] > 0
    # Cross-entropy against the proxy's own codes of the image.
    target = model.proxy.encode(images()).codes
    logits = model._proxy_logits(
        model._decode_features(model.quantizer(model._encode_latent(images())[0]).quantized, None)
    )
    manual = sum(
        torch.nn.functional.cross_entropy(lg.flatten(0, 1), target[:, i].flatten())
        for i, lg in enumerate(logits)
    ) / len(logits)
    assert torch.allclose(out.losses["proxy"], manual, rtol=1e-4)
    out.losses["proxy"].backward()
    assert any(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.proxy.parameters())  # frozen
    assert not model.proxy.training  # stays in eval (its codebook never updates)
    assert any(k.startswith("proxy.") for k in model.state_dict())  # saved: self-contained
    assert model.eval().decode(model.encode(images())).shape == (2, 3, 32, 32)


def test_pixel_stage_freezes_encoder_and_quantizer() -> None:
    model = proxy_model("pixel").train()
    out = model(images())
    assert "proxy" not in out.losses
    (out.reconstruction - images()).abs().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.to_proxy_latent.weight.grad is not None
    with pytest.raises(ValueError, match="needs a proxy_tokenizer"):
        anytok.create_model("titok_b64", tiny=True, training_stage="pixel")


def test_prefix_decoding_with_nested_dropout() -> None:
    model = anytok.create_model("titok_s128", tiny=True, nested_dropout=True).eval()
    tokens = model.encode(images())
    for n in (1, 2, 4, 8):
        assert model.decode(tokens.codes[..., :n]).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="at most 8 tokens"):
        model.decode(torch.zeros(1, 1, 9, dtype=torch.long))
    # In training the tail of the sequence is dropped at random: the output changes.
    model.train()
    torch.manual_seed(0)
    a = model(images()).reconstruction
    torch.manual_seed(1)
    b = model(images()).reconstruction
    assert not torch.allclose(a, b)


def test_a_single_item_with_lengths_decodes_its_prefix() -> None:
    """A batch of one with ``lengths`` decoded its padding too (up to 0.066 off): one
    LM-generated item rebuilt to the full shape has zeros there."""
    model = anytok.create_model("titok_l32", tiny=True, seed=0).eval()
    full = model.encode(images())
    prefix = anytok.Tokens(full.codes[:1, :, :3].contiguous(), full.spec)
    padded = anytok.Tokens(
        torch.nn.functional.pad(prefix.codes, (0, 5)), full.spec, lengths=torch.tensor([3])
    )
    assert torch.equal(model.decode(padded), model.decode(prefix))
    with pytest.raises(ValueError, match=r"decode: expected codes \(batch, 1, k\)"):
        model.decode(full.codes[:, 0])


@pytest.mark.parametrize("stage", ["proxy", "pixel"])
def test_every_trainable_parameter_gets_a_gradient(stage: str) -> None:
    """DDP (find_unused_parameters off) waits for every trainable parameter: the other
    stage's head and, in the pixel stage, the encoder's positions were trainable without a
    gradient, so 2-rank runs of titok_proxy / titok_pixel stopped at their second step."""
    model = proxy_model(stage).train()
    out = model(images())
    loss = out.losses["proxy"] if stage == "proxy" else (out.reconstruction - images()).abs().mean()
    for value in out.losses.values():
        loss = loss + 0 * value
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [], unused


def test_a_two_stage_checkpoint_does_not_need_its_proxy_path(tmp_path, monkeypatch) -> None:
    """A proxy loaded from a checkpoint folder is stored by architecture and config (its
    weights are TiTok's proxy.*): the TiTok checkpoint loads after that folder is gone and
    from another working directory (it stored the path as given)."""
    from anytok.checkpoint import save_checkpoint

    proxy_dir = tmp_path / "runs" / "proxy"
    save_checkpoint(anytok.create_model("cnn_fsq_256", tiny=True, seed=3), proxy_dir)
    monkeypatch.chdir(tmp_path)
    model = anytok.create_model(
        "titok_b64",
        tiny=True,
        seed=0,
        patch_size=4,
        training_stage="pixel",
        proxy_tokenizer="runs/proxy",
    ).eval()
    saved = save_checkpoint(model, tmp_path / "titok")
    import shutil

    shutil.rmtree(proxy_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = anytok.load(str(saved)).eval()
    assert loaded.anytok_config["proxy_tokenizer"]["architecture"] == "cnn_fsq_256"
    with torch.no_grad():
        assert torch.equal(
            loaded.decode(model.encode(images())), model.decode(model.encode(images()))
        )
