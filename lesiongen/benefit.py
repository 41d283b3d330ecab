"""``lesiongen_benefit``: does synthetic data help segmentation on *this* dataset? Measured on held-out test scans.

For a dataset with ``imagesTs``/``labelsTs`` (or the scans of a second, differently acquired dataset given with
``test_dataset``: an out-of-domain check), it trains what is missing — the mask generators and the inpainter on
every training case (fold ``all``; the test scans are never seen), then one ``seg`` model per strategy x seed x
synthetic ratio — segments every test scan at its own geometry with every model and writes a report: per strategy
Dice, lesion F1 / recall / precision, small-lesion recall, HD95 and volume error (absolute, and signed: predicted −
reference, so over- and under-segmentation show); the paired difference to real data only (``none``) with a 95 %
bootstrap interval over test cases *and* seeds and a Wilcoxon p-value; the sweep over synthetic ratios as a plot.
With ``schedule_check`` it also trains real-only at half the seg steps and reports whether the second half still
raised its test Dice: if it did, the comparison is about the schedule as much as about the synthetic cases. With
``data_check`` it trains real-only on a seeded half of the real training cases and reports what the other half
added: synthetic cases stand in for real ones, so if more real cases did not raise Dice, synthetic ones are unlikely
to.
Trainings that are already as asked (steps, seed, settings, plans, the models they used) are skipped, and so are
test segmentations already made by the same checkpoint of the same scan (:func:`score_test_set`), so a rerun only
does what is missing. Without test scans it says so and compares the trained folds instead
(``lesiongen_compare``). The report's files and sentences: :mod:`lesiongen.evaluation.benefit_report`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesiongen.evaluation.benefit_report import DATA_CHECK, REPORT, SCHEDULE_CHECK, write_report
from lesiongen.evaluation.compare import found_no_lesion, run_comparison
from lesiongen.evaluation.lesion_census import lesion_census, lesion_surroundings
from lesiongen.evaluation.postprocessing import determine_postprocessing
from lesiongen.evaluation.segmentation_metrics import REPORTED_METRICS, case_scores
from lesiongen.evaluation.statistics import nanmean, paired_difference
from lesiongen.inference.segment import segment
from lesiongen.inference.strategies import (DEFAULT_STRATEGIES, STRATEGIES, SegVariant, strategy as get_strategy)
from lesiongen.io.dataset import CaseFiles, RawDataset, load_dataset
from lesiongen.io.images import read_channels, read_image, write_image
from lesiongen.models.checkpoint import load_checkpoint
from lesiongen.models.folder import ModelFolder, trainer_folder
from lesiongen.models.postprocessing import POSTPROCESSING_JSON, read_postprocessing, remove_small_lesions
from lesiongen.models.registry import load_model
from lesiongen.models.segmenter import Segmenter
from lesiongen.paths import results_root, results_root_at
from lesiongen.planning.plans import PLANS_NAME
from lesiongen.preprocessing.dataset import PreprocessedDataset, open_preprocessed
from lesiongen.preprocessing.splits import SPLITS_FILE, load_or_create_splits
from lesiongen.preprocessing.storage import checksum_files, first_mismatch, load_array
from lesiongen.training.base import TrainingOptions
from lesiongen.training.registry import trainer_class
from lesiongen.training.seg_data import SegCase
from lesiongen.training.synthetic import case_tissue, synthetic_case_count, synthetic_cases
from lesiongen.training.trainers.seg import SegTrainer
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json, write_json
from lesiongen.utilities.parallel import thread_share
from lesiongen.utilities.progress_log import ProgressLog
from lesiongen.utilities.provenance import code_version, model_record, sha256_file

logger = logging.getLogger(__name__)

FOLD = "all"
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SWEEP = (0.25, 0.5, 1.0, 2.0)
DATA_CHECK_FRACTION = 0.5  # the share of the real training cases the data check's real-only models learn from


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
    # predicted test lesions below this volume are left out when scoring, for every model alike (as
    # lesiongen_determine_postprocessing chooses on cross-validation folds; the stored predictions stay whole)
    min_lesion_volume_mm3: float = 0.0
    # instead: the volume lesiongen_determine_postprocessing chooses on the cross-validation folds of the first seed's
    # real-only model, which this run trains as it trains that model (:func:`cv_fold_jobs`, :func:`cv_postprocessing`)
    cv_postprocessing: bool = False
    cv_folds: tuple[int, ...] = ()  # the folds trained and chosen on (empty: every fold of the splits)
    # seg's synthetic_fade_start for the models with synthetic cases (1: the synthetic share constant throughout)
    synthetic_fade_start: float = SegTrainer.synthetic_fade_start
    device: str = "cpu"
    parallel: int = 1  # trainings at the same time (subprocesses sharing the device)
    schedule_check: bool = False  # also train real-only at half the seg steps: was it still improving?
    data_check: bool = False  # also train real-only on half the real cases: did the other half raise Dice?
    # (trainer, NAME, VALUE): a trainer setting for every training of that trainer (lesiongen_train's --set), e.g.
    # ("inpaint", "edge_max_gain", "3"); the settings the comparison itself decides (SEG_SETTINGS_SET_HERE) are refused
    trainer_settings: tuple[tuple[str, str, str], ...] = ()
    output: Path | None = None


@dataclass(frozen=True)
class TrainingJob:
    trainer: str
    steps: int | None
    seed: int | None = None
    strategy: str | None = None  # seg only
    ratio: float = 1.0  # seg only
    fade_start: float | None = None  # seg with synthetic cases only (real-only models have nothing to fade)
    real_case_fraction: float = 1.0  # seg real-only only: the share of the real training cases it learns from
    user_settings: tuple[tuple[str, str], ...] = ()  # (NAME, VALUE) from BenefitOptions.trainer_settings
    fold: str = FOLD  # a cross-validation fold: seg real-only for --cv_postprocessing, validating its held-out cases
    mirror_validation: bool = True  # such a fold's validation predictions mirrored as the test scans are

    @property
    def variant(self) -> str:
        """The model folder's trainer part."""
        return self.trainer if self.trainer != "seg" else SegVariant.of(self.strategy, self.ratio, self.seed).name

    @property
    def name(self) -> str:
        return self.variant if self.fold == FOLD else f"{self.variant}/fold_{self.fold}"

    def settings(self) -> dict[str, object]:
        settings: dict[str, object] = dict(self.user_settings)
        if self.trainer != "seg":
            return settings
        # fold all validates on its own training cases: nothing to learn from that here, and it costs minutes; a
        # cross-validation fold's validation predictions are what the postprocessing is chosen on
        settings.update({"synthetic_ratio": self.ratio, "validate": self.fold != FOLD})
        if self.fold != FOLD:
            settings["mirror_validation"] = self.mirror_validation
        if self.fade_start is not None:
            settings["synthetic_fade_start"] = self.fade_start
        if self.real_case_fraction < 1.0:
            settings["real_case_fraction"] = self.real_case_fraction
        return settings

    def command(self, options: BenefitOptions) -> list[str]:
        command = [sys.executable, "-m", "lesiongen.cli.train", options.dataset, self.trainer, self.fold, "-device",
                   options.device, "-p", options.plans]
        if self.steps is not None:
            command += ["--steps", str(self.steps)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        if self.trainer == "seg":
            command += ["--synthetic", self.strategy, "--synthetic_ratio", str(self.ratio)]
        for key, value in self.settings().items():
            if key != "synthetic_ratio":
                command += ["--set", f"{key}={value if isinstance(value, str) else str(value).lower()}"]
        return command


# ------------------------------------------------------------------------------------------------- trainings
SEG_SETTINGS_SET_HERE = ("synthetic_ratio", "validate", "mirror_validation", "synthetic_fade_start",
                         "real_case_fraction")


def _user_settings(options: BenefitOptions) -> dict[str, tuple[tuple[str, str], ...]]:
    """trainer -> its (NAME, VALUE) settings from ``options.trainer_settings``; a seg setting the comparison decides
    is an error (a NAME the trainer lacks is refused when its jobs are built)."""
    chosen: dict[str, dict[str, str]] = {}
    for trainer, key, value in options.trainer_settings:
        if trainer == "seg" and key in SEG_SETTINGS_SET_HERE:
            raise LesiongenError(f"--set seg {key}={value}: lesiongen_benefit sets {key} itself "
                                 f"({', '.join(SEG_SETTINGS_SET_HERE)} follow from its own options)")
        chosen.setdefault(trainer, {})[key] = value
    return {trainer: tuple(sorted(values.items())) for trainer, values in chosen.items()}


def training_jobs(options: BenefitOptions) -> tuple[list[TrainingJob], list[TrainingJob]]:
    """(first phase: generators, inpainter, real-only seg models; second phase: seg models with synthetic cases)."""
    seg_runs = {(s, options.ratio) for s in options.strategies}
    if options.sweep_strategy:
        seg_runs |= {(options.sweep_strategy, r) for r in options.sweep_ratios}
    generators = sorted({STRATEGIES[s].mask_generator for s, _ in seg_runs if STRATEGIES[s].mask_generator})
    inpainted = any(STRATEGIES[s].inpainted for s, _ in seg_runs)
    user, trained = _user_settings(options), {*generators, *(["inpaint"] if inpainted else []), "seg"}
    untrained = sorted(set(user) - trained)
    if untrained:
        raise LesiongenError(f"--set {untrained[0]}: this run trains no {untrained[0]}; it trains "
                             f"{', '.join(sorted(trained))}")
    first = [TrainingJob(g, options.generator_steps, user_settings=user.get(g, ())) for g in generators]
    if inpainted:
        first.append(TrainingJob("inpaint", options.inpaint_steps, user_settings=user.get("inpaint", ())))
    seg = [TrainingJob("seg", options.seg_steps, seed, s, 1.0 if s == "none" else r,
                       None if s == "none" else options.synthetic_fade_start, user_settings=user.get("seg", ()))
           for s, r in sorted(seg_runs, key=lambda sr: (list(STRATEGIES).index(sr[0]), sr[1]))
           for seed in options.seeds]
    seg = list(dict.fromkeys(seg))  # "none" at every ratio is one run
    return first + [j for j in seg if j.strategy == "none"], [j for j in seg if j.strategy != "none"]


def seg_schedule(options: BenefitOptions, dataset: PreprocessedDataset) -> int:
    """The seg models' steps: ``--seg_steps``, else the plans' schedule."""
    return options.seg_steps or _trainer(TrainingJob("seg", None, options.seeds[0], "none",
                                                     user_settings=_user_settings(options).get("seg", ())),
                                         dataset, options.device).total_steps


def schedule_check_jobs(options: BenefitOptions, full: int) -> list[TrainingJob]:
    """Real-only at half of the ``full`` seg steps, one per seed: trained into a results tree of their own
    (``$lesiongen_results/schedule_check``), so the dataset's real-only models (the full schedule) stay as they are
    and ``lesiongen_compare`` never mistakes the two schedules for two strategies."""
    if "none" not in options.strategies:
        raise LesiongenError("--schedule_check compares real-only models at two schedules; keep none among "
                             "--strategies")
    if full < 2:
        raise LesiongenError(f"--schedule_check halves the seg schedule; {full} step(s) cannot be halved")
    seg_settings = _user_settings(options).get("seg", ())
    return [TrainingJob("seg", full // 2, seed, "none", user_settings=seg_settings) for seed in options.seeds]


def data_check_jobs(options: BenefitOptions, n_cases: int) -> list[TrainingJob]:
    """Real-only on a seeded half of the ``n_cases`` real training cases (each seed its own half), at the same steps,
    one per seed, in a results tree of their own (``$lesiongen_results/data_check``) as the schedule check's."""
    if "none" not in options.strategies:
        raise LesiongenError("--data_check compares real-only models on all and on half of the real cases; keep "
                             "none among --strategies")
    if n_cases < 2:
        raise LesiongenError(f"--data_check halves the real training cases; {n_cases} case(s) cannot be halved")
    seg_settings = _user_settings(options).get("seg", ())
    return [TrainingJob("seg", options.seg_steps, seed, "none", real_case_fraction=DATA_CHECK_FRACTION,
                        user_settings=seg_settings) for seed in options.seeds]


def _trainer(job: TrainingJob, dataset: PreprocessedDataset, device: str):
    options = TrainingOptions(total_steps=job.steps, **({"seed": job.seed} if job.seed is not None else {}))
    variant = {"strategy": job.strategy} if job.trainer == "seg" else {}
    trainer = trainer_class(job.trainer)(dataset, job.fold, device, options, **variant)
    trainer.apply_settings(job.settings())
    return trainer


def run_trainings(jobs: list[TrainingJob], options: BenefitOptions, logs: Path, phase: str) -> dict[str, str]:
    """Train every job that is not already as asked, logging how many of ``phase``'s trainings are done and about
    how long the rest will take; returns job name -> "trained" or "up to date"."""
    dataset = open_preprocessed(options.dataset, options.plans)
    todo, outcome = [], {}
    for job in jobs:
        reason = _trainer(job, dataset, options.device).stale_reason()
        if reason is None:
            outcome[job.name] = "up to date"
        else:
            logger.info("%s: %s; training", job.name, reason)
            todo.append(job)
    # a benefit run trains for hours on a CPU: after each training, how far this phase is and about how long it needs
    progress = ProgressLog(logger, f"trainings ({phase})", total=len(todo), unit="done", interval=0.0)
    if options.parallel <= 1:
        for job in todo:
            _trainer(job, dataset, options.device).run_training()
            outcome[job.name] = "trained"
            progress.advance()
        return outcome
    # side by side in subprocesses, each with an equal share of the CPU threads (one GPU is shared the same way)
    env = dict(os.environ, **thread_share(options.parallel))
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[TrainingJob, subprocess.Popen, Path]] = []
    pending = list(todo)
    while pending or running:
        while pending and len(running) < options.parallel:
            job = pending.pop(0)
            log = logs / f"{job.name.replace('/', '_')}.log"
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
            progress.advance()
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


# ------------------------------------------------------------------------------------------------- postprocessing
def cv_fold_jobs(options: BenefitOptions, dataset: PreprocessedDataset) -> list[TrainingJob]:
    """For ``--cv_postprocessing``: the first seed's real-only seg model once more on each cross-validation fold
    (``options.cv_folds``, default every fold of the dataset's splits), with its steps and settings, each validating
    on the fold's held-out training cases, mirrored as the test scans are. They share that model's folder, so it
    becomes a model folder as nnU-Net's: the folds, fold ``all`` and the postprocessing chosen on the folds."""
    splits = load_or_create_splits(dataset.folder, dataset.case_ids())
    folds = options.cv_folds or tuple(range(len(splits)))
    wrong = [f for f in folds if not 0 <= f < len(splits)]
    if wrong:
        raise LesiongenError(f"--cv_postprocessing {wrong[0]}: {dataset.folder / SPLITS_FILE} has folds "
                             f"0-{len(splits) - 1}")
    seg_settings = _user_settings(options).get("seg", ())
    return [TrainingJob("seg", options.seg_steps, options.seeds[0], "none", fold=str(fold),
                        mirror_validation=options.mirror, user_settings=seg_settings)
            for fold in dict.fromkeys(folds)]


def cv_postprocessing(folder: ModelFolder, folds: list[str]) -> tuple[dict, str]:
    """(the record of the postprocessing chosen on ``folds``' validation cases, "reused" or "chosen now"): the
    folder's ``postprocessing.json`` when it was chosen on exactly these folds' current checkpoints, else chosen
    again (lesiongen_determine_postprocessing's rule) and written there. This command owns the file, so one it
    cannot read is chosen again too."""
    try:
        found = read_postprocessing(folder)
    except LesiongenError as error:
        logger.warning("%s; choosing again", error)
        found = None
    if found is not None:
        _, record, stale = found
        if stale is None and sorted(record.get("folds", [])) == sorted(folds):
            return record, "reused"
    return determine_postprocessing(folder, folds), "chosen now"


def scoring_postprocessing(options: BenefitOptions, dataset_name: str, cv_jobs: list[TrainingJob]) -> dict:
    """How every model's test predictions are postprocessed before scoring: ``{"min_lesion_volume_mm3": ...,
    "chosen_by": ...}``. With ``options.cv_postprocessing``, the volume chosen on the cross-validation folds
    ``cv_jobs`` trained (:func:`cv_postprocessing`; with the folds, validation cases, the file's sha256 and whether
    this run chose it), as nnU-Net applies the postprocessing found on cross-validation to the test set: the fold
    ``all`` models compared here have no validation of their own to choose on. Otherwise
    ``options.min_lesion_volume_mm3``."""
    if not options.cv_postprocessing:
        return {"min_lesion_volume_mm3": options.min_lesion_volume_mm3, "chosen_by": "--min_lesion_volume"}
    folder = ModelFolder(trainer_folder(dataset_name, cv_jobs[0].variant, options.plans))
    record, state = cv_postprocessing(folder, [job.fold for job in cv_jobs])
    path = folder.path / POSTPROCESSING_JSON
    return {"min_lesion_volume_mm3": float(record["min_lesion_volume_mm3"]), "chosen_by": str(path),
            "folds": record.get("folds"), "n_cases": record.get("n_cases"), "sha256": sha256_file(path),
            "choice": state}


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


def prediction_key(checkpoint_sha256: str | None, images_sha256: list[str], mirror: bool) -> dict[str, object]:
    """What a test prediction depends on: the model's checkpoint, the test scan's channels, test-time mirroring and
    the code that segmented (lesiongen's version and the sha256 of its source, so that an uncommitted edit counts
    and a commit of documentation does not)."""
    code = code_version()
    return {"model_sha256": checkpoint_sha256, "images_sha256": images_sha256, "mirror": mirror,
            "lesiongen_version": code["lesiongen_version"], "source_sha256": code["source_sha256"]}


def _reusable(prediction: Path, record: Path, key: dict[str, object]) -> bool:
    """Whether ``prediction`` was written for ``key`` and still matches the size and sha256 its record holds (the
    preprocessed files' checksum records)."""
    if key["model_sha256"] is None or not record.is_file():
        return False
    try:
        recorded = read_json(record)
        return ({k: recorded.get(k) for k in key} == key and set(recorded.get("checksums", {})) == {prediction.name}
                and first_mismatch(record.parent, recorded["checksums"]) is None)
    except (OSError, ValueError, TypeError, AttributeError):  # unreadable or malformed: not verifiable, so redone
        return False


def score_test_set(models: dict[str, Segmenter], raw: RawDataset, cases: list[CaseFiles], labels: list[int],
                   mirror: bool, predictions: Path | None,
                   min_lesion_volume_mm3: float = 0.0) -> dict[str, dict[str, dict[str, float]]]:
    """model name -> case -> metric. Each test scan is read once and segmented by every model whose prediction of it
    is not already in ``predictions`` as asked (:func:`prediction_key`; each prediction has a JSON record next to
    it with its own size and sha256): a rerun that adds a strategy segments with the new models only. Predicted
    lesions below ``min_lesion_volume_mm3`` are removed before scoring (the stored prediction stays as predicted)."""
    scores: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    checkpoints = {name: sha256_file(m.checkpoint) if m.checkpoint is not None else None for name, m in models.items()}

    def paths(name: str, case: CaseFiles) -> tuple[Path, Path]:
        folder = predictions / name
        return folder / f"{case.case_id}{raw.info.file_ending}", folder / f"{case.case_id}.json"

    plan = []  # (case, model name -> key, the models that must segment it)
    for case in cases:
        images_sha256 = [sha256_file(path) for path in case.images]
        keys = {name: prediction_key(checkpoints[name], images_sha256, mirror) for name in models}
        stale = {name for name in models if predictions is None or not _reusable(*paths(name, case), keys[name])}
        plan.append((case, keys, stale))
    total = sum(len(stale) for _, _, stale in plan)
    if total < len(cases) * len(models):
        logger.info("%d of %d test segmentations are in %s as asked (the same models, scans, mirroring and code): "
                    "reused", len(cases) * len(models) - total, len(cases) * len(models), predictions)
    progress = ProgressLog(logger, "segmenting the test scans", total=total, unit="segmentations")
    for case, keys, stale in plan:
        reference, reference_geometry = read_image(case.label, raw.info.reader)
        reference = reference.astype(np.uint8)
        images, geometry = read_channels(case.images, raw.info.reader) if stale else (None, None)
        for name, model in models.items():
            if name in stale:
                prediction, _, _ = segment(images, list(geometry.spacing_zyx), [model], mirror=mirror)
                if predictions is not None:
                    target, record = paths(name, case)
                    write_image(target, prediction, geometry, raw.info.reader)
                    write_json(record, {**keys[name], "git_commit": code_version()["git_commit"],  # for reading only
                                        "checksums": checksum_files(target.parent, [target.name])})
                progress.advance()
            else:
                prediction = read_image(paths(name, case)[0], raw.info.reader)[0]
            prediction = remove_small_lesions(prediction, reference_geometry.spacing_zyx, min_lesion_volume_mm3)[0]
            scores[name][case.case_id] = case_scores(reference, prediction, reference_geometry.spacing_zyx, labels)
    return scores


def failed_trainings(scores: dict) -> list[str]:
    """The models that found no test lesion at all (:func:`found_no_lesion`): the report names them."""
    return [name for name, cases in scores.items() if found_no_lesion(cases.values())]


def _matrix(scores: dict, names: list[str], cases: list[str], metric: str) -> np.ndarray:
    """(seeds, cases) of one metric for the models ``names`` (one per seed, in seed order)."""
    return np.array([[scores[name][case][metric] for case in cases] for name in names], dtype=float)


def summarise(scores: dict, options: BenefitOptions, cases: list[str], schedule: tuple[int, int] | None = None,
              data: tuple[int, int] | None = None) -> dict:
    """The strategy table (at ``options.ratio``), paired differences to ``none``, each synthetic strategy's Dice
    against every one listed before it (``between_strategies``), the ratio sweep and, with
    ``schedule`` (full, half steps), real-only at the full schedule against its half-schedule models; with ``data``
    (all, half the real cases), real-only on all real cases against its half-data models."""
    def names(strategy: str, ratio: float) -> list[str]:
        return [SegVariant.of(strategy, ratio, seed).name for seed in options.seeds]

    def row(strategy: str, ratio: float) -> dict:
        out = {"strategy": strategy, "ratio": 1.0 if strategy == "none" else ratio}
        for metric in REPORTED_METRICS:
            per_seed = nanmean(_matrix(scores, names(strategy, ratio), cases, metric), axis=1)
            out[metric] = {"mean": float(nanmean(per_seed)), "std_over_seeds": float(np.nanstd(per_seed))
                           if np.isfinite(per_seed).any() else math.nan, "per_seed": [float(v) for v in per_seed]}
        if strategy != "none" and "none" in options.strategies:
            baseline = names("none", 1.0)
            out["vs_none"] = {metric: dataclasses.asdict(paired_difference(
                _matrix(scores, names(strategy, ratio), cases, metric), _matrix(scores, baseline, cases, metric)))
                for metric in REPORTED_METRICS}
        return out

    def against_real_only(check: str) -> tuple[float, dict]:
        """(mean Dice of the check's models, the paired difference of the full real-only models to them)."""
        full = names("none", 1.0)
        half = _matrix(scores, [f"{check}/{name}" for name in full], cases, "dice")
        return float(nanmean(half)), dataclasses.asdict(paired_difference(_matrix(scores, full, cases, "dice"), half))

    report = {"strategies": [row(s, options.ratio) for s in options.strategies]}
    # is one way of making cases better than another (diffmask against copy_paste)? Paired: same seed, same scan
    synthetic = [s for s in options.strategies if s != "none"]
    report["between_strategies"] = [
        {"strategy": later, "against": earlier, "dice": dataclasses.asdict(paired_difference(
            _matrix(scores, names(later, options.ratio), cases, "dice"),
            _matrix(scores, names(earlier, options.ratio), cases, "dice")))}
        for i, later in enumerate(synthetic) for earlier in synthetic[:i]]
    if schedule:
        dice_half, difference = against_real_only(SCHEDULE_CHECK)
        report[SCHEDULE_CHECK] = {"steps": schedule[0], "half_steps": schedule[1], "dice_half_schedule": dice_half,
                                  "dice": difference}
    if data:
        dice_half, difference = against_real_only(DATA_CHECK)
        report[DATA_CHECK] = {"cases": data[0], "half_cases": data[1], "dice_half_data": dice_half,
                              "dice": difference}
    if options.sweep_strategy:
        report["sweep"] = {"strategy": options.sweep_strategy,
                           "rows": [row(options.sweep_strategy, r) for r in options.sweep_ratios]}
    return report


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
    if options.cv_postprocessing and options.min_lesion_volume_mm3 > 0:
        raise LesiongenError("--cv_postprocessing chooses the volume on cross-validation folds; leave out "
                             "--min_lesion_volume")
    started = time.perf_counter()
    first, second = training_jobs(options)
    cv_jobs = cv_fold_jobs(options, dataset) if options.cv_postprocessing else []
    # the checks' real-only models, each check in a results tree of its own (named as the check)
    checks: dict[str, list[TrainingJob]] = {}
    full_steps = seg_schedule(options, dataset) if options.schedule_check else None
    if options.schedule_check:
        checks[SCHEDULE_CHECK] = schedule_check_jobs(options, full_steps)
    if options.data_check:
        checks[DATA_CHECK] = data_check_jobs(options, len(dataset.case_ids()))
    outcome = run_trainings(first + cv_jobs, options, folder / "logs", "generators, inpainter, real only")
    # chosen before the longer second phase, so a fold that cannot be used stops the run early
    postprocessing = scoring_postprocessing(options, dataset.name, cv_jobs)
    outcome.update(run_trainings(second, options, folder / "logs", "with synthetic cases"))
    for check, jobs in checks.items():
        with results_root_at(results_root() / check):
            checked = run_trainings(jobs, options, folder / "logs" / check, check)
        outcome.update({f"{check}/{name}": state for name, state in checked.items()})
    minutes_training = (time.perf_counter() - started) / 60
    seg_jobs = [j for j in first + second if j.trainer == "seg"]
    models = {j.name: load_model(ModelFolder(trainer_folder(dataset.name, j.name, options.plans)), FOLD,
                                 options.device, expect=Segmenter) for j in seg_jobs}
    models.update({f"{check}/{j.name}": load_model(
        ModelFolder(trainer_folder(dataset.name, j.name, options.plans, root=results_root() / check)), FOLD,
        options.device, expect=Segmenter) for check, jobs in checks.items() for j in jobs})
    # the generators, the inpainter and the cross-validation folds the postprocessing was chosen on
    other_checkpoints = {j.name: ModelFolder(trainer_folder(dataset.name, j.variant, options.plans)).checkpoint(j.fold)
                         for j in [*first, *cv_jobs] if j.trainer != "seg" or j.fold != FOLD}
    others = {name: load_checkpoint(path) for name, path in other_checkpoints.items()}
    check_no_leak([m.provenance for m in models.values()] + [s.get("provenance", {}) for s in others.values()],
                  raw, cases, options)
    start = time.perf_counter()
    scores = score_test_set(models, raw, cases, dataset.plans.lesion_labels, options.mirror, folder / "predictions",
                            postprocessing["min_lesion_volume_mm3"])
    case_ids = [c.case_id for c in cases]
    failed = failed_trainings(scores)
    if failed:
        logger.warning("%s found no test lesion at all: those trainings did not learn (see the report)",
                       ", ".join(failed))
    train_cases = next(iter(models.values())).provenance.get("train_cases", dataset.case_ids())
    schedule = (full_steps, checks[SCHEDULE_CHECK][0].steps) if SCHEDULE_CHECK in checks else None
    data = (len(train_cases), len(models[f"{DATA_CHECK}/{checks[DATA_CHECK][0].name}"].provenance["train_cases"])) \
        if DATA_CHECK in checks else None
    report = {"dataset": dataset.name, "plans": options.plans, "test_dataset": raw.name, "test_cases": case_ids,
              **summarise(scores, options, case_ids, schedule, data),
              "failed_trainings": failed, "postprocessing": postprocessing,
              "lesion_census": lesion_censuses(dataset, options, train_cases), "per_case": scores,
              "trainings": outcome, "minutes": {"training": minutes_training,
                                                "testing": (time.perf_counter() - start) / 60},
              "settings": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                           for k, v in dataclasses.asdict(options).items()},
              "provenance": {**code_version(), "models": {
                  **{name: m.record() for name, m in models.items()},
                  **{name: model_record(other_checkpoints[name], state.get("provenance"))
                     for name, state in others.items()}}}}
    return BenefitResult(write_report(report, folder, len(cases), len(options.seeds)), report)

