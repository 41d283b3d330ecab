"""``lesiongen_export_nnunet -d 501 --synthetic diffmask --n N -o OUT_ROOT --id 601``: an nnU-Net v2 raw dataset of
the real training cases plus N synthetic lesion cases made from the healthy scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, positive_int, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write OUT_ROOT/DatasetYYY_<Name>Synth: an nnU-Net v2 raw dataset with the dataset's real "
                    "training cases (copied unchanged) plus N synthetic lesion cases made from its healthy scans.")
    parser.add_argument("-d", dest="dataset", required=True, help="source dataset ID or name (trained models needed)")
    parser.add_argument("--synthetic", required=True, help="lesion strategy: sphere, unetmask or diffmask")
    parser.add_argument("--n", dest="n", type=positive_int, required=True, help="number of synthetic cases")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output root, e.g. $nnUNet_raw")
    parser.add_argument("--id", dest="dataset_id", type=int, required=True, help="ID of the new dataset (1-999)")
    parser.add_argument("-f", dest="fold", default=None,
                        help="fold of the mask generator and inpainter (0-4 or all); default all when trained, else 0")
    parser.add_argument("-device", choices=("cpu", "cuda", "mps"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.inference.export_nnunet import export_nnunet
    from lesiongen.training.registry import parse_fold, pick_device

    fold = parse_fold(args.fold) if args.fold is not None else None
    device = pick_device(args.device)
    folder = export_nnunet(args.dataset, args.synthetic, args.n, args.output, args.dataset_id, fold=fold,
                           device=str(device), seed=args.seed, overwrite=args.overwrite)
    print(f"nnU-Net raw dataset written to {folder}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
