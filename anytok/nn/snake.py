"""Snake activation (Ziyin et al. 2020, https://arxiv.org/abs/2006.08195), as used by BigVGAN
and the Descript Audio Codec (https://arxiv.org/abs/2306.06546).

``snake(x) = x + sin(alpha * x)^2 / alpha`` with one learned ``alpha`` per channel: a periodic
inductive bias that helps waveform generators model pitch. ``snake(0) == 0`` and it acts
on each time step alone, so it streams and never leaks padding into valid samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: Added to ``alpha`` before the reciprocal (DAC's value), so ``alpha == 0`` stays finite.
SNAKE_EPS = 1e-9


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """``x + sin(alpha x)^2 / (alpha + eps)``; ``x (b, c, ...)``, ``alpha (1, c, 1)``."""
    shape = x.shape
    x = x.reshape(shape[0], shape[1], math.prod(shape[2:]))  # not -1: an empty batch too
    x = x + (alpha + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)
    return x.reshape(shape)


class Snake1d(nn.Module):
    """Snake with one learned frequency per channel: ``(b, channels, t) -> (b, channels, t)``.

    The parameter is named ``alpha`` with shape ``(1, channels, 1)``, as in DAC, so DAC
    state dicts load by name.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)


__all__ = ["SNAKE_EPS", "Snake1d", "snake"]
