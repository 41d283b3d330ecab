"""What every lesiongen command shares: logging set-up and turning user errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lesiongen import __version__
from lesiongen.planning.plans import DISTILLED_SAMPLING, MODEL_SAMPLING, PLANS_NAME, SAMPLING_PRESETS
from lesiongen.utilities.devices import DEVICE_CHOICES
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import os_error_message
from lesiongen.utilities.log import configure_logging

logger = logging.getLogger("lesiongen")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"lesiongen {__version__}")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-device", choices=DEVICE_CHOICES, default=None,
                        help="cpu, cuda or mps (default: cuda when available, else cpu)")


def add_sampling_argument(parser: argparse.ArgumentParser, masks_only: bool = False) -> None:
    """``--sampling``; ``masks_only`` (a command that runs mask generators only) also offers diffmask's distilled
    student by name."""
    extra = (DISTILLED_SAMPLING,) if masks_only else ()
    parser.add_argument("--sampling", choices=(MODEL_SAMPLING, *SAMPLING_PRESETS, *extra), default=MODEL_SAMPLING,
                        help="sampler of the diffusion models (inpainter, diffmask): model (each model's own, "
                             "default), default (inpainter: 16 DDIM steps + 3 resampling jumps + guidance, 44 "
                             "network evaluations per inserted patch; diffmask: DPM-Solver++ 20) or few_step (4 "
                             "deterministic steps, no jumps, no guidance: 4 evaluations; diffmask: the 4-step "
                             "sampler chosen for the model after training)"
                             + ("; distilled: diffmask's distilled 4-step student (models trained with "
                                "--set distill_steps=N)" if masks_only else ""))


def add_plans_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "-pl", dest="plans", default=PLANS_NAME,
                        help=f"plans identifier, as in the results folder names (default {PLANS_NAME})")


def run_command(body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
                argv: list[str] | None = None) -> int:
    """Parse, run, and map errors to exit codes: 1 for bad input (message only), 130 for Ctrl-C.

    A full disk or a read-only folder that no writer turned into a :class:`LesiongenError` (``mkdir``, ``rmtree``)
    is reported the same way: one line naming the path, exit 1.
    """
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        body(args)
    except LesiongenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        reason = os_error_message(exc)
        if reason is None:
            raise
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
        print(f"error: {where}{reason}", file=sys.stderr)
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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def results_dataset_folder(identifier: str) -> Path:
    """The results folder of dataset ``identifier`` (ID or name). When no model was trained yet it need not exist:
    the name then comes from the raw or preprocessed dataset, so later messages can say what to train."""
    from lesiongen.io.dataset import find_dataset_folder
    from lesiongen.paths import preprocessed_root, raw_root, results_root

    try:
        return find_dataset_folder(identifier, results_root())
    except LesiongenError as missing:
        for root in (preprocessed_root(), raw_root()):
            try:
                return results_root() / find_dataset_folder(identifier, root).name
            except LesiongenError:
                continue
        raise missing from None


def parse_setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE``; the value is converted to the setting's own type (number or boolean) by the trainer."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return key.strip(), value.strip()
