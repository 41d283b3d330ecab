"""The report of ``lesiongen_benefit``: the answer in words, markdown, csv, json and a figure.

The report dict is made by :mod:`lesiongen.benefit` (strategies, paired differences to ``none``, the sweep, the lesion
census, the schedule and data checks, provenance); this module only turns it into files and sentences.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lesiongen.evaluation.compare import no_lesion_remedy
from lesiongen.evaluation.segmentation_metrics import (IN_MILLIMETRES, REPORTED_METRIC_HEADINGS, REPORTED_METRICS,
                                                      SMALL_LESION_MM3)
from lesiongen.evaluation.statistics import verdict
from lesiongen.fingerprint.lesions import SHELL_MM
from lesiongen.utilities.files import atomic_path, nan_to_none, write_json

REPORT = "benefit"  # the report's file names: benefit.md, .csv, .png, .json
SCHEDULE_CHECK = "schedule_check"  # name prefix of the half-schedule real-only models (and their results tree)
DATA_CHECK = "data_check"  # name prefix of the half-data real-only models (and their results tree)


def _cell(value: float, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _dice_points(d: dict) -> str:
    """A paired Dice difference's mean and interval in points, the bracket left open for what follows."""
    return f"{100 * d['mean']:+.1f} Dice points (95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}"


def _paired_dice(d: dict) -> str:
    """A paired Dice difference in words: mean, interval and how many test scans went which way."""
    return (f"{_dice_points(d)}; better on {d['cases_better']}, worse on {d['cases_worse']} of {d['n_cases']} test "
            "scans). ")


def schedule_line(check: dict) -> str:
    """What the schedule check says: real-only's Dice at the full schedule against half of it, and what follows."""
    d, full, half = check["dice"], check["steps"], check["half_steps"]
    line = f"- **Schedule check**: real-only at {full} steps against {half} steps (the same seeds): {_paired_dice(d)}"
    judged = verdict(d["ci_low"], d["ci_high"], d["n_cases"])
    if judged == "helps":
        return line + (f"Real-only was still improving: part of every difference above may be the schedule; rerun "
                       f"with --seg_steps {2 * full} and check again.")
    if judged == "hurts":
        return line + ("Real-only was worse after the second half (over-fitting its training cases?): a shorter "
                       "schedule may suit this dataset better.")
    if judged == "no clear effect":
        return line + "No clear gain from the second half: the schedule is long enough for this comparison."
    return line + f"Not judged: {judged}."


def data_line(check: dict) -> str:
    """What the data check says: real-only's Dice with all real training cases against half of them, and what that
    means for synthetic cases, which stand in for real ones (on test scans like the training cases, a synthetic case
    is not expected to teach more than a real one)."""
    d, full, half = check["dice"], check["cases"], check["half_cases"]
    line = (f"- **Data check**: real-only with all {full} real training cases against {half} of them (a seeded "
            f"subset per seed, the same steps): {_paired_dice(d)}")
    judged = verdict(d["ci_low"], d["ci_high"], d["n_cases"])
    if judged == "helps":
        return line + ("More real cases still raised Dice: the dataset is data-limited, so more cases, real or "
                       "synthetic, may help; doubling them again is likely to add less than this (learning curves "
                       "flatten), and a synthetic case is not expected to add more than a real one.")
    if judged == "hurts":
        return line + ("Real-only was worse with all of its cases: the added cases may differ from the test scans, "
                       "or the schedule be too short for more cases (--schedule_check).")
    if judged == "no clear effect":
        return line + ("No clear gain from the other half of the real cases: Dice is not limited by the number of "
                       "cases here, so synthetic cases, which stand in for real ones, are unlikely to raise it.")
    return line + f"Not judged: {judged}."


_PAIR_WORDS = {"helps": "better", "hurts": "worse", "no clear effect": "no clear difference"}  # one strategy vs another


