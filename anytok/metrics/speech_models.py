"""Model-based speech metrics: UTMOS, speaker similarity, WER / dWER.

Each metric is a real network from user-supplied safetensors weights (see
:mod:`anytok.metrics.weights`): the self-supervised speech encoders are torchaudio's model
builders (``wav2vec2_base``, ``hubert_base``, ``wavlm_base`` ...), so their state-dict layout
is torchaudio's. Every model runs at 16 kHz; inputs at other rates are resampled.

- :class:`UTMOS22Strong`: the UTMOS22 strong learner (Saeki et al. 2022,
  https://arxiv.org/abs/2204.02152) in its inference form (no phoneme encoder): wav2vec 2.0
  base features, fixed domain and judge embeddings, a BLSTM and a frame-wise projection,
  averaged over time and mapped to ``2 * score + 3``. Predicts MOS (about 1-5).
- :class:`SpeakerEncoder`: an SSL encoder whose time-averaged hidden states (optionally
  through a linear ``head``) are the speaker embedding; ``spk_sim`` is the cosine of the
  embeddings of input and reconstruction (as in DASB / Codec-SUPERB's SPK-SIM).
- :class:`CTCRecognizer`: an SSL encoder with a CTC head and greedy decoding; ``wer`` is the
  word error rate against a given transcript, ``dwer`` (DASB's "dWER") against the
  transcript of the input audio.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.media.audio import resample
from anytok.metrics.weights import MetricWeightsError, check_weights_path, load_weights

#: Rate every speech metric model runs at.
MODEL_SAMPLE_RATE = 16000

#: torchaudio builders of self-supervised speech encoders, by name.
SSL_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "wav2vec2_base": torchaudio.models.wav2vec2_base,
    "wav2vec2_large": torchaudio.models.wav2vec2_large,
    "wav2vec2_large_lv60k": torchaudio.models.wav2vec2_large_lv60k,
    "hubert_base": torchaudio.models.hubert_base,
    "hubert_large": torchaudio.models.hubert_large,
    "wavlm_base": torchaudio.models.wavlm_base,
    "wavlm_large": torchaudio.models.wavlm_large,
}

#: Labels of torchaudio's English character CTC models (blank "-", word separator "|").
ENGLISH_CTC_LABELS: tuple[str, ...] = (
    "-", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F",
    "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z",
)  # fmt: skip


def build_ssl(arch: str, **kwargs: object) -> nn.Module:
    """A torchaudio SSL encoder by name, with random weights (no download)."""
    if arch not in SSL_ARCHITECTURES:
        raise MetricWeightsError(
            f"unknown speech encoder architecture {arch!r}; choose one of "
            f"{', '.join(sorted(SSL_ARCHITECTURES))}"
        )
    return SSL_ARCHITECTURES[arch](**kwargs)


def to_model_input(audio: Tensor, sample_rate: int) -> Tensor:
    """``(batch, channels, samples)`` at ``sample_rate`` -> mono ``(batch, samples)`` at 16 kHz."""
    mono = audio.float().mean(dim=1)
    return resample(mono, sample_rate, MODEL_SAMPLE_RATE)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def ssl_width(ssl: nn.Module) -> int:
    """Feature width of a torchaudio SSL encoder (768 for base models, 1024 for large)."""
    return ssl.encoder.transformer.layers[0].attention.embed_dim


class UTMOS22Strong(nn.Module):
    """UTMOS22 strong learner, inference form: ``(batch, samples)`` at 16 kHz -> MOS ``(batch,)``.

    State-dict layout: ``ssl.*`` (torchaudio ``wav2vec2_base``), ``domain_emb (1, 128)``,
    ``judge_emb (1, 128)``, ``blstm.*`` (LSTM 896 -> 2 x 512), ``projection.0`` (1024 -> 2048)
    and ``projection.2`` (2048 -> 1). ``ssl_arch`` exists for tests and variants; the
    published model uses ``wav2vec2_base``.
    """

    def __init__(self, ssl_arch: str = "wav2vec2_base") -> None:
        super().__init__()
        domain_dim, judge_dim, rnn_dim, proj_dim = 128, 128, 512, 2048
        self.ssl = build_ssl(ssl_arch)
        ssl_dim = ssl_width(self.ssl)
        self.domain_emb = nn.Parameter(torch.zeros(1, domain_dim), requires_grad=False)
        self.judge_emb = nn.Parameter(torch.zeros(1, judge_dim), requires_grad=False)
        self.blstm = nn.LSTM(
            ssl_dim + domain_dim + judge_dim, rnn_dim, batch_first=True, bidirectional=True
        )
        self.projection = nn.Sequential(
            nn.Linear(2 * rnn_dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, 1)
        )

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``wave (b, n)`` -> ``(b,)`` predicted MOS (frames beyond ``lengths`` ignored)."""
        features, frame_lengths = self.ssl(wave, lengths)  # (b, t, ssl_dim)
        b, t, _ = features.shape
        conditioned = torch.cat(
            [
                features,
                self.domain_emb.expand(b, t, -1),
                self.judge_emb.expand(b, t, -1),
            ],
            dim=-1,
        )
        frame_scores = self.projection(self.blstm(conditioned)[0]).squeeze(-1)  # (b, t)
        return _masked_mean(frame_scores, frame_lengths) * 2 + 3

    @classmethod
    def from_weights(
        cls, path: str | os.PathLike[str] | None, ssl_arch: str = "wav2vec2_base"
    ) -> UTMOS22Strong:
        model = cls(ssl_arch)
        if path is not None:
            load_weights(model, path, what="UTMOS")
        return model.eval().requires_grad_(False)


