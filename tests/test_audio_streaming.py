"""Streaming: causal convs, transposed convs and LSTMs run chunk by chunk give one pass's
outputs; causal tokenizers stream codes and audio identical to ``encode`` / ``decode``;
``encode_long`` of causal models equals one pass; receptive fields are measured exactly."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import anytok
from anytok.codecs.long_audio import Context, measure_context
from anytok.nn.attention import LocalSelfAttention
from anytok.nn.conv import Conv1d, ConvTranspose1d
from anytok.nn.seanet import SEANetDecoder, SEANetEncoder
from anytok.nn.streaming import check_streamable, streaming
from anytok.nn.transformer import Attention

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """One thread: these tensors are tiny, and threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def run_stream(module: nn.Module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed ``x`` to ``module`` in chunks of ``sizes`` (the rest in one chunk), then flush."""
    with streaming(module) as stream:
        outs, start = [], 0
        for size in sizes:
            outs.append(stream(x[..., start : start + size]))
            start += size
        outs.append(stream(x[..., start:]))
        outs.append(stream.flush(x))
    return torch.cat(outs, dim=-1)


def random_sizes(rng: random.Random, total: int, largest: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.randint(0, largest))  # empty chunks included
    return sizes


# --------------------------------------------------------------------------- layers


def test_conv1d_streams_like_one_pass() -> None:
    rng = random.Random(0)
    for _ in range(150):
        kernel = rng.randint(1, 9)
        dilation = rng.choice([1, 1, 2, 3])
        stride = 1 if dilation > 1 else rng.randint(1, min(kernel, 4))
        conv = Conv1d(
            3,
            5,
            kernel,
            stride,
            dilation=dilation,
            causal=True,
            pad_mode=rng.choice(["constant", "reflect", "replicate"]),
            short_input=rng.choice(["zeros", "extend"]),
        )
        x = torch.randn(2, 3, rng.randint(1, 50))
        with torch.no_grad():
            one_pass = conv(x)
        streamed = run_stream(conv, x, random_sizes(rng, x.shape[-1], 7))
        assert streamed.shape == one_pass.shape
        assert (streamed - one_pass).abs().max() <= TOL
        assert not conv.streaming


def test_conv_transpose1d_streams_like_one_pass() -> None:
    rng = random.Random(1)
    for _ in range(50):
        stride = rng.randint(1, 4)
        conv = ConvTranspose1d(3, 4, rng.randint(stride, 3 * stride), stride, causal=True)
        x = torch.randn(2, 3, rng.randint(1, 20))
        with torch.no_grad():
            one_pass = conv(x)
        streamed = run_stream(conv, x, random_sizes(rng, x.shape[-1], 4))
        assert streamed.shape == one_pass.shape
        assert (streamed - one_pass).abs().max() <= TOL


def test_lstm_carries_its_state_and_skips_empty_chunks() -> None:
    lstm_net = anytok.nn.seanet.SequenceLSTM(6, num_layers=2)
    x = torch.randn(2, 6, 17)
    with torch.no_grad():
        one_pass = lstm_net(x)
    streamed = run_stream(lstm_net, x, [3, 0, 1, 5])
    assert (streamed - one_pass).abs().max() <= TOL
    assert "forward" not in vars(lstm_net.lstm)  # the stream's patch is gone


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Sequential(Conv1d(2, 2, 3, causal=False)), "centred"),
        (nn.Sequential(Conv1d(2, 2, 3), nn.GroupNorm(1, 2)), "GroupNorm"),
        (nn.Sequential(nn.Conv1d(2, 2, 3, padding=1)), "bare Conv1d"),
        (nn.LSTM(2, 2, bidirectional=True), "bidirectional"),
        # anytok's own attention layers (bidirectional): they streamed wrong outputs
        (nn.Sequential(Conv1d(4, 8, 3), LocalSelfAttention(8, 4, 4)), "LocalSelfAttention"),
        (nn.Sequential(Attention(8, 2)), "Attention"),
    ],
)
def test_non_streamable_layers_are_named(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_streamable(module)


def test_measure_context_of_known_convs() -> None:
    def probe(frames: int) -> torch.Tensor:
        return torch.randn(1, 1, frames)

    assert measure_context(Conv1d(1, 1, 7, causal=True), probe, 1, 1) == Context(6, 0)
    assert measure_context(Conv1d(1, 1, 7, causal=False), probe, 1, 1) == Context(3, 3)
    assert measure_context(Conv1d(1, 1, 3, dilation=4, causal=True), probe, 1, 1) == Context(8, 0)
    lstm = anytok.nn.seanet.SequenceLSTM(1, num_layers=1)
    assert measure_context(lstm, probe, 1, 1) == Context(None, 0)


# --------------------------------------------------------------------------- tokenizers


def causal_models() -> list[tuple[str, dict]]:
    return [
        ("encodec_24khz", {}),
        ("seanet_fsq_24khz", {"lstm_layers": 1}),  # the tiny variant has no LSTM: add one
    ]


@pytest.mark.parametrize(("name", "overrides"), causal_models(), ids=lambda v: str(v))
@pytest.mark.parametrize("hops_per_chunk", [1, 3])
def test_causal_stream_equals_one_pass(name: str, overrides: dict, hops_per_chunk: int) -> None:
    model = anytok.create_model(name, tiny=True, **overrides).eval()
    hop = model.hop_length
    audio = 0.5 * torch.randn(2, model.channels, hop * 29 + 5)
    with torch.inference_mode():
        one_pass = model.encode(audio)
        latent = model.encoder(torch.nn.functional.pad(audio, (0, -audio.shape[-1] % hop)))
        with streaming(model.encoder) as stream:
            whole = audio[..., : hop * 29]  # the encoder itself takes whole hops
            pieces = [stream(c) for c in whole.split(hop * hops_per_chunk, dim=-1)]
            pieces.append(stream(torch.nn.functional.pad(audio[..., hop * 29 :], (0, hop - 5))))
            pieces.append(stream.flush(audio))
        assert (torch.cat(pieces, -1) - latent).abs().max() <= TOL
        with model.stream_encoder() as encoder:
            codes = [encoder(c) for c in audio.split(hop * hops_per_chunk, dim=-1)]
            codes.append(encoder.flush())
            assert encoder.spec == one_pass.spec
        assert torch.equal(torch.cat(codes, -1), one_pass.codes)
        one_pass_audio = model.decode(one_pass)
        with model.stream_decoder() as decoder:
            samples = [decoder(c) for c in one_pass.codes.split(hops_per_chunk, dim=-1)]
            samples.append(decoder.flush())
        streamed = torch.cat(samples, -1)
        assert streamed.shape == one_pass_audio.shape
        assert (streamed - one_pass_audio).abs().max() <= TOL


def test_stream_accepts_chunks_of_any_size() -> None:
    model = anytok.create_model("encodec_24khz", tiny=True).eval()
    audio = 0.5 * torch.randn(1, 1, model.hop_length * 17 + 3)
    rng = random.Random(2)
    with torch.inference_mode():
        with model.stream_encoder(n_levels=2) as encoder:
            codes, start = [], 0
            for size in random_sizes(rng, audio.shape[-1], 3 * model.hop_length):
                codes.append(encoder(audio[..., start : start + size]))
                start += size
            codes.append(encoder.flush())
        assert torch.equal(torch.cat(codes, -1), model.encode(audio, n_levels=2).codes)


def test_short_signal_waits_for_reflect_padding() -> None:
    """EnCodec's reflect padding needs 7 frames before the last encoder conv can start; a
    signal shorter than that comes out whole at flush, as one pass gives it."""
    model = anytok.create_model("encodec_24khz", tiny=True).eval()
    audio = 0.5 * torch.randn(1, 1, model.hop_length * 3)
    with torch.inference_mode():
        one_pass = model.encode(audio).codes
        with model.stream_encoder() as encoder:
            assert encoder(audio).shape[-1] == 0
            assert torch.equal(encoder.flush(), one_pass)


def test_full_size_encodec_streams_frame_by_frame() -> None:
    model = anytok.create_model("encodec_24khz").eval()
    audio = 0.3 * torch.randn(1, 1, model.hop_length * 12)
    with torch.inference_mode():
        one_pass = model.encode(audio, bandwidth=6.0)
        with model.stream_encoder(bandwidth=6.0) as encoder:
            codes = [encoder(c) for c in audio.split(model.hop_length, dim=-1)]
            codes.append(encoder.flush())
        assert torch.equal(torch.cat(codes, -1), one_pass.codes)
        with model.stream_decoder() as decoder:
            samples = [decoder(c) for c in one_pass.codes.split(1, dim=-1)] + [decoder.flush()]
        assert (torch.cat(samples, -1) - model.decode(one_pass)).abs().max() <= TOL


def test_encode_long_of_causal_model_equals_one_pass() -> None:
    model = anytok.create_model("encodec_24khz", tiny=True).eval()
    hop = model.hop_length
    audio = 0.5 * torch.randn(2, 1, hop * 50 + 1)
    lengths = torch.tensor([audio.shape[-1], hop * 31 + 4])
    with torch.inference_mode():
        one_pass = model.encode(audio, lengths)
        long = model.encode_long(audio, chunk_seconds=4 * hop / model.sample_rate, lengths=lengths)
        assert torch.equal(long.lengths, one_pass.lengths)
        for i, n in enumerate(one_pass.lengths.tolist()):
            assert torch.equal(long.codes[i, :, :n], one_pass.codes[i, :, :n])
        decoded = model.decode_long(one_pass, chunk_seconds=4 * hop / model.sample_rate)
        assert (decoded - model.decode(one_pass)).abs().max() <= TOL


@pytest.mark.parametrize("name", ["dac_24khz", "encodec_48khz"])
def test_non_causal_models_refuse_to_stream(name: str) -> None:
    model = anytok.create_model(name, tiny=True).eval()
    with pytest.raises(ValueError, match="not causal"), model.stream_encoder():
        pass
    with pytest.raises(ValueError, match="not causal"), model.stream_decoder():
        pass


# --------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize(
    "name,overrides",
    [("encodec_24khz", {}), ("mimi", {}), ("seanet_fsq_24khz", {"lstm_layers": 1})],
)
def test_bf16_streams_and_decode_long_run_as_encode_and_decode(name: str, overrides) -> None:
    """Streams run under the autocast ``encode`` / ``decode`` use: a bf16 model's decoder
    stream and ``decode_long`` used to fail on fp32 latents meeting bf16 layers, and an LSTM
    encoder's streamed codes differed from ``encode``'s."""
    model = anytok.create_model(name, tiny=True, **overrides).eval().to(torch.bfloat16)
    hop = model.hop_length
    audio = 0.3 * torch.randn(2, 1, 40 * hop + 3)
    with torch.inference_mode():
        tokens = model.encode(audio)
        with model.stream_encoder() as stream:
            codes = [stream(part) for part in audio.split(3 * hop, -1)]
            codes.append(stream.flush())
        assert torch.equal(torch.cat(codes, -1), tokens.codes)
        whole = model.decode(tokens)
        with model.stream_decoder() as stream:
            parts = [stream(part) for part in tokens.codes.split(3, -1)]
            parts.append(stream.flush())
        assert torch.allclose(torch.cat(parts, -1).float(), whole.float(), atol=1e-2)
        chunked = model.decode_long(tokens, chunk_seconds=3 * hop / model.sample_rate)
        assert torch.allclose(chunked.float(), whole.float(), atol=1e-2)
    model.double()
    with (
        pytest.raises(TypeError, match="stream_encoder: weights are torch.float64"),
        model.stream_encoder() as stream,
    ):
        stream(audio.double())


@pytest.mark.parametrize("bad", [-0.0005, float("nan")])
def test_context_seconds_must_not_be_negative(bad: float) -> None:
    """A negative context silently cut encode_long's output (40 frames became 12)."""
    model = anytok.create_model("encodec_48khz", tiny=True).eval()
    audio = 0.3 * torch.randn(1, 2, 40 * model.hop_length)
    with pytest.raises(ValueError, match="context_seconds must be >= 0"):
        model.encode_long(audio, chunk_seconds=0.05, context_seconds=bad)
    tokens = model.encode(audio)
    with pytest.raises(ValueError, match="context_seconds must be >= 0"):
        model.decode_long(tokens, chunk_seconds=0.05, context_seconds=bad)


def test_decode_long_of_causal_encodec_with_lengths_equals_decode() -> None:
    """Causal EnCodec's convolutions reflect-pad: an item of a few frames decoded inside a
    longer batch saw the batch's padding in decode_long (3e-4 off), not in decode."""
    model = anytok.create_model("encodec_24khz").eval()  # full size: 7-frame reflect reach
    hop = model.hop_length
    audio = 0.3 * torch.randn(2, 1, 20 * hop)
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([20 * hop, 5 * hop]), bandwidth=1.5)
        alone = model.decode(tokens[1])[0]  # its 5 frames
        assert alone.shape[-1] == 5 * hop
        for decoded in (model.decode(tokens), model.decode_long(tokens)):
            assert (decoded[1, :, : 5 * hop] - alone).abs().max() < 1e-6
            assert decoded[1, :, 5 * hop :].abs().max() == 0


