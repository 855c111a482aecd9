"""Transformer blocks shared by the ViT tokenizers (TiTok, FlexTok, OmniTokenizer) and the
diffusion decoders (DiT-style, https://arxiv.org/abs/2212.09748).

One pre-norm block covers every use: self-attention, optional cross-attention to a context
(token embeddings, text), an MLP, and optional adaLN-Zero modulation from a conditioning
vector (diffusion time, class). Attention runs through ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels on GPU).

Written here rather than taken from diffusers / timm: diffusers' ``BasicTransformerBlock``
ties adaLN-Zero to its own timestep + class embedders and cannot take a per-token
conditioning vector, and timm's ViT block has no cross-attention or masks; both would need
subclassing that hides more than these ~200 lines.

Axis legend: ``b`` batch, ``n`` query positions, ``m`` context positions, ``h`` heads,
``d`` channels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from anytok.nn.attention import apply_rotary


def _expand_mask(mask: Tensor | None) -> Tensor | None:
    """Boolean mask, True = attend: ``(b, m)`` over keys, or ``(b, n, m)`` / ``(1, n, m)``
    per query (causal, block-causal) -> broadcastable to ``(b, h, n, m)``."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"attention masks are boolean (True = attend), got {mask.dtype}")
    if mask.ndim == 2:
        return mask[:, None, None, :]
    if mask.ndim == 3:
        return mask[:, None]
    raise ValueError(
        f"attention mask must be (b, m) over keys or (b, n, m), got {tuple(mask.shape)}"
    )


