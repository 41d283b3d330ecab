"""Sphere / ellipsoid lesion sampler and sphere controls (lesiongen.models.spheres)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lesiongen.fingerprint.spheres import minimum_enclosing_sphere, voxel_points_mm
from lesiongen.models.spheres import (
    SphereLesion,
    _nearest_allowed,
    _place,
    lesion_spheres_from_mask,
    render_ellipsoids,
    render_spheres,
    sample_sphere_lesions,
    sphere_control_from_mask,
)
from lesiongen.planning.plans import Beta, Categorical, LogNormal, ShapeBank, SpherePrior

PATCH = (32, 40, 36)
SPACING = (1.5, 1.0, 1.0)


def make_prior(
    label: int = 1,
    n_observed: int = 10,
    per_patch: dict[str, float] | None = None,
    radius: tuple[float, float, float, float] = (math.log(3.0), 0.4, 1.0, 6.0),
    tissue: dict[str, float] | None = None,
) -> SpherePrior:
    mu, sigma, lo, hi = radius
    return SpherePrior(
        label=label,
        n_lesions_observed=n_observed,
        lesions_per_case=Categorical({"1": 1.0}),
        lesions_per_patch=Categorical(per_patch if per_patch is not None else {"1": 0.5, "3": 0.5}),
        radius_mm=LogNormal(mu, sigma, lo, hi, {}),
        volume_mm3=LogNormal(math.log(50.0), 0.5, 1.0, 1000.0, {}),
        axis_ratio_middle=Beta(4.0, 2.0),
        axis_ratio_minor=Beta(4.0, 2.0),
        tissue_probability=Categorical(tissue if tissue is not None else {"0": 1.0}),
        location_bins=4,
        location_histogram=[1.0 / 64] * 64,
        min_lesion_voxels=1,
        min_lesion_volume_mm3=1.0,
    )


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return dist2 <= radius_mm**2 + 1e-9


# ------------------------------------------------------------------------------------ fitting to masks


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_control_recovers_ball(spacing):
    shape, centre, radius = (24, 30, 28), (12, 14, 13), 6.0
    mask = ball(shape, centre, radius, spacing).astype(np.uint8)
    spheres = lesion_spheres_from_mask(mask, spacing)
    assert len(spheres) == 1
    assert spheres[0].label == 1
    assert spheres[0].radius_mm == pytest.approx(radius, abs=1e-6)
    np.testing.assert_allclose(spheres[0].centre, centre, atol=1e-6)

    control = sphere_control_from_mask(mask, spacing)
    assert control.dtype == np.uint8 and control.shape == shape
    assert np.all(control[mask > 0] == 1)  # contains the original lesion
    # the rendered ball is exactly the radius + half-smallest-spacing ball, and not much larger than the lesion
    expected = ball(shape, centre, radius + min(spacing) / 2, spacing)
    np.testing.assert_array_equal(control > 0, expected)
    assert mask.sum() <= control.sum() <= 1.6 * mask.sum()


def test_two_components_keep_classes_and_ignore_outside_brain():
    mask = np.zeros((20, 24, 24), dtype=np.int8)
    mask[:, :, :3] = -1  # outside the brain: background, not a lesion
    mask[4:7, 4:7, 5:8] = 1
    mask[12:14, 15:19, 16:18] = 2
    spheres = lesion_spheres_from_mask(mask, (1.0, 1.0, 1.0))
    assert [s.label for s in spheres] == [1, 2]
    np.testing.assert_allclose(spheres[0].centre, [5, 5, 6], atol=1e-6)
    assert spheres[0].radius_mm == pytest.approx(math.sqrt(3), abs=1e-6)
    for s in spheres:
        assert s.semi_axes_mm == [s.radius_mm] * 3
        np.testing.assert_array_equal(s.rotation, np.eye(3))

    control = sphere_control_from_mask(mask, (1.0, 1.0, 1.0))
    assert set(np.unique(control).tolist()) == {0, 1, 2}
    assert np.all(control[mask == 1] == 1) and np.all(control[mask == 2] == 2)
    assert np.all(control[:, :, :3] == 0)  # the -1 region produced nothing


def test_diagonal_voxels_are_one_component_and_single_voxel_is_kept():
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[2, 2, 2] = mask[3, 3, 3] = 1  # 26-connected
    mask[8, 8, 8] = 1
    spheres = lesion_spheres_from_mask(mask, (1.0, 1.0, 1.0))
    assert len(spheres) == 2
    single = [s for s in spheres if s.radius_mm == 0.0]
    assert len(single) == 1 and single[0].centre == [8.0, 8.0, 8.0]
    control = render_spheres(single, mask.shape, (1.0, 1.0, 1.0))
    assert control.sum() == 1 and control[8, 8, 8] == 1


def test_empty_mask_gives_no_spheres():
    mask = -np.ones((8, 8, 8), dtype=np.int8)
    assert lesion_spheres_from_mask(mask, (1.0, 1.0, 1.0)) == []
    assert not sphere_control_from_mask(mask, (1.0, 1.0, 1.0)).any()


# ----------------------------------------------------------------------------------------- sampling


def test_same_seed_same_result_different_seed_differs():
    priors = {"1": make_prior(1), "2": make_prior(2, per_patch={"2": 1.0})}

    def run(seed):
        lesions = sample_sphere_lesions(priors, PATCH, SPACING, np.random.default_rng(seed))
        return lesions, render_ellipsoids(lesions, PATCH, SPACING)

    a, render_a = run(3)
    b, render_b = run(3)
    assert a == b
    np.testing.assert_array_equal(render_a, render_b)
    c, render_c = run(4)
    assert a != c
    assert not np.array_equal(render_a, render_c)


def test_shapes_follow_the_prior():
    prior = make_prior(per_patch={"3": 1.0}, radius=(math.log(3.0), 0.8, 2.0, 4.0))
    for seed in range(20):
        lesions = sample_sphere_lesions({"1": prior}, PATCH, SPACING, np.random.default_rng(seed))
        assert len(lesions) == 3
        for lesion in lesions:
            assert lesion.label == 1
            assert 2.0 <= lesion.radius_mm <= 4.0  # truncated to [minimum, maximum]
            axes = lesion.semi_axes_mm
            assert axes[0] == lesion.radius_mm and axes[0] >= axes[1] >= axes[2] > 0
            rot = np.asarray(lesion.rotation)
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) == pytest.approx(1.0)


def test_lesion_counts_follow_lesions_per_patch():
    prior = make_prior(per_patch={"1": 0.5, "4": 0.5})
    counts = {len(sample_sphere_lesions({"a": prior}, PATCH, SPACING, np.random.default_rng(s))) for s in range(30)}
    assert counts == {1, 4}


def test_class_drawn_by_observed_count_and_empty_priors_skipped():
    priors = {"1": make_prior(1, n_observed=0), "2": make_prior(2, n_observed=5)}
    labels = {sample_sphere_lesions(priors, PATCH, SPACING, np.random.default_rng(s))[0].label for s in range(10)}
    assert labels == {2}
    assert sample_sphere_lesions({"1": make_prior(1, n_observed=0)}, PATCH, SPACING, np.random.default_rng(0)) == []

    both = {"1": make_prior(1, n_observed=1), "2": make_prior(2, n_observed=3)}
    drawn = [sample_sphere_lesions(both, PATCH, SPACING, np.random.default_rng(s))[0].label for s in range(200)]
    assert 0.6 < drawn.count(2) / len(drawn) < 0.9  # expected 0.75


def test_first_lesion_centred_and_all_inside_patch():
    prior = make_prior(per_patch={"4": 1.0})
    for seed in range(10):
        lesions = sample_sphere_lesions({"1": prior}, PATCH, SPACING, np.random.default_rng(seed))
        assert lesions[0].centre == [float(n // 2) for n in PATCH]
        for lesion in lesions:
            centre = np.asarray(lesion.centre)
            reach = lesion.radius_mm / np.asarray(SPACING)
            assert np.all(centre - reach >= -1e-9) and np.all(centre + reach <= np.asarray(PATCH) - 1 + 1e-9)


def test_lesions_stay_inside_the_brain():
    brain = np.zeros(PATCH, dtype=bool)
    brain[:, :, 24:] = True  # excludes the patch centre (x = 18)
    prior = make_prior(per_patch={"3": 1.0})
    for seed in range(10):
        lesions = sample_sphere_lesions({"1": prior}, PATCH, SPACING, np.random.default_rng(seed), brain=brain)
        for lesion in lesions:
            assert brain[tuple(int(v) for v in lesion.centre)]
        # the centre lesion moves to the nearest allowed voxel: the brain edge, or as close as its radius allows
        first = lesions[0]
        assert first.centre[0] == PATCH[0] // 2 and first.centre[1] == PATCH[1] // 2
        assert first.centre[2] == max(24, math.ceil(first.radius_mm / SPACING[2] - 1e-9))


def test_tissue_probability_steers_placement():
    tissue = np.ones(PATCH, dtype=np.int16)
    tissue[:, 20:, :] = 2
    tissue[:, :, :4] = 0
    prior = make_prior(per_patch={"3": 1.0}, tissue={"2": 1.0})
    others = []
    for seed in range(30):
        lesions = sample_sphere_lesions({"1": prior}, PATCH, SPACING, np.random.default_rng(seed), tissue=tissue)
        others += [tissue[tuple(int(v) for v in l.centre)] for l in lesions[1:]]
    assert len(others) == 60
    assert np.mean(np.asarray(others) == 2) > 0.9

    # without tissue information in the prior the placement ignores the map: both halves get lesions
    plain = make_prior(per_patch={"3": 1.0}, tissue={"0": 1.0})
    seen = set()
    for seed in range(30):
        lesions = sample_sphere_lesions({"1": plain}, PATCH, SPACING, np.random.default_rng(seed), tissue=tissue)
        seen |= {int(tissue[tuple(int(v) for v in l.centre)]) for l in lesions[1:]}
    assert {1, 2} <= seen


def test_lesions_avoid_overlap_when_there_is_room():
    prior = make_prior(per_patch={"3": 1.0}, radius=(math.log(3.0), 0.0, 3.0, 3.0))
    for seed in range(20):
        lesions = sample_sphere_lesions({"1": prior}, (48, 48, 48), (1.0, 1.0, 1.0), np.random.default_rng(seed))
        centres = np.array([l.centre for l in lesions])
        for i in range(3):
            for j in range(i):
                assert np.linalg.norm(centres[i] - centres[j]) >= 6.0 - 1e-9


def test_impossible_border_constraint_is_relaxed():
    prior = make_prior(per_patch={"2": 1.0}, radius=(math.log(20.0), 0.0, 20.0, 20.0))
    lesions = sample_sphere_lesions({"1": prior}, (8, 8, 8), (1.0, 1.0, 1.0), np.random.default_rng(0))
    assert len(lesions) == 2
    assert all(0 <= v < 8 for l in lesions for v in l.centre)


def test_shape_bank_draws_observed_shapes_whole():
    """Two observed lesions, 2 mm and 8 mm with their own volumes and axis ratios: without jitter every draw is one
    of them, radius, volume and ratios together, both about equally often; the fitted log-normal (median 4 mm) is
    not used. The ellipsoid holds the lesion's volume: semi-axes (a, a m, a m n) with 4/3 pi a^3 m^2 n = volume."""
    bank = ShapeBank(radius_mm=[2.0, 8.0], volume_mm3=[4 / 3 * math.pi * 2.5 * 2.25 * 1.8, 500.0],
                     axis_ratio_middle=[0.9, 0.5], axis_ratio_minor=[0.8, 0.4], log_bandwidth=0.0)
    major = (3 * 500.0 / (4 * math.pi * 0.5 * 0.5 * 0.4)) ** (1 / 3)
    prior = dataclasses.replace(make_prior(per_patch={"1": 1.0}, radius=(math.log(4.0), 0.1, 1.0, 9.0)),
                                observed_shapes=bank)
    rng = np.random.default_rng(0)
    drawn = [sample_sphere_lesions({"1": prior}, (48, 48, 48), (1.0, 1.0, 1.0), rng)[0] for _ in range(200)]
    small = [l for l in drawn if l.radius_mm == pytest.approx(2.0)]
    large = [l for l in drawn if l.radius_mm == pytest.approx(8.0)]
    assert len(small) + len(large) == 200 and 70 < len(small) < 130
    assert all(l.semi_axes_mm == pytest.approx([2.5, 2.25, 1.8]) for l in small)
    assert all(l.semi_axes_mm == pytest.approx([major, major * 0.5, major * 0.2]) for l in large)
    # a jitter spreads the radius around each observed one, within the observed range
    jittered = dataclasses.replace(prior, observed_shapes=dataclasses.replace(bank, log_bandwidth=0.1))
    lesions = [sample_sphere_lesions({"1": jittered}, (48, 48, 48), (1.0, 1.0, 1.0), rng)[0] for _ in range(200)]
    radii = np.array([l.radius_mm for l in lesions])
    # the volume follows the radius (cube), so the ellipsoid keeps its entry's proportion to the radius
    stretch = sorted({round(l.semi_axes_mm[0] / l.radius_mm, 6) for l in lesions})
    assert stretch == pytest.approx(sorted([major / 8.0, 2.5 / 2.0]))
    assert len(np.unique(radii)) > 150 and radii.min() >= 2.0 and radii.max() <= 8.0
    assert np.mean((radii > 3.0) & (radii < 6.0)) < 0.05  # still two peaks, nothing between them


