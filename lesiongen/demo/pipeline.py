"""``lesiongen_demo``'s pipeline: the demo dataset (written if missing), plan and preprocess, brief trainings of every
stage on fold 0, and the lines that report what each produced."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lesiongen import workflow
from lesiongen.demo.phantom import DemoConfig, write_demo_dataset
from lesiongen.evaluation.compare import run_comparison
from lesiongen.evaluation.evaluate_masks import evaluate_mask_generators, evaluation_folder
from lesiongen.inference.predict import PredictOptions, find_input_cases
from lesiongen.inference.run_predict import predict, resolve_models
from lesiongen.io.dataset import find_dataset_folder
from lesiongen.models.registry import MASK_GENERATORS
from lesiongen.paths import raw_root, results_root
from lesiongen.planning.presets import CPU, PRESETS
from lesiongen.preprocessing.dataset import PreprocessedDataset, open_preprocessed
from lesiongen.training.base import TrainingOptions
from lesiongen.training.registry import trainer_class
from lesiongen.utilities.devices import pick_device
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger("lesiongen.demo")


@dataclass(frozen=True)
class DemoRunOptions:
    """How long each stage trains; the demo trains fold 0 only."""

    num_processes: int
    mask_steps: int = 100  # unetmask, diffmask and ganmask; 0: stop after preprocessing
    inpaint_steps: int = 150
    seg_steps: int = 300  # each seg fold
    batch_size: int = 8  # the mask generators and the inpainter
    full_size_networks: bool = False  # the planned networks instead of the CPU preset's
    device: str | None = None  # None: cuda when available, else cpu


def run_demo(config: DemoConfig, options: DemoRunOptions) -> list[str]:
    """Run the pipeline on the demo dataset ``config`` describes; return the report's lines."""
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
    workflow.check_dataset(dataset, full=True, num_processes=options.num_processes)
    fingerprint = workflow.run_fingerprint(dataset, options.num_processes)
    plans = workflow.run_planning(dataset, fingerprint, presets=() if options.full_size_networks else (CPU,))
    counts = workflow.run_preprocessing(dataset, plans, options.num_processes)
    shown = plans if options.full_size_networks else PRESETS[CPU](plans)  # the plans the demo trains with
    lines = demo_report(dataset.name, fingerprint, shown, counts, workflow.preprocessed_folder(dataset))
    if options.mask_steps > 0:
        preprocessed = open_preprocessed(dataset.name, shown.plans_name)
        if not options.full_size_networks:
            lines.append(f"  networks: CPU-sized for the demo, plans {shown.plans_name} (--full_size_networks keeps "
                         "the planned ones)")
        lines += _mask_generators(preprocessed, options)
        lines += _synthesis(dataset, preprocessed, options)
        lines += _segmentation(preprocessed, options)
    return lines


def _mask_generators(dataset: PreprocessedDataset, options: DemoRunOptions) -> list[str]:
    """Train the mask generators briefly on fold 0 and compare their masks with held-out lesions."""
    for trainer_name in MASK_GENERATORS:
        _train(dataset, trainer_name, options.mask_steps, options)
    report = evaluate_mask_generators(dataset, 0, list(MASK_GENERATORS), device=str(pick_device(options.device)))
    lines = [f"  mask generators trained {options.mask_steps} steps (batch {options.batch_size}) on fold 0; "
             "Wasserstein distances to the held-out lesions (lower is closer):"]
    for method, result in report["methods"].items():
        w = result["wasserstein"]
        lines.append(f"    {method:<10} log-volume {_fmt(w['log_volume_mm3'])}, radius {_fmt(w['radius_mm'])} mm, "
                     f"sphericity {_fmt(w['sphericity'])}, lesions/patch {_fmt(w['lesions_per_patch'])}")
    lines.append(f"  mask report (table, histograms, gallery): {evaluation_folder(dataset, 0)}")
    return lines


