"""Codebook statistics: perplexity, usage fraction and dead codes, per level.

Counts come from :func:`~anytok.quantizers.kernels.bin_counts` (never a one-hot ``N x K``
matrix, never a host synchronisation). In training they are summed over ranks, so every rank
reports, and acts on, the same numbers; in eval mode (``synced=False``) they describe this
rank's batch only: no collective, so a rank-0-only validation loop cannot hang.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anytok.quantizers.base import Fp32Buffers
from anytok.quantizers.distributed import all_reduce_sum_
from anytok.quantizers.kernels import bin_counts

#: Codebooks larger than this keep no per-code buffer (LFQ with 2^32 codes would need 32 GiB);
#: their metrics are computed on the batch alone with ``torch.unique``.
MAX_TRACKED_CODEBOOK = 1 << 20


def code_counts(codes: Tensor, codebook_size: int, *, synced: bool = True) -> Tensor:
    """Histogram of ``codes`` (any shape, values in ``[0, codebook_size)``), summed over ranks
    when ``synced`` (a collective every rank must join: training only).

    Returns float32 ``(codebook_size,)``.
    """
    counts = bin_counts(codes, codebook_size)
    return all_reduce_sum_(counts) if synced else counts


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of the empirical code distribution given by ``counts`` (any shape)."""
    probs = counts / counts.sum().clamp_min(1e-12)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return entropy.exp()


def batch_code_metrics(codes: Tensor, codebook_size: int, *, synced: bool) -> dict[str, Tensor]:
    """Perplexity and usage fraction of one level's codes in this batch.

    ``usage`` is the fraction of the codebook used, capped by the number of vectors (a batch of
    100 vectors can use at most 100 codes). With ``synced`` (training: every rank calls it)
    the counts are summed over ranks; without (eval) they are this rank's, with no collective.
    """
    codes = codes.detach().reshape(-1)
    if codebook_size <= MAX_TRACKED_CODEBOOK:
        counts = code_counts(codes, codebook_size, synced=synced)
    else:  # huge codebooks: count only what occurs (local to this rank)
        _, counts = torch.unique(codes, return_counts=True)
        counts = counts.float()
    used = (counts > 0).sum().float()
    # On the device (no host synchronisation): min(codebook_size, max(vectors, 1)).
    possible = counts.sum().clamp(1, codebook_size)
    return {"perplexity": perplexity(counts), "usage": used / possible}


class CodeUsageTracker(Fp32Buffers):
    """Windowed usage of one codebook: an exponential moving average of code counts.

    With ``window`` W, counts decay by ``1 - 1/W`` per update, so a code that has not been
    chosen for about W batches falls below ``dead_threshold`` (in expected hits per batch)
    and is reported dead. Quantizers use :meth:`dead_mask` to choose codes to revive.
    """

    fp32_buffers = ("ema_counts",)

    def __init__(self, codebook_size: int, window: int = 100, dead_threshold: float = 1e-2):
        super().__init__()
        if codebook_size > MAX_TRACKED_CODEBOOK:
            raise ValueError(
                f"CodeUsageTracker keeps one float per code; codebook_size {codebook_size} "
                f"exceeds {MAX_TRACKED_CODEBOOK}: use batch_code_metrics instead"
            )
        self.codebook_size = codebook_size
        self.decay = 1.0 - 1.0 / max(window, 1)
        self.dead_threshold = dead_threshold
        self.register_buffer("ema_counts", torch.zeros(codebook_size), persistent=False)
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool), persistent=False)

    @torch.no_grad()
    def update(self, codes: Tensor) -> dict[str, Tensor]:
        """Add one batch of codes; return ``perplexity``, ``usage`` and ``dead_codes``."""
        counts = code_counts(codes.detach(), self.codebook_size)
        # The first batch sets the average, later ones decay into it; chosen on the device,
        # since branching on ``initted`` would synchronise with the host on every step.
        decayed = torch.lerp(self.ema_counts, counts, 1 - self.decay)
        self.ema_counts.copy_(torch.where(self.initted, decayed, counts))
        self.initted.fill_(True)
        dead = self.dead_mask()
        return {
            "perplexity": perplexity(counts),
            "usage": 1.0 - dead.float().mean(),
            "dead_codes": dead.sum().float(),
        }

    def dead_mask(self) -> Tensor:
        """Bool ``(codebook_size,)``: codes whose windowed usage is below the threshold."""
        return self.ema_counts < self.dead_threshold
