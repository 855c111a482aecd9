"""The Divot-style video family: tokens condition a flow decoder; decode samples."""

from __future__ import annotations

import torch

import anytok


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
