"""Checkpoints and resume: a run killed with SIGKILL and resumed matches an uninterrupted run
of the same seed (loss curve and final weights); the state codec stores optimizer state
without pickle; checkpoint writes are atomic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from anytok.data.synthetic import make_dataset
from anytok.train import read_log, scalar_history, train
from anytok.train.state import (
    latest_checkpoint,
    list_checkpoints,
    load_tree,
    pack_tree,
    rng_state,
    save_tree,
    set_rng_state,
    unpack_tree,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/audio/seanet_fsq_24khz_tiny.yaml"
STEPS, KILL_AFTER = 24, 10


pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(data: Path) -> list[str]:
    # GAN from step 6 (discriminator optimizer + balancer state), EMA, grad accumulation,
    # checkpoints every 4 steps, every step logged.
    return [
        f"data.train={data}",
        f"train.steps={STEPS}",
        "train.grad_accum=2",
        "discriminator.start_step=6",
        "checkpoint.every=4",
        "checkpoint.keep=2",
        "log.every=1",
        "log.val_every=0",
        "log.samples_every=0",
        "log.progress=false",
    ]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset("audio", data, 10, seconds=0.3)
    reference = train(RECIPE, tmp_path / "reference", overrides=overrides(data))

    # The same run in a subprocess, killed without warning once it is past a checkpoint.
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic as this process
    command = [
        sys.executable,
        "-m",
        "anytok.train",
        str(RECIPE),
        *overrides(data),
        "--run-dir",
        str(killed),
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # generous: CI machines may be busy
    reached = 0
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [r["step"] for r in read_log(killed) if "loss/total" in r]
        reached = max(steps, default=0)
        if reached >= KILL_AFTER:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == -signal.SIGKILL, (
        f"the run ended by itself (code {code}) before the kill:\n{stderr}"
    )
    assert reached < STEPS
    checkpoint = latest_checkpoint(killed)
    assert checkpoint is not None and 4 <= int(checkpoint.name.split("_")[1]) < STEPS

    resumed = train(RECIPE, killed, overrides=overrides(data), resume=True)
    assert resumed.step == reference.step == STEPS

    for key in ("loss/total", "loss/reconstruction", "loss/discriminator", "grad_norm/generator"):
        expected, got = scalar_history(tmp_path / "reference", key), scalar_history(killed, key)
        assert [s for s, _ in got] == [s for s, _ in expected], f"{key}: logged steps differ"
        for (step, a), (_, b) in zip(expected, got):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-6), f"{key} at step {step}"
    for ours, theirs in ((resumed.model, reference.model), (resumed.ema, reference.ema)):
        for name, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert len(list_checkpoints(killed)) == 2  # checkpoint.keep


@pytest.mark.parametrize(("signum", "sparse_log"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_stop_signal_checkpoints_the_step_and_resume_matches(
    tmp_path: Path, signum, sparse_log: bool
) -> None:
    # Ctrl-C / SIGTERM: the run finishes its step, checkpoints it (whatever checkpoint.every
    # says), exits with 128 + the signal, and --resume continues as if it never stopped.
    # With a log line every 3 steps and validation every 2, a stop between them keeps the
    # open log window and the validation due at its step for the resumed run: the whole
    # log, validation included, equals the uninterrupted run's (before, the stop flushed a
    # partial window and the due validation never ran).
    data = tmp_path / "data"
    make_dataset("audio", data, 10, seconds=0.3)
    settings = overrides(data)
    if sparse_log:
        settings += ["log.every=3", "log.val_every=2", "data.val_fraction=0.2"]
    reference = train(RECIPE, tmp_path / "reference", overrides=settings)
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "anytok.train", str(RECIPE), *settings]
    proc = subprocess.Popen(
        [*command, "--run-dir", str(stopped)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [r["step"] for r in read_log(stopped) if "loss/total" in r]
        if max(steps, default=0) >= KILL_AFTER:
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}:\n{err}"
    checkpoint = latest_checkpoint(stopped)
    step = int(checkpoint.name.split("_")[1])
    assert KILL_AFTER <= step < STEPS
    assert f"stopped by {signal.Signals(signum).name} at step {step} of {STEPS}" in out + err
    logged = [r["step"] for r in read_log(stopped) if "loss/total" in r]
    assert logged[-1] == step if not sparse_log else logged[-1] <= step  # none past it

    resumed = train(RECIPE, stopped, overrides=settings, resume=True)
    assert resumed.step == STEPS and resumed.stopped_by is None
    keys = ["loss/total", "grad_norm/generator"] + (["val/reconstruction"] if sparse_log else [])
    for key in keys:
        expected, got = scalar_history(tmp_path / "reference", key), scalar_history(stopped, key)
        assert [s for s, _ in got] == [s for s, _ in expected], f"{key}: logged steps differ"
        for (at, a), (_, b) in zip(expected, got):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-6), f"{key} at step {at}"
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_tree_codec_round_trips_optimizer_and_scheduler_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, total_iters=2),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5),
        ],
        milestones=[2],
    )
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    tree = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "none": None,
        3: (1, 2.5, "x"),
    }
    tensors, structure = pack_tree(tree)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    save_tree(tmp_path / "state.safetensors", tree)
    loaded = load_tree(tmp_path / "state.safetensors")
    assert loaded[3] == (1, 2.5, "x") and loaded["none"] is None
    assert unpack_tree(tensors, structure)["scheduler"] == loaded["scheduler"]
    other = torch.optim.AdamW(model.parameters(), lr=1e-3)
    other.load_state_dict(loaded["optimizer"])
    for key, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(other.state_dict()["state"][key][name], value)
    assert other.param_groups[0]["betas"] == (0.5, 0.9)
    assert loaded["scheduler"] == scheduler.state_dict()
    # RNG: restoring the saved state replays the same numbers.
    before = torch.rand(3)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), before)
    # The file is plain safetensors: tensors plus JSON metadata, nothing executable.
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as handle:
        assert "anytok_tree" in handle.metadata()


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / "step_000004").mkdir(parents=True)
    (root / "step_000004" / "state.json").write_text("{}")
    (root / "step_000008").mkdir()  # killed while writing: no state.json
    (root / ".tmp-step_000012-123").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step_000004"
    (root / "latest").write_text("step_000008\n")  # pointer to an incomplete folder
    assert latest_checkpoint(tmp_path) == root / "step_000004"
    assert latest_checkpoint(tmp_path / "nothing") is None
