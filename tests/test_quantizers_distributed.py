"""Two CPU ranks (gloo) train VQ-family quantizers on different data: every codebook statistic
is all-reduced and every random choice (k-means seeds and revived codes, drawn from every
rank's rows; quantizer-dropout level counts) is made on rank 0 and broadcast, so both ranks
must end with identical state."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from multiprocessing.synchronize import Event

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrun_ranks import free_port, spawn_ranks

from anytok.quantizers import GroupedResidualVQ, ResidualVQ, VectorQuantize

WORLD_SIZE = 2
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
STEPS = 6
DEADLINE_S = 180


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


def _join_gloo(rank: int, port: int, timeout_s: float = 60) -> None:
    """Join the two-rank gloo group on the loopback interface, one thread."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=timeout_s),
    )


def _worker(rank: int, port: int) -> None:
    _join_gloo(rank, port)
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


@needs_gloo
@pytest.mark.timeout(DEADLINE_S + 60)
def test_ranks_hold_identical_codebooks_after_training_on_different_data() -> None:
    spawn_ranks(_worker, (free_port(),), WORLD_SIZE, DEADLINE_S)


#: One small instance of every quantizer family, for the rank-0-only evaluation below.
EVAL_FAMILIES: dict[str, tuple[str, dict[str, object]]] = {
    "vq": ("vq", {"dim": 8, "codebook_size": 16}),
    "rvq": ("rvq", {"dim": 8, "num_quantizers": 2, "codebook_size": 16}),
    "grvq": ("grvq", {"dim": 8, "groups": 2, "num_quantizers": 2, "codebook_size": 16}),
    "split_rvq": ("split_rvq", {"dim": 8, "num_quantizers": 2, "codebook_size": 16}),
    "simvq": ("simvq", {"dim": 8, "codebook_size": 16}),
    "multiscale": ("multiscale", {"dim": 8, "codebook_size": 16, "scales": (1, 2, 4)}),
    "fsq": ("fsq", {"levels": [5, 5], "dim": 8}),
    "rfsq": ("rfsq", {"levels": [5, 5], "num_quantizers": 2, "dim": 8}),
    "lfq": ("lfq", {"dim": 8, "codebook_size": 2**8}),
    "bsq": ("bsq", {"dim": 8, "codebook_dim": 8}),
    "group_lfq": ("group_lfq", {"dim": 8, "codebook_dim": 8, "num_groups": 2}),
    "binary": ("binary", {"dim": 8, "bits": 16, "bits_per_code": 8}),
    "dimwise": ("dimwise", {"dim": 8, "num_bins": 8}),
}
EVAL_COLLECTIVE_TIMEOUT_S = 10
EVAL_DEADLINE_S = 120


def _rank0_eval_worker(rank: int, port: int, rank0_done: Event) -> None:
    """Rank 0 runs an eval forward of every family while rank 1 joins no collective (it waits
    for rank 0 outside torch.distributed): a collective in eval mode times out and raises."""
    from anytok.quantizers import build

    _join_gloo(rank, port, EVAL_COLLECTIVE_TIMEOUT_S)
    try:
        if rank == 0:
            try:
                torch.manual_seed(0)
                for family, (name, kwargs) in EVAL_FAMILIES.items():
                    quantizer = build(name, **kwargs).eval()
                    shape = (2, 4, 4, 8) if name == "multiscale" else (2, 10, 8)
                    started = time.monotonic()
                    try:
                        with torch.no_grad():
                            out = quantizer(torch.randn(shape))
                    except RuntimeError as error:  # gloo: the collective timed out
                        raise AssertionError(
                            f"{family}: rank-0-only eval forward ran a collective: {error}"
                        ) from None
                    elapsed = time.monotonic() - started
                    assert elapsed < EVAL_COLLECTIVE_TIMEOUT_S / 2, f"{family}: took {elapsed} s"
                    assert out.metrics, f"{family}: eval forward reports no metrics"
            finally:
                rank0_done.set()
        else:  # busy elsewhere (saving a checkpoint): no collective until rank 0 is done
            if not rank0_done.wait(timeout=EVAL_DEADLINE_S):
                raise AssertionError("rank 0 never finished its eval forwards")
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.timeout(EVAL_DEADLINE_S + 60)
def test_rank0_only_eval_forward_runs_no_collective() -> None:
    """Every quantizer family's eval forward (metrics included) uses no collective, so the
    common ``if rank == 0: evaluate()`` loop cannot hang (FSQ, LFQ, BSQ, ... all-reduced their
    code counts in eval mode too)."""
    rank0_done = mp.get_context("spawn").Event()
    spawn_ranks(_rank0_eval_worker, (free_port(), rank0_done), WORLD_SIZE, EVAL_DEADLINE_S)


