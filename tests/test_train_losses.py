"""Reconstruction losses, the gradient balancer, the perceptual loss from local weights, EMA
and the learning-rate schedule."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torchaudio
from host_syncs import HostSyncs
from omegaconf import OmegaConf
from safetensors.torch import save_file

from anytok.train.ema import make_ema, set_ema_count, update_ema
from anytok.train.loop import _scheduler
from anytok.train.losses import (
    EnCodecSpectralLoss,
    LossBalancer,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    ReconstructionLoss,
    VGGPerceptualLoss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tone(freq: float, n: int = 4800, rate: int = 24000) -> torch.Tensor:
    t = torch.arange(n) / rate
    return (0.5 * torch.sin(2 * math.pi * freq * t)).view(1, 1, n)


def test_spectral_losses_zero_on_identity_and_rank_distance() -> None:
    target = tone(440)
    for loss in (
        MultiResolutionSTFTLoss((512, 256)),
        MultiScaleMelLoss(24000, (256, 512), (20, 40)),
        EnCodecSpectralLoss(24000, (256, 512), n_mels=32),
    ):
        assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
        near, far = loss(tone(460), target), loss(tone(3000), target)
        assert 0 < near < far
    short = torch.randn(2, 1, 100)  # shorter than the FFT: padded, not an error
    assert torch.isfinite(MultiResolutionSTFTLoss((2048,))(short, short.flip(-1)))


def parallel_wavegan_stft_loss(
    x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...]
) -> torch.Tensor:
    """Parallel WaveGAN's multi-resolution STFT loss, from its definition (``(b, c, t)``):
    magnitudes ``sqrt(max(re^2 + im^2, 1e-7))`` of a centred Hann STFT (hop size / 4),
    spectral convergence ``||Y - X||_F / ||Y||_F`` plus ``mean |log Y - log X|``, averaged
    over the FFT sizes."""
    total = torch.zeros(())
    for n in sizes:
        mags = []
        for audio in (x, y):
            s = torch.stft(
                audio.flatten(0, 1), n, n // 4, n, torch.hann_window(n), return_complex=True
            )
            mags.append((s.real**2 + s.imag**2).clamp(min=1e-7).sqrt())
        x_mag, y_mag = mags
        convergence = torch.linalg.norm(y_mag - x_mag) / torch.linalg.norm(y_mag)
        total = total + convergence + (y_mag.log() - x_mag.log()).abs().mean()
    return total / len(sizes)


@pytest.mark.parametrize("noise", [0.0, 1e-5, 1e-4, 1e-2])
def test_stft_loss_floors_the_power_as_parallel_wavegan(noise: float) -> None:
    """Faint noise over digital silence: the power floor 1e-7 (a magnitude floor of 3.2e-4)
    keeps the log term from measuring noise down to a magnitude of 1e-7, where it dominated
    (3.3 instead of Parallel WaveGAN's 0.007 at noise 1e-5)."""
    torch.manual_seed(0)
    sizes = (2048, 512, 128)
    target = 0.1 * torch.randn(2, 1, 12000)
    target[..., 6000:] = 0.0  # a silent second half
    reconstruction = (target + noise * torch.randn_like(target)).requires_grad_()
    ours = MultiResolutionSTFTLoss(sizes)(reconstruction, target)
    want = parallel_wavegan_stft_loss(reconstruction, target, sizes)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, reconstruction)
    (want_grad,) = torch.autograd.grad(want, reconstruction)
    torch.testing.assert_close(grad, want_grad, rtol=1e-3, atol=1e-3 * want_grad.abs().max().item())
    if noise == 1e-5:
        assert ours.item() < 0.02


