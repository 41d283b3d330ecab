"""``lesiongen_benefit``: does synthetic data help segmentation on *this* dataset? Measured on held-out test scans.

For a dataset with ``imagesTs``/``labelsTs`` (or the scans of a second, differently acquired dataset given with
``test_dataset``: an out-of-domain check), it trains what is missing — the mask generators and the inpainter on
every training case (fold ``all``; the test scans are never seen), then one ``seg`` model per strategy x seed x
synthetic ratio — segments every test scan at its own geometry with every model and writes a report: per strategy
Dice, lesion F1 / recall / precision, small-lesion recall, HD95 and volume error (absolute, and signed: predicted −
reference, so over- and under-segmentation show); the paired difference to real data only (``none``) with a 95 %
bootstrap interval over test cases *and* seeds and a Wilcoxon p-value; the sweep over synthetic ratios as a plot.
With ``schedule_check`` it also trains real-only at half the seg steps and reports whether the second half still
raised its test Dice: if it did, the comparison is about the schedule as much as about the synthetic cases.
Trainings that are already as asked (steps, seed, settings, plans, the models they used) are skipped, so a rerun
only does what is missing. Without test scans it says so and compares the trained folds instead
(``lesiongen_compare``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesiongen.evaluation.compare import IN_MILLIMETRES, METRIC_HEADINGS, METRICS, class_means, run_comparison
from lesiongen.evaluation.lesion_census import lesion_census, lesion_surroundings
from lesiongen.evaluation.segmentation_metrics import SMALL_LESION_MM3, case_metrics
from lesiongen.evaluation.statistics import nanmean, paired_difference, verdict
from lesiongen.fingerprint.lesions import SHELL_MM
from lesiongen.inference.segment import segment
from lesiongen.inference.strategies import (DEFAULT_STRATEGIES, STRATEGIES, SegVariant,
                                           strategy as get_strategy)
from lesiongen.io.dataset import CaseFiles, RawDataset, load_dataset
from lesiongen.io.images import read_channels, read_image, write_image
from lesiongen.models.checkpoint import FINAL, load_checkpoint
from lesiongen.models.folder import ModelFolder, trainer_folder
from lesiongen.models.registry import load_model
from lesiongen.models.segmenter import Segmenter
from lesiongen.paths import results_root, results_root_at
from lesiongen.planning.plans import PLANS_NAME
from lesiongen.preprocessing.dataset import PreprocessedDataset, open_preprocessed
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import TrainingOptions
from lesiongen.training.registry import trainer_class
from lesiongen.training.seg_data import SegCase
from lesiongen.training.synthetic import case_tissue, synthetic_case_count, synthetic_cases
from lesiongen.training.trainers.seg import SegTrainer
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, nan_to_none, write_json
from lesiongen.utilities.parallel import thread_share
from lesiongen.utilities.provenance import code_version, model_record

logger = logging.getLogger(__name__)

FOLD = "all"
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SWEEP = (0.25, 0.5, 1.0, 2.0)
REPORT = "benefit"
SCHEDULE_CHECK = "schedule_check"  # $lesiongen_results/schedule_check: a results tree of its own for these models


@dataclass
class BenefitOptions:
    dataset: str
    plans: str = PLANS_NAME
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    ratio: float = 1.0  # synthetic cases per real case for the strategy table
    sweep_strategy: str | None = "diffmask"  # also trained at every sweep ratio (None: no sweep)
    sweep_ratios: tuple[float, ...] = DEFAULT_SWEEP
    test_dataset: str | None = None  # another dataset's scans as the test set (out of domain)
    seg_steps: int | None = None  # None: the plans' schedules
    generator_steps: int | None = None
    inpaint_steps: int | None = None
    mirror: bool = True  # test-time mirroring when segmenting the test scans
    # seg's synthetic_fade_start for the models with synthetic cases (1: the synthetic share constant throughout)
    synthetic_fade_start: float = SegTrainer.synthetic_fade_start
    device: str = "cpu"
    parallel: int = 1  # trainings at the same time (subprocesses sharing the device)
    schedule_check: bool = False  # also train real-only at half the seg steps: was it still improving?
    output: Path | None = None


@dataclass(frozen=True)
class TrainingJob:
    trainer: str
    steps: int | None
    seed: int | None = None
    strategy: str | None = None  # seg only
    ratio: float = 1.0  # seg only
    fade_start: float | None = None  # seg with synthetic cases only (real-only models have nothing to fade)

    @property
    def name(self) -> str:
        if self.trainer != "seg":
            return self.trainer
        return SegVariant.of(self.strategy, self.ratio, self.seed).name

    def settings(self) -> dict[str, object]:
        if self.trainer != "seg":
            return {}
        # fold all validates on its own training cases: nothing to learn from that here, and it costs minutes
        settings: dict[str, object] = {"synthetic_ratio": self.ratio, "validate": False}
        if self.fade_start is not None:
            settings["synthetic_fade_start"] = self.fade_start
        return settings

    def command(self, options: BenefitOptions) -> list[str]:
        command = [sys.executable, "-m", "lesiongen.cli.train", options.dataset, self.trainer, FOLD, "-device",
                   options.device, "-p", options.plans]
        if self.steps is not None:
            command += ["--steps", str(self.steps)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        if self.trainer == "seg":
            command += ["--synthetic", self.strategy, "--synthetic_ratio", str(self.ratio)]
        for key, value in self.settings().items():
            if key != "synthetic_ratio":
                command += ["--set", f"{key}={str(value).lower()}"]
        return command


# ------------------------------------------------------------------------------------------------- trainings
def training_jobs(options: BenefitOptions) -> tuple[list[TrainingJob], list[TrainingJob]]:
    """(first phase: generators, inpainter, real-only seg models; second phase: seg models with synthetic cases)."""
    seg_runs = {(s, options.ratio) for s in options.strategies}
    if options.sweep_strategy:
        seg_runs |= {(options.sweep_strategy, r) for r in options.sweep_ratios}
    generators = sorted({STRATEGIES[s].mask_generator for s, _ in seg_runs if STRATEGIES[s].mask_generator})
    first = [TrainingJob(g, options.generator_steps) for g in generators]
    if any(STRATEGIES[s].inpainted for s, _ in seg_runs):
        first.append(TrainingJob("inpaint", options.inpaint_steps))
    seg = [TrainingJob("seg", options.seg_steps, seed, s, 1.0 if s == "none" else r,
                       None if s == "none" else options.synthetic_fade_start)
           for s, r in sorted(seg_runs, key=lambda sr: (list(STRATEGIES).index(sr[0]), sr[1]))
           for seed in options.seeds]
    seg = list(dict.fromkeys(seg))  # "none" at every ratio is one run
    return first + [j for j in seg if j.strategy == "none"], [j for j in seg if j.strategy != "none"]


def seg_schedule(options: BenefitOptions, dataset: PreprocessedDataset) -> int:
    """The seg models' steps: ``--seg_steps``, else the plans' schedule."""
    return options.seg_steps or _trainer(TrainingJob("seg", None, options.seeds[0], "none"), dataset,
                                         options.device).total_steps


def schedule_check_jobs(options: BenefitOptions, dataset: PreprocessedDataset) -> list[TrainingJob]:
    """Real-only at half the seg steps, one per seed: trained into a results tree of their own
    (``$lesiongen_results/schedule_check``), so the dataset's real-only models (the full schedule) stay as they are
    and ``lesiongen_compare`` never mistakes the two schedules for two strategies."""
    if "none" not in options.strategies:
        raise LesiongenError("--schedule_check compares real-only models at two schedules; keep none among "
                             "--strategies")
    full = seg_schedule(options, dataset)
    if full < 2:
        raise LesiongenError(f"--schedule_check halves the seg schedule; {full} step(s) cannot be halved")
    return [TrainingJob("seg", full // 2, seed, "none") for seed in options.seeds]


def _trainer(job: TrainingJob, dataset: PreprocessedDataset, device: str):
    options = TrainingOptions(total_steps=job.steps, **({"seed": job.seed} if job.seed is not None else {}))
    variant = {"strategy": job.strategy} if job.trainer == "seg" else {}
    trainer = trainer_class(job.trainer)(dataset, FOLD, device, options, **variant)
    trainer.apply_settings(job.settings())
    return trainer


def run_trainings(jobs: list[TrainingJob], options: BenefitOptions, logs: Path) -> dict[str, str]:
    """Train every job that is not already as asked; returns job name -> "trained" or "up to date"."""
    dataset = open_preprocessed(options.dataset, options.plans)
    todo, outcome = [], {}
    for job in jobs:
        reason = _trainer(job, dataset, options.device).stale_reason()
        if reason is None:
            outcome[job.name] = "up to date"
        else:
            logger.info("%s: %s; training", job.name, reason)
            todo.append(job)
    if options.parallel <= 1:
        for job in todo:
            _trainer(job, dataset, options.device).run_training()
            outcome[job.name] = "trained"
        return outcome
    # side by side in subprocesses, each with an equal share of the CPU threads (one GPU is shared the same way)
    env = dict(os.environ, **thread_share(options.parallel))
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[TrainingJob, subprocess.Popen, Path]] = []
    pending = list(todo)
    while pending or running:
        while pending and len(running) < options.parallel:
            job = pending.pop(0)
            log = logs / f"{job.name}.log"
            with open(log, "w") as handle:
                running.append((job, subprocess.Popen(job.command(options), env=env, stdout=handle,
                                                      stderr=subprocess.STDOUT), log))
        time.sleep(1.0)
        for entry in list(running):
            job, process, log = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            if process.returncode != 0:
                for _, other, _ in running:
                    other.terminate()
                tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise LesiongenError(f"{log}: training {job.name} failed (exit {process.returncode}): {tail[0]}")
            outcome[job.name] = "trained"
    return outcome


# ------------------------------------------------------------------------------------------------- test set
def held_out_cases(options: BenefitOptions) -> tuple[RawDataset, list[CaseFiles]]:
    """The labelled test scans: the dataset's imagesTs/labelsTs, or another dataset's (its test split, else its
    training cases, which these models never saw)."""
    raw = load_dataset(options.test_dataset or options.dataset)
    cases = [c for c in raw.test if c.label is not None]
    if options.test_dataset and not cases:
        cases = list(raw.training)
    return raw, cases


def check_no_leak(provenances: list[dict], raw: RawDataset, cases: list[CaseFiles], options: BenefitOptions) -> None:
    """No test case may be among the training cases of any model (seg, generators, inpainter)."""
    if options.test_dataset and load_dataset(options.dataset).folder != raw.folder:
        return  # another dataset: none of its scans can be in this one's training set
    test_ids = {c.case_id for c in cases}
    for provenance in provenances:
        leaked = test_ids & set(provenance.get("train_cases", []))
        if leaked:
            raise LesiongenError(f"test case(s) {sorted(leaked)[:3]} are among the training cases of "
                                 f"{provenance.get('variant')}; the test set must be held out")


# ------------------------------------------------------------------------------------------------- census
def lesion_censuses(dataset: PreprocessedDataset, options: BenefitOptions, train_cases: list[str]) -> dict[str, dict]:
    """The lesions the seg models learnt from: the real training cases', and each strategy's synthetic cases' at the
    table's ratio (every seed's pooled), counted in the preprocessed space; with tissue maps, also what the lesions
    border. A strategy whose cases cannot be read (removed since training) is left out with a warning."""
    spacing = dataset.plans.target_spacing
    voxel_mm3 = float(np.prod(spacing))

    def census(cases: list[SegCase]) -> dict:
        for case in cases:
            case.verify()  # checksums: a case changed since training is not what the model learnt from
        labels = [load_array(f"{c.stem}_seg.b2nd") for c in cases]
        around = ((label, case_tissue(dataset, c), load_array(f"{c.stem}.b2nd")) for label, c in zip(labels, cases))
        borders, contrast = lesion_surroundings(around, spacing, dataset.plans.tissue_labels,
                                                list(dataset.plans.channel_names.values()))
        return dataclasses.asdict(dataclasses.replace(lesion_census(labels, voxel_mm3), borders=borders,
                                                      contrast=contrast))

    out = {"real": census([SegCase(c, dataset.data_folder / "training" / c) for c in train_cases])}
    n_synthetic = synthetic_case_count(options.ratio, len(train_cases))
    for strategy in options.strategies:
        if strategy == "none":
            continue
        cases = [c for seed in options.seeds for c in synthetic_cases(dataset, strategy, FOLD, seed, n_synthetic)]
        try:
            out[strategy] = census(cases)
        except LesiongenError as error:
            logger.warning("no lesion census of the %s cases: %s", strategy, error)
    return out


# ------------------------------------------------------------------------------------------------- scoring
def case_scores(reference: np.ndarray, prediction: np.ndarray, spacing, labels: list[int]) -> dict[str, float]:
    """Every metric of one case, averaged over the lesion classes (as lesiongen_compare averages folds)."""
    per_class = case_metrics(reference, prediction, spacing, labels)
    return class_means([per_class[label] for label in labels])


def score_test_set(models: dict[str, Segmenter], raw: RawDataset, cases: list[CaseFiles], labels: list[int],
                   mirror: bool, predictions: Path | None) -> dict[str, dict[str, dict[str, float]]]:
    """model name -> case -> metric; each test scan is read once and segmented by every model."""
    scores: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for case in cases:
        images, geometry = read_channels(case.images, raw.info.reader)
        reference = read_image(case.label, raw.info.reader)[0].astype(np.uint8)
        for name, model in models.items():
            prediction, _, _ = segment(images, list(geometry.spacing_zyx), [model], mirror=mirror)
            if predictions is not None:
                write_image(predictions / name / f"{case.case_id}{raw.info.file_ending}", prediction, geometry,
                            raw.info.reader)
            scores[name][case.case_id] = case_scores(reference, prediction, geometry.spacing_zyx, labels)
        logger.info("scored test case %s with %d model(s)", case.case_id, len(models))
    return scores


def failed_trainings(scores: dict) -> list[str]:
    """The models that found no test lesion at all: Dice and lesion recall 0 on every test case that has lesions.
    Such a training did not learn (at short schedules a seed can stay at all background); its zeros pull down
    every row and paired difference its seed is in, so the report names it."""
    failed = []
    for name, cases in scores.items():
        with_lesions = [c for c in cases.values() if math.isfinite(c["lesion_recall"])]
        if with_lesions and all(c["lesion_recall"] == 0 and c["dice"] == 0 for c in with_lesions):
            failed.append(name)
    return failed


def _matrix(scores: dict, names: list[str], cases: list[str], metric: str) -> np.ndarray:
    """(seeds, cases) of one metric for the models ``names`` (one per seed, in seed order)."""
    return np.array([[scores[name][case][metric] for case in cases] for name in names], dtype=float)


def summarise(scores: dict, options: BenefitOptions, cases: list[str], schedule: tuple[int, int] | None = None) -> dict:
    """The strategy table (at ``options.ratio``), paired differences to ``none``, the ratio sweep and, with
    ``schedule`` (full, half steps), real-only at the full schedule against its half-schedule models."""
    def names(strategy: str, ratio: float) -> list[str]:
        return [SegVariant.of(strategy, ratio, seed).name for seed in options.seeds]

    def row(strategy: str, ratio: float) -> dict:
        out = {"strategy": strategy, "ratio": 1.0 if strategy == "none" else ratio}
        for metric in METRICS:
            per_seed = nanmean(_matrix(scores, names(strategy, ratio), cases, metric), axis=1)
            out[metric] = {"mean": float(nanmean(per_seed)), "std_over_seeds": float(np.nanstd(per_seed))
                           if np.isfinite(per_seed).any() else math.nan}
        if strategy != "none" and "none" in options.strategies:
            baseline = names("none", 1.0)
            out["vs_none"] = {metric: dataclasses.asdict(paired_difference(
                _matrix(scores, names(strategy, ratio), cases, metric), _matrix(scores, baseline, cases, metric)))
                for metric in METRICS}
        return out

    report = {"strategies": [row(s, options.ratio) for s in options.strategies]}
    if schedule:
        full = names("none", 1.0)
        half = [f"{SCHEDULE_CHECK}/{name}" for name in full]
        report["schedule_check"] = {
            "steps": schedule[0], "half_steps": schedule[1],
            "dice_half_schedule": float(nanmean(_matrix(scores, half, cases, "dice"))),
            "dice": dataclasses.asdict(paired_difference(_matrix(scores, full, cases, "dice"),
                                                         _matrix(scores, half, cases, "dice")))}
    if options.sweep_strategy:
        report["sweep"] = {"strategy": options.sweep_strategy,
                           "rows": [row(options.sweep_strategy, r) for r in options.sweep_ratios]}
    return report


# ------------------------------------------------------------------------------------------------- report
def _cell(value: float, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def schedule_line(check: dict) -> str:
    """What the schedule check says: real-only's Dice at the full schedule against half of it, and what follows."""
    d, full, half = check["dice"], check["steps"], check["half_steps"]
    line = (f"- **Schedule check**: real-only at {full} steps against {half} steps (the same seeds): "
            f"{100 * d['mean']:+.1f} Dice points (95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}; "
            f"better on {d['cases_better']}, worse on {d['cases_worse']} of {d['n_cases']} test scans). ")
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


