"""Vocos: a ConvNeXt backbone at the token rate and an inverse-STFT head (Siuzdak 2023,
https://arxiv.org/abs/2306.00814), with WavTokenizer's optional attention stage (Ji et al.
2024, https://arxiv.org/abs/2408.16532).

The decoder never upsamples in time: the backbone keeps one frame per token and the head
predicts one STFT frame (magnitude and phase of ``n_fft / 2 + 1`` bins) per token, which an
inverse STFT with hop = the codec's hop turns into samples.

Parameter names follow the ``vocos`` package (``embed``, ``norm``, ``convnext.{i}.dwconv``,
``final_layer_norm``, ``out``) and WavTokenizer's ``pos_net``, so their weights load by name.

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``f`` frequency bins.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.quantizers.vq import fp32_layer

ISTFT_PADDINGS = ("same", "center")


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are chosen by a condition id (one learned pair per id).

    Vocos conditions on EnCodec's bandwidth this way; WavTokenizer keeps 4 ids and always uses
    id 0. Input ``(..., dim)``.
    """

    def __init__(self, num_embeddings: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, condition_id: Tensor) -> Tensor:
        """``x (b, t, dim)``, ``condition_id`` int64 ``(1,)`` or ``(b, 1)``."""
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        return x * self.scale(condition_id) + self.shift(condition_id)


class ConvNeXtBlock1d(nn.Module):
    """ConvNeXt block over time (Liu et al. 2022, https://arxiv.org/abs/2201.03545), as in
    Vocos: depthwise conv (kernel 7) -> LayerNorm -> Linear -> GELU -> Linear -> layer scale,
    plus identity. ``(b, c, t) -> (b, c, t)``.

    Args:
        dim: channels.
        intermediate_dim: hidden width of the pointwise MLP.
        layer_scale_init_value: initial layer scale ``gamma``; ``0`` for none.
        adanorm_num_embeddings: use :class:`AdaLayerNorm` with this many ids (``None``: plain).
    """

    def __init__(
        self,
        dim: int,
        intermediate_dim: int,
        layer_scale_init_value: float,
        adanorm_num_embeddings: int | None = None,
    ):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.adanorm = adanorm_num_embeddings is not None
        self.norm: nn.Module = (
            AdaLayerNorm(adanorm_num_embeddings, dim)
            if adanorm_num_embeddings is not None
            else nn.LayerNorm(dim, eps=1e-6)
        )
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            if layer_scale_init_value > 0
            else None
        )

    def forward(self, x: Tensor, condition_id: Tensor | None = None) -> Tensor:
        residual = x
        x = self.dwconv(x).transpose(1, 2)  # (b, t, c)
        x = self.norm(x, condition_id) if self.adanorm else self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.gamma is not None:
            x = self.gamma * x
        return residual + x.transpose(1, 2)


