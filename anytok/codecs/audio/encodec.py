"""EnCodec: SEANet encoder / decoder with residual vector quantization and a bitrate chosen at
encode time (Défossez et al. 2022, "High Fidelity Neural Audio Compression",
https://arxiv.org/abs/2210.13438; reference code https://github.com/facebookresearch/encodec).

Two published models, registered with their exact sizes so official weights convert with
:func:`convert_encodec_state_dict`:

- ``encodec_24khz``: mono, causal (streamable), weight-normalised convs, 75 Hz, 32 codebooks
  of 1024 codes; 1.5 / 3 / 6 / 12 / 24 kbps = 2 / 4 / 8 / 16 / 32 levels.
- ``encodec_48khz``: stereo, non-causal, convs followed by GroupNorm over time
  ("time_group_norm"), 150 Hz, 16 codebooks; 3 / 6 / 12 / 24 kbps = 2 / 4 / 8 / 16 levels.

Bitrate: ``encode(audio, n_levels=k)`` or ``encode(audio, bandwidth=6.0)`` (kbps, EnCodec's
rule ``floor(bandwidth / kbps_per_level)``); the returned :class:`Tokens`' spec lists only
the levels used, and ``decode`` takes any number of leading levels. Training draws one of
``target_bandwidths`` per batch (the same on every rank), as EnCodec does.

Differences from the reference, by design:

- The 48 kHz model's reference ``encode`` cuts audio into 1 s segments with 1 % overlap and
  divides each by its RMS, returning the scale next to the codes. :class:`Tokens` carries
  codes only, so anytok encodes in one pass without that normalisation (the module-level
  parity is exact; see ``tests/test_audio_encodec_dac.py``); long files go through
  :meth:`encode_long`.
- A batch of different lengths is encoded per distinct length (eval mode), so every item
  gets the tokens it gets alone; EnCodec pads the batch.

Streaming (``encodec_24khz``): :meth:`stream_encoder` / :meth:`stream_decoder` give one
pass's codes and samples chunk by chunk (:mod:`anytok.codecs.long_audio`). The reflect
padding of the first samples means the last encoder conv (kernel 7) and the first decoder
conv wait for 7 frames (93 ms) before their first output; after that every hop of audio
gives one frame of codes.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anytok.codecs.base import ResidualAudioTokenizer, TokenizerOutput, build_quantizer
from anytok.nn.encodec_seanet import (
    NORMS,
    EncodecSEANetDecoder,
    EncodecSEANetEncoder,
    convert_encodec_seanet_keys,
    convert_transformers_seanet_keys,
)
from anytok.quantizers.distributed import shared_randint
from anytok.registry import PretrainedCfg, register, register_importer
from anytok.tokens import Tokens

#: EnCodec's quantizer: EMA codebooks (decay 0.99), k-means initialisation on the first batch
#: (50 iterations), codes used fewer than 2 times revived, commitment weight 1.
DEFAULT_QUANTIZER: dict[str, Any] = {
    "decay": 0.99,
    "kmeans_init": True,
    "kmeans_iters": 50,
    "threshold_ema_dead_code": 2.0,
    "commitment_weight": 1.0,
}


class EnCodec(ResidualAudioTokenizer):
    """EnCodec: waveform ``(b, channels, samples)`` -> codes ``(b, levels, ceil(samples / hop))``.

    Args:
        sample_rate / channels: the audio it takes.
        n_filters: first conv width (doubles at every downsampling).
        ratios: strides in EnCodec's (decoder) order; their product is the hop.
        dimension: latent channels.
        n_residual_layers / kernel_size / last_kernel_size / residual_kernel_size /
            dilation_base / compress / true_skip: SEANet's block settings (EnCodec's names).
        lstm_layers: LSTM layers at the bottleneck of encoder and decoder.
        causal: causal convs (streamable) or centred.
        norm: ``"weight_norm"``, ``"time_group_norm"`` or ``"none"``.
        pad_mode: padding of every conv (EnCodec: ``"reflect"``).
        n_q: residual codebooks.
        bins: codes per codebook.
        target_bandwidths: kbps the model is trained for (training draws one per batch).
        bandwidth: kbps ``encode`` uses when given none (``None``: every level).
        train_random_bandwidth: draw the bandwidth per training batch (else every level).
        quantizer: overrides of :data:`DEFAULT_QUANTIZER` (``VectorQuantize`` arguments).
    """

    # The reference encodes raw audio: its convolutions reflect-pad a ragged last window
    # (zero-padding to whole hops changed the last codes, and all codes of short clips).
    encodes_exact_lengths = True

    def __init__(
        self,
        sample_rate: int = 24000,
        channels: int = 1,
        n_filters: int = 32,
        ratios: Sequence[int] = (8, 5, 4, 2),
        dimension: int = 128,
        n_residual_layers: int = 1,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        compress: int = 2,
        true_skip: bool = False,
        lstm_layers: int = 2,
        causal: bool = True,
        norm: str = "weight_norm",
        pad_mode: str = "reflect",
        n_q: int = 32,
        bins: int = 1024,
        target_bandwidths: Sequence[float] = (1.5, 3.0, 6.0, 12.0, 24.0),
        bandwidth: float | None = None,
        train_random_bandwidth: bool = True,
        quantizer: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        ratios = tuple(int(r) for r in ratios)
        if causal and norm == "time_group_norm":
            raise ValueError("EnCodec: time_group_norm looks at the whole signal; use causal=False")
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(ratios)
        self.causal = causal
        self.latent_dim = dimension
        self.bins = bins
        self.target_bandwidths = tuple(float(b) for b in target_bandwidths)
        self.train_random_bandwidth = train_random_bandwidth
        sizes = dict(
            channels=channels,
            dimension=dimension,
            n_filters=n_filters,
            ratios=ratios,
            n_residual_layers=n_residual_layers,
            kernel_size=kernel_size,
            last_kernel_size=last_kernel_size,
            residual_kernel_size=residual_kernel_size,
            dilation_base=dilation_base,
            compress=compress,
            true_skip=true_skip,
            lstm_layers=lstm_layers,
            causal=causal,
            norm=norm,
            pad_mode=pad_mode,
        )
        # EnCodec lists the strides in decoder order; the encoder applies them reversed
        self.encoder = EncodecSEANetEncoder(**{**sizes, "ratios": ratios[::-1]})
        vq = {**DEFAULT_QUANTIZER, **(quantizer or {})}
        self.quantizer = build_quantizer(
            {"name": "rvq", "num_quantizers": n_q, "codebook_size": bins, **vq}, dimension
        )
        self.decoder = EncodecSEANetDecoder(**sizes)
        self._target_levels = tuple(self.levels_for_bandwidth(b) for b in self.target_bandwidths)
        self.default_levels = n_q if bandwidth is None else self.levels_for_bandwidth(bandwidth)

    # ----------------------------------------------------------------- bitrate

    @property
    def kbps_per_level(self) -> float:
        """Bitrate of one level: ``ceil(frame rate) * log2(bins) / 1000`` (EnCodec's rule)."""
        return math.ceil(self.sample_rate / self.hop_length) * math.log2(self.bins) / 1000

    def levels_for_bandwidth(self, bandwidth: float) -> int:
        """Levels for ``bandwidth`` kbps: ``max(1, floor(bandwidth / kbps_per_level))``."""
        n_q = self.quantizer.num_quantizers
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real):
            raise TypeError(f"EnCodec: bandwidth must be a number (kbps), got {bandwidth!r}")
        # Checked before floor: NaN and inf have no level count (floor raises its own errors).
        finite = math.isfinite(bandwidth) and bandwidth > 0
        levels = max(1, math.floor(bandwidth / self.kbps_per_level + 1e-9)) if finite else 0
        if not finite or levels > n_q:
            top = n_q * self.kbps_per_level
            raise ValueError(
                f"EnCodec: bandwidth {bandwidth} kbps is outside (0, {top:g}]; this model "
                f"has {n_q} levels of {self.kbps_per_level:g} kbps "
                f"(trained for {', '.join(f'{b:g}' for b in self.target_bandwidths)} kbps)"
            )
        return levels

    def resolve_levels(self, n_levels: int | None = None, bandwidth: float | None = None) -> int:
        """The level count of an ``encode`` call (``n_levels`` or ``bandwidth``, not both)."""
        if n_levels is not None and bandwidth is not None:
            raise ValueError("EnCodec.encode: give n_levels or bandwidth, not both")
        if bandwidth is not None:
            return self.levels_for_bandwidth(bandwidth)
        return super().resolve_levels(n_levels)

    def _training_levels(self, device: torch.device) -> int:
        """One of the target bandwidths' level counts, drawn on rank 0 and broadcast."""
        return self._target_levels[shared_randint(0, len(self._target_levels), device)]

    # ----------------------------------------------------------------- contract

    def encode(
        self,
        audio: Tensor,
        lengths: Tensor | None = None,
        n_levels: int | None = None,
        bandwidth: float | None = None,
    ) -> Tokens:
        """``audio (b, c, s)`` in [-1, 1] -> :class:`Tokens` with codes ``(b, levels, t)``.

        ``n_levels`` or ``bandwidth`` (kbps) choose the bitrate (default: the configured
        ``bandwidth``, else every level).
        """
        return super().encode(audio, lengths, n_levels, bandwidth=bandwidth)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``audio (b, c, s)`` -> reconstruction ``(b, c, s)`` and losses."""
        latent, token_lengths = self._latent(audio, lengths)
        if self.training and self.train_random_bandwidth:
            levels = self._training_levels(latent.device)
        else:
            levels = self.default_levels
        out = self.quantizer(latent.movedim(1, -1), n_levels=levels)
        quantized = out.quantized.movedim(-1, 1)
        losses = {"quantizer": out.loss}
        return self.leveled_output(audio, latent, quantized, out, levels, token_lengths, losses)


# --------------------------------------------------------------------------- importer


_CODEBOOK_KEYS = {
    "embed": "embedding",
    "embed_avg": "ema_embedding_sum",
    "cluster_size": "ema_cluster_size",
    "inited": "initted",
}


def convert_codebook_entry(name: str, value: Tensor, key: str) -> tuple[str, Tensor]:
    """One entry of an EnCodec EMA codebook (``embed``, ``embed_avg``, ``cluster_size``,
    ``inited``) -> the :class:`~anytok.quantizers.VectorQuantize` buffer and value (``inited``
    becomes a boolean scalar). ``key`` names the entry in errors."""
    if name not in _CODEBOOK_KEYS:
        raise KeyError(f"unexpected EnCodec codebook key {key!r}")
    return _CODEBOOK_KEYS[name], value.reshape(()).bool() if name == "inited" else value


def _from_transformers_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``transformers``' ``EncodecModel`` keys -> :class:`EnCodec`'s: the SEANet stacks
    ``{encoder,decoder}.layers.*`` by
    :func:`~anytok.nn.encodec_seanet.convert_transformers_seanet_keys`, the codebooks
    ``quantizer.layers.i.codebook.*`` as in the official layout."""
    out: dict[str, Tensor] = {}
    for half in ("encoder", "decoder"):
        out.update(
            convert_transformers_seanet_keys(
                state_dict, f"{half}.layers.", f"{half}.model.", decoder=half == "decoder"
            )
        )
    for key, value in state_dict.items():
        if key.startswith(("encoder.layers.", "decoder.layers.")):
            continue
        match = re.fullmatch(r"quantizer\.layers\.(\d+)\.codebook\.(\w+)", key)
        if not match:
            raise KeyError(f"convert_encodec_state_dict: unexpected key {key!r}")
        level, name = match.groups()
        name, value = convert_codebook_entry(name, value, key)
        out[f"quantizer.layers.{level}.{name}"] = value
    return out


