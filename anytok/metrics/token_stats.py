"""Statistics of token streams: codebook usage, perplexity, entropy, n-grams, Zipf fit.

Following "Analyzing The Language of Visual Tokens" (Chan et al. 2024,
https://arxiv.org/abs/2411.05001), each level's codes are read as a language: one sentence
per item, positions in raster order (time for audio; rows then columns for images; frames,
rows, columns for video). Counting uses ``numpy.unique`` on the codes and on pair ids
``previous * K + next``, never an ``N x K`` or ``K x K`` matrix, so codebooks of 64k codes
(or LFQ's 2^18) cost memory in proportion to the tokens seen.

All entropies are in bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

#: Codebooks up to this size keep a dense per-code histogram (for usage plots).
DENSE_HISTOGRAM_MAX = 1 << 20


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution given by ``counts`` (zeros ignored)."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts / total
    return max(0.0, float(-(p * np.log2(p)).sum()))  # never -0.0


def zipf_fit(counts: np.ndarray) -> dict[str, float]:
    """Least-squares fit of ``log f = log C - s log rank`` to the rank-frequency curve.

    Returns ``{"exponent": s, "r2": ...}`` (NaN with fewer than 3 distinct codes). Natural
    language gives ``s`` near 1; the paper finds visual tokens flatter.
    """
    freqs = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])[::-1]
    if freqs.size < 3:
        return {"exponent": math.nan, "r2": math.nan}
    x = np.log(np.arange(1, freqs.size + 1, dtype=np.float64))
    y = np.log(freqs)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else math.nan
    return {"exponent": float(-slope), "r2": r2}


class _Histogram:
    """Counts of int64 (or, for huge ids, Python-int) values, kept compact as sorted
    ``(keys, counts)`` arrays; new values wait in a list until there are many."""

    COMPACT_EVERY = 1 << 22

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, values: np.ndarray) -> None:
        self._pending.append(values)
        self._pending_size += values.size
        if self._pending_size >= self.COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        values = np.concatenate(self._pending)
        new_keys, new_counts = np.unique(values, return_counts=True)
        keys = np.concatenate([self.keys.astype(values.dtype), new_keys])
        counts = np.concatenate([self.counts, new_counts])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        self._compact()
        return self.keys, self.counts


class LevelCounter:
    """Unigram and bigram counts of one level's token stream.

    Args:
        codebook_size: codes are in ``[0, codebook_size)``.
    """

    def __init__(self, codebook_size: int):
        self.codebook_size = int(codebook_size)
        self.unigrams = _Histogram()
        self.bigrams = _Histogram()
        self.tokens = 0

    def update(self, sequence: np.ndarray) -> None:
        """Add one item's codes ``(positions,)`` in raster order; pairs never cross items."""
        sequence = np.asarray(sequence, dtype=np.int64).reshape(-1)
        self.tokens += sequence.size
        self.unigrams.add(sequence)
        if sequence.size > 1:
            if self.codebook_size <= (1 << 31):  # the pair id fits in int64
                pairs = sequence[:-1] * self.codebook_size + sequence[1:]
            else:  # LFQ-size codebooks: exact Python integers
                pairs = sequence[:-1].astype(object) * self.codebook_size + sequence[1:]
            self.bigrams.add(pairs)

    def summary(self) -> dict[str, Any]:
        """Usage, perplexity, unigram / bigram / conditional entropy, Zipf fit."""
        _, uni = self.unigrams.finalize()
        _, bi = self.bigrams.finalize()
        h1 = entropy_bits(uni)
        h2 = entropy_bits(bi)
        used = int(uni.size)
        return {
            "codebook_size": self.codebook_size,
            "tokens": self.tokens,
            "used_codes": used,
            # The fraction of the codebook seen, and of what this many tokens could have seen.
            "usage": used / self.codebook_size,
            "usage_of_possible": used / max(1, min(self.codebook_size, self.tokens)),
            "perplexity": 2.0**h1,
            "unigram_entropy_bits": h1,
            "max_entropy_bits": math.log2(self.codebook_size),
            "bigram_entropy_bits": h2,
            # H(X_t | X_t-1) = H(X_t-1, X_t) - H(X_t-1), the marginal of the first element
            # approximated by the unigram distribution (they differ by one token per item).
            "conditional_entropy_bits": max(h2 - h1, 0.0) if bi.size else math.nan,
            "distinct_bigrams": int(bi.size),
            "zipf": zipf_fit(uni),
        }

    def histogram(self) -> np.ndarray | None:
        """Dense ``(codebook_size,)`` counts, or None for huge codebooks."""
        if self.codebook_size > DENSE_HISTOGRAM_MAX:
            return None
        keys, counts = self.unigrams.finalize()
        hist = np.zeros(self.codebook_size, dtype=np.int64)
        hist[keys.astype(np.int64)] = counts
        return hist


class TokenStatistics:
    """Per-level statistics over many items.

    Args:
        codebook_sizes: one size per level.
    """

    def __init__(self, codebook_sizes: tuple[int, ...] | list[int]):
        self.levels = [LevelCounter(int(k)) for k in codebook_sizes]
        self.items = 0

    def update(self, codes: Tensor | np.ndarray | Sequence[Tensor | np.ndarray]) -> None:
        """Add one item's codes ``(levels, *positions)`` (valid positions only), or one array
        per level when the levels lie on different grids
        (:meth:`~anytok.codecs.base.Tokenizer.informative_codes`)."""
        levels = [
            c.detach().cpu().numpy() if isinstance(c, Tensor) else np.asarray(c) for c in codes
        ]
        if len(levels) != len(self.levels):
            raise ValueError(
                f"TokenStatistics: codes have {len(levels)} levels, expected {len(self.levels)}"
            )
        for level, counter in zip(levels, self.levels):
            counter.update(level.reshape(-1))
        self.items += 1

    def summary(self) -> dict[str, Any]:
        """``{"items", "levels": [per-level summary], "mean": {...}}``; the mean averages the
        numeric per-level fields (Zipf exponent included)."""
        levels = [counter.summary() for counter in self.levels]
        keys = ("usage", "perplexity", "unigram_entropy_bits", "bigram_entropy_bits")
        mean = {k: float(np.mean([lv[k] for lv in levels])) for k in keys}
        mean["conditional_entropy_bits"] = float(
            np.mean([lv["conditional_entropy_bits"] for lv in levels])
        )
        mean["zipf_exponent"] = float(np.mean([lv["zipf"]["exponent"] for lv in levels]))
        # Bits per position actually needed by an ideal order-0 entropy coder, all levels.
        mean["entropy_bits_per_position"] = float(sum(lv["unigram_entropy_bits"] for lv in levels))
        return {"items": self.items, "levels": levels, "mean": mean}


__all__ = ["LevelCounter", "TokenStatistics", "entropy_bits", "zipf_fit"]