def _masked_mean(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Mean of ``x (b, t, ...)`` over valid frames of each item."""
    if lengths is None:
        return x.mean(dim=1)
    mask = torch.arange(x.shape[1], device=x.device)[None] < lengths.to(x.device)[:, None]
    mask = mask.view(*mask.shape, *([1] * (x.ndim - 2))).to(x.dtype)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


class SpeakerEncoder(nn.Module):
    """Speaker embeddings from an SSL encoder: ``(batch, samples)`` -> ``(batch, dim)``, unit norm.

    The embedding is the time average of the encoder's last hidden states (or of ``layer``),
    through ``head`` (a linear layer) when the weights hold ``head.weight``.
    """

    def __init__(self, arch: str = "wavlm_base", head_dim: int | None = None, layer: int = -1):
        super().__init__()
        self.arch = arch
        self.ssl = build_ssl(arch)
        self.layer = layer
        self.head = nn.Linear(ssl_width(self.ssl), head_dim) if head_dim else None

    def forward(self, wave: Tensor) -> Tensor:
        hidden, _ = self.ssl.extract_features(wave)
        pooled = hidden[self.layer].mean(dim=1)
        if self.head is not None:
            pooled = self.head(pooled)
        return F.normalize(pooled, dim=-1)

    @classmethod
    def from_weights(
        cls, arch: str, path: str | os.PathLike[str] | None, layer: int = -1
    ) -> SpeakerEncoder:
        head_dim = None
        if path is not None:
            shapes = _tensor_shapes(check_weights_path(path, "speaker model"))
            if "head.weight" in shapes:
                head_dim = shapes["head.weight"][0]
        model = cls(arch, head_dim=head_dim, layer=layer)
        if path is not None:
            load_weights(model, path, what=f"speaker model ({arch})")
        return model.eval().requires_grad_(False)


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes of the tensors in a safetensors file, without loading them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


@torch.inference_mode()
def speaker_similarity(
    encoder: SpeakerEncoder, reference: Tensor, reconstruction: Tensor, sample_rate: int
) -> Tensor:
    """Cosine similarity of speaker embeddings, per item: ``(batch, channels, n)`` pair ->
    ``(batch,)`` in [-1, 1] (higher is better)."""
    device = _device_of(encoder)
    a = encoder(to_model_input(reference, sample_rate).to(device))
    b = encoder(to_model_input(reconstruction, sample_rate).to(device))
    return (a * b).sum(dim=-1).float().cpu()


@torch.inference_mode()
def utmos(model: UTMOS22Strong, audio: Tensor, sample_rate: int) -> Tensor:
    """Predicted MOS of each item of ``audio (batch, channels, n)`` -> ``(batch,)``."""
    return model(to_model_input(audio, sample_rate).to(_device_of(model))).float().cpu()


class CTCRecognizer(nn.Module):
    """Character CTC speech recogniser: an SSL encoder with a linear head (torchaudio's
    ``aux`` layer) and greedy decoding.

    Args:
        arch: SSL architecture name (:data:`SSL_ARCHITECTURES`).
        labels: output symbols; ``labels[blank]`` is the CTC blank and ``word_separator``
            marks word boundaries.
    """

    def __init__(
        self,
        arch: str = "wav2vec2_base",
        labels: Sequence[str] = ENGLISH_CTC_LABELS,
        blank: int = 0,
        word_separator: str = "|",
    ):
        super().__init__()
        self.arch = arch
        self.labels = tuple(labels)
        self.blank = blank
        self.word_separator = word_separator
        self.model = build_ssl(arch, aux_num_out=len(self.labels))

    def forward(self, wave: Tensor) -> Tensor:
        """``(batch, samples)`` -> log-probabilities ``(batch, frames, labels)``."""
        logits, _ = self.model(wave)
        return logits.log_softmax(dim=-1)

    def greedy_decode(self, log_probs: Tensor) -> list[str]:
        """Best path: argmax per frame, merge repeats, drop blanks, separators -> spaces."""
        texts = []
        for path in log_probs.argmax(dim=-1).cpu():
            merged = torch.unique_consecutive(path).tolist()
            chars = [self.labels[i] for i in merged if i != self.blank]
            text = "".join(chars).replace(self.word_separator, " ")
            texts.append(" ".join(text.split()))
        return texts

    @torch.inference_mode()
    def transcribe(self, audio: Tensor, sample_rate: int) -> list[str]:
        """``(batch, channels, n)`` -> one transcript per item."""
        wave = to_model_input(audio, sample_rate).to(_device_of(self))
        return self.greedy_decode(self(wave))

    @classmethod
    def from_weights(
        cls, arch: str, path: str | os.PathLike[str] | None, labels: Sequence[str] | None = None
    ) -> CTCRecognizer:
        model = cls(arch, labels=labels or ENGLISH_CTC_LABELS)
        if path is not None:
            load_weights(model, path, what=f"ASR model ({arch})")
        return model.eval().requires_grad_(False)


_NOT_WORD = re.compile(r"[^\w\s']")


def normalize_transcript(text: str) -> list[str]:
    """Words for WER: upper case, punctuation other than apostrophes removed."""
    return _NOT_WORD.sub(" ", text.upper()).split()


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """``(word-level Levenshtein distance, reference words)`` after
    :func:`normalize_transcript` (``torchaudio.functional.edit_distance``): the two sums a
    corpus WER divides."""
    hyp, ref = normalize_transcript(hypothesis), normalize_transcript(reference)
    return int(torchaudio.functional.edit_distance(ref, hyp)), len(ref)


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word-level Levenshtein distance / reference words of one utterance.

    An empty reference gives 0 when the hypothesis is empty too, else 1 per inserted word.
    A corpus WER is the sum of :func:`word_errors` over the sum of reference words, not the
    mean of this (which over-weights short utterances).
    """
    errors, words = word_errors(hypothesis, reference)
    return errors / max(words, 1)


__all__ = [
    "ENGLISH_CTC_LABELS",
    "MODEL_SAMPLE_RATE",
    "SSL_ARCHITECTURES",
    "CTCRecognizer",
    "SpeakerEncoder",
    "UTMOS22Strong",
    "build_ssl",
    "normalize_transcript",
    "speaker_similarity",
    "ssl_width",
    "to_model_input",
    "utmos",
    "word_error_rate",
    "word_errors",
]
