"""Encode / decode throughput of anytok's audio codecs against their reference implementations.

Speed is seconds of audio processed per second of wall time (x real time) for a batch of
``--batch`` clips of ``--seconds`` each (default 16 x 10 s), in fp32 and bf16 (autocast),
with random weights (throughput does not depend on training). Everything runs in one
process, so anytok and the references share the machine, the batch and the clock:

    python benchmarks/codec_throughput.py --out benchmarks/results/codec_throughput
    python benchmarks/codec_throughput.py --compile --out benchmarks/results/codec_throughput
    python benchmarks/codec_throughput.py --smoke --out /tmp/smoke      # CPU smoke run

Rows:

* anytok ``encodec_24khz``, ``dac_44khz``, ``dac_16khz``, ``snac_24khz``,
  ``wavtokenizer_24khz_75hz``, ``seanet_fsq_24khz`` (``anytok.create_model``), each as
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
)

#: Family of each anytok model (references of the same family are its comparison).
FAMILY: dict[str, str] = {
    "encodec_24khz": "encodec_24k",
    "dac_44khz": "dac_44k",
    "dac_16khz": "dac_16k",
    "snac_24khz": "snac_24k",
    "wavtokenizer_24khz_75hz": "wavtokenizer_24k",
    "seanet_fsq_24khz": "seanet_fsq_24k",
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
        sample_rate: input sample rate in Hz.
        build: returns ``(module, encode, decode)`` on the CPU in fp32; ``decode`` takes what
            ``encode`` returned.
    """

    name: str
    family: str
    impl: str
    variant: str
    sample_rate: int
    build: Callable[[], tuple[nn.Module, EncodeFn, DecodeFn]]


@dataclasses.dataclass
class Row:
    """Result of one case in one dtype (times in ms, throughput in x real time)."""

    name: str
    family: str
    impl: str
    variant: str
    dtype: str
    encode_ms: float | None = None
    decode_ms: float | None = None
    encode_xrt: float | None = None
    decode_xrt: float | None = None
    encode_peak_gib: float | None = None
    decode_peak_gib: float | None = None
    x_ref_encode: float | None = None
    x_ref_decode: float | None = None
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

        def encode(audio: Tensor) -> Tensor:
            return model.encode(audio).audio_codes

        def decode(codes: Tensor) -> Tensor:
            return model.decode(codes).audio_values

        return model, encode, decode

    return Case("transformers.MimiModel", "mimi_24k", "transformers", "eager", 24000, build)


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


def run_case(
    case: Case,
    dtype_name: str,
    device: torch.device,
    args: argparse.Namespace,
) -> Row:
    """Build ``case`` on ``device``, time encode and decode in ``dtype_name``; errors (OOM,
    missing package, API mismatch) are recorded on the row instead of stopping the run."""
    row = Row(case.name, case.family, case.impl, case.variant, dtype_name)
    model: nn.Module | None = None
    try:
        model, encode, decode = case.build()
        model.to(device)
        if case.variant.endswith("compile"):
            encode = torch.compile(encode)
            decode = torch.compile(decode)
        audio = make_audio(args.batch, args.seconds, case.sample_rate, device)
        dtype = DTYPES[dtype_name]
        with torch.inference_mode(), autocast(device, dtype):
            codes = encode(audio)
            row.encode_ms, row.encode_peak_gib = time_calls(
                lambda: encode(audio), device, args.warmup, args.repeats
            )
            row.decode_ms, row.decode_peak_gib = time_calls(
                lambda: decode(codes), device, args.warmup, args.repeats
            )
        audio_s = args.batch * args.seconds
        row.encode_xrt = audio_s / (row.encode_ms / 1e3)
        row.decode_xrt = audio_s / (row.decode_ms / 1e3)
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
        if row.impl != "anytok" or row.encode_xrt is None or row.decode_xrt is None:
            continue
        refs = [
            r
            for r in rows
            if r.impl != "anytok"
            and r.family == row.family
            and r.dtype == row.dtype
            and r.encode_xrt is not None
            and r.decode_xrt is not None
        ]
        if not refs:
            continue
        row.x_ref_encode = row.encode_xrt / max(r.encode_xrt for r in refs)  # type: ignore[type-var]
        row.x_ref_decode = row.decode_xrt / max(r.decode_xrt for r in refs)  # type: ignore[type-var]
        row.goal_met = row.x_ref_encode >= GOAL and row.x_ref_decode >= GOAL


