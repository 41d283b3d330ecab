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
The JSON (default ``benchmarks/results/inpaint_context_<date>.json``) holds the reports, settings, minutes per step
and every model's provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    console_script, require_new_folder, run_step, work_env, write_and_plan_demo, write_results,
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
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    print("\n".join(_line(m, r) for m, r in rows.items()))
    return {"models": models, "settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes,
            "summary": rows, "inpainting_evaluation": reports}


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
    args = parser.parse_args()
    require_new_folder(args.work)
    with tempfile.TemporaryDirectory(prefix="lesiongen_context_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    write_results("inpaint_context", report, args.json)


if __name__ == "__main__":
    main()
