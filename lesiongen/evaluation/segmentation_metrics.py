"""Lesion segmentation metrics per case and over a dataset, with BraTS/panoptica-style lesion matching.

Every class in ``labels`` is evaluated on its own binary masks ``reference == label`` and
``prediction == label``. Spacings are in array order (``(z, y, x)`` for lesiongen arrays, like
``ImageGeometry.spacing_zyx``); distances are in mm and volumes in mm^3.

Lesions are 26-connected components (full ``3**ndim`` neighbourhood) of one class. Matching is by overlap:

* a reference lesion is *detected* (``tp_lesions``) when any predicted component of the class overlaps it by at
  least one voxel, otherwise it is missed (``fn_lesions``);
* a predicted component is *matched* (``matched_pred_lesions``) when it overlaps any reference lesion,
  otherwise it is a false positive (``fp_lesions``).

One predicted component that bridges two reference lesions therefore detects both (``tp_lesions`` 2) but
counts once as a matched prediction, so ``tp_lesions`` and ``matched_pred_lesions`` can differ.

Per class and case (:func:`case_metrics`):

* ``dice``: voxel Dice ``2|R∩P| / (|R|+|P|)``; 1.0 when both masks are empty, 0.0 when only one is;
* ``lesion_recall`` = ``tp_lesions / n_ref_lesions`` (the "coverage"); NaN when there are no reference lesions;
* ``lesion_precision`` = ``matched_pred_lesions / n_pred_lesions``; NaN when there are no predicted components;
* ``lesion_f1`` = ``2PR / (P+R)`` (two reference lesions, one detected, no false positive: P 1, R 0.5,
  F1 2/3). Edge cases: both empty → 1.0; lesions only in the reference or only in the prediction → 0.0;
  ``P = R = 0`` → 0.0. So F1 is never NaN;
* ``hd95``: 95th percentile of the pooled symmetric surface distances (every reference-surface voxel to the
  nearest prediction-surface voxel, and vice versa, in one array; the medpy/panoptica convention), with
  distance transforms that use ``sampling=spacing``. The surface of a mask is the mask minus its erosion
  (6-connected structuring element; voxels on the array border belong to the surface). NaN when either mask is
  empty (the distance is undefined, not "large");
* ``volume_ref_mm3``, ``volume_pred_mm3``, ``abs_volume_difference_mm3`` and the signed
  ``volume_difference_mm3`` = predicted − reference volume (> 0: over-segmented; its mean over cases says which
  way a model errs, which the absolute error cannot);
* ``small_lesion_recall``: recall over reference lesions with volume ``< small_lesion_mm3`` only; NaN when the
  case has none. ``n_small_ref_lesions`` and ``tp_small_lesions`` are its counts;
* ``n_ref_lesions``, ``n_pred_lesions``.

:func:`aggregate` gives, per class, the nan-aware mean and (population, ``ddof=0``) standard deviation of every
metric over cases (NaN where every case is NaN), how many cases had a finite value, and lesion-level totals
pooled over cases: summed counts with ``precision`` = Σmatched / Σpred, ``recall`` = Σtp / Σref and their F1 (same
edge-case rules as per case). :func:`evaluate_folders` reads a reference and a prediction folder (files paired
by name) and returns ``{"per_case": ..., "mean": aggregate(...), "labels": [...]}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger(__name__)

SMALL_LESION_MM3 = 100.0  # a lesion below this volume is small (small-lesion recall, the lesion census)
# Order of the per-class metrics in every result dict.
METRIC_NAMES = (
    "dice",
    "lesion_f1",
    "lesion_recall",
    "lesion_precision",
    "hd95",
    "tp_lesions",
    "fn_lesions",
    "fp_lesions",
    "matched_pred_lesions",
    "n_ref_lesions",
    "n_pred_lesions",
    "small_lesion_recall",
    "n_small_ref_lesions",
    "tp_small_lesions",
    "volume_ref_mm3",
    "volume_pred_mm3",
    "abs_volume_difference_mm3",
    "volume_difference_mm3",
)
# Counts summed over cases for the pooled lesion-level totals.
_COUNT_NAMES = ("tp_lesions", "fn_lesions", "fp_lesions", "matched_pred_lesions", "n_ref_lesions",
                "n_pred_lesions", "n_small_ref_lesions", "tp_small_lesions")


# ------------------------------------------------------------------------------------------- per case


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (nothing to count)."""
    return float(numerator) / float(denominator) if denominator else math.nan


