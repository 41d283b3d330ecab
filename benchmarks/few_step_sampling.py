"""Few-step sampling against today's default sampler, side by side on the same trained models (issue 15).

    python benchmarks/few_step_sampling.py [--diffmask_steps 120] [--inpaint_steps 150] [--batch 8]
        [--max_patches 32] [-n 48] [--seeds 0 1] [--models inpaint diffmask] [--short_schedule]
        [--distill_steps N [--distill_trajectories 256] [--distill_real_fraction 0]]
        [--realistic] [--n_lesion_cases N] [-device cpu] [--work DIR] [--json FILE]

From scratch in a new work folder (models are never reused): the demo dataset (``--realistic``: 180x210x170 voxels
at 1 mm; ``--n_lesion_cases``: with more lesion cases), planned and preprocessed with the CPU preset (``-p
lesiongenPlansCPU``), diffmask and the inpainter trained on fold 0 with their default settings (``--models``: only
these of the two; diffmask's threshold is calibrated after training for each sampling preset, so both samplers run
the same weights with the threshold fitted to them; the few-step sampler itself is chosen then, see
``documentation/few_step_sampling.md``).
``--short_schedule``: each model is also trained, same steps and seed, with ``--set
few_step_training=true`` (only at the few-step sampler's timesteps, fastWDM3D-style) in a results folder of its own.
``--distill_steps N``: diffmask is trained with ``--set distill_steps=N`` (a 4-step student distilled from its
20-step sampler after training, one more candidate of the few-step choice) and its student is a third mask arm
(``--sampling distilled``); the default and few-step arms run the same model. ``--distill_real_fraction F``: that
share of each distillation batch is real training patches noised to the student's timesteps.
Then, on fold 0's held-out lesion patches, each model is evaluated once per sampler (``--sampling default`` and
``--sampling few_step``; the short-schedule model with its own, few-step sampler) and evaluation seed (``--seeds``:
other fake-mask placements, sampling noise and spheres; the table gives the mean and the spread over seeds, and the
paired difference to the default, same seed = same masks and patches, with its 95 % bootstrap interval over seeds
and on how many seeds the arm is above / below the default):

* ``lesiongen_evaluate_inpainting``: network evaluations and seconds per patch (counted by the model), remove mode on
  fake masks over healthy tissue (in-mask SSIM / PSNR after BraTS-style normalisation, in-mask spread ratio), remove
  mode on real lesions (contrast left), insert mode (contrast Wasserstein in units of the real spread and ratio of
  means, with and without the contrast calibration; DiffMapIoU; SSIM outside the mask);
* ``lesiongen_evaluate_masks -tr diffmask``: network evaluations and seconds per mask, and the Wasserstein distances
  of the generated masks' lesion statistics to the held-out real lesions'.

It prints a table (ratios and paired differences to the default) and writes
``benchmarks/results/few_step_sampling_<date>.json`` (or ``--json``) with every report, the settings, the minutes
per step and the provenance (code version, and the sha256, steps and seed of every model used).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

SAMPLINGS = ("default", "few_step")
SHORT_SCHEDULE = "short_schedule"  # the model trained only at the few-step timesteps, with its own sampler
DISTILLED = "distilled"  # diffmask's distilled student (masks only)
MODELS = ("diffmask", "inpaint")
PLANS = "lesiongenPlansCPU"


def run(args: argparse.Namespace, work: Path) -> dict:
    env = work_env(work)
    short_env = dict(env, lesiongen_results=str(work / "results_short_schedule"))
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    demo = (["--realistic"] if args.realistic else []) + (
        ["--n_lesion_cases", str(args.n_lesion_cases)] if args.n_lesion_cases else [])
    write_and_plan_demo(env, minutes, "501", demo, args.num_processes)
    common = ["0", "-device", args.device, "-p", PLANS, "--batch_size", str(args.batch)]
    steps = {"diffmask": args.diffmask_steps, "inpaint": args.inpaint_steps}
    distill = ["--set", f"distill_steps={args.distill_steps}", "--set",
               f"distill_trajectories={args.distill_trajectories}", "--set",
               f"distill_real_fraction={args.distill_real_fraction}"] if args.distill_steps else []
    for model in (m for m in MODELS if m in args.models):
        run_step(f"train_{model}", [console_script("lesiongen_train"), "501", model, *common, "--steps",
                                    str(steps[model]), *(distill if model == "diffmask" else [])], env, minutes)
        if args.short_schedule:
            run_step(f"train_{model}_short_schedule", [
                console_script("lesiongen_train"), "501", model, *common, "--steps", str(steps[model]), "--set",
                "few_step_training=true"], short_env, minutes)
    # arm -> (environment, --sampling): the same full-schedule model with both samplers, the short-schedule one
    arms = {sampling: (env, sampling) for sampling in SAMPLINGS}
    if args.short_schedule:
        arms[SHORT_SCHEDULE] = (short_env, "model")
    if args.distill_steps and "diffmask" in args.models:
        arms[DISTILLED] = (env, DISTILLED)
    reports: dict[str, dict] = {"inpainting": {arm: [] for arm in arms}, "masks": {arm: [] for arm in arms}}
    for seed in args.seeds:
        for arm, (arm_env, sampling) in arms.items():  # alternating, so every arm meets the same machine load
            if "inpaint" in args.models and arm != DISTILLED:
                out = work / f"inpainting_{arm}_seed{seed}"
                run_step(f"evaluate_inpainting_{arm}_seed{seed}", [
                    console_script("lesiongen_evaluate_inpainting"), "-d", "501", "-f", "0", "-p", PLANS, "-device",
                    args.device, "--sampling", sampling, "--max_patches", str(args.max_patches), "--full_patches",
                    "0", "--seed", str(seed), "-o", str(out)], arm_env, minutes)
                reports["inpainting"][arm].append(json.loads((out / "inpainting_evaluation.json").read_text()))
            if "diffmask" in args.models:
                out = work / f"masks_{arm}_seed{seed}"
                run_step(f"evaluate_masks_{arm}_seed{seed}", [
                    console_script("lesiongen_evaluate_masks"), "-d", "501", "-f", "0", "-p", PLANS, "-device",
                    args.device, "-tr", "diffmask", "--sampling", sampling, "-n", str(args.n_masks), "--seed",
                    str(seed), "-o", str(out)], arm_env, minutes)
                reports["masks"][arm].append(json.loads((out / "mask_evaluation.json").read_text()))
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    return {"minutes": minutes, "calibration": diffmask_calibration(env) if "diffmask" in args.models else None,
            **reports}


def diffmask_calibration(env: dict) -> dict:
    """What diffmask's calibration after training chose: the thresholds, and the few-step sampler with every
    candidate's distances to the real training lesions (from its checkpoint)."""
    from lesiongen.models.checkpoint import load_checkpoint

    checkpoint = next(Path(env["lesiongen_results"]).glob(f"*/diffmask__{PLANS}/fold_0/checkpoint_final.pt"))
    extra = load_checkpoint(checkpoint)["extra"]
    calibration = extra["calibration"]
    return {**{key: calibration.get(key) for key in ("threshold", "few_step_variant", "few_step_variants",
                                                     "choice_patches", "choice_on_fit_patches", "default_distances",
                                                     "preferred", "presets")},
            "distillation": extra.get("distillation")}