def _synthesis(raw_dataset, dataset: PreprocessedDataset, options: DemoRunOptions) -> list[str]:
    """Train the inpainter briefly, then put spheremask lesions into every healthy scan with previews."""
    _train(dataset, "inpaint", options.inpaint_steps, options)
    healthy = raw_dataset.split("healthy")
    if not healthy:
        return ["  no healthy scans: synthesis skipped"]
    folder = healthy[0].images[0].parent
    masks = healthy[0].brain_mask.parent if healthy[0].brain_mask else None
    tissue = healthy[0].tissue.parent if healthy[0].tissue else None
    cases = find_input_cases(folder, dataset.plans.channel_names, brain_masks=masks, tissue=tissue)
    out = results_root() / dataset.name / "demo_synthesis"
    # spheremask masks: the demo's briefly trained diffmask is not worth waiting for on a CPU
    predict_options = PredictOptions(mode="synth", resume=True, preview=True, masks="spheremask")
    models = resolve_models(results_root() / dataset.name, predict_options, dataset.plans.plans_name)
    counts = predict(models, cases, out, predict_options, [0], str(pick_device(options.device)))
    return [f"  inpainter trained {options.inpaint_steps} steps; spheremask lesions put into {len(cases)} healthy "
            f"scan(s) ({counts['done']} new): {out}", f"  previews: {out / 'previews'} (gallery.png)"]


def _train(dataset: PreprocessedDataset, name: str, steps: int, options: DemoRunOptions,
           settings: dict | None = None, **variant) -> None:
    """Train fold 0 of ``name`` unless a model trained as asked is there already."""
    training = TrainingOptions(total_steps=steps, batch_size=options.batch_size if name != "seg" else None,
                               save_every=max(1, steps // 4))
    trainer = trainer_class(name)(dataset, 0, pick_device(options.device), training, **variant)
    trainer.apply_settings(settings or {})
    reason = trainer.stale_reason()
    if reason is None:
        logger.info("%s fold 0 already trained as asked (%s)", trainer.folder_name, trainer.output_folder)
        return
    if reason != "not trained yet":
        logger.info("%s fold 0 is trained, but %s: training it again", trainer.folder_name, reason)
    trainer.run_training()


# mirror_validation: no mirroring when scoring the validation cases (8 times faster; the demo's time goes to training).
# balanced_ce_until: the demo's seg runs are short, and on a short schedule nnU-Net's plain cross-entropy can leave
# real-only near background, which makes synthetic cases look like a cure for the schedule (segmentation.md).
DEMO_SEG_SETTINGS = {"synthetic_ratio": 0.5, "mirror_validation": False, "balanced_ce_until": 0.5}


def _segmentation(dataset: PreprocessedDataset, options: DemoRunOptions) -> list[str]:
    """A short seg fold with real data only and one with synthetic cases (sphere masks + inpainter), compared."""
    for strategy in ("none", "sphere"):
        _train(dataset, "seg", options.seg_steps, options, DEMO_SEG_SETTINGS, strategy=strategy)
    _, paths = run_comparison(dataset.name, dataset.plans.plans_name, ["0"])
    return [f"  seg fold 0 trained {options.seg_steps} steps (class-balanced start of the loss) with real data only "
            "and with synthetic cases (sphere masks + the inpainter, half as many as real cases); validation Dice, "
            "lesion F1 ...:",
            *("    " + line for line in paths["markdown"].read_text().splitlines()
              if line.startswith(("|", "- ", "**Warning**"))),
            f"  comparison: {paths['markdown'].parent}",
            "  one fold, one seed, short CPU runs: this shows the machinery; lesiongen_benefit answers whether "
            "synthetic lesions help (held-out test scans, several seeds, confidence intervals)"]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def demo_report(name, fingerprint, plans, counts, folder: Path) -> list[str]:
    """The lines on the dataset, its plans and its preprocessing."""
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
