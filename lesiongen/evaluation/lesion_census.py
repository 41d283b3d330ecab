"""What lesions a set of label maps holds: how many per case, how large, how many small.

The benefit report puts the census of each strategy's synthetic training cases next to that of the real training
cases, because a segmentation model learns the lesion counts and sizes it is shown: synthetic cases with too few,
too large lesions cost small-lesion recall (README, "Does synthetic data help?"). A lesion is a 26-connected
component of one class (``lesiongen.utilities.components``); small means below the volume small-lesion recall uses.
It also says what the lesions border (the tissue shares of their shells) and how they stand out from it (contrast),
by the fingerprint's rules: inserted lesions in smoother surroundings than real ones have other contrasts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lesiongen.evaluation.segmentation_metrics import SMALL_LESION_MM3
from lesiongen.fingerprint.lesions import analyse_lesions
from lesiongen.utilities.components import component_sizes


@dataclass(frozen=True)
class LesionCensus:
    cases: int
    lesions_per_case: float
    median_lesion_mm3: float  # NaN without a lesion
    small_fraction: float  # share of lesions below SMALL_LESION_MM3; NaN without a lesion
    lesion_mm3_per_case: float
    # tissue name -> mean over the lesions of its share of their shells (None without tissue maps)
    borders: dict[str, float] | None = None
    # channel name -> mean over the lesions of (lesion mean - shell mean) / shell s.d. (None: not measured)
    contrast: dict[str, float] | None = None


def lesion_volumes(label_map: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """The volume (mm^3) of every lesion of every class > 0 in one label map (values <= 0 are background)."""
    sizes = [component_sizes(label_map == value) for value in np.unique(label_map[label_map > 0])]
    return np.concatenate(sizes).astype(float) * voxel_mm3 if sizes else np.zeros(0)


def lesion_census(label_maps: Iterable[np.ndarray], voxel_mm3: float,
                  small_lesion_mm3: float = SMALL_LESION_MM3) -> LesionCensus:
    """The census of ``label_maps`` (one per case, same voxel volume)."""
    per_case = [lesion_volumes(label_map, voxel_mm3) for label_map in label_maps]
    if not per_case:
        raise ValueError("a lesion census needs at least one case")
    volumes = np.concatenate(per_case)
    return LesionCensus(cases=len(per_case), lesions_per_case=len(volumes) / len(per_case),
                        median_lesion_mm3=float(np.median(volumes)) if volumes.size else math.nan,
                        small_fraction=float(np.mean(volumes < small_lesion_mm3)) if volumes.size else math.nan,
                        lesion_mm3_per_case=float(volumes.sum()) / len(per_case))


def lesion_surroundings(cases: Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], spacing,
                        tissue_labels: dict[str, int], channel_names: list[str]
                        ) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """What the lesions of preprocessed ``(label map, tissue map or None, images or None)`` cases border, and how they
    stand out, by the fingerprint's rules (``fingerprint.lesions``; the shell: brain voxels within ``SHELL_MM`` of a
    lesion, no lesion): per tissue name the mean over every lesion of the tissue's share of its shell, and per channel
    the mean contrast (lesion mean − shell mean) / shell s.d. Each is None when a case lacks its map or images; NaN
    without a lesion. Label values < 0 are outside the brain."""
    shares, contrasts, has_tissue, has_images = [], [], True, True
    for label, tissue, images in cases:
        has_tissue &= tissue is not None
        has_images &= images is not None
        lesions = analyse_lesions(np.where(label > 0, label, 0), spacing, images=images, tissue=tissue,
                                  brain_mask=label >= 0)
        shares += [lesion.shell_tissue for lesion in lesions]
        contrasts += [lesion.contrast for lesion in lesions]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    borders = {name: mean([s.get(str(value), 0.0) for s in shares])
               for name, value in sorted(tissue_labels.items(), key=lambda item: item[1])} if has_tissue else None
    contrast = {name: mean([c[i] for c in contrasts]) for i, name in enumerate(channel_names)} if has_images else None
    return borders, contrast
