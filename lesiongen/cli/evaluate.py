"""``lesiongen_evaluate -ref DIR -pred DIR [-l 1 2] [-o summary.json] [-np N]``: lesion segmentation metrics."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, positive_int, run_command

SUMMARY_NAME = "summary.json"
_TABLE_COLUMNS = (("Dice", "dice"), ("lesion F1", "lesion_f1"), ("recall", "lesion_recall"),
                  ("precision", "lesion_precision"), ("HD95 mm", "hd95"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Dice, lesion-wise detection (26-connected components matched by "
                                                 "overlap), HD95 and volumes of predicted lesion segmentations "
                                                 "against references with the same file names.")
    parser.add_argument("-ref", dest="reference", type=Path, required=True, help="folder of reference segmentations")
    parser.add_argument("-pred", dest="prediction", type=Path, required=True,
                        help="folder of predicted segmentations (same file names); integer label maps, not "
                             "probabilities: non-integer values are refused")
    parser.add_argument("-l", dest="labels", type=int, nargs="+", default=None,
                        help="lesion classes to evaluate (default: every nonzero value in the references)")
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help=f"summary file (default: PRED/{SUMMARY_NAME})")
    parser.add_argument("-np", "--num_processes", type=positive_int, default=1, help="worker processes (default 1)")
    parser.add_argument("--file_ending", default=None,
                        help="only files with this ending, e.g. .nii.gz (default: every supported image file)")
    parser.add_argument("--small_lesion_mm3", type=float, default=None,
                        help="reference lesions below this volume count for small_lesion_recall (default: "
                             "lesiongen's SMALL_LESION_MM3, 100)")
    add_common_arguments(parser)
    return parser


def _cell(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def format_table(mean: dict) -> str:
    """Mean Dice / lesion F1 / recall / precision / HD95 per class, one row each."""
    header = ["class"] + [title for title, _ in _TABLE_COLUMNS]
    rows = [header] + [[str(label)] + [_cell(summary["mean"].get(key, math.nan)) for _, key in _TABLE_COLUMNS]
                       for label, summary in mean.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def run(args: argparse.Namespace) -> None:
    from lesiongen.evaluation.segmentation_metrics import SMALL_LESION_MM3, evaluate_folders
    from lesiongen.utilities.files import nan_to_none, write_json
    from lesiongen.utilities.provenance import code_version

    if args.small_lesion_mm3 is None:  # the default lives with the metric (the import above is the slow part)
        args.small_lesion_mm3 = SMALL_LESION_MM3
    result = evaluate_folders(args.reference, args.prediction, args.labels, args.file_ending, args.num_processes,
                              small_lesion_mm3=args.small_lesion_mm3)
    output = args.output if args.output is not None else args.prediction / SUMMARY_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    provenance = {**code_version(), "reference": str(args.reference.resolve()),
                  "prediction": str(args.prediction.resolve()), "small_lesion_mm3": args.small_lesion_mm3}
    write_json(output, nan_to_none({**result, "provenance": provenance}))
    print(format_table(result["mean"]))
    print(f"{len(result['per_case'])} case(s); summary written to {output}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
