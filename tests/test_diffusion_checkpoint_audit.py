"""Audit regressions: sampler grids and network times of the diffusion decoders; checkpoint
errors that name the file; ``anytok.load`` paths (``~``, other working directories, folders
named like architectures); tied weights; exported EMA weights."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import anytok
from anytok import registry
from anytok.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anytok.decoders.diffusion import FlowDecoder, make_scheduler
from anytok.decoders.diffusion.schedulers import set_timesteps
from anytok.registry import PretrainedCfg, get_arch, register

IMAGE = "cnn_fsq_256"

# ------------------------------------------------------------------ samplers


def _gaussian_flow_field(mu: torch.Tensor, s: float):
    """Exact velocity E[eps - x0 | x_t] for x0 ~ N(mu, s^2), x_t = (1 - t) x0 + t eps."""

    def field(x, t, conditions, grid, return_hidden=False):
        t = t.view(-1, 1, 1).double()
        var = (1 - t) ** 2 * s**2 + t**2
        return ((t - (1 - t) * s**2) / var * (x.double() - (1 - t) * mu) - mu).float()

    return field


def _decoder(**kwargs) -> FlowDecoder:
    torch.manual_seed(0)
    return FlowDecoder(6, 8, dim=16, depth=1, heads=2, **kwargs).eval()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_takes_uniform_steps_that_all_do_work(shift: float) -> None:
    """diffusers' default Euler grid ends 0.001 -> 0, so steps=2 decoded like steps=1; the
    sampler must equal a hand-written Euler on the (shifted) uniform grid 1 .. 0."""
    mu, s = torch.randn(1, 5, 6, generator=torch.Generator().manual_seed(0)), 0.3
    model = _decoder(time_shift=shift)
    model.velocity = _gaussian_flow_field(mu, s)  # type: ignore[method-assign]
    noise = torch.randn(1, 5, 6, generator=torch.Generator().manual_seed(1))
    cond = torch.zeros(1, 2, 8)
    outs = {}
    for steps in (1, 2, 4):
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        x = noise.clone()
        for a, b in itertools.pairwise(sigmas):
            x = x + (b - a).float() * model.velocity(x, a.float().view(1), None, None)
        outs[steps] = model.sample(cond, num_positions=5, steps=steps, noise=noise)
        assert torch.allclose(outs[steps], x, atol=1e-5), steps
    exact = mu + s * noise
    errors = {k: float((v - exact).abs().max()) for k, v in outs.items()}
    # (diffusers' own grid: steps=2 within 1 % of steps=1)
    assert errors[2] < 0.95 * errors[1] and errors[4] < errors[2], errors


@pytest.mark.parametrize("scheduler", ["euler", "heun", "dpm++", "unipc"])
def test_flow_network_sees_the_schedulers_sigma(scheduler: str) -> None:
    """DPM-Solver++ / UniPC round flow timesteps down to integers; the network must see the
    sigma the scheduler integrates at, not timestep / 1000."""
    model = _decoder(time_shift=3.0)
    seen: list[float] = []

    def record(x, t, conditions, grid, return_hidden=False):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    model.velocity = record  # type: ignore[method-assign]
    model.sample(torch.zeros(1, 2, 8), num_positions=3, steps=4, scheduler=scheduler)
    reference = make_scheduler(scheduler, "flow", 3.0)
    set_timesteps(reference, 4)
    expected = reference.sigmas[: len(reference.timesteps)].tolist()
    assert seen == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("objective", ["epsilon", "v"])
def test_ddim_starts_at_the_last_training_timestep_for_any_step_count(objective: str) -> None:
    """With DDIM's default "leading" spacing one step ran the model at t=0 on pure noise and
    returned the noise; two steps started at t=500."""
    model = _decoder(objective=objective)
    seen: list[float] = []

    def record(x, t, conditions, grid, return_hidden=False):
        seen.append(round(float(t[0]) * 1000))
        return torch.zeros_like(x)

    model.velocity = record  # type: ignore[method-assign]
    for steps, first in ((1, 999), (2, 999), (4, 999)):
        seen.clear()
        model.sample(torch.zeros(1, 2, 8), num_positions=3, steps=steps, scheduler="ddim")
        assert len(seen) == steps and seen[0] == first, seen
    # One DDIM step with the exact prediction of a point mass x0 = mu lands on mu: the last
    # step goes to alpha = 1 (with alphas_cumprod[0] it re-noised the sample, sigma ~ 0.03);
    # "leading" spacing returned the noise itself.
    mu = torch.randn(1, 3, 6)
    noise = torch.randn(1, 3, 6)
    alphas = model.alphas_cumprod.double()

    def exact(x, t, conditions, grid, return_hidden=False):
        a = alphas[round(float(t[0]) * 1000)]
        eps = (x.double() - a.sqrt() * mu) / (1 - a).sqrt()
        return (eps if objective == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * mu).float()

    model.velocity = exact  # type: ignore[method-assign]
    out = model.sample(
        torch.zeros(1, 2, 8), num_positions=3, steps=1, scheduler="ddim", noise=noise
    )
    assert torch.allclose(out, mu, atol=1e-4)
    for steps in (4, 25):  # every step count ends on the clean sample
        out = model.sample(
            torch.zeros(1, 2, 8), num_positions=3, steps=steps, scheduler="ddim", noise=noise
        )
        assert torch.allclose(out, mu, atol=1e-4), (steps, (out - mu).abs().max())


# ------------------------------------------------------------------ checkpoint errors


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = anytok.create_model(IMAGE, tiny=True, seed=1)
    return save_checkpoint(model, tmp_path / "ckpt")


def _edit_config(directory: Path, edit) -> Path:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return path


def test_unknown_argument_in_config_names_the_file_and_argument(checkpoint: Path) -> None:
    path = _edit_config(checkpoint, lambda c: c["config"].update(bogus_arg=1))
    with pytest.raises(CheckpointError) as err:
        anytok.load(checkpoint)
    assert str(path) in str(err.value) and "bogus_arg" in str(err.value)


def test_wrong_architecture_names_the_file(checkpoint: Path) -> None:
    path = _edit_config(checkpoint, lambda c: c.update(architecture="no_such_arch"))
    with pytest.raises(CheckpointError, match="'no_such_arch' is not registered") as err:
        load_checkpoint(checkpoint)
    assert str(path) in str(err.value)
    # Another registered architecture with these arguments: a build error naming the file.
    _edit_config(checkpoint, lambda c: c.update(architecture="seanet_fsq_24khz"))
    with pytest.raises(CheckpointError, match="cannot build 'seanet_fsq_24khz'") as err:
        load_checkpoint(checkpoint)
    assert str(path) in str(err.value)
    _edit_config(checkpoint, lambda c: c.update(architecture=f"{IMAGE}.untrained"))
    with pytest.raises(CheckpointError, match="bare registered name"):
        load_checkpoint(checkpoint)


def test_config_that_is_not_an_object_names_the_file(checkpoint: Path) -> None:
    _edit_config(checkpoint, lambda c: c.update(config=[1, 2]))
    with pytest.raises(CheckpointError, match="'config' must be an object"):
        load_checkpoint(checkpoint)
    (checkpoint / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        load_checkpoint(checkpoint)


def test_truncated_weights_name_the_file(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read safetensors") as err:
        load_checkpoint(checkpoint)
    assert str(weights) in str(err.value)


def test_dtype_kind_mismatch_names_key_and_file_other_precisions_load(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    original = load_file(str(weights))
    # Half-precision weights load into the fp32 model (cast, as from a bf16 export).
    save_file({k: v.half() if v.is_floating_point() else v for k, v in original.items()}, weights)
    loaded = load_checkpoint(checkpoint)
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype
        assert torch.equal(value, original[key].half().to(value.dtype))
    # Integers where the model keeps floats were truncated silently: now an error.
    key = sorted(k for k, v in original.items() if v.is_floating_point())[0]
    broken = dict(original, **{key: (original[key] * 100).to(torch.int32)})
    save_file(broken, weights)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(checkpoint)
    text = str(err.value)
    assert str(weights) in text and "dtype mismatches" in text and key in text


def test_unserialisable_config_leaves_nothing_and_paths_are_stored(tmp_path: Path) -> None:
    model = anytok.create_model(IMAGE, tiny=True)
    model.anytok_config["weird"] = object()  # type: ignore[index]
    with pytest.raises(CheckpointError, match="cannot be written as JSON"):
        save_checkpoint(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError):
        save_checkpoint(model, tmp_path / "half")
    assert list((tmp_path / "half").iterdir()) == []  # no temporaries left behind
    model.anytok_config["weird"] = tmp_path / "somewhere"  # type: ignore[index]
    save_checkpoint(model, tmp_path / "ok")
    assert json.loads((tmp_path / "ok/config.json").read_text())["config"]["weird"] == str(
        tmp_path / "somewhere"
    )


# ------------------------------------------------------------------ anytok.load paths


def test_load_expands_user_and_works_from_another_directory(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_checkpoint(checkpoint)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("~/ckpt", "~/ckpt/"):
        loaded = anytok.load(name)
        assert loaded.anytok_source == str(checkpoint.resolve())
        assert all(
            torch.equal(v, reference.state_dict()[k]) for k, v in loaded.state_dict().items()
        )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert anytok.load("../ckpt").anytok_source == str(checkpoint.resolve())
    assert anytok.load(checkpoint).anytok_source == str(checkpoint.resolve())
    monkeypatch.chdir(tmp_path)
    assert anytok.load("ckpt").anytok_source == str(checkpoint.resolve())


def test_folder_named_like_an_architecture_does_not_hide_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / IMAGE).mkdir()  # e.g. a folder of outputs, not a checkpoint
    model = anytok.load(IMAGE)
    assert model.anytok_arch == IMAGE and model.anytok_source is None
    # ... but a checkpoint folder of that name is loaded as one.
    save_checkpoint(anytok.create_model(IMAGE, tiny=True), tmp_path / IMAGE)
    assert anytok.load(IMAGE).anytok_source == str((tmp_path / IMAGE).resolve())
    # A bare word that is a folder and no registered name still gets the folder's error.
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        anytok.load("plain")


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Architectures a test registers vanish after it: the registry is process-wide, and
    other tests in the same worker list every registered name."""
    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))


