"""The ``anytok`` command: list, info, encode, decode, demo.

User mistakes (unknown model, missing file, bad media) end with one line on stderr and exit
code 2; a batch job that skipped files exits 1 after writing everything else.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, no traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from anytok.checkpoint import CheckpointError
    from anytok.devices import DeviceError
    from anytok.media import MediaError
    from anytok.registry import UnknownModelError, WeightsNotFoundError

    return (
        UserError,
        UnknownModelError,
        WeightsNotFoundError,
        CheckpointError,
        MediaError,
        DeviceError,
        OSError,  # an output path that is a file, a full disk: one line, not a traceback
    )


def unrecognized_arguments(parser: argparse.ArgumentParser, extras: Sequence[str]) -> NoReturn:
    """argparse's "unrecognized arguments" error, from the (sub)command's own parser so that
    its usage is shown, naming the closest option of each misspelt one (``--batchsize``:
    ``--batch-size``). Exits with code 2."""
    options = [o for action in parser._actions for o in action.option_strings]
    guesses = []
    for word in extras:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag not in options:
            close = difflib.get_close_matches(flag.replace("_", "-"), options, n=1, cutoff=0.6)
            guesses += [f"{close[0]} for {flag}"] if close else []
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str], *, intermixed: bool = False
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (or ``parse_intermixed_args``) that names the closest option
    of a misspelt one (:func:`unrecognized_arguments`)."""
    parse = parser.parse_known_intermixed_args if intermixed else parser.parse_known_args
    args, extras = parse(list(argv))
    if extras:
        unrecognized_arguments(parser, extras)
    return args


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


# --------------------------------------------------------------------------- list / info


def cmd_list(args: argparse.Namespace) -> int:
    from anytok.registry import DEFAULT_MODELS, get_arch, list_models

    if args.recipes:
        from anytok.train.config import bundled_recipes

        recipes = [r for r in bundled_recipes() if args.modality in (None, r.split("/")[0])]
        print(json.dumps(recipes) if args.json else "\n".join(recipes))
        return EXIT_OK
    names = list_models(args.modality)
    if args.json:
        print(json.dumps(list_models(args.modality, tags=True) if args.tags else names))
        return EXIT_OK
    defaults = set(DEFAULT_MODELS.values())
    labels = [f"{name} (default)" if name in defaults else name for name in names]
    infos = [get_arch(name) for name in names]
    tag_texts = [", ".join(sorted(info.pretrained)) for info in infos]
    # One line per tokenizer: names, modalities and tags are never cut (names are what users
    # copy); descriptions are cut to what the terminal leaves (at 80 columns they wrapped to
    # 5-7 lines each). 13 = the borders and padding of four columns.
    name_width = max(map(len, labels), default=4)
    tags_width = max(map(len, tag_texts), default=4)
    rest = console.width - name_width - len("modality") - tags_width - 13
    table = Table(
        title="anytok tokenizers", caption="`anytok info NAME` describes one tokenizer in full"
    )
    table.add_column("name", no_wrap=True, min_width=name_width)
    table.add_column("modality", no_wrap=True)
    table.add_column("tags", no_wrap=True, min_width=min(tags_width, 30))
    table.add_column("description", no_wrap=True, overflow="ellipsis", max_width=max(rest, 12))
    for label, info in zip(labels, infos):
        tags = ", ".join(
            f"[bold]{t}[/bold]" if t == info.default_tag else t for t in sorted(info.pretrained)
        )
        table.add_row(label, info.modality, tags, info.description)
    console.print(table)
    return EXIT_OK


def _spec_details(model: Any) -> dict[str, object]:
    """The model's token spec (every level), and the levels ``encode`` gives by default."""
    spec, default = model.spec, model.default_spec
    details: dict[str, object] = {
        "codebook_sizes": list(spec.codebook_sizes),
        "layout": ["level", *spec.layout],
        "frame_rate": spec.frame_rate,
        "sample_rate": spec.sample_rate,
        "channels": spec.channels,
        "resolution": spec.resolution,
        "fps": spec.fps,
        "bits_per_position": spec.bits_per_position,
    }
    if default.num_levels != spec.num_levels:
        details["levels_by_default"] = default.num_levels
        details["bits_per_position_by_default"] = default.bits_per_position
    return details


