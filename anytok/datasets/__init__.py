"""Whole datasets to LM token shards, resumable, on one machine or on Ray; exporters for LM
trainers.

- :func:`encode_dataset` (``anytok encode-dataset``): a folder, JSONL manifest or WebDataset
  tar shards -> Parquet shards + ``manifest.json`` + ``errors.jsonl``
  (:mod:`~anytok.datasets.shards` documents the format, :mod:`~anytok.datasets.plan` the
  resume design).
- :func:`export_tokens` (``anytok export-tokens``): a dataset -> flat ``.bin`` (nanoGPT) or
  Megatron-LM ``.bin`` + ``.idx`` (:mod:`~anytok.datasets.export`).
- :func:`iter_rows` reads a dataset back as :class:`~anytok.tokens.Tokens`.

Ray is imported only by ``engine="ray"``; importing this package needs pyarrow, not Ray.
"""

from anytok.datasets.cli import encode_dataset_from_cli, export_tokens_from_cli
from anytok.datasets.export import (
    ExportSummary,
    document_tokens,
    export_files,
    export_tokens,
    iter_documents,
    read_export_meta,
)
from anytok.datasets.job import DatasetSummary, encode_dataset
from anytok.datasets.shards import iter_rows, read_manifest
from anytok.datasets.sources import DatasetError, Item, SegmentPolicy, list_items

__all__ = [
    "DatasetError",
    "DatasetSummary",
    "ExportSummary",
    "Item",
    "SegmentPolicy",
    "document_tokens",
    "encode_dataset",
    "encode_dataset_from_cli",
    "export_files",
    "export_tokens",
    "export_tokens_from_cli",
    "iter_documents",
    "iter_rows",
    "list_items",
    "read_export_meta",
    "read_manifest",
]