def lesion_f1(precision: float, recall: float) -> float:
    """``2PR/(P+R)``; NaN (undefined) inputs: both → 1.0 (both empty), one → 0.0; ``P = R = 0`` → 0.0."""
    p_nan, r_nan = math.isnan(precision), math.isnan(recall)
    if p_nan and r_nan:
        return 1.0  # no reference lesions and no predicted components
    if p_nan or r_nan:
        return 0.0  # lesions on one side only: all missed, or all false positives
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel, grown by one voxel where the array allows."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of pooled symmetric surface distances in mm; NaN when either mask is empty."""
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if not reference.any() or not prediction.any():
        return math.nan
    # Every surface voxel lies in the union's box (grown by one voxel, or cut by the array border exactly where
    # the full array is), so erosion and distance transforms inside the box equal those of the full array.
    box = _bounding_box(reference | prediction)
    reference, prediction = reference[box], prediction[box]
    surface_ref, surface_pred = _surface(reference), _surface(prediction)
    sampling = tuple(float(s) for s in spacing)
    to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=sampling)
    distances = np.concatenate([to_pred[surface_ref], to_ref[surface_pred]])
    return float(np.percentile(distances, 95))


def _class_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...],
                   small_lesion_mm3: float) -> dict:
    voxel_mm3 = float(np.prod(spacing))
    n_ref_voxels = int(reference.sum())
    n_pred_voxels = int(prediction.sum())
    n_both = int(np.count_nonzero(reference & prediction))
    total = n_ref_voxels + n_pred_voxels
    dice = 1.0 if total == 0 else 2.0 * n_both / total

    structure = np.ones((3,) * reference.ndim, dtype=bool)
    box = _bounding_box(reference | prediction)
    if box is None:
        ref_components, n_ref = np.zeros((0,), dtype=np.int32), 0
        pred_components, n_pred = np.zeros((0,), dtype=np.int32), 0
        ref_sizes = np.zeros(1, dtype=np.int64)
        ref_in_pred = pred_in_ref = np.zeros((0,), dtype=np.int32)
    else:
        ref_components, n_ref = ndimage.label(reference[box], structure=structure)
        pred_components, n_pred = ndimage.label(prediction[box], structure=structure)
        ref_sizes = np.bincount(ref_components.ravel(), minlength=n_ref + 1)
        ref_in_pred = ref_components[prediction[box]]  # reference ids under predicted voxels
        pred_in_ref = pred_components[reference[box]]
    detected = np.zeros(n_ref + 1, dtype=bool)
    detected[ref_in_pred] = True
    detected[0] = False
    matched = np.zeros(n_pred + 1, dtype=bool)
    matched[pred_in_ref] = True
    matched[0] = False
    tp = int(detected.sum())
    n_matched = int(matched.sum())

    small = ref_sizes * voxel_mm3 < small_lesion_mm3
    small[0] = False
    n_small = int(small.sum())
    tp_small = int((small & detected).sum())

    recall = _ratio(tp, n_ref)
    precision = _ratio(n_matched, n_pred)
    volume_ref = n_ref_voxels * voxel_mm3
    volume_pred = n_pred_voxels * voxel_mm3
    return {
        "dice": dice,
        "lesion_f1": lesion_f1(precision, recall),
        "lesion_recall": recall,
        "lesion_precision": precision,
        "hd95": hd95(reference, prediction, spacing),
        "tp_lesions": tp,
        "fn_lesions": n_ref - tp,
        "fp_lesions": n_pred - n_matched,
        "matched_pred_lesions": n_matched,
        "n_ref_lesions": int(n_ref),
        "n_pred_lesions": int(n_pred),
        "small_lesion_recall": _ratio(tp_small, n_small),
        "n_small_ref_lesions": n_small,
        "tp_small_lesions": tp_small,
        "volume_ref_mm3": volume_ref,
        "volume_pred_mm3": volume_pred,
        "abs_volume_difference_mm3": abs(volume_ref - volume_pred),
        "volume_difference_mm3": volume_pred - volume_ref,
    }


