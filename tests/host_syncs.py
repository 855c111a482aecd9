"""A CPU-side detector of host synchronisations, shared by the tests.

On the CPU nothing waits, but the ops that would make the host wait for a CUDA device are
the same: the tests run code under :class:`HostSyncs` and count them. It sees aten ops, so
it cannot see a device-to-host copy by ``.cpu()`` / ``.tolist()`` (a no-op on the CPU);
the GPU tests check those with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import anytok

PACKAGE = str(Path(anytok.__file__).parent)

#: aten ops that copy a device value to the host: directly (``.item()``, ``bool()``), or
#: inside their CUDA kernel because their output's size depends on the data (``bincount``
#: reads ``max()``, ``nonzero`` its count ...). The mode sees the op, never the copy inside.
SYNCING_OPS = {
    "_local_scalar_dense", "is_nonzero", "item", "bincount", "nonzero", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive",
}  # fmt: skip


class HostSyncs(TorchDispatchMode):
    """Counts the aten ops that synchronise with a CUDA device (``SYNCING_OPS``, boolean-mask
    indexing, ``repeat_interleave`` with tensor repeats): their names in ``ops``, and in
    ``sites`` the innermost anytok frame (``file:line``) that called each.

    ``host_only``: fragments of ``path:function`` of code whose tensors stay on the host on a
    GPU too (the data pipeline, optimizers' step counters); an op called from there is not
    counted.
    """

    def __init__(self, host_only: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.host_only = host_only
        self.ops: list[str] = []
        self.sites: list[str] = []

    @property
    def count(self) -> int:
        return len(self.ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_mask = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in args[1]
        )
        tensor_repeats = (  # repeat_interleave's output size is the sum of a tensor
            name == "repeat_interleave"
            and func._overloadname in ("Tensor", "self_Tensor")
            and (kwargs or {}).get("output_size") is None
        )
        if name in SYNCING_OPS or boolean_mask or tensor_repeats:
            stack = traceback.extract_stack()
            frames = [f"{frame.filename}:{frame.name}" for frame in stack]
            if not any(part in frame for frame in frames for part in self.host_only):
                self.ops.append(name)
                ours = [f for f in stack if f.filename.startswith(PACKAGE)]
                self.sites.append(
                    f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
                )
        return func(*args, **(kwargs or {}))
