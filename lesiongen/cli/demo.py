"""``lesiongen_make_demo_dataset`` and ``lesiongen_demo`` (the README's main job)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lesiongen.cli.common import add_common_arguments, add_device_argument, positive_int, run_command
from lesiongen.cli.plan_and_preprocess import DEFAULT_PROCESSES
from lesiongen.demo.phantom import ANISOTROPIC, REALISTIC, WHOLE_HEAD, DemoConfig, write_demo_dataset
from lesiongen.paths import raw_root
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger("lesiongen.demo")


def _config(args: argparse.Namespace) -> DemoConfig:
    config = DemoConfig(dataset_id=args.dataset_id, dataset_name=args.name, n_lesion_cases=args.n_lesion_cases,
                        n_healthy=args.n_healthy, n_test=args.n_test, seed=args.seed,
                        image_reader=args.image_reader)
    variants = {"--realistic": (args.realistic, REALISTIC), "--anisotropic": (args.anisotropic, ANISOTROPIC),
                "--whole_head": (args.whole_head, WHOLE_HEAD)}
    chosen = [name for name, (wanted, _) in variants.items() if wanted]
    if len(chosen) > 1:
        raise LesiongenError(f"{' and '.join(chosen)} are different demo datasets; choose one")
    if chosen:
        config = DemoConfig(**{**config.__dict__, **variants[chosen[0]][1]})
    sizes = {k: tuple(v) for k, v in (("shape", args.shape), ("spacing", args.spacing)) if v is not None}
    return DemoConfig(**{**config.__dict__, **sizes}) if sizes else config


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset_id", type=int, default=501)
    parser.add_argument("--name", default="DemoMS")
    parser.add_argument("--n_lesion_cases", type=positive_int, default=12)
    parser.add_argument("--n_healthy", type=int, default=6)
    parser.add_argument("--n_test", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_reader", default="SimpleITKIO", choices=["SimpleITKIO", "NibabelIO"],
                        help="reader/writer recorded in dataset.json and used to write the files")
    parser.add_argument("--realistic", action="store_true",
                        help="180x210x170 voxels at 1 mm instead of the small, fast default")
    parser.add_argument("--anisotropic", action="store_true",
                        help="stroke-like thick-slice scans: 26x150x128 voxels of 5x1x1 mm, 1-3 larger lesions "
                             "(the planner adds the 2d segmentation configuration); e.g. with --dataset_id 502 "
                             "--name DemoStroke")
    parser.add_argument("--whole_head", action="store_true",
                        help="a brain-extraction dataset: whole heads (skull, scalp, noise in the air; 80x92x80 "
                             "voxels of 2 mm) whose labels are brain masks; e.g. with --dataset_id 503 "
                             "--name DemoHeads")
    parser.add_argument("--shape", type=positive_int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="voxels per scan (default 64 76 64; --realistic 180 210 170)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="voxel size in mm (default 2 2 2; --realistic 1 1 1)")


def main_make_demo_dataset(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a procedural MS-like demo dataset in the raw layout.")
    parser.add_argument("-o", "--output", type=Path, default=None, help="raw root (default: $lesiongen_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo dataset folder")
    _add_dataset_arguments(parser)
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> None:
        folder = write_demo_dataset(args.output or raw_root(), _config(args), overwrite=args.overwrite)
        logger.info("demo dataset written to %s", folder)

    return run_command(body, parser, argv)


def main_demo(argv: list[str] | None = None) -> int:
    # the pipeline's defaults are DemoRunOptions'; imported here so that make_demo_dataset does not load torch
    from lesiongen.demo.pipeline import DemoRunOptions, run_demo

    defaults = DemoRunOptions(num_processes=DEFAULT_PROCESSES)
    parser = argparse.ArgumentParser(description="Make the demo dataset (if missing) and run the pipeline on it.")
    parser.add_argument("-np", "--num_processes", type=positive_int, default=defaults.num_processes)
    parser.add_argument("--mask_steps", type=int, default=defaults.mask_steps,
                        help="training steps of unetmask, diffmask and ganmask (0: stop after preprocessing)")
    parser.add_argument("--inpaint_steps", type=positive_int, default=defaults.inpaint_steps,
                        help="training steps of the inpainter")
    parser.add_argument("--seg_steps", type=positive_int, default=defaults.seg_steps,
                        help="training steps of each seg fold")
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size,
                        help="batch size of the mask generators and the inpainter")
    parser.add_argument("--full_size_networks", action="store_true",
                        help="train the planned networks instead of CPU-sized ones")
    add_device_argument(parser)
    _add_dataset_arguments(parser)
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> None:
        options = DemoRunOptions(num_processes=args.num_processes, mask_steps=args.mask_steps,
                                 inpaint_steps=args.inpaint_steps, seg_steps=args.seg_steps,
                                 batch_size=args.batch_size, full_size_networks=args.full_size_networks,
                                 device=args.device)
        print("\n".join(run_demo(_config(args), options)))

    return run_command(body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main_demo())
