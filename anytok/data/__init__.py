"""Training data: folders and JSONL manifests, deterministic splits, random segments / crops /
clips with augmentation, padded batches, and offline synthetic datasets.

* :mod:`anytok.data.sources`: :func:`scan_sources`, :func:`read_manifest`, :func:`split_items`
* :mod:`anytok.data.datasets`: :class:`AudioSegments`, :class:`ImageCrops`,
  :class:`VideoClips`, :func:`collate`, :class:`ResumableSampler`
* :mod:`anytok.data.synthetic`: :func:`make_dataset` (imported on use: it needs scikit-image
  for photos)
"""

from anytok.data.datasets import (
    AudioSegments,
    Augment,
    Batch,
    DataError,
    ImageCrops,
    MediaDataset,
    ResumableSampler,
    VideoClips,
    collate,
    item_seed,
)
from anytok.data.sources import (
    ManifestError,
    MediaItem,
    SourceError,
    read_manifest,
    scan_sources,
    split_items,
    split_value,
    without_files_of,
)

__all__ = [
    "AudioSegments",
    "Augment",
    "Batch",
    "DataError",
    "ImageCrops",
    "ManifestError",
    "MediaDataset",
    "MediaItem",
    "ResumableSampler",
    "SourceError",
    "VideoClips",
    "collate",
    "item_seed",
    "read_manifest",
    "scan_sources",
    "split_items",
    "split_value",
    "without_files_of",
]