AUDIO_FAMILIES = [
    "encodec_24khz",
    "dac_24khz",
    "mimi",
    "snac_24khz",
    "wavtokenizer_24khz_75hz",
    "seanet_fsq_24khz",
    "tadicodec_24khz_6hz",
]


@pytest.mark.parametrize("name", AUDIO_FAMILIES)
def test_decode_masks_past_lengths_in_training_mode_and_decodes_zero_frames(name: str) -> None:
    """``decode`` zeros past ``tokens.lengths`` whatever the mode (EnCodec and DAC left
    0.47 / 0.18 there in training mode, the mode ``create_model`` returns), and tokens of 0
    frames (an LM that emitted eos at once) decode to ``(b, c, 0)`` silence."""
    model = anytok.create_model(name, tiny=True).eval()
    hop = model.hop_length
    audio = 0.3 * torch.randn(2, model.channels, 12 * hop)
    with torch.no_grad():
        tokens = model.encode(audio, torch.tensor([12 * hop, 5 * hop]))
        frames = int(tokens.lengths[1])
        model.train()
        decoded = model.decode(tokens)
        assert decoded[1, :, frames * hop :].abs().max() == 0
        model.eval()
        empty = anytok.Tokens(codes=tokens.codes[..., :0], spec=tokens.spec)
        assert model.decode(empty).shape == (1 * 2, model.channels, 0)


