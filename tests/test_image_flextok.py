"""FlexTok (``flextok_*``): causal registers, nested dropout, decoding from any prefix."""

from __future__ import annotations

import itertools

import pytest
import torch

import anytok
from anytok.codecs.image.flextok import FlexTok
from anytok.registry import get_arch
from anytok.tokens import Tokens


def tiny(**overrides) -> FlexTok:
    return anytok.create_model("flextok_d12_d12", tiny=True, seed=0, **overrides).eval()


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


def test_published_sizes() -> None:
    big = get_arch("flextok_d18_d28").config()
    assert (big["encoder_depth"], big["encoder_dim"]) == (18, 1152)
    assert (big["decoder_depth"], big["decoder_dim"]) == (28, 1792)
    small = get_arch("flextok_d12_d12").config()
    assert (small["encoder_dim"], small["decoder_dim"]) == (768, 768)
    for config in (big, small):
        assert config["num_registers"] == 256 and config["patch_size"] == 16
        assert config["quantizer"] == {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
        assert config["sample_steps"] == 25


def test_spec_is_a_1d_sequence_of_fsq_codes() -> None:
    model = tiny()
    spec = model.spec
    assert spec.layout == ("sequence",)
    assert spec.codebook_sizes == (125,)
    assert spec.resize == "cover_crop" and spec.resolution == (32, 32)
    with torch.inference_mode():
        tokens = model.encode(images())
    assert tokens.codes.shape == (2, 1, 8)
    assert tokens.codes.min() >= 0 and tokens.codes.max() < 125


def test_registers_are_causal_so_prefixes_are_self_contained() -> None:
    model = tiny()
    x = images(seed=1)
    with torch.inference_mode():
        full = model.encode(x).codes
        for k in (1, 3, 8):
            assert torch.equal(model.encode(x, num_tokens=k).codes, full[..., :k])
        registers, _ = model.encoder(x)
        with torch.no_grad():  # later registers change: earlier outputs must not
            model.encoder.registers[4:].add_(1.0)
        changed, _ = model.encoder(x)
    assert torch.allclose(changed[:, :4], registers[:, :4], atol=1e-6)
    assert not torch.allclose(changed[:, 4:], registers[:, 4:])
    mask = model.encoder.attention_mask(3, torch.device("cpu"))[0]
    assert mask[:3, :3].all() and not mask[:3, 3:].any()  # patches never see registers
    assert torch.equal(mask[3:, 3:], torch.ones(8, 8, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="num_tokens"):
        model.encode(x, num_tokens=9)


def _record_cond_masks(model: FlexTok, monkeypatch) -> list:
    seen: list = []
    original = model.decoder.loss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cond_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.decoder, "loss", spy)
    return seen


def test_nested_dropout_masks_register_tails_in_training_only(monkeypatch) -> None:
    model = tiny()
    seen = _record_cond_masks(model, monkeypatch)
    x = images(batch=8, seed=2)
    model.train()
    torch.manual_seed(0)
    for _ in range(4):
        model(x)
    kept = torch.cat([mask.sum(dim=1) for mask in seen])
    for mask in seen:  # every row is a prefix: True then False
        assert torch.equal(mask, mask.cummin(dim=1).values)
    assert set(kept.tolist()) <= {1, 2, 4, 8} and len(set(kept.tolist())) >= 3
    seen.clear()
    model.eval()
    with torch.inference_mode():
        model(x)
    assert seen == [None]
    seen.clear()
    no_dropout = tiny(nested_dropout=None).train()
    seen = _record_cond_masks(no_dropout, monkeypatch)
    no_dropout(x)
    assert seen == [None]


def test_forward_losses_and_deterministic_evaluation() -> None:
    model = tiny().train()
    x = images(seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # adaLN-Zero: the condition's path opens after the first update
        optimizer.zero_grad()
        out = model(x)
        (out.losses["diffusion"] + out.losses["quantizer"]).backward()
        optimizer.step()
    assert set(out.losses) == {"diffusion", "quantizer"}
    assert out.reconstruction.shape == x.shape
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.eval()
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert torch.equal(first.reconstruction, second.reconstruction)
    assert torch.equal(first.losses["diffusion"], second.losses["diffusion"])


def test_decode_any_prefix_to_full_size_with_seeded_sampling() -> None:
    model = tiny()
    with torch.inference_mode():
        codes = model.encode(images(seed=4)).codes
        for k in (1, 2, 4, 8):
            out = model.decode(codes[..., :k])
            assert out.shape == (2, 3, 32, 32)
            assert out.abs().max() <= 1.0 and torch.isfinite(out).all()
        a = model.decode(codes)
        torch.manual_seed(99)  # the global RNG plays no part
        b = model.decode(codes)
        c = model.decode(codes, seed=1)
        d = model.decode(codes, seed=1)
        bigger = model.decode(codes, size=(48, 32), steps=2)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.allclose(a, c)
    assert bigger.shape == (2, 3, 48, 32)


def test_decode_tokens_with_lengths_equals_decoding_each_prefix() -> None:
    model = tiny()
    with torch.inference_mode():
        codes = model.encode(images(batch=1, seed=5)).codes
        tokens = Tokens(codes=codes, spec=model.spec, lengths=torch.tensor([3]))
        assert torch.allclose(model.decode(tokens), model.decode(codes[..., :3]), atol=1e-5)


def test_a_batch_decodes_each_item_as_it_decodes_alone() -> None:
    """Seeded noise is shared by the batch, and shorter prefixes are masked: an item's image
    does not depend on what else is in its batch."""
    model = tiny()
    torch.manual_seed(0)
    with torch.inference_mode():
        for p in model.decoder.parameters():  # open the zero-initialised adaLN gates
            if p.ndim == 2 and p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.05)
        codes = model.encode(images(batch=3, seed=6)).codes
        tokens = Tokens(codes=codes, spec=model.spec, lengths=torch.tensor([8, 2, 5]))
        batch = model.decode(tokens, seed=3)
        for i, k in enumerate((8, 2, 5)):
            alone = model.decode(codes[i : i + 1, :, :k], seed=3)
            assert torch.allclose(batch[i : i + 1], alone, atol=1e-5), i
    assert not torch.allclose(batch[1], batch[2])


def test_decode_rejects_bad_prefixes() -> None:
    model = tiny()
    codes = torch.zeros(1, 1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        model.decode(codes)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        model.decode(codes[..., :0])
    with pytest.raises(ValueError, match=r"expected codes \(batch, 1, k\)"):
        model.decode(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.decode(codes[..., :2], size=(30, 32))


def test_train_decoder_only_freezes_the_encoder() -> None:
    model = tiny(train_decoder_only=True).train()
    assert not model.encoder.training
    out = model(images(seed=6))
    out.losses["diffusion"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="nested_dropout"):
        tiny(nested_dropout="halves")
    with pytest.raises(ValueError, match="patch_size"):
        tiny(patch_size=5)
    with pytest.raises(ValueError, match="latent_perturbation"):
        tiny(latent_perturbation=2.0)


@pytest.mark.parametrize("objective", ["epsilon", "v"])
def test_ddpm_objectives_build_train_and_decode_with_their_defaults(objective: str) -> None:
    """objective="epsilon" / "v" (documented) failed to build with the flow default
    time_shift=3.0, and with time_shift=1.0 decode failed on the default "euler"."""
    model = tiny(objective=objective)
    assert model.decoder.time_shift == 1.0 and model.scheduler == "ddim"
    x = images()
    out = model.train()(x)
    assert torch.isfinite(out.losses["diffusion"])
    out.losses["diffusion"].backward()
    model.eval()
    assert model.decode(model.encode(x)).shape == x.shape
    assert model.decode(model.encode(x, num_tokens=2), scheduler="dpm++").shape == x.shape
    with pytest.raises(
        ValueError, match=f"scheduler: scheduler 'euler' does not sample the '{objective}'"
    ):
        tiny(objective=objective, scheduler="euler")
    with pytest.raises(ValueError, match="time_shift applies to objective='flow' only"):
        tiny(objective=objective, time_shift=3.0)  # set explicitly: still an error


def test_flow_defaults_and_saved_configs_are_unchanged() -> None:
    """The flow objective keeps time_shift 3.0 and "euler"; a saved config with explicit
    values builds the same decoder."""
    model = tiny()
    assert model.decoder.time_shift == 3.0 and model.scheduler == "euler"
    saved = {
        **get_arch("flextok_d12_d12").config(tiny=True),
        "time_shift": 2.0,
        "scheduler": "heun",
    }
    explicit = FlexTok(**saved)
    assert explicit.decoder.time_shift == 2.0 and explicit.scheduler == "heun"
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        tiny(scheduler="nope")


# ---------------------------------------------------------------- the prefix check


def shapes_batch(batch: int, gen: torch.Generator, size: int = 16) -> torch.Tensor:
    """Coloured backgrounds with one coloured axis-aligned rectangle: ``(b, 3, size, size)``."""
    colours = torch.rand(batch, 2, 3, 1, 1, generator=gen) * 2 - 1
    image = colours[:, 0].expand(batch, 3, size, size).clone()
    for i in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        height, width = torch.randint(size // 4, size // 2 + 1, (2,), generator=gen).tolist()
        image[i, :, top : top + height, left : left + width] = colours[i, 1]
    return image


def test_decoding_improves_with_prefix_length_after_training() -> None:
    """The issue's check: on a trained tiny model, reconstructions from prefixes of 1, 2, 4
    and 8 tokens get better (MSE does not increase) as the prefix grows."""
    torch.manual_seed(0)
    model = FlexTok(
        resolution=(16, 16),
        patch_size=4,
        num_registers=8,
        encoder_dim=64,
        encoder_depth=2,
        encoder_heads=4,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        quantizer={"name": "fsq", "levels": [5, 5, 5]},
        cond_dropout=0.0,
        time_shift=4.0,  # train mostly at high noise, where only the tokens tell the image
        sample_steps=10,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(600):
        out = model(shapes_batch(32, gen))
        optimizer.zero_grad()
        (out.losses["diffusion"] + out.losses["quantizer"]).backward()
        optimizer.step()
    model.eval()
    test = shapes_batch(64, torch.Generator().manual_seed(123))
    with torch.inference_mode():
        codes = model.encode(test).codes
        # the same seed, hence the same initial noise, for every length
        errors = [float((model.decode(codes[..., :k]) - test).pow(2).mean()) for k in (1, 2, 4, 8)]
    for shorter, longer in itertools.pairwise(errors):
        assert longer <= shorter * 1.02, errors
    assert errors[-1] < errors[0], errors


def _record_conditions(model: FlexTok, monkeypatch) -> list:
    seen: list = []
    original = model.decoder.loss

    def spy(target, cond, **kwargs):
        seen.append(cond.detach().clone())
        return original(target, cond, **kwargs)

    monkeypatch.setattr(model.decoder, "loss", spy)
    return seen


def test_latent_perturbation_replaces_tokens_seen_by_the_decoder(monkeypatch) -> None:
    model = tiny(latent_perturbation=0.5, nested_dropout=None)
    seen = _record_conditions(model, monkeypatch)
    x = images(batch=4, seed=7)
    with torch.inference_mode():
        clean_codes = model.encode(x).codes
    model.train()
    out = model(x)
    assert torch.equal(out.tokens.codes, clean_codes)  # the reported tokens are the clean ones
    clean_condition = model._condition(model.quantizer.decode(clean_codes.movedim(1, -1)))
    changed = (seen[0] - clean_condition.detach()).abs().amax(dim=-1) > 1e-6  # (b, K)
    assert 0.2 < changed.float().mean() < 0.8  # about half the tokens (some draw their own code)
    seen.clear()
    model.eval()
    with torch.inference_mode():
        model(x)
    assert torch.allclose(seen[0], clean_condition, atol=1e-6)  # evaluation is clean


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    path = tmp_path_factory.mktemp("teacher") / "dinov2"
    transformers.Dinov2Model(config).save_pretrained(path)
    return str(path)


def test_semantic_regularization_of_encoder_patches(teacher) -> None:
    model = tiny(semantic_teacher=teacher, semantic_layer=0).train()
    out = model(images(seed=8))
    assert set(out.losses) == {"diffusion", "quantizer", "semantic"}
    out.losses["semantic"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    keys = model.state_dict().keys()
    assert any("semantic.projector" in k for k in keys)
    assert not any("teacher" in k or "dinov2" in k for k in keys)
    with pytest.raises(ValueError, match="semantic_layer"):
        tiny(semantic_teacher=teacher, semantic_layer=5)


def test_repa_on_the_flow_decoder(teacher) -> None:
    model = tiny(repa={"teacher": teacher, "weight": 1.0, "layer": 0}).train()
    torch.manual_seed(0)
    with_repa = model(images(seed=9)).losses["diffusion"]
    plain = tiny().train()
    plain.load_state_dict(model.state_dict(), strict=False)  # same weights, no REPA head
    torch.manual_seed(0)
    without = plain(images(seed=9)).losses["diffusion"]
    assert float(with_repa.detach()) > float(without.detach())  # + weight * (1 - cosine)


def test_repa_is_a_training_term_only_and_logged(teacher) -> None:
    """Validation on the EMA copy (eval mode) loaded a second teacher and added REPA to
    ``diffusion``; and the ``diffusion/repa`` metric of training was dropped."""
    model = tiny(repa={"teacher": teacher, "weight": 1.0, "layer": 0}).train()
    torch.manual_seed(0)
    out = model(images(seed=9))
    assert "diffusion/repa" in out.metrics and float(out.metrics["diffusion/repa"]) > 0
    model.eval()
    model.decoder.repa.teacher._model = None  # as the EMA copy's: never loaded
    with torch.no_grad():
        torch.manual_seed(0)
        evaluated = model(images(seed=9))
        repa, model.decoder.repa = model.decoder.repa, None
        torch.manual_seed(0)
        plain = model(images(seed=9))
        model.decoder.repa = repa
    assert repa.teacher._model is None  # eval never loads the teacher
    assert "diffusion/repa" not in evaluated.metrics
    assert torch.equal(evaluated.losses["diffusion"], plain.losses["diffusion"])