def case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], labels: list[int],
                 small_lesion_mm3: float = SMALL_LESION_MM3) -> dict:
    """Metrics of one case: ``{label: {metric: value}}`` for every label (see the module docstring).

    ``spacing`` is in array order (one value per axis). Labels absent from both arrays get the both-empty
    values (Dice 1, F1 1, HD95 NaN).
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {spacing} does not have one value per axis of shape {reference.shape}")
    return {int(label): _class_metrics(reference == label, prediction == label, spacing, small_lesion_mm3)
            for label in labels}


# ------------------------------------------------------------------------------- reported per case
# the metrics the comparison tables report (lesiongen_compare, lesiongen_benefit, the postprocessing choice), with
# their column headings; each is averaged over lesion classes per case
REPORTED_METRIC_HEADINGS = {"dice": "Dice", "lesion_f1": "lesion F1", "lesion_recall": "recall",
                            "lesion_precision": "precision", "small_lesion_recall": "small recall",
                            "hd95": "HD95 mm", "abs_volume_difference_mm3": "abs vol diff mm3",
                            "volume_difference_mm3": "vol diff mm3 (pred - ref)"}
REPORTED_METRICS = tuple(REPORTED_METRIC_HEADINGS)
IN_MILLIMETRES = {"hd95", "abs_volume_difference_mm3", "volume_difference_mm3"}  # shown to 0.1, not 0.001


def class_means(per_class: list[dict]) -> dict[str, float]:
    """metric -> the mean over lesion classes of each class's value (``per_class``: one metric dict per class),
    leaving out undefined ones (NaN, or null in a JSON summary); NaN where no class has a value."""
    out = {}
    for metric in REPORTED_METRICS:
        values = [cls.get(metric) for cls in per_class]
        values = [v for v in values if v is not None and math.isfinite(v)]
        out[metric] = float(np.mean(values)) if values else math.nan
    return out


def case_scores(reference: np.ndarray, prediction: np.ndarray, spacing, labels: list[int]) -> dict[str, float]:
    """Every reported metric of one case, averaged over the lesion classes (as the fold table averages them)."""
    per_class = case_metrics(reference, prediction, spacing, labels)
    return class_means([per_class[label] for label in labels])


# ------------------------------------------------------------------------------------------ aggregate


def aggregate(per_case: dict[str, dict]) -> dict:
    """Per class: nan-aware ``mean``/``std`` of every metric over cases, ``n_valid`` and pooled ``totals``.

    ``per_case`` maps a case name to :func:`case_metrics` output. Returns ``{label: {"mean": {...},
    "std": {...}, "n_valid": {...}, "n_cases": int, "totals": {...}}}``; ``n_valid`` counts the cases with a
    finite value (e.g. HD95 is NaN for cases where either mask is empty) and ``totals`` holds the summed lesion
    counts with pooled ``precision``, ``recall``, ``f1`` and ``small_lesion_recall``.
    """
    labels: list = []
    for metrics in per_case.values():
        for label in metrics:
            if label not in labels:
                labels.append(label)
    result = {}
    for label in labels:
        rows = [metrics[label] for metrics in per_case.values() if label in metrics]
        names = [n for n in METRIC_NAMES if any(n in row for row in rows)]
        names += sorted({n for row in rows for n in row} - set(names))
        mean, std, n_valid = {}, {}, {}
        for name in names:
            values = np.array([row.get(name, math.nan) for row in rows], dtype=float)
            finite = np.isfinite(values)
            n_valid[name] = int(finite.sum())
            if finite.any():
                mean[name] = float(values[finite].mean())
                std[name] = float(values[finite].std())
            else:
                mean[name] = std[name] = math.nan
        totals = {name: int(sum(row.get(name, 0) for row in rows)) for name in _COUNT_NAMES}
        totals["precision"] = _ratio(totals["matched_pred_lesions"], totals["n_pred_lesions"])
        totals["recall"] = _ratio(totals["tp_lesions"], totals["n_ref_lesions"])
        totals["f1"] = lesion_f1(totals["precision"], totals["recall"])
        totals["small_lesion_recall"] = _ratio(totals["tp_small_lesions"], totals["n_small_ref_lesions"])
        result[label] = {"mean": mean, "std": std, "n_valid": n_valid, "n_cases": len(rows), "totals": totals}
    return result


# ------------------------------------------------------------------------------------------- folders


def _image_files(folder: Path, file_ending: str | None) -> dict[str, Path]:
    """``{file name: path}`` of the image files directly in ``folder`` (hidden/partial files skipped)."""
    from lesiongen.io.images import SUPPORTED_ENDINGS

    endings = (file_ending,) if file_ending else SUPPORTED_ENDINGS
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(endings)}


def _case_id(name: str, file_ending: str | None) -> str:
    from lesiongen.io.images import file_ending as ending_of

    ending = file_ending if file_ending and name.endswith(file_ending) else ending_of(name)
    return name[: -len(ending)] if ending and name.endswith(ending) else name


def require_label_values(array: np.ndarray, path: Path, what: str) -> None:
    """Refuse a map that is not integer-valued: a probability map would be scored as labels (``== 1`` almost
    nowhere) and give a plausible-looking Dice of nearly 0. Float arrays holding whole numbers only are labels."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    if not np.isfinite(array).all():
        raise LesiongenError(f"{path}: {what} contains NaN or Inf; expected integer labels")
    fractional = array[array != np.round(array)]
    if fractional.size:
        raise LesiongenError(f"{path}: {what} has non-integer values (e.g. {float(fractional.flat[0]):.4g}); "
                             f"expected integer labels, not probabilities (threshold or argmax them first)")


