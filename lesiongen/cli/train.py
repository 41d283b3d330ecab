"""``lesiongen_train DATASET TRAINER FOLD``: train one fold of one trainer (works under ``torchrun`` too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import (
    add_common_arguments,
    add_device_argument,
    add_plans_argument,
    parse_setting,
    positive_int,
    run_command,
)
from lesiongen.inference.strategies import STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train one fold of a lesiongen trainer on a preprocessed dataset.")
    parser.add_argument("dataset", help="dataset ID (501) or name (Dataset501_Name)")
    parser.add_argument("trainer", help="spheremask, unetmask, diffmask, ganmask, inpaint or seg")
    parser.add_argument("fold", help="0-4, or 'all' to train on every case")
    add_device_argument(parser)
    add_plans_argument(parser)
    parser.add_argument("-c", dest="configuration", default=None,
                        help="seg only: segmentation configuration 3d (default) or 2d (a 2D UNet on slices; planned "
                             "for strongly anisotropic data only); results go to seg_..._2d")
    parser.add_argument("--c", dest="resume", action="store_true",
                        help="continue from checkpoint_latest.pt exactly where the run stopped")
    parser.add_argument("-pretrained_weights", type=Path, default=None,
                        help="initialise from this checkpoint (e.g. trained on another dataset): tensors of the same "
                             "name and shape are loaded, the others (other channels or classes) are skipped and "
                             "listed in the log")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="total optimiser steps (default: the plans' epochs x iterations per epoch)")
    parser.add_argument("--save_every", type=positive_int, default=None,
                        help="steps between checkpoint_latest.pt saves (default: one planned epoch)")
    parser.add_argument("--batch_size", type=positive_int, default=None, help="override the planned batch size")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--synthetic", default="none",
                        help=f"seg only: synthetic lesion strategy, one of {', '.join(STRATEGIES)}")
    parser.add_argument("--synthetic_ratio", type=float, default=None,
                        help="seg only: synthetic cases per real training case (default 1)")
    parser.add_argument("--loss", default=None,
                        help="seg only: dice_ce (default, nnU-Net's) or weighted (generalised Dice + class-balanced "
                             "cross-entropy, for lesions that fill a tiny fraction of the scan)")
    parser.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                        metavar="NAME=VALUE", help="trainer setting, e.g. lesion_loss_weight=5 (diffmask)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.base import TrainingOptions
    from lesiongen.preprocessing.splits import parse_fold
    from lesiongen.training.registry import trainer_class
    from lesiongen.utilities.devices import pick_device
    from lesiongen.utilities.errors import LesiongenError

    cls = trainer_class(args.trainer)
    fold = parse_fold(args.fold)
    device = pick_device(args.device)
    if args.pretrained_weights is not None and not args.pretrained_weights.is_file():
        raise LesiongenError(f"{args.pretrained_weights}: pretrained weights not found")
    dataset = open_preprocessed(args.dataset, args.plans)
    options = TrainingOptions(total_steps=args.steps, save_every=args.save_every, seed=args.seed,
                              batch_size=args.batch_size)
    settings = dict(args.settings)
    variant = {}
    if args.trainer == "seg":
        variant["strategy"] = args.synthetic
        if args.configuration is not None:
            variant["configuration"] = args.configuration
        if args.synthetic_ratio is not None:
            settings["synthetic_ratio"] = args.synthetic_ratio
        if args.loss is not None:
            settings["loss"] = args.loss
    elif args.synthetic != "none" or args.synthetic_ratio is not None or args.configuration or args.loss:
        raise LesiongenError("--synthetic, --synthetic_ratio, -c and --loss apply to the seg trainer only")
    trainer = cls(dataset, fold, device, options, **variant)
    trainer.apply_settings(settings)
    trainer.run_training(resume=args.resume, pretrained_weights=args.pretrained_weights)


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
