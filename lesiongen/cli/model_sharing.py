"""``lesiongen_export_model_to_zip -d 501 -o model.zip`` and ``lesiongen_install_model_from_zip model.zip``: share
trained models between machines."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, run_command


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pack a dataset's trained models (plans, final checkpoints, summaries) from the results folder "
                    "into a zip archive that lesiongen_install_model_from_zip installs elsewhere. "
                    "checkpoint_latest.pt is never included.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset ID or name, e.g. 501 or Dataset501_Name")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="zip file to write")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=None,
                        help="trainer folders to include, e.g. diffmask inpaint (default: all)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to include, e.g. 0 1 or all (default: every fold_X found)")
    parser.add_argument("--include_validation", action="store_true", help="also pack each fold's validation/ folder")
    add_common_arguments(parser)
    return parser


def build_install_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Install a model archive made by lesiongen_export_model_to_zip into the results folder "
                    "($lesiongen_results). The archive is checked in full (paths, sha256 sums, checkpoints) "
                    "before anything is written.")
    parser.add_argument("zip", type=Path, help="model archive (.zip)")
    parser.add_argument("--overwrite", action="store_true", help="replace trainer folders that already exist")
    parser.add_argument("--max_size", type=_positive_gb, default=None, metavar="GB",
                        help="refuse archives that unpack to more than this many GB (default 4; a zip-bomb guard)")
    add_common_arguments(parser)
    return parser


def _positive_gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of GB, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of GB, got {text}")
    return value


def run_export(args: argparse.Namespace) -> None:
    from lesiongen.sharing.model_zip import MANIFEST, export_model_to_zip, resolve_results_dataset

    dataset = resolve_results_dataset(args.dataset).name
    names = export_model_to_zip(dataset, args.output, trainers=args.trainers, folds=args.folds,
                                include_validation=args.include_validation)
    print(f"{len([n for n in names if n != MANIFEST])} files of {dataset} written to {args.output}")


def run_install(args: argparse.Namespace) -> None:
    from lesiongen.sharing.model_zip import install_model_from_zip

    max_bytes = None if args.max_size is None else int(args.max_size * 1e9)
    for folder in install_model_from_zip(args.zip, overwrite=args.overwrite, max_total_bytes=max_bytes):
        print(f"installed {folder}")


def main_export(argv: list[str] | None = None) -> int:
    return run_command(run_export, build_export_parser(), argv)


def main_install(argv: list[str] | None = None) -> int:
    return run_command(run_install, build_install_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main_install())
