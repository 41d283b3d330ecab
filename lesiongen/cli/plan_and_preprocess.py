"""``lesiongen_plan_and_preprocess`` and its three steps as separate commands."""

from __future__ import annotations

import argparse

from lesiongen import workflow
from lesiongen.cli.common import add_common_arguments, positive_float, positive_int, run_command
from lesiongen.planning.plans import SAMPLING_PRESETS
from lesiongen.utilities.parallel import usable_cores

DEFAULT_PROCESSES = min(8, usable_cores())


def _parser(description: str, fingerprint: bool, plan: bool, preprocess: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-d", "--dataset", nargs="+", required=True,
                        help="dataset ID(s) or name(s), e.g. 501 or Dataset501_DemoMS")
    if fingerprint or preprocess:
        parser.add_argument("-np", "--num_processes", type=positive_int, default=DEFAULT_PROCESSES,
                            help=f"worker processes (default {DEFAULT_PROCESSES})")
    if fingerprint:
        parser.add_argument("--verify_dataset_integrity", action="store_true",
                            help="also read every voxel of the healthy and test scans to check them")
    if fingerprint or preprocess:
        parser.add_argument("--clean", action="store_true",
                            help="redo the work even where earlier outputs are up to date")
    if plan:
        parser.add_argument("--gpu_memory_target", type=float, default=8.0,
                            help="GPU memory (GB) the planned patch and batch sizes should fit (default 8)")
        parser.add_argument("--preset", nargs="+", choices=["cpu"], default=[],
                            help="also write these plans next to the default ones: cpu = lesiongenPlansCPU "
                                 "(CPU-sized networks and schedules, same preprocessed data); use them with -p")
        parser.add_argument("--lesion_margin_mm", type=positive_float, default=None,
                            help="tissue (mm) around the 95th-percentile lesion in the lesion patch, instead of "
                                 "the planned max(4 mm, 2 voxels, a quarter of its radius); more context helped "
                                 "lesion removal (documentation/inpainting.md) at several times the compute")
        parser.add_argument("--sampling", choices=SAMPLING_PRESETS, default=None,
                            help="the sampler newly trained diffmask and inpaint models use by default, instead of "
                                 "the planned 'default' (20 / 44 network evaluations); few_step: 4 "
                                 "(documentation/few_step_sampling.md)")
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace, fingerprint: bool, plan: bool, preprocess: bool) -> None:
    for identifier in args.dataset:
        dataset = workflow.open_dataset(identifier)
        workflow.check_dataset(dataset, getattr(args, "verify_dataset_integrity", False),
                               getattr(args, "num_processes", 1))
        fp = plans = None
        if fingerprint:
            fp = workflow.run_fingerprint(dataset, args.num_processes, args.clean)
        if plan:
            plans = workflow.run_planning(dataset, fp, args.gpu_memory_target, tuple(args.preset),
                                          args.lesion_margin_mm, args.sampling)
        if preprocess:
            workflow.run_preprocessing(dataset, plans, args.num_processes, args.clean)


def _main(description: str, fingerprint: bool, plan: bool, preprocess: bool, argv: list[str] | None) -> int:
    parser = _parser(description, fingerprint, plan, preprocess)
    return run_command(lambda args: _run(args, fingerprint, plan, preprocess), parser, argv)


def main_plan_and_preprocess(argv: list[str] | None = None) -> int:
    return _main("Fingerprint, plan and preprocess a raw dataset.", True, True, True, argv)


def main_extract_fingerprint(argv: list[str] | None = None) -> int:
    return _main("Check a raw dataset and write its fingerprint.", True, False, False, argv)


def main_plan(argv: list[str] | None = None) -> int:
    return _main("Plan from an existing fingerprint.", False, True, False, argv)


def main_preprocess(argv: list[str] | None = None) -> int:
    return _main("Preprocess a dataset following its existing plans.", False, False, True, argv)


if __name__ == "__main__":
    raise SystemExit(main_plan_and_preprocess())
