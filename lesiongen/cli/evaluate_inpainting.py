"""``lesiongen_evaluate_inpainting -d 501 -f 0``: remove / insert quality of the inpainter on held-out patches."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lesiongen.cli.common import (add_common_arguments, add_device_argument, add_plans_argument,
                                  add_sampling_argument, run_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate the inpaint trainer of a fold on its validation lesion "
                                                 "patches (remove and insert mode, fast vs full schedule).")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset ID or name")
    parser.add_argument("-f", dest="fold", default="0", help="fold (0-4 or all); default 0")
    parser.add_argument("--max_patches", type=int, default=16, help="validation patches to use (default 16)")
    parser.add_argument("--full_patches", type=int, default=2,
                        help="patches also sampled with the full DDPM + jumps schedule (slow; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0)
    add_sampling_argument(parser)
    add_device_argument(parser)
    add_plans_argument(parser)
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="output folder (default: $lesiongen_results/DATASET/inpainting_evaluation/fold_X)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.evaluation.evaluate_inpainting import evaluate_inpainting
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.preprocessing.splits import parse_fold
    from lesiongen.utilities.devices import pick_device

    fold = parse_fold(args.fold)
    device = pick_device(args.device)
    report = evaluate_inpainting(open_preprocessed(args.dataset, args.plans), fold, str(device), args.seed,
                                 args.max_patches, args.full_patches, args.output, args.sampling)
    print(json.dumps({k: report[k] for k in ("remove_real_lesions", "remove_fake_masks", "insert")}, indent=1))


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