# ---------------------------------------------------------------------------------------- rendering


def test_ellipsoid_below_its_class_minimum_is_grown_to_it():
    eye = np.eye(3).tolist()
    small = SphereLesion(1, [8.0, 8.0, 8.0], 1.0, [1.0, 0.6, 0.5], eye)
    other = SphereLesion(2, [3.0, 3.0, 3.0], 0.5, [0.5, 0.5, 0.5], eye)
    plain = render_ellipsoids([small, other], (16, 16, 16), (1.0, 1.0, 1.0))
    assert (plain == 1).sum() < 7
    grown = render_ellipsoids([small, other], (16, 16, 16), (1.0, 1.0, 1.0), {1: 20})
    assert 20 <= (grown == 1).sum() <= 40  # reached, not overshot by much
    assert (grown == 2).sum() == (plain == 2).sum()  # another class's minimum is its own


def test_rendered_ellipsoid_fits_its_bounding_sphere():
    prior = make_prior(per_patch={"1": 1.0}, radius=(math.log(5.0), 0.5, 1.0, 9.0))
    diagonal = float(np.linalg.norm(SPACING))
    for seed in range(15):
        lesion = sample_sphere_lesions({"1": prior}, PATCH, SPACING, np.random.default_rng(seed))[0]
        rendered = render_ellipsoids([lesion], PATCH, SPACING)
        assert rendered[tuple(int(v) for v in lesion.centre)] == 1
        centre_mm, radius = minimum_enclosing_sphere(voxel_points_mm(rendered > 0, SPACING))
        assert radius <= lesion.radius_mm + diagonal
        # and it is not a degenerate speck either: the long axis is (nearly) fully drawn
        assert radius >= lesion.radius_mm - diagonal
        assert np.linalg.norm(centre_mm - np.asarray(lesion.centre) * SPACING) <= diagonal


