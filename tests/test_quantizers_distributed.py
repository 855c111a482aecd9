"""Two CPU ranks (gloo) train VQ-family quantizers on different data: every codebook statistic
is all-reduced and every random choice (k-means seeds, revived codes, quantizer-dropout level
counts) is made on rank 0 and broadcast, so both ranks must end with identical state."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anytok.quantizers import GroupedResidualVQ, ResidualVQ, VectorQuantize

WORLD_SIZE = 2
STEPS = 6
DEADLINE_S = 180


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _count_revivals(vq: VectorQuantize, counter: list[int]) -> None:
    """Wrap ``vq.revive_dead_codes_`` to count the codes it replaces."""
    revive = vq.revive_dead_codes_

    def counting(x: torch.Tensor) -> torch.Tensor:
        replaced = revive(x)
        counter[0] += int(replaced)
        return replaced

    vq.revive_dead_codes_ = counting


def _assert_same_on_all_ranks(name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().float().contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    for rank, other in enumerate(gathered[1:], start=1):
        if not torch.equal(gathered[0], other):
            difference = (gathered[0] - other).abs().max().item()
            raise AssertionError(f"{name} differs between rank 0 and rank {rank} by {difference}")


def _worker(rank: int, port: int) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.manual_seed(100 + rank)  # different random streams on purpose
        data = torch.Generator().manual_seed(rank)
        # EMA counts are summed over ranks (expected hits per global batch of ~456 vectors), so
        # the thresholds are set high enough that some codes die and get revived
        quantizers = {
            "vq": VectorQuantize(8, 32, kmeans_init=True, threshold_ema_dead_code=6.0),
            "rvq": ResidualVQ(
                8, 3, 16, quantize_dropout=True, kmeans_init=True, threshold_ema_dead_code=8.0
            ),
            "grvq-shared": GroupedResidualVQ(
                8,
                2,
                3,
                16,
                quantize_dropout=True,
                shared_codebook=True,
                threshold_ema_dead_code=1.0,
            ),
        }
        revived = [0]
        for module in quantizers.values():
            for vq in module.modules():
                if isinstance(vq, VectorQuantize):
                    _count_revivals(vq, revived)
        local_codes = []
        for _ in range(STEPS):
            # different sizes and distributions per rank
            batch = torch.randn(200 + 56 * rank, 8, generator=data) * (1 + rank) + 2 * rank
            for module in quantizers.values():
                module.train()(batch)
            local_codes.append(quantizers["vq"].eval()(batch[:8]).codes)

        for name, module in quantizers.items():
            for key, value in module.state_dict().items():
                _assert_same_on_all_ranks(f"{name}.{key}", value)
        _assert_same_on_all_ranks("codes revived", torch.tensor(float(revived[0])))
        if revived[0] == 0:
            raise AssertionError("no dead code was revived: the test does not exercise revival")
        # the ranks did see different data (else identical codebooks would prove nothing)
        codes = torch.cat(local_codes).float()
        gathered = [torch.empty_like(codes) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, codes)
        if torch.equal(gathered[0], gathered[1]):
            raise AssertionError("both ranks produced the same codes: data was not different")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(DEADLINE_S + 60)
def test_ranks_hold_identical_codebooks_after_training_on_different_data() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    context = mp.start_processes(
        _worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=5):  # raises if a worker raised
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