# ---------------------------------------------------------------------------------- report


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The report: settings, then one table row per (case, dtype)."""
    bw = meta["encodec_bandwidth"]
    bandwidth = "every level" if bw is None else f"{bw:g} kbps"
    lines = [
        f"# Codec throughput — {meta['device_name']}",
        "",
        f"{meta['label']}",
        "",
        f"- batch {meta['batch']} × {meta['seconds']} s, warm-up {meta['warmup']}, "
        f"median of {meta['repeats']}; EnCodec at {bandwidth}; "
        f"{'tiny' if meta['tiny'] else 'full-size'} configs, random weights",
        f"- torch {meta['torch']}, Python {meta['python']}, {meta['platform']}",
        f"- x-RT = seconds of audio per second; `x_ref` = anytok / fastest same-family "
        f"reference, same dtype; goal: both ≥ {GOAL}",
        "- anchors: the issue author's H200 numbers (encode / decode x-RT), for orientation",
    ]
    for note in meta["notes"]:
        lines.append(f"- {note}")
    lines += [
        "",
        "| model | impl | variant | dtype | enc x-RT | dec x-RT | enc ms | dec ms "
        "| enc GiB | dec GiB | anchor enc / dec | x_ref enc / dec | goal |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for r in rows:
        anchor = ANCHORS.get(r.family)
        anchor_s = f"{anchor[0]:,.0f} / {anchor[1]:,.0f}" if anchor else ""
        x_ref = f"{r.x_ref_encode:.2f} / {r.x_ref_decode:.2f}" if r.x_ref_encode is not None else ""
        goal = "" if r.goal_met is None else ("yes" if r.goal_met else "no")
        if r.error:
            cells = [r.error.replace("|", "/")] + [""] * 5
        else:
            cells = [
                _num(r.encode_xrt),
                _num(r.decode_xrt),
                _num(r.encode_ms, ",.1f"),
                _num(r.decode_ms, ",.1f"),
                _num(r.encode_peak_gib, ".2f"),
                _num(r.decode_peak_gib, ".2f"),
            ]
        lines.append(
            "| "
            + " | ".join([r.name, r.impl, r.variant, r.dtype, *cells, anchor_s, x_ref, goal])
            + " |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main


def build_cases(args: argparse.Namespace, notes: list[str]) -> list[Case]:
    """Every row of this run, anytok first then references, family by family."""
    bandwidth = None if args.tiny else args.encodec_bandwidth
    variants = ["eager", "fold"] + (["fold+compile"] if args.compile else [])
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
    p.add_argument("--encodec-bandwidth", type=float, default=6.0, help="kbps, all EnCodecs")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument("--tiny", action="store_true", help="tiny configs (anytok's tiny overrides)")
    p.add_argument("--no-references", action="store_true", help="anytok rows only")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--smoke", action="store_true", help="CPU check: 2 x 1 s, tiny, 1 repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.seconds, args.warmup, args.repeats, args.tiny = 2, 1.0, 1, 1, True
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in ANYTOK_MODELS]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {list(ANYTOK_MODELS)}")
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
    with quiet_warnings():
        cases = build_cases(args, notes)
        rows: list[Row] = []
        for case in cases:
            for dtype_name in args.dtypes:
                row = run_case(case, dtype_name, device, args)
                rows.append(row)
                status = row.error or f"{row.encode_xrt:,.0f} / {row.decode_xrt:,.0f} x-RT"
                print(f"{case.name:28s} {case.variant:13s} {dtype_name:9s} {status}", flush=True)
    compare_with_references(rows)
    meta = {
        "device_name": device_name,
        "label": label,
        "batch": args.batch,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "encodec_bandwidth": None if args.tiny else args.encodec_bandwidth,
        "tiny": args.tiny,
        "compile": args.compile,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "notes": notes,
        "anchors_h200": {k: {"encode": v[0], "decode": v[1]} for k, v in ANCHORS.items()},
        "goal": GOAL,
    }
    report = markdown(rows, meta)
    print()
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "codec_throughput.md").write_text(report)
        payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}
        (args.out / "codec_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
