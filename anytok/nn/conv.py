"""Convolutions used across codecs: causal / same padding, optional weight norm.

Causal :class:`Conv1d` and :class:`ConvTranspose1d` can also run as a stream: between
``begin_stream()`` and ``end_stream()`` each call takes the next chunk of the signal and
returns the outputs that chunk completes, keeping what later outputs still need (the last
``kernel - stride`` input samples of a conv, the ``kernel - stride`` overlap-add tail of a
transposed conv). The concatenated outputs equal one pass over the whole signal (up to float
rounding). :func:`anytok.nn.streaming.streaming` drives whole networks this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

#: How reflect padding treats an input not longer than the padding (reflection undefined):
#: ``"zeros"`` pads with zeros instead; ``"extend"`` first appends just enough zeros for the
#: reflection to exist, reflects, and drops them again (EnCodec's ``pad1d``).
SHORT_INPUT_RULES = ("zeros", "extend")


def maybe_weight_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap a conv in weight normalisation (torch's parametrization) when ``enabled``."""
    return weight_norm(module) if enabled else module


def pad1d(
    x: Tensor, left: int, right: int, mode: str = "constant", short_input: str = "zeros"
) -> Tensor:
    """``F.pad`` along time that also defines reflect padding of inputs not longer than the
    padding, by ``short_input`` (see :data:`SHORT_INPUT_RULES`); other modes pad any input.

    ``(..., t) -> (..., left + t + right)``.
    """
    length = x.shape[-1]
    if mode != "reflect" or length > max(left, right):  # only reflection needs more samples
        return F.pad(x, (left, right), mode=mode)
    if short_input == "zeros":
        return F.pad(x, (left, right))
    if short_input != "extend":
        raise ValueError(
            f"pad1d: short_input must be one of {SHORT_INPUT_RULES}, got {short_input!r}"
        )
    extra = max(left, right) - length + 1
    padded = F.pad(F.pad(x, (0, extra)), (left, right), mode=mode)
    return padded[..., : padded.shape[-1] - extra]


@dataclass
class _ConvStream:
    """State of a :class:`Conv1d` while streaming.

    ``pending`` holds the first samples until the left padding can be made (reflect padding
    needs more samples than it pads); after that ``buffer`` holds the padded signal from the
    first sample a future output window uses.
    """

    started: bool = False
    pending: Tensor | None = None
    buffer: Tensor | None = None
    recent: Tensor | None = None  # the last stride + 1 input samples (right reflection)
    seen: int = 0
    final: bool = False


@dataclass
class _TransposedStream:
    """State of a :class:`ConvTranspose1d` while streaming: the overlap-add tail (no bias)."""

    tail: Tensor | None = None


def _append(first: Tensor | None, second: Tensor) -> Tensor:
    return second if first is None else torch.cat([first, second], dim=-1)


