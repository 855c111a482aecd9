"""WavTokenizer: one codebook of 4096 codes at 40 or 75 tokens per second of 24 kHz audio
(Ji et al. 2024, https://arxiv.org/abs/2408.16532).

Encoder: EnCodec's SEANet (non-causal, reflect padding, 2-layer LSTM, 512-d latent;
https://arxiv.org/abs/2210.13438). Quantizer: one EMA vector quantizer (k-means init,
dead-code revival). Decoder: a Vocos backbone at the token rate (conv embedding, an attention
stage of residual blocks around one global self-attention layer, 12 ConvNeXt blocks with
AdaLayerNorm) and an inverse-STFT head with "same" padding (Siuzdak 2023,
https://arxiv.org/abs/2306.00814); see :mod:`anytok.nn.vocos`.

Sizes follow the official configurations
(``configs/wavtokenizer_smalldata_frame{40,75}_3s_nq1_code4096_dim512_kmeans200_attn.yaml``
in https://github.com/jishengpeng/WavTokenizer), so :func:`convert_wavtokenizer_state_dict`
turns an official checkpoint's ``state_dict`` into this model's.

Padding guarantee (non-causal): the encoder's convolutions look ahead a few frames and its
LSTM runs forward only, so right padding (batching items of different lengths) changes only
the last few codes of the shorter items. The decoder's global attention and GroupNorm see
every frame, so :meth:`WavTokenizer.decode` decodes items of different valid lengths one by
one: each item's audio is what it would be alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from anytok.codecs.audio.encodec import convert_codebook_entry
from anytok.codecs.base import (
    AudioTokenizer,
    build_quantizer,
)
from anytok.nn.encodec_seanet import (
    EncodecSEANetEncoder,
    convert_encodec_seanet_keys,
    convert_transformers_seanet_keys,
)
from anytok.nn.vocos import ISTFTHead, VocosBackbone
from anytok.registry import PretrainedCfg, register, register_importer

#: WavTokenizer's quantizer: EnCodec's EMA codebook (decay 0.99, k-means init with 200
#: iterations, codes used fewer than 2 times per batch revived) with one level.
DEFAULT_QUANTIZER: dict[str, Any] = {
    "name": "vq",
    "codebook_size": 4096,
    "decay": 0.99,
    "kmeans_init": True,
    "kmeans_iters": 200,
    "threshold_ema_dead_code": 2.0,
    "commitment_weight": 1.0,
}


class WavTokenizer(AudioTokenizer):
    """Waveform ``(b, 1, samples)`` -> codes ``(b, 1, ceil(samples / hop))`` -> waveform.

    Args:
        sample_rate: input sample rate in Hz.
        channels: audio channels (1: the iSTFT head is mono).
        ratios: encoder strides in the order applied (hop = their product; WavTokenizer's
            configs list them reversed, EnCodec-style: ``[8, 5, 4, 2]`` is ``(2, 4, 5, 8)``).
        n_filters: first encoder conv width (doubles per stride).
        dimension: latent channels (the codebook's vector size).
        n_residual_layers: encoder residual blocks per stride.
        lstm_layers: encoder LSTM layers.
        backbone_dim: Vocos backbone channels.
        backbone_intermediate_dim: ConvNeXt MLP width.
        backbone_layers: ConvNeXt blocks.
        adanorm_num_embeddings: AdaLayerNorm condition ids (WavTokenizer keeps Vocos's 4 and
            always uses id 0); ``None`` for plain LayerNorm.
        attention: WavTokenizer's attention stage in the backbone.
        dropout: dropout in the attention stage (training only).
        n_fft: iSTFT size (default ``4 * hop``, as in both official configs). The iSTFT uses
            Vocos's "same" padding: exactly ``hop`` samples per token.
        quantizer: ``{"name": ..., **kwargs}`` for :func:`anytok.quantizers.build`.
    """

    # The reference encodes raw audio: its convolutions reflect-pad a ragged last window
    # (zero-padding to whole hops changed the last codes, and all codes of short clips).
    encodes_exact_lengths = True

    causal = False

    def __init__(
        self,
        sample_rate: int = 24000,
        channels: int = 1,
        ratios: tuple[int, ...] | list[int] = (2, 4, 5, 8),
        n_filters: int = 32,
        dimension: int = 512,
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        backbone_dim: int = 768,
        backbone_intermediate_dim: int = 2304,
        backbone_layers: int = 12,
        adanorm_num_embeddings: int | None = 4,
        attention: bool = True,
        dropout: float = 0.1,
        n_fft: int | None = None,
        quantizer: dict[str, Any] | None = None,
    ):
        super().__init__()
        if channels != 1:
            raise ValueError(
                f"WavTokenizer: the iSTFT head is mono; channels must be 1, got {channels}"
            )
        ratios = tuple(ratios)
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(ratios)
        self.encoder = EncodecSEANetEncoder(
            channels=channels,
            dimension=dimension,
            n_filters=n_filters,
            ratios=ratios,
            n_residual_layers=n_residual_layers,
            lstm_layers=lstm_layers,
            causal=False,
            pad_mode="reflect",
            true_skip=False,
        )
        self.quantizer = build_quantizer(quantizer or dict(DEFAULT_QUANTIZER), dimension)
        self.backbone = VocosBackbone(
            input_channels=dimension,
            dim=backbone_dim,
            intermediate_dim=backbone_intermediate_dim,
            num_layers=backbone_layers,
            adanorm_num_embeddings=adanorm_num_embeddings,
            attention=attention,
            dropout=dropout,
        )
        self.head = ISTFTHead(backbone_dim, n_fft or 4 * self.hop_length, self.hop_length, "same")

    def decode_latent(self, latent: Tensor) -> Tensor:
        """Quantized latent ``(b, dimension, t)`` -> audio ``(b, 1, t * hop)``."""
        return self.head(self.backbone(latent, condition_id=0)).unsqueeze(1)


# --------------------------------------------------------------------------- importers


def convert_vocos_backbone_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Vocos / WavTokenizer decoder weights -> this model's ``backbone.*`` and ``head.*``.

    Accepts the ``backbone.*`` and ``head.*`` entries of a ``vocos.Vocos`` (or WavTokenizer)
    state dict; other entries are ignored. Names already match (``anytok.nn.vocos`` mirrors
    them); the iSTFT window is dropped (rebuilt at construction).
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(("backbone.", "head.")) or key == "head.istft.window":
            continue
        out[key] = value
    return out


def _from_transformers_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``transformers``' ``WavTokenizerModel`` keys -> :class:`WavTokenizer`'s: the SEANet
    stack ``encoder_model.encoder.layers.*`` by
    :func:`~anytok.nn.encodec_seanet.convert_transformers_seanet_keys`, the codebook
    ``encoder_model.quantizer.codebook.*``, ``head.linear`` -> ``head.out``; the backbone's
    names are the same."""
    layers = "encoder_model.encoder.layers."
    out = convert_transformers_seanet_keys(state_dict, layers, "encoder.model.", decoder=False)
    codebook = "encoder_model.quantizer.codebook."
    for key, value in state_dict.items():
        if key.startswith(layers):
            continue
        if key.startswith(codebook):
            name, value = convert_codebook_entry(key[len(codebook) :], value, key)
            out[f"quantizer.{name}"] = value
        elif key.startswith("head.linear."):
            out["head.out." + key[len("head.linear.") :]] = value
        elif key.startswith(("backbone.", "head.")):
            out[key] = value
        else:
            raise KeyError(f"convert_wavtokenizer_state_dict: unexpected key {key!r}")
    return out


def convert_wavtokenizer_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official WavTokenizer checkpoint's ``state_dict``, or a ``transformers``
    ``WavTokenizerModel``'s (e.g. ``swiss-ai/wavtokenizer-large-unify-40token``'s
    ``model.safetensors``; its keys start with ``encoder_model.``) -> :class:`WavTokenizer`'s.

    The ``transformers`` layout is renamed by :func:`_from_transformers_layout`. The official
    one: maps ``feature_extractor.encodec.encoder.*`` (EnCodec SEANet, old-style weight norm) to
    ``encoder.*`` by :func:`~anytok.nn.encodec_seanet.convert_encodec_seanet_keys`, the codebook ``feature_extractor.encodec.quantizer.vq.layers.0._codebook.*``
    to ``quantizer.*`` (EMA buffers included), and ``backbone.*`` / ``head.*`` by
    :func:`convert_vocos_backbone_state_dict`. Unused parts (EnCodec's decoder, the
    discriminators, loss modules) are dropped.

    The official files are pickled Lightning checkpoints: read their ``state_dict`` only if
    you trust them, convert it, then :func:`anytok.checkpoint.save_checkpoint` the model as
    safetensors.
    """
    if any(k.startswith("encoder_model.") for k in state_dict):
        return _from_transformers_layout(state_dict)
    encoder_prefix = "feature_extractor.encodec.encoder."
    codebook_prefix = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
    if any(k.startswith("feature_extractor.encodec.quantizer.vq.layers.1.") for k in state_dict):
        raise ValueError(
            "convert_wavtokenizer_state_dict: the checkpoint has more than one quantizer level; "
            "WavTokenizer has one"
        )
    encoder = {
        k[len(encoder_prefix) :]: v for k, v in state_dict.items() if k.startswith(encoder_prefix)
    }
    out = {f"encoder.{k}": v for k, v in convert_encodec_seanet_keys(encoder).items()}
    for key, value in state_dict.items():
        if key.startswith(codebook_prefix):
            name, value = convert_codebook_entry(key[len(codebook_prefix) :], value, key)
            out[f"quantizer.{name}"] = value
    out.update(convert_vocos_backbone_state_dict(state_dict))
    return out


# --------------------------------------------------------------------------- registry

_PAPER = (
    "https://arxiv.org/abs/2408.16532 (WavTokenizer) + https://arxiv.org/abs/2306.00814 (Vocos)"
)
_COMMON: dict[str, Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "n_filters": 32,
    "dimension": 512,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "backbone_dim": 768,
    "backbone_intermediate_dim": 2304,
    "backbone_layers": 12,
    "adanorm_num_embeddings": 4,
    "attention": True,
    "quantizer": DEFAULT_QUANTIZER,
}
_TINY: dict[str, Any] = {
    "ratios": [2, 4],
    "n_fft": 32,
    "n_filters": 4,
    "dimension": 8,
    "lstm_layers": 1,
    "backbone_dim": 64,  # GroupNorm(32) in the attention stage: 2 channels a group, so
    # one frame still has 2 values a group (32 channels failed on 1-frame inputs)
    "backbone_intermediate_dim": 64,
    "backbone_layers": 1,
    "quantizer": {**DEFAULT_QUANTIZER, "codebook_size": 32, "kmeans_iters": 2},
}

register_importer("wavtokenizer", convert_wavtokenizer_state_dict)

register(
    "wavtokenizer_24khz_40hz",
    modality="audio",
    description="WavTokenizer: one 4096-code VQ, 24 kHz mono, 40 tokens/s (0.48 kbps); "
    "SEANet encoder, Vocos + attention decoder with iSTFT head",
    paper=_PAPER,
    default_config={**_COMMON, "ratios": [4, 5, 5, 6], "n_fft": 2400},
    tiny_config=_TINY,
    pretrained=[
        PretrainedCfg(
            "large_unify",
            hf_hub_id="swiss-ai/wavtokenizer-large-unify-40token",
            description="the WavTokenizer authors' large model for speech, music and audio "
            "(40 tokens/s), as converted for transformers; converted again on load",
            importer="wavtokenizer",
        )
    ],
    builder=WavTokenizer,
)

register(
    "wavtokenizer_24khz_75hz",
    modality="audio",
    description="WavTokenizer: one 4096-code VQ, 24 kHz mono, 75 tokens/s (0.9 kbps); "
    "SEANet encoder, Vocos + attention decoder with iSTFT head",
    paper=_PAPER,
    default_config={**_COMMON, "ratios": [2, 4, 5, 8], "n_fft": 1280},
    tiny_config=_TINY,
    builder=WavTokenizer,
)

__all__ = [
    "WavTokenizer",
    "convert_vocos_backbone_state_dict",
    "convert_wavtokenizer_state_dict",
]