def test_tag_whose_folder_holds_another_architecture_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_registry: None
) -> None:
    monkeypatch.setenv("ANYTOK_HOME", str(tmp_path))
    monkeypatch.setenv("ANYTOK_OFFLINE", "1")
    info = get_arch(IMAGE)
    register(
        "audit_tag_arch",
        modality="image",
        description="audit: a tag whose folder holds another architecture",
        paper="test",
        default_config=info.config(tiny=True),
        pretrained=[PretrainedCfg("trained")],
        builder=info.builder,
    )
    folder = tmp_path / "checkpoints" / "audit_tag_arch.trained"
    save_checkpoint(anytok.create_model(IMAGE, tiny=True), folder)
    with pytest.raises(CheckpointError, match="holds a 'cnn_fsq_256' checkpoint") as err:
        anytok.load("audit_tag_arch.trained")
    assert str(folder / "config.json") in str(err.value)


# ------------------------------------------------------------------ tied weights, round trips


class _Tied(nn.Module):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, dim)
        self.head.weight = self.embed.weight


def test_tied_weights_are_saved_once_and_tied_again(tmp_path: Path, scratch_registry: None) -> None:
    register(
        "audit_tied",
        modality="image",
        description="audit: tied weights",
        paper="test",
        default_config={"dim": 4},
        builder=_Tied,
    )
    model = anytok.create_model("audit_tied", seed=3)
    save_checkpoint(model, tmp_path)
    assert sorted(load_file(str(tmp_path / "model.safetensors"))) == [
        "embed.bias",
        "embed.weight",
        "head.bias",
    ]
    loaded = load_checkpoint(tmp_path)
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)


