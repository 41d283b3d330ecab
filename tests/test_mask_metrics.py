"""Mask realism statistics, Wasserstein comparisons and the written report against known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lesiongen.evaluation.mask_metrics import (
    METRICS,
    MaskStatistics,
    mask_statistics,
    summarise,
    wasserstein_distances,
    write_report,
)


def _ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    return (np.sum(grid**2, axis=0) <= radius**2).astype(np.int16)


def _patches_with_balls(radii: list[float], shape=(16, 16, 16)) -> np.ndarray:
    return np.stack([_ball(shape, r) for r in radii])


# ------------------------------------------------------------------------------------------ statistics


def test_two_lesions_in_one_patch_have_exact_log_volumes():
    mask = np.zeros((1, 10, 10, 10), dtype=np.int16)
    mask[0, 1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[0, 6:9, 6:9, 6] = 1  # 9 voxels, not 26-connected to the first
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 per voxel
    stats = mask_statistics(mask, spacing)
    assert stats.lesions_per_patch == [2]
    assert sorted(stats.log_volume_mm3) == pytest.approx(sorted([math.log(8.0), math.log(9.0)]), abs=1e-12)
    assert len(stats.radius_mm) == len(stats.sphericity) == len(stats.tissue_class) == 2


def test_diagonal_neighbours_are_one_lesion_and_classes_are_separate():
    mask = np.zeros((1, 6, 6, 6), dtype=np.int16)
    mask[0, 1, 1, 1] = 1
    mask[0, 2, 2, 2] = 1  # corner-adjacent: same 26-connected lesion
    mask[0, 2, 2, 3] = 2  # touching but another class: its own lesion
    stats = mask_statistics(mask, (1.0, 1.0, 1.0))
    assert stats.lesions_per_patch == [2]
    assert stats.log_volume_mm3 == pytest.approx([math.log(2.0), math.log(1.0)])


def test_outside_brain_voxels_are_ignored():
    mask = np.full((2, 8, 8, 8), -1, dtype=np.int16)
    mask[0, 2:6, 2:6, 2:6] = 0
    mask[0, 3:5, 3:5, 3:5] = 1  # 8 voxels surrounded by background inside -1
    # second patch: only -1 and 0, no lesion
    mask[1, :4] = 0
    stats = mask_statistics(mask, (1.0, 1.0, 1.0))
    assert stats.lesions_per_patch == [1, 0]
    assert stats.log_volume_mm3 == pytest.approx([math.log(8.0)])
    same = mask_statistics(np.where(mask < 0, 0, mask), (1.0, 1.0, 1.0))
    assert stats == same


def test_ball_is_more_spherical_than_rod():
    ball = _ball((15, 15, 15), 6.0)
    rod = np.zeros((15, 15, 15), dtype=np.int16)
    rod[7, 7, 1:14] = 1
    stats = mask_statistics(np.stack([ball, rod]), (1.0, 1.0, 1.0))
    ball_sph, rod_sph = stats.sphericity
    assert 0.55 < ball_sph < 0.75  # voxel-face area overestimates the surface: documented range
    assert rod_sph < ball_sph - 0.15  # 13-voxel rod: V=13, A=54 -> 0.495
    assert all(0.0 < s <= 1.0 for s in stats.sphericity)


def test_single_voxel_sphericity_is_that_of_a_cube():
    mask = np.zeros((1, 3, 3, 3), dtype=np.int16)
    mask[0, 1, 1, 1] = 1
    stats = mask_statistics(mask, (1.0, 1.0, 1.0))
    assert stats.sphericity == pytest.approx([math.pi ** (1 / 3) * 6 ** (2 / 3) / 6])


def test_sphericity_takes_each_face_area_from_the_other_two_spacings():
    """Two voxels along z at spacing (1, 2, 3) mm: 12 mm³; faces 2 × 6 (across z) + 4 × 3 (across y) + 4 × 2 (across
    x) = 32 mm²."""
    mask = np.zeros((1, 4, 3, 3), dtype=np.int16)
    mask[0, 1:3, 1, 1] = 1
    stats = mask_statistics(mask, (1.0, 2.0, 3.0))
    assert stats.sphericity == pytest.approx([math.pi ** (1 / 3) * 72 ** (2 / 3) / 32])
    assert stats.log_volume_mm3 == pytest.approx([math.log(12)])


def test_radius_of_single_voxel_and_three_voxel_line():
    mask = np.zeros((2, 5, 5, 5), dtype=np.int16)
    mask[0, 2, 2, 2] = 1
    mask[1, 2, 2, 1:4] = 1  # along x
    stats = mask_statistics(mask, (1.0, 1.0, 1.0))
    assert stats.radius_mm == pytest.approx([0.0, 1.0], abs=1e-12)
    # spacing along x scales the line radius, other axes do not
    stretched = mask_statistics(mask, (5.0, 7.0, 2.5))
    assert stretched.radius_mm == pytest.approx([0.0, 2.5], abs=1e-12)


def test_tissue_class_is_the_majority_under_the_lesion():
    mask = np.zeros((1, 6, 6, 6), dtype=np.int16)
    mask[0, 1:4, 1, 1] = 1  # 3 voxels
    tissue = np.full(mask.shape, 3, dtype=np.uint8)  # CSF around, not under the majority
    tissue[0, 1, 1, 1] = 1
    tissue[0, 2:4, 1, 1] = 2
    stats = mask_statistics(mask, (1.0, 1.0, 1.0), tissue=tissue)
    assert stats.tissue_class == [2]
    assert mask_statistics(mask, (1.0, 1.0, 1.0)).tissue_class == [0]
    with pytest.raises(ValueError):
        mask_statistics(mask, (1.0, 1.0, 1.0), tissue=tissue[:, :-1])


# ------------------------------------------------------------------------------------------ comparison


def test_identical_statistics_have_zero_distance():
    masks = _patches_with_balls([2.0, 3.0, 4.5])
    a = mask_statistics(masks, (1.0, 1.0, 1.0))
    b = mask_statistics(masks.copy(), (1.0, 1.0, 1.0))
    distances = wasserstein_distances(a, b)
    assert set(distances) == set(METRICS)
    assert all(d == pytest.approx(0.0, abs=1e-12) for d in distances.values())


def test_log_volume_distance_equals_known_shift():
    masks = _patches_with_balls([1.5, 2.5, 4.0])
    small = mask_statistics(masks, (1.0, 1.0, 1.0))
    big = mask_statistics(masks, (2.0, 2.0, 2.0))  # every volume x8: log shift ln 8
    distances = wasserstein_distances(small, big)
    assert distances["log_volume_mm3"] == pytest.approx(math.log(8.0), rel=1e-9)
    assert distances["sphericity"] == pytest.approx(0.0, abs=1e-12)  # scale invariant
    assert distances["radius_mm"] > 0.0


def test_empty_generated_set_gives_nan_without_crash():
    reference = mask_statistics(_patches_with_balls([2.0, 3.0]), (1.0, 1.0, 1.0))
    empty = mask_statistics(np.zeros((0, 8, 8, 8), dtype=np.int16), (1.0, 1.0, 1.0))
    distances = wasserstein_distances(reference, empty)
    assert all(math.isnan(d) for d in distances.values())
    # patches without lesions: per-patch counts compare, per-lesion metrics are NaN
    blank = mask_statistics(np.zeros((3, 8, 8, 8), dtype=np.int16), (1.0, 1.0, 1.0))
    distances = wasserstein_distances(reference, blank)
    assert math.isnan(distances["log_volume_mm3"])
    assert distances["lesions_per_patch"] == pytest.approx(1.0)
    summary = summarise(blank)
    assert summary["n_patches"] == 3 and summary["empty_patches"] == 3
    assert summary["log_volume_mm3"]["n"] == 0 and math.isnan(summary["log_volume_mm3"]["mean"])


def test_summary_values():
    stats = MaskStatistics(log_volume_mm3=[1.0, 2.0, 3.0], radius_mm=[1.0, 1.0, 1.0],
                           sphericity=[0.5, 0.6, 0.7], tissue_class=[2, 2, 1], lesions_per_patch=[3, 0])
    summary = summarise(stats)
    assert summary["log_volume_mm3"]["mean"] == pytest.approx(2.0)
    assert summary["log_volume_mm3"]["median"] == pytest.approx(2.0)
    assert summary["log_volume_mm3"]["q05"] == pytest.approx(1.1)
    assert summary["lesions_per_patch"]["n"] == 2
    assert summary["empty_patches"] == 1


# ----------------------------------------------------------------------------------------------- report


def test_write_report_creates_files(tmp_path):
    spacing = (1.0, 1.0, 1.0)
    reference_masks = _patches_with_balls([2.0, 3.0, 4.0])
    reference_masks[0, :, :, :2] = -1
    methods = {
        "spheremask": _patches_with_balls([2.5, 3.5]),
        "unetmask": _patches_with_balls([1.0, 2.0, 5.0]),
        "diffmask": np.zeros((0, 16, 16, 16), dtype=np.int16),  # generated nothing
    }
    reference = mask_statistics(reference_masks, spacing)
    generated = {name: mask_statistics(m, spacing) for name, m in methods.items()}
    folder = tmp_path / "report"
    report = write_report(folder, reference, generated, methods, reference_masks, extra={"seed": 3})

    files = sorted(p.name for p in folder.iterdir())
    assert files == ["mask_evaluation.json", "mask_evaluation.md", "mask_evaluation.png"]
    on_disk = json.loads((folder / "mask_evaluation.json").read_text())
    assert on_disk == report
    assert set(on_disk["methods"]) == set(methods)
    assert on_disk["seed"] == 3
    assert on_disk["methods"]["diffmask"]["wasserstein"]["log_volume_mm3"] is None
    assert on_disk["methods"]["spheremask"]["wasserstein"]["log_volume_mm3"] > 0
    assert on_disk["reference"]["summary"]["n_patches"] == 3

    rows = [line for line in (folder / "mask_evaluation.md").read_text().splitlines() if line.startswith("| ")]
    body = rows[1:]  # first is the header
    assert len(body) == len(methods)
    assert [row.split("|")[1].strip() for row in body] == list(methods)
    assert (folder / "mask_evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ValueError):
        write_report(tmp_path / "clash", reference, generated, methods, reference_masks, extra={"methods": 1})


def test_gallery_slice_is_the_patch_centre_unless_it_misses_every_lesion():
    from lesiongen.evaluation.mask_metrics import _axial_mid_slice

    mask = np.zeros((9, 4, 4), dtype=np.int16)
    mask[4, 1, 1] = 1
    mask[1, 2, 2] = 2
    assert _axial_mid_slice(mask)[1] == 4
    mask[4] = 0
    image, z = _axial_mid_slice(mask)
    assert z == 1 and image[2, 2] == 2
    assert _axial_mid_slice(np.zeros((9, 4, 4), dtype=np.int16))[1] == 4
