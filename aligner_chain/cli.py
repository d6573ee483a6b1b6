"""The ``aligner-chain`` command: one entry point, one subcommand per registered module.

A subcommand module provides ``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
its top-level imports light (heavy libraries load inside ``run``). A ``ValueError`` out of ``run`` is a
usage or data error: one line on stderr, exit status 2. Subcommands that live in an extra
(``train``, ``bootstrap``, ``eval``) stay listed when the extra is missing and say what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "quiet_progress"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Subcommand:
    """Where a subcommand lives and, if it needs an extra, which one."""

    module: str
    extra: str | None = None


SUBCOMMANDS: dict[str, Subcommand] = {
    "correct": Subcommand("aligner_chain.correct_command"),
    "train": Subcommand("training.aligner.command", extra="train"),
    "bootstrap": Subcommand("training.bootstrap.command", extra="train"),
    "eval": Subcommand("training.evaluation.command", extra="train"),
}


def quiet_progress() -> None:
    """Silence every progress bar the libraries underneath draw (transformers' loading and saving,
    the hub's downloads, datasets' maps): what ``--no-progress`` means."""
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.disable_progress_bars()


def _load(name: str, spec: Subcommand) -> ModuleType | str:
    """The subcommand's module, or (for an extra's command that cannot be imported) why not."""
    if spec.extra is None:
        return importlib.import_module(spec.module)
    try:
        return importlib.import_module(spec.module)
    except ImportError as err:
        return (
            f"`aligner-chain {name}` is not available ({err}); install it with: "
            f'pip install "aligner-chain[{spec.extra}]"'
        )


def build_parser(subcommands: dict[str, Subcommand] | None = None) -> argparse.ArgumentParser:
    """The full parser; each subparser's ``_run`` default is the function that runs it."""
    from aligner_chain import __version__

    parser = argparse.ArgumentParser(
        prog="aligner-chain",
        description="Correct answers with a trained Aligner, train Aligners, bootstrap and evaluate "
        "upstream models. Run `aligner-chain COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"aligner-chain {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=os.environ.get("ALIGNER_LOG_LEVEL", "WARNING").upper(),
        help="logging level on stderr (default: $ALIGNER_LOG_LEVEL, else WARNING)",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name, spec in (subcommands or SUBCOMMANDS).items():
        loaded = _load(name, spec)
        if isinstance(loaded, str):
            sub = commands.add_parser(name, help=f"(not installed) {loaded}", description=loaded)
            sub.set_defaults(_run=_unavailable(loaded), _unavailable=True)
            continue
        help_text: str = loaded.HELP
        sub = commands.add_parser(
            name,
            help=help_text.splitlines()[0] if help_text else None,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        loaded.add_arguments(sub)
        sub.set_defaults(_run=loaded.run)
    return parser


def _unavailable(message: str) -> object:
    def run(args: argparse.Namespace) -> int:
        print(f"aligner-chain: {message}", file=sys.stderr)
        return 1

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        # Arguments given to a command that is not installed are ignored: it only says what to install.
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "_unavailable", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        status: int = args._run(args)
    except ValueError as err:  # bad arguments, settings or data: said in one line, no traceback
        print(f"aligner-chain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aligner-chain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a second error at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
