"""diffmask's lesions off its spheres: how many its masks hold at the calibrated threshold, with and without the
sampling rule that drops them (``DiffMaskConfig.lesions_on_controls_only``), on one trained network; and whether
that threshold is where its masks come closest to the real lesions.

    python benchmarks/diffmask_off_sphere.py [--realistic] [--steps 400] [--seed N] [--draws 2] [--repeats 4]
                                             [--samplers ddim:100 ...] [--sweep_sets 4] [-np 2] [--work DIR]
                                             [--json FILE]

From scratch in a new work folder: the demo dataset of the benefit runs (8 lesion cases, 8 healthy, 12 test;
``--realistic``: 180x210x170 voxels at 1 mm), planned and preprocessed with the CPU preset, diffmask trained on every
training case (fold ``all``, as ``lesiongen_benefit`` trains it) for ``--steps`` (its threshold calibrated counting
every component, as always). Then, at that threshold, on the same denoised masks for both sampling rules (every
component kept, as models trained before the rule sample; components off every sphere dropped, as models trained
since do):

* the training patches with their real lesions' spheres as controls (what calibration sees): real lesions per patch,
  lesions made on the spheres, components off every sphere (and how many touch the patch border), their sizes;
* ``--draws`` single-lesion spheres per training patch drawn from the fold's prior, as whole-scan synthesis draws a
  lesion: components on and off the sphere per lesion, the made lesion's voxels against the drawn ellipsoid's;
* each patch's centre lesion alone as the control: the made lesion's voxels against that real lesion's (median log
  ratio), i.e. whether the threshold gives real lesion sizes for a real lesion's sphere;
* a threshold sweep on masks made as ``sample_masks`` makes them (spheres drawn from the fold's priors for each
  training patch, ``--draws`` times; the model's sampling rule; cut to the brain, small components dropped): per
  candidate threshold, the Wasserstein distance of each mask statistic to the training patches' real lesions, their
  sum and maximum in units of the real statistic's spread, the made minus the real median of each statistic (which
  way they differ) and the masks left empty (synthesis redraws those);
* the same sweep on ``--sweep_sets`` further single draws of spheres and noise: whether its lowest is steady;
* the same sweep with each of ``--samplers`` (e.g. ``ddim:100``) on the same network: whether the made lesions'
  shape is the sampler's or the network's;
* the calibration repeated with ``--repeats`` noise draws over every training patch: the threshold each one chooses
  (how much the choice depends on the noise).

Writes ``benchmarks/results/diffmask_off_sphere_<date>.json`` (or ``--json``) with the calibration, the tables, the
minutes per step and the provenance (code version, the model's sha256, steps and seed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (  # noqa: E402
    benefit_demo_arguments, console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

DATASET, PLANS = "501", "lesiongenPlansCPU"


def component_table(masks: np.ndarray, controls: np.ndarray) -> dict:
    """Per mask: components sharing a voxel with its control (made for a sphere) and the others (off every sphere),
    how many of those touch the patch border, and the median voxels of each kind."""
    from lesiongen.utilities.components import label_components

    on, off, off_border = [], [], 0
    for mask, control in zip(masks, controls):
        ids, count = label_components(mask > 0)
        faces = {int(v) for a in range(3) for i in (0, -1) for v in np.unique(np.take(ids, i, axis=a))}
        for component in range(1, count + 1):
            voxels = ids == component
            if (voxels & (control > 0)).any():
                on.append(int(voxels.sum()))
            else:
                off.append(int(voxels.sum()))
                off_border += component in faces
    n = max(len(masks), 1)
    return {"on_sphere_per_mask": len(on) / n, "off_sphere_per_mask": len(off) / n,
            "off_sphere_touching_border": off_border, "off_sphere_total": len(off),
            "on_sphere_median_voxels": float(np.median(on)) if on else 0.0,
            "off_sphere_median_voxels": float(np.median(off)) if off else 0.0}


def centre_lesions(masks: np.ndarray, spacing: list[float]) -> tuple[list, np.ndarray]:
    """Per patch, the real lesion nearest the patch centre (the one the patch was cut around): its sphere and its
    voxels."""
    from lesiongen.models.spheres import lesion_spheres_from_mask
    from lesiongen.utilities.components import label_components

    centre = np.array(masks.shape[1:]) // 2
    spheres, voxels = [], []
    for mask in masks:
        ids, _ = label_components(mask > 0)
        points = np.argwhere(ids > 0)
        nearest = ids[tuple(points[np.argmin(((points - centre) ** 2).sum(axis=1))])]
        lesion = np.where(ids == nearest, mask, 0)
        spheres.append(lesion_spheres_from_mask(lesion, spacing)[0])
        voxels.append(int((ids == nearest).sum()))
    return spheres, np.array(voxels)


def analyse(steps: int, draws: int, repeats: int, samplers: list[tuple[str, int]], sweep_sets: int) -> dict:
    from lesiongen.inference.synthesis import _single_lesion_priors
    from lesiongen.models.conditioning import keep_components_on_controls
    from lesiongen.models.folder import ModelFolder, trainer_folder
    from lesiongen.models.registry import load_model
    from lesiongen.models.spheres import lesion_spheres_from_mask, render_ellipsoids, sample_sphere_lesions
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer, calibrated_masks
    from lesiongen.utilities.files import read_json

    dataset = open_preprocessed(DATASET, PLANS)
    folder = ModelFolder(trainer_folder(dataset.name, "diffmask", PLANS))
    model = load_model(folder, "all")
    trainer = DiffMaskTrainer(dataset, "all", "cpu")
    trainer.load_training_data()
    data = trainer.data
    summary = read_json(folder.path / "fold_all" / "training_summary.json")
    threshold = model.config.threshold
    rules = {"keep every component (before)": False, "drop off-sphere (now)": True}
    record = {"threshold": threshold, "calibration": summary["calibration"]}

    # the same denoised masks for both rules
    spacing, patch = model.spacing, model.patch_size
    full = [lesion_spheres_from_mask(m, spacing) for m in data.masks]
    rng = np.random.default_rng(0)
    priors = _single_lesion_priors(model.priors, int(sorted(model.priors)[0]))
    index = np.tile(np.arange(len(data)), draws)
    drawn = [sample_sphere_lesions(priors, patch, spacing, rng, brain=data.brain[i], tissue=data.tissue_at([i])[0]
                                   if data.tissue is not None else None) for i in index]
    target = np.array([(render_ellipsoids(s, patch, spacing, model.minimum_voxels()) > 0).sum() for s in drawn])
    centre_spheres, centre_voxels = centre_lesions(data.masks, spacing)
    sets = {"real spheres (calibration's patches)": (full, np.arange(len(data))),
            "one prior sphere per lesion (whole-scan synthesis)": (drawn, index),
            "the centre lesion's sphere": ([[s] for s in centre_spheres], np.arange(len(data)))}
    tables: dict = {}
    for name, (spheres, rows) in sets.items():
        controls = model.render_controls(spheres)
        denoised, _ = model.denoise(controls, data.tissue_at(rows), seed=list(range(len(rows))))
        for rule, drop in rules.items():
            masks = calibrated_masks(denoised, threshold, data.brain[rows], model.binarise, model.minimum_voxels())
            if drop:
                masks = np.stack([keep_components_on_controls(m, c) for m, c in zip(masks, controls)])
            table = component_table(masks, controls)
            made = np.array([int((keep_components_on_controls(m, c) > 0).sum()) for m, c in zip(masks, controls)])
            if name.startswith("one prior"):
                table["made_over_drawn_median_log_ratio"] = float(np.median(np.log((made + 1) / (target + 1))))
                table["drawn_median_voxels"] = float(np.median(target))
            if name.startswith("the centre"):
                table["made_over_real_median_log_ratio"] = float(np.median(np.log((made + 1) / (centre_voxels + 1))))
            if name.startswith("real spheres"):
                from lesiongen.utilities.components import label_components
                table["real_lesions_per_patch"] = float(np.mean([label_components(m > 0)[1] for m in data.masks]))
            tables.setdefault(name, {})[rule] = table
    record["tables"] = tables
    record["threshold_sweep"] = threshold_sweep(model, data, draws)
    record["other_samplers"] = {
        f"{name}:{evaluations}": threshold_sweep(model, data, draws, replace(
            model.config.schedule, sampler=name, num_inference_steps=evaluations))
        for name, evaluations in samplers}
    record["independent_sweeps"] = independent_sweeps(model, data, sweep_sets)
    record["calibration_repeats"] = calibration_repeats(model, data, trainer.controls, repeats)
    record["model"] = {"sha256": hashlib.sha256(folder.checkpoint("all").read_bytes()).hexdigest(), "steps": steps,
                       "seed": summary["provenance"]["seed"], "git_commit": summary["provenance"]["git_commit"]}
    return record


def threshold_sweep(model, data, draws: int, schedule=None, first_draw: int = 0) -> dict:
    """Per candidate threshold: masks made as ``sample_masks`` makes them for every training patch (``draws`` sets of
    prior spheres, one denoising each, numbered from ``first_draw``; with ``schedule``'s sampler, default the model's)
    against the patches' real lesions; see the module docstring."""
    from lesiongen.evaluation.mask_metrics import METRICS, mask_statistics, wasserstein_distances
    from lesiongen.models.conditioning import MaskConditioning, drop_small_components, keep_components_on_controls
    from lesiongen.training.trainers.diffmask import THRESHOLDS

    n = len(data)
    conditioning = MaskConditioning(brain=data.brain, tissue=data.tissue, images=data.images)
    denoised, controls = [], []
    for draw in range(first_draw, first_draw + draws):
        spheres = model.draw_spheres(n, conditioning, np.random.default_rng(1000 + draw))
        controls.append(model.render_controls(spheres))
        denoised.append(model.denoise(controls[-1], data.tissue, seed=2000 + draw, schedule=schedule)[0])
    denoised, controls = np.concatenate(denoised), np.concatenate(controls)
    rows = np.tile(np.arange(n), draws)
    real = mask_statistics(data.masks, model.spacing, data.tissue)
    spread = {metric: float(np.std(real.values(metric))) for metric in METRICS}
    used = [metric for metric in METRICS if spread[metric] > 0]
    minimum_voxels = model.minimum_voxels()
    sweep = {}
    for threshold in THRESHOLDS:
        masks = model.binarise(denoised, float(threshold))
        if model.config.lesions_on_controls_only:
            masks = np.stack([keep_components_on_controls(m, c) for m, c in zip(masks, controls)])
        masks[~data.brain[rows].astype(bool)] = 0
        masks = np.stack([drop_small_components(m, minimum_voxels) for m in masks])
        made = mask_statistics(masks, model.spacing, data.tissue_at(rows))
        distances = wasserstein_distances(real, made)
        scaled = [distances[metric] / spread[metric] for metric in used]
        # The distance has no sign: which way the made lesions differ (larger? rounder?) needs the medians.
        median_shift = {metric: float(np.median(made.values(metric)) - np.median(real.values(metric)))
                        if made.values(metric).size else None for metric in METRICS}
        sweep[f"{threshold:+.1f}"] = {**distances, "median_made_minus_real": median_shift,
                                      "sum_in_spreads": float(np.sum(scaled)),
                                      "max_in_spreads": float(np.max(scaled)),
                                      "empty_masks": int(sum(not m.any() for m in masks)), "masks": len(masks)}
    best = {key: min(sweep, key=lambda t: sweep[t][key]) for key in ("sum_in_spreads", "max_in_spreads")}
    return {"calibrated": f"{model.config.threshold:+.1f}", "best": best, "thresholds": sweep}


