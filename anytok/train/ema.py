"""Exponential moving average of generator weights, on ``torch.optim.swa_utils``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
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
    # A loaded state may hold another count: update_ema then reads it again.
    ema.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_host_count", None))
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """Average ``model``'s parameters into ``ema`` and copy its buffers.

    The arithmetic of ``ema.update_parameters(model)`` (the first update copies, later ones
    call ``ema.multi_avg_fn`` per device and dtype) for an EMA on the model's devices and
    dtypes (as :func:`make_ema` makes it), without its host reads: it branches on
    the ``n_averaged`` tensor twice and copies it to the device every call, which on a GPU
    makes every training step wait. Here the count is read once per process (again after a
    state is loaded, see :func:`set_ema_count`) and then also counted on the host.
    """
    count = getattr(ema, "_host_count", None)
    if count is None:
        count = int(ema.n_averaged)  # the one host read
    groups = _parameter_groups(ema, model)
    for averaged_group, current_group in groups:
        if count == 0:
            torch._foreach_copy_(averaged_group, current_group)
        else:
            ema.multi_avg_fn(averaged_group, current_group, ema.n_averaged)
    for averaged, current in zip(ema.module.buffers(), model.buffers()):
        averaged.copy_(current)
    ema.n_averaged += 1
    ema._host_count = count + 1


def _parameter_groups(
    ema: AveragedModel, model: nn.Module
) -> list[tuple[list[Tensor], list[Tensor]]]:
    """``(ema parameters, model parameters)`` per device and dtype of the EMA's, made once
    per model: walking a deep module tree for its parameters costs more than the update of
    a small model. Parameters keep their tensors while training (optimizers rely on that
    too); buffers are read afresh at every update, since modules may rebind them."""
    cached = getattr(ema, "_parameter_groups", None)
    if cached is not None and cached[0] is model:
        return cached[1]
    grouped: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for averaged, current in zip(ema.module.parameters(), model.parameters(), strict=True):
        if (averaged.device, averaged.dtype) != (current.device, current.dtype):
            raise ValueError(
                f"update_ema: the EMA holds a {averaged.dtype} parameter on {averaged.device} "
                f"where the model has {current.dtype} on {current.device}; make the EMA "
                "with make_ema(model) after moving the model"
            )
        group = grouped.setdefault((averaged.device, averaged.dtype), ([], []))
        group[0].append(averaged.detach())
        group[1].append(current.detach())
    groups = list(grouped.values())
    ema._parameter_groups = (model, groups)
    return groups


def set_ema_count(ema: AveragedModel, count: int) -> None:
    """Restore how many updates ``ema`` has averaged (a resumed run)."""
    ema.n_averaged.fill_(count)
    ema._host_count = count


__all__ = ["make_ema", "set_ema_count", "update_ema"]
