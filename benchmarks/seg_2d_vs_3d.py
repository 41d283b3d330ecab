"""The 2d against the 3d segmentation configuration on thick-slice scans (issue 16), side by side, from scratch.

    python benchmarks/seg_2d_vs_3d.py [--steps 1000] [--n_train 12] [--n_test 8] [--seed 12345] [--loss dice_ce]
        [-device cpu] [--work DIR] [--json FILE]

In a new work folder (no model is reused): ``lesiongen_make_demo_dataset --anisotropic`` (dataset 502: 5 mm slices,
1 mm in-plane, one to three larger lesions; held-out scans in ``imagesTs``), planned and preprocessed with the CPU
preset (the planner adds the 2d configuration for such data), then ``lesiongen_train 502 seg 0 -c 3d`` and ``-c 2d``
with the same steps, seed and loss, each model predicting the held-out scans (``lesiongen_predict -m seg``, no
mirroring) and ``lesiongen_evaluate`` scoring them. The two share nothing but the preprocessed data; each one's
minutes are recorded.

It prints Dice, lesion F1 and HD95 per configuration and writes ``benchmarks/results/seg_2d_vs_3d_<date>.json`` (or
``--json``) with the per-scan scores, the settings, the minutes per step and the provenance (code version, model
sha256, steps, seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesiongen.inference.strategies import SegVariant  # noqa: E402
from lesiongen.models.folder import trainer_folder_name  # noqa: E402
from lesiongen.utilities.seeding import DEFAULT_SEED  # noqa: E402
from measure import (  # noqa: E402
    console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

DATASET = "502"
NAME = "Dataset502_DemoStroke"
PLANS = "lesiongenPlansCPU"
CONFIGURATIONS = ("3d", "2d")


def run(args: argparse.Namespace, work: Path) -> dict:
    from lesiongen.utilities.provenance import sha256_file

    env = work_env(work)
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    write_and_plan_demo(env, minutes, DATASET, [
        "--anisotropic", "--dataset_id", DATASET, "--name", "DemoStroke", "--n_lesion_cases", str(args.n_train),
        "--n_test", str(args.n_test), "--n_healthy", "0", "--seed", str(args.data_seed)], args.num_processes)
    raw = work / "raw" / NAME
    results: dict[str, dict] = {}
    for configuration in CONFIGURATIONS:
        variant = SegVariant.of("none", seed=args.seed, configuration=configuration)
        model = work / "results" / NAME / trainer_folder_name(variant.name, PLANS)
        out = work / f"predictions_{configuration}"
        run_step(f"train_{configuration}", [
            console_script("lesiongen_train"), DATASET, "seg", "0", "-c", configuration, "-device", args.device, "-p",
            PLANS, "--steps", str(args.steps), "--seed", str(args.seed), "--loss", args.loss, "--set",
            "validate=false"], env, minutes)
        run_step(f"predict_{configuration}", [
            console_script("lesiongen_predict"), "-model", str(model), "-device", args.device, "-f", "0",
            "-i", str(raw / "imagesTs"), "-o", str(out), "-m", "seg", "--disable_tta"], env, minutes)
        run_step(f"evaluate_{configuration}", [
            console_script("lesiongen_evaluate"), "-ref", str(raw / "labelsTs"), "-pred", str(out), "-o",
            str(work / f"evaluation_{configuration}.json")], env, minutes)
        evaluation = json.loads((work / f"evaluation_{configuration}.json").read_text())
        training = json.loads((model / "fold_0" / "training_summary.json").read_text())
        results[configuration] = {
            "mean": evaluation["mean"], "per_case": evaluation["per_case"],
            "model": {"folder": model.name, "checkpoint_sha256": sha256_file(model / "fold_0" / "checkpoint_final.pt"),
                      "training_summary": training}}
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    return {"settings": {"steps": args.steps, "seed": args.seed, "data_seed": args.data_seed, "loss": args.loss,
                         "n_train": args.n_train, "n_test": args.n_test, "plans": PLANS, "fold": 0,
                         "device": args.device, "tta": False},
            "minutes": minutes, "configurations": results}


def _metric(result: dict, name: str) -> float | None:
    """The mean over the held-out scans of ``name`` (averaged over lesion classes) of one configuration."""
    values = [by_class["mean"][name] for by_class in result["mean"].values()]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="seg steps of each configuration")
    parser.add_argument("--n_train", type=int, default=12, help="training scans (fold 0 trains on 4/5 of them)")
    parser.add_argument("--n_test", type=int, default=8, help="held-out scans")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed")
    parser.add_argument("--data_seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--loss", default="dice_ce", choices=["dice_ce", "weighted"])
    parser.add_argument("-np", dest="num_processes", type=int, default=2)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty; default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with fresh_work_folder(args.work, "seg_2d_vs_3d_") as work:
        result = run(args, work)
    print(f"thick-slice demo, {args.steps} seg steps each ({PLANS}, fold 0), {args.n_test} held-out scans:")
    for configuration, entry in result["configurations"].items():
        dice, f1, hd95 = (_metric(entry, name) for name in ("dice", "lesion_f1", "hd95"))
        trained = result["minutes"][f"train_{configuration}"]
        print(f"  {configuration}: Dice {dice:.3f}, lesion F1 {f1:.3f}, HD95 "
              f"{'-' if hd95 is None else f'{hd95:.1f} mm'}; trained in {trained} min")
    write_results("seg_2d_vs_3d", result, args.json)


if __name__ == "__main__":
    main()
