"""Export a token dataset for LM trainers: a flat nanoGPT-style ``.bin``, or Megatron-LM's
indexed ``.bin`` + ``.idx``. Both carry LM ids from :meth:`anytok.tokens.Tokens.to_lm_ids`
(an :class:`~anytok.tokens.LMVocab` with ``offset``, per-level or shared code ranges, then
``bos`` / ``eos`` / ``pad``), one document per dataset row, in dataset order (shard by
shard, row by row).

A document's ids:

- ``flatten``: ``[bos] p0l0 p0l1 … p1l0 … [eos]`` (all levels of a position together);
- ``delay`` / ``parallel``: the ``(levels, width)`` id grid written time-major, i.e. column
  by column: ``grid.T.reshape(-1)`` (so ``levels`` consecutive ids are one time step, and
  ``doc.reshape(-1, levels).T`` gives the grid back).

Files for ``OUT`` (a path prefix; a path ending in ``.bin``, ``.idx`` or ``.json`` names the
same prefix without that suffix):

``OUT.bin``
    the ids of every document back to back, in ``dtype`` (little-endian), no header:
    ``np.memmap(OUT.bin, dtype=meta["dtype"], mode="r")``. ``bin``: the smallest unsigned
    type holding ``vocab_size - 1`` (uint8 / uint16 / uint32 / uint64); ``megatron``: the
    smallest of Megatron's index types (uint8, uint16, int32, int64).
``OUT.idx`` (``megatron`` only) — Megatron-LM ``MMapIndexedDataset`` index, version 1,
    all little-endian (``megatron/core/datasets/indexed_dataset.py``)::

        offset  size           field
        0       9              magic b"MMIDIDX\\x00\\x00"
        9       8   uint64     version = 1
        17      1   uint8      dtype code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                               6 float64, 7 float32, 8 uint16
        18      8   uint64     sequence_count N (= documents)
        26      8   uint64     document_count D = N + 1 (entries of document_indices)
        34      4N  int32[N]   sequence_lengths: ids per document
        34+4N   8N  int64[N]   sequence_pointers: byte offset of each document in OUT.bin
        34+12N  8D  int64[D]   document_indices: 0, 1, …, N (one sequence per document)

    No ``sequence_modes`` block (not multimodal). ``megatron.core.datasets.indexed_dataset
    .IndexedDataset(OUT)`` reads it; ``--data-path OUT`` in Megatron-LM.
``OUT.json``
    written last (its presence marks a complete export): ``format``, ``layout`` (``bin`` /
    ``megatron``), ``dtype``, ``pattern``, ``add_special``, ``vocab`` (``LMVocab.to_dict``),
    ``vocab_size``, ``bos``, ``eos``, ``pad``, ``levels``, ``spatial_shape`` (position axes
    after the first, ``[]`` for audio), ``token_spec``, ``tokenizer``, ``source`` (dataset
    folder), ``plan_digest``, ``documents``, ``tokens``.

In a flat ``.bin`` documents are told apart by their ``bos``; export with special tokens
(the default) to keep them separable, or use ``megatron``, whose index keeps boundaries.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from anytok.datasets.files import atomic_write, atomic_write_text, remove_stale_temps
from anytok.datasets.shards import ERRORS_NAME, iter_rows, read_manifest
from anytok.datasets.sources import DatasetError
from anytok.tokens import PATTERNS, LMVocab, Pattern, Tokens, TokenSpec

EXPORT_FORMAT = "anytok.lm_tokens/1"
EXPORT_LAYOUTS = ("bin", "megatron")
#: the files of an export ``OUT``: ``OUT.bin``, ``OUT.idx`` (megatron only), ``OUT.json``
EXPORT_SUFFIXES = (".bin", ".idx", ".json")
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
#: Megatron-LM's ``DType`` codes.
MEGATRON_DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
Layout = Literal["bin", "megatron"]


def id_dtype(vocab_size: int, layout: Layout) -> np.dtype:
    """The smallest integer dtype holding ids ``[0, vocab_size)`` for ``layout``."""
    top = vocab_size - 1
    choices = (
        (np.uint8, np.uint16, np.uint32, np.uint64)
        if layout == "bin"
        else (np.uint8, np.uint16, np.int32, np.int64)  # the integer types Megatron indexes
    )
    for dtype in choices:
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DatasetError(f"a vocabulary of {vocab_size} ids fits no {layout} dtype")


def document_ids(tokens: Tokens, vocab: LMVocab, pattern: Pattern, add_special: bool) -> np.ndarray:
    """The 1D int64 LM ids of one item ``(1, levels, *positions)`` (see the module doc)."""
    ids = tokens.to_lm_ids(vocab, pattern, add_special)
    if pattern == "flatten":
        return ids[0].numpy()
    return ids[0].T.reshape(-1).numpy()  # (levels, width) -> time-major


@dataclass
class ExportSummary:
    """What an export wrote."""

    files: list[Path]
    documents: int
    tokens: int
    dtype: str
    vocab_size: int


def _overflow_advice(
    spec: TokenSpec, offset: int, shared_levels: bool, dataset: str, err: ValueError
) -> str:
    """Why the LM ids of ``spec`` pass the int64 range, and what fits: a smaller offset,
    ``--shared-levels``, or nothing (the codebooks alone are too large)."""

    def fits(offset: int, shared: bool) -> bool:
        try:
            LMVocab.from_spec(spec, offset=offset, shared_levels=shared)
        except ValueError:
            return False
        return True

    if offset and fits(0, shared_levels):
        return f"--offset {offset}: too large for the codebooks of {dataset} ({err}); give a smaller offset"
    hint = (
        "; --shared-levels (one id range for every level) fits"
        if not shared_levels and fits(offset, True)
        else ""
    )
    return f"{dataset}: its codebooks {spec.codebook_sizes} give ids past the int64 range ({err}){hint}"


def export_tokens(
    dataset: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layout: Layout = "bin",
    pattern: Pattern = "flatten",
    offset: int = 0,
    shared_levels: bool = False,
    add_special: bool = True,
) -> ExportSummary:
    """Export a finished dataset folder to ``OUT.bin`` (+ ``OUT.idx``) + ``OUT.json``.

    Args:
        dataset: output folder of :func:`anytok.datasets.encode_dataset`.
        out: path prefix of the files to write (``runs/audio`` -> ``runs/audio.bin`` ...).
        layout: ``"bin"`` (nanoGPT-style flat memmap) or ``"megatron"`` (``.bin`` + ``.idx``).
        pattern, offset, shared_levels, add_special: the LM id mapping
            (:class:`~anytok.tokens.LMVocab`, :meth:`~anytok.tokens.Tokens.to_lm_ids`).

    Raises:
        DatasetError: bad options (an ``offset`` past the int64 id range included), an
            ``out`` that is or holds a folder, a missing or unreadable shard, rows whose
            spatial shapes differ, or no ids at all (no rows, or only empty rows without
            special tokens): neither Megatron-LM nor ``np.memmap`` opens an empty ``.bin``.
    """
    if layout not in EXPORT_LAYOUTS:
        raise DatasetError(f"layout must be one of {EXPORT_LAYOUTS}, got {layout!r}")
    if pattern not in PATTERNS:
        raise DatasetError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if offset < 0:
        raise DatasetError(f"offset must be >= 0, got {offset}")
    manifest = read_manifest(dataset)
    spec = TokenSpec.from_dict(manifest["token_spec"])
    try:
        vocab = LMVocab.from_spec(spec, offset=offset, shared_levels=shared_levels)
    except ValueError as err:  # ids past int64
        raise DatasetError(
            _overflow_advice(spec, offset, shared_levels, str(dataset), err)
        ) from err
    dtype = id_dtype(vocab.size, layout)
    bin_path, idx_path, meta_path = export_files(out)
    inside = Path(dataset).resolve()
    if any(inside in (p.resolve(), *p.resolve().parents) for p in (bin_path, meta_path)):
        raise DatasetError(
            f"OUT {out}: inside the dataset folder {dataset}, whose own files "
            "(manifest.json, plan.json, shards) the export would overwrite or remove; "
            "write it outside the dataset"
        )
    if bin_path.parent.exists() and not bin_path.parent.is_dir():
        raise DatasetError(f"OUT {out}: {bin_path.parent} is a file, not a folder")
    for path in (bin_path, idx_path, meta_path):
        if path.is_dir():
            raise DatasetError(f"OUT {out}: {path} is a folder, where the export writes a file")
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    # what a killed export left (.OUT.bin.<pid>.tmp ...): nothing else would ever remove it
    remove_stale_temps(bin_path.parent, {p.name for p in (bin_path, idx_path, meta_path)})
    meta_path.unlink(missing_ok=True)  # an old sidecar must not vouch for a half-new export
    # An old index must not describe the new .bin: a bin-layout export over a megatron one, or
    # a megatron export killed between writing the .bin and the .idx.
    idx_path.unlink(missing_ok=True)
    lengths: list[int] = []
    spatial: list[tuple[int, ...]] = []

    def write_bin(f: IO[bytes]) -> None:
        for row, tokens in iter_rows(dataset):
            rest = tuple(row["shape"][2:])
            if spatial and rest != spatial[0]:
                raise DatasetError(
                    f"row {row['id']!r} has spatial shape {rest}, others {spatial[0]}: "
                    "one export needs one shape"
                )
            spatial[:1] = [rest]
            ids = document_ids(tokens, vocab, pattern, add_special)
            f.write(ids.astype(dtype.newbyteorder("<")).tobytes())  # little-endian anywhere
            lengths.append(int(ids.size))
        if not sum(lengths):  # raised here, the temporary file goes and no .bin is written
            raise _no_ids(dataset, manifest, len(lengths), bin_path)

    atomic_write(bin_path, write_bin)
    files = [bin_path]
    if layout == "megatron":
        atomic_write(idx_path, lambda f: f.write(megatron_index(lengths, dtype)))
        files.append(idx_path)
    meta = {
        "format": EXPORT_FORMAT,
        "layout": layout,
        "dtype": dtype.name,
        "pattern": pattern,
        "add_special": add_special,
        "vocab": vocab.to_dict(),
        "vocab_size": vocab.size,
        "bos": vocab.bos,
        "eos": vocab.eos,
        "pad": vocab.pad,
        "levels": spec.num_levels,
        "spatial_shape": list(spatial[0]) if spatial else [],
        "token_spec": spec.to_dict(),
        "tokenizer": manifest["tokenizer"],
        "source": os.fspath(dataset),
        "plan_digest": manifest["plan_digest"],
        "documents": len(lengths),
        "tokens": sum(lengths),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    files.append(meta_path)
    return ExportSummary(files, len(lengths), sum(lengths), dtype.name, vocab.size)


def _no_ids(
    dataset: str | os.PathLike[str], manifest: dict[str, Any], rows: int, bin_path: Path
) -> DatasetError:
    """The error of an export without a single id (an empty ``.bin`` nothing can map)."""
    if rows:
        why = (
            f"its {rows} row(s) are all empty, and without special tokens (--no-special) "
            "they have no ids"
        )
    else:
        why = "it has no rows"
        if manifest.get("failed"):
            why += (
                f" ({manifest['failed']} of its {manifest.get('items')} item(s) failed: "
                f"see its {ERRORS_NAME})"
            )
    return DatasetError(
        f"no ids to export: {dataset}: {why}; an empty {bin_path.name} cannot be read "
        "(Megatron-LM and np.memmap cannot map an empty file)"
    )


def megatron_index(lengths: list[int], dtype: np.dtype) -> bytes:
    """The bytes of a Megatron-LM ``.idx`` for documents of ``lengths`` ids in ``dtype``.

    Written here rather than with Megatron's ``IndexedDatasetBuilder``: megatron-core pulls in
    a training stack for a 34-byte header and three arrays (layout in the module docstring).
    """
    if any(n >= 2**31 for n in lengths):
        raise DatasetError("a document of 2**31 ids or more does not fit Megatron's int32 lengths")
    n = len(lengths)
    sizes = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(n, dtype=np.int64)
    if n:
        np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    header = MEGATRON_MAGIC + struct.pack(
        "<QBQQ", MEGATRON_VERSION, MEGATRON_DTYPE_CODES[dtype], n, n + 1
    )
    documents = np.arange(n + 1, dtype=np.int64)
    return (
        header
        + sizes.astype("<i4").tobytes()
        + pointers.astype("<i8").tobytes()
        + documents.astype("<i8").tobytes()
    )


# --------------------------------------------------------------------------- reading back


def export_files(out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(OUT.bin, OUT.idx, OUT.json)`` of the export ``out``.

    ``out`` is the prefix, or the path of one of those files: ``lm/audio``, ``lm/audio.bin``
    and ``lm/audio.idx`` all name ``lm/audio.bin`` + ``lm/audio.idx`` + ``lm/audio.json``
    (Megatron-LM's data path is the prefix; nanoGPT's is the ``.bin``). ``out`` itself must
    not be a folder; its prefix may be one (``tokens/libri.bin`` next to ``tokens/libri/``).
    """
    text = os.fspath(out)
    prefix = Path(out)
    if prefix.suffix in EXPORT_SUFFIXES:
        prefix = prefix.with_suffix("")
    if not prefix.name:
        raise DatasetError(f"export path {text!r} names no file")
    # Only OUT itself: the prefix of `tokens/libri.bin` may be the dataset folder
    # `tokens/libri`; the files tokens/libri.bin, .idx, .json do not clash with it.
    if text.endswith(("/", os.sep)) or Path(out).is_dir():
        raise DatasetError(
            f"export path {text!r} is a folder; give a path prefix inside it, such as "
            f"{os.path.join(text, 'tokens')!r} (-> tokens.bin, tokens.json ...)"
        )
    bin_path, idx_path, meta_path = (prefix.with_name(prefix.name + s) for s in EXPORT_SUFFIXES)
    return bin_path, idx_path, meta_path


