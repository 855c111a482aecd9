"""DAC, the Descript Audio Codec: Snake-activated convolutional encoder / decoder with
factorized, L2-normalised residual vector quantization (Kumar et al. 2023, "High-Fidelity
Audio Compression with Improved RVQGAN", https://arxiv.org/abs/2306.06546; reference code
https://github.com/descriptinc/descript-audio-codec).

Registered with the sizes of the published models, so their weights convert with
:func:`convert_dac_state_dict`:

==============  =============  ==============  ==========  =========  ============
name            encoder_rates  decoder_rates   hop / rate  codebooks  bitrate
==============  =============  ==============  ==========  =========  ============
``dac_16khz``   2, 4, 5, 8     8, 5, 4, 2      320 / 50    12         6 kbps
``dac_24khz``   2, 4, 5, 8     8, 5, 4, 2      320 / 75    32         24 kbps
``dac_44khz``   2, 4, 8, 8     8, 8, 4, 2      512 / 86.1  9          7.75 kbps
==============  =============  ==============  ==========  =========  ============

All use ``encoder_dim`` 64, ``decoder_dim`` 1536, latent 1024, 1024 codes of dimension 8.

Quantizer: every stage projects the 1024-d residual to 8 dimensions, picks the code with
the largest cosine similarity, and returns the *unnormalised* code projected back (DAC's
semantics: the search is normalised, the codeword is not). Built from
:class:`~anytok.quantizers.ResidualVQ` stages whose search metric is cosine over a raw,
learned codebook; codebook loss ``|sg(z) - q|^2`` (weight 1) and commitment loss (0.25) as
in DAC. DAC's projections are weight-normalised 1x1 convs; here they are linear layers and
the importer folds the weight norm into their weights (same function, one parameter less).

Bitrate: ``encode(audio, n_levels=k)`` keeps the first ``k`` codebooks (quantizer dropout
trains for it: with probability ``quantizer_dropout`` a training batch uses a random number
of levels; DAC applies it to that fraction of each batch's items instead).

Non-causal (centred convolutions): a batch of different lengths is encoded (and decoded)
per distinct length, so each item gets exactly its tokens alone; long files go through
:meth:`encode_long`, whose context is the measured receptive field (8 frames each side for
``dac_44khz``), so chunked tokens equal one pass. With odd strides DAC's transposed convs
return ``frames * hop`` minus a few samples (8 for the 24 kHz model); :meth:`decode`
right-pads those with zeros to ``frames * hop``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.codecs.base import ResidualAudioTokenizer, TokenizerOutput
from anytok.codecs.long_audio import apply_per_length
from anytok.nn.conv import maybe_weight_norm
from anytok.nn.snake import Snake1d
from anytok.quantizers.distributed import shared_random
from anytok.quantizers.residual import ResidualVQ, synced_num_levels
from anytok.registry import PretrainedCfg, register, register_importer


def wn_conv1d(*args: Any, **kwargs: Any) -> nn.Conv1d:
    """A weight-normalised ``nn.Conv1d`` (DAC's ``WNConv1d``)."""
    return maybe_weight_norm(nn.Conv1d(*args, **kwargs), True)


def wn_conv_transpose1d(*args: Any, **kwargs: Any) -> nn.ConvTranspose1d:
    """A weight-normalised ``nn.ConvTranspose1d`` (DAC's ``WNConvTranspose1d``)."""
    return maybe_weight_norm(nn.ConvTranspose1d(*args, **kwargs), True)


class DACResidualUnit(nn.Module):
    """Snake, conv (kernel 7, ``dilation``, same length), Snake, 1x1 conv, plus identity.
    ``(b, dim, t) -> (b, dim, t)``."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        trim = (x.shape[-1] - y.shape[-1]) // 2  # 0 for the kernels used here; kept as in DAC
        if trim > 0:
            x = x[..., trim:-trim]
        return x + y


class DACEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``dim / 2`` channels, Snake, then a
    strided conv to ``dim``: ``(b, dim / 2, t) -> (b, dim, t / stride)``."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            DACResidualUnit(dim // 2, 1),
            DACResidualUnit(dim // 2, 3),
            DACResidualUnit(dim // 2, 9),
            Snake1d(dim // 2),
            wn_conv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACEncoder(nn.Module):
    """Waveform ``(b, channels, samples)`` -> latent ``(b, latent_dim, samples / hop)``
    (``samples`` a multiple of the hop)."""

    def __init__(self, channels: int, encoder_dim: int, rates: Sequence[int], latent_dim: int):
        super().__init__()
        width = encoder_dim
        layers: list[nn.Module] = [wn_conv1d(channels, width, kernel_size=7, padding=3)]
        for stride in rates:
            width *= 2
            layers.append(DACEncoderBlock(width, stride))
        layers += [Snake1d(width), wn_conv1d(width, latent_dim, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACDecoderBlock(nn.Module):
    """Snake, transposed conv upsampling by ``stride``, three residual units (1, 3, 9)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            wn_conv_transpose1d(
                in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
            DACResidualUnit(out_dim, 1),
            DACResidualUnit(out_dim, 3),
            DACResidualUnit(out_dim, 9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACDecoder(nn.Module):
    """Latent ``(b, latent_dim, frames)`` -> waveform in [-1, 1] ``(b, channels, ~frames * hop)``:
    each odd stride drops one sample at its output's end (``frames * 320 - 8`` samples for
    rates 8, 5, 4, 2), as DAC's transposed convs do."""

    def __init__(self, latent_dim: int, decoder_dim: int, rates: Sequence[int], channels: int):
        super().__init__()
        layers: list[nn.Module] = [wn_conv1d(latent_dim, decoder_dim, kernel_size=7, padding=3)]
        out_dim = decoder_dim
        for i, stride in enumerate(rates):
            in_dim, out_dim = decoder_dim // 2**i, decoder_dim // 2 ** (i + 1)
            layers.append(DACDecoderBlock(in_dim, out_dim, stride))
        layers += [
            Snake1d(out_dim),
            wn_conv1d(out_dim, channels, kernel_size=7, padding=3),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)


def build_dac_quantizer(
    latent_dim: int,
    n_codebooks: int,
    codebook_size: int,
    codebook_dim: int,
    commitment_weight: float = 0.25,
    codebook_weight: float = 1.0,
) -> ResidualVQ:
    """DAC's residual quantizer from :class:`ResidualVQ` stages (see the module docs)."""
    if codebook_dim >= latent_dim:
        raise ValueError(
            f"DAC: codebook_dim ({codebook_dim}) must be smaller than the latent ({latent_dim})"
        )
    rvq = ResidualVQ(
        latent_dim,
        n_codebooks,
        codebook_size,
        codebook_dim=codebook_dim,
        learnable_codebook=True,
        use_cosine_sim=False,  # codewords are used unnormalised ...
        commitment_weight=commitment_weight,
        codebook_weight=codebook_weight,
    )
    for stage in rvq.layers:
        stage.metric = "cosine"  # ... but found by cosine similarity, as in DAC
    return rvq


class DAC(ResidualAudioTokenizer):
    """DAC: waveform ``(b, channels, samples)`` -> codes ``(b, levels, ceil(samples / hop))``.

    Arguments are DAC's own (``dac.DAC``), so a published model's metadata configures it.

    Args:
        encoder_dim: first conv width (doubles at every downsampling).
        encoder_rates: encoder strides, in order; their product is the hop.
        latent_dim: latent channels (default ``encoder_dim * 2 ** len(encoder_rates)``).
        decoder_dim: first decoder width (halves at every upsampling).
        decoder_rates: decoder strides, in order (product = hop).
        n_codebooks: residual levels.
        codebook_size: codes per level.
        codebook_dim: dimension each level searches in (factorized codes).
        quantizer_dropout: probability that a training batch uses a random number of levels.
        sample_rate / channels: the audio it takes (the published models are mono).
        commitment_weight / codebook_weight: quantizer loss weights (DAC: 0.25 / 1).
    """

    def __init__(
        self,
        encoder_dim: int = 64,
        encoder_rates: Sequence[int] = (2, 4, 8, 8),
        latent_dim: int | None = None,
        decoder_dim: int = 1536,
        decoder_rates: Sequence[int] = (8, 8, 4, 2),
        n_codebooks: int = 9,
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        quantizer_dropout: float = 0.0,
        sample_rate: int = 44100,
        channels: int = 1,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
    ):
        super().__init__()
        encoder_rates, decoder_rates = tuple(encoder_rates), tuple(decoder_rates)
        if math.prod(encoder_rates) != math.prod(decoder_rates):
            raise ValueError(
                f"DAC: encoder_rates {encoder_rates} and decoder_rates {decoder_rates} must "
                "have the same product (the hop)"
            )
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"DAC: quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(encoder_rates)
        self.causal = False
        self.latent_dim = latent_dim or encoder_dim * 2 ** len(encoder_rates)
        self.quantizer_dropout = float(quantizer_dropout)
        self.encoder = DACEncoder(channels, encoder_dim, encoder_rates, self.latent_dim)
        self.quantizer = build_dac_quantizer(
            self.latent_dim,
            n_codebooks,
            codebook_size,
            codebook_dim,
            commitment_weight,
            codebook_weight,
        )
        self.decoder = DACDecoder(self.latent_dim, decoder_dim, decoder_rates, channels)
        self.default_levels = self.quantizer.num_quantizers  # encode every level by default
        # DAC's initialisation: zero conv biases (its trunc-normal weight init never reaches
        # weight-normalised convs, whose weight is recomputed from g and v at every call).
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _decode_frames(self, latent: Tensor) -> Tensor:
        """Decoder output right-padded with zeros to exactly ``frames * hop`` samples."""
        audio = self.decoder(latent)
        return F.pad(audio, (0, latent.shape[-1] * self.hop_length - audio.shape[-1]))

    def _decode_latent(self, latent: Tensor, lengths: Tensor | None) -> Tensor:
        per_item = None if self.training else lengths
        return apply_per_length(self._decode_frames, latent, per_item, self.hop_length)

    def _training_levels(self, device: torch.device) -> int | None:
        """Quantizer dropout: ``None`` (every level) or a random count, the same on all ranks."""
        if self.quantizer_dropout <= 0:
            return None
        if shared_random(device) >= self.quantizer_dropout:
            return None
        return synced_num_levels(self.quantizer.num_quantizers, 0, device)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``audio (b, c, s)`` -> reconstruction ``(b, c, s)`` and losses."""
        latent, token_lengths = self._latent(audio, lengths)
        levels = self._training_levels(latent.device) if self.training else None
        out = self.quantizer(latent.movedim(1, -1), n_levels=levels)
        levels = levels or self.quantizer.num_quantizers
        quantized = out.quantized.movedim(-1, 1)
        losses = {"quantizer": out.loss}
        return self.leveled_output(audio, latent, quantized, out, levels, token_lengths, losses)


# --------------------------------------------------------------------------- importer


def _from_transformers_layout(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``transformers``' ``DacModel`` keys -> the ``dac`` package's (same modules, named
    attributes instead of ``nn.Sequential`` indices). Plain conv weights (transformers'
    conversion removes weight norm) are split back into old-style ``weight_g`` / ``weight_v``
    (``g`` the norm of each output slice), which :func:`convert_dac_state_dict` then reads.
    """
    blocks = {
        half: 1
        + max(int(m.group(1)) for k in state if (m := re.match(rf"{half}\.block\.(\d+)\.", k)))
        for half in ("encoder", "decoder")
    }
    # encoder.block = [conv, EncoderBlock x n, Snake, conv]; EncoderBlock = [res x 3, Snake,
    # conv]; decoder.model = [conv, DecoderBlock x n, Snake, conv]; DecoderBlock = [Snake,
    # convT, res x 3]; residual unit = [Snake, conv, Snake, conv]
    unit = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}
    encoder_block = {"snake1": "3", "conv1": "4"}
    decoder_block = {"snake1": "0", "conv_t1": "1"}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = None
        if key.startswith("quantizer."):
            new = key
        elif m := re.fullmatch(r"(encoder|decoder)\.(conv1|snake1|conv2)\.(.+)", key):
            half, name, rest = m.groups()
            seq = "encoder.block" if half == "encoder" else "decoder.model"
            index = {"conv1": 0, "snake1": blocks[half] + 1, "conv2": blocks[half] + 2}[name]
            new = f"{seq}.{index}.{rest}"
        elif m := re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.(\w+)\.(.+)", key):
            half, block, name, rest = m.groups()
            seq = "encoder.block" if half == "encoder" else "decoder.model"
            prefix = f"{seq}.{int(block) + 1}.block"
            if name.startswith("res_unit"):
                offset = 0 if half == "encoder" else 2
                position = int(name.removeprefix("res_unit")) - 1 + offset
                layer, _, rest = rest.partition(".")
                if layer in unit:
                    new = f"{prefix}.{position}.block.{unit[layer]}.{rest}"
            elif name in (encoder_block if half == "encoder" else decoder_block):
                table = encoder_block if half == "encoder" else decoder_block
                new = f"{prefix}.{table[name]}.{rest}"
        if new is None:
            raise KeyError(f"convert_dac_state_dict: unexpected key {key!r}")
        if new.endswith(".weight") and value.ndim == 3 and not new.startswith("quantizer."):
            out[new[: -len("weight")] + "weight_g"] = value.norm(dim=(1, 2), keepdim=True)
            out[new[: -len("weight")] + "weight_v"] = value
        else:
            out[new] = value
    return out


def convert_dac_state_dict(reference_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``dac.DAC`` state dict (official checkpoint's ``state_dict``), or a ``transformers``
    ``DacModel``'s (``descript/dac_16khz`` ...'s ``model.safetensors``: keys such as
    ``encoder.conv1.*`` and ``block.i.res_unit1.*``, renamed by :func:`_from_transformers_layout`
    first) -> :class:`DAC`'s.

    Encoder and decoder keys are DAC's own; only old-style weight norm (``weight_g`` /
    ``weight_v``) becomes torch's parametrization (``original0`` / ``original1``). The
    quantizer's weight-normalised 1x1 convs ``quantizers.i.{in_proj, out_proj}`` become the
    linear layers ``layers.i.{project_in, project_out}`` (weight norm folded in), the
    codebook ``quantizers.i.codebook.weight`` becomes ``layers.i.embedding``, and the usage
    statistics DAC does not keep start fresh (``ema_cluster_size`` ones, ``initted`` true).
    """
    if "state_dict" in reference_state and "metadata" in reference_state:
        # the whole of ``weights.pth`` (``{"state_dict", "metadata"}``) rather than its weights
        reference_state = reference_state["state_dict"]  # type: ignore[assignment]
    strays = [
        k
        for k, v in reference_state.items()
        if not isinstance(v, Tensor) or not k.startswith(("encoder.", "decoder.", "quantizer."))
    ]
    if strays:
        raise KeyError(
            f"convert_dac_state_dict: not DAC weights: {strays[:5]} (expected encoder.*, "
            "decoder.* and quantizer.* tensors: the state_dict of dac.DAC or DacModel)"
        )
    if any(k.startswith(("encoder.conv1.", "encoder.block.0.res_unit1.")) for k in reference_state):
        reference_state = _from_transformers_layout(reference_state)
    out: dict[str, Tensor] = {}
    projections: dict[str, dict[str, Tensor]] = {}
    for key, value in reference_state.items():
        if key.startswith("quantizer.quantizers."):
            level, rest = key.removeprefix("quantizer.quantizers.").split(".", 1)
            prefix = f"quantizer.layers.{level}"
            if rest == "codebook.weight":
                out[f"{prefix}.embedding"] = value
                out[f"{prefix}.ema_cluster_size"] = torch.ones(value.shape[0])
                out[f"{prefix}.initted"] = torch.tensor(True)
                continue
            proj, _, name = rest.partition(".")
            target = {"in_proj": "project_in", "out_proj": "project_out"}.get(proj)
            if target is None:
                raise KeyError(f"convert_dac_state_dict: unexpected quantizer key {key!r}")
            projections.setdefault(f"{prefix}.{target}", {})[name] = value
            continue
        if key.endswith(".weight_g"):
            key = key.removesuffix("weight_g") + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key.removesuffix("weight_v") + "parametrizations.weight.original1"
        out[key] = value
    for prefix, parts in projections.items():
        if "weight_g" in parts:
            weight = torch._weight_norm(parts["weight_v"], parts["weight_g"], 0)
        elif "parametrizations.weight.original0" in parts:
            weight = torch._weight_norm(
                parts["parametrizations.weight.original1"],
                parts["parametrizations.weight.original0"],
                0,
            )
        else:
            weight = parts["weight"]
        out[f"{prefix}.weight"] = weight.squeeze(-1)  # (out, in, 1) conv -> (out, in) linear
        out[f"{prefix}.bias"] = parts["bias"]
    return out


# --------------------------------------------------------------------------- registry

_PAPER = "https://arxiv.org/abs/2306.06546"
_COMMON = {
    "encoder_dim": 64,
    "latent_dim": None,
    "decoder_dim": 1536,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "quantizer_dropout": 0.0,
    "channels": 1,
}
_TINY = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4],
    "decoder_dim": 16,
    "decoder_rates": [4, 2],
    "n_codebooks": 3,
    "codebook_size": 16,
    "codebook_dim": 4,
}

register_importer("dac", convert_dac_state_dict)


def _released(repo: str) -> PretrainedCfg:
    """The tag ``descript``: Descript's weights in ``repo``, converted on load."""
    return PretrainedCfg(
        "descript",
        hf_hub_id=repo,
        description="Descript's released DAC, as converted for transformers; converted on load",
        license="MIT",
        importer="dac",
    )


register(
    "dac_16khz",
    modality="audio",
    description="DAC 16 kHz mono, Snake SEANet-style, 50 Hz x up to 12 levels of 1024 (6 kbps)",
    paper=_PAPER,
    default_config={
        **_COMMON,
        "encoder_rates": [2, 4, 5, 8],
        "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 12,
        "sample_rate": 16000,
    },
    tiny_config={**_TINY, "encoder_rates": [2, 5], "decoder_rates": [5, 2]},
    pretrained=[_released("descript/dac_16khz")],
    builder=DAC,
)

register(
    "dac_24khz",
    modality="audio",
    description="DAC 24 kHz mono, Snake SEANet-style, 75 Hz x up to 32 levels of 1024 (24 kbps)",
    paper=_PAPER,
    default_config={
        **_COMMON,
        "encoder_rates": [2, 4, 5, 8],
        "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 32,
        "sample_rate": 24000,
    },
    tiny_config={**_TINY, "encoder_rates": [2, 5], "decoder_rates": [5, 2]},
    pretrained=[_released("descript/dac_24khz")],
    builder=DAC,
)

register(
    "dac_44khz",
    modality="audio",
    description="DAC 44.1 kHz mono, Snake SEANet-style, 86 Hz x up to 9 levels of 1024 (7.75 kbps)",
    paper=_PAPER,
    default_config={
        **_COMMON,
        "encoder_rates": [2, 4, 8, 8],
        "decoder_rates": [8, 8, 4, 2],
        "n_codebooks": 9,
        "sample_rate": 44100,
    },
    tiny_config=_TINY,
    pretrained=[_released("descript/dac_44khz")],
    builder=DAC,
)

__all__ = [
    "DAC",
    "DACDecoder",
    "DACDecoderBlock",
    "DACEncoder",
    "DACEncoderBlock",
    "DACResidualUnit",
    "build_dac_quantizer",
    "convert_dac_state_dict",
    "wn_conv1d",
    "wn_conv_transpose1d",
]