def answer(report: dict, n_seeds: int) -> list[str]:
    """The question in words, one line per strategy: its Dice against real data only, judged by the 95 % interval
    over test cases and seeds (above 0: helps; below 0: hurts; else no clear effect). A Wilcoxon p < 0.05 over the
    scans with an interval that includes 0 is named: consistent over these scans, not over training runs."""
    lines = []
    for row in report["strategies"]:
        d = row.get("vs_none", {}).get("dice")
        if not d or not (_finite(d["ci_low"]) and _finite(d["ci_high"])):  # NaN is None in the JSON
            continue
        judged = verdict(d["ci_low"], d["ci_high"], d["n_cases"])
        line = (f"- **{row['strategy']}** (ratio {row['ratio']:g}): {judged}, {100 * d['mean']:+.1f} Dice points "
                f"(95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f})")
        if judged == "no clear effect" and _finite(d["p_value"]) and d["p_value"] < 0.05:
            better = d["mean"] > 0
            line += (f"; {'better' if better else 'worse'} on {d['cases_better' if better else 'cases_worse']} of "
                     f"{d['n_cases']} test scans (Wilcoxon p {d['p_value']:.3f}), but the interval, which also varies "
                     "the training seed, includes 0")
        lines.append(line)
    if lines and n_seeds < 2:
        lines.append("- One training seed: how much a result moves between training runs is not in these intervals; "
                     "run with --seeds 0 1 2 before trusting them.")
    if report.get("schedule_check"):
        lines.append(schedule_line(report["schedule_check"]))
    return lines


