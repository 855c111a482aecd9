"""Encode / decode throughput of anytok's tokenizers against reference implementations:
audio codecs, image and video tokenizers, and diffusion decoders' speed per sampler step.

Images and video (``--modalities image,video``): images per second at ``--image-size``²,
batch ``--image-batch`` (default 256², 32) and video frames per second for batches of
``--video-batch`` clips of ``--video-frames`` frames at ``--video-size``² (default 2 x 17 at
256²). References (random weights, diffusers): ``VQModel`` at taming-f16 size (16,384 codes)
for ``vqgan``, ``AutoencoderVidTok`` (FSQ 4x8x8, 262,144 codes) for
``causal3d_vidtok_4x8x8`` — goal 2x its speed at half its peak memory — and
``AutoencoderKLCosmos`` (continuous CV 8x8x8, orientation only).

Diffusion decoders (``--modalities diffusion``): ``flextok_d18_d28``, ``tadicodec_24khz_6hz``
and ``divot`` decode at each of ``--steps`` (default 4, 8, 16, 32) sampler steps.

The audio section:

Speed is seconds of audio processed per second of wall time (x real time) for a batch of
``--batch`` clips of ``--seconds`` each (default 16 x 10 s), in fp32 and bf16 (autocast),
with random weights (throughput does not depend on training). Everything runs in one
process, so anytok and the references share the machine, the batch and the clock:

    python benchmarks/codec_throughput.py --out benchmarks/results/codec_throughput
    python benchmarks/codec_throughput.py --compile --out benchmarks/results/codec_throughput
    python benchmarks/codec_throughput.py --smoke --out /tmp/smoke      # CPU smoke run

Rows:

* anytok ``encodec_24khz``, ``dac_44khz``, ``dac_16khz``, ``snac_24khz``,
  ``wavtokenizer_24khz_75hz``, ``seanet_fsq_24khz``, ``mimi`` (``anytok.create_model``; Mimi
  at its default 8 levels, as the ``MimiModel`` row), each as
  ``eager`` (as built), ``fold`` (weight norm folded into plain weights with
  :func:`fold_weight_norm`) and, with ``--compile``, ``fold+compile`` (``torch.compile``
  of the encode and decode calls; compilation happens during warm-up, outside the timings).
  Channels-last is not measured: every audio codec here is built from ``Conv1d`` on 3-D
  tensors, which have no channels-last memory format.
* references, eager and as shipped: ``encodec.EncodecModel.encodec_model_24khz``,
  ``dac.DAC`` (44 kHz and 16 kHz configs), ``snac.SNAC`` (24 kHz config) and, when
  ``transformers`` is importable, its ``EncodecModel`` and ``MimiModel`` (default configs;
  the rows are skipped with a note otherwise).

EnCodec runs at ``--encodec-bandwidth`` kbps (default 6) in all three implementations.
Decode starts from the integer codes of the same batch (codebook look-up included).

Timing: ``--warmup`` untimed calls, then ``--repeats`` timed calls; the median is reported.
On CUDA each call is bracketed by CUDA events after a ``torch.cuda.synchronize``, and the
peak of ``torch.cuda.max_memory_allocated`` over the timed calls (reset before them) is
reported; the CPU uses ``time.perf_counter`` and reports no memory. The ``goal`` column
compares each anytok row with the fastest same-family reference row of the same dtype in
this run: ``x_ref`` = anytok x-RT / reference x-RT, goal met when both directions are
>= 1.5. Anchors are the issue author's H200 numbers, printed for orientation only.

Output: a Markdown table on stdout and ``codec_throughput.md`` + ``codec_throughput.json``
under ``--out``. ``--smoke`` (batch 2 x 1 s, tiny configs, 1 warm-up, 1 repeat) exists so
the script can be checked on a CPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

ANYTOK_MODELS: tuple[str, ...] = (
    "encodec_24khz",
    "dac_44khz",
    "dac_16khz",
    "snac_24khz",
    "wavtokenizer_24khz_75hz",
    "seanet_fsq_24khz",
    "mimi",
)

#: Family of each anytok model (references of the same family are its comparison).
FAMILY: dict[str, str] = {
    "encodec_24khz": "encodec_24k",
    "dac_44khz": "dac_44k",
    "dac_16khz": "dac_16k",
    "snac_24khz": "snac_24k",
    "wavtokenizer_24khz_75hz": "wavtokenizer_24k",
    "seanet_fsq_24khz": "seanet_fsq_24k",
    "mimi": "mimi_24k",
}

#: Issue author's H200 numbers (encode x-RT, decode x-RT), 16 x 10 s.
ANCHORS: dict[str, tuple[float, float]] = {
    "encodec_24k": (3787.0, 3735.0),
    "dac_44k": (748.0, 466.0),
    "dac_16k": (2076.0, 1204.0),
    "snac_24k": (3018.0, 2093.0),
    "mimi_24k": (6282.0, 6213.0),
}

GOAL = 1.5

#: Per-family speed goals (x the fastest same-family reference, both directions), where the
#: issues set one other than GOAL, and peak-memory goals (at most this fraction of the
#: reference's peak).
GOALS: dict[str, float] = {"vqgan_f16": 1.5, "vidtok_fsq_4x8x8": 2.0}
MEMORY_GOALS: dict[str, float] = {"vidtok_fsq_4x8x8": 0.5}

#: anytok image / video models: name -> (family, modality).
VISUAL_MODELS: dict[str, tuple[str, str]] = {
    "vqgan": ("vqgan_f16", "image"),
    "cnn_fsq_256": ("cnn_fsq_f16", "image"),
    "titok_l32": ("titok", "image"),
    "group_lfq": ("wetok", "image"),
    "causal3d_vidtok_4x8x8": ("vidtok_fsq_4x8x8", "video"),
    "causal3d_4x8x8_fsq": ("cosmos_dv_4x8x8", "video"),
    "causal3d_8x8x8_fsq": ("cosmos_8x8x8", "video"),
    "cnn3d_fsq_4x8x8": ("cosmos_dv_4x8x8", "video"),
    "omni": ("omni", "video"),
    "hierarchical": ("hitvideo", "video"),
}

#: Diffusion-decoder families: decode speed is measured at each of ``--steps``.
DIFFUSION_MODELS: dict[str, str] = {
    "flextok_d18_d28": "image",
    "tadicodec_24khz_6hz": "audio",
    "divot": "video",
}

#: Issue authors' H200 numbers for images (img/s) and video (frames/s), random weights:
#: {family: {dtype: (encode, decode)}}.
VISUAL_ANCHORS: dict[str, dict[str, tuple[float, float]]] = {
    "vqgan_f16": {"float32": (729.0, 382.0), "bfloat16": (779.0, 396.0)},
    "vidtok_fsq_4x8x8": {"float32": (191.0, 120.0)},
    "cosmos_8x8x8": {"float32": (2113.0, 852.0)},
}

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

EncodeFn = Callable[[Tensor], Any]
DecodeFn = Callable[[Any], Any]


@dataclasses.dataclass
class Case:
    """One row: how to build a model and call its encode / decode.

    Attributes:
        name: row label (model or reference name).
        family: comparison group (``FAMILY`` values, or ``mimi_24k``).
        impl: ``"anytok"`` or the reference's package name.
        variant: ``eager``, ``fold`` or ``fold+compile``.
        sample_rate: input sample rate in Hz (audio; 0 for images and video).
        build: returns ``(module, encode, decode)`` on the CPU in fp32; ``decode`` takes what
            ``encode`` returned.
        modality: ``"audio"``, ``"image"`` or ``"video"`` (sets the input and the unit).
        size: ``(height, width)`` of image / video inputs (``None``: the run's default).
    """

    name: str
    family: str
    impl: str
    variant: str
    sample_rate: int
    build: Callable[[], tuple[nn.Module, EncodeFn, DecodeFn]]
    modality: str = "audio"
    size: tuple[int, int] | None = None


@dataclasses.dataclass
class Row:
    """Result of one case in one dtype: times in ms, throughput in ``unit`` (audio: x real
    time; images: images/s; video: frames/s)."""

    name: str
    family: str
    impl: str
    variant: str
    dtype: str
    modality: str = "audio"
    unit: str = "x-RT"
    encode_ms: float | None = None
    decode_ms: float | None = None
    encode_rate: float | None = None
    decode_rate: float | None = None
    encode_peak_gib: float | None = None
    decode_peak_gib: float | None = None
    x_ref_encode: float | None = None
    x_ref_decode: float | None = None
    peak_ratio: float | None = None
    goal_met: bool | None = None
    error: str | None = None


def fold_weight_norm(module: nn.Module) -> int:
    """Fold every weight-norm parametrization of ``module`` into a plain weight, in place.

    Uses ``torch.nn.utils.parametrize.remove_parametrizations(..., leave_parametrized=True)``
    on each submodule whose ``weight`` is parametrized by torch's weight norm, so inference
    no longer recomputes ``g * v / ||v||`` on every call. Other parametrizations are left
    alone. Returns the number of weights folded.
    """
    folded = 0
    for sub in module.modules():
        if not parametrize.is_parametrized(sub, "weight"):
            continue
        params = sub.parametrizations["weight"]  # type: ignore[index]
        if any(type(p).__name__ == "_WeightNorm" for p in params):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            folded += 1
    return folded


# --------------------------------------------------------------------------- anytok builders


def anytok_case(name: str, variant: str, tiny: bool, bandwidth: float | None) -> Case:
    """An anytok model from the registry, random weights, in the given ``variant``."""
    import anytok
    from anytok.registry import get_arch

    sample_rate = int(get_arch(name).config(tiny=tiny)["sample_rate"])

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        model = anytok.create_model(name, tiny=tiny).eval()
        if variant.startswith("fold"):
            fold_weight_norm(model)
        kwargs: dict[str, Any] = {}
        if name.startswith("encodec") and bandwidth is not None:
            kwargs["bandwidth"] = bandwidth

        def encode(audio: Tensor) -> Any:
            return model.encode(audio, **kwargs)

        return model, encode, model.decode

    return Case(name, FAMILY[name], "anytok", variant, sample_rate, build)


# ------------------------------------------------------------------------ reference builders


def encodec_reference(tiny: bool, bandwidth: float | None) -> Case:
    """facebookresearch ``encodec`` 24 kHz (``pretrained=False``), or a tiny SEANet model."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from encodec import EncodecModel

        if tiny:  # mirrors anytok's tiny encodec_24khz config
            from encodec.modules import SEANetDecoder, SEANetEncoder
            from encodec.quantization import ResidualVectorQuantizer

            common = dict(channels=1, dimension=8, n_filters=4, ratios=[4, 2], lstm=1)
            model = EncodecModel(
                SEANetEncoder(causal=True, **common),
                SEANetDecoder(causal=True, **common),
                ResidualVectorQuantizer(dimension=8, n_q=4, bins=16),
                target_bandwidths=[12.0, 24.0, 48.0],
                sample_rate=24000,
                channels=1,
            )
        else:
            model = EncodecModel.encodec_model_24khz(pretrained=False)
            if bandwidth is not None:
                model.set_target_bandwidth(bandwidth)
        model.eval()
        return model, model.encode, model.decode

    return Case("encodec.EncodecModel", "encodec_24k", "encodec", "eager", 24000, build)


def dac_reference(sample_rate: int, tiny: bool) -> Case:
    """descript-audio-codec ``dac.DAC`` with the 44.1 kHz or 16 kHz config (random)."""
    from anytok.registry import get_arch

    arch = "dac_44khz" if sample_rate == 44100 else "dac_16khz"
    config = {k: v for k, v in get_arch(arch).config(tiny=tiny).items() if k != "channels"}

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        import dac

        model = dac.DAC(**config).eval()

        def encode(audio: Tensor) -> Tensor:
            return model.encode(model.preprocess(audio, sample_rate))[1]

        def decode(codes: Tensor) -> Tensor:
            return model.decode(model.quantizer.from_codes(codes)[0])

        return model, encode, decode

    family = "dac_44k" if sample_rate == 44100 else "dac_16k"
    return Case(f"dac.DAC({sample_rate // 1000}k)", family, "dac", "eager", sample_rate, build)


def snac_reference(tiny: bool) -> Case:
    """hubertsiuzdak ``snac.SNAC`` with the 24 kHz config (random)."""
    from anytok.registry import get_arch

    config = dict(get_arch("snac_24khz").config(tiny=tiny))
    config["sampling_rate"] = config.pop("sample_rate")
    config.pop("attn_head_dim", None)  # fixed at 64 in the reference
    if tiny:  # the tiny dims are below the reference's fixed head size of 64
        config["attn_window_size"] = None

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        import snac

        model = snac.SNAC(**config).eval()
        return model, model.encode, model.decode

    return Case("snac.SNAC", "snac_24k", "snac", "eager", 24000, build)


def hf_encodec_reference(tiny: bool, bandwidth: float | None) -> Case:
    """transformers ``EncodecModel`` with the default (24 kHz) config (random)."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from transformers import EncodecConfig, EncodecModel

        kwargs: dict[str, Any] = {}
        if tiny:
            kwargs = dict(
                hidden_size=8,
                num_filters=4,
                upsampling_ratios=[4, 2],
                codebook_size=16,
                codebook_dim=8,
                num_lstm_layers=1,
                target_bandwidths=[12.0, 24.0, 48.0],
            )
        model = EncodecModel(EncodecConfig(**kwargs)).eval()
        bw = None if tiny else bandwidth

        def encode(audio: Tensor) -> Any:
            out = model.encode(audio, bandwidth=bw)
            return out.audio_codes, out.audio_scales

        def decode(codes: Any) -> Tensor:
            return model.decode(codes[0], codes[1])[0]

        return model, encode, decode

    return Case("transformers.EncodecModel", "encodec_24k", "transformers", "eager", 24000, build)


def hf_mimi_reference(tiny: bool) -> Case:
    """transformers ``MimiModel`` with the default config (random)."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from transformers import MimiConfig, MimiModel

        kwargs: dict[str, Any] = {}
        if tiny:
            kwargs = dict(
                hidden_size=16,
                num_filters=4,
                upsampling_ratios=[4, 2],
                codebook_size=16,
                codebook_dim=8,
                num_quantizers=4,
                num_semantic_quantizers=1,
                num_hidden_layers=1,
                intermediate_size=32,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                upsample_groups=16,
                vector_quantization_hidden_dimension=8,
            )
        model = MimiModel(MimiConfig(**kwargs)).eval()

        levels = None if tiny else 8  # anytok's mimi encodes 8 levels by default, as Moshi

        def encode(audio: Tensor) -> Tensor:
            return model.encode(audio, num_quantizers=levels).audio_codes

        def decode(codes: Tensor) -> Tensor:
            return model.decode(codes).audio_values

        return model, encode, decode

    return Case("transformers.MimiModel", "mimi_24k", "transformers", "eager", 24000, build)


# ------------------------------------------------------------------- images, video, diffusion


def anytok_visual_case(name: str, variant: str, tiny: bool) -> Case:
    """An anytok image or video model (random weights) at its own training resolution."""
    import anytok
    from anytok.registry import get_arch

    family, modality = VISUAL_MODELS[name]
    resolution = get_arch(name).config(tiny=tiny).get("resolution")

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        model = anytok.create_model(name, tiny=tiny).eval()
        if variant.startswith("fold"):
            fold_weight_norm(model)
        return model, model.encode, model.decode

    size = (int(resolution[0]), int(resolution[1])) if tiny and resolution else None
    return Case(name, family, "anytok", variant, 0, build, modality, size)


def diffusion_case(name: str, steps: int, tiny: bool) -> Case:
    """A diffusion-decoder family decoding with ``steps`` sampler steps (default sampler,
    no guidance); encode is the same at every step count."""
    import anytok
    from anytok.registry import get_arch

    modality = DIFFUSION_MODELS[name]
    config = get_arch(name).config(tiny=tiny)
    resolution = config.get("resolution")
    sample_rate = int(config.get("sample_rate", 0) or 0)

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        model = anytok.create_model(name, tiny=tiny).eval()

        def decode(tokens: Any) -> Tensor:
            return model.decode(tokens, steps=steps)

        return model, model.encode, decode

    size = (int(resolution[0]), int(resolution[1])) if resolution and modality != "audio" else None
    return Case(name, name, "anytok", f"steps={steps}", sample_rate, build, modality, size)


def diffusers_vq_reference(tiny: bool) -> Case:
    """diffusers ``VQModel`` at taming-transformers' f16 size (16,384 codes, 256-d): five
    levels of widths 128, 128, 256, 256, 512, two ResNet blocks each, mid-block attention."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from diffusers import VQModel

        widths = (8, 8, 16) if tiny else (128, 128, 256, 256, 512)
        model = VQModel(
            down_block_types=("DownEncoderBlock2D",) * len(widths),
            up_block_types=("UpDecoderBlock2D",) * len(widths),
            block_out_channels=widths,
            layers_per_block=1 if tiny else 2,
            latent_channels=8 if tiny else 256,
            num_vq_embeddings=64 if tiny else 16384,
            norm_num_groups=4 if tiny else 32,
            sample_size=32 if tiny else 256,
        ).eval()

        def encode(images: Tensor) -> Tensor:
            latent = model.encode(images).latents
            _, _, (_, _, indices) = model.quantize(latent)
            return indices.view(latent.shape[0], *latent.shape[2:])

        def decode(indices: Tensor) -> Tensor:
            shape = (*indices.shape, model.quantize.vq_embed_dim)
            quantized = model.quantize.get_codebook_entry(indices.flatten(), shape)
            return model.decoder(model.post_quant_conv(quantized), None)

        return model, encode, decode

    size = (32, 32) if tiny else None
    return Case(
        "diffusers.VQModel(f16)", "vqgan_f16", "diffusers", "eager", 0, build, "image", size
    )


def diffusers_vidtok_reference(tiny: bool) -> Case:
    """diffusers ``AutoencoderVidTok``, FSQ, 4x8x8, 262,144 codes (VidTok's FSQ release)."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from diffusers import AutoencoderVidTok

        model = AutoencoderVidTok(
            ch=8 if tiny else 128,
            z_channels=6,
            double_z=False,
            regularizer="fsq",
            codebook_size=262144,
        ).eval()

        def encode(video: Tensor) -> Tensor:
            return model.encode(video)[1]

        def decode(indices: Tensor) -> Tensor:
            return model.decode(indices, decode_from_indices=True)

        return model, encode, decode

    size = (32, 32) if tiny else None
    return Case(
        "diffusers.AutoencoderVidTok",
        "vidtok_fsq_4x8x8",
        "diffusers",
        "eager",
        0,
        build,
        "video",
        size,
    )


def diffusers_cosmos_reference(tiny: bool) -> Case:
    """diffusers ``AutoencoderKLCosmos`` (continuous Cosmos CV 8x8x8), for orientation: its
    latent is continuous, so encode = mean of the posterior and decode = decode of it."""

    def build() -> tuple[nn.Module, EncodeFn, DecodeFn]:
        from diffusers import AutoencoderKLCosmos

        kwargs: dict[str, Any] = {}
        if tiny:
            kwargs = dict(
                encoder_block_out_channels=(8, 8, 8, 8),
                decode_block_out_channels=(8, 8, 8, 8),
                attention_resolutions=(),
                resolution=32,
                latent_channels=4,
                latents_mean=None,
                latents_std=None,
            )
        model = AutoencoderKLCosmos(**kwargs).eval()

        def encode(video: Tensor) -> Tensor:
            return model.encode(video).latent_dist.mode()

        def decode(latent: Tensor) -> Tensor:
            return model.decode(latent).sample

        return model, encode, decode

    size = (32, 32) if tiny else None
    return Case(
        "diffusers.AutoencoderKLCosmos(CV8x8x8)",
        "cosmos_8x8x8",
        "diffusers",
        "eager",
        0,
        build,
        "video",
        size,
    )


def transformers_available() -> bool:
    """True when ``transformers`` imports (its rows are skipped otherwise)."""
    try:
        import transformers  # noqa: F401
    except Exception:  # any import failure means "skip"
        return False
    return True


# ---------------------------------------------------------------------------------- timing


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` (CUDA, or CPU in smoke runs); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> tuple[float, float | None]:
    """Median milliseconds of ``repeats`` calls after ``warmup`` untimed ones, and the peak
    ``max_memory_allocated`` (GiB) over the timed calls on CUDA (``None`` on the CPU)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(1, repeats)):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        return statistics.median(times), peak
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), None


def make_audio(batch: int, seconds: float, sample_rate: int, device: torch.device) -> Tensor:
    """A fixed random batch ``(batch, 1, samples)``: noisy sines in [-1, 1]."""
    gen = torch.Generator().manual_seed(0)
    n = round(seconds * sample_rate)
    t = torch.arange(n) / sample_rate
    f0 = 100 + 900 * torch.rand(batch, 1, 1, generator=gen)
    wave = 0.5 * torch.sin(2 * math.pi * f0 * t) + 0.05 * torch.randn(batch, 1, n, generator=gen)
    return wave.clamp(-1, 1).to(device)


def make_input(case: Case, args: argparse.Namespace, device: torch.device) -> tuple[Tensor, float]:
    """The fixed batch a case is timed on, and the units it holds (seconds of audio, images,
    or frames)."""
    gen = torch.Generator().manual_seed(0)
    if case.modality == "audio":
        return make_audio(
            args.batch, args.seconds, case.sample_rate, device
        ), args.batch * args.seconds
    h, w = case.size or (args.image_size if case.modality == "image" else args.video_size)
    if case.modality == "image":
        images = torch.rand(args.image_batch, 3, h, w, generator=gen) * 2 - 1
        return images.to(device), float(args.image_batch)
    video = torch.rand(args.video_batch, 3, args.video_frames, h, w, generator=gen) * 2 - 1
    return video.to(device), float(args.video_batch * args.video_frames)


UNITS = {"audio": "x-RT", "image": "img/s", "video": "frames/s"}


def run_case(
    case: Case,
    dtype_name: str,
    device: torch.device,
    args: argparse.Namespace,
) -> Row:
    """Build ``case`` on ``device``, time encode and decode in ``dtype_name``; errors (OOM,
    missing package, API mismatch) are recorded on the row instead of stopping the run."""
    row = Row(
        case.name,
        case.family,
        case.impl,
        case.variant,
        dtype_name,
        case.modality,
        UNITS[case.modality],
    )
    model: nn.Module | None = None
    try:
        model, encode, decode = case.build()
        model.to(device)
        if case.variant.endswith("compile"):
            encode = torch.compile(encode)
            decode = torch.compile(decode)
        media, units = make_input(case, args, device)
        dtype = DTYPES[dtype_name]
        with torch.inference_mode(), autocast(device, dtype):
            codes = encode(media)
            row.encode_ms, row.encode_peak_gib = time_calls(
                lambda: encode(media), device, args.warmup, args.repeats
            )
            row.decode_ms, row.decode_peak_gib = time_calls(
                lambda: decode(codes), device, args.warmup, args.repeats
            )
        row.encode_rate = units / (row.encode_ms / 1e3)
        row.decode_rate = units / (row.decode_ms / 1e3)
    except Exception as exc:  # one failing row must not end the run
        if isinstance(exc, torch.OutOfMemoryError):
            row.error = "OOM"
        else:
            row.error = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            )
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return row


def compare_with_references(rows: list[Row]) -> None:
    """Fill ``x_ref_*`` and ``goal_met`` of anytok rows: ratio to the fastest reference row of
    the same family and dtype (per direction) in this run."""
    for row in rows:
        if row.impl != "anytok" or row.encode_rate is None or row.decode_rate is None:
            continue
        refs = [
            r
            for r in rows
            if r.impl != "anytok"
            and r.family == row.family
            and r.dtype == row.dtype
            and r.encode_rate is not None
            and r.decode_rate is not None
        ]
        if not refs:
            continue
        best = max(refs, key=lambda r: r.encode_rate or 0.0)
        row.x_ref_encode = row.encode_rate / max(r.encode_rate for r in refs)  # type: ignore[type-var]
        row.x_ref_decode = row.decode_rate / max(r.decode_rate for r in refs)  # type: ignore[type-var]
        goal = GOALS.get(row.family, GOAL)
        row.goal_met = row.x_ref_encode >= goal and row.x_ref_decode >= goal
        memory_goal = MEMORY_GOALS.get(row.family)
        if memory_goal is not None and row.encode_peak_gib is not None:
            ref_peak = max(best.encode_peak_gib or 0.0, best.decode_peak_gib or 0.0)
            own_peak = max(row.encode_peak_gib or 0.0, row.decode_peak_gib or 0.0)
            row.peak_ratio = own_peak / ref_peak if ref_peak else None
            row.goal_met = (
                row.goal_met and row.peak_ratio is not None and row.peak_ratio <= memory_goal
            )


# ---------------------------------------------------------------------------------- report


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The report: settings, then one table per modality, one row per (case, dtype)."""
    bw = meta["encodec_bandwidth"]
    bandwidth = "every level" if bw is None else f"{bw:g} kbps"
    lines = [
        f"# Codec throughput — {meta['device_name']}",
        "",
        f"{meta['label']}",
        "",
        f"- audio: batch {meta['batch']} × {meta['seconds']} s, EnCodec at {bandwidth}; "
        f"images: batch {meta['image_batch']} at {meta['image_size']}²; video: batch "
        f"{meta['video_batch']} × {meta['video_frames']} frames at {meta['video_size']}²; "
        f"diffusion decoders at steps {meta['steps']}"
        + (" (tiny image / video configs run at their own resolution)" if meta["tiny"] else ""),
        f"- warm-up {meta['warmup']}, median of {meta['repeats']}; "
        f"{'tiny' if meta['tiny'] else 'full-size'} configs, random weights",
        f"- torch {meta['torch']}, Python {meta['python']}, {meta['platform']}",
        "- rates: audio x-RT (seconds of audio per second), images/s, video frames/s; "
        "`x_ref` = anytok / fastest same-family reference, same dtype; goal: both ≥ "
        f"{GOAL} (video at VidTok's compression: ≥ 2 and ≤ half its peak memory)",
        "- anchors: the issue authors' H200 numbers (encode / decode), for orientation",
    ]
    for note in meta["notes"]:
        lines.append(f"- {note}")
    for modality in ("audio", "image", "video"):
        group = [r for r in rows if r.modality == modality]
        if not group:
            continue
        lines += [
            "",
            f"## {modality}",
            "",
            "| model | impl | variant | dtype | enc /s | dec /s | unit | enc ms | dec ms "
            "| enc GiB | dec GiB | anchor enc / dec | x_ref enc / dec | peak / ref | goal |",
            "|---|---|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|:-:|",
        ]
        for r in group:
            if r.modality == "audio":
                anchor = ANCHORS.get(r.family)
            else:
                anchor = VISUAL_ANCHORS.get(r.family, {}).get(r.dtype)
            anchor_s = f"{anchor[0]:,.0f} / {anchor[1]:,.0f}" if anchor else ""
            x_ref = (
                f"{r.x_ref_encode:.2f} / {r.x_ref_decode:.2f}" if r.x_ref_encode is not None else ""
            )
            goal = "" if r.goal_met is None else ("yes" if r.goal_met else "no")
            if r.error:
                cells = [r.error.replace("|", "/")] + [""] * 6
            else:
                cells = [
                    _num(r.encode_rate),
                    _num(r.decode_rate),
                    r.unit,
                    _num(r.encode_ms, ",.1f"),
                    _num(r.decode_ms, ",.1f"),
                    _num(r.encode_peak_gib, ".2f"),
                    _num(r.decode_peak_gib, ".2f"),
                ]
            peak = _num(r.peak_ratio, ".2f")
            lines.append(
                "| "
                + " | ".join(
                    [r.name, r.impl, r.variant, r.dtype, *cells, anchor_s, x_ref, peak, goal]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main


def registered(models: list[str], notes: list[str]) -> list[str]:
    """``models`` that this checkout registers; the others are noted and skipped."""
    import anytok

    known = set(anytok.list_models())
    missing = [m for m in models if m not in known]
    if missing:
        notes.append(f"not registered in this checkout, skipped: {', '.join(missing)}")
    return [m for m in models if m in known]


def build_cases(args: argparse.Namespace, notes: list[str]) -> list[Case]:
    """Every row of this run, modality by modality: anytok first, then references."""
    cases: list[Case] = []
    variants = ["eager", "fold"] + (["fold+compile"] if args.compile else [])
    if "audio" in args.modalities:
        cases += audio_cases(args, notes, variants)
    visual_variants = ["eager"] + (["compile"] if args.compile else [])
    for modality in ("image", "video"):
        if modality not in args.modalities:
            continue
        models = registered(
            [
                m
                for m, (_, mod) in VISUAL_MODELS.items()
                if mod == modality and (not args.models or m in args.models)
            ],
            notes,
        )
        cases += [anytok_visual_case(m, v, args.tiny) for m in models for v in visual_variants]
        if args.no_references:
            continue
        families = {VISUAL_MODELS[m][0] for m in models}
        if "vqgan_f16" in families:
            cases.append(diffusers_vq_reference(args.tiny))
        if "vidtok_fsq_4x8x8" in families:
            cases.append(diffusers_vidtok_reference(args.tiny))
        if "cosmos_8x8x8" in families:
            cases.append(diffusers_cosmos_reference(args.tiny))
    if "diffusion" in args.modalities:
        models = registered(
            [m for m in DIFFUSION_MODELS if not args.models or m in args.models], notes
        )
        cases += [diffusion_case(m, n, args.tiny) for m in models for n in args.steps]
    return cases


def audio_cases(args: argparse.Namespace, notes: list[str], variants: list[str]) -> list[Case]:
    """The audio rows: anytok codecs, then their reference implementations."""
    bandwidth = None if args.tiny else args.encodec_bandwidth
    models = [m for m in ANYTOK_MODELS if not args.models or m in args.models]
    cases = [anytok_case(m, v, args.tiny, bandwidth) for m in models for v in variants]
    if args.no_references:
        return cases
    families = {FAMILY[m] for m in models}
    if "encodec_24k" in families:
        cases.append(encodec_reference(args.tiny, bandwidth))
    if "dac_44k" in families:
        cases.append(dac_reference(44100, args.tiny))
    if "dac_16k" in families:
        cases.append(dac_reference(16000, args.tiny))
    if "snac_24k" in families:
        cases.append(snac_reference(args.tiny))
    if transformers_available():
        if "encodec_24k" in families:
            cases.append(hf_encodec_reference(args.tiny, bandwidth))
        if "mimi_24k" in families:
            cases.append(hf_mimi_reference(args.tiny))
    else:
        notes.append("transformers is not installed: its EnCodec and Mimi rows are skipped")
    return cases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--smoke`` overrides batch, seconds, repeats, warm-up, tiny)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for .md and .json")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32,bfloat16")
    p.add_argument("--models", default="", help="comma list of anytok models (default all)")
    p.add_argument(
        "--modalities",
        default="audio,image,video,diffusion",
        help="comma list of audio,image,video,diffusion (diffusion: decode speed vs --steps)",
    )
    p.add_argument("--image-batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256, help="square side in pixels")
    p.add_argument("--video-batch", type=int, default=2)
    p.add_argument("--video-frames", type=int, default=17)
    p.add_argument("--video-size", type=int, default=256, help="square side in pixels")
    p.add_argument("--steps", default="4,8,16,32", help="sampler steps of diffusion decoders")
    p.add_argument("--encodec-bandwidth", type=float, default=6.0, help="kbps, all EnCodecs")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument("--tiny", action="store_true", help="tiny configs (anytok's tiny overrides)")
    p.add_argument("--no-references", action="store_true", help="anytok rows only")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--smoke", action="store_true", help="CPU check: tiny configs, small batches, 1 repeat"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.seconds, args.warmup, args.repeats, args.tiny = 2, 1.0, 1, 1, True
        args.image_batch, args.video_batch, args.video_frames = 2, 1, 5
        args.steps = "2,4"
    args.image_size = (args.image_size, args.image_size)
    args.video_size = (args.video_size, args.video_size)
    args.steps = [int(n) for n in str(args.steps).split(",") if n]
    if not args.steps or min(args.steps) < 1:
        p.error("--steps must be a comma list of positive integers")
    args.modalities = [m for m in args.modalities.split(",") if m]
    known_modalities = ("audio", "image", "video", "diffusion")
    if any(m not in known_modalities for m in args.modalities):
        p.error(f"--modalities must be among {list(known_modalities)}")
    args.models = [m for m in args.models.split(",") if m]
    known = [*ANYTOK_MODELS, *VISUAL_MODELS, *DIFFUSION_MODELS]
    unknown = [m for m in args.models if m not in known]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {known}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in DTYPES for d in args.dtypes):
        p.error(f"--dtypes must be among {list(DTYPES)}")
    return args


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence library deprecation chatter (weight_norm, autocast) during the run."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    """Run every case in every dtype, print the table, write ``--out``; exit 0."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, "
        device_name += f"{torch.get_num_threads()} threads)"
    notes: list[str] = []
    label = (
        "**CPU smoke run — checks that the script works; the numbers are not results.**"
        if args.smoke or device.type == "cpu"
        else "Measured run."
    )
    meta = {
        "device_name": device_name,
        "label": label,
        "batch": args.batch,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "encodec_bandwidth": None if args.tiny else args.encodec_bandwidth,
        "image_batch": args.image_batch,
        "image_size": args.image_size[0],
        "video_batch": args.video_batch,
        "video_frames": args.video_frames,
        "video_size": args.video_size[0],
        "steps": args.steps,
        "tiny": args.tiny,
        "compile": args.compile,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "notes": notes,
        "anchors_h200": {k: {"encode": v[0], "decode": v[1]} for k, v in ANCHORS.items()},
        "visual_anchors_h200": VISUAL_ANCHORS,
        "goal": GOAL,
    }
    rows: list[Row] = []

    def write_report() -> str:
        """The table so far, written after every row: a run cut short (the device
        machine's time limit, Ctrl-C) keeps what it measured."""
        compare_with_references(rows)
        report = markdown(rows, meta)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "codec_throughput.md").write_text(report)
            payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}
            (args.out / "codec_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")
        return report

    with quiet_warnings():
        cases = build_cases(args, notes)
        try:
            for case in cases:
                for dtype_name in args.dtypes:
                    row = run_case(case, dtype_name, device, args)
                    rows.append(row)
                    status = row.error or (
                        f"{row.encode_rate:,.0f} / {row.decode_rate:,.0f} {row.unit}"
                    )
                    print(
                        f"{case.name:38s} {case.variant:13s} {dtype_name:9s} {status}", flush=True
                    )
                    write_report()
        except KeyboardInterrupt:
            print(f"interrupted after {len(rows)} row(s)", file=sys.stderr)
    report = write_report()
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