def group_norm_32(channels: int) -> nn.GroupNorm:
    """WavTokenizer's (and VQGAN's) normalisation: 32 groups, eps 1e-6."""
    if channels % 32:
        raise ValueError(f"GroupNorm with 32 groups needs channels divisible by 32, got {channels}")
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock1d(nn.Module):
    """Pre-activation residual block (GroupNorm -> swish -> conv3, twice, dropout before the
    second conv) of WavTokenizer's attention stage. ``(b, c, t) -> (b, c, t)``."""

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        self.norm1 = group_norm_32(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = group_norm_32(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return x + h


class AttentionBlock1d(nn.Module):
    """Single-head self-attention over all frames (VQGAN's ``AttnBlock`` in 1D, as in
    WavTokenizer): GroupNorm, 1x1-conv projections ``q k v``, softmax over time, 1x1 output
    conv, plus identity. ``(b, c, t) -> (b, c, t)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm_32(channels)
        self.q = nn.Conv1d(channels, channels, kernel_size=1)
        self.k = nn.Conv1d(channels, channels, kernel_size=1)
        self.v = nn.Conv1d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (proj(h).transpose(1, 2) for proj in (self.q, self.k, self.v))  # (b, t, c)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        return x + self.proj_out(out.squeeze(1).transpose(1, 2))


def wavtokenizer_attention_stage(channels: int, dropout: float = 0.1) -> nn.Sequential:
    """WavTokenizer's ``pos_net``: 2 residual blocks, attention, 2 residual blocks, GroupNorm."""
    return nn.Sequential(
        ResnetBlock1d(channels, dropout),
        ResnetBlock1d(channels, dropout),
        AttentionBlock1d(channels),
        ResnetBlock1d(channels, dropout),
        ResnetBlock1d(channels, dropout),
        group_norm_32(channels),
    )


class VocosBackbone(nn.Module):
    """Vocos's backbone: conv embedding (kernel 7), optional WavTokenizer attention stage,
    (Ada)LayerNorm, ``num_layers`` :class:`ConvNeXtBlock1d`, final LayerNorm.

    Input ``(b, input_channels, t)``, output ``(b, t, dim)`` (channel-last, for the head's
    linear layer). Every layer keeps ``t``.

    Args:
        input_channels: channels of the input features (the codec latent).
        dim: hidden channels.
        intermediate_dim: ConvNeXt MLP width.
        num_layers: ConvNeXt blocks.
        layer_scale_init_value: initial layer scale (default ``1 / num_layers``).
        adanorm_num_embeddings: condition ids of :class:`AdaLayerNorm` (``None``: LayerNorm).
        attention: add WavTokenizer's attention stage (``pos_net``) after the embedding.
        dropout: dropout of the attention stage's residual blocks.
    """

    def __init__(
        self,
        input_channels: int,
        dim: int,
        intermediate_dim: int,
        num_layers: int,
        layer_scale_init_value: float | None = None,
        adanorm_num_embeddings: int | None = None,
        attention: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.adanorm = adanorm_num_embeddings is not None
        self.norm: nn.Module = (
            AdaLayerNorm(adanorm_num_embeddings, dim)
            if adanorm_num_embeddings is not None
            else nn.LayerNorm(dim, eps=1e-6)
        )
        scale = layer_scale_init_value or 1.0 / num_layers
        self.convnext = nn.ModuleList(
            ConvNeXtBlock1d(dim, intermediate_dim, scale, adanorm_num_embeddings)
            for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(_vocos_init)
        # Built after the init above, as WavTokenizer does: its layers keep torch's defaults.
        self.pos_net = wavtokenizer_attention_stage(dim, dropout) if attention else None

    def forward(self, x: Tensor, condition_id: int | Tensor = 0) -> Tensor:
        """``x (b, input_channels, t)`` -> ``(b, t, dim)``; ``condition_id`` picks the
        AdaLayerNorm scale and shift (ignored without AdaLayerNorm)."""
        x = self.embed(x)
        if self.pos_net is not None:
            x = self.pos_net(x)
        cond = None
        if self.adanorm:
            cond = torch.as_tensor(condition_id, device=x.device, dtype=torch.long).reshape(-1, 1)
            x = self.norm(x.transpose(1, 2), cond)
        else:
            x = self.norm(x.transpose(1, 2))
        x = x.transpose(1, 2)
        for block in self.convnext:
            x = block(x, cond)
        return self.final_layer_norm(x.transpose(1, 2))


def _vocos_init(module: nn.Module) -> None:
    """Vocos's initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ISTFT(nn.Module):
    """Inverse STFT of complex spectrograms ``(b, n_fft / 2 + 1, t)`` with a Hann window of
    ``n_fft`` samples.

    Padding (the two of Vocos):

    * ``"same"`` (Vocos's default, used by WavTokenizer): like a "same" convolution, trim
      ``(n_fft - hop) / 2`` samples at both ends of the overlap-add, giving exactly
      ``t * hop_length`` samples. ``torch.istft`` cannot do this (its window-envelope check
      fails at the untrimmed edges, https://github.com/pytorch/pytorch/issues/62323), so this
      mode runs ``irfft`` + windowed overlap-add (``F.fold``) + envelope normalisation; it
      matches the ``vocos`` package to float rounding.
    * ``"center"``: ``torch.istft(center=True)``, the inverse of a centred ``torch.stft``:
      ``(t - 1) * hop_length`` samples.

    Runs in fp32 with autocast off (cuFFT has no bf16 kernels for these sizes).
    """

    def __init__(self, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        if padding not in ISTFT_PADDINGS:
            raise ValueError(f"ISTFT: padding must be one of {ISTFT_PADDINGS}, got {padding!r}")
        if padding == "same" and (n_fft - hop_length) % 2:
            raise ValueError(
                f"ISTFT: 'same' padding needs n_fft - hop_length even, got {n_fft}, {hop_length}"
            )
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.padding = padding
        # Not a weight: rebuilt at construction, so it stays out of checkpoints.
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def output_length(self, frames: int) -> int:
        """Samples produced from ``frames`` STFT frames."""
        if self.padding == "same":
            return frames * self.hop_length
        return (frames - 1) * self.hop_length

    def forward(self, spec: Tensor) -> Tensor:
        """Complex ``spec (b, f, t)`` -> ``(b, samples)``."""
        with torch.autocast(spec.device.type, enabled=False):
            window = self.window.to(spec.real.dtype)
            if self.padding == "center":
                return torch.istft(
                    spec, self.n_fft, self.hop_length, self.n_fft, window, center=True
                )
            frames = spec.shape[-1]
            trim = (self.n_fft - self.hop_length) // 2
            full = (frames - 1) * self.hop_length + self.n_fft
            fold = dict(
                output_size=(1, full), kernel_size=(1, self.n_fft), stride=(1, self.hop_length)
            )
            segments = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * window[:, None]
            audio = F.fold(segments, **fold)[:, 0, 0, trim : full - trim]
            envelope = window.square()[None, :, None].expand(1, -1, frames)
            envelope = F.fold(envelope, **fold)[0, 0, 0, trim : full - trim]
            return audio / envelope


class ISTFTHead(nn.Module):
    """Vocos's head: a linear layer predicts log-magnitude and phase of every STFT bin,
    then :class:`ISTFT` makes samples. ``(b, t, dim) -> (b, samples)``.

    Magnitudes are ``exp`` of the prediction clipped at 100 (Vocos's safeguard); the phase
    enters through ``cos``/``sin``, so it needs no wrapping.

    Args:
        dim: input channels.
        n_fft: FFT size (``n_fft / 2 + 1`` bins); WavTokenizer uses ``4 * hop_length``.
        hop_length: samples per frame (the codec's hop).
        padding: ``"same"`` or ``"center"`` (see :class:`ISTFT`).
    """

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, padding)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            # (fp32 math, also in a model cast to bf16)
            log_magnitude, phase = fp32_layer(self.out, x.float()).transpose(1, 2).chunk(2, dim=1)
            magnitude = log_magnitude.exp().clip(max=1e2)
            spec = torch.complex(magnitude * phase.cos(), magnitude * phase.sin())
            return self.istft(spec)


__all__ = [
    "ISTFT",
    "ISTFT_PADDINGS",
    "AdaLayerNorm",
    "AttentionBlock1d",
    "ConvNeXtBlock1d",
    "ISTFTHead",
    "ResnetBlock1d",
    "VocosBackbone",
    "wavtokenizer_attention_stage",
]