def _checkpoint_details(name: str) -> dict[str, object]:
    """``anytok info`` of a checkpoint folder or ``hf-hub:`` id: what its config.json says."""
    import anytok
    from anytok.checkpoint import read_config
    from anytok.nn.conv import count_parameters
    from anytok.registry import get_arch

    model = anytok.load(name)
    written = read_config(Path(model.anytok_checkpoint_dir))  # the folder (or Hub snapshot)
    config, arch, extra = written["config"], written["architecture"], written.get("extra", {})
    info = get_arch(arch)
    trained = f", step {extra['step']}" if "step" in extra else ""
    weights = f", {extra['weights']} weights" if "weights" in extra else ""
    return {
        "name": name,
        "architecture": arch,
        "modality": model.modality,
        "architecture_description": info.description,  # its default size; see "config"
        "paper": info.paper,
        "weights": f"checkpoint {name}{trained}{weights}",
        "parameters": count_parameters(model),
        "token_spec": _spec_details(model),
        "config": config,
    }


def cmd_info(args: argparse.Namespace) -> int:
    from anytok.nn.conv import count_parameters
    from anytok.registry import create_model, is_checkpoint_path, resolve

    # The rule anytok.load follows: a folder ./divot of outputs does not hide the arch divot.
    if args.name.startswith("hf-hub:") or is_checkpoint_path(args.name):
        details = _checkpoint_details(args.name)
    else:
        info, cfg = resolve(args.name)
        model = create_model(info.name)
        details = {
            "name": f"{info.name}.{cfg.tag}",
            "modality": info.modality,
            "description": info.description,
            "paper": info.paper,
            "weights": "untrained (random initialisation)"
            if not cfg.trained
            else (cfg.hf_hub_id or "local"),
            "license": cfg.license,
            "parameters": count_parameters(model),
            "token_spec": _spec_details(model),
            "tags": sorted(info.pretrained),
            "default_config": info.default_config,
        }
    if args.json:
        print(json.dumps(details, indent=2))
        return EXIT_OK
    table = Table(show_header=False, title=str(details["name"]))
    table.add_column(style="bold")
    table.add_column()
    for key, value in details.items():
        if value is None:  # not stated (the license of random weights, say); null in --json
            text = "-"
        else:
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(key, escape(text))
    console.print(table)
    return EXIT_OK


# --------------------------------------------------------------------------- encode / decode


def _load_model(name: str, device: str):
    import anytok

    model = anytok.load(name, device=device)
    tag = getattr(model, "anytok_tag", "")
    if tag == "untrained":
        err_console.print(f"[yellow]note:[/yellow] {escape(name)} has untrained (random) weights")
    return model


def _print_failures(failures: Sequence, what: str) -> None:
    if not failures:
        return
    err_console.print(f"[red]skipped {len(failures)} {what}:[/red]")
    for failure in failures:
        first, *rest = str(failure.error).splitlines() or [""]
        err_console.print(f"  {failure.path}: {first}", markup=False, highlight=False)
        for line in rest:  # a hint under its failure
            err_console.print(f"    {line}", markup=False, highlight=False)


def _finish_job(report, as_json: bool, summary: str, what: str) -> int:
    """Print a job's report (JSON on stdout, or the summary line and the skipped files);
    the exit code: 0 when everything was done, 1 when something was skipped."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(summary, markup=False, highlight=False)
        _print_failures(report.failures, what)
    return EXIT_OK if report.ok else EXIT_SKIPPED


def _rate(items: int, seconds: float) -> str:
    """`` (12.3 files/s)``, or `` (4.1 s/file)`` when slower than one file a second."""
    if not items or seconds <= 0:
        return ""
    rate = items / seconds
    return f" ({rate:.1f} files/s)" if rate >= 1 else f" ({seconds / items:.1f} s/file)"


def _long_seconds(value: float | None) -> float | None:
    """``--long-seconds``: None (not given) -> the pipeline's default, negative -> never."""
    from anytok.pipeline import LONG_ITEM_SECONDS

    if value is None:
        return LONG_ITEM_SECONDS
    if math.isnan(value):
        raise UserError("--long-seconds must be a number of seconds (-1: never), got nan")
    return None if value < 0 else value


def _output_folder(path: str) -> None:
    """``-o``: created and checked writable before any model loads or file is read."""
    from anytok.pipeline import prepare_output_folder

    try:
        prepare_output_folder(path, keep=False)
    except ValueError as err:
        raise UserError(f"-o/--output {err}") from err