def test_layers_take_inputs_of_zero_time_steps() -> None:
    """``ceil(0 / stride) = 0`` frames in one pass, as while streaming (torch's convs, the
    LSTM and the local attention raised on an empty time axis)."""
    cases = [
        (Conv1d(2, 3, 7), 2, 3),
        (Conv1d(2, 3, 4, stride=2), 2, 3),
        (ConvTranspose1d(2, 3, 4, 2), 2, 3),
        (LocalSelfAttention(8, 4, 4), 8, 8),
        (SEANetEncoder(1, 8, 4, ratios=(2, 3), lstm_layers=1), 1, 8),
        (SEANetDecoder(1, 8, 4, ratios=(3, 2), lstm_layers=1), 8, 1),
    ]
    for module, channels_in, channels_out in cases:
        out = module(torch.randn(2, channels_in, 0))
        assert out.shape == (2, channels_out, 0), type(module).__name__


@pytest.mark.parametrize("tail", [1, 5])
def test_exact_length_stream_ends_like_one_pass_of_raw_audio(tail: int) -> None:
    """EnCodec encodes raw audio (its convolutions reflect-pad the last window, as the
    reference does); its stream's flush ends a partial hop the same way: the streamed latent
    equals one pass over the raw samples, not over samples zero-padded to a whole hop (they
    differ by ~4e-3 there), and the streamed codes equal ``encode``'s."""
    model = anytok.create_model("encodec_24khz", tiny=True).eval()
    assert model.encodes_exact_lengths
    hop = model.hop_length
    audio = 0.5 * torch.randn(2, 1, hop * 9 + tail)
    with torch.inference_mode():
        raw = model.encoder(audio)
        zero_padded = model.encoder(torch.nn.functional.pad(audio, (0, hop - tail)))
        with streaming(model.encoder) as stream:
            parts = [stream(audio[..., : hop * 9]), stream(audio[..., hop * 9 :])]
            parts.append(stream.flush(audio))
        latent = torch.cat(parts, -1)
        assert (latent - raw).abs().max() <= TOL
        assert (raw - zero_padded).abs().max() > 100 * TOL
        with model.stream_encoder() as encoder:
            codes = [encoder(c) for c in audio.split(3 * hop + 1, dim=-1)] + [encoder.flush()]
        assert torch.equal(torch.cat(codes, -1), model.encode(audio).codes)


