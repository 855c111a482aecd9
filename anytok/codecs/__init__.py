"""Complete tokenizers, one family per file under ``audio/``, ``image/`` and ``video/``.

Every module in those packages is imported here, so a new family file registers itself
without touching any other file.
"""

from __future__ import annotations

import importlib
import pkgutil

from anytok.codecs import audio, image, video
from anytok.codecs.base import (
    AudioTokenizer,
    ImageTokenizer,
    ResidualAudioTokenizer,
    Tokenizer,
    TokenizerOutput,
    VideoTokenizer,
)


def _import_families() -> None:
    for package in (audio, image, video):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")


_import_families()

__all__ = [
    "AudioTokenizer",
    "ImageTokenizer",
    "ResidualAudioTokenizer",
    "Tokenizer",
    "TokenizerOutput",
    "VideoTokenizer",
]