def convert_encodec_state_dict(reference_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An ``encodec.EncodecModel`` state dict (official checkpoint), or a ``transformers``
    ``EncodecModel``'s (``facebook/encodec_24khz`` / ``facebook/encodec_48khz``'s
    ``model.safetensors``: keys ``encoder.layers.*``), -> :class:`EnCodec`'s.

    Renames only: the SEANet encoder and decoder by
    :func:`~anytok.nn.encodec_seanet.convert_encodec_seanet_keys` (``SConv1d``'s
    ``conv.conv`` / ``conv.norm`` -> ``conv.conv`` / ``norm``, ``SConvTranspose1d``'s
    ``convtr.convtr`` -> ``convtr.conv``, old-style weight norm (``weight_g`` / ``weight_v``)
    -> torch parametrizations (``original0`` / ``original1``)), and the quantizer's EMA codebooks ``vq.layers.i._codebook.{embed, embed_avg,
    cluster_size, inited}`` -> ``layers.i.{embedding, ema_embedding_sum, ema_cluster_size,
    initted}``. Load the result with ``load_state_dict(..., strict=True)`` into a model
    built with the checkpoint's configuration (e.g. ``anytok.create_model("encodec_24khz")``).
    """
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in reference_state):
        return _from_transformers_layout(reference_state)
    out: dict[str, Tensor] = {}
    for new, value in convert_encodec_seanet_keys(reference_state).items():
        match = re.fullmatch(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(\w+)", new)
        if match:
            level, name = match.groups()
            name, value = convert_codebook_entry(name, value, new)
            new = f"quantizer.layers.{level}.{name}"
        out[new] = value
    return out


# --------------------------------------------------------------------------- registry

_PAPER = "https://arxiv.org/abs/2210.13438"
_TINY = {
    "n_filters": 4,
    "ratios": [4, 2],
    "dimension": 8,
    "lstm_layers": 1,
    "n_q": 4,
    "bins": 16,
    # 3 kHz frames x 4 bits = 12 kbps per level in this toy configuration
    "target_bandwidths": [12.0, 24.0, 48.0],
    "quantizer": {"kmeans_iters": 2},
}

register_importer("encodec", convert_encodec_state_dict)


def _released(repo: str, note: str = "") -> PretrainedCfg:
    """The tag ``facebook``: Meta's weights in ``repo``, converted on load."""
    return PretrainedCfg(
        "facebook",
        hf_hub_id=repo,
        description="Meta's released EnCodec, as converted for transformers; converted on load"
        + note,
        license="CC-BY-NC-4.0",
        importer="encodec",
    )


