"""Mask realism and inpainting quality of CPU-sized models trained from scratch on the demo dataset.

    python benchmarks/model_quality.py [--generators spheremask unetmask diffmask ganmask] [--mask_steps 1000]
        [--diffmask_steps 400] [--diffmask_batch 16] [--ganmask_steps 400] [--inpaint_steps 1000] [--batch 8]
        [-n 64] [--eval_seeds 0 1 2] [--n_lesion_cases 8] [--inpaint_patches 16] [-device cpu] [--work DIR]
        [--json FILE]

Writes the demo dataset into a new work folder, plans and preprocesses it with the CPU preset (``-p
lesiongenPlansCPU``, as ``lesiongen_demo`` does), trains the mask generators (``--generators``) and the inpainter
(``--inpaint_steps 0``: none) on fold 0 and runs ``lesiongen_evaluate_masks`` once per sampling seed
(``--eval_seeds``: Wasserstein distances of generated to held-out real lesion statistics, per seed and their mean)
and ``lesiongen_evaluate_inpainting`` on up to ``--inpaint_patches`` held-out patches (remove / insert quality and
the inserted contrasts against the real ones, with the distance the same sample sizes give by chance; more lesion
cases, ``--n_lesion_cases``, give more held-out lesions and a lower floor). Nothing is reused: ``--work``
must be new or empty. The JSON (default ``benchmarks/results/model_quality_<date>.json``) holds the reports, the
settings, the wall time per step and the provenance of every model (sha256, steps, seed) next to the code version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

GENERATORS = ("spheremask", "unetmask", "diffmask", "ganmask")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="*", choices=GENERATORS, default=list(GENERATORS),
                        help="mask generators to train and evaluate (none: only the inpainter)")
    parser.add_argument("--mask_steps", type=int, default=1000, help="unetmask steps")
    parser.add_argument("--diffmask_steps", type=int, default=400)
    parser.add_argument("--diffmask_batch", type=int, default=16)
    parser.add_argument("--ganmask_steps", type=int, default=400)
    parser.add_argument("--inpaint_steps", type=int, default=1000, help="0: no inpainter and no inpainting report")
    parser.add_argument("--batch", type=int, default=8, help="batch of unetmask and the inpainter")
    parser.add_argument("-n", dest="n_masks", type=int, default=64, help="masks per generator in the mask report")
    parser.add_argument("--eval_seeds", nargs="+", type=int, default=[0], help="sampling seeds of the mask report")
    parser.add_argument("--n_lesion_cases", type=int, default=8, help="lesion cases of the demo dataset")
    parser.add_argument("--inpaint_patches", type=int, default=16, help="held-out patches of the inpainting report")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty); default: temporary")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with fresh_work_folder(args.work, "lesiongen_quality_") as work:
        report = run(args, work)
    write_results("model_quality", report, args.json)


def _mean(values: list[float | None]) -> float | None:
    """The mean over sampling seeds; a distance the report could not compute (None: no lesion generated) makes the
    mean None too rather than the mean of the other seeds."""
    return None if any(v is None for v in values) else float(np.mean(values))


def print_contrast(report: dict) -> None:
    """Inserted vs held-out real lesions per channel — contrast (step over shell spread) and intensity step (lesion
    mean - shell mean) — next to what the same sample sizes give by chance."""
    for section in ("insert", "insert_contrast_calibrated", "insert_uncalibrated"):
        if section not in report:
            continue
        r = report[section]
        print(f"{section}: {r['contrast_n_inserted']} inserted vs {r['contrast_n_real']} real lesions"
              + (f", calibrated to the {r['calibration_target']}" if "calibration_target" in r else ""))
        for name in ("contrast", "step"):
            if f"{name}_mean_ratio" not in r:
                continue
            for c, (w, floor, p, ratio, (low, high), real_sd, inserted_sd) in enumerate(zip(
                    r[f"{name}_wasserstein_over_real_std"], r[f"{name}_wasserstein_null_over_real_std"],
                    r[f"{name}_wasserstein_p"], r[f"{name}_mean_ratio"], r[f"{name}_mean_ratio_ci95"],
                    r[f"{name}_real_std"], r[f"{name}_inserted_std"])):
                print(f"  {name} channel {c}: W / real std {w:.3f} (chance at these sizes {floor:.3f}, permutation "
                      f"p {p:.3f}), mean ratio {ratio:.2f} (95 % CI {low:.2f}-{high:.2f}), spread inserted / real "
                      f"{inserted_sd / real_sd:.2f}")


def run(args: argparse.Namespace, work: Path) -> dict:
    env = work_env(work)
    os.environ.update(env)
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    write_and_plan_demo(env, minutes, "501", ["--n_lesion_cases", str(args.n_lesion_cases)], 2)
    plans = ["-p", "lesiongenPlansCPU"]
    train = [console_script("lesiongen_train"), "501"]
    common = ["0", "-device", args.device, *plans]
    options = {"spheremask": [],
               "unetmask": ["--steps", str(args.mask_steps), "--batch_size", str(args.batch)],
               "diffmask": ["--steps", str(args.diffmask_steps), "--batch_size", str(args.diffmask_batch)],
               "ganmask": ["--steps", str(args.ganmask_steps), "--batch_size", str(args.batch)]}
    for generator in args.generators:
        run_step(generator, train + [generator, *common, *options[generator]], env, minutes)
    if args.inpaint_steps > 0:
        run_step("inpaint", train + ["inpaint", *common, "--steps", str(args.inpaint_steps), "--batch_size",
                                  str(args.batch)], env, minutes)
    mask_reports = {}
    for seed in args.eval_seeds if args.generators else []:
        out = work / f"mask_evaluation_seed{seed}"
        run_step(f"evaluate_masks_seed{seed}", [
            console_script("lesiongen_evaluate_masks"), "-d", "501", "-f", "0", "-tr", *args.generators, "-n",
            str(args.n_masks), "-device", args.device, *plans, "--seed", str(seed), "-o", str(out)], env, minutes)
        mask_reports[seed] = json.loads((out / "mask_evaluation.json").read_text())
    inpainting = {}
    if args.inpaint_steps > 0:
        inpaint_out = work / "inpainting_evaluation"
        run_step("evaluate_inpainting", [console_script("lesiongen_evaluate_inpainting"), "-d", "501", "-f", "0",
                                      "--full_patches", "0", "--max_patches", str(args.inpaint_patches), "-device",
                                      args.device, *plans, "-o", str(inpaint_out)], env, minutes)
        inpainting = json.loads((inpaint_out / "inpainting_evaluation.json").read_text())
        print_contrast(inpainting)
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)

    per_seed = {seed: {name: method["wasserstein"] for name, method in report["methods"].items()}
                for seed, report in mask_reports.items()}
    mean = {name: {stat: _mean([per_seed[seed][name][stat] for seed in per_seed]) for stat in table}
            for name, table in next(iter(per_seed.values()), {}).items()}
    for seed, table in per_seed.items():
        print(f"sampling seed {seed}:", json.dumps(table, indent=1))
    if mean:
        print(f"mean over seeds {args.eval_seeds}:", json.dumps(mean, indent=1))
    models = {}
    for report in [*mask_reports.values(), inpainting]:
        models.update(report.get("provenance", {}).get("models", {}))
    return {"models": models, "settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes,
            "mask_wasserstein": mean, "mask_wasserstein_per_seed": per_seed, "mask_evaluation": mask_reports,
            "inpainting_evaluation": inpainting}


if __name__ == "__main__":
    main()
