"""Brain extraction on the whole-head demo (issue 16): the Dice of ``seg`` trained on brain masks, on held-out heads.

    python benchmarks/brain_extraction.py [--steps 1000] [--voxel_mm 2] [--n_train 12] [--n_test 8] [--seed 12345]
        [--tta] [-device cpu] [--work DIR] [--json FILE]

From scratch in a new work folder (no model is reused): ``lesiongen_make_demo_dataset --whole_head`` (dataset 503:
whole heads with skull, scalp and noise in the air; labels are brain masks; the held-out heads are ``imagesTs``;
the demo's 160x184x160 mm field of view at ``--voxel_mm`` isotropic voxels: 2 mm by default, 1 mm as real scans),
planned and preprocessed with the CPU preset, ``lesiongen_train 503 seg all -p lesiongenPlansCPU`` on every
training head, ``lesiongen_predict -m brainmask`` on the held-out heads (without mirroring test-time augmentation
unless ``--tta``) and ``lesiongen_evaluate`` against their brain masks. For comparison it scores what ``synth``
takes as the brain without a brain model: every nonzero voxel (right for skull-stripped scans, the whole field of
view here).

It prints the per-head and mean Dice and writes ``benchmarks/results/brain_extraction_<date>.json`` (or ``--json``)
with the settings, the minutes per step and the provenance (code version, model sha256, steps, seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesiongen.demo.phantom import WHOLE_HEAD, DemoConfig  # noqa: E402
from lesiongen.inference.strategies import SegVariant  # noqa: E402
from lesiongen.models.folder import trainer_folder_name  # noqa: E402
from lesiongen.utilities.seeding import DEFAULT_SEED  # noqa: E402
from measure import (  # noqa: E402
    console_script, fresh_work_folder, run_step, work_env, write_and_plan_demo, write_results,
)

DATASET = "503"
PLANS = "lesiongenPlansCPU"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def nonzero_baseline(raw: Path) -> dict[str, float]:
    """Dice of "nonzero voxels = brain" on each held-out head."""
    from lesiongen.io.images import read_image

    scores = {}
    for label_file in sorted((raw / "labelsTs").iterdir()):
        case = label_file.name.removesuffix(".nii.gz")
        label = read_image(label_file)[0] > 0
        nonzero = np.any([read_image(raw / "imagesTs" / f"{case}_{c:04d}.nii.gz")[0] != 0 for c in range(2)], axis=0)
        scores[case] = _dice(nonzero, label)
    return scores


def head_shape(voxel_mm: float) -> tuple[int, int, int]:
    """The whole-head demo's field of view (``WHOLE_HEAD``'s shape at the demo's spacing) in voxels of ``voxel_mm``."""
    return tuple(int(round(n * s / voxel_mm)) for n, s in zip(WHOLE_HEAD["shape"], DemoConfig().spacing))


def run(args: argparse.Namespace, work: Path) -> dict:
    env = work_env(work)
    shape = head_shape(args.voxel_mm)
    minutes: dict[str, float] = {}
    start = time.perf_counter()
    write_and_plan_demo(env, minutes, DATASET, [
        "--whole_head", "--dataset_id", DATASET, "--name", "DemoHeads", "--n_lesion_cases", str(args.n_train),
        "--n_test", str(args.n_test), "--n_healthy", "0", "--seed", str(args.data_seed),
        "--shape", *map(str, shape), "--spacing", *[str(args.voxel_mm)] * 3], args.num_processes)
    # fold all validates on its own training heads (mirrored): minutes of CPU that say nothing about held-out heads
    run_step("train_seg", [console_script("lesiongen_train"), DATASET, "seg", "all", "-device", args.device, "-p",
                           PLANS, "--steps", str(args.steps), "--seed", str(args.seed), "--set", "validate=false"],
             env, minutes)
    raw = work / "raw" / "Dataset503_DemoHeads"
    model = work / "results" / "Dataset503_DemoHeads" / trainer_folder_name(SegVariant.of("none", seed=args.seed).name,
                                                                          PLANS)
    masks = work / "brain_masks"
    run_step("predict_brainmask", [console_script("lesiongen_predict"), "-model", str(model), "-device", args.device,
                                   "-i", str(raw / "imagesTs"), "-o", str(masks), "-m", "brainmask",
                                   *([] if args.tta else ["--disable_tta"])], env, minutes)
    run_step("evaluate", [console_script("lesiongen_evaluate"), "-ref", str(raw / "labelsTs"), "-pred", str(masks),
                          "-o", str(work / "evaluation.json")], env, minutes)
    minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    evaluation = json.loads((work / "evaluation.json").read_text())
    per_case = {case.removesuffix(".nii.gz"): next(iter(labels.values()))["dice"]
                for case, labels in evaluation["per_case"].items()}
    summary_file = model / "fold_all" / "training_summary.json"
    training_summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    baseline = nonzero_baseline(raw)
    from lesiongen.utilities.provenance import sha256_file

    return {"settings": {"steps": args.steps, "voxel_mm": args.voxel_mm, "shape": list(shape), "seed": args.seed,
                         "data_seed": args.data_seed,
                         "n_train": args.n_train, "n_test": args.n_test, "plans": PLANS, "device": args.device,
                         "tta": args.tta},
            "minutes": minutes,
            "model": {"folder": model.name,
                      "checkpoint_sha256": sha256_file(model / "fold_all" / "checkpoint_final.pt"),
                      "training_summary": training_summary},
            "dice_per_head": per_case, "dice_mean": float(np.mean(list(per_case.values()))),
            "dice_min": float(np.min(list(per_case.values()))),
            "nonzero_baseline_dice_per_head": baseline,
            "nonzero_baseline_dice_mean": float(np.mean(list(baseline.values())))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="seg steps (the CPU preset's default: 1000)")
    parser.add_argument("--voxel_mm", type=float, default=2.0,
                        help="isotropic voxel size of the heads (the field of view stays 160x184x160 mm)")
    parser.add_argument("--n_train", type=int, default=12, help="training heads")
    parser.add_argument("--n_test", type=int, default=8, help="held-out heads")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed")
    parser.add_argument("--data_seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x the prediction time)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty; default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with fresh_work_folder(args.work, "brain_extraction_") as work:
        result = run(args, work)
    print(f"brain extraction, {args.voxel_mm:g} mm heads, {args.steps} seg steps ({PLANS}), {args.n_test} held-out "
          f"heads: Dice mean {result['dice_mean']:.4f}, min {result['dice_min']:.4f}; 'nonzero = brain' Dice "
          f"{result['nonzero_baseline_dice_mean']:.4f}; whole run {result['minutes']['wall']} min")
    for case, dice in result["dice_per_head"].items():
        print(f"  {case}: {dice:.4f}")
    write_results("brain_extraction", result, args.json)


if __name__ == "__main__":
    main()