register(
    "encodec_24khz",
    modality="audio",
    description="EnCodec 24 kHz mono, causal, 75 Hz x up to 32 levels of 1024 (1.5-24 kbps)",
    paper=_PAPER,
    default_config={
        "sample_rate": 24000,
        "channels": 1,
        "n_filters": 32,
        "ratios": [8, 5, 4, 2],
        "dimension": 128,
        "n_residual_layers": 1,
        "lstm_layers": 2,
        "causal": True,
        "norm": "weight_norm",
        "pad_mode": "reflect",
        "true_skip": False,
        "n_q": 32,
        "bins": 1024,
        "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
        "bandwidth": None,
    },
    tiny_config=_TINY,
    pretrained=[_released("facebook/encodec_24khz")],
    builder=EnCodec,
)

register(
    "encodec_48khz",
    modality="audio",
    description="EnCodec 48 kHz stereo, non-causal, 150 Hz x up to 16 levels of 1024 (3-24 kbps)",
    paper=_PAPER,
    default_config={
        "sample_rate": 48000,
        "channels": 2,
        "n_filters": 32,
        "ratios": [8, 5, 4, 2],
        "dimension": 128,
        "n_residual_layers": 1,
        "lstm_layers": 2,
        "causal": False,
        "norm": "time_group_norm",
        "pad_mode": "reflect",
        "true_skip": False,
        "n_q": 16,
        "bins": 1024,
        "target_bandwidths": [3.0, 6.0, 12.0, 24.0],
        "bandwidth": None,
    },
    tiny_config={**_TINY, "target_bandwidths": [24.0, 48.0]},
    pretrained=[
        _released(
            "facebook/encodec_48khz",
            " (anytok encodes in one pass, without EnCodec's 1 s segments and volume "
            "normalisation)",
        )
    ],
    builder=EnCodec,
)

__all__ = [
    "DEFAULT_QUANTIZER",
    "NORMS",
    "EnCodec",
    "convert_codebook_entry",
    "convert_encodec_state_dict",
]