def independent_sweeps(model, data, sets: int) -> dict:
    """The sweep on ``sets`` further single draws of spheres and noise, numbered apart from the main sweep's: the
    threshold with the lowest sum in each and every threshold's sum, to tell a steady lowest from one draw's noise."""
    sweeps = [threshold_sweep(model, data, 1, first_draw=4000 + k) for k in range(sets)]
    sums = [{threshold: row["sum_in_spreads"] for threshold, row in sweep["thresholds"].items()} for sweep in sweeps]
    return {"lowest": [sweep["best"]["sum_in_spreads"] for sweep in sweeps], "sums_in_spreads": sums}


def calibration_repeats(model, data, controls: np.ndarray, repeats: int) -> dict:
    """The threshold calibration (every training patch, the real lesions' spheres) chooses with each of ``repeats``
    noise draws, and its scores."""
    from lesiongen.training.trainers.diffmask import calibrate_threshold

    chosen, scores = [], []
    for repeat in range(repeats):
        denoised, _ = model.denoise(controls, data.tissue, seed=3000 + repeat)
        best, score = calibrate_threshold(denoised, data.masks, data.brain, model.binarise, model.minimum_voxels())
        chosen.append(best)
        scores.append({f"{t:+.1f}": round(v, 4) for t, v in score.items()})
    return {"patches": len(data), "chosen": chosen, "scores": scores}