class Attention(nn.Module):
    """Multi-head attention ``(b, n, dim) -> (b, n, dim)``: self-attention, or cross-attention
    to ``context (b, m, context_dim)``.

    Args:
        dim: channels of the queries (and output).
        heads: attention heads (``dim`` must divide evenly).
        context_dim: channels of the context for cross-attention (``None``: self-attention).
        qk_norm: RMS-normalise queries and keys per head (stabilises bf16 training; SD3,
            https://arxiv.org/abs/2403.03206).
    """

    def __init__(
        self, dim: int, heads: int, *, context_dim: int | None = None, qk_norm: bool = True
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.is_cross = context_dim is not None
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim if context_dim is not None else dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        rotary: Tensor | None = None,
    ) -> Tensor:
        """``x (b, n, dim)``; ``context (b, m, context_dim)`` for cross-attention; ``mask``
        boolean, True = attend (see :func:`_expand_mask`); ``rotary (n, head_dim)`` angles
        (self-attention only)."""
        if self.is_cross and context is None:
            raise ValueError("cross-attention needs a context")
        source = context if self.is_cross else x
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(source), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None and not self.is_cross:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_expand_mask(mask))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Sequential):
    """``dim -> hidden -> dim`` with tanh-GELU (ViT / DiT)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


def mark_zero_init(layer: nn.Linear) -> None:
    """Zero a layer and mark it so :func:`init_weights` keeps it zero (adaLN-Zero)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    layer.keep_zero_init = True  # type: ignore[attr-defined]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, [cross-attention], MLP, each residual.

    With ``cond_dim`` the block is DiT's adaLN-Zero: a conditioning vector ``(b, cond_dim)``
    (or per position ``(b, n, cond_dim)``) sets the shift / scale of each norm and a gate on
    each residual branch, all zero at initialisation so the block starts as the identity
    (without cross-attention: its residual branch is not gated, so it acts from step one).

    Args:
        dim: channels.
        heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        context_dim: add cross-attention to a context of this width.
        cond_dim: adaLN-Zero conditioning width (``None``: plain LayerNorms).
        qk_norm: see :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        context_dim: int | None = None,
        cond_dim: int | None = None,
        qk_norm: bool = True,
    ):
        super().__init__()
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.cross_attn: Attention | None = None
        self.norm_cross: nn.LayerNorm | None = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross_attn = Attention(dim, heads, context_dim=context_dim, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.modulation: nn.Sequential | None = None
        if cond_dim is not None:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
            mark_zero_init(self.modulation[1])

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cond: Tensor | None = None,
        attn_mask: Tensor | None = None,
        rotary: Tensor | None = None,
    ) -> Tensor:
        """``x (b, n, dim)`` -> ``(b, n, dim)``; see :class:`Transformer` for the arguments."""
        if self.modulation is not None:
            if cond is None:
                raise ValueError("this block is adaLN-conditioned: pass cond")
            params = self.modulation(cond)
            if params.ndim == 2:
                params = params[:, None]
            shift1, scale1, gate1, shift2, scale2, gate2 = params.chunk(6, dim=-1)
            x = x + gate1 * self.attn(
                _modulate(self.norm1(x), shift1, scale1), mask=attn_mask, rotary=rotary
            )
            if self.cross_attn is not None and self.norm_cross is not None:
                x = x + self.cross_attn(self.norm_cross(x), context, mask=context_mask)
            return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))
        x = x + self.attn(self.norm1(x), mask=attn_mask, rotary=rotary)
        if self.cross_attn is not None and self.norm_cross is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask=context_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of :class:`TransformerBlock` and a final norm: ``(b, n, dim) -> (b, n, dim)``.

    Args:
        dim, heads, mlp_ratio, context_dim, cond_dim, qk_norm: see :class:`TransformerBlock`.
        depth: number of blocks.
        gradient_checkpointing: recompute activations in backward (memory for compute).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        context_dim: int | None = None,
        cond_dim: int | None = None,
        qk_norm: bool = True,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, heads, mlp_ratio, context_dim=context_dim, cond_dim=cond_dim, qk_norm=qk_norm
            )
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=cond_dim is None, eps=1e-6)
        self.out_modulation: nn.Sequential | None = None
        if cond_dim is not None:  # DiT's final adaLN (shift, scale), zero-initialised
            self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
            mark_zero_init(self.out_modulation[1])
        self.gradient_checkpointing = gradient_checkpointing

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cond: Tensor | None = None,
        attn_mask: Tensor | None = None,
        rotary: Tensor | None = None,
        return_hidden: Sequence[int] = (),
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the blocks.

        Args:
            x: ``(b, n, dim)``.
            context: ``(b, m, context_dim)`` for cross-attention blocks.
            context_mask: boolean ``(b, m)``, True = attend to that context position.
            cond: ``(b, cond_dim)`` or ``(b, n, cond_dim)`` for adaLN blocks.
            attn_mask: boolean self-attention mask, ``(b, n)`` over keys or ``(b | 1, n, n)``
                per query (causal, block-causal ...), True = attend.
            rotary: rotary angles ``(n, head_dim)`` for self-attention.
            return_hidden: block indices (0-based) whose outputs are also returned, e.g. for
                representation alignment (REPA) or semantic regularisation.

        Returns:
            ``(b, n, dim)``, or ``(output, [hidden ...])`` when ``return_hidden`` is given.
        """
        hidden: list[Tensor] = []
        wanted = set(return_hidden)
        for index, block in enumerate(self.blocks):
            kwargs = dict(
                context=context,
                context_mask=context_mask,
                cond=cond,
                attn_mask=attn_mask,
                rotary=rotary,
            )
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(functools.partial(block, **kwargs), x, use_reentrant=False)
            else:
                x = block(x, **kwargs)
            if index in wanted:
                hidden.append(x)
        x = self.norm_out(x)
        if self.out_modulation is not None:
            if cond is None:
                raise ValueError("this transformer is adaLN-conditioned: pass cond")
            params = self.out_modulation(cond)
            if params.ndim == 2:
                params = params[:, None]
            shift, scale = params.chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        return (x, hidden) if return_hidden else x


def sincos_embedding(positions: Tensor, dim: int, *, base: float = 10000.0) -> Tensor:
    """Fixed sinusoidal embedding ``(n, dim)`` of real-valued ``positions (n,)`` (Vaswani et
    al. 2017): ``[sin(p * w_i), cos(p * w_i)]`` with ``w_i = base^(-2i / dim)``."""
    if dim % 2:
        raise ValueError(f"sinusoidal embeddings need an even dim, got {dim}")
    freqs = base ** (
        -torch.arange(dim // 2, device=positions.device, dtype=torch.float32) * 2 / dim
    )
    angles = positions.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_grid_embedding(
    sizes: Sequence[int], dim: int, device: torch.device | str | None = None
) -> Tensor:
    """Sinusoidal embedding ``(prod(sizes), dim)`` of a row-major grid of ``len(sizes)`` axes
    (MAE / DiT's 2D embedding, extended to any number of axes, but with the axes' channel
    blocks in grid order: rows first, where MAE / DiT put the column coordinate first): each
    axis gets an even share of the channels; leftover channels are zero."""
    axes = len(sizes)
    per_axis = (dim // axes) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"dim {dim} is too small for a {axes}-axis grid embedding")
    grids = torch.meshgrid(*(torch.arange(s, device=device) for s in sizes), indexing="ij")
    parts = [sincos_embedding(g.reshape(-1), per_axis) for g in grids]
    out = torch.cat(parts, dim=-1)
    return F.pad(out, (0, dim - out.shape[-1]))


def patchify(x: Tensor, patch: Sequence[int]) -> Tensor:
    """Channel-first media ``(b, c, *sizes)`` (2D images or 3D video) -> patch sequence
    ``(b, prod(sizes / patch), c * prod(patch))``, row-major over the grid."""
    if x.ndim == 4:
        ph, pw = patch
        return rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=ph, q=pw)
    if x.ndim == 5:
        pt, ph, pw = patch
        return rearrange(x, "b c (t o) (h p) (w q) -> b (t h w) (c o p q)", o=pt, p=ph, q=pw)
    raise ValueError(f"patchify takes (b, c, h, w) or (b, c, t, h, w), got {tuple(x.shape)}")


def unpatchify(tokens: Tensor, grid: Sequence[int], patch: Sequence[int]) -> Tensor:
    """Inverse of :func:`patchify`: ``(b, prod(grid), c * prod(patch))`` -> ``(b, c, *grid * patch)``."""
    if len(grid) == 2:
        (h, w), (ph, pw) = grid, patch
        return rearrange(tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=h, w=w, p=ph, q=pw)
    if len(grid) == 3:
        (t, h, w), (pt, ph, pw) = grid, patch
        return rearrange(
            tokens, "b (t h w) (c o p q) -> b c (t o) (h p) (w q)", t=t, h=h, w=w, o=pt, p=ph, q=pw
        )
    raise ValueError(f"unpatchify takes a 2D or 3D grid, got {tuple(grid)}")


def init_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal(0.02) linear weights, zero biases; adaLN-Zero
    modulation layers (and any layer marked ``keep_zero_init``) stay zero. Apply with
    ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear) and not getattr(module, "keep_zero_init", False):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def timestep_features(t: Tensor, dim: int, *, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features ``(b, dim)`` of diffusion times ``t (b,)`` in [0, 1] (scaled by
    ``scale`` so the frequencies match DiT's integer timesteps)."""
    return sincos_embedding(t.float() * scale, dim)


__all__ = [
    "MLP",
    "Attention",
    "Transformer",
    "TransformerBlock",
    "init_weights",
    "mark_zero_init",
    "patchify",
    "sincos_embedding",
    "sincos_grid_embedding",
    "timestep_features",
    "unpatchify",
]
