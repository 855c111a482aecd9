"""A Hugging Face cache holding one repository's ``model.safetensors``, laid out as
``huggingface_hub`` lays it out, for tests of tags that import another project's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


def put_in_hub_cache(
    root: Path, repo_id: str, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write ``state`` as ``repo_id``'s ``model.safetensors`` under ``root`` and point the
    Hugging Face cache there; ``$ANYTOK_HOME`` is emptied and the Hub switched off."""
    import huggingface_hub.constants

    revision = "0" * 40
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("ANYTOK_HOME", str(root / "anytok"))
    monkeypatch.setenv("ANYTOK_OFFLINE", "1")
