"""What every lesiongen command shares: logging set-up and turning user errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.log import configure_logging

logger = logging.getLogger("lesiongen")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_command(body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
                argv: list[str] | None = None) -> int:
    """Parse, run, and map errors to exit codes: 1 for bad input (message only), 130 for Ctrl-C."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        body(args)
    except LesiongenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished files are kept, unfinished ones were not written", file=sys.stderr)
        return 130
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