def read_export_meta(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``OUT.json`` sidecar of an export (``out`` as in :func:`export_files`)."""
    path = export_files(out)[2]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no export sidecar (was the export completed?)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_megatron_index(idx: str | os.PathLike[str]) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """``(dtype, sequence_lengths, sequence_pointers)`` of a Megatron ``.idx`` file.

    Raises:
        ValueError: naming the file, when it is not a complete index of this export's kind
            (bad magic, version or dtype code, truncated, not one sequence per document).
    """
    data = Path(idx).read_bytes()
    if data[:9] != MEGATRON_MAGIC:
        raise ValueError(f"{idx}: not a Megatron MMapIndexedDataset index (bad magic)")
    if len(data) < 34:
        raise ValueError(f"{idx}: truncated Megatron index ({len(data)} bytes, header is 34)")
    version, code, n, d = struct.unpack_from("<QBQQ", data, 9)
    if version != MEGATRON_VERSION:
        raise ValueError(f"{idx}: index version {version}, expected {MEGATRON_VERSION}")
    dtypes = {v: k for k, v in MEGATRON_DTYPE_CODES.items()}
    if code not in dtypes:
        raise ValueError(f"{idx}: unknown dtype code {code}; known: {sorted(dtypes)}")
    dtype = dtypes[code]
    if d != n + 1:
        raise ValueError(
            f"{idx}: {d} document indices for {n} sequences; expected one sequence per document"
        )
    if len(data) != 34 + 12 * n + 8 * d:
        raise ValueError(
            f"{idx}: {len(data)} bytes, but a Megatron index of {n} sequences has "
            f"{34 + 12 * n + 8 * d} (truncated, or not written by anytok?)"
        )
    sizes = np.frombuffer(data, dtype="<i4", count=n, offset=34)
    pointers = np.frombuffer(data, dtype="<i8", count=n, offset=34 + 4 * n)
    documents = np.frombuffer(data, dtype="<i8", count=d, offset=34 + 12 * n)
    if not np.array_equal(documents, np.arange(n + 1)):
        raise ValueError(f"{idx}: expected one sequence per document")
    return dtype, sizes, pointers


def iter_documents(out: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The documents of an export, each a 1D array of ids in the export's dtype.

    Raises:
        ValueError: naming the file, when the ``.bin`` does not match the index or sidecar
            (truncated, or another export's).
    """
    meta = read_export_meta(out)
    bin_path, idx_path, _ = export_files(out)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    size = bin_path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{bin_path}: {size} bytes, not a whole number of {dtype.name} ids")
    data = np.memmap(bin_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
    if data.size != meta["tokens"]:
        raise ValueError(
            f"{bin_path}: holds {data.size} ids, but {export_files(out)[2]} says {meta['tokens']}"
        )
    if meta["layout"] == "megatron":
        idx_dtype, sizes, pointers = read_megatron_index(idx_path)
        if idx_dtype != np.dtype(meta["dtype"]) or len(sizes) != meta["documents"]:
            raise ValueError(
                f"{idx_path}: {len(sizes)} {idx_dtype.name} documents, but the sidecar says "
                f"{meta['documents']} {meta['dtype']} documents (another export's index?)"
            )
        ends = pointers // dtype.itemsize + sizes
        if len(sizes) and (int(ends.max()) > data.size or int(sizes.min()) < 0):
            raise ValueError(f"{idx_path}: its documents reach past the end of {bin_path}")
        for n, pointer in zip(sizes, pointers):
            start = int(pointer) // dtype.itemsize
            yield np.asarray(data[start : start + int(n)])
        return
    if not meta["add_special"]:
        raise DatasetError(
            f"{bin_path}: exported without special tokens, so its documents cannot be told "
            "apart; export with special tokens or to the megatron layout"
        )
    step = 1 if meta["pattern"] == "flatten" else meta["levels"]
    starts = np.flatnonzero(data[::step] == meta["bos"]) * step
    if len(starts) != meta["documents"] or (len(starts) and starts[0] != 0):
        raise ValueError(
            f"{bin_path}: found {len(starts)} document(s) (bos ids at document starts), but "
            f"the sidecar says {meta['documents']}"
        )
    bounds = [*starts.tolist(), data.size]
    for a, b in itertools.pairwise(bounds):
        yield np.asarray(data[a:b])


def document_tokens(document: np.ndarray, meta: dict[str, Any]) -> Tokens:
    """The :class:`Tokens` ``(1, levels, *positions)`` of one exported document."""
    spec = TokenSpec.from_dict(meta["token_spec"])
    vocab = LMVocab.from_dict(meta["vocab"])
    ids = torch.from_numpy(document.astype(np.int64))
    shape = None if len(spec.layout) == 1 else (None, *meta["spatial_shape"])
    if meta["pattern"] == "flatten":
        return Tokens.from_lm_ids(
            [ids], spec, vocab, "flatten", add_special=meta["add_special"], shape=shape
        )
    grid = ids.reshape(-1, meta["levels"]).T[None]
    return Tokens.from_lm_ids(
        grid, spec, vocab, meta["pattern"], add_special=meta["add_special"], shape=shape
    )


__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_LAYOUTS",
    "EXPORT_SUFFIXES",
    "MEGATRON_DTYPE_CODES",
    "ExportSummary",
    "document_ids",
    "document_tokens",
    "export_files",
    "export_tokens",
    "id_dtype",
    "iter_documents",
    "megatron_index",
    "read_export_meta",
    "read_megatron_index",
]