def _seed_sampling_worker(rank: int, port: int) -> None:
    """k-means seeds and revived codes are drawn from every rank's rows: rank 0 holding
    none (a batch of padding), only NaN, or few no longer leaves zero or repeated seeds, or
    dead codes that no row replaces."""
    from anytok.quantizers.vq import sample_rows_synced

    _join_gloo(rank, port)
    try:
        torch.manual_seed(rank)

        # Distinct rows: row i of rank r holds 1000 * r + i in every column.
        def rows(n: int) -> torch.Tensor:
            return (1000.0 * rank + torch.arange(n, dtype=torch.float32))[:, None].repeat(1, 3)

        cases = {"rank 0 empty": (0, 40), "both": (7, 30), "too few": (3, 5)}
        for name, sizes in cases.items():
            x = rows(sizes[rank])
            if rank == 1 and name == "both":
                x[::2] = float("nan")  # 15 finite rows here, 7 on rank 0: 22 >= 16
            seeds = sample_rows_synced(x, 16)
            _assert_same_on_all_ranks(f"{name}: seeds", seeds)
            assert bool(torch.isfinite(seeds).all()), f"{name}: a non-finite seed"
            values = seeds[:, 0].tolist()
            assert all(seeds[:, 1].eq(seeds[:, 0])), f"{name}: rows were mixed"
            pool = {1000.0 * r + i for r in range(WORLD_SIZE) for i in range(sizes[r])}
            assert set(values) <= pool, f"{name}: seeds that are no row"
            if sum(sizes) >= 16:
                assert len(set(values)) == 16, f"{name}: repeated seeds {values}"
            if name == "rank 0 empty":
                assert all(v >= 1000 for v in values)
            if name == "both":  # drawn from both ranks' rows
                assert any(v < 1000 for v in values) and any(v >= 1000 for v in values)

        # Dead-code revival draws from the same pool: 10 dead codes of 16.
        revival_cases = {"rank 0 empty": (0, 5), "rank 0 all NaN": (4, 30), "both": (6, 9)}
        for name, sizes in revival_cases.items():
            vq = VectorQuantize(3, 16, threshold_ema_dead_code=1.0).train()
            with torch.no_grad():
                vq.embedding.fill_(-1.0)
                vq.ema_cluster_size.copy_(torch.arange(16.0) >= 10)
            x = rows(sizes[rank])
            if rank == 0 and name == "rank 0 all NaN":
                x[:] = float("nan")
            replaced = int(vq.revive_dead_codes_(x))
            finite = [sizes[1], sizes[1], sum(sizes)][list(revival_cases).index(name)]
            assert replaced == min(10, finite), f"{name}: {replaced} codes revived"
            _assert_same_on_all_ranks(f"{name}: codebook", vq.embedding)
            _assert_same_on_all_ranks(f"{name}: counts", vq.ema_cluster_size)
            revived = vq.embedding[:10][vq.embedding[:10, 0] != -1.0]
            assert revived.shape[0] == replaced and bool(torch.isfinite(revived).all()), name
            assert bool(vq.embedding[10:].eq(-1.0).all()), f"{name}: a live code was replaced"
            values = revived[:, 0].tolist()
            pool = {1000.0 * r + i for r in range(WORLD_SIZE) for i in range(sizes[r])}
            assert set(values) <= pool and len(set(values)) == replaced, f"{name}: {values}"
            if name != "both":  # rank 0 had no finite row: all from rank 1
                assert all(v >= 1000 for v in values), name
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.timeout(DEADLINE_S + 60)
def test_kmeans_seeds_and_revivals_come_from_every_ranks_rows() -> None:
    spawn_ranks(_seed_sampling_worker, (free_port(),), WORLD_SIZE, DEADLINE_S)
