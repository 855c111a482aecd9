"""Finished token datasets written by the real shard writer, without a tokenizer: for the
tests of ``iter_rows`` and ``export-tokens``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anytok.datasets.plan import Plan
from anytok.datasets.shards import ItemResult, SegmentCodes, finalize, write_shard
from anytok.datasets.sources import Item
from anytok.tokens import TokenSpec


def finished_token_dataset(
    dst: Path, spec: TokenSpec, codes: list[np.ndarray], shard_size: int = 2
) -> Path:
    """A finished dataset at ``dst`` holding one row per ``codes`` entry ``(levels,
    *positions)``, items ``i000``, ``i001`` ..."""
    dst.mkdir(parents=True)
    plan = Plan(
        tokenizer="fake.tiny",
        tokenizer_fingerprint="0" * 64,
        token_spec=spec.to_json(),
        anytok_version="0",
        precision="fp32",
        segment={"policy": "full"},
        num_items=len(codes),
        items_digest="0" * 64,
        shard_size=shard_size,
        src="src",
    )
    items = [Item(id=f"i{k:03d}", source=f"i{k}", path=f"/x/i{k}") for k in range(len(codes))]
    for s in range(plan.num_shards):
        a, b = plan.shard_range(s)
        results = [
            ItemResult(i, [SegmentCodes(0, 0.0, None, np.asarray(codes[i]))]) for i in range(a, b)
        ]
        write_shard(dst, plan, s, items[a:b], results)
    finalize(dst, plan)
    return dst