def markdown(report: dict, n_cases: int, n_seeds: int) -> str:
    lines = [f"# Does synthetic data help? ({report['dataset']}, {n_cases} test case(s), {n_seeds} seed(s))", "",
             "Mean over seeds of the mean over test cases. \"vs none\": paired difference to real data only in "
             "Dice points (x100), with the 95 % bootstrap interval over test cases and seeds and the Wilcoxon "
             "signed-rank p over cases (seed means).", ""]
    steps = sorted({m["steps_trained"] for name, m in report.get("provenance", {}).get("models", {}).items()
                    if m.get("trainer") == "seg" and m.get("steps_trained") is not None
                    and not name.startswith(f"{SCHEDULE_CHECK}/")})
    if steps:
        # the answer compares equal schedules; if real-only still improves at the end, it is about the schedule
        lines += [f"Seg models trained {' / '.join(map(str, steps))} steps each: compare at a schedule after which "
                  "real-only no longer improves (documentation/segmentation.md).", ""]
    fade_start = report.get("settings", {}).get("synthetic_fade_start", 1.0)
    if fade_start < 1.0:
        lines += [f"Synthetic cases fade out: each model with synthetic cases drew them at its ratio's share for the "
                  f"first {fade_start:.0%} of its steps, then ever fewer, none at the end.", ""]
    header = ["strategy", "ratio", *(METRIC_HEADINGS[m] for m in METRICS), "Dice vs none (95 % CI)", "p",
              "cases better / worse"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["strategies"]:
        cells = [row["strategy"], f"{row['ratio']:g}"] + [
            _cell(row[m]["mean"], digits=1 if m in IN_MILLIMETRES else 3) for m in METRICS]
        d = row.get("vs_none", {}).get("dice")
        cells += ([f"{100 * d['mean']:+.1f} ({100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f})",
                   _cell(d["p_value"]), f"{d['cases_better']} / {d['cases_worse']}"] if d else ["–", "–", "–"])
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = answer(report, n_seeds)
    if verdicts:
        lines += ["", "Does it help? (Dice against real data only; the 95 % interval over test scans and training "
                      "seeds decides)", "", *verdicts]
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
                      "zeros are in the means and paired differences above. Train longer (--seg_steps) or with other "
                      "seeds."]
    if "sweep" in report:
        lines += ["", f"Synthetic ratio sweep ({report['sweep']['strategy']}): Dice "
                      + ", ".join(f"{r['ratio']:g}: {_cell(r['dice']['mean'])}" for r in report["sweep"]["rows"])]
    return "\n".join(lines) + "\n"