@pytest.mark.parametrize("name", ["flextok_d12_d12", "tadicodec_24khz_6hz", "divot"])
def test_diffusion_families_decode_identically_after_save_and_load(
    name: str, tmp_path: Path
) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_registry_models import sample_batch

    model = anytok.create_model(name, tiny=True, seed=2).eval()
    with torch.no_grad():  # open adaLN-Zero gates so the decoder's weights matter
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(model, tmp_path / "c")
    loaded = anytok.load(tmp_path / "c")
    media, lengths = sample_batch(model, batch=1, seed=5)
    with torch.inference_mode():
        tokens = model.encode(media, lengths)
        a = model.decode(tokens, steps=2, scheduler="heun", seed=3)
        b = loaded.decode(tokens, steps=2, scheduler="heun", seed=3)
        c = loaded.decode(tokens, steps=2, scheduler="heun", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ export


def test_export_writes_the_ema_weights_and_expands_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anytok.train import export_run

    run = tmp_path / "run"
    step = run / "checkpoints" / "step_000007"
    raw = anytok.create_model(IMAGE, tiny=True, seed=1)
    ema = anytok.create_model(IMAGE, tiny=True, seed=2)
    save_checkpoint(raw, step)
    save_checkpoint(ema, step / "ema")
    (step / "state.json").write_text(json.dumps({"step": 7}))
    monkeypatch.setenv("HOME", str(tmp_path))
    out = export_run("~/run", "~/exported")
    assert out == tmp_path / "exported"
    model = anytok.load(out)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in model.state_dict().items())
    assert model.anytok_tag == "run.step7"
    config = json.loads((out / "config.json").read_text())
    assert config["extra"]["weights"] == "ema" and config["extra"]["step"] == 7
    raw_out = export_run(run, tmp_path / "raw", use_ema=False)
    loaded = anytok.load(raw_out)
    assert all(torch.equal(v, raw.state_dict()[k]) for k, v in loaded.state_dict().items())
