"""The Divot-style video family: tokens condition a flow decoder; decode samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import anytok
from anytok.codecs.video.divot import DivotTokenizer
from anytok.registry import get_arch


def test_decode_sampling_arguments_and_determinism() -> None:
    model = anytok.create_model("divot", tiny=True, seed=0).eval()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    tokens = model.encode(video)
    assert tokens.codes.shape == (2, 1, 3, 8, 8)  # 1 + (5 - 1) / 2 latent frames, 16 / 2
    a = model.decode(tokens)
    assert a.shape == video.shape and torch.isfinite(a).all()
    assert torch.equal(a, model.decode(tokens))  # fixed default seed
    assert not torch.equal(a, model.decode(tokens, seed=1))
    assert not torch.equal(a, model.decode(tokens, steps=2))
    heun = model.decode(tokens, scheduler="heun", steps=2)
    guided = model.decode(tokens, guidance_scale=3.0)
    assert heun.shape == guided.shape == video.shape


def test_a_batch_decodes_each_item_as_it_decodes_alone() -> None:
    model = anytok.create_model("divot", tiny=True, seed=0).eval()
    torch.manual_seed(0)
    for p in model.decoder.parameters():  # open the zero-initialised adaLN gates
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    tokens = model.encode(torch.rand(3, 3, 5, 16, 16) * 2 - 1)
    batch = model.decode(tokens, steps=3)
    for i in range(3):
        alone = model.decode(tokens.codes[i : i + 1], steps=3)
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-5), i
    assert not torch.allclose(batch[0], batch[1])


def test_flow_loss_reaches_the_encoder_and_reconstruction_has_the_input_shape() -> None:
    model = anytok.create_model("divot", tiny=True, seed=0).train()
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1  # 4 frames: padded to 5 inside
    out = model(video)
    assert out.reconstruction.shape == video.shape
    assert set(out.losses) == {"diffusion", "quantizer"}
    out.losses["diffusion"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_codes_past_an_items_length_do_not_change_its_frames() -> None:
    """The flow decoder attends over the whole clip: each item samples from its valid latent
    frames only (as it decodes alone), and its later frames repeat its last one."""
    model = anytok.create_model("divot", tiny=True, seed=0).eval()
    torch.manual_seed(0)
    for p in model.decoder.parameters():  # open the zero-initialised adaLN gates
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    tokens = model.encode(video, lengths=torch.tensor([9, 3]))
    assert tokens.lengths.tolist() == [5, 2]
    batch = model.decode(tokens, steps=2)
    alone = model.decode(tokens.codes[1:, :, :2], steps=2)  # 3 frames
    assert torch.allclose(batch[1, :, :3], alone[0], atol=1e-5)
    assert torch.equal(batch[1, :, 3:], batch[1, :, 2:3].expand(-1, 6, -1, -1))
    noisy = tokens.codes.clone()
    noisy[1, :, 2:] = torch.randint_like(noisy[1, :, 2:], 0, 5)
    again = model.decode(anytok.Tokens(noisy, tokens.spec, lengths=tokens.lengths), steps=2)
    assert torch.equal(again[1], batch[1])
    assert torch.allclose(batch[0], model.decode(tokens.codes[:1], steps=2)[0], atol=1e-5)


def narrow_registered_divot(**overrides) -> DivotTokenizer:
    """The registered divot's strides (encoder 8, decoder patches 16), narrowed for the CPU."""
    small = {"channels": 4, "num_res_blocks": 1, "decoder": {"dim": 32, "depth": 1, "heads": 4}}
    return anytok.create_model("divot", seed=0, **{**small, **overrides}).eval()


