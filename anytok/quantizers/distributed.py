"""Helpers that keep codebook statistics identical on every rank under torch.distributed."""

from __future__ import annotations

import random

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
    """A host integer drawn uniformly from ``[low, high)``, the same on every rank."""
    return int(_rank_zeros(random.randrange(low, high), device))


def shared_random(device: torch.device) -> float:
    """A host float drawn uniformly from ``[0, 1)``, the same on every rank."""
    return _rank_zeros(random.random(), device)


def _rank_zeros(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (``value`` itself on one process).

    The draws come from Python's ``random`` (as vector-quantize-pytorch's quantizer dropout;
    the training loop seeds and checkpoints it), so on one process the caller never waits for
    ``device`` and touches no tensor. Under torch.distributed the value travels through a
    broadcast on ``device`` (the backend's); reading it back is one host sync.
    """
    if not is_distributed():
        return value
    return float(broadcast_(torch.tensor(value, dtype=torch.float64, device=device)))
