"""Regression tests from an audit of the training side: validation must not steer training,
recipe weights that would be ignored are errors, the discriminator never sees the padding
the reconstruction terms ignore, and the MS-STFT discriminator is EnCodec's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anytok.data.synthetic import make_dataset
from anytok.train import RecipeError, load_recipe, scalar_history, train
from anytok.train import loop as train_loop

ROOT = Path(__file__).resolve().parents[1]
SEANET = ROOT / "recipes/audio/seanet_fsq_24khz_tiny.yaml"
TADICODEC = ROOT / "recipes/audio/tadicodec_tiny.yaml"  # a diffusion decoder: draws noise


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(data: Path, steps: int) -> list[str]:
    return [
        f"data.train={data}",
        f"train.steps={steps}",
        "train.batch_size=2",
        "log.every=1",
        "log.samples_every=0",
        "log.progress=false",
        "checkpoint.every=0",
        "checkpoint.final=false",
    ]


def test_validation_and_samples_do_not_change_the_training_run(tmp_path: Path) -> None:
    # A diffusion decoder's validation loss draws times and noise. They used to come from the
    # training RNG, so log.val_every changed the run (and a run stopped at a validation step,
    # which skips it, did not resume bit for bit).
    data = tmp_path / "data"
    make_dataset("audio", data, 10, seconds=0.3)
    common = [*quiet(data, 3), "data.val_fraction=0.3", "log.val_batches=1"]
    train(TADICODEC, tmp_path / "plain", overrides=[*common, "log.val_every=0"], device="cpu")
    train(
        TADICODEC,
        tmp_path / "validated",
        overrides=[*common, "log.val_every=1", "log.samples_every=1", "log.num_samples=1"],
        device="cpu",
    )
    assert scalar_history(tmp_path / "validated", "val/diffusion")  # it did validate
    for key in ("loss/total", "loss/diffusion", "grad_norm/generator"):
        plain = scalar_history(tmp_path / "plain", key)
        validated = scalar_history(tmp_path / "validated", key)
        assert len(plain) == 3 and validated == plain, key


def test_a_misspelled_aux_loss_name_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset("audio", data, 6, seconds=0.2)
    overrides = [*quiet(data, 1), "log.val_every=0", "loss.aux={quantiser: 2.0}"]
    with pytest.raises(RecipeError, match=r"loss\.aux: quantiser .*\(quantizer\)"):
        train(SEANET, tmp_path / "run", overrides=overrides, device="cpu")


@pytest.mark.parametrize("term", ["adversarial", "feature_matching"])
def test_a_gan_weight_without_a_discriminator_is_an_error(term: str) -> None:
    base = ["data.train=/data", "discriminator.networks=[]", "loss.adversarial=0"]
    base.append("loss.feature_matching=0")
    load_recipe(SEANET, base)  # no GAN at all: fine
    with pytest.raises(RecipeError, match=f"loss.{term}: needs a discriminator"):
        load_recipe(SEANET, [*base, f"loss.{term}=1.0"])


def test_the_discriminator_never_sees_the_padding(tmp_path: Path, monkeypatch) -> None:
    # Short files (0.05 s) batched with long ones (0.1 s segments): the short items are half
    # padding. The reconstruction terms ignore what the model puts there; the discriminator
    # used to see it (real items hold zeros there), so it could tell fakes by their padding
    # and the generator was trained on it.
    data = tmp_path / "data"
    make_dataset("audio", data / "short", 3, seconds=0.05, seed=1)
    make_dataset("audio", data / "long", 3, seconds=0.3, seed=2)
    seen: list[torch.Tensor] = []
    build = train_loop.build_discriminator

    def recording_build(*args, **kwargs):
        disc = build(*args, **kwargs)
        disc.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
        return disc

    monkeypatch.setattr(train_loop, "build_discriminator", recording_build)
    overrides = [
        *quiet(data, 2),
        "train.batch_size=6",
        "data.val_fraction=0",
        "log.val_every=0",
        "discriminator.start_step=0",
    ]
    train(SEANET, tmp_path / "run", overrides=overrides, device="cpu")
    # per step: the fake (generator loss), the real (feature matching), real + fake (D update)
    assert len(seen) == 6
    half = round(0.05 * 24000)
    for fake, real, both in zip(seen[0::3], seen[1::3], seen[2::3]):
        assert torch.equal(both, torch.cat([real, fake]))
        padded = real[..., half:].abs().flatten(1).amax(dim=1) == 0
        assert padded.sum() == 3  # the short items
        assert fake[~padded, :, half:].abs().amax() > 0  # long items keep their tails
        assert torch.equal(fake[padded, :, half:], torch.zeros_like(fake[padded, :, half:]))
        assert fake[padded, :, :half].abs().amax() > 0


def test_ms_stft_discriminator_is_encodecs() -> None:
    encodec = pytest.importorskip("encodec.msstftd")
    from anytok.decoders.gan import MultiScaleSTFTDiscriminator

    n_ffts = [1024, 2048, 512, 256, 128]
    torch.manual_seed(0)
    ref = encodec.MultiScaleSTFTDiscriminator(
        filters=4,
        in_channels=2,
        n_ffts=n_ffts,
        hop_lengths=[n // 4 for n in n_ffts],
        win_lengths=n_ffts,
    )
    ours = MultiScaleSTFTDiscriminator(channels=2, n_ffts=n_ffts, filters=4)
    for theirs, mine in zip(ref.discriminators, ours.discriminators):
        for a, b in zip([*theirs.convs, theirs.conv_post], [*mine.convs, mine.post]):
            weight = a.conv.weight.detach()  # EnCodec's first conv has no weight norm
            with torch.no_grad():
                b.parametrizations.weight.original0.copy_(
                    weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                )
                b.parametrizations.weight.original1.copy_(weight)
                b.bias.copy_(a.conv.bias)
    audio = 0.3 * torch.randn(2, 2, 6000)
    logits, features = ref(audio)
    out = ours(audio)
    for want, got in zip(logits, out.logits, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for want_maps, got_maps in zip(features, out.features, strict=True):
        for want, got in zip(want_maps, got_maps, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