def _lookup(report, keys: tuple) -> float | None:
    for key in keys:
        if report is None:
            return None
        report = report[key] if isinstance(report, dict) else report[int(key)]
    return report


def _over_seeds(reports: list[dict], keys: tuple) -> dict:
    """Mean and standard deviation over the evaluation seeds of one value of the reports."""
    values = [v for v in (_lookup(r, keys) for r in reports) if v is not None]
    if not values:
        return {"mean": None, "std": None, "per_seed": []}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": values}


def compared_arms(reports: dict) -> list[str]:
    """The arms the reports hold, the default first (the keys of whichever section was evaluated)."""
    return list(reports["masks"] if reports["masks"][SAMPLINGS[0]] else reports["inpainting"])


def comparison_rows(reports: dict) -> list[dict]:
    """Per metric: default and few-step (mean and spread over seeds) for the table and the JSON."""
    rows = []
    inpainting, masks = reports["inpainting"], reports["masks"]
    arms = compared_arms(reports)

    def add(name: str, *keys, source: dict = inpainting) -> None:
        rows.append({"metric": name, **{arm: _over_seeds(source[arm], keys) for arm in arms}})

    if inpainting[SAMPLINGS[0]]:
        add("inpaint: network evaluations / patch, remove", "remove_fake_masks", "speed",
            "network_evaluations_per_patch")
        add("inpaint: network evaluations / patch, insert", "insert", "speed", "network_evaluations_per_patch")
        add("inpaint: seconds / patch, remove", "remove_fake_masks", "speed", "seconds_per_patch")
        add("inpaint: seconds / patch, insert", "insert", "speed", "seconds_per_patch")
        add("remove (fake masks): in-mask SSIM", "remove_fake_masks", "ssim")
        add("remove (fake masks): in-mask PSNR dB", "remove_fake_masks", "psnr")
        add("remove (fake masks): in-mask MSE", "remove_fake_masks", "mse")
        add("remove (fake masks): in-mask spread ratio", "remove_fake_masks", "std_ratio")
        add("remove (real lesions): mean |contrast| after", "remove_real_lesions", "mean_abs_contrast_after")
        channels = len(inpainting[SAMPLINGS[0]][0]["insert"]["contrast_real_mean"])
        for section, label in (("insert", "insert"), ("insert_uncalibrated", "insert, uncalibrated")):
            for c in range(channels):
                add(f"{label}: contrast W / real std, ch {c}", section, "contrast_wasserstein_over_real_std", c)
                add(f"{label}: contrast W by chance at these sizes, ch {c}", section,
                    "contrast_wasserstein_null_over_real_std", c)
                add(f"{label}: contrast permutation p, ch {c}", section, "contrast_wasserstein_p", c)
                add(f"{label}: contrast mean ratio, ch {c}", section, "contrast_mean_ratio", c)
            add(f"{label}: DiffMapIoU", section, "diff_map_iou")
        add("insert: SSIM outside the mask", "insert", "ssim_outside")
    if masks[SAMPLINGS[0]]:
        add("diffmask: network evaluations / mask", "timing", "diffmask", "network_evaluations_per_mask", source=masks)
        add("diffmask: seconds / mask", "timing", "diffmask", "seconds_per_mask", source=masks)
        for metric in masks[SAMPLINGS[0]][0]["methods"]["diffmask"]["wasserstein"]:
            add(f"diffmask: Wasserstein {metric}", "methods", "diffmask", "wasserstein", metric, source=masks)
    for row in rows:
        for arm in arms[1:]:
            default, other = row["default"]["mean"], row[arm]["mean"]
            row[f"{arm}_over_default"] = other / default if default not in (None, 0) and other is not None else None
            # same seed = same fake masks, spheres and held-out patches in every arm: the paired difference
            # separates the arm from the seed-to-seed spread
            row[f"{arm}_minus_default"] = paired_over_seeds(row[arm]["per_seed"], row["default"]["per_seed"])
    return rows


