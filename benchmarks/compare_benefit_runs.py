"""Paired differences between two ``lesiongen_benefit`` reports of the same test scans and seeds.

    python benchmarks/compare_benefit_runs.py NEW.json OLD.json [--metrics dice lesion_f1 ...] [--ratios 4 2]

Two runs that differ in one thing (a seg setting, a retrained inpainter, another synthesis rule) and share the test
scans and training seeds are compared model by model: for every seg model both reports hold (same strategy, ratio
and seed), NEW minus OLD per test case, with the 95 % bootstrap interval over cases and seeds and the Wilcoxon p of
the report itself (``evaluation.statistics.paired_difference``). Accepts the report (``benefit.json``) or the JSON
``benchmarks/augmentation_benefit.py`` wraps it in. ``--ratios A B`` pairs NEW's models of synthetic ratio A with
OLD's of ratio B (same strategy and seed), to compare two doses. ``--gains`` compares what each synthetic strategy
adds instead: per seed and case, (strategy − real-only of the same seed) in NEW minus the same in OLD — e.g. whether
a gain survives a longer schedule, which lifts real-only as well. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lesiongen.evaluation.statistics import paired_difference  # noqa: E402
from lesiongen.inference.strategies import SegVariant  # noqa: E402

DEFAULT_METRICS = ("dice", "lesion_f1", "small_lesion_recall", "hd95", "volume_difference_mm3")


def per_case(path: Path) -> dict[str, dict[str, dict]]:
    report = json.loads(path.read_text())
    return report.get("benefit", report)["per_case"]


def score_matrix(scores: dict[str, dict[str, dict]], models: list[str], cases: list[str], metric: str) -> np.ndarray:
    """(seeds, cases) of one metric; NaN where a case has no value (e.g. recall without a lesion)."""
    return np.array([[np.nan if scores[m][c].get(metric) is None else scores[m][c][metric] for c in cases]
                     for m in models], dtype=float)


def as_ratio(scores: dict[str, dict], ratio: float, paired_with: float) -> dict[str, dict]:
    """The report's models of synthetic ratio ``ratio`` under the names they would have at ``paired_with``; its other
    models left out."""
    renamed = {}
    for name, cases in scores.items():
        variant = SegVariant.parse(name)
        if variant is not None and variant.strategy != "none" and variant.ratio == ratio:
            renamed[dataclasses.replace(variant, ratio=paired_with).name] = cases
    return renamed


def real_only_of(name: str) -> str:
    """The name of the real-only seg model of the same seed and configuration as seg model ``name``."""
    return dataclasses.replace(SegVariant.parse(name), strategy="none", ratio=1.0).name


def compare(new: dict, old: dict, metrics: tuple[str, ...], ratios: tuple[float, float] | None = None,
            gains: bool = False) -> list[str]:
    """One line per (strategy and ratio, metric): NEW − OLD over the seg models of every seed both runs hold; with
    ``ratios`` (NEW's, OLD's), NEW's models of the one ratio against OLD's of the other, labelled with OLD's; with
    ``gains``, each synthetic model's difference to the real-only model of its seed, NEW's minus OLD's."""
    if ratios is not None:
        real_only = {name: cases for name, cases in new.items()
                     if (variant := SegVariant.parse(name)) is not None and variant.strategy == "none"}
        new = as_ratio(new, *ratios) | (real_only if gains else {})
    both = new.keys() & old.keys()
    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(both):
        variant = SegVariant.parse(name)
        if variant is None:
            continue
        if gains and (variant.strategy == "none" or real_only_of(name) not in both):
            continue  # a gain needs the real-only model of its seed in both runs
        groups[variant.label].append(name)

    def matrix(scores: dict, models: list[str], cases: list[str], metric: str) -> np.ndarray:
        values = score_matrix(scores, models, cases, metric)
        return values - score_matrix(scores, [real_only_of(m) for m in models], cases, metric) if gains else values

    lines = []
    for label, models in groups.items():
        held = models + ([real_only_of(m) for m in models] if gains else [])
        cases = sorted(set.intersection(*(set(new[m]) & set(old[m]) for m in held)))
        for metric in metrics:
            d = paired_difference(matrix(new, models, cases, metric), matrix(old, models, cases, metric))
            scale = 100.0 if metric == "dice" else 1.0  # Dice in points, as the report gives it
            lines.append(f"{label:16s} {metric:22s} {d.mean * scale:+8.3f} ({d.ci_low * scale:+.3f} to "
                         f"{d.ci_high * scale:+.3f})  p {d.p_value:.3f}  better / worse {d.cases_better} / "
                         f"{d.cases_worse}  ({len(models)} seed(s), {len(cases)} cases)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--ratios", nargs=2, type=float, metavar=("NEW", "OLD"),
                        help="pair NEW's models of this synthetic ratio with OLD's of that one")
    parser.add_argument("--gains", action="store_true",
                        help="compare each synthetic strategy's difference to real-only (same seed) between the runs")
    args = parser.parse_args(argv)
    ratios = tuple(args.ratios) if args.ratios else None
    print(("(strategy − none) in NEW − the same in OLD" if args.gains else "NEW − OLD") + " (Dice in points)"
          + (f"; NEW's ratio {ratios[0]:g} against OLD's {ratios[1]:g}" if ratios else ""))
    print("\n".join(compare(per_case(args.new), per_case(args.old), tuple(args.metrics), ratios, args.gains)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
