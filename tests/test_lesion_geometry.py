"""Minimum enclosing spheres and per-lesion statistics against known answers and brute force."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import nnls

from lesiongen.fingerprint.lesions import LesionComponent, analyse_lesions, summarise
from lesiongen.fingerprint.spheres import minimum_enclosing_sphere, voxel_points_mm


# ----------------------------------------------------------------------------------------------- helpers


def _sphere_of_subset(pts: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Circumsphere (centre in the affine hull) of 2-4 points by least squares, None when degenerate."""
    p0, rel = pts[0], pts[1:] - pts[0]
    gram = rel @ rel.T
    if np.linalg.matrix_rank(gram, tol=1e-9 * max(gram.max(), 1e-300)) < len(rel):
        return None
    # centre = p0 + rel.T @ w with rel_i . (centre - p0) = |rel_i|^2 / 2
    w = np.linalg.solve(gram, 0.5 * np.diag(gram))
    centre = p0 + rel.T @ w
    return centre, float(np.linalg.norm(pts - centre, axis=1).max())


def _brute_force(points: np.ndarray) -> float:
    """Smallest radius over all 2-, 3- and 4-point circumspheres that contain every point."""
    best = np.inf
    for size in (2, 3, 4):
        for subset in itertools.combinations(range(len(points)), size):
            sphere = _sphere_of_subset(points[list(subset)])
            if sphere is None:
                continue
            centre, radius = sphere
            if np.linalg.norm(points - centre, axis=1).max() <= radius * (1 + 1e-9) + 1e-12:
                best = min(best, radius)
    return best


