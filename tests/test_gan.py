"""Discriminators (built by name, as recipes do) and adversarial losses."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_model, save_model

from anytok.decoders.gan import (
    DISCRIMINATORS,
    CombinedDiscriminator,
    DiscriminatorOutput,
    build_discriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)

# Small settings per discriminator and an input it accepts.
CASES = {
    "mpd": ({"periods": [2, 3], "widths": [4, 8]}, (2, 1, 1000)),
    "msstft": ({"filters": 4, "n_ffts": [256, 128]}, (2, 1, 1000)),
    "mrd": ({"width": 4, "n_ffts": [256, 128]}, (2, 1, 1000)),
    "patchgan": ({"width": 8, "n_layers": 2}, (2, 3, 32, 32)),
    "patchgan3d": ({"width": 4, "n_layers": 1}, (2, 3, 5, 16, 16)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_registered_discriminator_has_a_case() -> None:
    assert set(CASES) == set(DISCRIMINATORS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_discriminator_outputs_gradients_and_safetensors(name: str, tmp_path) -> None:
    kwargs, shape = CASES[name]
    disc = build_discriminator({"name": name, **kwargs}, channels=shape[1])
    media = torch.randn(shape, requires_grad=True)
    out = disc(media)
    assert isinstance(out, DiscriminatorOutput)
    assert len(out.logits) == len(out.features) >= 1
    for logits, features in zip(out.logits, out.features):
        assert logits.shape[0] == shape[0] and torch.isfinite(logits).all()
        assert features and all(f.shape[0] == shape[0] for f in features)
    generator_loss(out.logits).backward()
    assert media.grad is not None and media.grad.abs().sum() > 0
    # Weights save and load through safetensors (no shared or view buffers in the state).
    save_model(disc, str(tmp_path / "d.safetensors"))
    other = build_discriminator({"name": name, **kwargs}, channels=shape[1])
    load_model(other, str(tmp_path / "d.safetensors"), strict=True)
    assert torch.allclose(other(media.detach()).logits[0], disc(media.detach()).logits[0])


def test_audio_discriminators_accept_stereo_and_short_segments() -> None:
    disc = build_discriminator({"name": "msstft", "filters": 4, "n_ffts": [1024]}, channels=2)
    out = disc(torch.randn(1, 2, 300))  # shorter than the FFT: zero-padded, not an error
    assert out.logits[0].shape[0] == 1


def test_combined_discriminator_concatenates() -> None:
    disc = build_discriminator(
        [{"name": "mpd", **CASES["mpd"][0]}, {"name": "msstft", **CASES["msstft"][0]}], channels=1
    )
    assert isinstance(disc, CombinedDiscriminator)
    out = disc(torch.randn(1, 1, 1000))
    assert len(out.logits) == 2 + 2


def test_build_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown discriminator 'nope'.*known: mpd"):
        build_discriminator({"name": "nope"}, channels=1)
    with pytest.raises(ValueError, match="'channels' comes from the model"):
        build_discriminator({"name": "mpd", "channels": 2}, channels=1)
    with pytest.raises(ValueError, match="no discriminator"):
        build_discriminator([], channels=1)


def test_hinge_and_least_squares_values() -> None:
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    # hinge D: mean(relu(1 - real)) + mean(relu(1 + fake)) = 0.25 + 0.5
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.75)
    # least squares D: mean((1 - real)^2) + mean(fake^2) = (1 + 0.25) / 2 + (4 + 0) / 2
    assert discriminator_loss(real, fake, "least_squares").item() == pytest.approx(2.625)
    assert generator_loss(fake, "hinge").item() == pytest.approx((3.0 + 1.0) / 2)
    assert generator_loss(fake, "least_squares").item() == pytest.approx((9.0 + 1.0) / 2)
    # The mean over sub-discriminators keeps the scale when one is duplicated.
    assert discriminator_loss(real * 2, fake * 2).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "wasserstein")


def test_feature_matching_is_relative_l1() -> None:
    real = [[torch.ones(2, 3), 10 * torch.ones(2, 3)]]
    assert feature_matching_loss(real, real).item() == 0.0
    fake = [[2 * torch.ones(2, 3), 20 * torch.ones(2, 3)]]
    # Each layer: |fake - real| / mean|real| = 1, whatever the layer's scale.
    assert feature_matching_loss(real, fake).item() == pytest.approx(1.0)
    fake_leaf = [[t.clone().requires_grad_() for t in fake[0]]]
    feature_matching_loss(real, fake_leaf).backward()
    assert all(t.grad is not None for t in fake_leaf[0])
