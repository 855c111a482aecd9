"""Mimi: a causal SEANet codec with transformers at its bottleneck and a split residual VQ
whose first level is distilled from a self-supervised speech model (Défossez et al. 2024,
"Moshi: a speech-text foundation model for real-time dialogue",
https://arxiv.org/abs/2410.00037; reference code https://github.com/kyutai-labs/moshi and
``transformers``' ``MimiModel``). The audio tokenizer of Moshi and of many speech LMs since.

``mimi`` is registered with the published sizes, so the official weights
(``kyutai/mimi``'s ``model.safetensors``) convert with :func:`convert_mimi_state_dict`;
``anytok.load("mimi.kyutai")`` fetches that file (or finds it in the Hugging Face cache)
and converts it:

- 24 kHz mono; SEANet strides 4, 5, 6, 8 (hop 960, 25 Hz), 64 filters, no weight norm,
  identity shortcuts, zero padding, latent 512;
- an 8-layer causal transformer (512 channels, 8 heads, MLP 2048, GELU, layer scale 0.01,
  rotary positions, a 250-frame = 10 s attention window) after the encoder and before the
  decoder;
- a learned stride-2 conv to 12.5 Hz (replicate padding) and a depthwise transposed conv
  back;
- :class:`~anytok.quantizers.SplitResidualVQ`: 1 semantic + 31 acoustic levels of 2048
  codes in a 256-d codebook space, behind bias-free projections.

Bitrate: 12.5 Hz x 11 bits per level = 137.5 bps per level; ``encode`` uses 8 levels by
default (1.1 kbps, what Moshi models), ``encode(audio, n_levels=k)`` any ``1 <= k <= 32``.

Streaming: every layer is causal (convs keep their buffers, the transformers a key / value
cache of 249 frames), so :meth:`stream_encoder` / :meth:`stream_decoder` give one pass's
codes and samples chunk by chunk, a token every 80 ms; :meth:`encode_long` streams too.

Differences from the reference, by design:

- Audio is right-padded with zeros to a whole number of 80 ms frames before encoding, as
  every anytok audio tokenizer does (``transformers`` lets the convs pad each layer's
  output instead), so the *last* code frame of a length that is not a multiple of 1920
  samples may differ; all other frames are identical.
- Training follows the paper's objective where the loop has the parts (see
  ``recipes/audio/mimi.yaml``): the semantic level is distilled from a local WavLM (or any
  ``transformers`` speech model) through :class:`~anytok.regularizers.SemanticRegularizer`,
  which compares on the teacher's frame grid with a small MLP projector (Moshi: a linear
  projection, compared at 12.5 Hz); quantization is applied to a random half of the items
  of a batch (``quantize_rate``), and quantizer dropout draws the acoustic levels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from anytok.codecs.base import ResidualAudioTokenizer, TokenizerOutput, build_quantizer
from anytok.codecs.long_audio import mask_past_lengths
from anytok.nn.causal_transformer import CausalTransformer
from anytok.nn.conv import Conv1d, ConvTranspose1d
from anytok.nn.encodec_seanet import (
    EncodecSEANetDecoder,
    EncodecSEANetEncoder,
    convert_transformers_seanet_keys,
)
from anytok.quantizers.vq import smoothed_cluster_size
from anytok.registry import PretrainedCfg, register, register_importer
from anytok.regularizers import TrainingOptions

#: Mimi's codebooks: EMA (decay 0.99), codes used fewer than 2 times per batch revived from
#: the batch, k-means initialisation on the first batch, commitment weight 1.
DEFAULT_QUANTIZER: dict[str, Any] = {
    "decay": 0.99,
    "kmeans_init": True,
    "kmeans_iters": 10,
    "threshold_ema_dead_code": 2.0,
    "commitment_weight": 1.0,
}


class MimiEncoder(nn.Module):
    """SEANet encoder, causal transformer, stride conv: ``(b, c, s) -> (b, dim, s / hop)``."""

    def __init__(self, seanet: nn.Module, transformer: nn.Module, downsample: nn.Module):
        super().__init__()
        self.seanet = seanet
        self.transformer = transformer
        self.downsample = downsample

    def forward(self, audio: Tensor) -> Tensor:
        return self.downsample(self.transformer(self.seanet(audio)))


class MimiDecoder(nn.Module):
    """Transposed stride conv, causal transformer, SEANet decoder:
    ``(b, dim, t) -> (b, c, t * hop)``."""

    def __init__(self, upsample: nn.Module, transformer: nn.Module, seanet: nn.Module):
        super().__init__()
        self.upsample = upsample
        self.transformer = transformer
        self.seanet = seanet

    def forward(self, latent: Tensor) -> Tensor:
        return self.seanet(self.transformer(self.upsample(latent)))


class Mimi(ResidualAudioTokenizer):
    """Mimi: waveform ``(b, channels, samples)`` -> codes ``(b, levels, ceil(samples / hop))``.

    Args:
        sample_rate / channels: the audio it takes.
        n_filters: first conv width (doubles at every downsampling).
        ratios: SEANet strides in decoder order (Mimi: 8, 6, 5, 4).
        dimension: latent channels (SEANet output, transformer width).
        n_residual_layers / kernel_size / last_kernel_size / residual_kernel_size /
            dilation_base / compress: SEANet's block settings.
        transformer_layers / transformer_heads / transformer_hidden: each transformer's
            depth, heads and MLP width (0 layers: none).
        context: attention window in frames of the SEANet rate (Mimi: 250 = 10 s).
        layer_scale: initial layer scale of the transformers.
        rope_base: rotary base period.
        latent_stride: stride of the conv from the SEANet rate to the token rate (1: none).
        n_q: codebooks in all (semantic first).
        num_semantic: semantic codebooks.
        bins: codes per codebook.
        codebook_dim: channels of the codebook space.
        n_levels: codebooks ``encode`` uses when given none (Moshi: 8).
        quantize_rate: in training, the fraction of items whose latent is quantized (the
            others reach the decoder unquantized; Moshi: 0.5).
        quantize_dropout: in training, draw the number of acoustic levels per batch.
        quantizer: overrides of :data:`DEFAULT_QUANTIZER` (``VectorQuantize`` arguments).
        semantic_teacher: local ``transformers`` speech model (WavLM, HuBERT ...) the
            semantic level is distilled from (``None``: no distillation).
        semantic_weight: weight of that loss.
        gradient_checkpointing: recompute transformer layers in backward.
    """

    causal = True

    def __init__(
        self,
        sample_rate: int = 24000,
        channels: int = 1,
        n_filters: int = 64,
        ratios: Sequence[int] = (8, 6, 5, 4),
        dimension: int = 512,
        n_residual_layers: int = 1,
        kernel_size: int = 7,
        last_kernel_size: int = 3,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        compress: int = 2,
        transformer_layers: int = 8,
        transformer_heads: int = 8,
        transformer_hidden: int = 2048,
        context: int | None = 250,
        layer_scale: float | None = 0.01,
        rope_base: float = 10000.0,
        latent_stride: int = 2,
        n_q: int = 32,
        num_semantic: int = 1,
        bins: int = 2048,
        codebook_dim: int = 256,
        n_levels: int | None = 8,
        quantize_rate: float = 0.5,
        quantize_dropout: bool = True,
        quantizer: Mapping[str, Any] | None = None,
        semantic_teacher: str | None = None,
        semantic_weight: float = 1.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        ratios = tuple(int(r) for r in ratios)
        if latent_stride < 1:
            raise ValueError(f"Mimi: latent_stride must be >= 1, got {latent_stride}")
        if not 0.0 <= quantize_rate <= 1.0:
            raise ValueError(f"Mimi: quantize_rate must be in [0, 1], got {quantize_rate}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(ratios) * latent_stride
        self.latent_dim = dimension
        self.quantize_rate = float(quantize_rate)
        seanet = dict(
            channels=channels,
            dimension=dimension,
            n_filters=n_filters,
            n_residual_layers=n_residual_layers,
            kernel_size=kernel_size,
            last_kernel_size=last_kernel_size,
            residual_kernel_size=residual_kernel_size,
            dilation_base=dilation_base,
            compress=compress,
            true_skip=True,
            lstm_layers=0,
            causal=True,
            norm="none",
            pad_mode="constant",
        )

        def transformer() -> nn.Module:
            if not transformer_layers:
                return nn.Identity()
            return CausalTransformer(
                dimension,
                transformer_layers,
                transformer_heads,
                transformer_hidden,
                context,
                layer_scale=layer_scale,
                rope_base=rope_base,
                gradient_checkpointing=gradient_checkpointing,
            )

        resample = dict(causal=True, use_weight_norm=False, bias=False)
        downsample: nn.Module = nn.Identity()
        upsample: nn.Module = nn.Identity()
        if latent_stride > 1:
            downsample = Conv1d(
                dimension,
                dimension,
                2 * latent_stride,
                latent_stride,
                pad_mode="replicate",
                **resample,
            )
            upsample = ConvTranspose1d(
                dimension,
                dimension,
                2 * latent_stride,
                latent_stride,
                groups=dimension,
                **resample,
            )
        self.encoder = MimiEncoder(
            EncodecSEANetEncoder(**{**seanet, "ratios": ratios[::-1]}), transformer(), downsample
        )
        vq = {**DEFAULT_QUANTIZER, **(quantizer or {})}
        self.quantizer = build_quantizer(
            {
                "name": "split_rvq",
                "num_quantizers": n_q,
                "codebook_size": bins,
                "num_semantic": num_semantic,
                "codebook_dim": codebook_dim,
                "quantize_dropout": quantize_dropout,
                **vq,
            },
            dimension,
        )
        self.decoder = MimiDecoder(
            upsample, transformer(), EncodecSEANetDecoder(**{**seanet, "ratios": ratios})
        )
        if n_levels is not None and not 1 <= n_levels <= n_q:
            raise ValueError(f"Mimi: n_levels must be in [1, {n_q}], got {n_levels}")
        self.default_levels = n_q if n_levels is None else int(n_levels)
        self.options = TrainingOptions(
            dimension, semantic_teacher, semantic_weight, modality="audio"
        )
        if self.options.semantic is not None:
            self.options.semantic.teacher.input_rate = sample_rate

    # ----------------------------------------------------------------- bitrate

    @property
    def kbps_per_level(self) -> float:
        """Bitrate of one level: ``frame_rate * log2(bins) / 1000``."""
        return self.frame_rate * math.log2(self.quantizer.codebook_sizes[0]) / 1000

    # ----------------------------------------------------------------- contract

    def _latent(self, audio: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        # Zeros past an item's end (pad_input) change none of its frames: causal throughout.
        padded, token_lengths = self.pad_input(audio, lengths)
        return self.encoder(padded), token_lengths

    def _decode_latent(self, latent: Tensor, lengths: Tensor | None) -> Tensor:
        audio = self.decoder(latent)
        return audio if lengths is None else mask_past_lengths(audio, lengths * self.hop_length)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``audio (b, c, s)`` -> reconstruction ``(b, c, s)`` and losses
        (``quantizer``; ``semantic`` with a teacher)."""
        latent, token_lengths = self._latent(audio, lengths)
        if self.training:
            levels = self.quantizer.training_levels(latent.device)
        else:
            levels = self.default_levels
        out, semantic = self.quantizer.forward_split(latent.movedim(1, -1), n_levels=levels)
        quantized = out.quantized.movedim(-1, 1)
        if self.training and self.quantize_rate < 1.0:
            keep = torch.rand(latent.shape[0], 1, 1, device=latent.device) < self.quantize_rate
            quantized = torch.where(keep, quantized, latent)
        losses = {"quantizer": out.loss}
        losses.update(self.options.losses(semantic, (semantic.shape[1],), audio))
        return self.leveled_output(audio, latent, quantized, out, levels, token_lengths, losses)


