"""TaDiCodec-style speech tokenizer: one binary-spherical codebook at 6.25 or 12.5 tokens per
second, decoded by a text-aware rectified-flow transformer and a mel vocoder.

After TaDiCodec ("Text-aware Diffusion Speech Tokenizer for Speech Language Modeling",
Yang et al. 2025, https://arxiv.org/abs/2508.16790):

* **Encoder**: log-mel frames (100 per second at 24 kHz) -> a transformer with key-padding
  masks -> frames stacked by ``frames_per_token`` (16 at 6.25 Hz) -> a linear projection to
  the quantizer's dimension.
* **Tokens**: one codebook, BSQ with 14 bits (16,384 codes) by default (FSQ or any quantizer
  by name).
* **Decoder**: :class:`anytok.decoders.diffusion.FlowDecoder` denoises the normalised mel
  frames, cross-attending to the token embeddings (placed at their frames' positions, so any
  duration works) and, optionally, to a **text** condition: a byte-level text encoder inside
  the model (no external tokenizer), so transcripts help reconstruction at such low rates.
  Tokens never depend on the text.
* **Vocoder**: :class:`anytok.decoders.diffusion.vocoder.MelVocoder` (Vocos-style iSTFT).

Training (``forward``) is end to end for the tokenizer: the flow-matching loss
(``losses["diffusion"]``, masked to each item's frames) reaches the encoder through the
quantizer's straight-through path. The vocoder is trained in the same run by teacher
forcing: ``reconstruction`` is the vocoder applied to the *ground-truth* mel (detached from
the encoder), so the recipe's mel / STFT / GAN losses train it exactly as a standalone
vocoder would, while decoding chains sampled mel -> vocoder.

Differences from the paper, stated plainly: TaDiCodec trains a larger in-context diffusion
transformer with a prompt mechanism and a separate vocoder; here both stages live in one
model and the decoder cross-attends to tokens. Sizes follow the paper where it gives them
(24 kHz, 6.25 Hz, 2^14 BSQ codes); the widths are anytok's choice.

Batches: in training the encoder's attention masks padded frames. ``encode`` and ``decode``
run once per distinct length (:func:`~anytok.codecs.long_audio.apply_per_length`), each
item cropped to its own length, and the decoder's seeded noise is the same for every item:
an item gets the tokens and the audio it gets alone, whatever else is in its batch (the mel's
last frames would otherwise see the batch's padding through the STFT window and the
sampler's attention). The last token of an item whose length is not a multiple of the hop
sees zeros past its end (the tokenizer is non-causal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from anytok.codecs import long_audio
from anytok.codecs.base import (
    AudioTokenizer,
    TokenizerOutput,
    build_quantizer,
    decode_codes,
    quantize_channel_first,
    to_tokens,
)
from anytok.decoders.diffusion import FlowDecoder, SamplingDefaults, checked_scheduler
from anytok.decoders.diffusion.vocoder import LogMel, MelConfig, MelVocoder
from anytok.nn.transformer import Transformer, init_weights, sincos_embedding
from anytok.registry import register
from anytok.tokens import Tokens

#: Byte-level text vocabulary: 256 bytes, then "start of text" (also the empty text).
TEXT_VOCAB = 257
TEXT_START = 256


class ByteTextEncoder(nn.Module):
    """Texts -> embeddings ``(b, l, dim)`` and a mask ``(b, l)``: UTF-8 bytes after a start
    token, truncated to ``max_bytes``, through a small transformer."""

    def __init__(self, dim: int, depth: int, heads: int, max_bytes: int = 512):
        super().__init__()
        self.dim = dim
        self.max_bytes = max_bytes
        self.embed = nn.Embedding(TEXT_VOCAB, dim)
        self.transformer = Transformer(dim, depth, heads)

    def forward(self, texts: Sequence[str | None], device: torch.device) -> tuple[Tensor, Tensor]:
        ids = [[TEXT_START, *list((t or "").encode("utf-8"))[: self.max_bytes]] for t in texts]
        longest = max(len(x) for x in ids)
        batch = torch.full((len(ids), longest), TEXT_START, dtype=torch.long)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        batch, mask = batch.to(device), mask.to(device)
        h = self.embed(batch)
        h = h + sincos_embedding(torch.arange(longest, device=device), self.dim).to(h.dtype)
        return self.transformer(h, attn_mask=mask), mask  # type: ignore[return-value]


class TaDiCodec(SamplingDefaults, AudioTokenizer):
    """Speech ``(b, 1, samples)`` -> codes ``(b, 1, ceil(samples / hop_length))``.

    Args:
        sample_rate: input rate in Hz.
        mel: :class:`MelConfig` fields (``n_fft``, ``hop_length``, ``n_mels`` ...).
        frames_per_token: mel frames per token (hop_length = ``frames_per_token * mel hop``).
        dim, depth, heads: the encoder transformer.
        latent_dim: quantizer input dimension (BSQ: the number of bits).
        quantizer: ``{"name": ..., **kwargs}``.
        decoder: :class:`FlowDecoder` keyword arguments (``repa`` is refused: this model
            never feeds a REPA teacher; FlexTok has one for images).
        text: a text condition (byte-level text encoder) for the decoder.
        text_depth: text encoder depth.
        vocoder: :class:`MelVocoder` keyword arguments.
        sample_steps, sample_scheduler, sample_seed, guidance_scale: ``decode`` defaults;
            ``sample_scheduler=None`` picks the decoder objective's (``"euler"`` for flow,
            ``"ddim"`` for epsilon / v), and one that cannot sample it is refused.
    """

    channels = 1

    def __init__(
        self,
        sample_rate: int = 24000,
        mel: dict[str, Any] | None = None,
        frames_per_token: int = 16,
        dim: int = 768,
        depth: int = 8,
        heads: int = 12,
        latent_dim: int = 14,
        quantizer: dict[str, Any] | None = None,
        decoder: dict[str, Any] | None = None,
        text: bool = True,
        text_depth: int = 4,
        vocoder: dict[str, Any] | None = None,
        sample_steps: int = 32,
        sample_scheduler: str | None = None,
        sample_seed: int = 0,
        guidance_scale: float = 1.5,
    ):
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.mel_config = MelConfig(sample_rate=self.sample_rate, **(mel or {}))
        self.frames_per_token = int(frames_per_token)
        self.hop_length = self.frames_per_token * self.mel_config.hop_length
        self.log_mel = LogMel(self.mel_config)
        n_mels = self.mel_config.n_mels
        self.dim = dim
        self.in_proj = nn.Linear(n_mels, dim)
        self.encoder = Transformer(dim, depth, heads)
        self.to_latent = nn.Linear(dim * self.frames_per_token, latent_dim)
        self.encoder.apply(init_weights)
        quantizer = quantizer or {"name": "bsq", "codebook_dim": latent_dim}
        self.quantizer = build_quantizer(quantizer, latent_dim)
        decoder = {"dim": dim, "depth": 12, "heads": heads, **(decoder or {})}
        if decoder.get("repa"):
            raise ValueError(
                f"{type(self).__name__}: decoder.repa is not supported: its training pass never "
                "gives the flow decoder the clean input REPA's teacher needs, so the projector "
                "would never train (and a checkpoint would need the teacher to load); REPA "
                "exists for images, through FlexTok's `repa` option"
            )
        self.text_encoder = (
            ByteTextEncoder(decoder["dim"], text_depth, decoder["heads"]) if text else None
        )
        self.decoder = FlowDecoder(
            n_mels,
            latent_dim,
            extra_cond_dim=decoder["dim"] if text else None,
            **decoder,
        )
        self.vocoder = MelVocoder(self.mel_config, **(vocoder or {}))
        self.sample_steps = sample_steps
        self.sample_scheduler = checked_scheduler(
            f"{type(self).__name__}: sample_scheduler",
            self.decoder.objective,
            sample_scheduler,
            self.decoder.time_shift,
        )
        self.sample_seed = sample_seed
        self.guidance_scale = guidance_scale

    # ------------------------------------------------------------------ pieces

    def _frame_mask(
        self, token_lengths: Tensor, tokens: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Token mask ``(b, tokens)`` and mel-frame mask ``(b, tokens * frames_per_token)``."""
        positions = torch.arange(tokens)
        token_mask = positions[None] < token_lengths.cpu()[:, None]
        frame_mask = token_mask.repeat_interleave(self.frames_per_token, dim=1)
        return token_mask.to(device), frame_mask.to(device)

    def _encode_mel(self, log_mel: Tensor, frame_mask: Tensor) -> Tensor:
        """Log-mel ``(b, n_mels, frames)`` -> latent ``(b, latent_dim, tokens)``."""
        h = self.in_proj(self.log_mel.normalize(log_mel).transpose(1, 2))
        frames = h.shape[1]
        h = h + sincos_embedding(torch.arange(frames, device=h.device), self.dim).to(h.dtype)
        h = self.encoder(h, attn_mask=frame_mask)
        stacked = rearrange(h, "b (t f) d -> b t (f d)", f=self.frames_per_token)
        return self.to_latent(stacked).transpose(1, 2)  # type: ignore[no-any-return]

    def _token_positions(self, tokens: int, device: torch.device) -> Tensor:
        """Centre frame of each token, in mel frames: the decoder embeds token and frame
        positions alike, so tokens line up with the frames they came from at any duration."""
        return (
            torch.arange(tokens, device=device) * self.frames_per_token
            + (self.frames_per_token - 1) / 2
        )

    def _check_texts(
        self, text: Sequence[str | None] | None, batch: int
    ) -> list[str | None] | None:
        """``text`` as a list of one entry per item (None: no text), checked."""
        if self.text_encoder is None:
            if text is not None and any(t for t in text):
                raise ValueError("this TaDiCodec was built with text=False: it takes no text")
            return None
        if text is None:
            return None
        texts = list(text)
        if len(texts) != batch:
            raise ValueError(f"text: expected {batch} entries (one per item), got {len(texts)}")
        return texts

    def _text(
        self, text: Sequence[str | None] | None, batch: int, device: torch.device
    ) -> tuple[Tensor | None, Tensor | None]:
        texts = self._check_texts(text, batch)
        if self.text_encoder is None:
            return None, None
        return self.text_encoder(texts if texts is not None else [None] * batch, device)

    # ------------------------------------------------------------------ contract

    def forward(
        self, audio: Tensor, lengths: Tensor | None = None, text: Sequence[str | None] | None = None
    ) -> TokenizerOutput:
        """Training pass: flow loss on the mel given the tokens (+ text); the vocoder's output
        on the ground-truth mel as ``reconstruction``."""
        padded, latent, token_lengths = self._padded_latent(audio, lengths)
        log_mel = self.log_mel(padded)
        tokens = padded.shape[-1] // self.hop_length
        token_mask, frame_mask = self._frame_mask(token_lengths, tokens, audio.device)
        quantized, out = quantize_channel_first(self.quantizer, latent)
        extra, extra_mask = self._text(text, audio.shape[0], audio.device)
        flow = self.decoder.loss(
            self.log_mel.normalize(log_mel).transpose(1, 2),
            quantized.transpose(1, 2),
            cond_mask=token_mask,
            cond_positions=self._token_positions(tokens, audio.device),
            target_mask=frame_mask,
            extra=extra,
            extra_mask=extra_mask,
        )
        reconstruction = self.vocoder(log_mel.detach())[..., : audio.shape[-1]]
        return TokenizerOutput(
            reconstruction=reconstruction,
            tokens=to_tokens(out.codes, self.spec, token_lengths),
            losses={"diffusion": flow.loss, "quantizer": out.loss},
            metrics={**out.metrics, **flow.metrics},
            latent=latent,
        )

    def encode(self, audio: Tensor, lengths: Tensor | None = None) -> Tokens:
        """``audio (b, 1, s)`` -> codes ``(b, 1, ceil(s / hop_length))`` (text-independent);
        samples past ``lengths`` are ignored, and each item gets the codes it gets alone."""
        _, latent, token_lengths = self._padded_latent(audio, lengths)
        return to_tokens(self.codes_from_latent(latent), self.spec, token_lengths)

    def _padded_latent(
        self, audio: Tensor, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``audio (b, 1, s)`` -> the padded audio ``(b, 1, t * hop_length)`` (zeros past
        ``lengths``), the latent ``(b, latent_dim, t)`` and token lengths ``(b,)``."""
        padded, token_lengths = self.pad_input(audio, lengths)
        if self.training:  # one pass, padded frames masked in attention
            return padded, self._encode_audio(padded, token_lengths), token_lengths
        latent = long_audio.apply_per_length(
            self._encode_audio, padded, token_lengths * self.hop_length, 1 / self.hop_length
        )
        return padded, latent, token_lengths

    def _encode_audio(self, audio: Tensor, token_lengths: Tensor | None = None) -> Tensor:
        """Audio ``(b, 1, t * hop_length)`` -> latent ``(b, latent_dim, t)``, attending only
        to each item's first ``token_lengths`` tokens (default: all)."""
        tokens = audio.shape[-1] // self.hop_length
        if audio.shape[0] == 0:  # torchaudio's mel has no empty batch
            return audio.new_zeros(0, self.to_latent.out_features, tokens)
        if token_lengths is None:
            token_lengths = torch.full((audio.shape[0],), tokens)
        _, frame_mask = self._frame_mask(token_lengths, tokens, audio.device)
        return self._encode_mel(self.log_mel(audio), frame_mask)

    @torch.no_grad()
    def decode(
        self,
        tokens: Tokens | Tensor,
        *,
        text: Sequence[str | None] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Codes ``(b, 1, t)`` -> audio ``(b, 1, t * hop_length)``: sample the mel (``steps``
        of ``scheduler``, classifier-free ``guidance_scale``, ``seed``; defaults from the
        constructor), then vocode. ``text``: optional transcripts, one per item. With
        ``tokens.lengths``, each item is decoded at its own length (zeros past it)."""
        codes = self.codes_of(tokens)
        texts = self._check_texts(text, codes.shape[0])
        if codes.numel() == 0:  # no items or no frames: as AudioTokenizer.decode
            return self._silence(codes)
        sampling = self.sampling(steps, guidance_scale, scheduler, seed)

        def decode_items(item_codes: Tensor, items: Tensor | None) -> Tensor:
            item_texts = texts
            if texts is not None and items is not None:
                item_texts = [texts[i] for i in items.tolist()]
            return self._decode_codes(item_codes, item_texts, sampling)

        lengths = tokens.lengths if isinstance(tokens, Tokens) else None
        return long_audio.apply_per_length(
            decode_items, codes, lengths, self.hop_length, with_items=True
        )

    def _decode_codes(
        self, codes: Tensor, texts: list[str | None] | None, sampling: dict[str, Any]
    ) -> Tensor:
        """Codes ``(b, 1, t)``, every token valid -> audio ``(b, 1, t * hop_length)``."""
        b, t = codes.shape[0], codes.shape[-1]
        quantized = decode_codes(self.quantizer, codes)
        extra, extra_mask = self._text(texts, b, codes.device)
        mel = self.decoder.sample(
            quantized.transpose(1, 2),
            num_positions=t * self.frames_per_token,
            cond_positions=self._token_positions(t, codes.device),
            extra=extra,
            extra_mask=extra_mask,
            **sampling,
        )
        log_mel = self.log_mel.denormalize(mel.transpose(1, 2))
        return self.vocoder(log_mel.to(next(self.vocoder.parameters()).dtype)).clamp(-1, 1)

    def encode_long(self, audio: Tensor, **kwargs: Any) -> Tokens:
        """Refused: no chunked path (``anytok encode`` then encodes the file in one pass).

        Raises:
            long_audio.NoChunkedPathError: always (a ValueError).
        """
        raise long_audio.NoChunkedPathError(
            "tadicodec attends over whole utterances (global attention in encoder and decoder): "
            "encode utterances one by one with encode(); chunked long-audio encoding does not apply"
        )

    def encode_long_stream(self, pieces: Iterable[Tensor], **kwargs: Any) -> Tokens:
        """Refused, as :meth:`encode_long`."""
        return self.encode_long(torch.zeros(0))

    def decode_long(self, tokens: Tokens | Tensor, **kwargs: Any) -> Tensor:
        """Refused: no chunked path (``anytok decode`` then decodes the file in one pass).

        Raises:
            long_audio.NoChunkedPathError: always (a ValueError).
        """
        raise long_audio.NoChunkedPathError(
            "tadicodec decodes whole utterances: split the token sequence at utterance "
            "boundaries and call decode() on each"
        )

    def sweep_options(self) -> dict[str, list[int]]:
        """Benchmark sweep axis (:mod:`anytok.bench.sweeps`): sampler steps."""
        return {"steps": [1, 2, 4, 8, 16, 32, 64]}

    def sweep_decode(self, tokens: Tokens, axis: str, value: int) -> tuple[Tensor, Tensor]:
        """Decode with ``value`` sampler steps; the codes are all of them."""
        return self.decode(tokens, steps=int(value)), tokens.codes


def _config(token_rate_hz: float) -> dict[str, Any]:
    frames = round(100 / token_rate_hz)
    return {
        "sample_rate": 24000,
        "mel": {"n_fft": 1024, "hop_length": 240, "n_mels": 128},
        "frames_per_token": frames,
        "dim": 768,
        "depth": 8,
        "heads": 12,
        "latent_dim": 14,
        "quantizer": {"name": "bsq", "codebook_dim": 14},
        "decoder": {"dim": 768, "depth": 12, "heads": 12, "time_shift": 1.0, "cond_dropout": 0.1},
        "text": True,
        "text_depth": 4,
        "vocoder": {"dim": 512, "intermediate_dim": 1536, "num_layers": 8},
        "sample_steps": 32,
        "sample_scheduler": None,  # the decoder objective's: euler (flow), ddim (epsilon / v)
        "sample_seed": 0,
        "guidance_scale": 1.5,
    }


TINY = {
    "sample_rate": 16000,
    "mel": {"n_fft": 256, "hop_length": 64, "n_mels": 16},
    "frames_per_token": 4,
    "dim": 32,
    "depth": 1,
    "heads": 4,
    "latent_dim": 6,
    "quantizer": {"name": "bsq", "codebook_dim": 6},
    "decoder": {"dim": 32, "depth": 2, "heads": 4},
    "text_depth": 1,
    "vocoder": {"dim": 32, "intermediate_dim": 64, "num_layers": 1},
    "sample_steps": 4,
}

for _name, _rate in (("tadicodec_24khz_6hz", 6.25), ("tadicodec_24khz_12hz", 12.5)):
    register(
        _name,
        modality="audio",
        description=(
            f"TaDiCodec-style speech tokenizer: one BSQ codebook (16,384 codes) at {_rate:g} Hz, "
            "text-aware rectified-flow mel decoder + Vocos vocoder"
        ),
        paper="https://arxiv.org/abs/2508.16790 (TaDiCodec)",
        default_config=_config(_rate),
        tiny_config=TINY,
        builder=TaDiCodec,
    )
