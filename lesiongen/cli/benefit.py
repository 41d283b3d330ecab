"""``lesiongen_benefit -d 501``: does synthetic data help segmentation on this dataset? Held-out test scans, paired
statistics, a ratio sweep; md/csv/json/png report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lesiongen.cli.common import (add_common_arguments, add_device_argument, add_plans_argument, parse_setting,
                                  positive_int, run_command)
from lesiongen.inference.strategies import DEFAULT_STRATEGIES, STRATEGIES
from lesiongen.utilities.errors import LesiongenError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train what is missing (mask generators and inpainter on every training case, one seg model per "
                    "strategy x seed x synthetic ratio), segment the held-out test scans (imagesTs/labelsTs, or "
                    "--test_dataset) and report each strategy against real data only: Dice, lesion F1, recall, "
                    "precision, small-lesion recall, HD95, volume error; paired differences with 95 % bootstrap "
                    "intervals over cases and seeds and Wilcoxon p-values; a synthetic-ratio sweep.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset ID or name (planned and preprocessed)")
    add_plans_argument(parser)
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES),
                        help=f"any of {', '.join(STRATEGIES)} (default: {' '.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--ratio", type=float, default=1.0, help="synthetic cases per real case (default 1)")
    parser.add_argument("--sweep", dest="sweep_strategy", default="diffmask",
                        help="strategy also trained at every --sweep_ratios value ('none' for no sweep)")
    parser.add_argument("--sweep_ratios", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--synthetic_fade_start", type=float, default=None,
                        help="seg models with synthetic cases draw them at the ratio's share until this fraction of "
                             "their steps, then ever less, none at the end (1: the same share throughout; default: "
                             "the seg trainer's, documentation/segmentation.md)")
    parser.add_argument("--test_dataset", default=None,
                        help="test on this dataset's scans instead (its imagesTs, else its training cases): "
                             "an out-of-domain check; channels must match")
    parser.add_argument("--seg_steps", type=positive_int, default=None, help="default: the plans' schedule")
    parser.add_argument("--generator_steps", type=positive_int, default=None, help="default: the plans' schedule")
    parser.add_argument("--inpaint_steps", type=positive_int, default=None, help="default: the plans' schedule")
    parser.add_argument("--set", dest="trainer_settings", nargs=2, action="append", default=[],
                        metavar=("TRAINER", "NAME=VALUE"),
                        help="a setting for every training of TRAINER, as lesiongen_train's --set, e.g. --set inpaint "
                             "edge_max_gain=3 (repeatable; use a results folder of its own to keep the default "
                             "models)")
    parser.add_argument("--disable_tta", action="store_true", help="segment the test scans without mirroring")
    postprocessing = parser.add_mutually_exclusive_group()
    postprocessing.add_argument("--min_lesion_volume", type=float, default=0.0, metavar="MM3",
                                help="score every model's test predictions without their lesions below this volume "
                                     "(as lesiongen_determine_postprocessing chooses on cross-validation folds; "
                                     "default 0: as predicted)")
    postprocessing.add_argument("--cv_postprocessing", nargs="*", type=int, default=None, metavar="FOLD",
                                help="also train the first seed's real-only seg model on the cross-validation folds "
                                     "(default: every fold of the splits; as that model, validating the held-out "
                                     "cases), choose the smallest lesion kept on their validation cases as "
                                     "lesiongen_determine_postprocessing does, and score every model's test "
                                     "predictions without the lesions below it; reruns reuse the folds and the "
                                     "choice while they are as asked")
    parser.add_argument("--schedule_check", action="store_true",
                        help="also train real-only at half the seg steps (each seed; under "
                             "$lesiongen_results/schedule_check, the dataset's models stay as they are) and report "
                             "whether the second half still raised its test Dice: if so, the comparison is about the "
                             "schedule; costs half the real-only trainings again")
    parser.add_argument("--data_check", action="store_true",
                        help="also train real-only on a seeded half of the real training cases (each seed its own "
                             "half; under $lesiongen_results/data_check) and report whether the other half raised "
                             "its test Dice: if more real cases did not, synthetic ones are unlikely to; costs the "
                             "real-only trainings again")
    add_device_argument(parser)
    parser.add_argument("--parallel", type=positive_int, default=1,
                        help="trainings side by side (subprocesses sharing the CPU threads or one GPU)")
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="report folder (default: $lesiongen_results/DATASET/benefit)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.benefit import BenefitOptions, run_benefit
    from lesiongen.utilities.devices import pick_device

    if not math.isfinite(args.min_lesion_volume) or args.min_lesion_volume < 0:
        raise LesiongenError(f"--min_lesion_volume {args.min_lesion_volume}: a volume in mm3, 0 or more")
    sweep = None if args.sweep_strategy in (None, "none") else args.sweep_strategy
    options = BenefitOptions(dataset=args.dataset, plans=args.plans, strategies=tuple(args.strategies),
                             seeds=tuple(args.seeds), ratio=args.ratio, sweep_strategy=sweep,
                             sweep_ratios=tuple(args.sweep_ratios), test_dataset=args.test_dataset,
                             seg_steps=args.seg_steps, generator_steps=args.generator_steps,
                             inpaint_steps=args.inpaint_steps, mirror=not args.disable_tta,
                             min_lesion_volume_mm3=args.min_lesion_volume,
                             cv_postprocessing=args.cv_postprocessing is not None,
                             cv_folds=tuple(args.cv_postprocessing or ()),
                             **({} if args.synthetic_fade_start is None else
                                {"synthetic_fade_start": args.synthetic_fade_start}),
                             device=str(pick_device(args.device)), parallel=args.parallel, output=args.output,
                             schedule_check=args.schedule_check, data_check=args.data_check,
                             trainer_settings=tuple((trainer, *_setting(trainer, text))
                                                    for trainer, text in args.trainer_settings))
    result = run_benefit(options)
    if not result.fell_back_to_folds:
        print(result.paths["markdown"].read_text())
    print(f"written: {', '.join(str(p) for p in result.paths.values())}")


def _setting(trainer: str, text: str) -> tuple[str, str]:
    try:
        return parse_setting(text)
    except argparse.ArgumentTypeError as error:
        raise LesiongenError(f"--set {trainer} {text}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
