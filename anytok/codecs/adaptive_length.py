"""Variable-length 1D image tokens: prefix training, per-image length choice, fixed-length
padding.

1D tokenizers (TiTok, FlexTok) can be trained so that any prefix of their token sequence
decodes to a coarser image (nested dropout: FlexTok https://arxiv.org/abs/2502.13967,
One-D-Piece). Then an image needs only as many tokens as its content requires:

* :func:`sample_prefix_lengths` / :func:`prefix_mask`: the training-time prefix draw.
* :func:`choose_length` / :func:`encode_adaptive`: per image, the smallest prefix whose
  reconstruction meets a quality target. This is the search form of KARL's halting
  ("Single-pass Adaptive Image Tokenization", https://arxiv.org/abs/2507.07995): KARL learns
  a halting head that predicts the length in one pass; here the length is found by binary
  search over candidate lengths with real decodes (exact, costs ``log2(len(candidates))``
  decodes per image). No learned halting head is included.
* :func:`pad_redundant`: pad variable-length token sequences to one length for an LM by
  repeating each sequence's own tokens cyclically (``[a, b, c] -> [a, b, c, a, b]``), with
  the true length kept in ``Tokens.lengths`` so decoding uses the real prefix. This is
  anytok's rule for redundant padding, stated here because it is not taken from a paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from anytok.tokens import Tokens

PREFIX_DISTRIBUTIONS = ("pow2", "uniform")


def sample_prefix_lengths(
    batch: int,
    max_len: int,
    distribution: str = "pow2",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Prefix lengths ``(batch,)`` in ``[1, max_len]``: ``"pow2"`` draws uniformly from
    ``{1, 2, 4, ..., max_len}`` (FlexTok), ``"uniform"`` from every length."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if distribution == "pow2":
        choices = [2**i for i in range(int(math.log2(max_len)) + 1)]
        if choices[-1] != max_len:
            choices.append(max_len)
        index = torch.randint(len(choices), (batch,), generator=generator)
        return torch.tensor(choices)[index]
    if distribution == "uniform":
        return torch.randint(1, max_len + 1, (batch,), generator=generator)
    raise ValueError(f"distribution must be one of {PREFIX_DISTRIBUTIONS}, got {distribution!r}")


def prefix_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(b, max_len)`` bool: True for the first ``lengths[i]`` positions of item ``i``."""
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


QualityFn = Callable[[Tensor, Tensor], Tensor]


