"""The plan of a dataset job: which items, which tokenizer, how they are cut into shards.

Shard ``k`` covers items ``[k * shard_size, min((k + 1) * shard_size, num_items))`` of the
sorted item list, whatever the engine, batch size or number of workers, so a shard's content
is fixed by the plan alone. The plan is stored in ``DST/plan.json`` by the first run; every
later run recomputes it from its own arguments and compares: a changed input (items added,
removed, resized or with new metadata), a different tokenizer (weights, configuration, anytok
version), precision, segment policy or shard size is an error, never a silently mixed
dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anytok.datasets.files import atomic_write_text
from anytok.datasets.sources import DatasetError, Item, canonical_json
from anytok.tokens import TokenSpec

PLAN_FORMAT = "anytok.dataset_plan/1"
PLAN_NAME = "plan.json"
# Fields of the plan that decide the shards' content; the others are for people.
_VERIFIED = (
    "format",
    "tokenizer_fingerprint",
    "token_spec",
    "anytok_version",
    "precision",
    "segment",
    "num_items",
    "items_digest",
    "shard_size",
)


def items_digest(items: Sequence[Item]) -> str:
    """SHA-256 of the sorted item list (ids, sources, sizes, metadata, known errors)."""
    h = hashlib.sha256()
    for item in items:
        h.update(canonical_json(item.digest_fields()).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a tokenizer's architecture, configuration and every parameter and buffer
    (names, dtypes, shapes, bytes): two models with equal fingerprints encode alike."""
    h = hashlib.sha256()
    identity = {
        "arch": getattr(model, "anytok_arch", type(model).__name__),
        "config": getattr(model, "anytok_config", None),
    }
    h.update(json.dumps(identity, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        # Bytes through a uint8 view: works for every dtype numpy lacks (bfloat16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def spec_without_name(spec_json: str) -> dict[str, Any]:
    """The spec as a dict minus ``name`` (the name says how the model was found, not what it
    computes: ``ckpt/`` and ``./ckpt`` are the same tokenizer) and ``architecture`` (the
    fingerprint covers it; plans written before specs carried it still verify)."""
    data = json.loads(spec_json)
    data.pop("name", None)
    data.pop("architecture", None)
    return data


@dataclass(frozen=True)
class Plan:
    """What a dataset job encodes and how it is sharded (``DST/plan.json``).

    Attributes:
        tokenizer: the tokenizer's name as first given (``arch.tag`` or a directory).
        tokenizer_fingerprint: :func:`model_fingerprint` of its weights.
        token_spec: the :class:`TokenSpec` as JSON (written into every shard).
        anytok_version: version of the anytok that encodes.
        precision: ``"fp32"`` (CPU) or ``"bf16-autocast"`` (CUDA): tokens of the two can differ.
        segment: the :class:`~anytok.datasets.sources.SegmentPolicy` as a dict.
        num_items: items in the sorted list (shards cover them all, bad ones included).
        items_digest: :func:`items_digest` of that list.
        shard_size: items per shard (the last shard may hold fewer).
        src: the SRC argument of the first run (informational: SRC may move).
        format: plan format version.
    """

    tokenizer: str
    tokenizer_fingerprint: str
    token_spec: str
    anytok_version: str
    precision: str
    segment: dict[str, Any]
    num_items: int
    items_digest: str
    shard_size: int
    src: str
    format: str = PLAN_FORMAT

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_items / self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        """Item indices ``[start, stop)`` of shard ``k``."""
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} outside [0, {self.num_shards})")
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.num_items)

    def shard_of(self, index: int) -> int:
        """The shard holding item ``index``."""
        return index // self.shard_size

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec.from_json(self.token_spec)

    def verified(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in _VERIFIED}
        out["token_spec"] = spec_without_name(self.token_spec)
        return out

    @property
    def digest(self) -> str:
        """SHA-256 of the verified fields; every shard records the digest of its plan."""
        return hashlib.sha256(canonical_json(self.verified()).encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


_WHAT = {
    "tokenizer_fingerprint": "the tokenizer's weights or configuration",
    "token_spec": "the tokenizer's token spec",
    "anytok_version": "the anytok version",
    "precision": "the precision (CPU fp32 vs CUDA bf16)",
    "segment": "the segment policy (--segment / --segment-seconds)",
    "num_items": "the number of input items",
    "items_digest": "the input items (files added, removed, resized or with new metadata)",
    "shard_size": "the shard size (--shard-size)",
    "format": "the plan format",
}


def prepare_plan(dst: Path, plan: Plan) -> Plan:
    """Store ``plan`` in ``dst`` (first run) or check it against the stored one (resume).

    Returns the plan to run: the stored one on resume (its tokenizer name and spec name are
    kept, so every shard of a dataset says the same even if the model path was re-spelled).

    Raises:
        DatasetError: ``dst`` holds a different plan (the message lists what changed and
            what to do), or is a non-empty folder that is not a dataset.
    """
    path = dst / PLAN_NAME
    if not path.is_file():
        visible = [p for p in dst.iterdir() if not p.name.startswith(".")] if dst.is_dir() else []
        if visible:
            raise DatasetError(
                f"{dst}: folder is not empty and holds no {PLAN_NAME}; give encode-dataset a "
                "new or empty output folder"
            )
        dst.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, plan.to_json())
        return plan
    try:
        stored = Plan.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"{path}: unreadable plan ({err}); use a new output folder") from err
    old, new = stored.verified(), plan.verified()
    changed = [key for key in _VERIFIED if old[key] != new[key]]
    if changed:
        what = "; ".join(_WHAT[key] for key in changed)
        raise DatasetError(
            f"{dst} was started with a different plan: changed {what}. Resume with the same "
            "input, tokenizer and options, or write to a new output folder"
        )
    return stored


__all__ = [
    "PLAN_FORMAT",
    "PLAN_NAME",
    "Plan",
    "items_digest",
    "model_fingerprint",
    "prepare_plan",
    "spec_without_name",
]