def _judged(subject: str, d: dict, words: dict[str, str] | None = None) -> list[str]:
    """One answer line for a paired Dice difference judged by its interval (none without a finite interval), naming
    a Wilcoxon p < 0.05 over the scans when the interval includes 0."""
    if not (_finite(d["ci_low"]) and _finite(d["ci_high"])):  # NaN is None in the JSON
        return []
    judged = verdict(d["ci_low"], d["ci_high"], d["n_cases"])
    line = f"- {subject}: {(words or {}).get(judged, judged)}, {_dice_points(d)})"
    if judged == "no clear effect" and _finite(d["p_value"]) and d["p_value"] < 0.05:
        better = d["mean"] > 0
        line += (f"; {'better' if better else 'worse'} on {d['cases_better' if better else 'cases_worse']} of "
                 f"{d['n_cases']} test scans (Wilcoxon p {d['p_value']:.3f}), but the interval, which also varies "
                 "the training seed, includes 0")
    return [line]


def answer(report: dict, n_seeds: int) -> list[str]:
    """The question in words, one line per strategy: its Dice against real data only, judged by the 95 % interval
    over test cases and seeds (above 0: helps; below 0: hurts; else no clear effect); then each synthetic strategy
    against each one listed before it, judged the same way. A Wilcoxon p < 0.05 over the scans with an interval that
    includes 0 is named: consistent over these scans, not over training runs."""
    lines = []
    for row in report["strategies"]:
        d = row.get("vs_none", {}).get("dice")
        if d:
            lines += _judged(f"**{row['strategy']}** (ratio {row['ratio']:g})", d)
    for pair in report.get("between_strategies", []):
        lines += _judged(f"**{pair['strategy']} against {pair['against']}**", pair["dice"], _PAIR_WORDS)
    if lines and n_seeds < 2:
        lines.append("- One training seed: how much a result moves between training runs is not in these intervals; "
                     "run with --seeds 0 1 2 before trusting them.")
    if report.get(SCHEDULE_CHECK):
        lines.append(schedule_line(report[SCHEDULE_CHECK]))
    if report.get(DATA_CHECK):
        lines.append(data_line(report[DATA_CHECK]))
    return lines