def _csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["strategy", "ratio"] + [f"{m}_mean" for m in METRICS] + [f"{m}_std_over_seeds" for m in METRICS]
                    + [f"{m}_vs_none_{k}" for m in METRICS for k in ("mean", "ci_low", "ci_high", "p_value")])
    rows = report["strategies"] + (report["sweep"]["rows"] if "sweep" in report else [])
    for row in rows:
        vs = row.get("vs_none", {})
        writer.writerow([row["strategy"], row["ratio"]] + [row[m]["mean"] for m in METRICS]
                        + [row[m]["std_over_seeds"] for m in METRICS]
                        + [vs.get(m, {}).get(k, "") for m in METRICS for k in ("mean", "ci_low", "ci_high", "p_value")])
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


# ------------------------------------------------------------------------------------------------- run
@dataclass
class BenefitResult:
    paths: dict[str, Path]
    report: dict = field(default_factory=dict)
    fell_back_to_folds: bool = False


def run_benefit(options: BenefitOptions) -> BenefitResult:
    for name in options.strategies:
        get_strategy(name)
    if options.sweep_strategy:
        get_strategy(options.sweep_strategy)
    dataset = open_preprocessed(options.dataset, options.plans)
    raw, cases = held_out_cases(options)
    folder = options.output or results_root() / dataset.name / REPORT
    if not cases:
        logger.warning("%s has no labelled test scans (imagesTs + labelsTs): comparing the trained folds instead "
                       "(lesiongen_compare); give --test_dataset ID for another dataset's scans", raw.folder)
        _, paths = run_comparison(dataset.name, options.plans, None, folder)
        return BenefitResult(paths, fell_back_to_folds=True)
    started = time.perf_counter()
    first, second = training_jobs(options)
    check_jobs = schedule_check_jobs(options, dataset) if options.schedule_check else []
    outcome = run_trainings(first, options, folder / "logs")
    outcome.update(run_trainings(second, options, folder / "logs"))
    check_root = results_root() / SCHEDULE_CHECK
    if check_jobs:
        with results_root_at(check_root):
            checked = run_trainings(check_jobs, options, folder / "logs" / SCHEDULE_CHECK)
        outcome.update({f"{SCHEDULE_CHECK}/{name}": state for name, state in checked.items()})
    minutes_training = (time.perf_counter() - started) / 60
    seg_jobs = [j for j in first + second if j.trainer == "seg"]
    models = {j.name: load_model(ModelFolder(trainer_folder(dataset.name, j.name, options.plans)), FOLD,
                                 options.device, expect=Segmenter) for j in seg_jobs}
    models.update({f"{SCHEDULE_CHECK}/{j.name}": load_model(
        ModelFolder(trainer_folder(dataset.name, j.name, options.plans, root=check_root)), FOLD,
        options.device, expect=Segmenter) for j in check_jobs})
    others = {j.name: load_checkpoint(trainer_folder(dataset.name, j.name, options.plans) / f"fold_{FOLD}" / FINAL)
              for j in first if j.trainer != "seg"}
    check_no_leak([m.provenance for m in models.values()] + [s.get("provenance", {}) for s in others.values()],
                  raw, cases, options)
    start = time.perf_counter()
    scores = score_test_set(models, raw, cases, dataset.plans.lesion_labels, options.mirror, folder / "predictions")
    case_ids = [c.case_id for c in cases]
    failed = failed_trainings(scores)
    if failed:
        logger.warning("%s found no test lesion at all: those trainings did not learn (see the report)",
                       ", ".join(failed))
    train_cases = next(iter(models.values())).provenance.get("train_cases", dataset.case_ids())
    report = {"dataset": dataset.name, "plans": options.plans, "test_dataset": raw.name, "test_cases": case_ids,
              **summarise(scores, options, case_ids,
                          (seg_schedule(options, dataset), check_jobs[0].steps) if check_jobs else None),
              "failed_trainings": failed,
              "lesion_census": lesion_censuses(dataset, options, train_cases), "per_case": scores,
              "trainings": outcome, "minutes": {"training": minutes_training,
                                                "testing": (time.perf_counter() - start) / 60},
              "settings": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                           for k, v in dataclasses.asdict(options).items()},
              "provenance": {**code_version(), "models": {
                  **{name: m.record() for name, m in models.items()},
                  **{name: model_record(trainer_folder(dataset.name, name, options.plans) / f"fold_{FOLD}" / FINAL,
                                        state.get("provenance")) for name, state in others.items()}}}}
    return BenefitResult(write_report(report, folder, len(cases), len(options.seeds)), report)

