"""Command-line entry points: ``anytok train`` and ``anytok export`` (wired in
:mod:`anytok.cli`), also runnable as ``python -m anytok.train``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from anytok.cli import parse_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytok train",
        description=(
            "Train a tokenizer from a YAML recipe. Under torchrun, every process trains "
            "one shard with DistributedDataParallel."
        ),
        epilog=(
            "example: anytok train recipes/audio/seanet_fsq_24khz_tiny.yaml "
            "data.train=data/speech train.steps=200"
        ),
    )
    parser.add_argument(
        "recipe",
        help="a recipe YAML file, or a shipped recipe's name: seanet_fsq_24khz_tiny, "
        "audio/dac_44khz ... (recipes/<modality>/*.yaml in a checkout)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. data.train=/data/speech train.batch_size=4",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in the run directory",
    )
    parser.add_argument(
        "--run-dir", help="where logs, samples and checkpoints go (default: runs/<recipe name>)"
    )
    parser.add_argument(
        "--device",
        help="cpu, cuda or cuda:K (default: cuda when available; torchrun: one per rank)",
    )
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from anytok.checkpoint import CheckpointError
    from anytok.data import DataError, ManifestError
    from anytok.media import MediaError
    from anytok.registry import UnknownModelError, WeightsNotFoundError
    from anytok.train.config import RecipeError
    from anytok.train.distributed import DeviceError

    return (
        RecipeError,
        DeviceError,
        ManifestError,
        DataError,
        FileNotFoundError,
        UnknownModelError,
        WeightsNotFoundError,
        CheckpointError,
        MediaError,
    )


def _exit_code(err: SystemExit) -> int:
    return err.code if isinstance(err.code, int) else (EXIT_OK if err.code is None else EXIT_USAGE)


def run_from_cli(argv: Sequence[str]) -> int:
    """``anytok train RECIPE [key=value ...] [--resume] [--run-dir DIR] [--device DEV]``.

    Returns 0 when training finished, 128 + the signal number when SIGINT / SIGTERM stopped
    it (after a checkpoint: ``--resume`` continues), 2 for a mistake in the recipe, data or
    arguments (one line on stderr, no traceback).
    """
    try:
        args = parse_train_args(argv)
    except SystemExit as err:  # --help, or argparse's own usage error
        return _exit_code(err)
    from anytok.train.loop import train

    try:
        result = train(
            args.recipe,
            args.run_dir,
            overrides=args.overrides,
            resume=args.resume,
            device=args.device,
        )
    except _user_errors() as err:
        print(f"anytok train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    # Stopped by a signal after its checkpoint: the shell's 128 + signal number, so a job
    # script can tell a finished run from one to resume.
    return EXIT_OK if result.stopped_by is None else 128 + result.stopped_by


def parse_export_args(argv: Sequence[str]) -> argparse.Namespace:
    """``anytok export``'s arguments (``out_dir`` resolved from either spelling); argparse's
    ``SystemExit`` on a mistake."""
    parser = argparse.ArgumentParser(
        prog="anytok export",
        description="Export a training run's generator as a loadable anytok checkpoint.",
    )
    parser.add_argument("run_dir", help="a folder written by anytok train")
    parser.add_argument("out_dir", nargs="?", help="destination folder (or -o OUT_DIR)")
    parser.add_argument("-o", "--out", dest="out_option", metavar="OUT_DIR", help="= out_dir")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    parser.add_argument("--checkpoint", help="a checkpoints/step_* folder (default: the newest)")
    args = parse_args(parser, argv)
    if (args.out_dir is None) == (args.out_option is None):
        parser.error("give the destination folder once: OUT_DIR or -o OUT_DIR")
    args.out_dir = args.out_dir or args.out_option
    return args


def parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    """``anytok train``'s arguments; overrides may come before or after the options
    (``--run-dir r x=1``). argparse's ``SystemExit`` on a mistake."""
    return parse_args(_train_parser(), argv, intermixed=True)


def export_from_cli(argv: Sequence[str]) -> int:
    """``anytok export RUN_DIR (OUT_DIR | -o OUT_DIR) [--no-ema] [--checkpoint DIR]``.

    Writes the run's generator as ``config.json`` + ``model.safetensors`` that
    ``anytok.load(OUT_DIR)`` and ``anytok encode --model OUT_DIR`` open.
    """
    try:
        args = parse_export_args(argv)
    except SystemExit as err:
        return _exit_code(err)
    from anytok.train.export import export_run

    try:
        out = export_run(
            args.run_dir,
            args.out_dir,
            use_ema=not args.no_ema,
            checkpoint=args.checkpoint,
        )
    except (*_user_errors(), ValueError) as err:
        print(f"anytok export: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(out)
    return EXIT_OK


__all__ = ["export_from_cli", "parse_export_args", "parse_train_args", "run_from_cli"]
