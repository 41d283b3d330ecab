"""Logging set-up for the command-line tools."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def configure_logging(verbose: bool = False, log_file: Path | None = None) -> None:
    """Console logging in a short format; optionally also into ``log_file``. lesiongen's own messages from INFO on,
    other libraries' from WARNING on (their INFO lines, e.g. numexpr's thread count, would crowd a one-line error);
    ``verbose``: everything from DEBUG on."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("lesiongen").setLevel(logging.DEBUG if verbose else logging.INFO)