def extra_padding_for_stride(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last window complete, so ``ceil(length / stride)`` frames
    come out and a transposed conv can restore the full length."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return max(0, ideal - length)


class Conv1d(nn.Module):
    """1D conv with causal (all padding on the left) or centred padding.

    Input ``(batch, in_channels, time)``, output ``(batch, out_channels, ceil(time / stride))``.
    With ``causal=True``, output frame ``t`` depends only on input samples up to the end of
    its stride window, so right-padding a signal never changes earlier frames.

    ``pad_mode`` is any ``F.pad`` mode; ``short_input`` says what reflect padding does with
    an input not longer than the padding (see :data:`SHORT_INPUT_RULES`).

    Streaming (causal only): after :meth:`begin_stream`, each call takes the next chunk and
    returns the frames it completes; :meth:`finish_stream` marks the next call (possibly with
    an empty chunk) as the last, which applies the right padding one pass would. With reflect
    padding the first outputs wait until more than ``kernel - stride`` samples have arrived
    (one pass reflects the first samples into the left padding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        causal: bool = True,
        use_weight_norm: bool = True,
        pad_mode: str = "constant",
        short_input: str = "zeros",
        bias: bool = True,
    ):
        super().__init__()
        if short_input not in SHORT_INPUT_RULES:
            raise ValueError(
                f"Conv1d: short_input must be one of {SHORT_INPUT_RULES}, got {short_input!r}"
            )
        self.conv = maybe_weight_norm(
            nn.Conv1d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                dilation=dilation,
                groups=groups,
                bias=bias,
            ),
            use_weight_norm,
        )
        self.causal = causal
        self.pad_mode = pad_mode
        self.short_input = short_input
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self._stream: _ConvStream | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._stream is not None:
            return self._stream_step(x)
        if x.shape[-1] == 0:  # ceil(0 / stride) = 0 frames (torch refuses a too-short input)
            return self._empty_output(x)
        padding_total = self.effective_kernel - self.stride
        extra = extra_padding_for_stride(
            x.shape[-1], self.effective_kernel, self.stride, padding_total
        )
        if self.causal:
            left, right = padding_total, extra
        else:
            right = padding_total // 2
            left = padding_total - right
            right += extra
        return self.conv(pad1d(x, left, right, self.pad_mode, self.short_input))

    # ----------------------------------------------------------------- streaming

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def begin_stream(self) -> None:
        """Start a stream: later calls take consecutive chunks of one signal."""
        if not self.causal:
            raise ValueError(
                "Conv1d: only causal convolutions can stream (centred padding looks ahead)"
            )
        if self.effective_kernel < self.stride:
            raise ValueError("Conv1d: a conv with kernel < stride skips samples; cannot stream")
        if self.pad_mode not in ("constant", "reflect", "replicate"):
            raise ValueError(f"Conv1d: pad_mode {self.pad_mode!r} cannot stream")
        if self._stream is not None:
            raise RuntimeError("Conv1d: already streaming; call end_stream() first")
        self._stream = _ConvStream()

    def finish_stream(self) -> None:
        """Mark the next call as the end of the signal (it applies the right padding)."""
        if self._stream is None:
            raise RuntimeError("Conv1d.finish_stream: not streaming")
        self._stream.final = True

    def end_stream(self) -> None:
        """Leave streaming mode and drop the state."""
        self._stream = None

    def _empty_output(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.conv.out_channels, 0)

    def _stream_step(self, x: Tensor) -> Tensor:
        state = self._stream
        assert state is not None
        state.seen += x.shape[-1]
        state.recent = _append(state.recent, x)[..., -(self.stride + 1) :]
        padding_total = self.effective_kernel - self.stride
        if not state.started:
            state.pending = _append(state.pending, x)
            if state.final:  # the whole signal arrived in one piece: one pass's rules apply
                pending, state.pending = state.pending, None
                state.started = True
                return self.forward_once(pending)
            # One pass reflects the first samples into the left padding when the signal is
            # longer than both paddings (the right one is at most stride - 1): wait for that.
            if self.pad_mode != "constant" and state.pending.shape[-1] <= max(
                padding_total, self.stride - 1
            ):
                return self._empty_output(x)
            buffer = F.pad(state.pending, (padding_total, 0), mode=self.pad_mode)
            state.pending, state.started = None, True
        else:
            buffer = _append(state.buffer, x)
        if state.final:
            extra = extra_padding_for_stride(
                state.seen, self.effective_kernel, self.stride, padding_total
            )
            if extra:  # one pass pads the signal's end: mirror its last samples if asked
                tail = F.pad(state.recent, (0, extra), mode=self.pad_mode)[..., -extra:]
                buffer = torch.cat([buffer, tail], dim=-1)
        windows = 0
        if buffer.shape[-1] >= self.effective_kernel:
            windows = (buffer.shape[-1] - self.effective_kernel) // self.stride + 1
        state.buffer = buffer[..., windows * self.stride :]
        if windows == 0:
            return self._empty_output(x)
        used = (windows - 1) * self.stride + self.effective_kernel
        return self.conv(buffer[..., :used])

    def forward_once(self, x: Tensor) -> Tensor:
        """One pass over a whole signal, also while streaming."""
        stream, self._stream = self._stream, None
        try:
            return self.forward(x)
        finally:
            self._stream = stream


class ConvTranspose1d(nn.Module):
    """Transposed 1D conv that upsamples by exactly ``stride`` (output ``time * stride``).

    Causal: the surplus ``kernel - stride`` samples are trimmed on the right, so output sample
    ``t`` depends only on input frames up to ``t // stride``.

    Streaming (causal only): after :meth:`begin_stream` each call takes the next frames and
    returns their ``frames * stride`` samples; the ``kernel - stride`` samples each frame adds
    to the next frames' span are kept and overlap-added (the bias is added once).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        causal: bool = True,
        use_weight_norm: bool = True,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.conv = maybe_weight_norm(
            nn.ConvTranspose1d(
                in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias
            ),
            use_weight_norm,
        )
        self.causal = causal
        self.stride = stride
        self.trim = kernel_size - stride
        self._stream: _TransposedStream | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._stream is not None:
            return self._stream_step(x)
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        return self.trim_output(self.conv(x))

    def trim_output(self, y: Tensor) -> Tensor:
        """Drop the ``kernel - stride`` surplus samples of a raw transposed-conv output (on the
        right when causal, split around the centre otherwise)."""
        if self.trim <= 0:
            return y
        if self.causal:
            return y[..., : y.shape[-1] - self.trim]
        right = self.trim // 2
        left = self.trim - right
        return y[..., left : y.shape[-1] - right]

    # ----------------------------------------------------------------- streaming

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def begin_stream(self) -> None:
        """Start a stream: later calls take consecutive frames of one latent sequence."""
        if not self.causal or self.trim < 0:
            raise ValueError(
                "ConvTranspose1d: only causal transposed convs with kernel >= stride can stream"
            )
        if self._stream is not None:
            raise RuntimeError("ConvTranspose1d: already streaming; call end_stream() first")
        self._stream = _TransposedStream()

    def finish_stream(self) -> None:
        """Nothing to do: a causal transposed conv trims (never emits) the final tail."""

    def end_stream(self) -> None:
        self._stream = None

    def _stream_step(self, x: Tensor) -> Tensor:
        state = self._stream
        assert state is not None
        frames = x.shape[-1]
        conv = self.conv
        if frames == 0:
            return x.new_zeros(x.shape[0], conv.out_channels, 0)
        y = F.conv_transpose1d(x, conv.weight, None, self.stride, groups=conv.groups)
        if state.tail is not None:
            y = torch.cat([y[..., : self.trim] + state.tail, y[..., self.trim :]], dim=-1)
        emitted = frames * self.stride
        state.tail = y[..., emitted:]
        out = y[..., :emitted]
        if conv.bias is not None:
            out = out + conv.bias[:, None]
        return out


def normalization_2d(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``.

    GroupNorm (not BatchNorm) keeps every item of a batch independent of the others, so
    tokens do not depend on batch size.
    """
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, eps=1e-6, affine=True)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


__all__ = [
    "SHORT_INPUT_RULES",
    "Conv1d",
    "ConvTranspose1d",
    "count_parameters",
    "extra_padding_for_stride",
    "maybe_weight_norm",
    "normalization_2d",
    "pad1d",
]
