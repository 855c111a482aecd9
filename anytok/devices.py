"""One reading of ``--device`` for every command: ``auto``, ``cpu``, ``cuda``, ``cuda:K`` ...

A device this machine lacks is a :class:`DeviceError` naming the option and what the
machine has, raised before any model is loaded, instead of a CUDA traceback mid-run.
"""

from __future__ import annotations

import torch

#: ``--device auto``: CUDA when this machine has it, else the CPU.
AUTO = "auto"
#: The help text of a ``--device`` option.
DEVICE_HELP = "auto (default: CUDA when available, else cpu), cpu, cuda or cuda:K"


class DeviceError(RuntimeError):
    """A device that this machine does not have, or a string that names no device."""


def parse_device(spec: str | torch.device | None, option: str = "--device") -> torch.device:
    """``spec`` as a :class:`torch.device` this machine has (``None`` / ``"auto"``: CUDA when
    available, else CPU).

    Raises:
        DeviceError: ``spec`` names no device type, or one that is not here (no CUDA, or an
            index past the GPUs this machine has); the message starts with ``option``.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == AUTO):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec.strip() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            f"{option} {spec!r}: not a device (use auto, cpu, cuda or cuda:K)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {spec}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{option} {spec}: this machine has {count} CUDA device(s)")
    elif device.type == "meta":  # shapes only: no values to encode or decode
        raise DeviceError(f"{option} {spec}: the meta device holds no data; use cpu or cuda")
    elif device.type != "cpu":
        try:  # mps, xpu ...: the backend itself says whether it is usable here
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise DeviceError(f"{option} {spec}: not usable here ({err})") from err
    return device


__all__ = ["AUTO", "DEVICE_HELP", "DeviceError", "parse_device"]
