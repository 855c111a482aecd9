"""Discriminators (built by name, as recipes do) and adversarial losses."""

from __future__ import annotations

import math

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
from anytok.decoders.gan.audio import dac_input_conditioning

# Small settings per discriminator and an input it accepts.
CASES = {
    "mpd": ({"periods": [2, 3], "widths": [4, 8]}, (2, 1, 1000)),
    "msstft": ({"filters": 4, "n_ffts": [256, 128]}, (2, 1, 1000)),
    "mrd": ({"width": 4, "n_ffts": [256, 128]}, (2, 1, 1000)),
    "patchgan": ({"width": 8, "n_layers": 2}, (2, 3, 32, 32)),
    "patchgan3d": ({"width": 4, "n_layers": 1}, (2, 3, 5, 16, 16)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


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
    # DAC's MRD (the DAC and SNAC recipes) reflect-pads to match its stride: segments under
    # ~1.3k samples used to fail there with a raw padding error.
    mrd = build_discriminator(
        {"name": "mrd", "width": 4, "n_ffts": [2048, 512], "dac_compatible": True}, channels=1
    )
    for length in (1, 300, 767, 1149, 2048):
        out = mrd(torch.randn(2, 1, length))
        assert all(torch.isfinite(logits).all() for logits in out.logits), length


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


@pytest.mark.parametrize("n_layers, minimum", [(1, 6), (2, 12), (3, 24)])
def test_patchgan_names_its_minimum_input_size(n_layers: int, minimum: int) -> None:
    """Inputs under the receptive chain's minimum raised a raw conv RuntimeError; the minimum
    itself gives one logit per patch axis."""
    disc = build_discriminator({"name": "patchgan", "width": 4, "n_layers": n_layers}, channels=3)
    assert disc(torch.randn(1, 3, minimum, minimum)).logits[0].shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=rf"n_layers={n_layers} .* at least {minimum}x{minimum}"):
        disc(torch.randn(1, 3, minimum - 1, minimum + 8))
    video = build_discriminator(
        {"name": "patchgan3d", "width": 4, "n_layers": n_layers}, channels=3
    )
    assert video(torch.randn(1, 3, 1, minimum, minimum)).logits[0].shape == (1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=rf"at least 1x{minimum}x{minimum} \(frames x height"):
        video(torch.randn(1, 3, 2, minimum + 8, minimum - 1))


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


def test_sum_reduction_and_plain_feature_matching() -> None:
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    # Summed over sub-discriminators, a duplicated one doubles the loss.
    assert discriminator_loss(real * 2, fake * 2, "hinge", "sum").item() == pytest.approx(1.5)
    assert generator_loss(fake * 3, "least_squares", "sum").item() == pytest.approx(15.0)
    maps = [[torch.ones(2, 3), 10 * torch.ones(2, 3)]]
    fake_maps = [[2 * torch.ones(2, 3), 20 * torch.ones(2, 3)]]
    # Plain L1 per layer (1 and 10), then their mean or sum.
    assert feature_matching_loss(maps, fake_maps, norm="none").item() == pytest.approx(5.5)
    assert feature_matching_loss(maps, fake_maps, "sum", "none").item() == pytest.approx(11.0)
    assert feature_matching_loss(maps, fake_maps, "sum").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown reduction 'total'"):
        generator_loss(fake, "hinge", "total")
    with pytest.raises(ValueError, match="unknown feature-matching norm 'l2'"):
        feature_matching_loss(maps, fake_maps, norm="l2")


@pytest.mark.parametrize("name", ["mpd", "msstft", "mrd"])
def test_audio_feature_maps_exclude_the_logits(name: str) -> None:
    """Feature maps are the hidden activations; the logit map is only in ``logits``."""
    settings, shape = CASES[name]
    out = build_discriminator([{"name": name, **settings}], channels=1)(torch.randn(shape))
    for logits, features in zip(out.logits, out.features):
        assert logits.shape[1] == 1
        assert all(f.shape[1] > 1 for f in features)  # every hidden conv is wider than 1


def test_dac_generator_and_discriminator_losses_match_dac() -> None:
    """``reduction="sum"``, ``norm="none"`` and least squares are DAC's ``GANLoss`` exactly,
    on the same discriminator outputs (DAC's lists end with the logits)."""
    pytest.importorskip("dac")
    from audiotools import AudioSignal
    from dac.nn.loss import GANLoss

    torch.manual_seed(0)
    shapes = [[(2, 4, 7, 3), (2, 6, 5, 3), (2, 1, 5, 3)], [(2, 3, 9, 4), (2, 1, 9, 4)]]
    real = [[torch.randn(s) for s in disc] for disc in shapes]
    fake = [[torch.randn(s, requires_grad=True) for s in disc] for disc in shapes]

    def stub_discriminator(audio: torch.Tensor) -> list[list[torch.Tensor]]:
        return fake if audio.sum() > 0 else real  # the fake signal is the positive one

    ref = GANLoss(stub_discriminator)
    fake_signal = AudioSignal(torch.ones(2, 1, 8), 16000)
    real_signal = AudioSignal(-torch.ones(2, 1, 8), 16000)
    ref_gen, ref_features = ref.generator_loss(fake_signal, real_signal)
    gen = generator_loss([d[-1] for d in fake], "least_squares", "sum")
    features = feature_matching_loss([d[:-1] for d in real], [d[:-1] for d in fake], "sum", "none")
    torch.testing.assert_close(gen, ref_gen)
    torch.testing.assert_close(features, ref_features)
    ref_disc = ref.discriminator_loss(fake_signal, real_signal)
    disc = discriminator_loss([d[-1] for d in real], [d[-1] for d in fake], "least_squares", "sum")
    torch.testing.assert_close(disc, ref_disc)


def test_dac_compatible_discriminators_match_dacs() -> None:
    """``mpd`` and ``mrd`` with ``dac_compatible: true``, given DAC's discriminator weights,
    return its logits and feature maps (descript-audio-codec 1.0.0, the opt-in
    ``dac-parity`` extra)."""
    pytest.importorskip("dac")
    from dac.model.discriminator import Discriminator

    torch.manual_seed(0)
    ref = Discriminator(sample_rate=44100).eval()
    ours = build_discriminator(
        [{"name": "mpd", "dac_compatible": True}, {"name": "mrd", "dac_compatible": True}],
        channels=1,
    ).eval()
    renamed = {}
    for key, value in ref.state_dict().items():
        key = key.replace("conv_post", "post").replace(".0.weight", ".weight")
        key = key.replace(".0.bias", ".bias").replace(
            "weight_g", "parametrizations.weight.original0"
        )
        key = key.replace("weight_v", "parametrizations.weight.original1")
        index, rest = key.removeprefix("discriminators.").split(".", 1)
        family, sub = (0, int(index)) if int(index) < 5 else (1, int(index) - 5)
        renamed[f"discriminators.{family}.discriminators.{sub}.{rest}"] = value
    ours.load_state_dict(renamed, strict=True)
    for length in (16758, 4410 + 7):  # DAC's 0.38 s segment (a multiple of 2, 3, 7), odd
        audio = 0.3 * torch.randn(2, 1, length) + 0.05  # with a DC offset
        with torch.no_grad():
            want = ref(audio)
            got = ours(audio)
        assert len(got.logits) == len(want) == 8
        for fmaps, logits, features in zip(want, got.logits, got.features):
            torch.testing.assert_close(logits, fmaps[-1], rtol=1e-4, atol=1e-5)
            assert len(features) == len(fmaps) - 1
            for f, w in zip(features, fmaps[:-1]):
                torch.testing.assert_close(f, w, rtol=1e-4, atol=1e-5)


def test_hinge_nonsat_generator_is_minus_mean_logit() -> None:
    """``hinge_nonsat``: the hinge discriminator loss with the unbounded ``-mean(D(G(z)))``
    generator loss (MelGAN's and AudioCraft's code, VQGAN), which still pushes logits past 1."""
    fake = [torch.tensor([0.5, 1.5, 3.0, -0.2], requires_grad=True), torch.tensor([2.0, 4.0])]
    loss = generator_loss(fake, "hinge_nonsat")
    assert loss.item() == pytest.approx((-(0.5 + 1.5 + 3.0 - 0.2) / 4 - 3.0) / 2)
    (grad,) = torch.autograd.grad(loss, fake[0])
    torch.testing.assert_close(grad, torch.full((4,), -1 / 8))  # bounded hinge: 0 past 1
    assert generator_loss(fake, "hinge_nonsat", "sum").item() == pytest.approx(-1.2 - 3.0)
    real = [torch.tensor([2.0, 0.5])]
    fake_d = [torch.tensor([-2.0, 0.0])]
    assert discriminator_loss(real, fake_d, "hinge_nonsat").item() == pytest.approx(0.75)


def audiotools_match_stride_stft(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """descript-audiotools' ``match_stride`` STFT (DAC's MRD input), from its definition:
    reflect-pad ``(n_fft - hop) // 2`` each side plus ``ceil(t / hop) * hop - t`` on the right,
    centred Hann STFT (hop ``n_fft / 4``), the two outer frames each side dropped."""
    hop, t = n_fft // 4, audio.shape[-1]
    pad = (n_fft - hop) // 2
    padded = torch.nn.functional.pad(audio, (pad, pad + math.ceil(t / hop) * hop - t), "reflect")
    spec = torch.stft(
        padded.flatten(0, 1), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True
    )
    return spec.reshape(*audio.shape[:2], *spec.shape[-2:])[..., 2:-2]


@pytest.mark.parametrize("length", [1280, 1500, 1800, 2047, 2048, 2600])
def test_dac_compatible_mrd_stft_matches_audiotools_on_short_segments(length: int) -> None:
    """Segments DAC's MRD accepts (every ``t >= 5 n_fft / 8``) get its STFT and
    ``ceil(t / hop)`` frames, also below ``n_fft`` (zero-padding to ``n_fft`` gave 4 frames
    at t=1280, DAC 3)."""
    torch.manual_seed(0)
    disc = build_discriminator(
        {"name": "mrd", "width": 4, "n_ffts": [2048], "dac_compatible": True}, channels=1
    )
    seen = []
    disc.discriminators[0].spectrogram.register_forward_hook(lambda m, i, o: seen.append(o))
    audio = 0.3 * torch.randn(2, 1, length)
    logits = disc(audio).logits[0]
    want = audiotools_match_stride_stft(dac_input_conditioning(audio), 2048)
    got = seen[0][..., 2:-2]
    assert got.shape == want.shape and want.shape[-1] == math.ceil(length / 512)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert logits.shape[2] == math.ceil(length / 512)


def test_dac_compatible_mrd_pads_segments_audiotools_refuses() -> None:
    """Shorter segments (audiotools' reflect padding fails) are zero-padded to whole hops:
    still ``ceil(t / hop)`` frames where that leaves more samples than the side padding."""
    disc = build_discriminator(
        {"name": "mrd", "width": 4, "n_ffts": [2048], "dac_compatible": True}, channels=1
    )
    for length, frames in ((1, 2), (700, 2), (800, 2), (1025, 3), (1100, 3)):
        assert disc(torch.randn(1, 1, length)).logits[0].shape[2] == frames, length
