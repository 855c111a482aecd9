"""Helpers that keep codebook statistics identical on every rank under torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (no-op outside distributed runs); returns it."""
    if is_distributed() and not torch.compiler.is_compiling():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over ranks in place (no-op outside distributed runs); returns it."""
    if is_distributed() and not torch.compiler.is_compiling():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Copy rank ``src``'s ``tensor`` to every rank in place (no-op outside distributed runs)."""
    if is_distributed() and not torch.compiler.is_compiling():
        dist.broadcast(tensor, src=src)
    return tensor


def shared_randint(low: int, high: int, device: torch.device) -> int:
    """A host integer drawn uniformly from ``[low, high)``, the same on every rank.

    On one process it comes from torch's host generator, so the caller never waits for
    ``device``. Under torch.distributed rank 0 draws it on ``device`` (the backend's) and
    broadcasts it; reading it back is one host sync.
    """
    if not is_distributed():
        return int(torch.randint(low, high, ()))
    return int(broadcast_(torch.randint(low, high, (), device=device)))
