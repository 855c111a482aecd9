"""Distributed training: two CPU processes with gloo (as torchrun starts them) end with
identical parameters and codebooks, each having trained on its own shard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torchrun_ranks import as_torchrun_rank, free_port

from anytok.data.synthetic import make_dataset
from anytok.train import distributed, read_log, train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/audio/seanet_fsq_24khz_tiny.yaml"
# A learned VQ codebook (EMA updates, k-means init, dead-code revival) instead of FSQ, so
# there is a codebook to keep in sync; the GAN and gradient accumulation are on too.
OVERRIDES = [
    "train.steps=6",
    "train.grad_accum=2",
    "discriminator.start_step=2",
    "model.config.quantizer={name: vq, codebook_size: 16, kmeans_init: true, threshold_ema_dead_code: 0.5}",
    "log.every=1",
    "log.val_every=3",
    "log.samples_every=6",
    "log.progress=false",
    "checkpoint.every=3",
]


def _worker(rank: int, world: int, port: int, data: str, run_dir: str, out: str) -> None:
    as_torchrun_rank(rank, world, port)
    result = train(RECIPE, run_dir, overrides=[f"data.train={data}", *OVERRIDES], device="cpu")
    # The run's closing barrier stays referenced after the group is gone (see final_barrier:
    # gloo's teardown could otherwise deadlock on the GIL).
    closing = distributed._closing_barrier
    assert closing is not None and closing.is_completed() and not dist.is_initialized()
    state = {f"model/{k}": v for k, v in result.model.state_dict().items()}
    state.update({f"buffer/{k}": v for k, v in result.model.named_buffers()})
    save_file(
        {k: v.contiguous().clone() for k, v in state.items()}, f"{out}/rank{rank}.safetensors"
    )


def test_two_gloo_ranks_stay_identical(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset("audio", data, 12, seconds=0.3)
    bad = {f"zz_bad{i}.wav" for i in range(6)}  # replaced on whichever rank reads them
    for name in bad:
        (data / name).write_bytes(b"not audio at all" * 8)
    run_dir = tmp_path / "run"
    mp.spawn(
        _worker, args=(2, free_port(), str(data), str(run_dir), str(tmp_path)), nprocs=2, join=True
    )

    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    codebooks = [k for k in rank0 if "codebook" in k or "embed" in k]
    assert codebooks, "expected VQ codebook tensors in the state"
    for key in rank0:
        torch.testing.assert_close(
            rank1[key], rank0[key], rtol=0, atol=0, msg=f"{key} differs between ranks"
        )
    # The codebook moved away from its initialisation (the sync is not vacuous).
    from anytok.registry import create_model

    initial = create_model(
        "seanet_fsq_24khz", tiny=True, quantizer={"name": "vq", "codebook_size": 16}
    ).state_dict()
    moved = [
        k
        for k in codebooks
        if k.startswith("model/") and k[6:] in initial and not torch.equal(initial[k[6:]], rank0[k])
    ]
    assert moved, "the codebook was never updated"
    # Only rank 0 wrote: one log, one checkpoint per save, RNG states of both ranks.
    records = [r for r in read_log(run_dir) if "loss/total" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    checkpoint = run_dir / "checkpoints" / "step_000006"
    assert {p.name for p in checkpoint.glob("rng_rank*")} == {
        "rng_rank0.safetensors",
        "rng_rank1.safetensors",
    }
    # Every bad file either rank read is named (rank 1's logger is off: rank 0 names them
    # at the next log line) and counted once over the ranks; they used to be counted but
    # not named on rank 1, and the NCCL run crashed on the count's CPU all-reduce.
    events = [r for r in read_log(run_dir) if r.get("event") == "bad_file"]
    training = [r for r in events if "split" not in r]
    assert {Path(r["file"].split(":")[0]).name for r in events} <= bad
    assert {r.get("rank", 0) for r in training} == {0, 1}
    assert records[-1]["data/bad_files"] == len(training)
    val = [r for r in events if r.get("split") == "val"]
    assert sum(r.get("val/bad_files", 0) for r in read_log(run_dir)) == len(val)


def test_torchrun_command_line(tmp_path: Path) -> None:
    """The documented launch: ``torchrun --nproc_per_node 2 -m anytok.cli train RECIPE ...``."""
    data = tmp_path / "data"
    make_dataset("audio", data, 8, seconds=0.3)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "anytok.cli",
        "train",
        str(RECIPE),
        f"data.train={data}",
        "train.steps=3",
        "log.progress=false",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step_000003" / "state.json").is_file()


def _signalled_worker(
    rank: int, world: int, port: int, data: str, run_dir: str, out: str, sparse: bool
) -> None:
    # Only rank 1 gets SIGTERM: both ranks must stop after the same step, with one checkpoint
    # there, instead of rank 0 waiting for rank 1 forever. Dense: a log line every step, the
    # signal once step 3 is logged. Sparse: no log line or checkpoint before step 1000, the
    # signal 1 s into training; the ranks must still agree within seconds (torchrun kills
    # its workers 30 s after forwarding SIGTERM).
    import json
    import signal
    import threading
    import time

    as_torchrun_rank(rank, world, port)

    def send_signal() -> None:
        if sparse:
            while not Path(run_dir, "recipe.yaml").is_file():  # written once set up
                time.sleep(0.01)
            time.sleep(1.0)
        else:
            while not any(
                r.get("step", 0) >= 3
                for r in (read_log(run_dir) if Path(run_dir, "log.jsonl").is_file() else [])
            ):
                time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    if rank == 1:
        threading.Thread(target=send_signal, daemon=True).start()
    every = 1000 if sparse else 100
    overrides = [f"data.train={data}", *OVERRIDES, "train.steps=200", f"checkpoint.every={every}"]
    if sparse:
        overrides += ["log.every=1000", "log.val_every=0", "log.samples_every=0"]
    result = train(RECIPE, run_dir, overrides=overrides, device="cpu")
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"step": result.step, "stopped_by": result.stopped_by})
    )


@pytest.mark.parametrize("sparse", [False, True], ids=["log-every-step", "no-log-line"])
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(
    tmp_path: Path, sparse: bool
) -> None:
    import json
    import signal

    from anytok.train.state import latest_checkpoint

    data = tmp_path / "data"
    make_dataset("audio", data, 12, seconds=0.3)
    run_dir = tmp_path / "run"
    mp.spawn(
        _signalled_worker,
        args=(2, free_port(), str(data), str(run_dir), str(tmp_path), sparse),
        nprocs=2,
        join=True,
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1], results
    step = results[0]["step"]
    assert (1 if sparse else 3) <= step < 200, results
    assert results[0]["stopped_by"] == signal.SIGTERM, results
    assert latest_checkpoint(run_dir).name == f"step_{step:06d}"


def test_collectives_move_values_to_the_backends_device(monkeypatch) -> None:
    """NCCL moves CUDA tensors only: the run's bad-file count went to ``all_reduce`` on the
    CPU, which fails under NCCL ("No backend type associated with device type cpu") at the
    first log line. Emulated: the backend says NCCL and the rank's device is ``meta``; each
    collective records the device it was handed (then stops: meta holds no values)."""

    class Handed(Exception):
        pass

    seen: list[torch.device] = []

    def record(*tensors) -> None:
        seen.extend(t.device for t in tensors if isinstance(t, torch.Tensor))
        raise Handed

    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: record(tensor))
    monkeypatch.setattr(dist, "all_gather", lambda outputs, tensor: record(tensor, *outputs))
    on_meta = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("meta"))
    for payload in (b"", b"ab"):
        with pytest.raises(Handed):
            distributed.gather_bytes(payload, on_meta)
    with pytest.raises(Handed):
        distributed.all_reduce_mean(torch.ones(3), on_meta)  # values on the CPU
    assert seen and all(device.type == "meta" for device in seen), seen

    # gloo: CPU tensors, and an empty payload travels too (torch.frombuffer refuses one)
    def gather_copies(outputs, tensor) -> None:
        for out in outputs:
            out.copy_(tensor)

    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_gather", gather_copies)
    on_cpu = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    assert distributed.gather_bytes(b"", on_cpu) == [b"", b""]
    assert distributed.gather_bytes(b"ab", on_cpu) == [b"ab", b"ab"]


def _refusing_worker(rank: int, world: int, port: int, data: str, run_dir: str, out: str) -> None:
    as_torchrun_rank(rank, world, port)
    try:
        train(RECIPE, run_dir, overrides=[f"data.train={data}", *OVERRIDES], device="cpu")
    except Exception as err:  # the test compares every rank's error
        Path(out, f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_refused_start_is_refused_on_every_rank(tmp_path: Path) -> None:
    """Only rank 0 checked the run folder: its refusal left the other ranks at the barrier
    until torchrun killed them, with their tracebacks beside the one-line error."""
    data = tmp_path / "data"
    make_dataset("audio", data, 4, seconds=0.3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"step": 3, "loss/total": 1.0}\n')  # a run's trace
    mp.spawn(
        _refusing_worker,
        args=(2, free_port(), str(data), str(run_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    errors = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert errors[0].startswith("RecipeError: ") and "already holds a run" in errors[0]
