"""The dataset fingerprint: image properties as nnU-Net collects them, plus per-lesion statistics.

One pass over the training cases reads each case once, runs the voxel integrity checks on it, crops it to its
nonzero region, samples intensities and analyses every lesion component. The result is written to
``dataset_fingerprint.json`` in the preprocessed folder, only when no case had a problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesiongen import __version__
from lesiongen.fingerprint.lesions import LesionComponent, analyse_lesions, summarise
from lesiongen.io.dataset import CaseFiles, DatasetInfo, RawDataset
from lesiongen.io.integrity import empty_label_warning, load_case
from lesiongen.utilities.cropping import bbox_slices, brain_region, mask_bbox
from lesiongen.utilities.errors import DatasetError, Problem
from lesiongen.utilities.files import file_signature
from lesiongen.utilities.parallel import map_cases
from lesiongen.utilities.serialization import load_dataclass, save_dataclass

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"
SAMPLES_PER_CASE = 10_000  # as nnU-Net: intensity samples per case and channel


@dataclass
class IntensityProperties:
    """Per-channel intensity statistics with nnU-Net's key names."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_99_5: float
    percentile_00_5: float

    @classmethod
    def of(cls, samples: np.ndarray) -> IntensityProperties:
        if samples.size == 0:
            return cls(0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
        p005, median, p995 = np.percentile(samples, [0.5, 50.0, 99.5])
        return cls(
            mean=float(np.mean(samples)),
            median=float(median),
            std=float(np.std(samples)),
            min=float(np.min(samples)),
            max=float(np.max(samples)),
            percentile_99_5=float(p995),
            percentile_00_5=float(p005),
        )


@dataclass
class CaseFingerprint:
    case_id: str
    spacing: list[float]  # (z, y, x) mm
    shape_before_crop: list[int]
    shape_after_crop: list[int]
    crop_bbox: list[list[int]]  # [[start, stop] per axis]
    relative_size_after_crop: float
    brain_fraction_after_crop: float  # share of the cropped box inside the brain (nonzero or brain mask)
    lesion_count: int
    lesion_count_per_class: dict[str, int]
    total_lesion_volume_mm3: float
    lesions: list[LesionComponent]


@dataclass
class DatasetFingerprint:
    dataset_name: str
    lesiongen_version: str
    input_signature: str
    channel_names: dict[str, str]
    lesion_labels: list[int]
    tissue_labels: dict[str, int]
    has_tissue_maps: bool
    spacings: list[list[float]]
    shapes_after_crop: list[list[int]]
    median_relative_size_after_cropping: float
    median_brain_fraction_after_cropping: float
    foreground_intensity_properties_per_channel: dict[str, IntensityProperties]
    brain_intensity_properties_per_channel: dict[str, IntensityProperties]
    cases: list[CaseFingerprint]
    # per lesion class: name of the statistic -> summary (see lesions.summarise)
    lesion_summary: dict[str, dict[str, dict]] = field(default_factory=dict)

    def lesions_of_class(self, label: int) -> list[tuple[CaseFingerprint, LesionComponent]]:
        return [(case, lesion) for case in self.cases for lesion in case.lesions if lesion.label == label]


def _sample(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    if values.size <= n:
        return values.astype(np.float32)
    return values[rng.integers(0, values.size, n)].astype(np.float32)


def lesions_outside_warning(case: CaseFiles, label: np.ndarray, cropped_label: np.ndarray,
                            has_brain_mask: bool) -> Problem | None:
    """A warning when lesion voxels lie outside the brain region's bounding box, which the crop drops.

    Without it, such lesions vanish silently (8 lesions become 7), and a case whose lesions all lie outside the
    head is reported as an empty label map, which sends the user looking for the wrong mistake.
    """
    total = int(np.count_nonzero(label))
    lost = total - int(np.count_nonzero(cropped_label))
    if lost == 0:
        return None
    region = "brain mask" if has_brain_mask else "nonzero region of the images (the head)"
    if lost == total:  # the crop keeps the whole region, so none of these voxels is in the brain
        return Problem(str(case.label), f"all {total} lesion voxel(s) of case {case.case_id} lie outside the "
                                        f"{region}; the case is used as a case without lesions", is_warning=True)
    return Problem(str(case.label), f"{lost} of {total} lesion voxel(s) of case {case.case_id} lie outside the "
                                    f"bounding box of the {region} and are dropped", is_warning=True)


def _fingerprint_case(case: CaseFiles, info: DatasetInfo, seed: int):
    loaded, problems = load_case(case, info)
    if loaded is None:
        return None, problems, None, None, False
    rng = np.random.default_rng(seed)
    spacing = [float(s) for s in loaded.geometry.spacing_zyx]
    brain = brain_region(loaded.images, loaded.brain_mask)
    bbox = mask_bbox(brain)
    crop = bbox_slices(bbox)
    images = loaded.images[(slice(None), *crop)]
    label = loaded.label[crop]
    outside = lesions_outside_warning(case, loaded.label, label, loaded.brain_mask is not None)
    warnings = [outside] if outside is not None else []
    brain = brain[crop]
    tissue = loaded.tissue[crop] if loaded.tissue is not None else None

    foreground = label > 0
    fg_samples = np.stack([_sample(images[c][foreground], rng, SAMPLES_PER_CASE) for c in range(len(images))])
    brain_samples = np.stack([_sample(images[c][brain], rng, SAMPLES_PER_CASE) for c in range(len(images))])

    lesions = analyse_lesions(label, spacing, images=images, tissue=tissue, brain_mask=brain)
    offset = [b[0] for b in bbox]
    for lesion in lesions:  # report centroids in the original image's index space
        lesion.centroid_voxel = [float(c + o) for c, o in zip(lesion.centroid_voxel, offset)]
    per_class = {str(v): sum(1 for l in lesions if l.label == v) for v in info.lesion_labels}
    fingerprint = CaseFingerprint(
        case_id=case.case_id,
        spacing=spacing,
        shape_before_crop=list(loaded.geometry.shape),
        shape_after_crop=list(images.shape[1:]),
        crop_bbox=bbox,
        relative_size_after_crop=float(np.prod(images.shape[1:]) / np.prod(loaded.geometry.shape)),
        brain_fraction_after_crop=float(brain.mean()),
        lesion_count=len(lesions),
        lesion_count_per_class=per_class,
        total_lesion_volume_mm3=float(sum(l.volume_mm3 for l in lesions)),
        lesions=lesions,
    )
    return fingerprint, warnings, fg_samples, brain_samples, tissue is not None


def input_signature(dataset: RawDataset) -> str:
    """Changes when any training file or dataset.json changes (name, size, modification time)."""
    files = [dataset.folder / "dataset.json"] + [p for c in dataset.training for p in c.all_files()]
    payload = json.dumps([__version__, file_signature(files)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def summarise_lesions(cases: list[CaseFingerprint], info: DatasetInfo) -> dict[str, dict[str, dict]]:
    summary = {}
    for label in info.lesion_labels:
        lesions = [l for c in cases for l in c.lesions if l.label == label]
        per_case = [c.lesion_count_per_class[str(label)] for c in cases]
        stats = {
            "voxel_count": summarise([l.voxel_count for l in lesions]),
            "volume_mm3": summarise([l.volume_mm3 for l in lesions]),
            "bounding_radius_mm": summarise([l.bounding_radius_mm for l in lesions]),
            "lesions_per_case": summarise(per_case),
            "total_volume_per_case_mm3": summarise(
                [sum(l.volume_mm3 for l in c.lesions if l.label == label) for c in cases]
            ),
        }
        for c in range(info.num_channels):
            stats[f"contrast_channel_{c}"] = summarise([l.contrast[c] for l in lesions if l.contrast])
        tissue_counts: dict[str, int] = {}
        for l in lesions:
            tissue_counts[str(l.tissue_class)] = tissue_counts.get(str(l.tissue_class), 0) + 1
        stats["tissue_class_count"] = dict(sorted(tissue_counts.items()))
        summary[str(label)] = stats
    return summary


def extract_fingerprint(dataset: RawDataset, num_processes: int = 1, seed: int = 1234) -> DatasetFingerprint:
    """Fingerprint every training case; raises DatasetError listing every problem found."""
    info = dataset.info
    results = map_cases(
        _fingerprint_case,
        dataset.training,
        num_processes,
        "fingerprint",
        (info, seed),
    )
    problems: list[Problem] = [p for r in results for p in r[1]]
    if any(not p.is_warning for p in problems):
        raise DatasetError(problems)
    for warning in problems:
        logger.warning("%s: %s", warning.path, warning.message)
    cases = [r[0] for r in results]
    # cases whose lesions all lie outside the brain have their own warning above: their maps are not empty
    warned = {p.path for p in problems}
    empty = [c.case_id for c, files in zip(cases, dataset.training)
             if c.lesion_count == 0 and str(files.label) not in warned]
    if empty:
        warning = empty_label_warning(dataset.folder / "labelsTr", empty)
        logger.warning("%s: %s", warning.path, warning.message)
    fg = np.concatenate([r[2] for r in results], axis=1)
    brain = np.concatenate([r[3] for r in results], axis=1)
    channels = range(info.num_channels)
    return DatasetFingerprint(
        dataset_name=dataset.name,
        lesiongen_version=__version__,
        input_signature=input_signature(dataset),
        channel_names=dict(info.channel_names),
        lesion_labels=info.lesion_labels,
        tissue_labels=dict(info.tissue_labels),
        has_tissue_maps=all(r[4] for r in results),
        spacings=[c.spacing for c in cases],
        shapes_after_crop=[c.shape_after_crop for c in cases],
        median_relative_size_after_cropping=float(np.median([c.relative_size_after_crop for c in cases])),
        median_brain_fraction_after_cropping=float(np.median([c.brain_fraction_after_crop for c in cases])),
        foreground_intensity_properties_per_channel={str(c): IntensityProperties.of(fg[c]) for c in channels},
        brain_intensity_properties_per_channel={str(c): IntensityProperties.of(brain[c]) for c in channels},
        cases=cases,
        lesion_summary=summarise_lesions(cases, info),
    )


def save_fingerprint(fingerprint: DatasetFingerprint, path: Path) -> None:
    save_dataclass(path, fingerprint)


def load_fingerprint(path: Path) -> DatasetFingerprint:
    return load_dataclass(DatasetFingerprint, path)

