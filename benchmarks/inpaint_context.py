"""How much surrounding tissue the inpainter needs: the same inpainter trained and evaluated on lesion patches of
several context margins, side by side, from scratch.

    python benchmarks/inpaint_context.py [--margins planned 12 20] [--inpaint_steps 400] [--batch 8]
        [--n_lesion_cases 40] [--inpaint_patches 64] [--realistic] [-device cpu] [--work DIR] [--json FILE]

Writes the demo dataset (``--realistic``: the 1 mm variant) into a new work folder and plans it with the CPU
preset. For each margin (mm of tissue between the 95th-percentile lesion's bounding sphere and the patch face;
``planned``: the planner's own choice) it writes a CPU plans variant that differs only in the lesion patch (and the
lesion networks' topology that follows from it), preprocesses its lesion patches, trains ``inpaint`` on fold 0 and
runs ``lesiongen_evaluate_inpainting`` on the same held-out cases. Reported per margin: remove-mode quality inside
fake masks over healthy tissue (PSNR, SSIM, MSE; the truth is known there) and the inserted lesions' contrast and
intensity step against held-out real ones, uncalibrated (what the network learned) and as calibrated by default.
Then every model removes the same fake masks, scored on the same voxels (``paired_remove_scores``): the paired
comparison, as the per-model reports normalise and place their fake masks per patch size.
The JSON (default ``benchmarks/results/inpaint_context_<date>.json``) holds the reports, settings, minutes per step
and every model's provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

PLANNED = "planned"


def _margin(text: str) -> str:
    if text != PLANNED:
        float(text)  # argparse reports a ValueError as a bad value
    return text


def variant_plans(margin: str, num_processes: int) -> tuple[str, list[int], float]:
    """Write and preprocess the CPU plans with ``margin`` (mm, or the planner's own); (name, patch, margin mm)."""
    from lesiongen import workflow
    from lesiongen.fingerprint.fingerprint import FINGERPRINT_FILE, load_fingerprint
    from lesiongen.planning.planner import plan_dataset
    from lesiongen.planning.plans import plans_file_name, save_plans
    from lesiongen.planning.presets import CPU, PRESETS

    dataset = workflow.open_dataset("501")
    folder = workflow.preprocessed_folder(dataset)
    if margin == PLANNED:
        return "lesiongenPlansCPU", *_patch_of(folder, "lesiongenPlansCPU")
    fingerprint = load_fingerprint(folder / FINGERPRINT_FILE)
    has_masks = all(c.brain_mask is not None for c in dataset.training)
    base = plan_dataset(fingerprint, dataset.info, has_brain_masks=has_masks, lesion_margin_mm=float(margin))
    base.plans_name = f"lesiongenPlans_margin{margin}mm"  # its own preprocessed data: other lesion patches
    plans = PRESETS[CPU](base)
    plans.plans_name = f"lesiongenPlansCPU_margin{margin}mm"
    save_plans(plans, folder / plans_file_name(plans.plans_name))
    workflow.run_preprocessing(dataset, plans, num_processes)
    return plans.plans_name, plans.lesion_patch_size, plans.lesion_patch_margin_mm


def _patch_of(folder: Path, name: str) -> tuple[list[int], float]:
    from lesiongen.planning.plans import load_plans, plans_path

    plans = load_plans(plans_path(folder, name))
    return plans.lesion_patch_size, plans.lesion_patch_margin_mm


def central(patch: list[int], size: list[int]) -> tuple[slice, ...]:
    """The ``size`` box of a ``patch`` that shares its centre voxel (lesion patches hold the lesion at patch // 2)."""
    return tuple(slice(p // 2 - s // 2, p // 2 - s // 2 + s) for p, s in zip(patch, size))


def paired_remove_scores(names: dict[str, str], patches: dict[str, list[int]], max_patches: int, device: str,
                         seed: int = 0) -> dict:
    """Remove-mode quality of every margin's inpainter on the SAME fake masks, scored on the SAME voxels.

    ``lesiongen_evaluate_inpainting`` moves its fake masks within each model's own patch and normalises the scores
    on that patch, so its PSNR/SSIM differ between patch sizes for reasons other than the model. Here the held-out
    patches come from the largest plans; each fake mask lies in the central box of the smallest patch; each model
    gets the central box of its own patch size around the same lesion, and every fill is scored on the smallest
    box (BraTS normalisation of that box), so only the context a model sees differs. Paired differences to the
    first margin: mean with a 95 % bootstrap interval over the patches."""
    import numpy as np

    from lesiongen.evaluation.evaluate_inpainting import moved_masks
    from lesiongen.evaluation.inpainting_metrics import in_mask_std_ratio, inpainting_metrics
    from lesiongen.models.inpainter import REMOVE
    from lesiongen.models.registry import load_trained_model
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.preprocessing.lesion_patches import load_lesion_patches
    from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits

    largest = max(patches, key=lambda m: np.prod(patches[m]))
    smallest = min(patches, key=lambda m: np.prod(patches[m]))
    dataset = open_preprocessed("501", names[largest])
    _, val_cases = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    real = load_lesion_patches(dataset.lesion_patch_folder, val_cases)
    rng = np.random.default_rng(seed)
    real = real.subset(rng.permutation(len(real))[:max_patches])
    small = central(patches[largest], patches[smallest])
    inpainters = {m: load_trained_model(dataset.name, "inpaint", names[m], 0, device) for m in names}
    fake_small, ok, _ = moved_masks(real.masks[(slice(None), *small)], real.brain[(slice(None), *small)],
                                    inpainters[smallest].margin_voxels, rng)
    real, fake_small = real.subset(np.flatnonzero(ok)), fake_small[ok]
    fake = np.zeros_like(real.masks)
    fake[(slice(None), *small)] = fake_small
    scores: dict[str, list[dict]] = {}
    for margin, inpainter in inpainters.items():
        box = central(patches[largest], patches[margin])
        inner = central(patches[margin], patches[smallest])  # the scored box inside this model's patch
        healed = inpainter.inpaint(real.images[(slice(None), slice(None), *box)], fake[(slice(None), *box)],
                                   REMOVE, seed=seed, brain=real.brain[(slice(None), *box)])
        rows = []
        for i in range(len(real)):
            truth = real.images[i][(slice(None), *small)]
            fill = healed[i][(slice(None), *inner)]
            mask, brain = fake_small[i] > 0, real.brain[i][small]
            quality = inpainting_metrics(truth, fill, mask, brain)
            rows.append({"mse": quality["mse"], "psnr": quality["psnr"], "ssim": quality["ssim"],
                         "std_ratio": in_mask_std_ratio(truth, fill, mask)})
        scores[margin] = rows
    first = next(iter(scores))
    result = {"n_patches": int(len(real)), "scored_box": patches[smallest], "per_margin": {}}
    for margin, rows in scores.items():
        entry = {key: float(np.mean([r[key] for r in rows if r[key] is not None])) for key in rows[0]}
        if margin != first:
            for key in ("psnr", "ssim", "mse"):
                diff = np.array([r[key] - b[key] for r, b in zip(rows, scores[first])])
                boot = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(axis=1)
                entry[f"{key}_minus_{first}"] = [float(diff.mean()), float(np.percentile(boot, 2.5)),
                                                 float(np.percentile(boot, 97.5))]
        result["per_margin"][margin] = entry
    return result


def summary_row(report: dict) -> dict:
    """The figures compared across margins, per channel where the report has channels."""
    fake = report["remove_fake_masks"]
    row = {"remove_psnr": fake["psnr"], "remove_ssim": fake["ssim"], "remove_mse": fake["mse"],
           "remove_n": fake["n"]}
    for section, prefix in (("insert_uncalibrated", "uncalibrated"), ("insert", "calibrated")):
        r = report.get(section)
        if not r:
            continue
        for name in ("contrast", "step"):
            row[f"{prefix}_{name}_w_over_std"] = r[f"{name}_wasserstein_over_real_std"]
            row[f"{prefix}_{name}_mean_ratio"] = r[f"{name}_mean_ratio"]
            row[f"{prefix}_{name}_chance"] = r[f"{name}_wasserstein_null_over_real_std"]
        row[f"{prefix}_n_inserted"] = r["contrast_n_inserted"]
    return row


def run(args: argparse.Namespace, work: Path) -> dict:
    env = work_env(work)
    os.environ.update(env)
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    demo = ["--n_lesion_cases", str(args.n_lesion_cases)] + (["--realistic"] if args.realistic else [])
    write_and_plan_demo(env, minutes, "501", demo, 2)
    reports, rows, models = {}, {}, {}
    for margin in args.margins:
        begin = time.perf_counter()
        name, patch, margin_mm = variant_plans(margin, 2)
        minutes[f"plans_{margin}"] = round((time.perf_counter() - begin) / 60, 2)
        plans = ["-p", name]
        run_step(f"inpaint_{margin}", [console_script("lesiongen_train"), "501", "inpaint", "0", "-device",
                                      args.device, *plans, "--steps", str(args.inpaint_steps), "--batch_size",
                                      str(args.batch)], env, minutes)
        out = work / f"inpainting_evaluation_{margin}"
        run_step(f"evaluate_{margin}", [console_script("lesiongen_evaluate_inpainting"), "-d", "501", "-f", "0",
                                       "--full_patches", "0", "--max_patches", str(args.inpaint_patches),
                                       "-device", args.device, *plans, "-o", str(out)], env, minutes)
        report = json.loads((out / "inpainting_evaluation.json").read_text())
        reports[margin] = report
        rows[margin] = {"plans": name, "patch": patch, "margin_mm": margin_mm, **summary_row(report)}
        models.update({f"{role}_{margin}": m for role, m in report.get("provenance", {}).get("models", {}).items()})
        print(_line(margin, rows[margin]), flush=True)
    begin = time.perf_counter()
    paired = paired_remove_scores({m: r["plans"] for m, r in rows.items()}, {m: r["patch"] for m, r in rows.items()},
                                  args.inpaint_patches, args.device)
    minutes["paired_remove"] = round((time.perf_counter() - begin) / 60, 2)
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    print("\n".join(_line(m, r) for m, r in rows.items()))
    _print_paired(paired)
    return {"models": models, "settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes,
            "summary": rows, "paired_remove": paired, "inpainting_evaluation": reports}


def add_paired_scores(args: argparse.Namespace) -> None:
    """The paired comparison on the models of an earlier run (written before it existed), checked against the
    sha256 that run recorded, into a copy of its JSON (``--json``)."""
    from lesiongen.utilities.provenance import sha256_file

    earlier = json.loads(args.paired_only.read_text())
    work = Path(earlier["settings"]["work"])
    os.environ.update(work_env(work))
    for role, model in earlier["models"].items():
        if sha256_file(Path(model["checkpoint"])) != model["sha256"]:
            sys.exit(f"{model['checkpoint']}: not the model the run recorded ({role}); rerun from scratch")
    rows = earlier["summary"]
    begin = time.perf_counter()
    paired = paired_remove_scores({m: r["plans"] for m, r in rows.items()}, {m: r["patch"] for m, r in rows.items()},
                                  int(earlier["settings"]["inpaint_patches"]), earlier["settings"]["device"])
    _print_paired(paired)
    earlier["paired_remove"] = paired
    earlier["minutes"]["paired_remove_added_later"] = round((time.perf_counter() - begin) / 60, 2)
    write_results("inpaint_context", earlier, args.json)


def _print_paired(paired: dict) -> None:
    print(f"same fake masks, scored on the central {paired['scored_box']} box of {paired['n_patches']} patches:")
    for margin, entry in paired["per_margin"].items():
        diffs = "".join(f", {k.split('_')[0]} {v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})"
                        for k, v in entry.items() if "_minus_" in k)
        print(f"  margin {margin}: PSNR {entry['psnr']:.2f} SSIM {entry['ssim']:.3f} MSE {entry['mse']:.4f} "
              f"std ratio {entry['std_ratio']:.2f}{diffs}")


def _line(margin: str, row: dict) -> str:
    def channels(key: str) -> str:
        return "/".join(f"{v:.2f}" for v in row.get(key, [])) or "-"

    return (f"margin {margin:>7} ({row['margin_mm']:.1f} mm, patch {row['patch']}): remove PSNR "
            f"{row['remove_psnr']:.2f} SSIM {row['remove_ssim']:.3f}; uncalibrated contrast W/std "
            f"{channels('uncalibrated_contrast_w_over_std')} ratio {channels('uncalibrated_contrast_mean_ratio')}, "
            f"step W/std "
            f"{channels('uncalibrated_step_w_over_std')} ratio {channels('uncalibrated_step_mean_ratio')}; calibrated "
            f"step W/std {channels('calibrated_step_w_over_std')} (chance {channels('calibrated_step_chance')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--margins", nargs="+", type=_margin, default=[PLANNED, "12", "20"],
                        help=f"context margins in mm, or '{PLANNED}'")
    parser.add_argument("--inpaint_steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n_lesion_cases", type=int, default=40)
    parser.add_argument("--inpaint_patches", type=int, default=64, help="held-out patches per report")
    parser.add_argument("--realistic", action="store_true", help="the 1 mm demo variant")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty); default: temporary")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--paired_only", type=Path, default=None, metavar="RESULTS_JSON",
                        help="add the paired remove scores to an earlier run's JSON (its --work folder and models, "
                             "their sha256 as recorded) instead of a new run")
    args = parser.parse_args()
    if args.paired_only:
        add_paired_scores(args)
        return
    with fresh_work_folder(args.work, "lesiongen_context_") as work:
        report = run(args, work)
    write_results("inpaint_context", report, args.json)


if __name__ == "__main__":
    main()