# --------------------------------------------------------------------------- importer

#: ``transformers`` >= 5 nests Mimi's halves (``MimiModel.encoder.encoder_seanet`` ...);
#: the official checkpoint keeps the flat layout. Both are read: new prefix -> flat prefix.
_NESTED_PREFIXES = {
    "encoder.encoder_seanet.": "encoder.",
    "encoder.encoder_transformer.": "encoder_transformer.",
    "encoder.downsample.": "downsample.",
    "decoder.upsample.": "upsample.",
    "decoder.decoder_transformer.": "decoder_transformer.",
    "decoder.decoder_seanet.": "decoder.",
}
_FLAT_PREFIXES = {
    "encoder_transformer.": "encoder.transformer.",
    "downsample.": "encoder.downsample.",
    "upsample.": "decoder.upsample.",
    "decoder_transformer.": "decoder.transformer.",
}
_SPLIT = {
    "semantic_residual_vector_quantizer": "semantic",
    "acoustic_residual_vector_quantizer": "acoustic",
}


def _flat_key(key: str) -> str:
    for nested, flat in _NESTED_PREFIXES.items():
        if key.startswith(nested):
            return flat + key[len(nested) :]
    return key


def convert_mimi_state_dict(
    reference_state: Mapping[str, Tensor], *, eps: float = 1e-5
) -> dict[str, Tensor]:
    """A Mimi state dict (``kyutai/mimi``'s ``model.safetensors``, or a ``transformers``
    ``MimiModel``'s) -> :class:`Mimi`'s.

    - SEANet convs ``{encoder,decoder}.layers.i[.block.j].conv.*`` ->
      ``{encoder,decoder}.seanet.model.i[.block.j].conv.conv.*`` (transposed convs, every
      decoder conv between the first and the last: ``.convtr.conv.*``);
    - transformers, stride convs: prefix renames;
    - quantizer: ``{semantic,acoustic}_residual_vector_quantizer.{input,output}_proj``
      (1x1 convs) -> ``{semantic,acoustic}_{in,out}`` linear weights; each codebook's
      ``embed_sum / clamp(cluster_usage, eps)`` becomes ``embedding``, its usage the EMA
      count, and ``ema_embedding_sum`` is set from both as :class:`VectorQuantize` keeps it.

    Load the result with ``load_state_dict(..., strict=True)`` into
    ``anytok.create_model("mimi")`` (or a model of the checkpoint's configuration).
    """
    state = {_flat_key(k): v for k, v in reference_state.items()}
    out: dict[str, Tensor] = {}
    for half in ("encoder", "decoder"):
        out.update(
            convert_transformers_seanet_keys(
                state, f"{half}.layers.", f"{half}.seanet.model.", decoder=half == "decoder"
            )
        )
    codebooks: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(("encoder.layers.", "decoder.layers.")):
            continue
        if match := re.fullmatch(r"quantizer\.(\w+)\.(input_proj|output_proj)\.weight", key):
            part, proj = match.groups()
            side = "in" if proj == "input_proj" else "out"
            out[f"quantizer.{_SPLIT[part]}_{side}.weight"] = value[..., 0]
            continue
        if match := re.fullmatch(r"quantizer\.(\w+)\.layers\.(\d+)\.codebook\.(\w+)", key):
            part, level, name = match.groups()
            codebooks.setdefault(f"quantizer.{_SPLIT[part]}.layers.{level}", {})[name] = value
            continue
        for flat, ours in _FLAT_PREFIXES.items():
            if key.startswith(flat):
                out[ours + key[len(flat) :]] = value
                break
        else:
            raise KeyError(f"convert_mimi_state_dict: unexpected key {key!r}")
    for prefix, book in codebooks.items():
        missing = {"embed_sum", "cluster_usage"} - set(book)
        if missing:
            raise KeyError(f"convert_mimi_state_dict: {prefix} lacks {sorted(missing)}")
        usage = book["cluster_usage"].float()
        embedding = book["embed_sum"].float() / usage.clamp(min=eps)[:, None]
        out[f"{prefix}.embedding"] = embedding
        out[f"{prefix}.ema_embedding_sum"] = embedding * smoothed_cluster_size(usage, eps)[:, None]
        out[f"{prefix}.ema_cluster_size"] = usage
        initialized = book.get("initialized", torch.ones(1))
        out[f"{prefix}.initted"] = (initialized.reshape(()) > 0).clone()
    return out


