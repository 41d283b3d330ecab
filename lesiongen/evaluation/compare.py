"""Strategy comparison over segmentation folds: does real + synthetic beat real only?

Collects ``summary.json`` of every ``seg_STRATEGY`` fold, and writes a table of each metric per strategy
(mean ± std over folds) with the paired difference to ``none`` over the folds both have, as markdown, CSV and a PNG.
Dice and lesion F1 also get the paired difference over the validation cases both have (each case is scored by the
one fold that held it out) with a 95 % bootstrap interval and a Wilcoxon p (``statistics.paired_difference``), and
the answer in words by the rule ``lesiongen_benefit`` uses. One training run per fold: the interval varies the
cases, not the training run, which a held-out test set with several seeds (``lesiongen_benefit``) adds.

When a strategy's model folder has a current ``postprocessing.json`` (``lesiongen_determine_postprocessing``), a
second table compares the strategies as ``lesiongen_predict -m seg`` delivers them: that strategy's validation
predictions scored again without the lesions its postprocessing removes, the others as they were scored. So "does
synthetic data help?" is also answered after the specks real-only models predict are cleaned up.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lesiongen.evaluation.postprocessing import postprocessed_validation
from lesiongen.evaluation.segmentation_metrics import REPORTED_METRICS, REPORTED_METRIC_HEADINGS, class_means
from lesiongen.evaluation.statistics import nanmean, paired_difference, verdict
from lesiongen.inference.strategies import STRATEGIES, SegVariant
from lesiongen.models.checkpoint import FINAL
from lesiongen.models.folder import ModelFolder
from lesiongen.models.postprocessing import load_postprocessing
from lesiongen.paths import results_root
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, nan_to_none, read_json, write_json
from lesiongen.utilities.provenance import code_version, model_record

logger = logging.getLogger(__name__)

STRATEGY_ORDER = tuple(STRATEGIES)
PAIRED_OVER_CASES = ("dice", "lesion_f1")  # metrics with a per-case paired difference and interval


def found_no_lesion(cases: Iterable[dict[str, float]]) -> bool:
    """Whether a model found no lesion at all: Dice and lesion recall 0 on every case whose reference has lesions
    (``cases``: one metric dict per case, averaged over classes; False when no case has a lesion). At short
    schedules a training can stay at all background; its zeros are then noise in every mean and paired
    difference it enters, so reports name it."""
    with_lesions = [c for c in cases if math.isfinite(c["lesion_recall"])]
    return bool(with_lesions) and all(c["lesion_recall"] == 0 and c["dice"] == 0 for c in with_lesions)


def no_lesion_remedy(steps_option: str, set_option: str) -> str:
    """What to do about a training that found no lesion, in the options of the command that reports it."""
    return (f"Train longer ({steps_option}), or start from a class-balanced cross-entropy ({set_option} "
            "balanced_ce_until=0.5; documentation/segmentation.md)")


def fold_metrics(summary: dict) -> dict[str, float]:
    """One value per metric for a fold: the mean over cases, averaged over lesion classes."""
    return class_means([cls["mean"] for cls in summary["mean"].values()])


def per_case_metrics(summary: dict) -> dict[str, dict[str, float]]:
    """case -> metric -> value (averaged over lesion classes) for each validation case a fold scored."""
    return {case: class_means(list(per_class.values())) for case, per_class in summary.get("per_case", {}).items()}


@dataclasses.dataclass
class FoldScores:
    """strategy -> fold -> metric (each fold's mean over its cases), strategy -> validation case -> metric, and
    strategy -> the volume below which its postprocessing removed predicted lesions (absent: none removed)."""
    folds: dict[str, dict[str, dict[str, float]]]
    cases: dict[str, dict[str, dict[str, float]]]
    volumes: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FoldResults:
    """What the finished ``seg`` folds hold, per strategy: fold -> metric, validation case -> metric, fold -> model
    record, and the folds that found no validation lesion (:func:`found_no_lesion`). ``postprocessed`` holds the
    same per strategy as ``lesiongen_predict -m seg`` delivers it, after the model folder's postprocessing when it
    has a current one (None when no strategy has one)."""
    folds: dict[str, dict[str, dict[str, float]]]
    cases: dict[str, dict[str, dict[str, float]]]
    models: dict[str, dict[str, dict]]
    failed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    postprocessed: FoldScores | None = None


def collect(dataset_name: str, plans_name: str, folds: list[str] | None) -> FoldResults:
    """Every finished ``seg`` fold of the dataset and plans (``folds``: only these)."""
    root = results_root() / dataset_name
    found: dict[str, dict[str, dict[str, float]]] = {}
    cases: dict[str, dict[str, dict[str, float]]] = {}
    models: dict[str, dict[str, dict]] = {}
    failed: dict[str, list[str]] = {}
    folders: dict[str, Path] = {}
    for folder in sorted(root.glob(f"seg_*__{plans_name}")):
        variant = SegVariant.parse(folder.name[: -len(f"__{plans_name}")])
        if variant is None:
            continue
        strategy = variant.name[len("seg_"):]  # the strategy, with its ratio and seed when not the defaults
        for summary_file in sorted(folder.glob("fold_*/summary.json")):
            fold = summary_file.parent.name[len("fold_"):]
            checkpoint = summary_file.parent / FINAL
            if (folds is None or fold in folds) and checkpoint.is_file():
                summary = read_json(summary_file)
                found.setdefault(strategy, {})[fold] = fold_metrics(summary)
                fold_cases = per_case_metrics(summary)
                cases.setdefault(strategy, {}).update(fold_cases)
                if found_no_lesion(fold_cases.values()):  # judged here, not read: older summaries lack the flag
                    failed.setdefault(strategy, []).append(fold)
                models.setdefault(strategy, {})[fold] = model_record(checkpoint, summary.get("provenance"))
                folders[strategy] = folder
    if not found:
        raise LesiongenError(f"{root}: no finished seg folds (summary.json) to compare; run lesiongen_train "
                             f"{dataset_name} seg FOLD --synthetic STRATEGY first")
    results = FoldResults(found, cases, models, failed)
    results.postprocessed = _postprocessed(results, folders)
    return results


def _postprocessed(results: FoldResults, folders: dict[str, Path]) -> FoldScores | None:
    """The strategies as ``lesiongen_predict -m seg`` delivers them, when a model folder has a current
    postprocessing: its folds' validation predictions scored again without the lesions it removes; the other
    strategies as their folds scored them. A strategy whose validation predictions cannot be scored is left out,
    with a warning."""
    volumes = {}
    for strategy, folder in folders.items():
        postprocessing = load_postprocessing(ModelFolder(folder))
        if postprocessing is not None and postprocessing.min_lesion_volume_mm3 > 0:
            volumes[strategy] = postprocessing.min_lesion_volume_mm3
    if not volumes:
        return None
    scores = FoldScores({}, {})
    for strategy in results.folds:
        if strategy not in volumes:
            scores.folds[strategy], scores.cases[strategy] = results.folds[strategy], results.cases.get(strategy, {})
            continue
        try:
            per_fold = postprocessed_validation(ModelFolder(folders[strategy]), sorted(results.folds[strategy]),
                                                volumes[strategy])
        except LesiongenError as exc:
            logger.warning("seg_%s left out of the postprocessed comparison: %s", strategy, exc)
            continue
        scores.volumes[strategy] = volumes[strategy]
        scores.folds[strategy] = {fold: {metric: float(nanmean(np.array([c[metric] for c in fold_cases.values()])))
                                         for metric in REPORTED_METRICS}
                                  for fold, fold_cases in per_fold.items()}
        scores.cases[strategy] = {case: metrics for fold_cases in per_fold.values()
                                  for case, metrics in fold_cases.items()}
    return scores


def _stats(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (math.nan, math.nan)


def paired_over_cases(cases: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> dict:
    """metric -> the paired difference (``statistics.PairedDifference`` as a dict) of a strategy's validation cases
    against the baseline's on the cases both scored, for :data:`PAIRED_OVER_CASES`; empty without a common case."""
    common = sorted(set(cases) & set(baseline))
    if not common:
        return {}
    return {metric: dataclasses.asdict(paired_difference(np.array([[cases[c][metric] for c in common]]),
                                                         np.array([[baseline[c][metric] for c in common]])))
            for metric in PAIRED_OVER_CASES}


def compare(results: dict[str, dict[str, dict[str, float]]],
            cases: dict[str, dict[str, dict[str, float]]] | None = None,
            failed: dict[str, list[str]] | None = None) -> list[dict]:
    """One row per strategy: each metric's mean ± std over folds, the paired difference to ``none`` over the folds
    both have and, given the validation ``cases``, over the cases both have (``paired_vs_none``), and the folds
    that found no validation lesion (``folds_without_lesions``, from ``failed``)."""
    rows = []
    baseline = results.get("none", {})
    cases = cases or {}
    order = sorted(results, key=lambda key: (STRATEGY_ORDER.index(SegVariant.parse(f"seg_{key}").strategy), key))
    for strategy in order:
        folds = results[strategy]
        row = {"strategy": strategy, "folds": sorted(folds)}
        for metric in REPORTED_METRICS:
            row[metric] = _stats([f[metric] for f in folds.values()])
            paired = [folds[k][metric] - baseline[k][metric] for k in folds if k in baseline]
            row[f"{metric}_vs_none"] = _stats(paired) if strategy != "none" and paired else (math.nan, math.nan)
        if strategy != "none" and "none" in cases:
            row["paired_vs_none"] = paired_over_cases(cases.get(strategy, {}), cases["none"])
        row["folds_without_lesions"] = sorted((failed or {}).get(strategy, []))
        rows.append(row)
    return rows


def answer(rows: list[dict]) -> list[str]:
    """One line per strategy: its Dice against real data only over the validation cases, judged by the 95 %
    interval as ``lesiongen_benefit`` judges (``statistics.verdict``), and what the interval leaves out."""
    lines = []
    for row in rows:
        d = row.get("paired_vs_none", {}).get("dice")
        if not d or not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
            continue
        judged = verdict(d["ci_low"], d["ci_high"], d["n_cases"])
        lines.append(f"- **{row['strategy']}**: {judged}, {100 * d['mean']:+.1f} Dice points"
                     f" (95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}, Wilcoxon p "
                     f"{_p(d['p_value'])}; better on {d['cases_better']}, worse on {d['cases_worse']} of "
                     f"{d['n_cases']} validation cases of folds {','.join(row['folds'])})")
    if lines:
        lines.append("- One training run per fold: these intervals vary the validation cases, not the training run. "
                     "lesiongen_benefit (held-out test scans, --seeds 0 1 2) varies both.")
    return lines


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else "< 0.001" if value < 0.001 else f"{value:.3f}"


def _difference_cell(row: dict, metric: str) -> str:
    d = row.get("paired_vs_none", {}).get(metric)
    if not d or not math.isfinite(d["mean"]):
        return "–"
    if not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
        return f"{d['mean']:+.3f}"
    return f"{d['mean']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f}; p {_p(d['p_value'])}; n {d['n_cases']})"


def _cell(pair: tuple[float, float], scale: float = 1.0) -> str:
    mean, std = pair
    return "n/a" if not math.isfinite(mean) else f"{mean * scale:.3g} ± {std * scale:.2g}"


def _table(rows: list[dict]) -> list[str]:
    header = ["strategy", "folds"] + [REPORTED_METRIC_HEADINGS[m] for m in REPORTED_METRICS] + \
        [f"{REPORTED_METRIC_HEADINGS[m]} vs none" for m in PAIRED_OVER_CASES] + \
        [f"{REPORTED_METRIC_HEADINGS[m]} vs none over cases (95 % CI; p; n)" for m in PAIRED_OVER_CASES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["strategy"], ",".join(row["folds"])] + [_cell(row[m]) for m in REPORTED_METRICS]
        cells += [_cell(row[f"{m}_vs_none"]) for m in PAIRED_OVER_CASES]
        cells += [_difference_cell(row, m) for m in PAIRED_OVER_CASES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _postprocessed_section(postprocessed: dict) -> str:
    """The markdown of the comparison after each model folder's postprocessing (``postprocessed``: its JSON)."""
    volumes = postprocessed["min_lesion_volume_mm3"]
    applied = ", ".join(f"{strategy} below {volume:g} mm3" for strategy, volume in volumes.items())
    verdicts = postprocessed["answer"]
    return ("\n## After postprocessing\n\nAs lesiongen_predict -m seg delivers each model: predicted lesions removed "
            f"where the model folder's postprocessing.json says ({applied}); every other strategy as predicted. "
            "The volumes were chosen on these validation cases (lesiongen_determine_postprocessing), so their "
            "figures are optimistic, as nnU-Net's postprocessed cross-validation is.\n\n"
            + "\n".join(_table(postprocessed["rows"])) + "\n"
            + ("\n" + "\n".join(verdicts) + "\n" if verdicts else ""))


def write_comparison(rows: list[dict], folder: Path, provenance: dict | None = None,
                     postprocessed: dict | None = None) -> dict[str, Path]:
    """comparison.md / .csv / .json / .png in ``folder``; ``postprocessed`` (``{"min_lesion_volume_mm3": strategy ->
    volume, "rows": ..., "answer": ...}``) adds the table after postprocessing to the markdown and JSON, and its rows
    to the CSV (``postprocessed`` column)."""
    verdicts = answer(rows)
    failed = [f"{row['strategy']} fold {fold}" for row in rows for fold in row.get("folds_without_lesions", [])]
    warning = (f"\n**Warning**: {', '.join(failed)} found no validation lesion at all (Dice and lesion recall 0 on "
               "every case with lesions): those trainings did not learn, and their zeros are in the means above. "
               f"{no_lesion_remedy('--steps', '--set')}.\n") if failed else ""
    markdown = "# Segmentation with and without synthetic lesions\n\nMean ± std over folds; \"vs none\" is the " \
               "paired difference to real data only over the folds both have (Dice ×1, not percent points); " \
               "\"over cases\": over the validation cases both have, with a 95 % bootstrap interval and the " \
               "Wilcoxon signed-rank p.\n\n" + "\n".join(_table(rows)) + "\n" + \
               ("\n## Answer\n\n" + "\n".join(verdicts) + "\n" if verdicts else "") + warning + \
               (_postprocessed_section(postprocessed) if postprocessed else "")
    paths = {"markdown": folder / "comparison.md", "csv": folder / "comparison.csv",
             "json": folder / "comparison.json", "png": folder / "comparison.png"}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    paired_keys = ("mean", "ci_low", "ci_high", "p_value", "n_cases")
    writer.writerow(["strategy", "postprocessed", "folds"] +
                    [f"{m}_{s}" for m in REPORTED_METRICS for s in ("mean", "std")] +
                    [f"{m}_vs_none_{s}" for m in REPORTED_METRICS for s in ("mean", "std")] +
                    [f"{m}_vs_none_cases_{k}" for m in PAIRED_OVER_CASES for k in paired_keys])
    tables = [(rows, False)] + ([(postprocessed["rows"], True)] if postprocessed else [])
    for table, after in tables:
        for row in table:
            paired = row.get("paired_vs_none", {})
            writer.writerow([row["strategy"], after, " ".join(row["folds"])] +
                            [v for m in REPORTED_METRICS for v in row[m]] +
                            [v for m in REPORTED_METRICS for v in row[f"{m}_vs_none"]] +
                            [paired[m][k] if m in paired else "" for m in PAIRED_OVER_CASES for k in paired_keys])
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(buffer.getvalue())
    write_json(paths["json"], nan_to_none({"rows": rows, "answer": verdicts,
                                           **({"postprocessed": postprocessed} if postprocessed else {}),
                                           "provenance": provenance or code_version()}))
    _plot(rows, paths["png"])
    return paths


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = ("dice", "lesion_f1", "lesion_recall", "lesion_precision")
    fig = Figure(figsize=(2.6 * len(shown), 3.2))
    FigureCanvasAgg(fig)
    for i, metric in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        means = [r[metric][0] for r in rows]
        stds = [r[metric][1] for r in rows]
        ax.bar(range(len(rows)), np.nan_to_num(means), yerr=np.nan_to_num(stds),
               color=[f"C{j}" for j in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def run_comparison(dataset_name: str, plans_name: str, folds: list[str] | None = None,
                   output: Path | None = None) -> tuple[list[dict], dict[str, Path]]:
    found = collect(dataset_name, plans_name, folds)
    rows = compare(found.folds, found.cases, found.failed)
    postprocessed = None
    if found.postprocessed is not None:
        after = compare(found.postprocessed.folds, found.postprocessed.cases)
        postprocessed = {"min_lesion_volume_mm3": found.postprocessed.volumes, "rows": after, "answer": answer(after)}
    provenance = {**code_version(), "plans_name": plans_name, "models": found.models}
    return rows, write_comparison(rows, output or results_root() / dataset_name / "comparison", provenance,
                                  postprocessed)
