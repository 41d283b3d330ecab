"""Dataset integrity: header checks (cheap, always run) and voxel checks (full read).

Each problem is one :class:`Problem` naming the file. The fingerprint reads every training case anyway, so it runs
the voxel checks on those as it goes (:func:`load_case`); ``--verify_dataset_integrity`` adds the full read of
the healthy and test scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesiongen.io.dataset import CaseFiles, DatasetInfo, RawDataset
from lesiongen.io.images import ImageGeometry, read_channels, read_geometry, read_image
from lesiongen.utilities.errors import FileError, Problem
from lesiongen.utilities.parallel import map_cases


@dataclass
class LoadedCase:
    """The voxel data of one case, checked. Arrays are (z, y, x); images are (c, z, y, x) float32."""

    case_id: str
    images: np.ndarray
    geometry: ImageGeometry
    label: np.ndarray | None = None
    tissue: np.ndarray | None = None
    brain_mask: np.ndarray | None = None


def check_case_headers(case: CaseFiles, reader: str | None) -> list[Problem]:
    """Every file of a case is a readable 3D image on the same grid as the first channel.

    Reading a header also checks what it claims (shape, size, spacing: ``io.images.check_header``), so a header
    that lies is a problem here, found before any voxel of the dataset is read."""
    problems = []
    reference: ImageGeometry | None = None
    reference_name = ""
    for path in case.all_files():
        try:
            geometry = read_geometry(path, reader)
        except FileError as exc:
            problems.append(Problem(exc.path, exc.message))
            continue
        if reference is None:
            reference, reference_name = geometry, path.name
            continue
        mismatch = geometry.matches(reference)
        if mismatch:
            problems.append(Problem(str(path), f"{mismatch} of {reference_name}"))
    return problems


def _as_integer_map(array: np.ndarray, path: Path, what: str, problems: list[Problem]) -> np.ndarray | None:
    """Integer-valued, non-negative maps come back as the smallest unsigned dtype; else a problem is recorded."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            problems.append(Problem(str(path), f"{what} contains NaN or Inf"))
            return None
        if not np.array_equal(array, np.round(array)):
            problems.append(Problem(str(path), f"{what} has non-integer values; expected integer labels"))
            return None
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        problems.append(Problem(str(path), f"{what} has unsupported type {array.dtype}"))
        return None
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0:
        problems.append(Problem(str(path), f"{what} has negative value {low:g}"))
        return None
    dtype = np.uint8 if high < 256 else np.uint16
    return array.astype(dtype, copy=False)


def _unexpected_values(array: np.ndarray, allowed: set[int]) -> list[int]:
    counts = np.bincount(array.ravel(), minlength=1)
    return [int(v) for v in np.flatnonzero(counts) if int(v) not in allowed]


def load_case(case: CaseFiles, info: DatasetInfo) -> tuple[LoadedCase | None, list[Problem]]:
    """Read all files of a case and run the voxel checks; returns (case or None when unusable, problems)."""
    problems = check_case_headers(case, info.reader)
    if problems:
        return None, problems
    try:
        images, geometry = read_channels(case.images, info.reader)
    except FileError as exc:
        return None, [Problem(exc.path, exc.message)]
    for c, path in enumerate(case.images):
        if not np.all(np.isfinite(images[c])):
            problems.append(Problem(str(path), "contains NaN or Inf"))

    loaded = LoadedCase(case.case_id, images, geometry)
    maps = [("label", case.label, "label map"), ("tissue", case.tissue, "tissue map"),
            ("brain_mask", case.brain_mask, "brain mask")]
    for attribute, path, what in maps:
        if path is None:
            continue
        try:
            array, _ = read_image(path, info.reader)
        except FileError as exc:
            problems.append(Problem(exc.path, exc.message))
            continue
        array = _as_integer_map(array, path, what, problems)
        if array is None:
            continue
        if attribute == "label":
            unexpected = _unexpected_values(array, set(info.labels.values()))
            if unexpected:
                problems.append(Problem(str(path), f"unexpected label value(s) {unexpected}; "
                                                   f"dataset.json declares {sorted(info.labels.values())}"))
        elif attribute == "tissue" and info.tissue_labels:
            unexpected = _unexpected_values(array, {0, *info.tissue_labels.values()})
            if unexpected:
                problems.append(Problem(str(path), f"unexpected tissue value(s) {unexpected}; "
                                                   f"dataset.json declares {sorted(info.tissue_labels.values())}"))
        elif attribute == "brain_mask":
            if array.max(initial=0) > 1:
                problems.append(Problem(str(path), "brain mask has values other than 0 and 1"))
            array = array.astype(bool)
        setattr(loaded, attribute, array)
    if problems:
        return None, problems
    return loaded, []


def _verify_case_worker(case: CaseFiles, info: DatasetInfo, full: bool) -> tuple[list[Problem], bool]:
    """(problems, label is empty) for one case."""
    if not full:
        return check_case_headers(case, info.reader), False
    loaded, problems = load_case(case, info)
    empty = loaded is not None and loaded.label is not None and not loaded.label.any()
    return problems, bool(empty)


def verify_dataset(dataset: RawDataset, full: bool, num_processes: int = 1,
                   splits: tuple[str, ...] = ("training", "healthy", "test")) -> list[Problem]:
    """Header checks of every case (and voxel checks with ``full``); returns problems, errors and warnings."""
    cases = [c for split in splits for c in dataset.split(split)]
    # header reads take milliseconds: a process pool would cost more than it saves
    workers = num_processes if full else 1
    results = map_cases(_verify_case_worker, cases, workers, "checking dataset", (dataset.info, full))
    problems = [p for case_problems, _ in results for p in case_problems]
    training = {id(c) for c in dataset.training}
    empty = [c.case_id for c, (_, is_empty) in zip(cases, results) if is_empty and id(c) in training]
    if empty:
        problems.append(empty_label_warning(dataset.folder / "labelsTr", empty))
    return problems


def empty_label_warning(folder: Path, case_ids: list[str]) -> Problem:
    shown = ", ".join(case_ids[:10]) + (", ..." if len(case_ids) > 10 else "")
    return Problem(str(folder), f"{len(case_ids)} lesion case(s) have an empty label map ({shown})", is_warning=True)
