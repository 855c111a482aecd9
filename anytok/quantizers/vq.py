"""Vector quantization with a learned codebook: :class:`VectorQuantize` and :class:`SimVQ`.

Axis legend used in shapes and einops patterns:

* ``b`` batch, ``n`` flattened positions (all leading axes of the input),
* ``d`` input channels (``dim``), ``c`` codebook-space channels (``codebook_dim``),
* ``k`` codebook entries (``codebook_size``).

Every search goes through :func:`anytok.quantizers.kernels.nearest_codeword` (chunked, never an
``n x k`` matrix on the heap), and every codebook statistic is an ``index_add_`` summed over
ranks, so all ranks hold the same codebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    check_last_dim,
    checked_codes,
    fp32_layer,
    register_quantizer,
    squared_error_mean,
    straight_through,
    zero_loss,
)
from anytok.quantizers.distributed import all_reduce_sum_, broadcast_, is_distributed
from anytok.quantizers.kernels import codeword_counts_and_sums, nearest_codeword
from anytok.quantizers.kernels.reference import DEFAULT_MEMORY_BUDGET
from anytok.quantizers.stats import CodeUsageTracker, code_counts, perplexity

# --------------------------------------------------------------------------- helpers
# Shared by vq.py, residual.py and multiscale.py (one definition each).


def fp32_region(like: Tensor) -> torch.autocast:
    """Context that turns autocast off on ``like``'s device: quantization math runs in fp32."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Unit vectors along the last axis."""
    return F.normalize(x, p=2, dim=-1, eps=eps)


