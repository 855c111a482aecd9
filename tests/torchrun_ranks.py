"""What torchrun gives a rank, for tests that start gloo ranks with ``mp.spawn``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on the loopback interface (the rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_torchrun_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a rank, one thread."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def spawn_ranks(worker: Callable[..., None], args: tuple, nprocs: int, deadline_s: float) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes; fail the test if one
    raises or they are not all done within ``deadline_s`` (a hung collective), and kill any
    that are left."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=2):  # raises if a worker raised
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {deadline_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
