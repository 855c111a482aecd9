"""Attention over time for 1D (audio) latents: windowed multi-head self-attention with rotary
positions, as in SNAC (Siuzdak et al. 2024, https://arxiv.org/abs/2410.14411).

Axis legend: ``b`` batch, ``c`` channels, ``t`` time, ``h`` heads, ``w`` windows, ``n``
positions in a window, ``d`` channels of one head.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F


def rotary_angles(
    positions: int, head_dim: int, *, base: float = 10000.0, start: int = 0, device=None
) -> Tensor:
    """Rotation angles ``(positions, head_dim)`` of rotary position embeddings (Su et al.
    2021, RoFormer, https://arxiv.org/abs/2104.09864), half-split layout: channel ``i`` and
    channel ``i + head_dim / 2`` rotate together, by ``position * base^(-2i / head_dim)``,
    for positions ``start .. start + positions - 1``."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(start, start + positions, device=device).float(), inv_freq)
    return torch.cat((angles, angles), dim=-1)


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate ``x (..., n, d)`` by ``angles (n, d)`` (from :func:`rotary_angles`)."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return x * angles.cos().to(x.dtype) + rotated_half * angles.sin().to(x.dtype)


class LocalSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention inside non-overlapping windows of ``window_size``
    positions, with a residual connection: ``(b, c, t) -> (b, c, t)``.

    SNAC's local attention: LayerNorm, one bias-free ``c -> 3c`` projection, rotary positions
    restarting at 0 in every window (https://arxiv.org/abs/2104.09864), scaled dot-product
    attention, bias-free output projection. Parameter names follow SNAC's ``LocalMHA``
    (``norm``, ``to_qkv``, ``to_out``), so its weights load by name.

    Any length works: windows start at position 0 and a last, partial window of
    ``t % window_size`` positions attends within itself (SNAC requires ``t`` to be a multiple
    of ``window_size``; for such lengths the two are identical).

    Args:
        dim: channels ``c``.
        window_size: positions per window.
        head_dim: channels per head (``dim // head_dim`` heads; SNAC uses 64).
        rotary: rotary position embeddings (SNAC: on).
    """

    def __init__(self, dim: int, window_size: int, head_dim: int = 64, rotary: bool = True):
        super().__init__()
        if dim % head_dim:
            raise ValueError(
                f"LocalSelfAttention: dim {dim} is not a multiple of head_dim {head_dim}"
            )
        self.dim = dim
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.window_size = window_size
        self.rotary = rotary
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
        """``(b, n_windows * window, c)`` each -> attention output, same shape."""
        q, k, v = (
            rearrange(x, "b (w n) (h d) -> b h w n d", n=window, h=self.heads) for x in (q, k, v)
        )
        if self.rotary:
            angles = rotary_angles(window, self.head_dim, device=q.device)  # fp32
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "b h w n d -> b (w n) (h d)")

    def forward(self, x: Tensor) -> Tensor:
        """``x (b, c, t)`` -> ``(b, c, t)``."""
        if x.shape[-1] == 0:
            return x
        residual = x
        q, k, v = self.to_qkv(self.norm(x.transpose(1, 2))).chunk(3, dim=-1)
        length = x.shape[-1]
        full = length - length % self.window_size
        parts = []
        if full:
            parts.append(self._attend(q[:, :full], k[:, :full], v[:, :full], self.window_size))
        if full < length:  # the last, partial window
            parts.append(self._attend(q[:, full:], k[:, full:], v[:, full:], length - full))
        out = self.to_out(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return out.transpose(1, 2) + residual


__all__ = ["LocalSelfAttention", "apply_rotary", "rotary_angles"]
