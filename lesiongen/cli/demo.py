"""``lesiongen_make_demo_dataset`` and ``lesiongen_demo`` (the README's main job)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lesiongen import workflow
from lesiongen.cli.common import add_common_arguments, add_device_argument, positive_int, run_command
from lesiongen.cli.plan_and_preprocess import DEFAULT_PROCESSES
from lesiongen.demo.phantom import ANISOTROPIC, WHOLE_HEAD, DemoConfig, write_demo_dataset
from lesiongen.io.dataset import find_dataset_folder
from lesiongen.paths import raw_root
from lesiongen.planning.presets import CPU, PRESET_NAMES, PRESETS
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger("lesiongen.demo")

# a realistic size for benchmarks: 1 mm isotropic adult-brain-sized volumes
REALISTIC = {"shape": (180, 210, 170), "spacing": (1.0, 1.0, 1.0), "lesion_radius_mm": (1.5, 9.0)}


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


def _demo(args: argparse.Namespace) -> None:
    config = _config(args)
    if config.whole_head:
        raise LesiongenError("--whole_head writes a brain-extraction dataset, not a lesion one: write it with "
                             "lesiongen_make_demo_dataset --whole_head and train seg on it (documentation/"
                             "brain_extraction.md)")
    try:
        folder = find_dataset_folder(config.dataset_id)
        logger.info("using the existing dataset %s", folder)
    except LesiongenError:
        folder = write_demo_dataset(raw_root(), config)
        logger.info("wrote the demo dataset to %s", folder)
    dataset = workflow.open_dataset(folder.name)
    workflow.check_dataset(dataset, full=True, num_processes=args.num_processes)
    fingerprint = workflow.run_fingerprint(dataset, args.num_processes)
    plans = workflow.run_planning(dataset, fingerprint, presets=() if args.full_size_networks else (CPU,))
    counts = workflow.run_preprocessing(dataset, plans, args.num_processes)
    shown = plans if args.full_size_networks else PRESETS[CPU](plans)  # the plans the demo trains with
    lines = _report(dataset.name, fingerprint, shown, counts, workflow.preprocessed_folder(dataset))
    if args.mask_steps > 0:
        args.plans = plans.plans_name if args.full_size_networks else PRESET_NAMES[CPU]
        if not args.full_size_networks:
            lines.append(f"  networks: CPU-sized for the demo, plans {args.plans} (--full_size_networks keeps the "
                         "planned ones)")
        lines += _mask_generators(dataset.name, args)
        lines += _synthesis(dataset, args)
        lines += _segmentation(dataset.name, args)
    print("\n".join(lines))


def _mask_generators(name: str, args: argparse.Namespace) -> list[str]:
    """Train the mask generators briefly on fold 0 and compare their masks with held-out lesions."""
    from lesiongen.evaluation.evaluate_masks import evaluate_mask_generators, evaluation_folder
    from lesiongen.models.registry import MASK_GENERATORS
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.utilities.devices import pick_device

    dataset = open_preprocessed(name, args.plans)
    device = pick_device(args.device)
    for trainer_name in MASK_GENERATORS:
        _train(dataset, trainer_name, args.mask_steps, args)
    report = evaluate_mask_generators(dataset, 0, list(MASK_GENERATORS), device=str(device))
    lines = [f"  mask generators trained {args.mask_steps} steps (batch {args.batch_size}) on fold 0; "
             "Wasserstein distances to the held-out lesions (lower is closer):"]
    for method, result in report["methods"].items():
        w = result["wasserstein"]
        lines.append(f"    {method:<10} log-volume {_fmt(w['log_volume_mm3'])}, radius {_fmt(w['radius_mm'])} mm, "
                     f"sphericity {_fmt(w['sphericity'])}, lesions/patch {_fmt(w['lesions_per_patch'])}")
    lines.append(f"  mask report (table, histograms, gallery): {evaluation_folder(dataset, 0)}")
    return lines


def _synthesis(raw_dataset, args: argparse.Namespace) -> list[str]:
    """Train the inpainter briefly, then put spheremask lesions into every healthy scan with previews."""
    from lesiongen.inference.predict import PredictOptions, find_input_cases
    from lesiongen.inference.run_predict import predict, resolve_models
    from lesiongen.paths import results_root
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.utilities.devices import pick_device

    dataset = open_preprocessed(raw_dataset.name, args.plans)
    device = pick_device(args.device)
    _train(dataset, "inpaint", args.inpaint_steps, args)
    healthy = raw_dataset.split("healthy")
    if not healthy:
        return ["  no healthy scans: synthesis skipped"]
    folder = healthy[0].images[0].parent
    masks = healthy[0].brain_mask.parent if healthy[0].brain_mask else None
    tissue = healthy[0].tissue.parent if healthy[0].tissue else None
    cases = find_input_cases(folder, dataset.plans.channel_names, brain_masks=masks, tissue=tissue)
    out = results_root() / dataset.name / "demo_synthesis"
    # spheremask masks: the demo's briefly trained diffmask is not worth waiting for on a CPU
    options = PredictOptions(mode="synth", resume=True, preview=True, masks="spheremask")
    models = resolve_models(results_root() / dataset.name, options, dataset.plans.plans_name)
    counts = predict(models, cases, out, options, [0], str(device))
    return [f"  inpainter trained {args.inpaint_steps} steps; spheremask lesions put into {len(cases)} healthy "
            f"scan(s) ({counts['done']} new): {out}", f"  previews: {out / 'previews'} (gallery.png)"]


def _train(dataset, name: str, steps: int | None, args: argparse.Namespace, settings: dict | None = None,
           **variant) -> None:
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class
    from lesiongen.utilities.devices import pick_device

    options = TrainingOptions(total_steps=steps, batch_size=args.batch_size if name != "seg" else None,
                              save_every=max(1, (steps or 1) // 4))
    trainer = trainer_class(name)(dataset, 0, pick_device(args.device), options, **variant)
    trainer.apply_settings(settings or {})
    reason = trainer.stale_reason()
    if reason is None:
        logger.info("%s fold 0 already trained as asked (%s)", trainer.folder_name, trainer.output_folder)
        return
    if reason != "not trained yet":
        logger.info("%s fold 0 is trained, but %s: training it again", trainer.folder_name, reason)
    trainer.run_training()


def _segmentation(name: str, args: argparse.Namespace) -> list[str]:
    """A short seg fold with real data only and one with synthetic cases (sphere masks + inpainter), compared."""
    from lesiongen.evaluation.compare import run_comparison
    from lesiongen.preprocessing.dataset import open_preprocessed

    dataset = open_preprocessed(name, args.plans)
    for strategy in ("none", "sphere"):
        # no mirroring when scoring the validation cases: 8 times faster, and the demo's time goes to training
        _train(dataset, "seg", args.seg_steps, args, {"synthetic_ratio": 0.5, "mirror_validation": False},
               strategy=strategy)
    _, paths = run_comparison(dataset.name, dataset.plans.plans_name, ["0"])
    return [f"  seg fold 0 trained {args.seg_steps} steps with real data only and with synthetic cases (sphere masks "
            "+ the inpainter, half as many as real cases); validation Dice, lesion F1 ...:",
            *("    " + line for line in paths["markdown"].read_text().splitlines() if line.startswith(("|", "- "))),
            f"  comparison: {paths['markdown'].parent}",
            "  one fold, one seed, short CPU runs: this shows the machinery; lesiongen_benefit answers whether "
            "synthetic lesions help (held-out test scans, several seeds, confidence intervals)"]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _report(name, fingerprint, plans, counts, folder: Path) -> list[str]:
    lines = [
        f"lesiongen demo: {name}, plans {plans.plans_name}",
        f"  cases: {len(fingerprint.cases)} lesion cases, "
        f"{sum(c.lesion_count for c in fingerprint.cases)} lesions",
        f"  target spacing (z, y, x): {[round(s, 3) for s in plans.target_spacing]} mm",
        f"  lesion patch: {plans.lesion_patch_size} voxels ({plans.lesion_fraction_fitting:.0%} of lesions fit)",
    ]
    for stage, stage_plan in plans.stages.items():
        lines.append(f"  {stage}: patch {stage_plan.patch_size}, batch {stage_plan.batch_size}, "
                     f"~{stage_plan.estimated_memory_gb:.1f} GB")
    for label, prior in plans.sphere_priors.items():
        r = prior.radius_mm.quantiles
        tissue = {k: round(v, 2) for k, v in prior.tissue_probability.probabilities.items()}
        lines.append(f"  class {label} sphere prior: radius median {r.get('q50', 0):.1f} mm "
                     f"(5-95 %: {r.get('q05', 0):.1f}-{r.get('q95', 0):.1f}), tissue {tissue}")
        if prior.neighbourhood is not None:  # what the lesions border, which placement follows
            bank = prior.neighbourhood
            mean = [sum(column) / len(bank.shares) for column in zip(*bank.shares)]
            names = {value: name for name, value in plans.tissue_labels.items()}
            lines.append(f"    its lesions' {bank.shell_mm:g} mm shells: " + ", ".join(
                f"{names.get(value, value)} {share:.0%}" for value, share in zip(bank.tissue_classes, mean)))
    lines.append(f"  preprocessed: {counts['done']} new, {counts['skipped']} up to date, "
                 f"{counts['lesion_patches']} new lesion patches")
    lines.append(f"  outputs: {folder}")
    return lines


def main_demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make the demo dataset (if missing) and run the pipeline on it.")
    parser.add_argument("-np", "--num_processes", type=positive_int, default=DEFAULT_PROCESSES)
    parser.add_argument("--mask_steps", type=int, default=100,
                        help="training steps of unetmask, diffmask and ganmask (0: stop after preprocessing)")
    parser.add_argument("--inpaint_steps", type=positive_int, default=150, help="training steps of the inpainter")
    parser.add_argument("--seg_steps", type=positive_int, default=300, help="training steps of each seg fold")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="batch size of the mask generators and the inpainter")
    parser.add_argument("--full_size_networks", action="store_true",
                        help="train the planned networks instead of CPU-sized ones")
    add_device_argument(parser)
    _add_dataset_arguments(parser)
    add_common_arguments(parser)
    return run_command(_demo, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main_demo())
