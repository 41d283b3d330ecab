"""``lesiongen_export_nnunet -d 501 --synthetic diffmask --n N -o OUT_ROOT --id 601``: an nnU-Net v2 raw dataset of
the real training cases plus N synthetic lesion cases made from the healthy scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import (add_common_arguments, add_device_argument, add_plans_argument, positive_int,
                                  results_dataset_folder, run_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write OUT_ROOT/DatasetYYY_<Name>Synth: an nnU-Net v2 raw dataset with the dataset's real "
                    "training cases (copied unchanged) plus N synthetic lesion cases made from healthy scans.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-d", dest="dataset", help="dataset ID or name: its models in $lesiongen_results (and its "
                                                   "raw data in $lesiongen_raw unless --healthy and --synthetic_only)")
    source.add_argument("-model", "--model", dest="model", type=Path,
                        help="a results dataset folder holding the model folders (e.g. installed from a zip)")
    add_plans_argument(parser)
    parser.add_argument("--synthetic", required=True, help="lesion strategy: sphere, unetmask, diffmask or ganmask")
    parser.add_argument("--n", dest="n", type=positive_int, required=True, help="number of synthetic cases")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output root, e.g. $nnUNet_raw")
    parser.add_argument("--id", dest="dataset_id", type=int, required=True, help="ID of the new dataset (1-999)")
    parser.add_argument("--healthy", type=Path, default=None,
                        help="folder of healthy scans (CASE_XXXX files) to put lesions into; default: the raw "
                             "dataset's imagesHealthy")
    parser.add_argument("--brain_masks", type=Path, default=None, help="with --healthy: brain masks (CASE + ending)")
    parser.add_argument("--tissue", type=Path, default=None, help="with --healthy: tissue maps (CASE + ending)")
    parser.add_argument("--synthetic_only", action="store_true",
                        help="export only the synthetic cases (no raw dataset needed with --healthy)")
    parser.add_argument("-f", dest="fold", default=None,
                        help="fold of the mask generator and inpainter (0-4 or all); default all when trained, else 0")
    add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    parser.add_argument("--batch_scans", type=positive_int, default=None,
                        help="synthetic cases made at once, their lesions sharing the networks' calls (each case "
                             "stays the one it is alone). Default 1 on CPU, 4 on a GPU")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.inference.predict import find_input_cases
    from lesiongen.io.dataset import load_dataset
    from lesiongen.models.folder import DATASET_JSON, ModelFolder, trainer_folder_name
    from lesiongen.preprocessing.splits import parse_fold
    from lesiongen.io.dataset import CaseFiles
    from lesiongen.inference.synthesis import default_batch_scans
    from lesiongen.sharing.export_nnunet import export_nnunet
    from lesiongen.utilities.devices import pick_device
    from lesiongen.utilities.errors import LesiongenError

    if (args.brain_masks or args.tissue) and args.healthy is None:
        raise LesiongenError("--brain_masks and --tissue go with --healthy DIR")
    fold = parse_fold(args.fold) if args.fold is not None else None
    device = pick_device(args.device)
    models = args.model if args.model is not None else results_dataset_folder(args.dataset)
    raw = None
    if not args.synthetic_only or args.healthy is None:
        try:
            raw = load_dataset(models.name)
        except LesiongenError as exc:
            raise LesiongenError(f"{exc}; without the raw dataset pass --healthy DIR and --synthetic_only") from None
    if args.healthy is not None:
        inpainter = ModelFolder(models / trainer_folder_name("inpaint", args.plans)).check()
        healthy = [CaseFiles(c.case_id, c.images, brain_mask=c.brain_mask, tissue=c.tissue) for c in
                   find_input_cases(args.healthy, inpainter.plans().channel_names, brain_masks=args.brain_masks,
                                    tissue=args.tissue, described_by=inpainter.path / DATASET_JSON)]
    else:
        healthy = raw.healthy
    folder = export_nnunet(models, args.synthetic, args.n, args.output, args.dataset_id, healthy,
                           raw=None if args.synthetic_only else raw, plans_name=args.plans, fold=fold,
                           device=str(device), seed=args.seed, overwrite=args.overwrite,
                           batch_scans=args.batch_scans or default_batch_scans(device.type))
    print(f"nnU-Net raw dataset written to {folder}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
