"""``anytok bench``: reconstruction and throughput benchmarks from the command line.

Exit codes: 0 when every file and tokenizer was benchmarked, 1 when files were skipped or a
tokenizer failed (the report is written all the same), 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anytok.bench.report import fmt, metric_columns, write_reports
from anytok.bench.runner import BenchInputError, BenchSettings, run_bench
from anytok.bench.suite import MetricModels
from anytok.bench.sweeps import LEVELS, PERTURB, parse_sweep
from anytok.cli import parse_args
from anytok.devices import DEVICE_HELP, DeviceError, parse_device
from anytok.metrics.weights import MetricWeightsError, ModelWeights

EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2

EXAMPLES = """examples:
  anytok bench -m seanet_fsq_24khz -m ./my_codec speech/ -o bench_out --levels 1,2,4
  anytok bench -m cnn_fsq_256 photos/ -o bench_img --lpips alex:lpips_alex.safetensors \\
      --fid-inception pt_inception.safetensors --regions regions.json
  anytok bench -m my_1d_tokenizer photos/ -o out --sweep prefix=32,64,128
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytok bench",
        description="Benchmark tokenizers on a folder of media: fidelity metrics, bitrate, "
        "token statistics and throughput, written as JSON, Markdown and PNG plots.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", nargs="+", type=Path, help="media files or folders")
    parser.add_argument(
        "-m", "--model", action="append", required=True, dest="models", metavar="NAME",
        help="tokenizer: name, arch.tag, checkpoint dir or hf-hub:org/name (repeat to compare)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, type=Path, help="report folder")
    parser.add_argument(
        "--max-items", type=int, help="at most this many items per tokenizer (default: all)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="items per call, also the throughput batch (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--levels", help="residual levels to decode, e.g. 1,2,4,8 (same as --sweep levels=...)"
    )
    parser.add_argument(
        "--perturb",
        help="pFID-style robustness: also decode with these fractions of codes replaced at "
        "random, e.g. 0.05,0.1 (same as --sweep perturb=...)",
    )
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="AXIS=V1,V2",
        help="operating points a tokenizer offers (e.g. prefix=32,64 or steps=1,4); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls before timing (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls for throughput (default: %(default)s)"
    )
    parser.add_argument(
        "--image-size",
        help="encode images / video frames at HxW (or one number) instead of the model's size",
    )
    parser.add_argument(
        "--max-seconds", type=float, help="crop audio / video items to this (default: no crop)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    group = parser.add_argument_group(
        "model-based metrics (safetensors weights; each is skipped with a note when absent)"
    )
    group.add_argument(
        "--utmos", metavar="[ARCH:]PATH", help="UTMOS22 strong weights (ARCH: its SSL encoder)"
    )
    group.add_argument(
        "--speaker-model", metavar="[ARCH:]PATH",
        help="speaker encoder for spk_sim (ARCH: wavlm_base (default), wav2vec2_base, hubert_base ...)",
    )  # fmt: skip
    group.add_argument(
        "--asr-model", metavar="[ARCH:]PATH",
        help="CTC ASR model for wer / dwer (ARCH default wav2vec2_base)",
    )  # fmt: skip
    group.add_argument(
        "--asr-labels", type=Path, metavar="JSON",
        help="the ASR model's output symbols, a JSON list (default: English letters)",
    )  # fmt: skip
    group.add_argument(
        "--transcripts", type=Path, metavar="JSON",
        help="transcripts by file for wer (else a .txt of the same name beside each audio "
        "file; else dwer against the ASR of the input)",
    )  # fmt: skip
    group.add_argument(
        "--lpips", metavar="[NET:]PATH", help="LPIPS weights (NET: alex|vgg|squeeze)"
    )
    group.add_argument("--fid-inception", type=Path, metavar="PATH", help="FID Inception weights")
    group.add_argument("--i3d", type=Path, metavar="PATH", help="I3D weights for FVD")
    group.add_argument(
        "--regions", type=Path, metavar="JSON", help="text / face region annotations (images)"
    )
    group.add_argument("--ocr-model", type=Path, metavar="PATH", help="CRNN OCR weights")
    group.add_argument(
        "--face-model", metavar="ARCH:PATH", help="face embedding model (torchvision ARCH)"
    )
    return parser


def _image_size(text: str | None, parser: argparse.ArgumentParser) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parser.error(f"--image-size {text!r}: write HxW or one number")
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        parser.error(f"--image-size {text!r}: write HxW or one number")
    return parts[0], parts[1]


def _asr_labels(path: Path) -> tuple[str, ...]:
    """``--asr-labels``: a JSON list of the ASR head's label strings (CTC vocabulary)."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"--asr-labels {path}: not valid JSON ({err})") from err
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(
            f"--asr-labels {path}: must be a JSON list of label strings, got "
            f"{type(labels).__name__}"
        )
    return tuple(labels)


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchSettings:
    """Check the arguments and build :class:`BenchSettings` (usage errors exit with 2)."""
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.max_items is not None and args.max_items < 1:
        parser.error("--max-items must be >= 1")
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    if args.max_seconds is not None and not (
        math.isfinite(args.max_seconds) and args.max_seconds > 0
    ):
        parser.error(f"--max-seconds must be a positive number of seconds, got {args.max_seconds}")
    # Before any work: a benchmark must not run for an hour and then fail to write its report.
    output = Path(args.output)
    blocker = next((p for p in (output, *output.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        parser.error(f"-o/--output {output}: {blocker} is a file, not a folder")
    from anytok.pipeline import prepare_output_folder

    try:
        prepare_output_folder(output, keep=False)  # unwritable folders fail before the work
    except ValueError as err:
        parser.error(f"-o/--output {err}")
    sweeps: dict[str, list[Any]] = {}
    texts = list(args.sweep) + ([f"{LEVELS}={args.levels}"] if args.levels else [])
    texts += [f"{PERTURB}={args.perturb}"] if args.perturb else []
    for text in texts:
        try:
            axis, values = parse_sweep(text)
        except ValueError as err:
            parser.error(str(err))
        if axis == LEVELS and not all(isinstance(v, int) and v >= 1 for v in values):
            parser.error(f"levels must be positive integers, got {values}")
        if axis == PERTURB and not all(
            isinstance(v, (int, float)) and 0 < v <= 1 for v in values
        ):  # NaN fails the comparison too
            parser.error(f"perturb rates must be in (0, 1], got {values}")
        sweeps.setdefault(axis, [])
        sweeps[axis] += [v for v in values if v not in sweeps[axis]]
    labels = None
    if args.asr_labels is not None:
        labels = _asr_labels(args.asr_labels)
    weights = MetricModels(
        utmos=ModelWeights.parse(args.utmos) if args.utmos else None,
        speaker=ModelWeights.parse(args.speaker_model) if args.speaker_model else None,
        asr=ModelWeights.parse(args.asr_model) if args.asr_model else None,
        asr_labels=labels,
        lpips=ModelWeights.parse(args.lpips) if args.lpips else None,
        fid_inception=args.fid_inception,
        i3d=args.i3d,
        ocr=args.ocr_model,
        face=ModelWeights.parse(args.face_model) if args.face_model else None,
    )
    return BenchSettings(
        models=args.models,
        data=list(args.data),
        max_items=args.max_items,
        batch_size=args.batch_size,
        device=args.device,
        sweeps=sweeps,
        warmup=args.warmup,
        repeats=args.repeats,
        image_size=_image_size(args.image_size, parser),
        max_seconds=args.max_seconds,
        transcripts=args.transcripts,
        regions=args.regions,
        metric_models=weights,
    )


def _summary_table(report: dict[str, Any]) -> Table:
    table = Table(title="anytok bench (means; full tables in report.md)")
    for column in ("model", "point", "rate", "metrics"):
        table.add_column(column)
    for model in report["models"]:
        if "error" in model:
            table.add_row(
                escape(model["label"]), "", "", f"[red]failed: {escape(model['error'])}[/red]"
            )
            continue
        columns = metric_columns([model], model["modality"])[:4]
        for result in model["results"]:
            rate = result["rate"]
            text = (
                f"{fmt(rate.get('bits_per_pixel'))} bpp"
                if model["modality"] == "image"
                else f"{fmt(rate.get('kbps'))} kbps"
            )
            metrics = ", ".join(
                f"{c} {fmt(result['metrics'].get(c, {}).get('mean'))}" for c in columns
            )
            table.add_row(escape(model["label"]), escape(result["label"]), text, metrics)
    return table


def bench_from_cli(argv: list[str]) -> int:
    """Entry point of ``anytok bench ARGS`` (wired by :mod:`anytok.cli`)."""
    parser = build_parser()
    args = parse_args(parser, argv)
    console = Console(stderr=True, soft_wrap=True)
    out = Console(soft_wrap=True)
    try:
        args.device = str(parse_device(args.device))
        settings = settings_from_args(args, parser)
    except (OSError, ValueError, DeviceError) as err:  # e.g. an unreadable --asr-labels file
        console.print(f"[red]anytok bench: error:[/red] {escape(str(err))}", highlight=False)
        return EXIT_USAGE
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def on_model(name: str, files: int) -> None:
        limit = files if args.max_items is None else min(files, args.max_items)
        tasks[name] = progress.add_task(name, total=limit)

    def on_file(name: str, path: Path, error: str | None) -> None:
        progress.advance(tasks[name])

    try:
        with progress:
            report = run_bench(settings, on_model=on_model, on_file=on_file)
    except (MetricWeightsError, BenchInputError) as err:
        console.print(f"[red]anytok bench: error:[/red] {escape(str(err))}", highlight=False)
        return EXIT_USAGE
    written = write_reports(report, args.output, plots=not args.no_plots)
    out.print(_summary_table(report))
    plots = sum(1 for path in written.values() if path.suffix == ".png")
    out.print(
        f"wrote {written['json']}, {written['markdown']} and {plots} plot(s) to {args.output}",
        markup=False,
    )
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(str(note))}", highlight=False)
    if report["skipped"]:
        console.print(f"[red]skipped {len(report['skipped'])} file(s):[/red]")
        for failure in report["skipped"]:
            console.print(f"  {failure['path']}: {failure['error']}", markup=False, highlight=False)
    # A tokenizer that measured nothing (no file of its modality) is no success either.
    failed = [m for m in report["models"] if "error" in m or not m.get("items")]
    return EXIT_SKIPPED if report["skipped"] or failed else EXIT_OK


__all__ = ["bench_from_cli", "build_parser", "settings_from_args"]