def _per_seed_lines(report: dict) -> list[str]:
    """Each strategy's Dice per training seed, and for the synthetic ones the difference to real-only trained with
    the same seed: a difference that one training run carries shows here (reports before ``per_seed``: nothing)."""
    rows = [row for row in report["strategies"] if len(row["dice"].get("per_seed", [])) > 1]
    if not rows:
        return []
    seeds = report.get("settings", {}).get("seeds") or list(range(len(rows[0]["dice"]["per_seed"])))
    none = next((row["dice"]["per_seed"] for row in report["strategies"] if row["strategy"] == "none"), None)
    lines = ["", "Dice per training seed (mean over the test scans; in brackets the difference to real-only trained "
                 "with the same seed, in points)", "", "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for row in rows:
        values = row["dice"]["per_seed"]
        against = none if none and row["strategy"] != "none" else [math.nan] * len(values)
        cells = [_cell(value) + (f" ({100 * (value - base):+.1f})" if _finite(value) and _finite(base) else "")
                 for value, base in zip(values, against)]
        lines.append(f"| {row['strategy']} | " + " | ".join(cells) + " |")
    return lines


# lesiongen_benefit --cv_postprocessing's "choice" -> how the report says it
CV_CHOICE = {"chosen now": "; chosen by this run", "reused": "; chosen by an earlier run on the same fold checkpoints"}


def _postprocessing_lines(report: dict) -> list[str]:
    """What was removed from the test predictions before scoring and who chose it (reports before the
    ``postprocessing`` key held the volume in their settings)."""
    chosen = report.get("postprocessing") or {
        "min_lesion_volume_mm3": report.get("settings", {}).get("min_lesion_volume_mm3", 0.0)}
    volume, folds = chosen["min_lesion_volume_mm3"], chosen.get("folds")
    if folds is None and volume <= 0:  # nothing given, nothing removed
        return []
    source = " (--min_lesion_volume)" if folds is None else (
        f", as lesiongen_determine_postprocessing chose on the real-only seg model's cross-validation "
        f"({'fold' if len(folds) == 1 else 'folds'} {', '.join(map(str, folds))}, {chosen.get('n_cases')} validation "
        f"case{'' if chosen.get('n_cases') == 1 else 's'}; {chosen['chosen_by']}"
        f"{CV_CHOICE.get(chosen.get('choice'), '')})")
    if volume > 0:
        return [f"Postprocessing: predicted test lesions below {volume:g} mm3 were removed before scoring, for every "
                f"model alike{source}.", ""]
    return [f"Postprocessing: none{source}: no candidate volume raised lesion F1 there without lowering Dice.", ""]


def markdown(report: dict, n_cases: int, n_seeds: int) -> str:
    lines = [f"# Does synthetic data help? ({report['dataset']}, {n_cases} test case(s), {n_seeds} seed(s))", "",
             "Mean over seeds of the mean over test cases. \"vs none\": paired difference to real data only (Dice "
             "in points, x100; lesion F1 as is), with the 95 % bootstrap interval over test cases and seeds and the "
             "Wilcoxon signed-rank p over cases (seed means).", ""]
    steps = sorted({m["steps_trained"] for name, m in report.get("provenance", {}).get("models", {}).items()
                    if m.get("trainer") == "seg" and m.get("steps_trained") is not None
                    and not name.startswith((f"{SCHEDULE_CHECK}/", f"{DATA_CHECK}/"))})
    if steps:
        # the answer compares equal schedules; if real-only still improves at the end, it is about the schedule
        checked = "see the schedule check below" if report.get(SCHEDULE_CHECK) else "--schedule_check tells"
        lines += [f"Seg models trained {' / '.join(map(str, steps))} steps each: compare at a schedule after which "
                  f"real-only no longer improves ({checked}; documentation/segmentation.md).", ""]
    fade_start = report.get("settings", {}).get("synthetic_fade_start", 1.0)
    if fade_start < 1.0:
        lines += [f"Synthetic cases fade out: each model with synthetic cases drew them at its ratio's share for the "
                  f"first {fade_start:.0%} of its steps, then ever fewer, none at the end.", ""]
    lines += _postprocessing_lines(report)
    chosen = report.get("settings", {}).get("trainer_settings") or []
    if chosen:  # a model variant: the report must not read as the default models'
        lines += ["Trainer settings (--set): " + ", ".join(f"{trainer} {key}={value}" for trainer, key, value in chosen)
                  + "; every other setting is the trainers' default.", ""]
    # Dice decides the answer; lesion F1 is where synthetic cases have changed most (fewer false-positive lesions)
    header = ["strategy", "ratio", *(REPORTED_METRIC_HEADINGS[m] for m in REPORTED_METRICS),
              "Dice vs none (95 % CI)", "p", "cases better / worse", "lesion F1 vs none (95 % CI)", "p (F1)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["strategies"]:
        cells = [row["strategy"], f"{row['ratio']:g}"] + [
            _cell(row[m]["mean"], digits=1 if m in IN_MILLIMETRES else 3) for m in REPORTED_METRICS]
        d = row.get("vs_none", {}).get("dice")
        cells += ([f"{100 * d['mean']:+.1f} ({100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f})",
                   _cell(d["p_value"]), f"{d['cases_better']} / {d['cases_worse']}"] if d else ["–", "–", "–"])
        f1 = row.get("vs_none", {}).get("lesion_f1")
        cells += ([f"{f1['mean']:+.2f} ({f1['ci_low']:+.2f} to {f1['ci_high']:+.2f})", _cell(f1["p_value"])]
                  if f1 and _finite(f1["mean"]) else ["–", "–"])
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = answer(report, n_seeds)
    if verdicts:
        lines += ["", "Does it help? (Dice against real data only, then the synthetic strategies against each other; "
                      "the 95 % interval over test scans and training seeds decides)", "", *verdicts]
    lines += _per_seed_lines(report)
    if report.get("lesion_census"):
        lines += ["", f"Lesions the seg models learnt from (preprocessed space; small: < {SMALL_LESION_MM3:g} mm3; "
                      "synthetic cases at the table's ratio, every seed's)", "",
                  "| cases of | cases | lesions / case | median lesion mm3 | small | lesion mm3 / case | "
                  f"tissue in the lesions' {SHELL_MM:g} mm shells | contrast to the shell (per s.d.) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in report["lesion_census"].items():
            small = _cell(c["small_fraction"], 100, 0)
            borders = " · ".join(f"{tissue} {_cell(share, 100, 0)} %" for tissue, share in
                                 (c.get("borders") or {}).items()) or "–"
            contrast = " · ".join(f"{channel} {_cell(value, digits=2)}" for channel, value in
                                  (c.get("contrast") or {}).items()) or "–"
            lines.append(f"| {name} | {c['cases']} | {_cell(c['lesions_per_case'], digits=2)} | "
                         f"{_cell(c['median_lesion_mm3'], digits=1)} | {small}{' %' * (small != 'n/a')} | "
                         f"{_cell(c['lesion_mm3_per_case'], digits=1)} | {borders} | {contrast} |")
    if report.get("failed_trainings"):
        lines += ["", f"**Warning**: {', '.join(report['failed_trainings'])} found no test lesion at all (Dice and "
                      "lesion recall 0 on every test case with lesions): those trainings did not learn, and their "
                      "zeros are in the means and paired differences above. "
                      f"{no_lesion_remedy('--seg_steps', '--set seg')}."]
    if "sweep" in report:
        lines += ["", f"Synthetic ratio sweep ({report['sweep']['strategy']}): Dice "
                      + ", ".join(f"{r['ratio']:g}: {_cell(r['dice']['mean'])}" for r in report["sweep"]["rows"])]
    return "\n".join(lines) + "\n"


def _csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    paired_keys = ("mean", "ci_low", "ci_high", "p_value")
    writer.writerow(["strategy", "ratio"] + [f"{m}_mean" for m in REPORTED_METRICS]
                    + [f"{m}_std_over_seeds" for m in REPORTED_METRICS]
                    + [f"{m}_vs_none_{k}" for m in REPORTED_METRICS for k in paired_keys])
    rows = report["strategies"] + (report["sweep"]["rows"] if "sweep" in report else [])
    for row in rows:
        vs = row.get("vs_none", {})
        writer.writerow([row["strategy"], row["ratio"]] + [row[m]["mean"] for m in REPORTED_METRICS]
                        + [row[m]["std_over_seeds"] for m in REPORTED_METRICS]
                        + [vs.get(m, {}).get(k, "") for m in REPORTED_METRICS for k in paired_keys])
    return buffer.getvalue()


def _plot(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(fig)
    rows = report["strategies"]
    ax = fig.add_subplot(1, 3, 1)
    ax.bar(range(len(rows)), [r["dice"]["mean"] for r in rows], yerr=[r["dice"]["std_over_seeds"] for r in rows],
           color=[f"C{i}" for i in range(len(rows))])
    ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_title("test Dice (± sd over seeds)", fontsize=9)
    ax = fig.add_subplot(1, 3, 2)
    paired = [r for r in rows if "vs_none" in r]
    for i, r in enumerate(paired):
        d = r["vs_none"]["dice"]
        ax.errorbar([i], [100 * d["mean"]],
                    yerr=[[100 * (d["mean"] - d["ci_low"])], [100 * (d["ci_high"] - d["mean"])]],
                    fmt="o", color=f"C{rows.index(r)}", capsize=4)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(paired)), [r["strategy"] for r in paired], rotation=30, ha="right", fontsize=8)
    ax.set_title("Dice vs none, points (95 % CI)", fontsize=9)
    if "sweep" in report:
        ax = fig.add_subplot(1, 3, 3)
        sweep = report["sweep"]["rows"]
        ratios = [r["ratio"] for r in sweep]
        ax.errorbar(ratios, [r["dice"]["mean"] for r in sweep], yerr=[r["dice"]["std_over_seeds"] for r in sweep],
                    fmt="o-", capsize=3)
        none = next((r for r in rows if r["strategy"] == "none"), None)
        if none:
            ax.axhline(none["dice"]["mean"], color="k", linestyle="--", linewidth=0.8, label="none")
            ax.legend(fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("synthetic cases per real case", fontsize=8)
        ax.set_title(f"ratio sweep ({report['sweep']['strategy']})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def write_report(report: dict, folder: Path, n_cases: int, n_seeds: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / f"{REPORT}.md", "csv": folder / f"{REPORT}.csv", "png": folder / f"{REPORT}.png",
             "json": folder / f"{REPORT}.json"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown(report, n_cases, n_seeds))
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(_csv(report))
    _plot(report, paths["png"])
    write_json(paths["json"], nan_to_none({**report, "answer": answer(report, n_seeds)}))  # last: a complete report
    return paths
