"""`histopath <command>`: a thin command line over the library.

Each area of the project registers its own sub-commands (`register(subparsers)` in
`histopath.<area>.cli`); handlers import TensorFlow lazily so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import histopath
from histopath.errors import HistopathError
from histopath.interrupts import terminate_as_interrupt

COMMAND_MODULES = (
    "histopath.data.cli",
    "histopath.pipeline.cli",
    "histopath.serving.cli",
    "histopath.evaluation.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser with every area's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="histopath",
        description="Breast histopathology classification with TFX: ingest, train, "
        "evaluate and serve.",
    )
    parser.add_argument(
        "--version", action="version", version=f"histopath-tfx {histopath.__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that area has no commands (yet)
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C
            return int(args.handler(args) or 0)
    except HistopathError as error:
        print(f"histopath {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"histopath {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
