"""``lesiongen_determine_postprocessing -d 501 [--synthetic none] [-f 0 1 2 3 4]``: choose a seg model's
postprocessing on its folds' validation cases and store it in the model folder, where ``lesiongen_predict -m seg``
applies it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, add_plans_argument, positive_int, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Choose the smallest predicted lesion a seg model keeps, on its "
                                                 "cross-validation folds' validation cases (as nnU-Net chooses its "
                                                 "postprocessing), and write postprocessing.json into the model "
                                                 "folder; lesiongen_predict -m seg then applies it.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-d", dest="dataset", help="dataset ID or name: its seg model in $lesiongen_results")
    source.add_argument("-model", "--model", dest="model", type=Path, help="a seg model folder (plans.json inside)")
    add_plans_argument(parser)
    parser.add_argument("--synthetic", default="none",
                        help="with -d: the seg model trained with this synthetic strategy (default none)")
    parser.add_argument("-c", dest="configuration", default=None, help="with -d: configuration 3d (default) or 2d")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="cross-validation folds whose validation cases decide (default: every trained fold)")
    parser.add_argument("-np", "--num_processes", type=positive_int, default=1, help="worker processes (default 1)")
    add_common_arguments(parser)
    return parser


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(record: dict) -> str:
    header = "| min lesion mm3 (voxels) | Dice | lesion F1 | precision | recall | small recall | HD95 mm | lesions " \
             "removed |\n|---|---|---|---|---|---|---|---|"
    rows = [f"| {row['min_lesion_volume_mm3']:g} ({row['voxels']}) | {_cell(row['dice'])} | "
            f"{_cell(row['lesion_f1'])} | {_cell(row['lesion_precision'])} | {_cell(row['lesion_recall'])} | "
            f"{_cell(row['small_lesion_recall'])} | {_cell(row['hd95'], 1)} | {row['lesions_removed']} |"
            for row in record["candidates"]]
    chosen = record["min_lesion_volume_mm3"]
    verdict = (f"chosen: remove predicted lesions below {chosen:g} mm3" if chosen > 0
               else "chosen: no postprocessing (no candidate raised lesion F1 without lowering Dice)")
    return "\n".join([header, *rows, "", f"{verdict} ({record['n_cases']} validation cases, folds "
                                          f"{', '.join(record['folds'])})"])


def run(args: argparse.Namespace) -> None:
    from lesiongen.evaluation.postprocessing import determine_postprocessing
    from lesiongen.inference.strategies import SegVariant, seg_variant_name
    from lesiongen.io.dataset import find_dataset_folder
    from lesiongen.models.folder import ModelFolder, trainer_folder_name
    from lesiongen.models.postprocessing import POSTPROCESSING_JSON
    from lesiongen.paths import results_root
    from lesiongen.utilities.errors import LesiongenError

    if args.model is not None:
        folder = ModelFolder(args.model)
    else:
        dataset = find_dataset_folder(args.dataset, results_root())
        folder = ModelFolder(dataset / trainer_folder_name(seg_variant_name(args.synthetic, args.configuration),
                                                           args.plans))
    folder.check()
    if SegVariant.parse(folder.variant) is None:
        raise LesiongenError(f"{folder.path}: not a seg model folder (seg_STRATEGY__PLANS)")
    record = determine_postprocessing(folder, args.folds, args.num_processes)
    print(format_table(record))
    print(f"written: {folder.path / POSTPROCESSING_JSON}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
