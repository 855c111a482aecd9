"""A causal transformer over time with a sliding attention window that streams frame by
frame: Mimi's encoder and decoder transformers (Défossez et al. 2024, "Moshi",
https://arxiv.org/abs/2410.00037; reference code https://github.com/kyutai-labs/moshi and
``transformers``' ``MimiTransformerModel``).

Each layer is pre-norm: LayerNorm, multi-head self-attention with rotary positions (half-split
layout) over the last ``context`` positions (the query's own included), a learned per-channel
layer scale on the residual branch, then LayerNorm, a GELU MLP and a second layer scale.
Parameter names follow ``transformers``' Mimi layers (``self_attn.q_proj``, ``mlp.fc1``,
``input_layernorm``, ``self_attn_layer_scale.scale`` ...), so their weights load by prefix.

Written here rather than taken from ``transformers``: its layers run on its own cache and mask
utilities, and anytok streams every layer through one protocol
(:class:`anytok.nn.streaming.StreamLayer`); this one keeps a key / value cache of the last
``context - 1`` positions and gives, chunk after chunk, the outputs of one pass.

Attention is computed in blocks of ``block_size`` queries against the keys their windows
reach, so a long sequence costs ``O(t * (block + context))`` time and memory, not ``O(t^2)``;
the blocks, their masks and the rotary angles are planned once per call for every layer.

Axis legend: ``b`` batch, ``c`` channels, ``t`` / ``n`` positions, ``h`` heads, ``d`` channels
of one head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from anytok.nn.attention import apply_rotary, rotary_angles


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT, https://arxiv.org/abs/2103.17239):
    ``(..., c) -> (..., c)``."""

    def __init__(self, channels: int, init: float = 0.01):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class CausalMLP(nn.Module):
    """``c -> hidden -> c`` with exact (erf) GELU; bias-free like Mimi's."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def window_mask(
    query_start: int, queries: int, key_start: int, keys: int, context: int | None, device=None
) -> Tensor:
    """Boolean ``(queries, keys)``, True = attend: key position ``j`` is visible from query
    position ``i`` when ``0 <= i - j < context`` (every ``j <= i`` when ``context`` is None)."""
    q = torch.arange(query_start, query_start + queries, device=device)[:, None]
    k = torch.arange(key_start, key_start + keys, device=device)[None, :]
    delta = q - k
    visible = delta >= 0
    if context is not None:
        visible &= delta < context
    return visible


@dataclass(frozen=True)
class AttentionBlock:
    """Queries ``first .. last - 1`` (of a call) attend keys ``lo .. hi - 1`` under ``mask``."""

    first: int
    last: int
    lo: int
    hi: int
    mask: Tensor


@dataclass(frozen=True)
class AttentionPlan:
    """What every layer of one call shares: the queries' rotary angles ``(n, head_dim)`` and
    the blocks of queries with the keys their windows reach (see :func:`plan_attention`)."""

    angles: Tensor
    blocks: tuple[AttentionBlock, ...]


def plan_attention(
    queries: int,
    query_start: int,
    keys: int,
    key_start: int,
    context: int | None,
    block_size: int,
    head_dim: int,
    rope_base: float,
    device=None,
) -> AttentionPlan:
    """Plan causal sliding-window attention of ``queries`` positions from ``query_start``
    over ``keys`` positions from ``key_start`` (``key_start <= query_start``, the keys reach
    the last query), in blocks of ``block_size`` queries."""
    blocks = []
    for first in range(0, queries, block_size):
        last = min(queries, first + block_size)
        q_pos = query_start + first
        # keys from the window start of the block's first query to its last query
        lo = 0 if context is None else max(0, q_pos - context + 1 - key_start)
        hi = min(keys, query_start + last - key_start)
        mask = window_mask(q_pos, last - first, key_start + lo, hi - lo, context, device)
        blocks.append(AttentionBlock(first, last, lo, hi, mask))
    angles = rotary_angles(queries, head_dim, base=rope_base, start=query_start, device=device)
    return AttentionPlan(angles, tuple(blocks))


def windowed_attention(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
    """Causal sliding-window attention of ``q (b, h, n, d)`` over ``k``, ``v (b, h, m, d)``
    by the blocks of ``plan``: ``(b, h, n, d)``."""
    outputs = [
        F.scaled_dot_product_attention(
            q[..., blk.first : blk.last, :],
            k[..., blk.lo : blk.hi, :],
            v[..., blk.lo : blk.hi, :],
            attn_mask=blk.mask,
        )
        for blk in plan.blocks
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


@dataclass
class _Cache:
    """Streaming state of one layer: keys / values (after rotary) of the last positions."""

    keys: Tensor | None = None
    values: Tensor | None = None


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over a sliding window, rotary positions:
    ``(b, n, c) -> (b, n, c)``; the window and positions come in an :class:`AttentionPlan`."""

    def __init__(self, dim: int, heads: int, context: int | None, *, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"CausalSelfAttention: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.context = context
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, plan: AttentionPlan, cache: _Cache | None = None) -> Tensor:
        """``x (b, n, c)``; with ``cache`` (streaming) the cached keys of the previous
        positions are attended to and the cache is updated."""
        q, k, v = (
            rearrange(proj(x), "b n (h d) -> b h n d", h=self.heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = apply_rotary(q, plan.angles), apply_rotary(k, plan.angles)
        if cache is not None:
            if cache.keys is not None:
                k = torch.cat([cache.keys, k], dim=-2)
                v = torch.cat([cache.values, v], dim=-2)  # type: ignore[list-item]
            drop = 0 if self.context is None else max(0, k.shape[-2] - (self.context - 1))
            cache.keys, cache.values = k[..., drop:, :], v[..., drop:, :]
        out = windowed_attention(q, k, v, plan)
        return self.o_proj(rearrange(out, "b h n d -> b n (h d)"))


class CausalTransformerLayer(nn.Module):
    """Pre-norm layer: ``x + scale1 * attn(ln1(x))``, then ``x + scale2 * mlp(ln2(x))``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        context: int | None,
        *,
        layer_scale: float | None = 0.01,
        bias: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = CausalSelfAttention(dim, heads, context, bias=bias)
        self.post_attention_layernorm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = CausalMLP(dim, hidden, bias=bias)
        self.self_attn_layer_scale: nn.Module = (
            nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)
        )
        self.mlp_layer_scale: nn.Module = (
            nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)
        )

    def forward(self, x: Tensor, plan: AttentionPlan, cache: _Cache | None = None) -> Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), plan, cache))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


@dataclass
class _TransformerStream:
    position: int = 0
    caches: list[_Cache] = field(default_factory=list)


class CausalTransformer(nn.Module):
    """A stack of :class:`CausalTransformerLayer` over channel-first sequences:
    ``(b, c, t) -> (b, c, t)``; output ``t`` depends on inputs ``t - context + 1 .. t``
    of every layer.

    Args:
        dim: channels ``c``.
        depth: layers.
        heads: attention heads.
        hidden: MLP width.
        context: attention window in positions, the query's own included (Mimi: 250);
            ``None``: all previous positions.
        layer_scale: initial layer scale (``None``: no layer scale).
        bias: biases in the attention and MLP projections (Mimi: none).
        norm_eps: LayerNorm epsilon.
        rope_base: rotary base period.
        block_size: queries per attention block (memory vs. launch count).
        gradient_checkpointing: recompute each layer in backward.

    Streaming (:mod:`anytok.nn.streaming`): between :meth:`begin_stream` and
    :meth:`end_stream` each call takes the next frames and returns their outputs, which equal
    one pass over the whole sequence (to float rounding); each layer keeps the keys and values
    of the last ``context - 1`` positions.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        hidden: int,
        context: int | None = 250,
        *,
        layer_scale: float | None = 0.01,
        bias: bool = False,
        norm_eps: float = 1e-5,
        rope_base: float = 10000.0,
        block_size: int = 256,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if context is not None and context < 1:
            raise ValueError(f"CausalTransformer: context must be >= 1 or None, got {context}")
        if dim % heads:
            raise ValueError(f"CausalTransformer: dim {dim} is not a multiple of heads {heads}")
        self.dim = dim
        self.head_dim = dim // heads
        self.context = context
        self.rope_base = rope_base
        self.block_size = block_size
        self.gradient_checkpointing = gradient_checkpointing
        self.layers = nn.ModuleList(
            CausalTransformerLayer(
                dim, heads, hidden, context, layer_scale=layer_scale, bias=bias, norm_eps=norm_eps
            )
            for _ in range(depth)
        )
        self._stream: _TransformerStream | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``x (b, c, t)`` -> ``(b, c, t)``; while streaming, the next frames of the stream."""
        if x.ndim != 3 or x.shape[1] != self.dim:
            raise ValueError(
                f"CausalTransformer: expected (batch, {self.dim}, time), got {tuple(x.shape)}"
            )
        if x.shape[-1] == 0:
            return x
        h = x.transpose(1, 2)
        stream = self._stream
        start = 0 if stream is None else stream.position
        # every layer's cache holds the same last positions (the attention trims them)
        first = None if stream is None else stream.caches[0].keys
        cached = 0 if first is None else first.shape[-2]
        plan = plan_attention(
            x.shape[-1],
            start,
            cached + x.shape[-1],
            start - cached,
            self.context,
            self.block_size,
            self.head_dim,
            self.rope_base,
            x.device,
        )
        for i, layer in enumerate(self.layers):
            cache = None if stream is None else stream.caches[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, plan, cache, use_reentrant=False)
            else:
                h = layer(h, plan, cache)
        if stream is not None:
            stream.position += x.shape[-1]
        return h.transpose(1, 2)

    # ----------------------------------------------------------------- streaming

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def begin_stream(self) -> None:
        """Start a stream: later calls take consecutive frames of one sequence."""
        if self._stream is not None:
            raise RuntimeError("CausalTransformer: already streaming; call end_stream() first")
        self._stream = _TransformerStream(caches=[_Cache() for _ in self.layers])

    def finish_stream(self) -> None:
        """Nothing to flush: every frame's output is emitted when the frame arrives."""

    def end_stream(self) -> None:
        self._stream = None


__all__ = [
    "AttentionBlock",
    "AttentionPlan",
    "CausalMLP",
    "CausalSelfAttention",
    "CausalTransformer",
    "CausalTransformerLayer",
    "LayerScale",
    "plan_attention",
    "window_mask",
    "windowed_attention",
]