def rotation_trick(source: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Value of ``target``; gradient to ``source`` through a fixed rotation and rescaling.

    The rotation trick of Fifty et al. 2024, "Restructuring Vector Quantization with the
    Rotation Trick" (https://arxiv.org/abs/2410.06424): ``target = s * R @ source`` where ``R``
    rotates ``source``'s direction onto ``target``'s and ``s = |target| / |source|``; ``R`` and
    ``s`` are treated as constants, so the gradient keeps the angle between the input and its
    codeword. ``R = I - 2 r r^T + 2 t u^T`` with unit vectors ``u`` (source), ``t`` (target)
    and ``r = (u + t) / |u + t|``, applied without forming the ``d x d`` matrix.

    Shapes: ``source`` and ``target`` ``(..., d)``; returns ``(..., d)``.
    """
    source_norm = source.norm(dim=-1, keepdim=True).clamp_min(eps)
    target_norm = target.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (source / source_norm).detach()
    t = (target / target_norm).detach()
    r = l2norm(u + t).detach()
    rotated = (
        source
        - 2 * (source * r).sum(-1, keepdim=True) * r
        + 2 * (source * u).sum(-1, keepdim=True) * t
    )
    return rotated * (target_norm / source_norm).detach()


def codeword_output(source: Tensor, codewords: Tensor, rotate: bool) -> Tensor:
    """The training output: ``codewords``' values with the rotation-trick gradient to
    ``source`` (``rotate``) or the straight-through one (a view of ``codewords``, no copy)."""
    return rotation_trick(source, codewords) if rotate else straight_through(codewords, source)


def local_code_metrics(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Perplexity and usage fraction of this rank's batch, without any collective.

    Used in eval mode: a rank-0-only validation loop cannot hang on an all-reduce, and the
    ``index_add_`` histogram has a static shape, so it compiles with ``fullgraph=True``.
    """
    flat = indices.reshape(-1)
    counts = torch.zeros(codebook_size, device=flat.device, dtype=torch.float32)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    possible = max(min(codebook_size, flat.numel()), 1)
    return {"perplexity": perplexity(counts), "usage": (counts > 0).sum().float() / possible}


def level_metrics(metrics: dict[str, Tensor], level: int | str) -> dict[str, Tensor]:
    """Suffix metric names with their level: ``perplexity`` -> ``perplexity/3``."""
    return {f"{name}/{level}": value for name, value in metrics.items()}


def smoothed_cluster_size(counts: Tensor, eps: float) -> Tensor:
    """Code counts ``(k,)`` with Laplace smoothing ``eps`` (no code has a zero count), the
    same total: what :class:`VectorQuantize` divides its EMA code sums by."""
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


def relevel_metrics(metrics: dict[str, Tensor], level: int | str) -> dict[str, Tensor]:
    """Replace the level suffix: ``perplexity/0`` -> ``perplexity/3``."""
    return {f"{name.rsplit('/', 1)[0]}/{level}": value for name, value in metrics.items()}


def _draw_revivals(dead: Tensor, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Pair dead codes with distinct random rows of ``x (n, c)``, without a host sync (one
    process; :func:`_draw_revivals_synced` under torch.distributed).

    ``dead (k,)`` bool. Returns ``m = min(k, n)`` distinct slots: ``codes (m,)`` long,
    ``revived (m,)`` bool (the slots that hold a dead code and got a finite row) and
    ``rows (m, c)`` in ``dtype``, a distinct random row of ``x`` per slot, finite rows first.
    With ``n < k`` the slots are the dead codes in a uniformly random order, then live ones.
    A row holding NaN or Inf never revives a code (its slot is not ``revived``).
    """
    k, n = dead.shape[0], x.shape[0]
    m = min(k, n)
    if m == k:  # every code has a slot
        codes = torch.arange(k, device=dead.device)
    else:  # the m smallest of random keys, dead codes' keys below live ones'
        keys = torch.rand(k, device=dead.device).masked_fill_(~dead, 2.0)
        codes = keys.topk(m, largest=False, sorted=False).indices
    finite = finite_rows(x)
    pick = _random_rows_finite_first(finite, m)
    return codes, dead[codes] & finite[pick], x[pick].to(dtype)


def _draw_revivals_synced(
    dead: Tensor, x: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_draw_revivals` under torch.distributed: replacement rows come from every
    rank's rows (as vector-quantize-pytorch's ``sample_vectors_distributed``), so a rank
    holding few or no finite rows (a batch of padding on rank 0) no longer stops revival.

    ``dead (k,)`` is the same on every rank (the EMA counts are all-reduced). One all-reduce
    of the ranks' row counts and rank 0's dead count, read on the host (the one sync), sizes
    the draw: ``r = min(dead codes, finite rows of all ranks)``. Rank 0 draws ``r`` dead codes
    and ``r`` distinct finite rows of the pool and broadcasts them; each rank fills in its
    rows and an all-reduce gives every rank the same ``(r, c)`` rows. Only revived rows move.
    """
    finite = finite_rows(x)
    rows, finite_counts, num_dead = _rank_row_counts(x, finite, rank0_extra=dead.sum())
    r = min(num_dead, sum(finite_counts))
    drawn = torch.zeros(2, r, dtype=torch.int64, device=x.device)
    if r == 0:
        return drawn[0], drawn[0].bool(), x.new_zeros(0, x.shape[-1]).to(dtype)
    if dist.get_rank() == 0:
        keys = torch.rand(dead.shape[0], device=dead.device).masked_fill_(~dead, 2.0)
        drawn[0] = keys.topk(r, largest=False, sorted=False).indices
        drawn[1] = torch.randperm(sum(finite_counts), device=x.device)[:r]
    broadcast_(drawn)
    picked = _pool_rows(x, finite, rows, finite_counts, drawn[1])
    return drawn[0], torch.ones(r, dtype=torch.bool, device=x.device), picked.to(dtype)


def read_kmeans_flags_(layers: Sequence[VectorQuantize]) -> None:
    """Read the ``initted`` flag of every k-means stage that has not read it yet, all in one
    host read: residual stages first used late (quantizer dropout, random bandwidth) then
    need no read of their own in a later step."""
    pending = [layer for layer in layers if layer.kmeans_init and layer._kmeans_pending is None]
    if pending:
        flags = torch.stack([layer.initted for layer in pending]).tolist()
        for layer, initted in zip(pending, flags):
            layer._kmeans_pending = not initted


def broadcast_once_(module: nn.Module, tensors: list[Tensor]) -> None:
    """Copy rank 0's ``tensors`` to every rank, the first time only (per module instance).

    DDP already syncs parameters and buffers when it wraps a model; this covers training
    without DDP (or ranks that built the model from different seeds), so codebook state that
    is later only updated by all-reduced statistics starts out identical everywhere.
    """
    if is_distributed() and not getattr(module, "_broadcast_done", False):
        for tensor in tensors:
            if tensor.dtype == torch.bool:  # gloo has no bool collectives
                as_bytes = broadcast_(tensor.data.to(torch.uint8))
                tensor.data.copy_(as_bytes.bool())
            else:
                broadcast_(tensor.data)
        module._broadcast_done = True


def sample_rows_synced(x: Tensor, num: int) -> Tensor:
    """``num`` random rows of every rank's ``x (n_r, c)``, the same on every rank.

    Without replacement when the ranks hold ``num`` rows or more together; rows holding NaN
    or Inf are drawn only once no finite row is left (with fewer rows than ``num``, such a
    draw takes a finite row instead). Every rank must call this with the same ``num``.

    On one process the draw needs no host sync. Under torch.distributed each rank's row
    counts are all-reduced and read on the host (k-means seeds: once per codebook), rank 0
    draws from the pool of all ranks' rows (as vector-quantize-pytorch's
    ``sample_vectors_distributed``: a rank with few or no rows, say a batch of padding on
    rank 0, no longer limits the seeds) and each rank fills in its rows of a sum.
    """
    if not is_distributed():
        return _sample_rows_local(x, num)
    finite = finite_rows(x)
    rows, finite_counts, _ = _rank_row_counts(x, finite)
    total, total_finite = sum(rows), sum(finite_counts)
    # A pool of every rank's rows, finite ones first: [0, F) are the finite rows rank by
    # rank, [F, total) the others. Rank 0 draws ids in it and broadcasts them.
    ids = torch.zeros(num, dtype=torch.int64, device=x.device)
    if dist.get_rank() == 0 and total > 0:
        if total >= num:
            finite_ids = torch.randperm(total_finite, device=x.device)
            other_ids = total_finite + torch.randperm(total - total_finite, device=x.device)
            ids.copy_(torch.cat([finite_ids, other_ids])[:num])
        else:
            ids.copy_(torch.randint(0, total_finite or total, (num,), device=x.device))
    broadcast_(ids)
    return _pool_rows(x, finite, rows, finite_counts, ids)


def _rank_row_counts(
    x: Tensor, finite: Tensor, rank0_extra: Tensor | None = None
) -> tuple[list[int], list[int], int]:
    """Every rank's row count and finite-row count (``finite (n,)`` is this rank's mask),
    and rank 0's ``rank0_extra`` count, from one all-reduce read on the host (the sync)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = torch.zeros(2 * world + 1, dtype=torch.int64, device=x.device)
    counts[rank], counts[world + rank] = x.shape[0], finite.sum()
    if rank == 0 and rank0_extra is not None:
        counts[-1] = rank0_extra
    values = all_reduce_sum_(counts).tolist()
    return values[:world], values[world:-1], values[-1]


def _pool_rows(
    x: Tensor, finite: Tensor, rows: list[int], finite_counts: list[int], ids: Tensor
) -> Tensor:
    """Rows ``ids (m,)`` of the pool of every rank's rows, the same ``(m, c)`` on every rank.

    The pool numbers the finite rows rank by rank, then the others rank by rank (``rows`` and
    ``finite_counts`` per rank, as every rank read them); each rank fills in the ids it holds
    and an all-reduce sums. No host sync: the j-th finite (other) row of this rank is found
    by a search in the running count of its finite (other) rows.
    """
    rank = dist.get_rank()
    total_finite = sum(finite_counts)
    first_finite = sum(finite_counts[:rank])
    first_other = total_finite + sum(rows[:rank]) - first_finite
    starts = torch.tensor([first_finite, first_other], device=x.device)
    sizes = torch.tensor([finite_counts[rank], rows[rank] - finite_counts[rank]], device=x.device)
    in_other = (ids >= total_finite).long()
    offset = ids - starts[in_other]
    mine = (offset >= 0) & (offset < sizes[in_other])
    out = x.new_zeros(ids.shape[0], x.shape[-1])
    n = x.shape[0]
    if n > 0:
        running = torch.stack([finite.cumsum(0), (~finite).cumsum(0)])  # (2, n)
        local = torch.searchsorted(running, (offset + 1).clamp(min=1).expand(2, -1))
        index = local.gather(0, in_other.unsqueeze(0))[0].clamp(max=n - 1)
        out = torch.where(mine.unsqueeze(-1), x[index], out)
    return all_reduce_sum_(out)


def _sample_rows_local(x: Tensor, num: int) -> Tensor:
    """:func:`sample_rows_synced` on one process."""
    out = x.new_zeros(num, x.shape[-1])
    n = x.shape[0]
    if n > 0:
        finite = finite_rows(x)
        if n >= num:
            pick = _random_rows_finite_first(finite, num)
        else:
            pick = torch.randint(0, n, (num,), device=x.device)
            pick = torch.where(finite[pick], pick, finite.to(torch.uint8).argmax())
        out.copy_(x[pick])
    return out


def _random_rows_finite_first(finite: Tensor, m: int) -> Tensor:
    """Indices ``(m,)`` of ``m <= n`` distinct random rows given their ``finite (n,)`` mask,
    the rows holding NaN or Inf after every finite one. On finite data this is the draw
    ``torch.randperm(n)[:m]`` (the same random numbers); no host sync."""
    perm = torch.randperm(finite.shape[0], device=finite.device)
    last = (~finite[perm]).to(torch.uint8)
    return perm[torch.argsort(last, stable=True)[:m]]


def _finite_code_counts(x: Tensor, indices: Tensor, num_codes: int) -> Tensor:
    """Hits per code ``(num_codes,)`` of ``indices (n,)``, rows of ``x (n, c)`` holding NaN or
    Inf left out (sent to an extra code that is dropped: no host sync)."""
    valid = torch.where(finite_rows(x), indices, num_codes)
    return code_counts(valid, num_codes + 1)[:num_codes]


def finite_rows(x: Tensor) -> Tensor:
    """Bool ``(n,)``: the rows of ``x (n, c)`` without NaN or Inf (a mask, no host sync).

    Tested on each row's sum, which is non-finite whenever one of its values is: the same
    mask as ``torch.isfinite(x).all(-1)`` without its input-sized temporaries (``isfinite``
    takes an ``abs`` of ``x``). A finite row whose sum overflows is left out too; it would
    have overflowed the code sums it was added to.
    """
    return torch.isfinite(x.sum(dim=-1))


def counts_and_sums_synced(
    x: Tensor, indices: Tensor, num_codes: int, *, finite_only: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-code hit counts ``(k,)`` and vector sums ``(k, c)`` of ``x (n, c)``, summed over
    ranks (two ``index_add_`` passes: never an ``n x k`` one-hot).

    ``finite_only``: rows of ``x`` holding NaN or Inf count for nothing (they are sent to an
    extra code that is dropped: no host sync), so one bad vector cannot poison a codebook.
    """
    if finite_only:
        indices = torch.where(finite_rows(x), indices, num_codes)
        counts, sums = codeword_counts_and_sums(x, indices, num_codes + 1)
        counts, sums = counts[:num_codes], sums[:num_codes]
    else:
        counts, sums = codeword_counts_and_sums(x, indices, num_codes)
    return all_reduce_sum_(counts.float()), all_reduce_sum_(sums.float())


@torch.no_grad()
def kmeans(
    samples: Tensor,
    num_clusters: int,
    num_iters: int,
    metric: str,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Lloyd's k-means over the vectors of every rank; returns ``(num_clusters, c)`` centroids
    identical on all ranks.

    Initial centroids are drawn from every rank's rows (:func:`sample_rows_synced`), the
    same on all ranks; each iteration all-reduces the
    per-cluster sums and counts. Assignment uses :func:`nearest_codeword` (chunked), sums
    :func:`counts_and_sums_synced` — never an ``n x k`` one-hot. Clusters left empty keep their centroid.
    With ``metric="cosine"`` the centroids are renormalised (spherical k-means).
    """
    means = sample_rows_synced(samples, num_clusters)
    for _ in range(num_iters):
        assignment = nearest_codeword(samples, means, metric=metric, memory_budget=memory_budget)
        counts, sums = counts_and_sums_synced(samples, assignment, num_clusters, finite_only=True)
        updated = sums / counts.clamp_min(1.0).unsqueeze(-1)
        if metric == "cosine":
            updated = l2norm(updated)
        means = torch.where((counts > 0).unsqueeze(-1), updated, means)
    return means


# --------------------------------------------------------------------------- VectorQuantize


@register_quantizer("vq")
class VectorQuantize(Quantizer):
    """Vector quantization with a learned codebook (van den Oord et al. 2017, VQ-VAE,
    https://arxiv.org/abs/1711.00937).

    The codebook is learned either by exponential moving averages of the vectors assigned to
    each code (VQ-VAE-2, https://arxiv.org/abs/1906.00446; the default) or, with
    ``learnable_codebook=True``, by gradient through the codebook loss
    ``|sg(z) - q|^2``. The encoder side is pulled toward its codes by the commitment loss
    ``commitment_weight * |z - sg(q)|^2``. Gradients reach the input by the straight-through
    estimator, or with ``rotation_trick=True`` by the rotation trick
    (https://arxiv.org/abs/2410.06424).

    Factorized codes (Yu et al. 2021, ViT-VQGAN, https://arxiv.org/abs/2110.04627; DAC,
    https://arxiv.org/abs/2306.06546): ``codebook_dim < dim`` projects the input to a small
    codebook space and back with linear maps; ``use_cosine_sim=True`` l2-normalises inputs and
    codes there, so the search is by cosine similarity.

    Args:
        dim: channels of the channel-last input ``(..., dim)``.
        codebook_size: number of codes ``k``.
        codebook_dim: channels of the codebook space (default ``dim``: no projections).
        use_cosine_sim: l2-normalise inputs and codes; search by cosine similarity.
        learnable_codebook: learn the codebook by gradient instead of EMA.
        decay: EMA decay of the code counts and code sums (as vector-quantize-pytorch).
        eps: Laplace smoothing of the EMA code counts.
        commitment_weight: weight of ``|z - sg(q)|^2``.
        codebook_weight: weight of the codebook loss ``|sg(z) - q|^2`` (learnable codebook).
        kmeans_init: initialise the codebook by k-means on the first training batch (every
            rank's vectors, all-reduced).
        kmeans_iters: Lloyd iterations of that k-means.
        threshold_ema_dead_code: codes whose EMA count (expected hits per batch, summed
            over ranks, with ``decay``) falls below this are replaced by random vectors of the
            current batch (drawn by rank 0 from every rank's rows and broadcast); ``0`` turns
            revival off.
        rotation_trick: rotation-trick gradients instead of straight-through.
        usage_window: batches over which :class:`CodeUsageTracker` reports usage metrics.
        memory_budget: bytes of one chunk of the distance search (see ``nearest_codeword``).

    Shapes: ``forward(z)`` with ``z (..., dim)`` returns quantized ``(..., dim)`` and codes
    ``(..., 1)``; ``decode`` takes codes ``(..., 1)``.

    Distributed: code counts and sums are all-reduced, k-means seeds are drawn from every
    rank's rows and revived codes on rank 0, both broadcast, and the first training step
    copies rank 0's codebook state to every rank, so all ranks hold the same codebook. In
    eval mode the metrics describe this rank's batch only (no collective, so rank-0-only
    validation cannot hang).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        use_cosine_sim: bool = False,
        learnable_codebook: bool = False,
        decay: float = 0.8,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        codebook_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 0.0,
        rotation_trick: bool = False,
        usage_window: int = 100,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ):
        super().__init__()
        name = type(self).__name__
        if dim < 1 or codebook_size < 1:
            raise ValueError(
                f"{name}: dim and codebook_size must be >= 1, got {dim}, {codebook_size}"
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"{name}: decay must be in [0, 1), got {decay}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        if codebook_dim < 1:
            raise ValueError(f"{name}: codebook_dim must be >= 1, got {codebook_dim}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_sizes = (codebook_size,)
        self.codebook_dim = codebook_dim
        self.use_cosine_sim = use_cosine_sim
        self.metric = "cosine" if use_cosine_sim else "euclidean"
        self.learnable_codebook = learnable_codebook
        self.decay = decay
        self.eps = eps
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.rotation_trick = rotation_trick
        self.memory_budget = memory_budget

        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()

        # Random codes of about unit norm; k-means (if asked) replaces them on the first batch.
        embedding = torch.randn(codebook_size, codebook_dim) * codebook_dim**-0.5
        if use_cosine_sim:
            embedding = l2norm(embedding)
        if learnable_codebook:
            self.embedding = nn.Parameter(embedding)
        else:
            self.register_buffer("embedding", embedding)
            self.register_buffer("ema_embedding_sum", embedding.clone())
        self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        # Host copy of "k-means still to run": ``initted`` lives on the device, and reading it
        # every step would synchronise. None = not read yet (after construction or loading).
        self._kmeans_pending: bool | None = None
        self.usage = CodeUsageTracker(codebook_size, window=usage_window)

    fp32_buffers = ("ema_cluster_size", "ema_embedding_sum")

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._kmeans_pending = None  # ``initted`` may have changed: read it again once

    # ----------------------------------------------------------------- codebook access

    @property
    def codebook(self) -> Tensor:
        """The codes the search uses, ``(k, c)`` (l2-normalised with ``use_cosine_sim``)."""
        return l2norm(self.embedding) if self.use_cosine_sim else self.embedding

    @torch.no_grad()
    def set_codebook_(self, codebook: Tensor) -> None:
        """Replace the codebook ``(k, c)`` (keeps EMA statistics consistent; no k-means after)."""
        if tuple(codebook.shape) != tuple(self.embedding.shape):
            raise ValueError(
                f"{type(self).__name__}.set_codebook_: expected {tuple(self.embedding.shape)}, "
                f"got {tuple(codebook.shape)}"
            )
        self.embedding.data.copy_(codebook)
        if not self.learnable_codebook:
            self.ema_embedding_sum.copy_(codebook * self._smoothed_cluster_size().unsqueeze(-1))
        self.initted.fill_(True)
        self._kmeans_pending = False

    @property
    def output_gradient_is_identity(self) -> bool:
        """True when the training output hands its input exactly the upstream gradient:
        straight-through, no projections and no normalisation in between. The residual
        ``z - quantized`` then has an exactly zero gradient, which :class:`ResidualVQ` uses."""
        return not (self.has_projections or self.use_cosine_sim or self.rotation_trick)

    def to_codebook_space(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> fp32 ``(..., codebook_dim)``, normalised with ``use_cosine_sim``."""
        x = fp32_layer(self.project_in, z.float())
        return l2norm(x) if self.use_cosine_sim else x

    def search(self, x: Tensor) -> Tensor:
        """Nearest code of codebook-space vectors ``(..., c)`` -> int64 ``(...)``."""
        return nearest_codeword(
            x.detach(), self.codebook.detach(), metric=self.metric, memory_budget=self.memory_budget
        )

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes ``(...)`` -> codewords in the input space ``(..., dim)``, fp32."""
        return fp32_layer(self.project_out, F.embedding(indices, self.codebook.float()))

    # ----------------------------------------------------------------- contract

    def forward(self, z: Tensor, *, update_codebook: bool = True) -> QuantizerOutput:
        """Quantize ``z (..., dim)``.

        In training, ``update_codebook=False`` leaves every codebook statistic alone (no
        k-means, revival, EMA or usage update): :class:`~anytok.quantizers.ResidualVQ` with a
        shared codebook uses it and updates once per step with :meth:`update_codebook_`.
        """
        check_last_dim(z, self.dim, type(self).__name__)
        with fp32_region(z):
            x = self.to_codebook_space(z)
            flat = rearrange(x, "... c -> (...) c")
            if self.training and update_codebook:
                self.prepare_codebook_(flat.detach())
            codebook = self.codebook.float()  # a no-op unless the module was cast to bf16
            indices = self.search(flat)
            codewords = F.embedding(indices, codebook)
            if self.training:
                commitment = squared_error_mean(flat, codewords.detach())
                loss = self.commitment_weight * commitment
                metrics = {"commitment": commitment.detach()}
                if self.learnable_codebook:
                    loss = loss + self.codebook_weight * squared_error_mean(
                        codewords, flat.detach()
                    )
                if update_codebook:
                    metrics.update(self.update_codebook_(flat.detach(), indices))
                codewords = codeword_output(flat, codewords, self.rotation_trick)
            else:
                loss = zero_loss(z)
                metrics = local_code_metrics(indices, self.codebook_size)
            quantized = fp32_layer(self.project_out, codewords.reshape(x.shape)).to(z.dtype)
        codes = indices.reshape(*z.shape[:-1], 1)
        return QuantizerOutput(quantized, codes, loss, level_metrics(metrics, 0))

    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., 1)``."""
        check_last_dim(z, self.dim, type(self).__name__)
        with fp32_region(z):
            return self.search(self.to_codebook_space(z)).unsqueeze(-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., 1)`` -> quantized fp32 ``(..., dim)``."""
        codes = checked_codes(codes, self.codebook_sizes, type(self).__name__)
        with fp32_region(codes):
            return self.lookup(codes[..., 0])

    # ----------------------------------------------------------------- training updates

    def _smoothed_cluster_size(self) -> Tensor:
        """EMA counts with Laplace smoothing (no code has a zero count), same total."""
        return smoothed_cluster_size(self.ema_cluster_size, self.eps)

    @torch.no_grad()
    def prepare_codebook_(self, x: Tensor) -> None:
        """Before the search of a training step: k-means init (first batch), then dead-code
        revival from this batch. ``x``: codebook-space vectors ``(n, c)`` of this rank.

        Under torch.distributed the first call also copies rank 0's codebook state to every
        rank (see :func:`broadcast_once_`).
        """
        self.broadcast_codebook_once_()
        read_kmeans_flags_((self,))  # one host read, after the broadcast (then none)
        if self._kmeans_pending and self._has_rows_for_kmeans(x):
            means = kmeans(
                x.float(), self.codebook_size, self.kmeans_iters, self.metric, self.memory_budget
            )
            assignment = nearest_codeword(
                x, means, metric=self.metric, memory_budget=self.memory_budget
            )
            counts = _finite_code_counts(x, assignment, self.codebook_size)
            self.embedding.data.copy_(means)
            self.ema_cluster_size.copy_(counts)
            if not self.learnable_codebook:
                self.ema_embedding_sum.copy_(means * self._smoothed_cluster_size().unsqueeze(-1))
            self.initted.fill_(True)
            self._kmeans_pending = False
        if self.threshold_ema_dead_code > 0:
            self.revive_dead_codes_(x)

    @staticmethod
    def _has_rows_for_kmeans(x: Tensor) -> bool:
        """Whether the k-means batch ``x (n, c)`` holds any vector, on any rank.

        An empty batch (a zero-length chunk, a batch that is all padding) would make every
        centroid zero and every count zero, and the next EMA update divide zero by zero: a
        NaN codebook for good. k-means then waits for a batch with vectors. Under
        torch.distributed the count is all-reduced (a host read, only while k-means is due).
        """
        if not is_distributed():
            return x.shape[0] > 0
        count = all_reduce_sum_(torch.tensor([x.shape[0]], device=x.device))
        return int(count) > 0

    def broadcast_codebook_once_(self) -> None:
        """Under torch.distributed, copy rank 0's codebook state to every rank (first call only)."""
        state = [self.embedding, self.ema_cluster_size, self.initted]
        if not self.learnable_codebook:
            state.append(self.ema_embedding_sum)
        broadcast_once_(self, state)

    @torch.no_grad()
    def revive_dead_codes_(self, x: Tensor) -> Tensor:
        """Replace codes whose EMA count is below ``threshold_ema_dead_code`` with random rows of
        ``x (n, c)``; returns how many codes were replaced (a 0-dim tensor on ``x``'s device).

        Each dead code gets a distinct random row; with fewer rows than dead codes a uniformly
        random subset of the dead codes is replaced now (no duplicated codes) and the rest wait
        for later batches. On one process this never waits for the device: it works on a
        fixed number of slots, ``min(k, n)``, not on a list of the dead codes, so a step with
        revival on (EnCodec: 32 codebooks) launches without a host sync.

        Every rank sees the same EMA counts (all-reduced), hence the same dead codes; the
        replacement rows are drawn from every rank's rows (:func:`_draw_revivals_synced`) and
        only the revived codes and rows move. Sizing that draw reads one count on the host:
        one sync per codebook and step under torch.distributed, traded for not moving
        ``min(k, n)`` rows every step.
        """
        dead = self.ema_cluster_size < self.threshold_ema_dead_code
        if is_distributed():
            codes, revived, rows = _draw_revivals_synced(dead, x, self.embedding.dtype)
        else:
            codes, revived, rows = _draw_revivals(dead, x, self.embedding.dtype)
        threshold = float(self.threshold_ema_dead_code)
        take = revived.unsqueeze(-1)
        embedding = self.embedding.data
        embedding.index_copy_(0, codes, torch.where(take, rows, embedding[codes]))
        sizes = self.ema_cluster_size[codes].masked_fill(revived, threshold)
        self.ema_cluster_size.index_copy_(0, codes, sizes)
        if not self.learnable_codebook:
            sums = self.ema_embedding_sum[codes]
            revived_sums = rows.to(sums.dtype) * threshold
            self.ema_embedding_sum.index_copy_(0, codes, torch.where(take, revived_sums, sums))
        return revived.sum()

    @torch.no_grad()
    def update_codebook_(self, x: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """After the search of a training step: EMA of code counts (both modes) and, for EMA
        codebooks, of code sums; then the usage tracker. ``x (n, c)``, ``indices (n,)``.

        Counts and sums are ``index_add_`` passes, both all-reduced. Rows of ``x`` holding NaN
        or Inf (an overflowing step that the loss scaler will skip) are left out of both, so
        they cannot turn a code into NaN for good. Returns the usage metrics (``perplexity``,
        ``usage``, ``dead_codes``).
        """
        x = x.reshape(-1, self.codebook_dim).float()
        indices = indices.reshape(-1)
        if self.learnable_codebook:
            counts = _finite_code_counts(x, indices, self.codebook_size)
            self.ema_cluster_size.lerp_(counts, 1.0 - self.decay)
        else:
            counts, sums = counts_and_sums_synced(x, indices, self.codebook_size, finite_only=True)
            self.ema_cluster_size.lerp_(counts, 1.0 - self.decay)
            self.ema_embedding_sum.lerp_(sums, 1.0 - self.decay)
            updated = self.ema_embedding_sum / self._smoothed_cluster_size().unsqueeze(-1)
            self.embedding.copy_(l2norm(updated) if self.use_cosine_sim else updated)
        return self.usage.update(indices)


# --------------------------------------------------------------------------- SimVQ


@register_quantizer("simvq")
class SimVQ(Quantizer):
    """SimVQ: a frozen random codebook seen through a learned linear map (Zhu et al. 2024,
    "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer",
    https://arxiv.org/abs/2411.02038).

    The codes are ``W @ c_i`` for frozen Gaussian ``c_i``; training the one matrix ``W`` moves
    the whole codebook at once, so no code is left behind (no dead-code revival needed).
    Loss: ``codebook_weight * |sg(z) - q|^2 + commitment_weight * |z - sg(q)|^2``.

    Args:
        dim: channels of the channel-last input ``(..., dim)``.
        codebook_size: number of codes.
        frozen_codebook_dim: channels of the frozen codebook (default ``dim``).
        commitment_weight: weight of ``|z - sg(q)|^2`` (trains the encoder).
        codebook_weight: weight of ``|sg(z) - q|^2`` (trains the linear map).
        rotation_trick: rotation-trick gradients (https://arxiv.org/abs/2410.06424) instead of
            straight-through.
        usage_window: batches over which usage metrics are reported.
        memory_budget: bytes of one chunk of the distance search.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        frozen_codebook_dim: int | None = None,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        rotation_trick: bool = True,
        usage_window: int = 100,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ):
        super().__init__()
        if dim < 1 or codebook_size < 1:
            raise ValueError(
                f"SimVQ: dim and codebook_size must be >= 1, got {dim}, {codebook_size}"
            )
        frozen_codebook_dim = dim if frozen_codebook_dim is None else frozen_codebook_dim
        if frozen_codebook_dim < 1:
            raise ValueError(f"SimVQ: frozen_codebook_dim must be >= 1, got {frozen_codebook_dim}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_sizes = (codebook_size,)
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.rotation_trick = rotation_trick
        self.memory_budget = memory_budget
        frozen = torch.randn(codebook_size, frozen_codebook_dim) * frozen_codebook_dim**-0.5
        self.register_buffer("frozen_codebook", frozen)
        self.code_transform = nn.Linear(frozen_codebook_dim, dim, bias=False)
        self.usage = CodeUsageTracker(codebook_size, window=usage_window)

    #: the frozen codes stay fp32 in a model cast to bf16 (see ``Fp32Buffers``)
    fp32_buffers = ("frozen_codebook",)

    @property
    def codebook(self) -> Tensor:
        """The implicit codebook ``W @ frozen``, fp32 ``(k, dim)``, differentiable in ``W``
        (computed in fp32 whatever the dtype of ``W``, as every projection: ``fp32_layer``)."""
        return fp32_layer(self.code_transform, self.frozen_codebook.float())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z (..., dim)``; codes ``(..., 1)``."""
        check_last_dim(z, self.dim, "SimVQ")
        with fp32_region(z):
            x = z.float()
            if self.training:
                broadcast_once_(self, [self.frozen_codebook])
            codebook = self.codebook
            indices = nearest_codeword(
                x.detach(), codebook.detach(), memory_budget=self.memory_budget
            )
            codewords = F.embedding(indices, codebook)
            if self.training:
                commitment = squared_error_mean(x, codewords.detach())
                loss = self.commitment_weight * commitment + (
                    self.codebook_weight * squared_error_mean(codewords, x.detach())
                )
                metrics = {"commitment": commitment.detach(), **self.usage.update(indices)}
                codewords = codeword_output(x, codewords, self.rotation_trick)
            else:
                loss = zero_loss(z)
                metrics = local_code_metrics(indices, self.codebook_size)
        return QuantizerOutput(
            codewords.to(z.dtype), indices.unsqueeze(-1), loss, level_metrics(metrics, 0)
        )

    def encode(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> int64 codes ``(..., 1)``."""
        check_last_dim(z, self.dim, "SimVQ")
        with fp32_region(z):
            codebook = self.codebook.detach()
            return nearest_codeword(z.float(), codebook, memory_budget=self.memory_budget)[
                ..., None
            ]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(..., 1)`` -> quantized fp32 ``(..., dim)``."""
        codes = checked_codes(codes, self.codebook_sizes, "SimVQ")
        with fp32_region(codes):
            return F.embedding(codes[..., 0], self.codebook)
