"""Exponential moving average of generator weights, on ``torch.optim.swa_utils``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (kept in eval mode): ``ema = decay * ema + (1 - decay) * w``.

    Parameters are averaged; buffers are copied from the model at each update instead
    (``use_buffers=False``): averaging would corrupt integer buffers, and buffers such as EMA
    codebooks are already running averages of their own.
    """
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    ema.module.eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """Average ``model``'s parameters into ``ema`` and copy its buffers."""
    ema.update_parameters(model)
    for averaged, current in zip(ema.module.buffers(), model.buffers()):
        averaged.copy_(current)


__all__ = ["make_ema", "update_ema"]