def paired_over_seeds(arm: list[float], default: list[float]) -> dict:
    """The arm's paired difference to the default over the evaluation seeds: mean, spread, the 95 % bootstrap
    interval of the mean and the Wilcoxon p over seeds (the benefit command's statistics, seeds in the place of
    test cases), and on how many seeds the arm is above / below the default."""
    from lesiongen.evaluation.statistics import paired_difference

    seeds = min(len(arm), len(default))
    if not seeds:
        return {"mean": None, "std": None, "per_seed": []}
    arm_values, default_values = np.array([arm[:seeds]], float), np.array([default[:seeds]], float)
    paired = paired_difference(arm_values, default_values)
    differences = (arm_values - default_values)[0]
    return {"mean": paired.mean, "std": float(np.std(differences)), "per_seed": differences.tolist(),
            "ci95": [paired.ci_low, paired.ci_high], "wilcoxon_p": paired.p_value,
            "seeds_above": paired.cases_better, "seeds_below": paired.cases_worse}


def print_table(rows: list[dict], arms: list[str]) -> None:
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    def cell(entry: dict) -> str:
        return fmt(entry["mean"]) + (f" ± {entry['std']:.2g}" if len(entry["per_seed"]) > 1 else "")

    def paired_cell(entry: dict) -> str:
        if len(entry["per_seed"]) < 2 or entry["mean"] is None:
            return cell(entry)
        low, high = entry["ci95"]
        return (f"{fmt(entry['mean'])} ({fmt(low)} to {fmt(high)}; "
                f"{entry['seeds_above']} above / {entry['seeds_below']} below)")

    header = arms + [f"{arm} / default" for arm in arms[1:]] + [f"{arm} - default, paired (95 % CI; seeds)"
                                                                for arm in arms[1:]]
    print("| metric | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for row in rows:
        cells = ([cell(row[arm]) for arm in arms] + [fmt(row[f"{arm}_over_default"]) for arm in arms[1:]]
                 + [paired_cell(row[f"{arm}_minus_default"]) for arm in arms[1:]])
        print(f"| {row['metric']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffmask_steps", type=int, default=120)
    parser.add_argument("--inpaint_steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8, help="training batch of diffmask and the inpainter")
    parser.add_argument("--max_patches", type=int, default=32, help="held-out lesion patches for the inpainter")
    parser.add_argument("-n", dest="n_masks", type=int, default=48, help="diffmask masks per sampler and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="train and compare only these (default: both)")
    parser.add_argument("--short_schedule", action="store_true",
                        help="also train each model only at the few-step timesteps (--set few_step_training=true)")
    parser.add_argument("--distill_steps", type=int, default=0,
                        help="distil diffmask's 20-step sampler into a 4-step student for this many steps after "
                             "training, and compare it too (--sampling distilled)")
    parser.add_argument("--distill_trajectories", type=int, default=256,
                        help="teacher trajectories the student learns from")
    parser.add_argument("--distill_real_fraction", type=float, default=0.0,
                        help="share of each distillation batch that is real training patches (noised to the "
                             "student's timesteps) instead of teacher trajectories")
    parser.add_argument("--realistic", action="store_true", help="the 1 mm, 180x210x170 demo dataset (slow)")
    parser.add_argument("--n_lesion_cases", type=int, default=None,
                        help="lesion cases of the demo dataset (default: the demo's; more give more training and "
                             "held-out lesions, so the choice and the comparison are less at the mercy of a few)")
    parser.add_argument("-np", "--num_processes", type=int, default=2)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder, new or empty (default: temporary)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with fresh_work_folder(args.work, "lesiongen_few_step_") as work:
        reports = run(args, work)
    rows = comparison_rows(reports)
    print_table(rows, compared_arms(reports))
    if reports["calibration"]:
        worst = {name: round(v["worst_excess"], 3) for name, v in reports["calibration"]["few_step_variants"].items()}
        print(f"diffmask's few-step sampler, chosen after training: {reports['calibration']['few_step_variant']} "
              f"(worst excess over the default's distances, in real spreads: {worst})")
        beats = {name: v["beats_preferred"] for name, v in reports["calibration"]["few_step_variants"].items()
                 if "beats_preferred" in v}
        if beats:
            print(f"  {reports['calibration']['preferred']} was preferred; share of resamples of the choice patches "
                  f"in which each other sampler was closer: {beats}")
    print(f"wall time {reports['minutes']['wall']:.1f} min")
    models = {f"{name} ({arm})": model for section in ("masks", "inpainting") for arm in reports[section]
              for report in reports[section][arm][:1] for name, model in report["provenance"]["models"].items()}
    name = "few_step_sampling" + ("_realistic" if args.realistic else "")
    write_results(name, {"settings": {k: str(v) for k, v in vars(args).items()}, "command": " ".join(sys.argv),
                         "models": models, "minutes": reports["minutes"], "table": rows,
                         "diffmask_calibration": reports["calibration"],
                         "inpainting_evaluation": reports["inpainting"], "mask_evaluation": reports["masks"]},
                  args.json)


if __name__ == "__main__":
    main()