def test_render_ellipsoid_matches_brute_force():
    rot = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    lesion = SphereLesion(1, [10.3, 12.0, 9.6], 7.0, [7.0, 4.0, 2.5], rot.tolist())
    shape, spacing = (22, 26, 20), (1.2, 0.9, 1.0)
    rendered = render_ellipsoids([lesion], shape, spacing)
    grids = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    d = (grids - np.asarray(lesion.centre)) * np.asarray(spacing)
    q = d @ rot / np.asarray(lesion.semi_axes_mm)
    expected = np.sum(q * q, axis=-1) <= 1
    np.testing.assert_array_equal(rendered > 0, expected)


def test_tiny_lesions_never_vanish_and_later_lesions_overwrite():
    eye = np.eye(3).tolist()
    tiny = SphereLesion(1, [3.4, 3.6, 3.0], 0.1, [0.1, 0.05, 0.01], eye)
    big = SphereLesion(2, [10.0, 10.0, 10.0], 3.0, [3.0, 3.0, 3.0], eye)
    small_on_big = SphereLesion(3, [10.0, 10.0, 10.0], 1.0, [1.0, 1.0, 1.0], eye)
    out = render_ellipsoids([tiny, big, small_on_big], (16, 16, 16), (1.0, 1.0, 1.0))
    assert out.dtype == np.uint8
    assert out[3, 4, 3] == 1 and (out == 1).sum() == 1
    assert out[10, 10, 10] == 3 and out[10, 10, 13] == 2
    # cut by the border: rendering clips to the patch instead of failing
    edge = SphereLesion(1, [0.0, 0.0, 0.0], 4.0, [4.0, 3.0, 2.0], eye)
    assert render_ellipsoids([edge], (6, 6, 6), (1.0, 1.0, 1.0))[0, 0, 0] == 1