# --------------------------------------------------------------------------- registry

_PAPER = "https://arxiv.org/abs/2410.00037"

register_importer("mimi", convert_mimi_state_dict)

register(
    "mimi",
    modality="audio",
    description="Mimi (Moshi's codec) 24 kHz mono, causal with transformers, 12.5 Hz x up to 32 "
    "levels of 2048 (1 semantic; 8 levels = 1.1 kbps by default)",
    paper=_PAPER,
    default_config={
        "sample_rate": 24000,
        "channels": 1,
        "n_filters": 64,
        "ratios": [8, 6, 5, 4],
        "dimension": 512,
        "transformer_layers": 8,
        "transformer_heads": 8,
        "transformer_hidden": 2048,
        "context": 250,
        "latent_stride": 2,
        "n_q": 32,
        "num_semantic": 1,
        "bins": 2048,
        "codebook_dim": 256,
        "n_levels": 8,
    },
    tiny_config={
        "n_filters": 4,
        "ratios": [4, 2],
        "dimension": 16,
        "transformer_layers": 1,
        "transformer_heads": 2,
        "transformer_hidden": 32,
        "context": 8,
        "n_q": 4,
        "bins": 16,
        "codebook_dim": 8,
        "n_levels": 4,
        "quantizer": {"kmeans_iters": 2},
    },
    pretrained=[
        PretrainedCfg(
            "kyutai",
            hf_hub_id="kyutai/mimi",
            description="Kyutai's released Mimi (Moshi's codec), trained on speech; "
            "converted from the Hub file on load",
            license="CC-BY-4.0",
            importer="mimi",
        )
    ],
    builder=Mimi,
)

__all__ = ["DEFAULT_QUANTIZER", "Mimi", "MimiDecoder", "MimiEncoder", "convert_mimi_state_dict"]
