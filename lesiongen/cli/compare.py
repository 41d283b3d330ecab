"""``lesiongen_compare -d 501 [-f 0 1 2 3 4]``: seg folds per synthetic strategy, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, add_plans_argument, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Table of segmentation metrics per synthetic-lesion strategy over "
                                                 "folds, with paired differences to real data only.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset ID or name")
    add_plans_argument(parser)
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help="folds to include (default: all found)")
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="output folder (default: $lesiongen_results/DATASET/comparison)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.evaluation.compare import run_comparison
    from lesiongen.io.dataset import find_dataset_folder
    from lesiongen.paths import results_root

    dataset = find_dataset_folder(args.dataset, results_root())
    _, paths = run_comparison(dataset.name, args.plans, args.folds, args.output)
    print(paths["markdown"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