def psnr(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``(b, 3, H, W)`` images in [-1, 1]."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def negative_l1(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-image ``-mean |x̂ - x|`` (higher is better, so targets read like PSNR's)."""
    return -(reconstruction.float() - target.float()).abs().flatten(1).mean(dim=1)


METRICS: dict[str, QualityFn] = {"psnr": psnr, "l1": negative_l1}


@torch.no_grad()
def choose_length(
    model: object,
    images: Tensor,
    target: float,
    *,
    metric: str = "psnr",
    candidates: Sequence[int] | None = None,
    tokens: Tokens | None = None,
) -> Tensor:
    """Per image, the smallest candidate prefix length whose reconstruction scores at least
    ``target`` (the longest candidate when none does): ``(b,)`` long.

    Quality is assumed to grow with length (what prefix training gives); binary search
    decodes ``ceil(log2(len(candidates)))`` times per image, all images batched.

    Args:
        model: a 1D tokenizer whose ``decode`` accepts codes ``(b, 1, n)`` for ``n`` up to its
            full length.
        images: ``(b, 3, H, W)`` in [-1, 1].
        target: quality to reach (dB for ``psnr``; ``-L1`` for ``l1``).
        metric: ``"psnr"`` or ``"l1"``.
        candidates: increasing lengths to choose from (default ``1, 2, 4, ..., K``).
        tokens: the images' full-length tokens, if already encoded.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    quality = METRICS[metric]
    tokens = tokens if tokens is not None else model.encode(images)  # type: ignore[attr-defined]
    full = tokens.codes.shape[-1]
    if candidates is None:
        candidates = [2**i for i in range(int(math.log2(full)) + 1)]
        if candidates[-1] != full:
            candidates = [*candidates, full]
    candidates = sorted(int(c) for c in candidates)
    if candidates[0] < 1 or candidates[-1] > full:
        raise ValueError(f"candidate lengths must lie in [1, {full}], got {candidates}")
    b = images.shape[0]
    low = torch.zeros(b, dtype=torch.long)  # index into candidates
    high = torch.full((b,), len(candidates) - 1, dtype=torch.long)
    while bool((low < high).any()):
        active = (low < high).nonzero().flatten()
        middle = (low[active] + high[active]) // 2
        # One decode per distinct length among the active images (prefixes differ in size).
        for length_index in middle.unique().tolist():
            chosen = active[middle == length_index]
            n = candidates[length_index]
            codes = tokens.codes[chosen][..., :n]
            score = quality(model.decode(codes), images[chosen])  # type: ignore[attr-defined]
            good = score.cpu() >= target
            high[chosen[good]] = length_index
            low[chosen[~good]] = length_index + 1
    return torch.tensor(candidates)[low]


@torch.no_grad()
def encode_adaptive(model: object, images: Tensor, target: float, **kwargs: object) -> list[Tokens]:
    """Encode each image with the length :func:`choose_length` picks: one trimmed
    :class:`Tokens` per image."""
    tokens = model.encode(images)  # type: ignore[attr-defined]
    lengths = choose_length(model, images, target, tokens=tokens, **kwargs)  # type: ignore[arg-type]
    return [
        Tokens(codes=tokens.codes[i : i + 1, ..., : int(n)].contiguous(), spec=tokens.spec)
        for i, n in enumerate(lengths)
    ]


def pad_redundant(sequences: Sequence[Tokens], length: int) -> Tokens:
    """Stack variable-length 1D token sequences ``(1, levels, n_i)`` into one ``Tokens``
    ``(b, levels, length)`` by cycling each sequence's own tokens; ``lengths`` keeps each
    ``n_i`` so decoding uses only the real prefix.

    The cyclic tail lives in ``.codes`` only: feed ``padded.codes`` to the LM. Positions past
    ``lengths`` count as padding everywhere else (``to_lm_ids`` emits ``pad`` there or drops
    them, ``save`` / ``load`` write 0), so those paths do not carry the repetition."""
    if not sequences:
        raise ValueError("pad_redundant: no sequences")
    rows, lengths = [], []
    for i, tokens in enumerate(sequences):
        codes = tokens.codes
        if codes.shape[0] != 1 or codes.ndim != 3:
            raise ValueError(
                f"sequence {i}: expected codes (1, levels, n), got {tuple(codes.shape)}"
            )
        n = codes.shape[-1]
        if n == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs at least one token")
        if n > length:
            raise ValueError(f"sequence {i} has {n} tokens, more than the padded length {length}")
        index = torch.arange(length, device=codes.device) % n
        rows.append(codes[..., index])
        lengths.append(n)
    return Tokens(codes=torch.cat(rows), spec=sequences[0].spec, lengths=torch.tensor(lengths))


def trim(tokens: Tokens) -> list[Tokens]:
    """Inverse of :func:`pad_redundant`: one trimmed ``Tokens`` per item."""
    lengths = (
        tokens.lengths
        if tokens.lengths is not None
        else [tokens.codes.shape[-1]] * tokens.codes.shape[0]
    )
    return [
        Tokens(codes=tokens.codes[i : i + 1, ..., : int(n)].contiguous(), spec=tokens.spec)
        for i, n in enumerate(lengths)
    ]


__all__ = [
    "METRICS",
    "PREFIX_DISTRIBUTIONS",
    "choose_length",
    "encode_adaptive",
    "pad_redundant",
    "prefix_mask",
    "psnr",
    "sample_prefix_lengths",
    "trim",
]
