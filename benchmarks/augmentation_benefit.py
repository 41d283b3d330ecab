"""Does synthetic data help? ``seg`` with and without synthetic lesions in the low-data regime, on held-out tests.

    python benchmarks/augmentation_benefit.py [--strategies none sphere diffmask] [--seg_steps 400]
        [--generator_steps 300] [--inpaint_steps 300] [--batch_size 8] [-device cpu] [--keep DIR]

It writes a demo dataset with 8 real lesion cases, 8 healthy scans and 6 held-out test cases, plans and
preprocesses it, trains the mask generators and the inpainter on fold ``all`` (the 8 lesion cases; the test cases
are never seen), then a ``seg`` model per strategy with the same steps and seed, segments the test scans at their
own geometry and prints test Dice and lesion F1 per strategy with the difference to ``none``. The goal: real +
synthetic >= +3 Dice points over real only, and diffmask >= sphere. It reports whatever it measures; it asserts
nothing. CPU defaults are short runs: the numbers show the trend of a short schedule, not converged models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def run(command: list[str], env: dict) -> None:
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["none", "sphere", "diffmask"])
    parser.add_argument("--seg_steps", type=int, default=400)
    parser.add_argument("--generator_steps", type=int, default=300)
    parser.add_argument("--inpaint_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=8, help="for the generators and the inpainter")
    parser.add_argument("--synthetic_ratio", type=float, default=1.0)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, lesiongen_raw=str(root / "raw"), lesiongen_preprocessed=str(root / "preprocessed"),
                   lesiongen_results=str(root / "results"))
        os.environ.update(env)
        if not (root / "raw").is_dir():
            run(["lesiongen_make_demo_dataset", "--n_lesion_cases", "8", "--n_healthy", "8", "--n_test", "6",
                 "--seed", "3"], env)
        run(["lesiongen_plan_and_preprocess", "-d", "501", "-np", "2"], env)
        start = time.perf_counter()
        needed = {"sphere": ["spheremask"], "unetmask": ["unetmask"], "diffmask": ["diffmask"]}
        generators = sorted({g for s in args.strategies for g in needed.get(s, [])})
        for name in generators + (["inpaint"] if generators else []):
            steps = args.inpaint_steps if name == "inpaint" else args.generator_steps
            run(["lesiongen_train", "501", name, "all", "-device", args.device, "--steps", str(steps),
                 "--batch_size", str(args.batch_size), "--c"], env)
        for strategy in args.strategies:
            run(["lesiongen_train", "501", "seg", "all", "-device", args.device, "--steps", str(args.seg_steps),
                 "--synthetic", strategy, "--synthetic_ratio", str(args.synthetic_ratio), "--c"], env)
        results = {s: test_scores(s, args.device) for s in args.strategies}
        minutes = (time.perf_counter() - start) / 60
    print(f"8 real lesion cases, 6 held-out test cases; seg {args.seg_steps} steps, generators "
          f"{args.generator_steps}, inpainter {args.inpaint_steps} steps on {args.device} ({minutes:.0f} min)")
    print(f"{'strategy':<11} {'test Dice':>9} {'lesion F1':>9} {'recall':>7} {'precision':>9} {'Dice vs none':>13}")
    base = results.get("none", {}).get("dice")
    for strategy, r in results.items():
        delta = f"{100 * (r['dice'] - base):+.1f} pts" if base is not None and strategy != "none" else "-"
        print(f"{strategy:<11} {r['dice']:>9.3f} {r['lesion_f1']:>9.3f} {r['lesion_recall']:>7.3f} "
              f"{r['lesion_precision']:>9.3f} {delta:>13}")
    print(json.dumps(results))


def test_scores(strategy: str, device: str) -> dict[str, float]:
    """Mean test-case metrics of the ``seg`` model of ``strategy`` (fold all) at the scans' own geometry."""
    import numpy as np

    from lesiongen.evaluation.segmentation_metrics import aggregate, case_metrics
    from lesiongen.inference.segment import segment
    from lesiongen.io.dataset import load_dataset
    from lesiongen.io.images import read_channels, read_image
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.registry import load_trained

    dataset = open_preprocessed(501)
    model = load_trained(dataset, "seg", "all", device, strategy=strategy)
    raw = load_dataset(501)
    per_case = {}
    for case in raw.split("test"):
        images, geometry = read_channels(case.images)
        label, _, _ = segment(images, list(geometry.spacing_zyx), [model])
        reference, _ = read_image(case.label)
        per_case[case.case_id] = case_metrics(reference.astype(np.uint8), label, geometry.spacing_zyx,
                                              dataset.plans.lesion_labels)
    mean = next(iter(aggregate(per_case).values()))  # the first lesion class (the demo has one)
    return {k: float(mean["mean"][k]) for k in ("dice", "lesion_f1", "lesion_recall", "lesion_precision")}


if __name__ == "__main__":
    main()