def sampler_steps(text: str) -> tuple[str, int]:
    """``dpm_solver:50`` -> ("dpm_solver", 50): a sampler of the model's noise schedule and its network evaluations
    (ddpm is left out: it always takes every training timestep, hours per sweep at 1 mm on a CPU)."""
    from lesiongen.diffusion.schedules import SAMPLERS

    samplers = tuple(sampler for sampler in SAMPLERS if sampler != "ddpm")
    name, _, steps = text.partition(":")
    if name not in samplers or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': write SAMPLER:STEPS with a sampler of {samplers}")
    return name, int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realistic", action="store_true")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=None, help="diffmask's training seed (default: lesiongen_train's)")
    parser.add_argument("--draws", type=int, default=2, help="prior spheres drawn per training patch")
    parser.add_argument("--repeats", type=int, default=4, help="noise draws the calibration is repeated with")
    parser.add_argument("--samplers", type=sampler_steps, nargs="*", default=[], metavar="SAMPLER:STEPS",
                        help="further samplers to sweep the thresholds with on the same network, e.g. ddim:100")
    parser.add_argument("--sweep_sets", type=int, default=0,
                        help="further sweeps, each on its own single draw of spheres and noise (is the lowest steady?)")
    parser.add_argument("-np", "--num_processes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder, new or empty (default: temporary)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with fresh_work_folder(args.work, "lesiongen_off_sphere_") as work:
        env = work_env(work)
        minutes: dict[str, float] = {}
        start = time.perf_counter()
        write_and_plan_demo(env, minutes, DATASET, benefit_demo_arguments(args.realistic), args.num_processes)
        run_step("train_diffmask", [console_script("lesiongen_train"), DATASET, "diffmask", "all", "-device", "cpu",
                                    "-p", PLANS, "--steps", str(args.steps),
                                    *(["--seed", str(args.seed)] if args.seed is not None else [])], env, minutes)
        os.environ.update(env)  # lesiongen's folders for the analysis in this process
        analysis_start = time.perf_counter()
        record = analyse(args.steps, args.draws, args.repeats, args.samplers, args.sweep_sets)
        minutes["analysis"] = round((time.perf_counter() - analysis_start) / 60, 2)
        minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    for name, rows in record["tables"].items():
        print(name)
        for rule, table in rows.items():
            print(f"  {rule}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in table.items()))
    write_results("diffmask_off_sphere" + ("_realistic" if args.realistic else ""),
                  {"settings": vars(args) | {"work": str(args.work), "json": str(args.json)}, "minutes": minutes,
                   **record}, args.json)
    sweep = record["threshold_sweep"]
    print(f"threshold sweep (masks as sample_masks makes them; calibrated {sweep['calibrated']}, best by sum "
          f"{sweep['best']['sum_in_spreads']}, by max {sweep['best']['max_in_spreads']}):")
    for threshold, row in sweep["thresholds"].items():
        print(f"  {threshold}: sum {row['sum_in_spreads']:.3f}, max {row['max_in_spreads']:.3f} (in real spreads), "
              f"empty {row['empty_masks']}/{row['masks']}")
    for sampler, other in record["other_samplers"].items():
        best = other["best"]["sum_in_spreads"]
        at_calibrated = other["thresholds"][other["calibrated"]]["sum_in_spreads"]
        print(f"{sampler}: best by sum {best} ({other['thresholds'][best]['sum_in_spreads']:.3f} in real spreads), "
              f"at the calibrated {other['calibrated']}: {at_calibrated:.3f}")
    if record["independent_sweeps"]["lowest"]:
        print(f"lowest sum on {len(record['independent_sweeps']['lowest'])} further draws: "
              f"{record['independent_sweeps']['lowest']}")
    print(f"calibration with {len(record['calibration_repeats']['chosen'])} noise draws chose "
          f"{record['calibration_repeats']['chosen']}")
    print(f"wall time {minutes['wall']:.1f} min")


if __name__ == "__main__":
    main()
