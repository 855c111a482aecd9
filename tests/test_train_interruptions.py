"""Runs that stop or resume in ways a cluster brings about: SIGTERM to the whole process group
(Slurm), a resume with another world size or batch size, a checkpoint write cut short."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anytok.data.synthetic import make_dataset
from anytok.train import RecipeError, read_log, train
from anytok.train.state import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/audio/seanet_fsq_24khz_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interruptions") / "audio"
    make_dataset("audio", folder, 8, seconds=0.3)
    return folder


def settings(data: Path, steps: int) -> list[str]:
    return [
        f"data.train={data}",
        "data.val_fraction=0",
        "data.num_workers=0",
        f"train.steps={steps}",
        "train.batch_size=2",
        "log.every=1",
        "log.val_every=0",
        "log.samples_every=0",
        "log.progress=false",
        "checkpoint.every=2",
    ]


def test_sigterm_to_the_process_group_with_loader_workers_checkpoints(
    data: Path, tmp_path: Path
) -> None:
    """Slurm signals every process of a job: DataLoader workers must leave the stop to the
    main process (before, a worker killed by SIGTERM failed the next batch: no checkpoint)."""
    run_dir = tmp_path / "run"
    overrides = [*settings(data, 100_000), "data.num_workers=2", "checkpoint.every=1000"]
    command = [sys.executable, "-m", "anytok.train", str(RECIPE), *overrides]
    proc = subprocess.Popen(
        [*command, "--run-dir", str(run_dir)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a Slurm job step
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if max((r["step"] for r in read_log(run_dir) if "loss/total" in r), default=0) >= 2:
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, f"exit {proc.returncode}:\n{out[-3000:]}"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None, out[-3000:]
    assert f"stopped by SIGTERM at step {int(checkpoint.name.split('_')[1])}" in out


@pytest.fixture
def two_step_run(data: Path, tmp_path: Path) -> Path:
    """A 4-step run that is resumable from step 2 (as if stopped there)."""
    run_dir = tmp_path / "run"
    train(RECIPE, run_dir, overrides=settings(data, 4), device="cpu")
    shutil.rmtree(run_dir / "checkpoints" / "step_000004")
    (run_dir / "checkpoints" / "latest").write_text("step_000002\n")
    return run_dir


def test_resume_with_another_world_size_is_refused(data: Path, two_step_run: Path) -> None:
    """The data position counts batches per rank: on another number of ranks the epoch would
    repeat or skip items. A checkpoint of 2 ranks, resumed on 1."""
    state = latest_checkpoint(two_step_run) / "state.json"
    summary = json.loads(state.read_text())
    state.write_text(json.dumps({**summary, "world_size": 2}))
    with pytest.raises(RecipeError, match=r"saved by 2 process.*this run has 1") as err:
        train(RECIPE, two_step_run, overrides=settings(data, 4), resume=True, device="cpu")
    assert "--nproc_per_node" in str(err.value)


def test_resume_with_another_batch_size_is_refused(data: Path, two_step_run: Path) -> None:
    overrides = [*settings(data, 4), "train.batch_size=1"]
    with pytest.raises(RecipeError, match=r"train\.batch_size=2.*train\.batch_size=1"):
        train(RECIPE, two_step_run, overrides=overrides, resume=True, device="cpu")
    # The run's own settings still resume (and a grad_accum change is allowed).
    overrides = [*settings(data, 4), "train.grad_accum=2"]
    assert train(RECIPE, two_step_run, overrides=overrides, resume=True, device="cpu").step == 4


def test_a_checkpoint_write_cut_short_is_removed_at_setup(
    data: Path, two_step_run: Path, capsys
) -> None:
    """A process killed while writing leaves its temporary folder (and pointer) behind; the
    next start removes them instead of keeping them forever."""
    root = two_step_run / "checkpoints"
    half_written = root / ".tmp-step_000004-999999"
    (half_written / "ema").mkdir(parents=True)
    (half_written / "model.safetensors").write_bytes(b"\0" * 1024)
    (root / ".latest.tmp").write_text("step_000004")
    result = train(RECIPE, two_step_run, overrides=settings(data, 4), resume=True, device="cpu")
    assert result.step == 4
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000004"]
    notes = " ".join(capsys.readouterr().err.split())
    assert "a checkpoint write that did not finish" in notes, notes