def _check_inputs_exist(inputs: Sequence[str]) -> None:
    """Refuse a job none of whose inputs exist, before any model loads (a job with some
    existing inputs runs them and reports the missing ones as skipped)."""
    if not any(Path(p).expanduser().exists() for p in inputs):
        raise UserError(f"no such file or folder: {', '.join(inputs)}")


def _modality_of_inputs(inputs: Sequence[str]) -> str:
    """The one modality of the media among ``inputs`` (for the default tokenizer)."""
    from anytok.media import find_media, modality_of

    existing = [p for p in inputs if Path(p).expanduser().exists()]
    found = {modality_of(p) for p in find_media(existing)} - {None} if existing else set()
    if len(found) == 1:
        return found.pop()
    if not found:  # naming a tokenizer would not help
        raise UserError(
            f"no media files in {', '.join(existing)}: encode takes audio, image and video "
            "files by their extension (.wav, .flac, .png, .jpg, .mp4 ...), searching folders "
            "recursively"
        )
    raise UserError(
        f"{' and '.join(sorted(found))} files in {', '.join(inputs)}: name a tokenizer with "
        "-m/--model or a modality with --modality (see `anytok list`)"
    )


def cmd_encode(args: argparse.Namespace) -> int:
    from anytok.pipeline import encode_files
    from anytok.registry import DEFAULT_MODELS

    long_seconds = _long_seconds(args.long_seconds)
    _check_inputs_exist(args.inputs)
    _output_folder(args.output)
    modality = args.modality or (None if args.model else _modality_of_inputs(args.inputs))
    name = args.model or DEFAULT_MODELS[modality]
    if not args.model:
        err_console.print(f"note: {modality} files: using the default tokenizer {name} (-m)")
    model = _load_model(name, args.device)
    with _progress() as progress:
        task = progress.add_task("encoding", total=None)
        report = encode_files(
            model,
            args.inputs,
            args.output,
            batch_size=args.batch_size,
            fmt=args.format,
            long_seconds=long_seconds,
            on_item=lambda _p, _f: progress.advance(task),
            on_start=lambda total: progress.update(task, total=total),
        )
    summary = f"encoded {report.items} file(s) to {args.output}: {report.tokens} tokens"
    if report.media_seconds:
        summary += f", {report.media_seconds:.1f} s of media"
    summary += f" in {report.elapsed:.1f} s{_rate(report.items, report.elapsed)}"
    return _finish_job(report, args.json, summary, "input(s)")


def cmd_decode(args: argparse.Namespace) -> int:
    from anytok.pipeline import decode_files

    cache: dict[str, object] = {}

    def model_for(tokens):
        name = args.model or tokens.spec.name
        if not name:
            raise ValueError("the token file does not name its tokenizer: pass -m/--model")
        if name not in cache:
            cache[name] = _load_model(name, args.device)
        return cache[name]

    long_seconds = _long_seconds(args.long_seconds)
    _check_inputs_exist(args.inputs)
    _output_folder(args.output)
    with _progress() as progress:
        task = progress.add_task("decoding", total=None)
        report = decode_files(
            args.inputs,
            Path(args.output),
            model_for,
            on_item=lambda _p, _f: progress.advance(task),
            on_start=lambda total: progress.update(task, total=total),
            long_seconds=long_seconds,
        )
    if not report.items and not report.failures:  # nothing was found to decode
        raise UserError(f"no token files (*.tokens.safetensors / *.tokens.npz) in {args.inputs}")
    summary = f"decoded {report.items} file(s) to {args.output}"
    if report.media_seconds:
        summary += f": {report.media_seconds:.1f} s of media"
    summary += f" in {report.elapsed:.1f} s"
    return _finish_job(report, args.json, summary, "token file(s)")


def cmd_demo(args: argparse.Namespace) -> int:
    from anytok.demo import run_demo

    run_demo(Path(args.out), device=args.device, console=console)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _version() -> str:
    from anytok import __version__

    return __version__


def _add_job_options(p: argparse.ArgumentParser, long_help: str, long_function: str) -> None:
    """``--device``, ``--json`` and ``--long-seconds``, shared by encode and decode."""
    from anytok.devices import DEVICE_HELP
    from anytok.pipeline import LONG_ITEM_SECONDS

    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--long-seconds",
        type=float,
        help=f"{long_help} of bounded memory ({long_function}; default "
        f"{LONG_ITEM_SECONDS:g}; 0: every file, -1: never)",
    )


