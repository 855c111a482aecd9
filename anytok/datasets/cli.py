"""Command-line entry points: ``anytok encode-dataset`` and ``anytok export-tokens``.

Exit codes: 0 when every item was encoded, 1 when some were skipped (listed in the errors
file), 2 for a usage error (one line on stderr), 130 when interrupted with Ctrl-C (encoded
shards are kept: the same command resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from anytok.cli import parse_args
from anytok.datasets.sources import DatasetError

EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: an unexpected error (the traceback is printed): not a usage error, nor skipped items
EXIT_FAILED = 3
#: Failures printed after a run; the errors file has them all.
MAX_PRINTED_FAILURES = 10


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so every usage error is
    one line and exit code 2, whoever calls the entry point."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def _user_errors() -> tuple[type[BaseException], ...]:
    from anytok.checkpoint import CheckpointError
    from anytok.media import MediaError
    from anytok.registry import UnknownModelError, WeightsNotFoundError

    return (
        DatasetError,
        _UsageError,
        UnknownModelError,
        WeightsNotFoundError,
        CheckpointError,
        MediaError,
        OSError,  # an output path that is a file, a full disk: one line, not a traceback
    )


def _fail(err: BaseException) -> int:
    from anytok.pipeline import error_text

    Console(stderr=True, soft_wrap=True).print(
        f"[red]anytok: error:[/red] {escape(error_text(err))}", highlight=False
    )
    return EXIT_USAGE


def _run(parser: argparse.ArgumentParser, argv: Sequence[str], body, on_interrupt: str = "") -> int:
    try:
        args = parse_args(parser, argv)
        return int(body(args))
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except _user_errors() as err:
        return _fail(err)
    except KeyboardInterrupt:  # Ctrl-C: no traceback; finished shards are kept
        Console(stderr=True, soft_wrap=True).print(
            f"{parser.prog}: interrupted{on_interrupt}", highlight=False
        )
        return EXIT_INTERRUPTED
    except Exception as err:  # a crash (a killed loader worker ...): not "some items skipped"
        import traceback

        from anytok.pipeline import error_text

        traceback.print_exc()
        Console(stderr=True, soft_wrap=True).print(
            f"[red]{parser.prog}: failed:[/red] {escape(error_text(err))}{on_interrupt}",
            highlight=False,
        )
        return EXIT_FAILED


# --------------------------------------------------------------------------- encode-dataset


def encode_dataset_parser() -> argparse.ArgumentParser:
    from anytok.datasets.job import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, DEFAULT_WORKERS

    p = _Parser(
        prog="anytok encode-dataset",
        description="Encode a dataset to Parquet token shards (resumable: run the same "
        "command again after an interruption). See docs/datasets.md.",
    )
    p.add_argument(
        "src", help="folder (recursive), JSONL manifest, or tar shards data-{000..009}.tar"
    )
    p.add_argument("dst", help="output folder (new, empty, or an interrupted run's to resume)")
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="tokenizer: arch[.tag], checkpoint dir, hf-hub:org/name",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="segments per encoder call (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="data-loading processes (local engine) (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (every visible GPU, else cpu), cpu, cuda, or a list cuda:0,cuda:1 "
        "(local: one replica each; ray: auto/cpu/cuda)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="items per shard (default: %(default)s)",
    )
    p.add_argument(
        "--segment",
        choices=["full", "crop", "split"],
        default="full",
        help="audio/video time axis: whole file, first --segment-seconds, or consecutive "
        "segments (default: %(default)s)",
    )
    p.add_argument("--segment-seconds", type=float, help="segment length for crop / split")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this machine's processes; ray: Ray Data (default: %(default)s)",
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    p.add_argument("--actors", type=int, help="Ray encoder actors (default: one per GPU, or 1)")
    p.add_argument("--ray-num-cpus", type=int, help="CPUs of a local Ray cluster (default: all)")
    p.add_argument(
        "--retry-failed", action="store_true", help="re-encode shards that recorded failures"
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    return p


def encode_dataset_from_cli(argv: list[str]) -> int:
    """``anytok encode-dataset SRC DST -m MODEL [options]``; returns the exit code."""

    def body(args: argparse.Namespace) -> int:
        from anytok.datasets.job import encode_dataset

        progress = sys.stderr.isatty() if args.progress is None else args.progress
        summary = encode_dataset(
            args.src,
            args.dst,
            args.model,
            batch_size=args.batch_size,
            workers=args.workers,
            shard_size=args.shard_size,
            engine=args.engine,
            devices=args.device,
            segment=args.segment,
            segment_seconds=args.segment_seconds,
            retry_failed=args.retry_failed,
            address=args.address,
            actors=args.actors,
            ray_num_cpus=args.ray_num_cpus,
            progress=progress,
        )
        if args.json:
            print(json.dumps(summary.to_dict(), indent=2, default=str))
        else:
            _print_summary(summary)
        return EXIT_OK if summary.ok else EXIT_SKIPPED

    resume = "; run the same command again to resume"
    return _run(encode_dataset_parser(), argv, body, on_interrupt=resume)


def _print_summary(summary) -> None:
    console = Console(soft_wrap=True, highlight=False)
    text = (
        f"encoded {summary.encoded} of {summary.items} item(s) into {summary.shards} shard(s) "
        f"in {summary.dst}: {summary.rows} row(s), {summary.tokens:,} tokens"
    )
    if summary.media_seconds:
        text += f", {summary.media_seconds:.1f} s of media"
    console.print(text, markup=False)
    run = (
        f"this run ({summary.engine}): {summary.shards_written} shard(s) written, "
        f"{summary.shards_skipped} already done, {summary.items_this_run} item(s) in "
        f"{summary.elapsed:.1f} s ({summary.items_per_second:.1f} items/s"
    )
    if summary.media_seconds_this_run:
        run += f", {summary.realtime_factor:.1f}x realtime"
    console.print(run + ")", markup=False)
    if summary.failures:
        err = Console(stderr=True, soft_wrap=True, highlight=False)
        err.print(
            f"[red]skipped {summary.failed} item(s)[/red], listed in "
            f"{escape(str(summary.errors_file))}:"
        )
        for failure in summary.failures[:MAX_PRINTED_FAILURES]:
            err.print(f"  {failure['source']}: {failure['error']}", markup=False)
        if summary.failed > MAX_PRINTED_FAILURES:
            err.print(f"  … and {summary.failed - MAX_PRINTED_FAILURES} more")


# --------------------------------------------------------------------------- export-tokens


def export_tokens_parser() -> argparse.ArgumentParser:
    from anytok.tokens import PATTERNS

    p = _Parser(
        prog="anytok export-tokens",
        description="Export an encoded dataset to LM token files: a flat nanoGPT-style .bin, "
        "or Megatron-LM .bin + .idx; OUT.json describes the ids. See docs/datasets.md.",
    )
    p.add_argument("dataset", help="output folder of `anytok encode-dataset`")
    p.add_argument(
        "out",
        help="path prefix of the files to write (OUT.bin, OUT.idx, OUT.json); "
        "a trailing .bin/.idx/.json is dropped",
    )
    p.add_argument(
        "--format",
        choices=["bin", "megatron"],
        default="bin",
        help="bin: one flat nanoGPT-style file; megatron: .bin + .idx (default: %(default)s)",
    )
    p.add_argument(
        "--pattern",
        choices=list(PATTERNS),
        default="flatten",
        help="how levels interleave, as Tokens.to_lm_ids (default: %(default)s)",
    )
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        help="first code id (ids below are the LM's own) (default: %(default)s)",
    )
    p.add_argument("--shared-levels", action="store_true", help="all levels share one id range")
    p.add_argument("--no-special", action="store_true", help="no bos / eos around each item")
    return p


def export_tokens_from_cli(argv: list[str]) -> int:
    """``anytok export-tokens DATASET OUT [options]``; returns the exit code."""

    def body(args: argparse.Namespace) -> int:
        from anytok.datasets.export import export_tokens

        summary = export_tokens(
            args.dataset,
            args.out,
            layout=args.format,
            pattern=args.pattern,
            offset=args.offset,
            shared_levels=args.shared_levels,
            add_special=not args.no_special,
        )
        Console(soft_wrap=True, highlight=False).print(
            f"exported {summary.documents} document(s), {summary.tokens:,} ids "
            f"({summary.dtype}, vocabulary {summary.vocab_size}) to "
            + ", ".join(str(f) for f in summary.files),
            markup=False,
        )
        return EXIT_OK

    return _run(export_tokens_parser(), argv, body)


__all__ = [
    "encode_dataset_from_cli",
    "encode_dataset_parser",
    "export_tokens_from_cli",
    "export_tokens_parser",
]
