"""``lesiongen_predict -d 501 -i IN -o OUT -m synth|seg|remove|brainmask``: apply trained models to new scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesiongen.cli.common import (add_common_arguments, add_device_argument, add_plans_argument,
                                  add_sampling_argument, positive_int, results_dataset_folder, run_command)
from lesiongen.inference.predict import MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Put plausible lesions into healthy scans (synth), segment lesions (seg), remove them "
                    "(remove) or extract brain masks (brainmask). Outputs keep each input's geometry and file "
                    "format.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-d", dest="dataset", help="dataset ID or name: its models in $lesiongen_results")
    source.add_argument("-model", "--model", dest="model", type=Path,
                        help="a results dataset folder (TRAINER__PLANS folders inside) or one model folder "
                             "(plans.json, dataset.json, fold_X/); e.g. one installed from a zip")
    add_plans_argument(parser)
    parser.add_argument("-i", dest="input", type=Path, required=True, help="folder of CASE_XXXX scans")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output folder (never an input)")
    parser.add_argument("-m", dest="mode", choices=MODES, required=True,
                        help="synth: insert lesions; seg: segment lesions; remove: inpaint given lesions away; "
                             "brainmask: brain masks from a brain-extraction seg model (largest piece, holes filled)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds (0-4 or all); seg ensembles them; synth/remove use the first. Default: all "
                             "when trained, else 0")
    add_device_argument(parser)
    parser.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose outputs exist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="predict scans whose spacing or extent is far from the training data's (more than "
                             "4x the median spacing or 3x the median extent on an axis) with a warning instead "
                             "of refusing them")
    parser.add_argument("--num_parts", type=positive_int, default=1,
                        help="split the cases into this many parts (e.g. cluster array jobs or several GPUs) ...")
    parser.add_argument("--part_id", type=int, default=0, help="... and predict this part (0 to num_parts - 1)")
    parser.add_argument("--batch_scans", type=positive_int, default=None,
                        help="synth/remove: scans edited at once, their lesions sharing the inpainter's batches "
                             "(each scan's result stays the one it gets alone; the scans are held in memory "
                             "together). Default 1 on CPU, 4 on a GPU")
    synth = parser.add_argument_group("synth")
    synth.add_argument("--masks", default="diffmask",
                       help="mask generator: spheremask, unetmask, diffmask or ganmask (default diffmask)")
    synth.add_argument("--n_lesions", type=positive_int, default=None,
                       help="lesions per scan (default: drawn from the fold's lesions-per-case prior)")
    synth.add_argument("--volume_range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                       help="accepted total lesion volume per scan in mm3 (redrawn up to 5 times)")
    synth.add_argument("--tissue_classes", type=int, nargs="+", default=None,
                       help="place lesions only in these tissue classes (needs --tissue)")
    synth.add_argument("--n_variants", type=positive_int, default=1, help="synthetic versions per scan")
    synth.add_argument("--preview", action="store_true", help="a PNG per case and a gallery of the run")
    add_sampling_argument(parser)
    maps = parser.add_argument_group("per-case maps (files named CASE + ending, same grid as the scan)")
    maps.add_argument("--labels", type=Path, default=None, help="remove: the lesion label maps")
    maps.add_argument("--brain_masks", type=Path, default=None,
                      help="brain masks (default: the scan's nonzero voxels, right for skull-stripped scans only)")
    maps.add_argument("--brain_model", type=Path, default=None,
                      help="synth/remove/seg on scans that are not skull-stripped: a brain-extraction seg model "
                           "folder (seg trained on brain masks, e.g. lesiongen_make_demo_dataset --whole_head) that "
                           "gives each scan without --brain_masks its brain mask")
    maps.add_argument("--tissue", type=Path, default=None)
    seg = parser.add_argument_group("seg")
    seg.add_argument("--save_probabilities", action="store_true", help="also CASE.npz with class probabilities")
    seg.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    seg.add_argument("--disable_postprocessing", action="store_true",
                     help="keep every predicted lesion, even when the model folder has a postprocessing.json "
                          "(lesiongen_determine_postprocessing)")
    seg.add_argument("--synthetic", default="none",
                     help="which seg models: those trained with this synthetic strategy (default none)")
    seg.add_argument("-c", dest="configuration", default=None,
                     help="which seg models: configuration 3d (default) or 2d (seg_..._2d); with -model a model "
                          "folder, its own (the checkpoint records it)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from lesiongen.utilities.devices import pick_device, reuse_cpu_tensor_memory

    device = pick_device(args.device)
    if device.type == "cpu":
        reuse_cpu_tensor_memory()  # first: torch reads its huge-page setting at its first tensor

    from lesiongen.inference.predict import PredictOptions, check_output_folder, find_input_cases, this_part
    from lesiongen.inference.run_predict import predict, resolve_models
    from lesiongen.inference.synthesis import default_batch_scans
    from lesiongen.models.folder import DATASET_JSON
    from lesiongen.preprocessing.splits import parse_fold
    from lesiongen.utilities.errors import LesiongenError

    if args.mode == "remove" and args.labels is None:
        raise LesiongenError("-m remove needs --labels DIR with the lesion label maps to remove")
    if args.tissue_classes and args.tissue is None:
        raise LesiongenError("--tissue_classes needs --tissue DIR with tissue maps")
    if args.volume_range and args.volume_range[0] > args.volume_range[1]:
        raise LesiongenError(f"--volume_range: minimum {args.volume_range[0]} is above maximum {args.volume_range[1]}")
    options = PredictOptions(mode=args.mode, resume=args.resume, seed=args.seed, num_parts=args.num_parts,
                             part_id=args.part_id, masks=args.masks, n_variants=args.n_variants,
                             n_lesions=args.n_lesions,
                             volume_range_mm3=tuple(args.volume_range) if args.volume_range else None,
                             tissue_classes=args.tissue_classes, preview=args.preview, synthetic=args.synthetic,
                             save_probabilities=args.save_probabilities, mirror=not args.disable_tta,
                             postprocess=not args.disable_postprocessing,
                             force=args.force, configuration=args.configuration, sampling=args.sampling,
                             brain_model=args.brain_model,
                             batch_scans=args.batch_scans or default_batch_scans(device.type))
    check_output_folder(args.output, [p for p in (args.input, args.labels, args.brain_masks, args.tissue) if p])
    source = args.model if args.model is not None else results_dataset_folder(args.dataset)
    models = resolve_models(source, options, args.plans)
    folds = [parse_fold(f) for f in args.folds] if args.folds else None
    cases = find_input_cases(args.input, models.main.plans().channel_names, args.labels, args.brain_masks,
                             args.tissue, described_by=models.main.path / DATASET_JSON)
    cases = this_part(cases, options)
    counts = predict(models, cases, args.output, options, folds, str(device))
    part = f" (part {args.part_id + 1} of {args.num_parts})" if args.num_parts > 1 else ""
    print(f"{counts['done']} case(s) written to {args.output}{part}, {counts['skipped']} already done")
    if counts.get("sphere_fallbacks"):
        print(f"{counts['sphere_fallbacks']} of {counts['lesions']} lesion(s) took the sphere prior's ellipsoid: the "
              f"{args.masks} masks were implausible (see synthesis_summary.json)")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
