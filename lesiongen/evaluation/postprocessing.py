"""Choosing a seg model's postprocessing on its folds' validation cases (``lesiongen_determine_postprocessing``).

As nnU-Net does after cross-validation: every fold's validation predictions together, a step kept only where it
does not lower the validation Dice. The step (:mod:`lesiongen.models.postprocessing`) removes predicted lesions
below a volume. The candidates are ``CANDIDATE_VOXELS`` voxels of the plans' median spacing, each below the
smallest lesion of the training set (the fingerprint's, over every class), so a lesion the size of a real one is
never removed. Chosen: the candidate with the highest mean lesion F1 over the validation cases among those whose
mean Dice is not below the Dice without postprocessing; a tie goes to the smaller volume, and when no candidate
raises F1 nothing is removed (volume 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesiongen.evaluation.segmentation_metrics import case_scores, read_label_pair
from lesiongen.evaluation.statistics import nanmean
from lesiongen.io.dataset import RawDataset, load_dataset
from lesiongen.models.checkpoint import FINAL
from lesiongen.models.folder import ModelFolder
from lesiongen.models.postprocessing import POSTPROCESSING_JSON, remove_small_lesions
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import json_plain, read_json, write_json
from lesiongen.utilities.parallel import map_cases
from lesiongen.utilities.provenance import code_version, sha256_file

logger = logging.getLogger(__name__)

CANDIDATE_VOXELS = (2, 3, 5, 10, 20, 50, 100, 200)
SCORED = ("dice", "lesion_f1", "lesion_precision", "lesion_recall", "small_lesion_recall", "hd95",
          "volume_difference_mm3")
VALIDATION = "validation"


@dataclass(frozen=True)
class ValidationCase:
    fold: str
    case_id: str
    reference: Path
    prediction: Path
    reader: str | None = None  # the dataset's image reader


def candidate_volumes(voxel_mm3: float, smallest_lesion_mm3: float) -> list[float]:
    """0 (nothing removed) and every candidate volume below the smallest training lesion, in mm³."""
    return [0.0] + [k * voxel_mm3 for k in CANDIDATE_VOXELS if k * voxel_mm3 < smallest_lesion_mm3]


def choose(scores: list[dict[str, float]], volumes: list[float]) -> float:
    """The module's rule on mean scores per candidate (``scores[i]`` for ``volumes[i]``; ``volumes[0]`` is 0)."""
    baseline = scores[0]
    best = 0
    for i in range(1, len(volumes)):
        if scores[i]["dice"] >= baseline["dice"] and scores[i]["lesion_f1"] > scores[best]["lesion_f1"]:
            best = i
    return volumes[best]


def _score_case(case: ValidationCase, labels: list[int], volumes: list[float]) -> list[dict[str, float]]:
    """Worker: one validation case's reported metrics (averaged over lesion classes) and how many predicted lesions
    went, after each candidate volume."""
    reference, prediction, spacing = read_label_pair(case.reference, case.prediction, case.reader)
    scores = []
    for volume in volumes:
        kept, removed = remove_small_lesions(prediction, spacing, volume)
        scores.append({**case_scores(reference, kept, spacing, labels), "lesions_removed": removed})
    return scores


def fold_validation_cases(folder: ModelFolder, fold: str, raw: RawDataset) -> list[ValidationCase]:
    """The validation predictions a trained fold wrote, each with its reference label of ``raw``."""
    summary_path = folder.path / f"fold_{fold}" / "summary.json"
    if not folder.checkpoint(fold).is_file() or not summary_path.is_file():
        raise LesiongenError(f"{summary_path.parent}: no finished, validated training (fold_{fold}/{FINAL} "
                             "and summary.json); train it with validation first")
    references = {c.case_id: c.label for c in raw.split("training")}
    cases = []
    for case_id in read_json(summary_path).get("per_case", {}):
        prediction = summary_path.parent / VALIDATION / f"{case_id}{raw.info.file_ending}"
        if not prediction.is_file():
            raise LesiongenError(f"{prediction}: validation prediction missing; retrain fold {fold} or leave "
                                 "it out with -f")
        if case_id not in references:
            raise LesiongenError(f"{prediction}: case {case_id} is not a training case of {raw.folder}")
        cases.append(ValidationCase(fold, case_id, references[case_id], prediction, raw.info.reader))
    return cases


