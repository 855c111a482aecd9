"""What a benchmark ran on: package versions, device, threads (recorded in every report)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

import torch

#: Packages whose versions change numbers in a report.
PACKAGES = (
    "anytok",
    "torch",
    "torchaudio",
    "torchvision",
    "torchmetrics",
    "numpy",
    "scipy",
    "pesq",
    "pystoi",
    "safetensors",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> dict[str, Any]:
    """The device by name: GPU model, memory and CUDA version, or the CPU and its threads."""
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {
            "type": "cuda",
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        }
    return {
        "type": device.type,
        "name": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is empty)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, Python, platform and device, for the report."""
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_description(device),
    }


__all__ = ["PACKAGES", "device_description", "environment", "package_versions"]
