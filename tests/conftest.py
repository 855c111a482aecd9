"""Fixtures shared by several test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (training tests: steady timings on 2-core CI machines,
    and results that do not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def audio_ckpt(tmp_path_factory) -> Path:
    """A saved tiny ``seanet_fsq_24khz`` (dataset jobs load tokenizers by path)."""
    import anytok
    from anytok.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("audio_ckpt")
    save_checkpoint(anytok.create_model("seanet_fsq_24khz", tiny=True), path)
    return path
