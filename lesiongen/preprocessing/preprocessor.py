"""Preprocess cases following the plans: crop to the brain, normalise, resample, save; lesion patches.

Outputs per case (``{split}/`` below the plans' data folder):

* ``{case}.b2nd``            images, (c, z, y, x) float32
* ``{case}_seg.b2nd``        int8: 0 background, 1..K lesion classes, -1 outside the brain
* ``{case}_tissue.b2nd``     uint8 tissue map (when the dataset has tissue maps)
* ``{case}_locations.npz``   up to 10,000 voxel indices per lesion class (foreground oversampling)
* ``{case}.json``            properties: geometry, crop box, spacings, shapes, the input signature, and the size
                             and sha256 of every file above (``checksums``)

and for lesion cases ``lesion_patches/{case}_{images,masks,tissue}.b2nd`` + ``{case}_patches.json`` (which records
the patch arrays' checksums). The properties JSON is written last, so its presence with a matching signature and
files that match their checksums means the case is complete; a rerun skips such cases and redoes the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from pathlib import Path

import numpy as np

from lesiongen import __version__
from lesiongen.io.dataset import CaseFiles, DatasetInfo, RawDataset
from lesiongen.io.integrity import load_case
from lesiongen.planning.plans import Plans
from lesiongen.preprocessing.normalization import normalize
from lesiongen.preprocessing.patches import extract_lesion_patches
from lesiongen.preprocessing.resampling import resample_images, resample_labels
from lesiongen.preprocessing.storage import CHECKSUMS, checksum_files, first_mismatch, save_array
from lesiongen.utilities.cropping import bbox_slices, brain_region, mask_bbox
from lesiongen.utilities.errors import DatasetError, Problem
from lesiongen.utilities.files import atomic_path, file_signature, read_json, remove_partial_files, write_json
from lesiongen.utilities.parallel import map_cases

logger = logging.getLogger(__name__)

LOCATIONS_PER_CLASS = 10_000
PATCH_FOLDER = "lesion_patches"
OUTSIDE_BRAIN = -1


def plans_signature(plans: Plans) -> str:
    """What in the plans changes preprocessed files; other plan edits (batch sizes, priors) keep them valid."""
    relevant = {
        "version": __version__,
        "spacing": plans.target_spacing,
        "normalization": [dataclasses.asdict(n) for n in plans.normalization],
        "lesion_patch_size": plans.lesion_patch_size,
        "labels": plans.labels,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _case_signature(case: CaseFiles, plans_sig: str) -> str:
    payload = json.dumps([plans_sig, file_signature(case.all_files())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_up_to_date(properties_file: Path, signature: str) -> bool:
    """Whether a case can be skipped: same inputs and plans, and every file it wrote still matches its checksum.

    A sidecar without checksums (an older lesiongen) cannot vouch for its files, so such a case is redone.
    """
    if not properties_file.is_file():
        return False
    try:
        properties = read_json(properties_file)
    except (OSError, ValueError):
        return False
    if not isinstance(properties, dict) or properties.get("signature") != signature:
        return False
    files, checksums = properties.get("files", []), properties.get(CHECKSUMS)
    if not isinstance(checksums, dict) or not set(files) <= checksums.keys():
        logger.info("%s: no checksums recorded (older lesiongen); preprocessing the case again", properties_file)
        return False
    mismatch = first_mismatch(properties_file.parent, {name: checksums[name] for name in files})
    if mismatch is not None:
        logger.info("%s: %s; preprocessing the case again", *mismatch)
        return False
    return True


def _class_locations(seg: np.ndarray, labels: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    locations = {}
    for label in labels:
        coords = np.argwhere(seg == label).astype(np.int32)
        if len(coords) > LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), LOCATIONS_PER_CLASS, replace=False)]
        locations[f"class_{label}"] = coords
    return locations


def _properties_file(output: Path, split: str, case: CaseFiles) -> Path:
    return output / split / f"{case.case_id}.json"


def preprocess_case(case: CaseFiles, split: str, info: DatasetInfo, plans: Plans, output: Path,
                    plans_sig: str) -> tuple[list[Problem], dict | None]:
    """Preprocess one case; returns (problems, summary or None when the case failed)."""
    folder = output / split
    properties_file = _properties_file(output, split, case)
    properties_file.unlink(missing_ok=True)  # until the new one is written the case counts as unfinished
    signature = _case_signature(case, plans_sig)
    loaded, problems = load_case(case, info)
    if loaded is None:
        return problems, None

    brain = brain_region(loaded.images, loaded.brain_mask)
    bbox = mask_bbox(brain)
    crop = bbox_slices(bbox)
    images = np.ascontiguousarray(loaded.images[(slice(None), *crop)])
    brain = brain[crop]
    seg = np.zeros(brain.shape, dtype=np.int8) if loaded.label is None else loaded.label[crop].astype(np.int8)
    seg[~brain & (seg == 0)] = OUTSIDE_BRAIN
    tissue = loaded.tissue[crop] if loaded.tissue is not None else None

    normalize(images, plans.normalization, brain)
    spacing = list(loaded.geometry.spacing_zyx)
    images = resample_images(images, spacing, plans.target_spacing)
    seg = resample_labels(seg, spacing, plans.target_spacing)
    if tissue is not None:
        tissue = resample_labels(tissue, spacing, plans.target_spacing)

    files = [f"{case.case_id}.b2nd", f"{case.case_id}_seg.b2nd"]
    save_array(folder / files[0], images)
    save_array(folder / files[1], seg)
    if tissue is not None:
        files.append(f"{case.case_id}_tissue.b2nd")
        save_array(folder / files[-1], tissue)
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))  # reproducible across processes
    locations = _class_locations(seg, plans.lesion_labels, rng)
    files.append(f"{case.case_id}_locations.npz")
    _save_npz(folder / files[-1], locations)

    summary = {"case_id": case.case_id, "split": split, "lesion_patches": 0}
    if split == "training":
        patch_files, summary["lesion_patches"] = _save_lesion_patches(
            case.case_id, images, seg, tissue, plans, output / PATCH_FOLDER
        )
        files += [f"../{PATCH_FOLDER}/{name}" for name in patch_files]

    properties = {
        "case_id": case.case_id,
        "split": split,
        "signature": signature,
        "source_files": [str(p) for p in case.all_files()],
        "original_geometry": loaded.geometry.to_json(),
        "original_spacing": spacing,
        "crop_bbox": bbox,
        "shape_after_crop": list(brain.shape),
        "spacing": plans.target_spacing,
        "shape_after_resampling": list(images.shape[1:]),
        "lesion_voxels_per_class": {k.removeprefix("class_"): int(len(v)) for k, v in locations.items()},
        "files": files,
        CHECKSUMS: checksum_files(folder, files),
    }
    write_json(properties_file, properties)  # last: marks the case complete
    return [], summary


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _save_lesion_patches(case_id: str, images: np.ndarray, seg: np.ndarray, tissue: np.ndarray | None,
                         plans: Plans, folder: Path) -> tuple[list[str], int]:
    patch_set = extract_lesion_patches(images, seg, tissue, plans.lesion_patch_size, plans.lesion_labels)
    names = [f"{case_id}_images.b2nd", f"{case_id}_masks.b2nd"]
    save_array(folder / names[0], patch_set.images)
    save_array(folder / names[1], patch_set.masks)
    if patch_set.tissue is not None:
        names.append(f"{case_id}_tissue.b2nd")
        save_array(folder / names[-1], patch_set.tissue)
    checksums = checksum_files(folder, names)
    names.append(f"{case_id}_patches.json")
    write_json(folder / names[-1], {
        "case_id": case_id,
        "patch_size": plans.lesion_patch_size,
        "n_patches": len(patch_set.patches),
        "skipped_too_large": patch_set.skipped_too_large,
        "patches": [dataclasses.asdict(p) for p in patch_set.patches],
        CHECKSUMS: checksums,
    })
    return names, len(patch_set.patches)


def preprocess_dataset(dataset: RawDataset, plans: Plans, output: Path, num_processes: int = 1,
                       splits: tuple[str, ...] = ("training", "healthy")) -> dict[str, int]:
    """Preprocess every case of ``splits`` not yet up to date; returns counts of done / skipped cases and patches."""
    remove_partial_files(output)
    sig = plans_signature(plans)
    jobs = [(case, split) for split in splits for case in dataset.split(split)]
    # deciding what is up to date here keeps a no-op rerun from starting a process pool
    todo = [(c, s) for c, s in jobs if not is_up_to_date(_properties_file(output, s, c), _case_signature(c, sig))]
    results = map_cases(_preprocess_job, todo, num_processes, "preprocessing", (dataset.info, plans, output, sig))
    problems = [p for case_problems, _ in results for p in case_problems]
    if problems:
        raise DatasetError(problems)
    return {
        "done": len(todo),
        "skipped": len(jobs) - len(todo),
        "lesion_patches": sum(summary["lesion_patches"] for _, summary in results),
    }


def _preprocess_job(job: tuple[CaseFiles, str], info: DatasetInfo, plans: Plans, output: Path, sig: str):
    case, split = job
    return preprocess_case(case, split, info, plans, output, sig)