def test_inputs_must_fill_whole_decoder_patches() -> None:
    """Sizes that are multiples of the encoder's stride but not of the decoder's patch were
    accepted: 40x40 under the registered config decoded to 32x32, and forward died in einops.
    The input stride is now lcm(encoder stride, patch_size); codes keep the encoder's."""
    from anytok.pipeline import input_format

    model = narrow_registered_divot()
    with pytest.raises(ValueError, match=r"H and W multiples of 16, got \(1, 3, 5, 40, 40\)"):
        model.encode(torch.rand(1, 3, 5, 40, 40) * 2 - 1)
    assert (model.code_factor, model.patch_size, model.spatial_factor) == (8, 16, 16)
    assert input_format(model).multiple == 16  # the pipeline crops native sizes to it
    video = torch.rand(1, 3, 5, 48, 32) * 2 - 1
    tokens = model.encode(video)
    assert tokens.codes.shape == (1, 1, 2, 6, 4)  # 8 pixels per code
    assert model.decode(tokens, steps=1).shape == video.shape
    with pytest.raises(ValueError, match=r"code grid \(5, 4\) must be multiples of 2"):
        model.decode(tokens.codes[..., :5, :], steps=1)

    tiny = anytok.create_model("divot", tiny=True, seed=0)
    assert (tiny.code_factor, tiny.patch_size, tiny.spatial_factor) == (2, 4, 4)
    odd = torch.rand(1, 3, 3, 18, 18) * 2 - 1
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny.encode(odd)
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny.train()(odd)
    video = torch.rand(1, 3, 3, 20, 12) * 2 - 1
    assert tiny.train()(video).reconstruction.shape == video.shape
    tokens = tiny.eval().encode(video)
    assert tokens.codes.shape[-2:] == (10, 6)
    assert tiny.decode(tokens, steps=1).shape == video.shape


def test_constructor_checks_strides_and_resolution() -> None:
    with pytest.raises(ValueError, match="resolution \\(40, 40\\) must be multiples of 16"):
        narrow_registered_divot(resolution=[40, 40])
    with pytest.raises(ValueError, match="patch_size 12 and the encoder's spatial factor 8"):
        narrow_registered_divot(patch_size=12)


@pytest.mark.parametrize("objective", ["epsilon", "v"])
def test_ddpm_objectives_build_train_and_decode_with_their_defaults(objective: str) -> None:
    """objective="epsilon" / "v" (documented) failed to build with the injected flow
    time_shift of 3.0, and with time_shift=1.0 decode failed on the default "euler"."""
    decoder = {"dim": 32, "depth": 2, "heads": 4, "objective": objective}
    model = anytok.create_model("divot", tiny=True, seed=0, decoder=decoder)
    assert model.decoder.time_shift == 1.0 and model.sample_scheduler == "ddim"
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    out = model.train()(video)
    assert torch.isfinite(out.losses["diffusion"]) and out.reconstruction.shape == video.shape
    out.losses["diffusion"].backward()
    model.eval()
    assert model.decode(model.encode(video), steps=2).shape == video.shape
    with pytest.raises(
        ValueError, match=f"sample_scheduler: scheduler 'euler' does not sample the '{objective}'"
    ):
        anytok.create_model("divot", tiny=True, decoder=decoder, sample_scheduler="euler")


def test_flow_defaults_and_saved_configs_are_unchanged() -> None:
    """The flow objective keeps time_shift 3.0 and "euler"; a saved config with explicit
    values builds the same decoder."""
    model = narrow_registered_divot()
    assert model.decoder.time_shift == 3.0 and model.sample_scheduler == "euler"
    saved = {**get_arch("divot").config(tiny=True), "sample_scheduler": "euler"}
    explicit = DivotTokenizer(**saved)
    assert explicit.decoder.time_shift == 1.0 and explicit.sample_scheduler == "euler"
    assert explicit.decoder.objective == "flow"


def tiny_teacher(path: Path) -> str:
    """A tiny random DINOv2-like teacher folder (no download), as REPA takes."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(path)
    return str(path)


def test_decoder_repa_is_refused(tmp_path: Path) -> None:
    """``decoder={"repa": ...}`` built a REPA projector that never ran (the training pass
    gives the decoder no teacher input): no gradients, and checkpoints that needed the
    teacher to load."""
    decoder = get_arch("divot").config(tiny=True)["decoder"]
    repa = {"teacher": tiny_teacher(tmp_path / "teacher"), "weight": 0.5, "layer": 0}
    with pytest.raises(ValueError, match="DivotTokenizer: decoder.repa is not supported"):
        anytok.create_model("divot", tiny=True, decoder={**decoder, "repa": repa})
    model = anytok.create_model("divot", tiny=True, decoder={**decoder, "repa": None})
    assert model.decoder.repa is None
