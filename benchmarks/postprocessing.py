"""Does removing small predicted lesions help on held-out scans? ``lesiongen_determine_postprocessing`` from scratch.

    python benchmarks/postprocessing.py [--realistic] [--n_lesion_cases 8] [--n_healthy 8] [--n_test 6]
        [--folds 0 1] [--seg_steps 2000] [--work DIR] [--json FILE] [--apply_to PRED_DIR ...]

A new work folder: the demo dataset (``--realistic``: 180x210x170 at 1 mm), planned and preprocessed with the CPU
preset; ``lesiongen_train seg`` on each fold (real data only, validation without mirroring); the postprocessing
chosen on those folds' validation cases; the test scans segmented by the folds' ensemble (no mirroring) and scored
as predicted and with the chosen postprocessing (``Postprocessing.apply``, what ``lesiongen_predict -m seg``
applies). The test scans never take part in the choice. Paired differences (postprocessed − as predicted) over the
test scans with the 95 % bootstrap interval and the Wilcoxon p. ``--apply_to``: folders of other predictions of the
same test scans (e.g. a ``lesiongen_benefit`` run's ``predictions/seg_none_s0``) scored with and without the same
chosen volume. Writes ``benchmarks/results/postprocessing[_realistic]_DATE.json`` with provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import (  # noqa: E402
    add_benefit_demo_arguments, benefit_demo_arguments, console_script, fresh_work_folder, run_step, work_env,
    write_and_plan_demo, write_results,
)

from lesiongen.evaluation.segmentation_metrics import case_scores, read_label_pair  # noqa: E402
from lesiongen.evaluation.statistics import paired_difference  # noqa: E402
from lesiongen.models.postprocessing import remove_small_lesions  # noqa: E402
from lesiongen.utilities.provenance import sha256_file  # noqa: E402

DATASET = "501"
PLANS = "lesiongenPlansCPU"
METRICS = ("dice", "lesion_f1", "lesion_precision", "lesion_recall", "small_lesion_recall", "hd95",
           "volume_difference_mm3")


def score(predictions: Path, references: Path, min_volume_mm3: float) -> dict[str, dict[str, float]]:
    """case -> metric (mean over lesion classes) of every prediction in ``predictions``, after removing the lesions
    below ``min_volume_mm3``."""
    scores = {}
    for reference_path in sorted(references.glob("*.nii.gz")):
        reference, prediction, spacing = read_label_pair(reference_path, predictions / reference_path.name)
        kept, _ = remove_small_lesions(prediction.astype(np.uint8), spacing, min_volume_mm3)
        labels = [int(v) for v in np.unique(reference) if v != 0] or [1]
        scores[reference_path.name] = case_scores(reference, kept, spacing, labels)
    return scores


def compare(before: dict, after: dict) -> dict:
    """Means as predicted and postprocessed, and the paired difference per metric."""
    cases = sorted(before)
    result = {}
    for metric in METRICS:
        a = np.array([before[c][metric] for c in cases], dtype=float)
        b = np.array([after[c][metric] for c in cases], dtype=float)
        difference = paired_difference(b, a)
        result[metric] = {"as_predicted": float(np.nanmean(a)), "postprocessed": float(np.nanmean(b)),
                          "difference": difference.mean, "ci": [difference.ci_low, difference.ci_high],
                          "p": difference.p_value, "better": difference.cases_better, "worse": difference.cases_worse}
    return result


def print_table(title: str, comparison: dict) -> None:
    print(f"\n{title}\n| metric | as predicted | postprocessed | difference (95 % CI; p; better / worse) |\n"
          "|---|---|---|---|")
    for metric, row in comparison.items():
        print(f"| {metric} | {row['as_predicted']:.3f} | {row['postprocessed']:.3f} | {row['difference']:+.3f} "
              f"({row['ci'][0]:+.3f} to {row['ci'][1]:+.3f}; {row['p']:.3g}; {row['better']} / {row['worse']}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benefit_demo_arguments(parser, n_test=6)
    parser.add_argument("--folds", nargs="+", default=["0", "1"])
    parser.add_argument("--seg_steps", type=int, default=2000)
    parser.add_argument("-np", "--num_processes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder, new or empty (default: temporary)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--apply_to", type=Path, nargs="*", default=[],
                        help="other prediction folders of the same test scans, scored with the chosen volume too")
    args = parser.parse_args()
    with fresh_work_folder(args.work, "lesiongen_postprocessing_") as work:
        env = work_env(work)
        minutes: dict[str, float] = {}
        start = time.perf_counter()
        write_and_plan_demo(env, minutes, DATASET, benefit_demo_arguments(
            args.realistic, args.n_lesion_cases, args.n_healthy, args.n_test), args.num_processes)
        for fold in args.folds:
            run_step(f"seg_fold_{fold}", [console_script("lesiongen_train"), DATASET, "seg", fold, "-p", PLANS,
                                          "--steps", str(args.seg_steps), "--set", "mirror_validation=false",
                                          "-device", "cpu"], env, minutes, stream=True)
        run_step("determine", [console_script("lesiongen_determine_postprocessing"), "-d", DATASET, "-p", PLANS,
                               "-f", *args.folds, "-np", str(args.num_processes)], env, minutes, stream=True)
        raw = next((work / "raw").glob("Dataset501_*"))
        predictions = work / "predictions"
        run_step("predict", [console_script("lesiongen_predict"), "-d", DATASET, "-p", PLANS, "-f", *args.folds,
                             "-i", str(raw / "imagesTs"), "-o", str(predictions), "-m", "seg", "--disable_tta",
                             "--disable_postprocessing", "-device", "cpu"], env, minutes, stream=True)
        model = next((work / "results").glob(f"Dataset501_*/seg_none__{PLANS}"))
        chosen = json.loads((model / "postprocessing.json").read_text())
        volume = chosen["min_lesion_volume_mm3"]
        references = raw / "labelsTs"
        results = {"cross_validation_models": compare(score(predictions, references, 0.0),
                                                      score(predictions, references, volume))}
        for folder in args.apply_to:
            results[str(folder)] = compare(score(folder, references, 0.0), score(folder, references, volume))
        checkpoints = {fold: sha256_file(model / f"fold_{fold}" / "checkpoint_final.pt") for fold in args.folds}
        minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    print(f"chosen on {chosen['n_cases']} validation cases (folds {', '.join(chosen['folds'])}): remove predicted "
          f"lesions below {volume:g} mm3")
    for name, comparison in results.items():
        print_table(name, comparison)
    name = "postprocessing" + ("_realistic" if args.realistic else "")
    write_results(name, {"settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes,
                         "postprocessing": chosen, "checkpoints": checkpoints, "test_scans": results}, args.json)
    print(f"wall time {minutes['wall']:.1f} min")


if __name__ == "__main__":
    main()
