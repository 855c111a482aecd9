"""Weights of metric models (LPIPS, Inception, I3D, UTMOS, speaker / ASR / OCR / face models).

Every model-based metric is an architecture written (or named) here plus a safetensors file
the user supplies: nothing is downloaded, nothing is unpickled, and no TorchScript is loaded.
Checkpoints published as pickles (``.pth``, ``.pt``, ``.ckpt``) must be converted to
safetensors once, outside anytok; ``docs/bench.md`` says how for each metric.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

#: File suffixes that are (or usually are) Python pickles: refused with a conversion hint.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")


class MetricWeightsError(ValueError):
    """Weights for a metric model that are missing, not safetensors, or do not fit."""


def check_weights_path(path: str | os.PathLike[str], what: str) -> Path:
    """The path as a :class:`Path`, after checking it is an existing safetensors file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricWeightsError(f"{what}: weights file {p} does not exist")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise MetricWeightsError(
            f"{what}: {p} looks like a pickled PyTorch file; anytok loads only safetensors. "
            "Convert it once with safetensors.torch.save_file (see docs/bench.md)"
        )
    with open(p, "rb") as handle:
        head = handle.read(9)
    # A safetensors file starts with a little-endian u64 header length, then '{'.
    if len(head) < 9 or head[8:9] != b"{":
        raise MetricWeightsError(f"{what}: {p} is not a safetensors file")
    return p


def load_weights(module: nn.Module, path: str | os.PathLike[str], *, what: str) -> nn.Module:
    """Load a safetensors state dict into ``module`` strictly (shared tensors allowed).

    Raises:
        MetricWeightsError: naming the file and the missing / unexpected / misshapen keys.
    """
    from safetensors.torch import load_model

    p = check_weights_path(path, what)
    try:
        load_model(module, str(p), strict=True, device="cpu")
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in lines[:6])
        raise MetricWeightsError(
            f"{what}: {p} does not match the expected architecture ({detail})"
        ) from err
    return module


@dataclass(frozen=True)
class ModelWeights:
    """A named architecture and its safetensors weights, as given on the command line.

    ``"arch:path"`` or a bare ``"path"`` (the metric's default architecture).
    """

    arch: str | None
    path: Path

    @classmethod
    def parse(cls, text: str, default_arch: str | None = None) -> ModelWeights:
        arch, sep, path = text.partition(":")
        # "C:\\x" on Windows and paths holding ':' are paths, not arch:path pairs.
        if not sep or "/" in arch or "\\" in arch or len(arch) == 1:
            return cls(default_arch, Path(text))
        return cls(arch, Path(path))


__all__ = [
    "PICKLE_SUFFIXES",
    "MetricWeightsError",
    "ModelWeights",
    "check_weights_path",
    "load_weights",
]
