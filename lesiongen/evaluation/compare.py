"""Strategy comparison over segmentation folds: does real + synthetic beat real only?

Collects ``summary.json`` of every ``seg_STRATEGY`` fold, and writes a table of each metric per strategy
(mean ± std over folds) with the paired difference to ``none`` over the folds both have, as markdown, CSV and a PNG.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from lesiongen.inference.strategies import STRATEGIES, SegVariant
from lesiongen.models.checkpoint import FINAL
from lesiongen.paths import results_root
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, nan_to_none, read_json, write_json
from lesiongen.utilities.provenance import code_version, model_record

# every metric a comparison reports, with its column heading
METRIC_HEADINGS = {"dice": "Dice", "lesion_f1": "lesion F1", "lesion_recall": "recall",
                   "lesion_precision": "precision", "small_lesion_recall": "small recall", "hd95": "HD95 mm",
                   "abs_volume_difference_mm3": "abs vol diff mm3",
                   "volume_difference_mm3": "vol diff mm3 (pred - ref)"}
METRICS = tuple(METRIC_HEADINGS)
IN_MILLIMETRES = {"hd95", "abs_volume_difference_mm3", "volume_difference_mm3"}  # shown to 0.1, not 0.001
STRATEGY_ORDER = tuple(STRATEGIES)


def fold_metrics(summary: dict) -> dict[str, float]:
    """One value per metric for a fold: the mean over cases, averaged over lesion classes."""
    out = {}
    for metric in METRICS:
        values = [cls["mean"].get(metric) for cls in summary["mean"].values()]
        values = [v for v in values if v is not None and math.isfinite(v)]
        out[metric] = float(np.mean(values)) if values else math.nan
    return out


def collect(dataset_name: str, plans_name: str, folds: list[str] | None
            ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, dict]]]:
    """(strategy -> fold -> metric -> value, strategy -> fold -> model record) from every finished ``seg`` fold."""
    root = results_root() / dataset_name
    found: dict[str, dict[str, dict[str, float]]] = {}
    models: dict[str, dict[str, dict]] = {}
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
                models.setdefault(strategy, {})[fold] = model_record(checkpoint, summary.get("provenance"))
    if not found:
        raise LesiongenError(f"{root}: no finished seg folds (summary.json) to compare; run lesiongen_train "
                             f"{dataset_name} seg FOLD --synthetic STRATEGY first")
    return found, models


def _stats(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (math.nan, math.nan)


def compare(results: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    rows = []
    baseline = results.get("none", {})
    order = sorted(results, key=lambda key: (STRATEGY_ORDER.index(SegVariant.parse(f"seg_{key}").strategy), key))
    for strategy in order:
        folds = results[strategy]
        row = {"strategy": strategy, "folds": sorted(folds)}
        for metric in METRICS:
            row[metric] = _stats([f[metric] for f in folds.values()])
            paired = [folds[k][metric] - baseline[k][metric] for k in folds if k in baseline]
            row[f"{metric}_vs_none"] = _stats(paired) if strategy != "none" and paired else (math.nan, math.nan)
        rows.append(row)
    return rows


def _cell(pair: tuple[float, float], scale: float = 1.0) -> str:
    mean, std = pair
    return "n/a" if not math.isfinite(mean) else f"{mean * scale:.3g} ± {std * scale:.2g}"


def write_comparison(rows: list[dict], folder: Path, provenance: dict | None = None) -> dict[str, Path]:
    header = ["strategy", "folds"] + [METRIC_HEADINGS[m] for m in METRICS] + \
        [f"{METRIC_HEADINGS[m]} vs none" for m in ("dice", "lesion_f1")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["strategy"], ",".join(row["folds"])] + [_cell(row[m]) for m in METRICS]
        cells += [_cell(row[f"{m}_vs_none"]) for m in ("dice", "lesion_f1")]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "# Segmentation with and without synthetic lesions\n\nMean ± std over folds; \"vs none\" is the " \
               "paired difference to real data only over the folds both have (Dice ×1, not percent points).\n\n" + \
               "\n".join(lines) + "\n"
    paths = {"markdown": folder / "comparison.md", "csv": folder / "comparison.csv",
             "json": folder / "comparison.json", "png": folder / "comparison.png"}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["strategy", "folds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] +
                    [f"{m}_vs_none_{s}" for m in METRICS for s in ("mean", "std")])
    for row in rows:
        writer.writerow([row["strategy"], " ".join(row["folds"])] + [v for m in METRICS for v in row[m]] +
                        [v for m in METRICS for v in row[f"{m}_vs_none"]])
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(buffer.getvalue())
    write_json(paths["json"], nan_to_none({"rows": rows, "provenance": provenance or code_version()}))
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
    results, models = collect(dataset_name, plans_name, folds)
    rows = compare(results)
    provenance = {**code_version(), "plans_name": plans_name, "models": models}
    return rows, write_comparison(rows, output or results_root() / dataset_name / "comparison", provenance)