def build_parser() -> argparse.ArgumentParser:
    more = "\n".join(f"  {name:<16}{help_}" for name, (_, _, help_) in DELEGATED.items())
    parser = argparse.ArgumentParser(
        prog="anytok",
        description="Audio, image and video tokenizers for language models.",
        epilog=f"more commands (see `anytok COMMAND --help`):\n{more}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    parser.add_argument("--version", action="version", version=f"anytok {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")

    p = add_command("list", "list registered tokenizers")
    p.add_argument("--modality", choices=["audio", "image", "video"], help="only this modality")
    p.add_argument("--tags", action="store_true", help="list every arch.tag (with --json)")
    p.add_argument(
        "--recipes", action="store_true", help="list the shipped training recipes instead"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = add_command("info", "describe one tokenizer")
    p.add_argument("name", help="arch, arch.tag, checkpoint dir or hf-hub:org/name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = add_command("encode", "encode media files or folders to token files")
    p.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    p.add_argument(
        "-m",
        "--model",
        help="tokenizer name, arch.tag, checkpoint dir or hf-hub:org/name (default: the "
        "default tokenizer of the inputs' modality, see `anytok list`)",
    )
    p.add_argument(
        "--modality",
        choices=["audio", "image", "video"],
        help="use this modality's default tokenizer",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=["safetensors", "npz"],
        default="safetensors",
        help="token file format (default: safetensors)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="files per encoder call (default: 8)")
    _add_job_options(p, "files longer than this are encoded alone, in chunks", "encode_long")
    p.set_defaults(func=cmd_encode)

    p = add_command("decode", "decode token files back to media")
    p.add_argument("inputs", nargs="+", help="token files or folders")
    p.add_argument("-m", "--model", help="tokenizer (default: the one named in each token file)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_job_options(p, "token files of more media than this are decoded in chunks", "decode_long")
    p.set_defaults(func=cmd_decode)

    p = add_command("demo", "encode and decode bundled samples with each default tokenizer")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:K")
    p.set_defaults(func=cmd_demo)
    return parser


#: Subcommands whose own argument parsers live with their package: name -> (module, function).
DELEGATED = {
    "train": ("anytok.train", "run_from_cli", "train a codec from a YAML recipe"),
    "export": ("anytok.train", "export_from_cli", "export a training run as a loadable checkpoint"),
    "bench": ("anytok.bench", "bench_from_cli", "reconstruction and throughput benchmarks"),
    "encode-dataset": (
        "anytok.datasets",
        "encode_dataset_from_cli",
        "encode a dataset to token shards",
    ),
    "export-tokens": (
        "anytok.datasets",
        "export_tokens_from_cli",
        "export token shards for LM trainers",
    ),
}


def _builtin_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands ``build_parser`` defines itself (``list``, ``info`` ...)."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the built-in subcommand ``name`` (for its usage in errors)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    return parser


def _run_delegated(name: str, argv: list[str]) -> int:
    import importlib

    module_name, function, _ = DELEGATED[name]
    module = importlib.import_module(module_name)
    return int(getattr(module, function)(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = 0  # global --debug options before a delegated command
    while lead < len(argv) and argv[lead] == "--debug":
        lead += 1
    if lead < len(argv) and argv[lead] in DELEGATED:
        try:
            return _run_delegated(argv[lead], argv[lead + 1 :])
        except _user_errors() as err:
            if lead:
                raise
            err_console.print(f"[red]anytok: error:[/red] {escape(str(err))}", highlight=False)
            return EXIT_USAGE
    parser = build_parser()
    if argv and not argv[0].startswith("-"):
        commands = [*_builtin_commands(parser), *DELEGATED]
        if argv[0] not in commands:
            close = difflib.get_close_matches(argv[0], commands, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            err_console.print(
                f"anytok: error: unknown command {argv[0]!r}{hint}; "
                f"the commands are {', '.join(commands)}",
                markup=False,
                highlight=False,
            )
            return EXIT_USAGE
    args, extras = parser.parse_known_args(argv)
    command = _subcommand_parser(parser, args.command)
    if extras:
        unrecognized_arguments(command, extras)
    if getattr(args, "batch_size", 1) < 1:
        command.error("--batch-size must be >= 1")
    try:
        if hasattr(args, "device"):  # checked before any model loads
            from anytok.devices import parse_device

            args.device = str(parse_device(args.device))
        return int(args.func(args))
    except _user_errors() as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()
        err_console.print(
            f"[red]anytok: error:[/red] {escape(message[0]) if message else type(err).__name__}",
            highlight=False,
        )
        for line in message[1:]:
            err_console.print(line, markup=False, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("anytok: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