@pytest.mark.parametrize("name", ["encodec_24khz", "seanet_fsq_24khz", "dac_24khz"])
def test_encode_long_refuses_empty_audio_as_encode_does(name: str) -> None:
    """``encode_long`` of 0 samples hit a bare ``assert`` (non-causal) or returned 0 frames
    (causal) where ``encode`` refuses."""
    model = anytok.create_model(name, tiny=True).eval()
    empty = torch.zeros(2, model.channels, 0)
    message = f"{type(model).__name__}.encode: empty audio \\(0 samples\\)"
    with torch.inference_mode():
        with pytest.raises(ValueError, match=message):
            model.encode(empty)
        with pytest.raises(ValueError, match=message):
            model.encode_long(empty)
        with pytest.raises(ValueError, match=message):
            model.encode_long(empty, lengths=torch.tensor([0, 0]))


@pytest.mark.parametrize("name", ["encodec_24khz", "seanet_fsq_24khz", "dac_24khz"])
def test_decode_long_of_zero_frames_returns_what_decode_does(name: str) -> None:
    """``decode_long`` of 0 frames failed in ``torch.cat`` (non-causal) where ``decode``
    returns ``(b, c, 0)`` silence."""
    model = anytok.create_model(name, tiny=True).eval()
    with torch.inference_mode():
        tokens = model.encode(0.3 * torch.randn(2, model.channels, 4 * model.hop_length))
        for codes in (tokens.codes[..., :0], anytok.Tokens(tokens.codes[..., :0], tokens.spec)):
            decoded = model.decode_long(codes)
            assert torch.equal(decoded, model.decode(codes))
            assert decoded.shape == (2, model.channels, 0)


