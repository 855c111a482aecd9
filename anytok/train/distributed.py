"""torch.distributed set-up for ``torchrun``: process group, device, rank helpers.

``torchrun --nproc_per_node N -m anytok.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; one process per device then trains with DistributedDataParallel. NCCL on
CUDA, gloo on the CPU. Without those variables everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from anytok.devices import DeviceError, parse_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:K"``; None / ``"auto"`` picks CUDA when
            available (:func:`anytok.devices.parse_device` checks the rest). Under
            torchrun, CUDA means ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = parse_device(device)  # None / "auto": CUDA when available
    use_cuda = wanted.type == "cuda"
    if use_cuda:
        index = local_rank if world > 1 or wanted.index is None else wanted.index
        resolved = torch.device("cuda", index)
        torch.cuda.set_device(resolved)
    else:
        resolved = wanted
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=resolved)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


# The work handle of the barrier the last run ended with (see final_barrier).
_closing_barrier: dist.Work | None = None


def final_barrier(info: DistInfo) -> None:
    """A run's last collective: a barrier whose work handle stays referenced (until the
    next run's), so that tearing the process group down cannot deadlock.

    Why (torch 2.11, gloo): a worker thread that drops the last reference to a finished
    collective frees the Python tensors it held, which needs the GIL; a gloo barrier also
    holds weak references to the collectives in flight when it was queued, deferring their
    frees to its own. ``~ProcessGroupGloo`` (run when DDP's reducer releases the group,
    holding the GIL) joins those threads, so a worker still due to free such work waits
    for the GIL forever: ``anytok train`` under torchrun hung so in 3 of ~140 runs on a
    loaded 2-core machine. With this barrier's handle held here, every earlier
    collective is either freed already (the worker frees under the queue's lock, which
    queuing the barrier takes) or freed with the barrier, here in Python, after the group.
    Other backends (NCCL) free the handle at once, as a plain barrier does.
    """
    global _closing_barrier
    if not info.distributed:
        return
    work = dist.barrier(async_op=True)
    assert work is not None  # async_op=True always returns the work
    work.wait()
    if dist.get_backend() == "gloo":
        _closing_barrier = work


def collective_device(info: DistInfo) -> torch.device:
    """Where a collective's tensors must live: NCCL moves CUDA tensors only (a CPU tensor
    fails with "No backend type associated with device type cpu"), gloo CPU ones."""
    return info.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(values: Tensor, info: DistInfo) -> Tensor:
    """Mean of ``values`` over ranks (a copy on ``values``' device; identity on one process).

    The sum travels on :func:`collective_device`, wherever ``values`` lie."""
    if not info.distributed:
        return values
    out = values.to(collective_device(info), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / info.world_size).to(values.device)


def gather_bytes(data: bytes, info: DistInfo) -> list[bytes]:
    """Every rank's ``data``, in rank order (on every rank); ``data`` may be empty.

    Sent as uint8 tensors (padded to the longest), never pickled objects.
    """
    if not info.distributed:
        return [data]
    device = collective_device(info)
    payload = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if data  # frombuffer refuses an empty buffer
        else torch.zeros(0, dtype=torch.uint8, device=device)
    )
    size = torch.tensor([payload.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    gathered = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return [bytes(g[: int(s.item())].cpu().numpy()) for g, s in zip(gathered, sizes)]


__all__ = [
    "DeviceError",
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "collective_device",
    "final_barrier",
    "gather_bytes",
    "init_distributed",
]