def _reference_labels(path: Path) -> list[int]:
    from lesiongen.io.images import read_image

    array, _ = read_image(path)
    require_label_values(array, path, "reference")
    values = np.unique(array)
    return [int(v) for v in values if v != 0]


def read_label_pair(reference_path: Path, prediction_path: Path,
                    reader: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(reference, prediction, spacing in array order) of two label maps that must share a grid; a problem is one
    line naming the file (a plain :class:`LesiongenError`, which survives a process pool)."""
    from lesiongen.io.images import read_image

    try:
        reference, ref_geometry = read_image(reference_path, reader)
        prediction, pred_geometry = read_image(prediction_path, reader)
    except LesiongenError as exc:
        raise LesiongenError(str(exc).splitlines()[0]) from None
    require_label_values(reference, reference_path, "reference")
    require_label_values(prediction, prediction_path, "prediction")
    problem = ref_geometry.matches(pred_geometry)
    if problem is None and reference.shape != prediction.shape:
        problem = f"shape {reference.shape} differs from {prediction.shape}"
    if problem is not None:
        raise LesiongenError(f"{prediction_path}: {problem} (reference vs prediction)")
    return reference, prediction, tuple(ref_geometry.spacing_zyx)


def _evaluate_pair(item: tuple[str, Path, Path], labels: list[int], small_lesion_mm3: float) -> dict:
    """Worker: read one reference/prediction pair, check they share a grid, compute :func:`case_metrics`."""
    _, reference_path, prediction_path = item
    reference, prediction, spacing = read_label_pair(reference_path, prediction_path)
    return case_metrics(reference, prediction, spacing, labels, small_lesion_mm3)


def evaluate_folders(reference_dir: Path, prediction_dir: Path, labels: list[int] | None = None,
                     file_ending: str | None = None, num_processes: int = 1,
                     small_lesion_mm3: float = SMALL_LESION_MM3) -> dict:
    """Evaluate every reference image against the prediction of the same file name.

    ``file_ending`` (e.g. ``".nii.gz"``) restricts both folders to that ending; by default every supported
    image file is used. ``labels`` default to every nonzero value found in the references. Cases are keyed by
    file name without its ending. A missing prediction, a shape/geometry mismatch, an unreadable file or a map with
    non-integer values (a probability map) raises :class:`LesiongenError` (one line, naming the file); float maps
    whose values are all whole numbers are labels. Predictions without a reference are ignored with a
    warning. Returns ``{"per_case": {case: {label: metrics}}, "mean": aggregate(per_case), "labels": labels}``.
    """
    from lesiongen.utilities.parallel import map_cases

    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    for kind, folder in (("reference", reference_dir), ("prediction", prediction_dir)):
        if not folder.is_dir():
            raise LesiongenError(f"{kind} folder not found: {folder}")
    references = _image_files(reference_dir, file_ending)
    predictions = _image_files(prediction_dir, file_ending)
    if not references:
        raise LesiongenError(f"no reference images in {reference_dir}"
                             + (f" ending in {file_ending}" if file_ending else ""))
    missing = [name for name in references if name not in predictions]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LesiongenError(f"{prediction_dir / missing[0]}: prediction missing for reference "
                             f"{reference_dir / missing[0]}{more}")
    extra = sorted(set(predictions) - set(references))
    if extra:
        logger.warning("ignoring %d prediction(s) without a reference: %s", len(extra),
                       ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    items = []
    seen: dict[str, str] = {}
    for name, path in references.items():
        case = _case_id(name, file_ending)
        if case in seen:
            raise LesiongenError(f"{path}: case {case!r} also in {seen[case]}; pass a file ending to choose one")
        seen[case] = name
        items.append((case, path, predictions[name]))

    if labels is None:
        found = map_cases(_reference_labels, [path for _, path, _ in items], num_processes,
                          "reading reference labels")
        labels = sorted({label for case_labels in found for label in case_labels})
        if not labels:
            logger.warning("the references contain no nonzero label; nothing to evaluate")
    labels = [int(label) for label in labels]
    results = map_cases(_evaluate_pair, items, num_processes, "evaluating", extra_args=(labels, small_lesion_mm3))
    per_case = {case: metrics for (case, _, _), metrics in zip(items, results)}
    return {"per_case": per_case, "mean": aggregate(per_case), "labels": labels}