@pytest.mark.parametrize("name", ["encodec_24khz", "seanet_fsq_24khz", "mimi"])
@pytest.mark.parametrize("frames_per_call", [None, 4])
def test_decoder_stream_zeros_past_tokens_lengths(name: str, frames_per_call: int | None) -> None:
    """The decoder stream ignored ``Tokens.lengths``: a short item's samples past its length
    were its decoder's output (0.16 to 0.63), where ``decode`` zeros them."""
    model = anytok.create_model(name, tiny=True).eval()
    hop = model.hop_length
    audio = 0.3 * torch.randn(3, 1, 30 * hop)
    with torch.inference_mode():
        tokens = model.encode(audio, torch.tensor([30 * hop, 12 * hop + 3, 9 * hop]))
        whole = model.decode(tokens)
        frames = tokens.codes.shape[-1]
        step = frames_per_call or frames
        with model.stream_decoder() as stream:
            parts = []
            for start in range(0, frames, step):
                codes = tokens.codes[..., start : start + step]
                lengths = (tokens.lengths - start).clamp(0, codes.shape[-1])
                parts.append(stream(anytok.Tokens(codes, tokens.spec, lengths)))
            parts.append(stream.flush())
        streamed = torch.cat(parts, -1)
    assert streamed.shape == whole.shape
    for i, n in enumerate(tokens.lengths.tolist()[1:], start=1):  # the short items
        assert streamed[i, :, n * hop :].abs().max() == 0
    assert (streamed - whole).abs().max() <= TOL


@pytest.mark.parametrize("name", ["encodec_24khz", "dac_24khz"])
def test_infinite_chunk_or_context_seconds_are_refused(name: str) -> None:
    """``chunk_seconds`` / ``context_seconds`` of inf raised a bare OverflowError."""
    model = anytok.create_model(name, tiny=True).eval()
    audio = 0.3 * torch.randn(1, 1, 10 * model.hop_length)
    tokens = model.encode(audio)
    inf = float("inf")
    with torch.inference_mode():
        for run in (model.encode_long, model.decode_long):
            data = audio if run == model.encode_long else tokens
            with pytest.raises(ValueError, match="chunk_seconds must be positive and finite"):
                run(data, chunk_seconds=inf)
            with pytest.raises(ValueError, match="context_seconds must be >= 0 and finite"):
                run(data, context_seconds=inf)