def _assert_minimal(points: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Encloses all points, >= 2 on the surface, and the centre lies in the hull of the surface points.

    The last condition is the optimality certificate of the minimum enclosing ball.
    """
    dist = np.linalg.norm(points - centre, axis=1)
    tol = 1e-7 * max(radius, 1.0)
    assert np.all(dist <= radius + tol)
    on_surface = points[np.abs(dist - radius) <= tol]
    assert len(np.unique(on_surface, axis=0)) >= 2
    # centre = sum(l_i p_i), sum(l_i) = 1, l >= 0 must be solvable (weight the affine row strongly).
    a = np.vstack([on_surface.T, 1e3 * np.ones(len(on_surface))])
    b = np.concatenate([centre, [1e3]])
    _, residual = nnls(a, b)
    assert residual <= 1e-6 * max(radius, 1.0)


def _ball_mask(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


# ------------------------------------------------------------------------------------ enclosing spheres


def test_two_points_half_distance():
    centre, radius = minimum_enclosing_sphere(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 12.0]]))
    assert radius == pytest.approx(6.5)
    np.testing.assert_allclose(centre, [1.5, 2.0, 6.0])


def test_single_point_radius_zero():
    centre, radius = minimum_enclosing_sphere(np.array([[1.0, -2.0, 3.5]]))
    assert radius == 0.0
    np.testing.assert_allclose(centre, [1.0, -2.0, 3.5])


def test_regular_tetrahedron_circumradius():
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) + [10.0, -3.0, 2.0]
    centre, radius = minimum_enclosing_sphere(tetra)
    assert radius == pytest.approx(np.sqrt(3.0), rel=1e-12)
    np.testing.assert_allclose(centre, [10.0, -3.0, 2.0], atol=1e-12)


def test_discretised_ball_exact_radius():
    grid = np.indices((11, 11, 11)).reshape(3, -1).T.astype(float) - 5.0
    ball = grid[np.sum(grid**2, axis=1) <= 25.0]
    centre, radius = minimum_enclosing_sphere(ball)
    assert radius == pytest.approx(5.0, rel=1e-12)
    np.testing.assert_allclose(centre, 0.0, atol=1e-10)


def test_anisotropic_voxel_ball():
    # 2 mm slices: a ball of radius 6 mm spans z indices 2..8 but y/x indices 2..14.
    mask = _ball_mask((11, 17, 17), (5, 8, 8), (3.0, 6.0, 6.0))
    points = voxel_points_mm(mask, (2.0, 1.0, 1.0))
    assert points.shape == (int(mask.sum()), 3)
    centre, radius = minimum_enclosing_sphere(points)
    assert radius == pytest.approx(6.0, rel=1e-12)
    np.testing.assert_allclose(centre, [10.0, 8.0, 8.0], atol=1e-10)


def test_voxel_points_are_centres():
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[2, 1, 4] = True
    np.testing.assert_allclose(voxel_points_mm(mask, (2.5, 1.0, 0.5)), [[5.0, 1.0, 2.0]])
    assert minimum_enclosing_sphere(voxel_points_mm(mask, (2.5, 1.0, 0.5)))[1] == 0.0


def test_collinear_points():
    points = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    centre, radius = minimum_enclosing_sphere(points)
    assert radius == pytest.approx(2.0 * np.sqrt(3.0))
    np.testing.assert_allclose(centre, [2.0, 2.0, 2.0], atol=1e-12)
    # Many collinear points (too flat for Qhull) give the same answer.
    line = np.linspace(0.0, 1.0, 100)[:, None] * [4.0, 4.0, 4.0]
    assert minimum_enclosing_sphere(line)[1] == pytest.approx(2.0 * np.sqrt(3.0))


def test_coplanar_points():
    square = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 2.0]])
    centre, radius = minimum_enclosing_sphere(square)
    assert radius == pytest.approx(np.sqrt(2.0))
    np.testing.assert_allclose(centre, [0.0, 1.0, 1.0], atol=1e-12)
    rng = np.random.default_rng(3)
    flat = np.column_stack([np.zeros(300), rng.uniform(-1, 1, (300, 2))])
    centre, radius = minimum_enclosing_sphere(flat)
    _assert_minimal(flat, centre, radius)
    assert radius == pytest.approx(_brute_force(flat[np.linalg.norm(flat - centre, axis=1) > radius - 0.2]))


def test_duplicate_points():
    points = np.repeat(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 7.0], [1.0, 2.0, 3.0]]), 200, axis=0)
    centre, radius = minimum_enclosing_sphere(points)
    assert radius == pytest.approx(2.0)
    np.testing.assert_allclose(centre, [1.0, 2.0, 5.0], atol=1e-12)
    same = np.tile([[4.0, 4.0, 4.0]], (500, 1))
    centre, radius = minimum_enclosing_sphere(same)
    assert radius == 0.0
    np.testing.assert_allclose(centre, [4.0, 4.0, 4.0])


@pytest.mark.parametrize("seed", range(20))
def test_random_small_sets_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(int(rng.integers(2, 11)), 3)) * rng.uniform(0.1, 10.0, 3)
    centre, radius = minimum_enclosing_sphere(points, seed=seed)
    assert radius == pytest.approx(_brute_force(points), rel=1e-9)
    _assert_minimal(points, centre, radius)


@pytest.mark.parametrize("seed", range(20))
def test_random_sets_enclosed_and_minimal(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(8, 201))
    points = rng.uniform(-1, 1, size=(n, 3)) * rng.uniform(0.5, 20.0, 3) + rng.normal(scale=50, size=3)
    if seed % 4 == 0:  # integer grids: many cospherical and coplanar points
        points = np.round(points)
    centre, radius = minimum_enclosing_sphere(points, seed=seed)
    _assert_minimal(points, centre, radius)
    # Only points near the surface can be support points, which keeps the brute force small.
    near = points[np.linalg.norm(points - centre, axis=1) >= radius * 0.9]
    if len(near) <= 25:
        assert radius == pytest.approx(_brute_force(near), rel=1e-9)
    # The answer does not depend on the random order.
    assert minimum_enclosing_sphere(points, seed=seed + 1)[1] == pytest.approx(radius, rel=1e-9)


def test_invalid_points_rejected():
    with pytest.raises(ValueError):
        minimum_enclosing_sphere(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        minimum_enclosing_sphere(np.zeros((4, 2)))


# -------------------------------------------------------------------------------------- lesion analysis


SPACING = (2.0, 1.5, 0.5)


def test_components_counts_volumes_extents():
    label = np.zeros((20, 30, 40), dtype=np.uint8)
    label[2:5, 2:6, 2:7] = 1  # 3 x 4 x 5 = 60
    label[12:16, 20:22, 30:33] = 1  # 4 x 2 x 3 = 24
    label[8:10, 10:12, 15:17] = 2  # 2 x 2 x 2 = 8
    comps = analyse_lesions(label, SPACING)
    assert [(c.label, c.voxel_count) for c in comps] == [(1, 60), (1, 24), (2, 8)]
    voxel_volume = 2.0 * 1.5 * 0.5
    assert [c.volume_mm3 for c in comps] == pytest.approx([n * voxel_volume for n in (60, 24, 8)])
    assert [c.extent_voxels for c in comps] == [[3, 4, 5], [4, 2, 3], [2, 2, 2]]
    assert comps[0].extent_mm == pytest.approx([6.0, 6.0, 2.5])
    assert comps[0].centroid_voxel == pytest.approx([3.0, 3.5, 4.0])
    # Box of voxel centres: half its diagonal.
    assert comps[0].bounding_radius_mm == pytest.approx(0.5 * np.linalg.norm([2 * 2.0, 3 * 1.5, 4 * 0.5]))
    assert comps[0].semi_axes_mm == sorted(comps[0].semi_axes_mm, reverse=True)
    # Along z the centres are 0, 2, 4 mm: variance 8/3, semi-axis sqrt(5 * 8/3).
    assert np.sqrt(5 * 8 / 3) == pytest.approx(comps[0].semi_axes_mm[1])
    assert all(c.tissue_class == 0 and c.contrast == [] and c.intensity_ratio == [] for c in comps)


def test_single_voxel_component():
    label = np.zeros((5, 5, 5), dtype=np.int16)
    label[2, 2, 2] = 3
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0))
    assert comp.label == 3 and comp.voxel_count == 1
    assert comp.bounding_radius_mm == 0.0
    assert comp.semi_axes_mm == [0.0, 0.0, 0.0]
    assert comp.centroid_relative == pytest.approx([0.5, 0.5, 0.5])


def test_corner_touching_blobs_are_one_component():
    label = np.zeros((12, 12, 12), dtype=np.uint8)
    label[2:5, 2:5, 2:5] = 1
    label[5:8, 5:8, 5:8] = 1  # touches the first cube only at the corner (4,4,4)-(5,5,5)
    assert len(analyse_lesions(label, (1.0, 1.0, 1.0))) == 1
    label[5, 5, 5] = 0
    label[6:8, 6:8, 6:8] = 1
    assert len(analyse_lesions(label, (1.0, 1.0, 1.0))) == 2
    # Different classes never merge, even when they touch.
    label2 = np.zeros((12, 12, 12), dtype=np.uint8)
    label2[2:5, 2:5, 2:5] = 1
    label2[5:8, 2:5, 2:5] = 2
    assert [c.label for c in analyse_lesions(label2, (1.0, 1.0, 1.0))] == [1, 2]


def test_tissue_majority():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[3:6, 3:6, 3:6] = 1  # 27 voxels
    tissue = np.full(label.shape, 1, dtype=np.uint8)
    tissue[3:6, 3:6, 3:5] = 3  # 18 of them in class 3
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0), tissue=tissue)
    assert comp.tissue_class == 3


def _reference_shell(label, component, brain, spacing, shell_mm: float) -> np.ndarray:
    """Shell from a full-volume distance transform, independent of the cropping in analyse_lesions."""
    distance = ndimage.distance_transform_edt(~component, sampling=spacing)
    return (distance <= shell_mm) & (label == 0) & brain


def test_contrast_and_ratio():
    rng = np.random.default_rng(0)
    shape, spacing = (30, 40, 40), (2.0, 1.0, 1.0)
    label = np.zeros(shape, dtype=np.uint8)
    bright = _ball_mask(shape, (15, 20, 12), (3.0, 5.0, 5.0))
    dark = _ball_mask(shape, (15, 20, 28), (2.0, 4.0, 4.0))
    label[bright] = 1
    label[dark] = 2
    # A neighbouring lesion voxel of another class must not enter the shell.
    neighbour = np.zeros(shape, dtype=bool)
    neighbour[15, 20, 18] = True
    label[neighbour] = 2
    flair = 100.0 + rng.normal(scale=10.0, size=shape)
    flair[bright] = 150.0
    flair[dark] = 60.0
    flair[neighbour] = 10_000.0
    t1 = np.full(shape, 50.0)  # constant: shell std 0 -> contrast 0
    images = np.stack([flair, t1])
    brain = np.ones(shape, dtype=bool)
    comps = analyse_lesions(label, spacing, images=images, brain_mask=brain, shell_mm=3.0)
    assert [c.label for c in comps] == [1, 2, 2]
    bright_comp, dark_comp = comps[0], comps[1]
    shell = _reference_shell(label, bright, brain, spacing, 3.0)
    expected = (150.0 - flair[shell].mean()) / flair[shell].std()
    assert bright_comp.contrast[0] == pytest.approx(expected, rel=1e-9)
    assert bright_comp.contrast[0] == pytest.approx(5.0, abs=0.5)
    assert bright_comp.intensity_ratio[0] == pytest.approx(1.5, rel=0.03)
    assert dark_comp.contrast[0] == pytest.approx(-4.0, abs=0.5)
    assert dark_comp.intensity_ratio[0] == pytest.approx(0.6, rel=0.03)
    assert bright_comp.contrast[1] == 0.0 and bright_comp.intensity_ratio[1] == pytest.approx(1.0)


def test_shell_respects_brain_mask_and_empty_shell():
    shape = (20, 20, 20)
    label = np.zeros(shape, dtype=np.uint8)
    lesion = _ball_mask(shape, (10, 10, 10), (3.0, 3.0, 3.0))
    label[lesion] = 1
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 5.0, size=shape)
    brain = np.zeros(shape, dtype=bool)
    brain[:, :, :10] = True  # only half the shell is brain; the other half is very dark
    image[~brain] = 0.0
    image[lesion] = 120.0
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0), images=image[None], brain_mask=brain)
    shell = _reference_shell(label, lesion, brain, (1.0, 1.0, 1.0), 3.0)
    assert comp.contrast[0] == pytest.approx((120.0 - image[shell].mean()) / image[shell].std(), rel=1e-9)
    # The lesion fills the brain mask: no shell, and a zero background gives ratio 0 rather than inf.
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0), images=image[None], brain_mask=lesion)
    assert comp.contrast == [0.0] and comp.intensity_ratio == [0.0]
    zero = np.zeros((1, *shape))
    zero[0][lesion] = 5.0
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0), images=zero, brain_mask=np.ones(shape, dtype=bool))
    assert comp.contrast == [0.0] and comp.intensity_ratio == [0.0]


def test_default_brain_mask_from_images():
    shape = (20, 20, 20)
    label = np.zeros(shape, dtype=np.uint8)
    label[9:11, 9:11, 4:6] = 1
    image = np.zeros((1, *shape))
    image[0, 5:15, 5:15, 0:10] = 1.0  # "brain" is this box
    image[0][label > 0] = 2.0
    (comp,) = analyse_lesions(label, (1.0, 1.0, 1.0), images=image)
    assert comp.centroid_relative == pytest.approx([0.5, 0.5, 0.5])
    assert comp.intensity_ratio == [pytest.approx(2.0)]


def test_empty_label():
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    assert analyse_lesions(label, (1.0, 1.0, 1.0)) == []
    assert analyse_lesions(label, (1.0, 1.0, 1.0), images=np.ones((2, 8, 8, 8))) == []


def test_json_serialisable_plain_types():
    rng = np.random.default_rng(5)
    shape = (24, 24, 24)
    label = np.zeros(shape, dtype=np.int32)
    label[_ball_mask(shape, (8, 8, 8), (3, 4, 2))] = 1
    label[_ball_mask(shape, (16, 16, 16), (2, 2, 5))] = 2
    label[20, 3, 3] = 1
    images = rng.normal(50, 3, size=(2, *shape)).astype(np.float32)
    tissue = rng.integers(0, 4, size=shape)
    comps = analyse_lesions(label, np.array([1.2, 0.9, 3.0]), images=images, tissue=tissue)
    assert len(comps) == 3
    for comp in comps:
        assert isinstance(comp, LesionComponent)
        data = dataclasses.asdict(comp)
        assert json.loads(json.dumps(data, allow_nan=False)) == data
        for value in data.values():
            items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
            assert all(type(v) in (int, float) for v in items)
        assert all(type(k) is str for k in comp.shell_tissue)
        assert all(0.0 <= r <= 1.0 for r in comp.centroid_relative)


def test_summarise():
    empty = summarise([])
    assert empty["count"] == 0 and all(v == 0.0 for k, v in empty.items() if k != "count")
    stats = summarise([float(v) for v in range(1, 102)])
    assert stats["count"] == 101 and isinstance(stats["count"], int)
    assert stats["mean"] == pytest.approx(51.0) and stats["median"] == pytest.approx(51.0)
    assert stats["min"] == 1.0 and stats["max"] == 101.0
    assert stats["percentile_05"] == pytest.approx(6.0) and stats["percentile_95"] == pytest.approx(96.0)
    assert stats["percentile_25"] == pytest.approx(26.0) and stats["percentile_75"] == pytest.approx(76.0)
    assert all(type(v) is float for k, v in stats.items() if k != "count")
    json.dumps(stats, allow_nan=False)
