"""Mask realism and inpainting quality of CPU-sized models trained from scratch on the demo dataset.

    python benchmarks/model_quality.py [--mask_steps 1000] [--diffmask_steps 400] [--diffmask_batch 16]
        [--inpaint_steps 1000] [--batch 8] [-n 64] [-device cpu] [--work DIR] [--json FILE]

Writes the demo dataset into a new work folder, plans and preprocesses it with the CPU preset (``-p
lesiongenPlansCPU``, as ``lesiongen_demo`` does), trains spheremask, unetmask, diffmask and the inpainter on fold 0 and runs
``lesiongen_evaluate_masks`` (Wasserstein distances of generated to held-out real lesion statistics) and
``lesiongen_evaluate_inpainting`` (remove / insert quality on held-out patches). Nothing is reused: ``--work`` must be
new or empty. The JSON (default ``benchmarks/results/model_quality_<date>.json``) holds both reports, the settings,
the wall time per step and the provenance of every model (sha256, steps, seed) next to the code version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import console_script, run_step, work_env, write_and_plan_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask_steps", type=int, default=1000, help="unetmask steps")
    parser.add_argument("--diffmask_steps", type=int, default=400)
    parser.add_argument("--diffmask_batch", type=int, default=16)
    parser.add_argument("--inpaint_steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8, help="batch of unetmask and the inpainter")
    parser.add_argument("-n", dest="n_masks", type=int, default=64, help="masks per generator in the mask report")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty); default: temporary")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"{args.work}: not empty; the benchmark starts from scratch")
    with tempfile.TemporaryDirectory(prefix="lesiongen_quality_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    out = args.json or ROOT / "benchmarks" / "results" / f"model_quality_{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {out}")


def run(args: argparse.Namespace, work: Path) -> dict:
    env = work_env(work)
    os.environ.update(env)
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    write_and_plan_demo(env, minutes, "501", [], 2)
    plans = ["-p", "lesiongenPlansCPU"]
    train = [console_script("lesiongen_train"), "501"]
    common = ["0", "-device", args.device, *plans]
    run_step("spheremask", train + ["spheremask", *common], env, minutes)
    run_step("unetmask", train + ["unetmask", *common, "--steps", str(args.mask_steps), "--batch_size",
                               str(args.batch)], env, minutes)
    run_step("diffmask", train + ["diffmask", *common, "--steps", str(args.diffmask_steps), "--batch_size",
                               str(args.diffmask_batch)], env, minutes)
    run_step("inpaint", train + ["inpaint", *common, "--steps", str(args.inpaint_steps), "--batch_size",
                              str(args.batch)], env, minutes)
    masks_out, inpaint_out = work / "mask_evaluation", work / "inpainting_evaluation"
    run_step("evaluate_masks", [console_script("lesiongen_evaluate_masks"), "-d", "501", "-f", "0", "-n",
                             str(args.n_masks), "-device", args.device, *plans, "-o", str(masks_out)], env, minutes)
    run_step("evaluate_inpainting", [console_script("lesiongen_evaluate_inpainting"), "-d", "501", "-f", "0",
                                  "--full_patches", "0", "-device", args.device, *plans, "-o", str(inpaint_out)], env,
          minutes)
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)

    from lesiongen.utilities.provenance import code_version

    masks = json.loads((masks_out / "mask_evaluation.json").read_text())
    inpainting = json.loads((inpaint_out / "inpainting_evaluation.json").read_text())
    table = {name: method["wasserstein"] for name, method in masks["methods"].items()}
    print(json.dumps(table, indent=1))
    return {"provenance": {**code_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_scratch": True,
                           "models": {**masks.get("provenance", {}).get("models", {}),
                                      **inpainting.get("provenance", {}).get("models", {})}},
            "settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes,
            "mask_wasserstein": table, "mask_evaluation": masks, "inpainting_evaluation": inpainting}


if __name__ == "__main__":
    main()