def validation_cases(folder: ModelFolder, folds: list[str] | None) -> tuple[list[ValidationCase], dict[str, str]]:
    """The validation predictions of the folds (default: every trained fold that validated; never ``all``, which
    validates on its own training cases) and the sha256 of each fold's checkpoint."""
    trained = [f for f in folder.trained_folds() if f != "all"]
    chosen = [str(f) for f in folds] if folds else trained
    if "all" in chosen:
        raise LesiongenError(f"{folder.path}: fold all validates on its own training cases; choose the "
                             "postprocessing on cross-validation folds (-f 0 1 2 3 4)")
    raw = load_dataset(folder.plans().dataset_name)
    cases = [case for fold in chosen for case in fold_validation_cases(folder, fold, raw)]
    if not cases:
        raise LesiongenError(f"{folder.path}: no validation predictions in the folds {', '.join(chosen) or '(none)'}")
    return cases, {fold: sha256_file(folder.checkpoint(fold)) for fold in chosen}


def postprocessed_validation(folder: ModelFolder, folds: list[str], volume: float,
                             num_processes: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """fold -> validation case -> every reported metric (averaged over lesion classes) of the folds' validation
    predictions with the predicted lesions below ``volume`` mm³ removed: what ``lesiongen_predict -m seg`` delivers
    with that postprocessing. Scored on the cases the volume may have been chosen on, as nnU-Net reports its
    postprocessed cross-validation."""
    plans = folder.plans()
    raw = load_dataset(plans.dataset_name)
    cases = [case for fold in folds for case in fold_validation_cases(folder, str(fold), raw)]
    per_case = map_cases(_score_case, cases, num_processes, f"scoring {folder.path.name}'s validation cases",
                         extra_args=(plans.lesion_labels, [volume]))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for case, (score,) in zip(cases, per_case):
        scores.setdefault(case.fold, {})[case.case_id] = {k: v for k, v in score.items() if k != "lesions_removed"}
    return scores


def determine_postprocessing(folder: ModelFolder, folds: list[str] | None = None, num_processes: int = 1) -> dict:
    """Score every candidate on the folds' validation cases, choose, write ``postprocessing.json`` in the model
    folder and return its content."""
    folder.check()
    plans = folder.plans()
    cases, checkpoints = validation_cases(folder, folds)
    voxel_mm3 = float(np.prod(plans.original_median_spacing))
    smallest = min((prior.min_lesion_volume_mm3 for prior in plans.sphere_priors.values()), default=float("inf"))
    volumes = candidate_volumes(voxel_mm3, smallest)
    per_case = map_cases(_score_case, cases, num_processes, "scoring the validation cases",
                         extra_args=(plans.lesion_labels, volumes))
    table = []
    for i, volume in enumerate(volumes):
        rows = [scores[i] for scores in per_case]
        mean = {name: float(nanmean(np.array([row[name] for row in rows], dtype=float))) for name in SCORED}
        table.append({"min_lesion_volume_mm3": volume, "voxels": round(volume / voxel_mm3), **mean,
                      "lesions_removed": int(sum(row["lesions_removed"] for row in rows))})
    chosen = choose(table, volumes)
    record = {
        "min_lesion_volume_mm3": chosen,
        "rule": "the candidate with the highest mean validation lesion F1 whose mean Dice is not below the Dice "
                "without postprocessing (documentation/segmentation.md)",
        "model_folder": folder.path.name, "folds": sorted(checkpoints), "n_cases": len(cases),
        "voxel_mm3": voxel_mm3, "smallest_training_lesion_mm3": smallest if np.isfinite(smallest) else None,
        "candidates": table, "checkpoints": checkpoints, "provenance": code_version(),
    }
    write_json(folder.path / POSTPROCESSING_JSON, json_plain(record))
    return record
