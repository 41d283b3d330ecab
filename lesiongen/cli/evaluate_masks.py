"""``lesiongen_evaluate_masks -d 501 -f 0 [-tr diffmask ...]``: mask realism of generators vs held-out lesions."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import (add_common_arguments, add_device_argument, add_plans_argument,
                                  add_sampling_argument, positive_int, run_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare generated lesion masks with the fold's held-out real "
                                                 "lesions (Wasserstein distances, histograms, gallery).")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset ID or name")
    parser.add_argument("-f", dest="fold", default="0", help="fold (0-4 or all); default 0")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=None,
                        help="mask generators to compare (default: every trained one of spheremask, unetmask, "
                             "diffmask, ganmask)")
    parser.add_argument("-n", dest="n_masks", type=positive_int, default=None,
                        help="masks per generator (default: one per held-out lesion patch)")
    parser.add_argument("--seed", type=int, default=0)
    add_sampling_argument(parser, masks_only=True)
    add_device_argument(parser)
    add_plans_argument(parser)
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="output folder (default: $lesiongen_results/DATASET/mask_evaluation/fold_X)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.evaluation.evaluate_masks import evaluate_mask_generators
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.preprocessing.splits import parse_fold
    from lesiongen.utilities.devices import pick_device

    fold = parse_fold(args.fold)
    device = pick_device(args.device)
    dataset = open_preprocessed(args.dataset, args.plans)
    report = evaluate_mask_generators(dataset, fold, args.trainers, args.n_masks, args.seed, str(device), args.output,
                                      args.sampling)
    for name, method in report["methods"].items():
        distances = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} n/a" for k, v in method["wasserstein"].items())
        print(f"{name}: {distances}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
