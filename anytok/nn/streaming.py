"""Run a causal network over a signal chunk by chunk, with the same outputs as one pass.

:func:`streaming` puts every stateful layer of a module into streaming mode for the length
of a ``with`` block:

- causal :class:`~anytok.nn.conv.Conv1d` keeps the input samples its next windows need;
- causal :class:`~anytok.nn.conv.ConvTranspose1d` keeps its overlap-add tail;
- every (unidirectional) ``nn.LSTM`` carries its hidden and cell state from chunk to chunk
  and passes empty chunks through (a conv that is still waiting for samples emits none);
- any other layer with the :class:`StreamLayer` methods (``begin_stream``,
  ``finish_stream``, ``end_stream`` and a ``streaming`` flag) keeps its own state, e.g. the
  key / value cache of :class:`anytok.nn.causal_transformer.CausalTransformer`.

Pointwise layers (activations, 1x1 convs, residual sums of streamed branches) need nothing.
Layers that look at the whole time axis or into the future cannot stream, and
:func:`check_streamable` names the first one found: centred convolutions, GroupNorm /
InstanceNorm / BatchNorm (statistics over time), bidirectional recurrences, attention.

Example::

    with streaming(model.encoder) as stream:
        parts = [stream(chunk) for chunk in audio.split(hop * 4, dim=-1)]
        parts.append(stream.flush(audio))
    latent = torch.cat(parts, dim=-1)  # == model.encoder(audio) up to float rounding
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from anytok.nn.attention import LocalSelfAttention
from anytok.nn.conv import Conv1d, ConvTranspose1d
from anytok.nn.transformer import Attention

#: Modules whose output at a time step depends on the whole time axis (or on the future).
_NOT_STREAMABLE = (
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.MultiheadAttention,
    Attention,  # anytok's own (bidirectional) attention layers
    LocalSelfAttention,
    nn.Transformer,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


@runtime_checkable
class StreamLayer(Protocol):
    """A layer that streams by itself: between ``begin_stream()`` and ``end_stream()`` each
    call takes the next chunk of one signal and returns the outputs it completes;
    ``finish_stream()`` marks the next call as the last (it may get an empty chunk)."""

    @property
    def streaming(self) -> bool: ...

    def begin_stream(self) -> None: ...

    def finish_stream(self) -> None: ...

    def end_stream(self) -> None: ...


def stream_layers(module: nn.Module) -> list[nn.Module]:
    """Every :class:`StreamLayer` in ``module`` (itself included), outermost first."""
    return [m for m in module.modules() if isinstance(m, StreamLayer)]


def check_streamable(module: nn.Module) -> None:
    """Raise ``ValueError`` naming the first layer of ``module`` that cannot stream.

    Custom layers are trusted to be pointwise in time unless they are one of the known
    non-streamable kinds; a layer mixing time steps in another way must not be streamed.
    (BatchNorm is allowed: streams run in eval mode, where it is pointwise.)
    """
    wrapped: set[int] = set()
    for name, sub in module.named_modules():
        where = f"{type(module).__name__}.{name}" if name else type(module).__name__
        if id(sub) in wrapped:
            continue
        if isinstance(sub, (Conv1d, ConvTranspose1d)):
            wrapped.update(id(m) for m in sub.modules())
            if not sub.causal:
                raise ValueError(f"{where}: a centred (non-causal) convolution cannot stream")
        elif isinstance(sub, StreamLayer):  # keeps its own state; its begin_stream checks
            wrapped.update(id(m) for m in sub.modules())
        elif isinstance(sub, nn.RNNBase):
            if sub.bidirectional:
                raise ValueError(f"{where}: a bidirectional recurrence cannot stream")
        elif isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
            pointwise = sub.kernel_size == (1,) and sub.stride == (1,) and sub.padding == (0,)
            if not pointwise:
                raise ValueError(
                    f"{where}: a bare {type(sub).__name__} with kernel > 1 keeps no stream "
                    "state; use anytok.nn.conv.Conv1d / ConvTranspose1d with causal=True"
                )
        elif isinstance(sub, _NOT_STREAMABLE):
            raise ValueError(f"{where}: {type(sub).__name__} looks at the whole time axis")


class Stream:
    """Feeds consecutive chunks ``(batch, channels, time)`` to a module in streaming mode.

    ``stream(chunk)`` returns the outputs the chunk completes (possibly none: a tensor with
    0 time steps); ``stream.flush(like)`` ends the signal and returns what is left. ``like``
    is any tensor of the input's batch, channels, dtype and device (e.g. the last chunk).
    """

    def __init__(self, module: nn.Module, layers: list[nn.Module]):
        self.module = module
        self._layers = layers
        self._flushed = False

    def __call__(self, chunk: Tensor) -> Tensor:
        if self._flushed:
            raise RuntimeError("Stream: the signal has ended (flush was called)")
        return self.module(chunk)

    def flush(self, like: Tensor) -> Tensor:
        """End of signal: apply the right padding one pass would and return the last outputs."""
        if self._flushed:
            raise RuntimeError("Stream: flush was already called")
        for layer in self._layers:
            layer.finish_stream()
        out = self.module(like[..., :0])
        self._flushed = True
        return out


def _stateful_lstm_forward(lstm: nn.LSTM) -> Any:
    """A replacement ``forward`` for ``lstm`` that carries ``(h, c)`` across calls."""
    original = lstm.forward
    state: dict[str, Any] = {"hx": None}
    time_axis = 1 if lstm.batch_first else 0

    def forward(input: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        if hx is not None:
            raise ValueError("streaming LSTM: the stream owns the state; do not pass hx")
        if input.shape[time_axis] == 0:  # an upstream layer is still waiting for samples
            shape = list(input.shape)
            shape[-1] = lstm.hidden_size * (2 if lstm.bidirectional else 1)
            return input.new_zeros(shape), state["hx"]
        out, state["hx"] = original(input, state["hx"])
        return out, state["hx"]

    return forward


@contextmanager
def streaming(module: nn.Module) -> Iterator[Stream]:
    """Context in which ``module`` processes one signal chunk by chunk (see module docs).

    Raises:
        ValueError: ``module`` holds a layer that cannot stream (named in the message).
        RuntimeError: ``module`` is already streaming.
    """
    check_streamable(module)
    layers = stream_layers(module)
    lstms = [m for m in module.modules() if isinstance(m, nn.LSTM)]
    if any(layer.streaming for layer in layers) or any("forward" in vars(m) for m in lstms):
        raise RuntimeError(f"{type(module).__name__} is already streaming")
    started: list[nn.Module] = []
    try:
        for layer in layers:
            layer.begin_stream()
            started.append(layer)
        for lstm in lstms:
            # An instance attribute shadows nn.LSTM.forward for this block only, so any
            # module built on nn.LSTM streams without knowing about it.
            lstm.forward = _stateful_lstm_forward(lstm)  # type: ignore[method-assign]
        with torch.no_grad():
            yield Stream(module, layers)
    finally:
        for layer in started:
            layer.end_stream()
        for lstm in lstms:
            vars(lstm).pop("forward", None)


__all__ = ["Stream", "StreamLayer", "check_streamable", "stream_layers", "streaming"]
