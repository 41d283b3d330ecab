"""The lesion census of label maps, on constructed cases with known lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesiongen.evaluation.lesion_census import lesion_census, lesion_surroundings, lesion_volumes


def _case() -> np.ndarray:
    label = np.full((12, 12, 12), -1, dtype=np.int8)  # -1: outside the brain, as preprocessed labels are
    label[1:11, 1:11, 1:11] = 0
    label[1:3, 1:3, 1:3] = 1  # 8 voxels
    label[3, 3, 3] = 1  # touches the cube above by a corner: the same lesion (26-connected), 9 voxels
    label[6:9, 6:9, 6:9] = 1  # 27 voxels
    label[9, 6, 6] = 2  # touches the 27-voxel lesion, but another class: a lesion of its own, 1 voxel
    return label


def test_volumes_count_26_connected_components_of_each_class():
    assert sorted(lesion_volumes(_case(), voxel_mm3=8.0)) == [8.0, 72.0, 216.0]


def test_census_of_a_case_with_lesions_and_an_empty_one():
    empty = np.zeros((12, 12, 12), dtype=np.int8)
    census = lesion_census([_case(), empty], voxel_mm3=8.0)  # 2 mm voxels: 8, 72 and 216 mm3
    assert census.cases == 2
    assert census.lesions_per_case == pytest.approx(1.5)
    assert census.median_lesion_mm3 == pytest.approx(72.0)
    assert census.small_fraction == pytest.approx(2 / 3)  # below 100 mm3: 8 and 72
    assert census.lesion_mm3_per_case == pytest.approx((8 + 72 + 216) / 2)
    assert lesion_census([_case()], 8.0, small_lesion_mm3=50.0).small_fraction == pytest.approx(1 / 3)


def test_census_without_lesions_has_no_median_or_small_share():
    census = lesion_census([np.zeros((4, 4, 4), dtype=np.int8)], voxel_mm3=1.0)
    assert census.lesions_per_case == 0 and census.lesion_mm3_per_case == 0
    assert math.isnan(census.median_lesion_mm3) and math.isnan(census.small_fraction)
    with pytest.raises(ValueError):
        lesion_census([], voxel_mm3=1.0)


def test_surroundings_are_the_mean_tissue_shares_and_contrasts_of_the_lesions_shells():
    label = np.zeros((12, 12, 12), dtype=np.int8)
    label[6, 6, 6] = 1
    tissue = np.full(label.shape, 2, np.uint8)
    tissue[:, :, 8:] = 3  # the 3 mm shell of the lesion: 22 of its 122 voxels here (tests/test_placement.py)
    images = np.where(tissue == 3, 1.0, 0.0)[None].astype(np.float32)
    images[0, 6, 6, 6] = 5.0
    far = np.zeros_like(label)
    far[6, 6, 2] = 1  # 4 voxels from the other tissue: a shell of white matter only, and of one intensity
    far[0] = -1  # outside the brain: not in the shell (its intensity 9 would change the contrast)
    far_images = np.zeros_like(images)
    far_images[0, 6, 6, 2] = 3.0
    far_images[0, 0] = 9.0
    borders, contrast = lesion_surroundings([(label, tissue, images), (far, tissue, far_images)], (1.0, 1.0, 1.0),
                                            {"WM": 2, "CSF": 3, "GM": 1}, ["FLAIR"])
    assert list(borders) == ["GM", "WM", "CSF"]  # by tissue value
    assert borders == pytest.approx({"GM": 0.0, "WM": (100 / 122 + 1) / 2, "CSF": (22 / 122) / 2})
    p = 22 / 122  # the near lesion's shell: a share p at 1, the rest at 0 (mean p, s.d. sqrt(p (1 - p)))
    assert contrast == pytest.approx({"FLAIR": ((5 - p) / np.sqrt(p * (1 - p)) + 0.0) / 2})  # flat shell: 0
    borders, contrast = lesion_surroundings([(np.zeros_like(label), tissue, None)], (1.0, 1.0, 1.0), {"WM": 2},
                                            ["FLAIR"])
    assert math.isnan(borders["WM"]) and contrast is None  # no lesion; no images
