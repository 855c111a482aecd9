"""anytok: audio, image and video tokenizers for language models.

``anytok.load(name).encode(media)`` turns media into :class:`Tokens`; ``decode`` turns
them back. ``anytok.list_models()`` lists every registered tokenizer.
"""

from __future__ import annotations

__version__ = "0.1.0"

from anytok.registry import (
    DEFAULT_MODELS,
    PretrainedCfg,
    create_model,
    list_models,
    load,
    register,
)
from anytok.tokens import LMVocab, Tokens, TokenSpec

__all__ = [
    "DEFAULT_MODELS",
    "LMVocab",
    "PretrainedCfg",
    "TokenSpec",
    "Tokens",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "register",
]