def test_placement_takes_a_clear_candidate_else_the_least_overlapping_one():
    """Two allowed centres on a line, an earlier lesion of radius 3 mm at x = 0: for a 1 mm lesion x = 9 is clear
    and x = 0 is not; beside a 20 mm lesion both overlap and x = 9 overlaps least. Either way x = 9, whatever the
    seed (unless all 8 tries draw x = 0: 1 in 256)."""
    allowed = np.zeros((1, 1, 10), bool)
    allowed[0, 0, [0, 9]] = True
    spacing = np.ones(3)
    for earlier_radius in (3.0, 20.0):
        picks = {int(_place(allowed, np.zeros(3, int), None, spacing, 1.0, [np.zeros(3)], [earlier_radius],
                            np.random.default_rng(seed))[2]) for seed in range(20)}
        assert picks == {9}


def test_the_nearest_allowed_centre_is_nearest_in_millimetres():
    """At spacing (3, 1, 1) mm the allowed voxel one slice away (3 mm) is further than the one two voxels along x
    (2 mm)."""
    allowed = np.zeros((3, 1, 3), bool)
    allowed[1, 0, 0] = allowed[0, 0, 2] = True
    nearest = _nearest_allowed(allowed, np.zeros(3, int), np.array([0, 0, 0]), np.array([3.0, 1.0, 1.0]))
    assert nearest.tolist() == [0, 0, 2]