def slaney_filterbank(rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Slaney's mel filterbank from its definition: ``(n_mels, n_fft // 2 + 1)``, fp64.

    Mel is linear (200/3 Hz per mel) below 1 kHz and logarithmic above (27 mels per factor
    6.4); triangles between mel-spaced edges from 0 Hz to Nyquist, each scaled to unit area
    by ``2 / (right - left)``.
    """
    step, knee_mel, log_step = 200 / 3, 15.0, math.log(6.4) / 27

    def to_mel(hz: torch.Tensor) -> torch.Tensor:
        log_part = knee_mel + torch.log(hz.clamp_min(1000) / 1000) / log_step
        return torch.where(hz < 1000, hz / step, log_part)

    def to_hz(mel: torch.Tensor) -> torch.Tensor:
        return torch.where(
            mel < knee_mel, mel * step, 1000 * torch.exp(log_step * (mel - knee_mel))
        )

    nyquist = torch.tensor(rate / 2, dtype=torch.float64)
    edges = to_hz(torch.linspace(0, to_mel(nyquist).item(), n_mels + 2, dtype=torch.float64))
    bins = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    return torch.minimum(rising, falling).clamp_min(0) * 2 / (right - left)


def test_mel_scales_follow_their_definitions_and_reductions() -> None:
    slaney = MultiScaleMelLoss(44100, mel_scale="slaney")
    for window, mel in zip(slaney.windows, slaney.mels):
        fb = mel.mel_scale.fb.T.double()  # torchaudio keeps (freqs, mels)
        want = slaney_filterbank(44100, window, fb.shape[0])
        torch.testing.assert_close(fb, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    htk = MultiScaleMelLoss(44100)
    assert not torch.allclose(htk.mels[-1].mel_scale.fb, slaney.mels[-1].mel_scale.fb)
    x, y = torch.randn(2, 1, 4410), torch.randn(2, 1, 4410)
    summed = MultiScaleMelLoss(44100, mel_scale="slaney", reduction="sum")
    torch.testing.assert_close(summed(x, y), slaney(x, y) * len(slaney.windows))
    stft_mean, stft_sum = (
        MultiResolutionSTFTLoss((256, 128)),
        MultiResolutionSTFTLoss((256, 128), reduction="sum"),
    )
    torch.testing.assert_close(stft_sum(x, y), 2 * stft_mean(x, y))
    with pytest.raises(ValueError, match="mel_scale must be one of .*'mels'"):
        MultiScaleMelLoss(44100, mel_scale="mels")
    with pytest.raises(ValueError, match="reduction must be one of"):
        MultiResolutionSTFTLoss(reduction="max")
    with pytest.raises(ValueError, match="2 windows and 1 bin counts"):
        MultiScaleMelLoss(44100, (256, 512), (20,))


def test_one_window_mel_loss_with_vocos_floor_is_vocos_mel_loss() -> None:
    """WavTokenizer's recipe: one 1024-point, 100-bin mel with a 1e-7 floor is Vocos's
    ``MelSpecReconstructionLoss`` divided by ln(10) (ours takes log10, theirs ln)."""
    from vocos.loss import MelSpecReconstructionLoss

    ref = MelSpecReconstructionLoss(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100)
    ours = MultiScaleMelLoss(24000, (1024,), (100,), floor=1e-7)
    torch.manual_seed(5)
    target = 0.1 * torch.randn(2, 1, 7200)
    target[..., :2400] = 0.0  # silence: where the floor decides
    recon = (target + 0.01 * torch.randn_like(target)).requires_grad_()
    want = ref(recon.squeeze(1), target.squeeze(1)) / math.log(10)
    got = ours(recon, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    (want_grad,) = torch.autograd.grad(want, recon)
    (got_grad,) = torch.autograd.grad(got, recon)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(MultiScaleMelLoss(24000, (1024,), (100,))(recon, target), got)
    with pytest.raises(ValueError, match="mel floor must be positive"):
        MultiScaleMelLoss(24000, floor=0.0)


@pytest.mark.parametrize("rate", [44100, 24000])
def test_slaney_summed_mel_loss_is_dacs(rate: int) -> None:
    """DAC's ``MelSpectrogramLoss`` with its training configuration (the opt-in
    ``dac-parity`` extra): same value and gradient."""
    pytest.importorskip("dac")
    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss

    windows, bins = (32, 64, 128, 256, 512, 1024, 2048), (5, 10, 20, 40, 80, 160, 320)
    ours = MultiScaleMelLoss(rate, windows, bins, mel_scale="slaney", reduction="sum")
    ref = MelSpectrogramLoss(
        n_mels=list(bins),
        window_lengths=list(windows),
        mag_weight=0.0,
        pow=1.0,
        clamp_eps=1e-5,
        mel_fmin=[0.0] * len(bins),
        mel_fmax=[None] * len(bins),
    )
    torch.manual_seed(rate)
    target = 0.1 * torch.randn(2, 1, rate // 3)
    recon = (target + 0.05 * torch.randn_like(target)).requires_grad_()
    want = ref(AudioSignal(recon, rate), AudioSignal(target, rate))
    got = ours(recon, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (want_grad,) = torch.autograd.grad(want, recon)
    (got_grad,) = torch.autograd.grad(got, recon)
    assert (got_grad - want_grad).norm() <= 2e-3 * want_grad.norm()


def test_encodec_spectral_loss_from_its_definition() -> None:
    """One window, recomputed from the definition: reflect padding by (w - hop) / 2, zeros
    to whole frames, a normalised Hann STFT, HTK mel power, then L1 + alpha * log10 MSE."""
    window, rate = 256, 16000
    hop, pad = window // 4, (window - window // 4) // 2
    torch.manual_seed(3)
    x, y = 0.2 * torch.randn(2, 1, 3001), 0.2 * torch.randn(2, 1, 3001)

    def mel_power(audio: torch.Tensor) -> torch.Tensor:
        audio = torch.nn.functional.pad(audio, (pad, pad), mode="reflect")
        frames = math.ceil((audio.shape[-1] - window) / hop) + 1
        audio = torch.nn.functional.pad(audio, (0, (frames - 1) * hop + window - audio.shape[-1]))
        hann = torch.hann_window(window, dtype=torch.float64)
        spec = torch.stft(
            audio.double().flatten(0, 1),
            window,
            hop,
            window=hann,
            center=False,
            return_complex=True,
        )
        assert spec.shape[-1] == math.ceil(3001 / hop)
        power = spec.abs() ** 2 / hann.pow(2).sum()
        fb = torchaudio.functional.melscale_fbanks(window // 2 + 1, 64.0, rate / 2, 32, rate)
        return (fb.double().T @ power).view(2, 1, 32, -1)

    mx, my = mel_power(x), mel_power(y)
    for alphas in (False, True):
        alpha = math.sqrt(window - 1) if alphas else 1.0
        want = (mx - my).abs().mean() + alpha * ((1e-5 + mx).log10() - (1e-5 + my).log10()).pow(
            2
        ).mean()
        loss = EnCodecSpectralLoss(rate, (window,), n_mels=32, alphas=alphas, reduction="sum")
        torch.testing.assert_close(loss(x, y).double(), want, rtol=1e-4, atol=1e-6)
        mean = EnCodecSpectralLoss(rate, (window,), n_mels=32, alphas=alphas)
        torch.testing.assert_close(mean(x, y).double(), want / (1 + alpha), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="msspec windows must be non-empty"):
        EnCodecSpectralLoss(rate, ())


def test_encodec_spectral_loss_is_audiocrafts_msspec() -> None:
    """AudioCraft's ``MultiScaleMelSpectrogramLoss`` with its EnCodec configuration (read
    from an AudioCraft checkout named by ``ANYTOK_AUDIOCRAFT``, its ``audiocraft`` package
    folder; skipped without one): same value and gradient."""
    root = os.environ.get("ANYTOK_AUDIOCRAFT")
    if not root:
        pytest.skip("set ANYTOK_AUDIOCRAFT to an audiocraft package folder")
    specloss = load_audiocraft_specloss(Path(root))
    for rate, alphas in ((24000, False), (32000, True)):
        ref = specloss.MultiScaleMelSpectrogramLoss(
            rate, 6, 11, n_mels=64, f_min=64, f_max=None, normalized=True, alphas=alphas
        )
        ours = EnCodecSpectralLoss(rate, alphas=alphas)
        torch.manual_seed(rate)
        target = 0.1 * torch.randn(2, 1, rate // 2 + 13)
        recon = (target + 0.05 * torch.randn_like(target)).requires_grad_()
        want, got = ref(recon, target), ours(recon, target)
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-7)
        (want_grad,) = torch.autograd.grad(want, recon)
        (got_grad,) = torch.autograd.grad(got, recon)
        assert (got_grad - want_grad).norm() <= 1e-4 * want_grad.norm()


def load_audiocraft_specloss(root: Path) -> types.ModuleType:
    """``audiocraft/losses/specloss.py`` and the one helper it imports, without running
    AudioCraft's package imports (they pull in its whole model stack)."""

    def load(name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for name, folder in (
        ("audiocraft", root),
        ("audiocraft.modules", root / "modules"),
        ("audiocraft.losses", root / "losses"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    conv = load("audiocraft.modules.conv", root / "modules" / "conv.py")
    sys.modules["audiocraft.modules"].pad_for_conv1d = conv.pad_for_conv1d  # type: ignore[attr-defined]
    return load("audiocraft.losses.specloss", root / "losses" / "specloss.py")


def test_reconstruction_loss_terms_masking_and_modality_checks() -> None:
    loss = ReconstructionLoss(
        {"l1": 1.0, "l2": 0.5, "mel": 1.0, "stft": 0.0},
        "audio",
        24000,
        mel_windows=(256,),
        mel_bins=(20,),
    )
    target = torch.cat([tone(440), tone(440)])
    target[1, :, 2400:] = 0  # item 1 is padding after 2400 samples
    lengths = torch.tensor([4800, 2400])
    noisy_padding = target.clone()
    noisy_padding[1, :, 2400:] = 1.0  # whatever the model puts in the padding is ignored
    terms = loss(noisy_padding, target, lengths)
    assert set(terms) == {"l1", "l2", "mel"}
    assert terms["l1"].item() == pytest.approx(0.0, abs=1e-7)
    assert loss.total(terms).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="loss.mel, loss.msspec: spectral terms apply to audio"):
        ReconstructionLoss({"mel": 1.0, "msspec": 1.0}, "image")
    with pytest.raises(ValueError, match="loss.msspec needs the sample rate"):
        ReconstructionLoss({"msspec": 1.0}, "audio")
    with pytest.raises(ValueError, match="images and video only"):
        ReconstructionLoss({"perceptual": 1.0}, "audio")


def test_balancer_gives_each_loss_its_weight_share() -> None:
    output = torch.zeros(2, 1, 8, requires_grad=True)
    target = torch.ones(2, 1, 8)
    big = ((output - target) ** 2).sum() * 1000  # gradient 1000x larger than ...
    small = (output - target).abs().mean()  # ... this one
    balancer = LossBalancer({"big": 1.0, "small": 3.0}, total_norm=1.0)
    norms = balancer.backward({"big": big, "small": small}, output)
    assert norms["big"] > 100 * norms["small"]
    # Both gradients point the same way here, so the result has norm total_norm per item
    # and the raw scales are gone.
    per_item = output.grad.flatten(1).norm(dim=1)
    torch.testing.assert_close(per_item, torch.ones(2), rtol=1e-4, atol=1e-4)
    state = balancer.state_dict()
    other = LossBalancer({"big": 1.0, "small": 3.0})
    other.load_state_dict(state)
    assert other.state_dict() == state and set(state["sums"]) == {"big", "small"}
    assert state["sums"]["big"] == pytest.approx(float(norms["big"]))  # one step: sum = norm
    # Losses that do not depend on the output go back unchanged alongside.
    param = torch.tensor(2.0, requires_grad=True)
    output.grad = None
    balancer.backward({"big": ((output - target) ** 2).sum()}, output, other=param * 3, scale=0.5)
    assert param.grad.item() == pytest.approx(1.5)


def test_perceptual_loss_from_local_weights(tmp_path: Path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    weights = tmp_path / "vgg16_features.safetensors"
    save_file({f"features.{k}": v for k, v in features.state_dict().items()}, str(weights))
    loss = VGGPerceptualLoss(weights)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(image.flip(-1), image) > 0
    video = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert torch.isfinite(loss(video, video.flip(2)))
    assert not any(p.requires_grad for p in loss.parameters())
    combined = ReconstructionLoss(
        {"l1": 1.0, "perceptual": 0.5}, "image", perceptual_weights=weights
    )
    assert set(combined(image, image)) == {"l1", "perceptual"}
    with pytest.raises(ValueError, match="local file"):
        ReconstructionLoss({"perceptual": 1.0}, "image")


def test_ema_averages_parameters_and_copies_buffers() -> None:
    model = torch.nn.BatchNorm1d(2)
    ema = make_ema(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.running_mean.fill_(7.0)
    model.num_batches_tracked.fill_(5)
    update_ema(ema, model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    update_ema(ema, model)
    assert ema.module.weight.tolist() == [2.0, 2.0]  # 0.5 * 3 + 0.5 * 1
    assert ema.module.running_mean.tolist() == [7.0, 7.0]
    assert ema.module.num_batches_tracked.item() == 5  # integer buffers are copied, not averaged


def test_ema_update_equals_averaged_model_without_host_reads() -> None:
    """``update_ema`` gives torch's ``AveragedModel.update_parameters`` exactly, through a
    load and a resume, and after its first call reads nothing back from the device (torch's
    reads ``n_averaged`` twice per call)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ours, oracle = make_ema(model, decay=0.7), make_ema(model, decay=0.7)

    def step() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the BatchNorm buffers

    for i in range(4):
        step()
        with HostSyncs() as syncs:
            update_ema(ours, model)
        assert syncs.count == (1 if i == 0 else 0)
        oracle.update_parameters(model)
        for a, b in zip(ours.state_dict().values(), oracle.state_dict().values()):
            assert torch.equal(a, b)
    fresh = make_ema(model, decay=0.7)
    fresh.load_state_dict(oracle.state_dict())  # a loaded count is read again
    resumed = make_ema(model, decay=0.7)
    set_ema_count(resumed, int(oracle.n_averaged))
    resumed.module.load_state_dict(oracle.module.state_dict())
    step()
    oracle.update_parameters(model)
    for other in (fresh, resumed):
        update_ema(other, model)
        for a, b in zip(other.state_dict().values(), oracle.state_dict().values()):
            assert torch.equal(a, b)


def test_ema_follows_a_second_model_and_refuses_mismatched_devices() -> None:
    """The cached parameter groups belong to one model: another model of the same shape
    (a fresh process's copy) is averaged from its own tensors; dtypes must match."""
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema = make_ema(first, decay=0.5)
    update_ema(ema, first)
    update_ema(ema, second)
    for averaged, a, b in zip(ema.module.parameters(), first.parameters(), second.parameters()):
        assert torch.allclose(averaged, 0.5 * a + 0.5 * b)
    with pytest.raises(ValueError, match="torch.float64 on cpu"):
        update_ema(make_ema(first, decay=0.5), second.double())


def test_warmup_then_cosine_schedule() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = OmegaConf.create(
        {"warmup_steps": 4, "schedule": "cosine", "lr": 1.0, "min_lr_ratio": 0.1}
    )
    scheduler = _scheduler(optimizer, cfg, total_steps=14)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.2) and rates[4] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(rates[:5]))  # warmup rises
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))  # cosine falls
    assert rates[-1] == pytest.approx(0.1)  # to lr * min_lr_ratio at the end
