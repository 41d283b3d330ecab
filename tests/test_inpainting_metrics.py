"""Inpainting quality metrics (BraTS-style fill scores and insert-mode checks) against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesiongen.evaluation.inpainting_metrics import (
    PSNR_CAP_DB,
    diff_map_iou,
    inpainting_metrics,
    lesion_contrast,
    normalise_like_brats,
    ssim_map,
    ssim_outside,
)

SHAPE = (24, 24, 24)
# A 6-voxel cube in the middle of the brain: the inpainted region.
MASK_BOX = (slice(9, 15),) * 3


def _brain() -> np.ndarray:
    grid = np.indices(SHAPE) - (np.asarray(SHAPE)[:, None, None, None] - 1) / 2
    return np.sum(grid**2, axis=0) <= 10.5**2


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[MASK_BOX] = True
    return mask


def _scan(seed: int = 0) -> np.ndarray:
    """Noisy 'tissue' around 100 inside the brain, zero background."""
    rng = np.random.default_rng(seed)
    return np.where(_brain(), 100.0 + 10.0 * rng.standard_normal(SHAPE), 0.0)


# ------------------------------------------------------------------------------------- normalisation


def test_normalise_maps_gt_percentiles_to_zero_and_one():
    gt = _scan()
    brain = _brain()
    low, high = np.percentile(gt[brain], [0.5, 99.5])
    probe = np.full(SHAPE, (low + high) / 2)
    probe[0, 0, 0], probe[0, 0, 1], probe[0, 0, 2], probe[0, 0, 3] = low, high, low - 50, high + 50
    gt_n, probe_n = normalise_like_brats(gt, probe, brain)
    assert probe_n[0, 0, 0] == pytest.approx(0.0, abs=1e-12)
    assert probe_n[0, 0, 1] == pytest.approx(1.0, abs=1e-12)
    assert probe_n[0, 0, 2] == 0.0 and probe_n[0, 0, 3] == 1.0  # clipped with the gt's bounds
    assert probe_n[5, 5, 5] == pytest.approx(0.5)
    assert gt_n.min() == 0.0 and gt_n.max() == 1.0
    # Without a brain mask the nonzero voxels give the same percentiles (the background is exactly zero).
    gt_n_nonzero, _ = normalise_like_brats(gt, probe)
    np.testing.assert_array_equal(gt_n_nonzero, gt_n)


def test_normalise_rejects_constant_gt_and_4d_input():
    with pytest.raises(ValueError, match="intensity range"):
        normalise_like_brats(np.ones(SHAPE), np.ones(SHAPE))
    with pytest.raises(ValueError, match="one 3D channel"):
        normalise_like_brats(np.ones((1, *SHAPE)), np.ones((1, *SHAPE)))


# ------------------------------------------------------------------------------------ fill metrics


def test_identical_images_score_perfectly():
    gt = _scan()
    metrics = inpainting_metrics(gt, gt.copy(), _mask(), _brain())
    assert metrics["mse"] == 0.0
    assert metrics["psnr"] == PSNR_CAP_DB
    assert metrics["ssim"] == 1.0
    assert len(metrics["per_channel"]) == 1


def test_noise_in_mask_matches_hand_computed_mse_and_worsens_scores():
    brain, mask = _brain(), _mask()
    gt = _scan()
    gt[mask] = 100.0  # mid-range, so small noise never reaches the clipping bounds
    low, high = np.percentile(gt[brain], [0.5, 99.5])
    noise = np.random.default_rng(1).standard_normal(SHAPE)

    scores = []
    for amplitude in (2.0, 8.0):
        prediction = gt + amplitude * noise * mask
        assert prediction[mask].min() > low and prediction[mask].max() < high
        metrics = inpainting_metrics(gt, prediction, mask, brain)
        expected_mse = np.mean((amplitude * noise[mask]) ** 2) / (high - low) ** 2
        assert metrics["mse"] == pytest.approx(expected_mse, rel=1e-10)
        assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-10)
        scores.append(metrics)
    small, large = scores
    assert 0 < small["mse"] < large["mse"]
    assert PSNR_CAP_DB > small["psnr"] > large["psnr"]
    assert 1.0 > small["ssim"] > large["ssim"]


def test_prediction_beyond_gt_range_is_clipped_before_mse():
    brain, mask = _brain(), _mask()
    gt = _scan()
    low, high = np.percentile(gt[brain], [0.5, 99.5])
    prediction = np.where(mask, 1e6, gt)  # far above the gt's upper bound: normalised to exactly 1
    gt_n = (np.clip(gt[mask], low, high) - low) / (high - low)
    metrics = inpainting_metrics(gt, prediction, mask, brain)
    assert metrics["mse"] == pytest.approx(np.mean((1.0 - gt_n) ** 2), rel=1e-10)


def test_voxels_outside_mask_do_not_change_mse_or_psnr():
    brain, mask = _brain(), _mask()
    gt = _scan()
    prediction = gt + 3.0 * np.random.default_rng(2).standard_normal(SHAPE) * mask
    reference = inpainting_metrics(gt, prediction, mask, brain)
    spoiled = prediction.copy()
    spoiled[~mask] += 500.0  # wreck everything outside the fill
    changed = inpainting_metrics(gt, spoiled, mask, brain)
    assert changed["mse"] == reference["mse"]
    assert changed["psnr"] == reference["psnr"]
    assert changed["ssim"] < reference["ssim"]  # SSIM windows at the mask border do see the context


def test_multichannel_gives_one_entry_per_channel_and_their_mean():
    brain, mask = _brain(), _mask()
    gt = np.stack([_scan(3), _scan(4), _scan(5)])
    prediction = gt.copy()
    prediction[1] += 5.0 * np.random.default_rng(6).standard_normal(SHAPE) * mask
    metrics = inpainting_metrics(gt, prediction, mask, brain)
    per_channel = metrics["per_channel"]
    assert len(per_channel) == 3
    assert per_channel[0]["mse"] == 0.0 and per_channel[2]["mse"] == 0.0 and per_channel[1]["mse"] > 0.0
    assert metrics["mse"] == pytest.approx(per_channel[1]["mse"] / 3)
    assert metrics["psnr"] == pytest.approx((2 * PSNR_CAP_DB + per_channel[1]["psnr"]) / 3)
    assert metrics["ssim"] == pytest.approx((2.0 + per_channel[1]["ssim"]) / 3)


def test_empty_mask_is_an_error():
    gt = _scan()
    with pytest.raises(ValueError, match="mask is empty"):
        inpainting_metrics(gt, gt, np.zeros(SHAPE, dtype=bool))


# ------------------------------------------------------------------------------------------- SSIM


def test_ssim_map_of_image_with_itself_is_all_ones():
    image = _scan() / 150.0
    result = ssim_map(image, image)
    assert result.shape == SHAPE
    assert np.all(result == 1.0)
    other = ssim_map(image, _scan(9) / 150.0)
    assert other.shape == SHAPE and other[_brain()].max() < 1.0  # the zero backgrounds agree, tissue not


def test_ssim_map_is_scikit_images_gaussian_ssim_away_from_the_border():
    """Wang et al.'s constants and population statistics: inside the 5-voxel border (where the padding differs)
    the map equals scikit-image's Gaussian-window SSIM (a dependency of batchgenerators), voxel for voxel."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((20, 20, 20))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    _, reference = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, full=True)
    inner = (slice(5, -5),) * 3
    assert ssim_map(a, b)[inner] == pytest.approx(reference[inner], abs=1e-12)


def test_ssim_outside_ignores_changes_within_margin():
    original = np.stack([_scan(10), _scan(11)])
    mask = _mask()
    edited = original.copy()
    margin = 2
    near = (slice(9 - margin, 15 + margin),) * 3  # the mask grown by exactly `margin` 26-neighbour steps
    edited[(slice(None), *near)] += 40.0
    assert ssim_outside(original, edited, mask, margin) == 1.0
    # One step less of margin: the changed shell now counts as outside.
    assert ssim_outside(original, edited, mask, margin - 1) < 1.0


def test_ssim_outside_below_one_when_a_far_voxel_changes():
    original = _scan(12)
    mask = _mask()
    edited = original.copy()
    edited[2, 2, 2] += 60.0
    value = ssim_outside(original, edited, mask, 5)
    assert 0.0 < value < 1.0


# --------------------------------------------------------------------------------------- DiffMapIoU


def test_diff_map_iou_is_one_when_exactly_the_mask_changed():
    original = np.stack([_scan(13), _scan(14)])
    mask = _mask()
    edited = original.copy()
    edited[0][mask] += 25.0
    assert diff_map_iou(original, edited, mask) == 1.0
    # Tiny rounding-level changes elsewhere fall below Otsu's threshold.
    edited[1, 1:4, 1:4, 1:4] += 1e-4
    assert diff_map_iou(original, edited, mask) == 1.0
    # An explicit threshold above the change finds nothing.
    assert diff_map_iou(original, edited, mask, threshold=30.0) == 0.0


def test_diff_map_iou_is_zero_for_disjoint_or_no_change():
    original = _scan(15)
    mask = _mask()
    edited = original.copy()
    edited[1:7, 1:7, 1:7] -= 25.0
    assert diff_map_iou(original, edited, mask) == pytest.approx(0.0)
    assert diff_map_iou(original, original.copy(), mask) == 0.0


def test_diff_map_iou_partial_overlap():
    original = _scan(16)
    mask = _mask()  # 216 voxels
    edited = original.copy()
    edited[9:15, 9:15, 12:18] += 10.0  # half of it inside the mask, half outside
    assert diff_map_iou(original, edited, mask) == pytest.approx(108 / 324)


# ---------------------------------------------------------------------------------- lesion contrast


def test_lesion_contrast_sign_and_magnitude():
    rng = np.random.default_rng(17)
    background = 100.0 + 10.0 * rng.standard_normal((2, *SHAPE))
    lesion = _mask()
    image = background.copy()
    image[0][lesion] = 130.0  # bright: +3 shell standard deviations
    image[1][lesion] = 80.0  # dark: -2
    contrast = lesion_contrast(image, lesion, np.ones(SHAPE, dtype=bool))
    assert len(contrast) == 2
    assert 2.4 < contrast[0] < 3.6
    assert -2.6 < contrast[1] < -1.4


def test_lesion_contrast_zero_spread_shell_and_empty_lesion():
    lesion = _mask()
    image = np.full((1, *SHAPE), 50.0)
    image[0][lesion] = 90.0
    assert lesion_contrast(image, lesion, np.ones(SHAPE, dtype=bool)) == [0.0]
    # Outside the brain the shell is empty: 0.0 as well.
    assert lesion_contrast(image, lesion, lesion) == [0.0]
    with pytest.raises(ValueError, match="lesion mask is empty"):
        lesion_contrast(image, np.zeros(SHAPE, dtype=bool), np.ones(SHAPE, dtype=bool))


def test_lesion_contrast_shell_is_the_brain_voxels_beside_the_lesion():
    """A one-voxel lesion (10) with a 1-voxel shell: its six face neighbours, of which the one outside the brain
    (-100) does not count; the other five, 1..5, have mean 3 and standard deviation √2."""
    image = np.zeros((1, 5, 5, 5))
    lesion = np.zeros((5, 5, 5), dtype=bool)
    lesion[2, 2, 2] = True
    image[0, 2, 2, 2] = 10.0
    for value, (z, y, x) in enumerate([(1, 2, 2), (3, 2, 2), (2, 1, 2), (2, 3, 2), (2, 2, 1)], start=1):
        image[0, z, y, x] = value
    image[0, 2, 2, 3] = -100.0
    brain = np.ones((5, 5, 5), dtype=bool)
    brain[:, :, 3:] = False
    assert lesion_contrast(image, lesion, brain, shell_voxels=1) == pytest.approx([7 / math.sqrt(2)])


def test_contrast_agreement_of_a_shifted_distribution():
    from lesiongen.evaluation.evaluate_inpainting import contrast_agreement

    real = np.array([[1.0, -0.5], [2.0, -1.0], [3.0, -1.5], [4.0, -2.0]])
    same = contrast_agreement(real, real)
    assert same["contrast_wasserstein_per_channel"] == pytest.approx([0.0, 0.0])
    assert same["contrast_mean_ratio"] == pytest.approx([1.0, 1.0])
    shifted = contrast_agreement(real, real + np.array([0.5, 0.0]))
    # a shifted 1-D distribution is exactly the shift away; the real std of channel 0 is sqrt(1.25)
    assert shifted["contrast_wasserstein_per_channel"] == pytest.approx([0.5, 0.0])
    assert shifted["contrast_wasserstein_over_real_std"][0] == pytest.approx(0.5 / np.sqrt(1.25))
    assert shifted["contrast_mean_ratio"][0] == pytest.approx(3.0 / 2.5)


def test_contrast_agreement_permutation_floor_and_p_value_by_hand():
    from lesiongen.evaluation.evaluate_inpainting import contrast_agreement

    # pooled {0, 1, 2}; the three ways to pick the inserted value: 2 -> W({0,1}, {2}) = 1.5, 1 -> W({0,2}, {1}) = 1.0,
    # 0 -> W({1,2}, {0}) = 1.5. Observed (inserted 2): 1.5, reached by 2 of 3 relabellings; mean null distance 4/3,
    # over the real std 0.5.
    result = contrast_agreement(np.array([[0.0], [1.0]]), np.array([[2.0]]))
    assert result["contrast_wasserstein_per_channel"] == pytest.approx([1.5])
    assert result["contrast_wasserstein_p"][0] == pytest.approx(2 / 3, abs=0.03)
    assert result["contrast_wasserstein_null_over_real_std"][0] == pytest.approx((4 / 3) / 0.5, rel=0.02)
    assert (result["contrast_n_real"], result["contrast_n_inserted"]) == (2, 1)


def test_contrast_agreement_tells_a_shift_from_sampling_noise():
    from lesiongen.evaluation.evaluate_inpainting import contrast_agreement

    rng = np.random.default_rng(7)
    real = rng.normal(size=(16, 1))
    identical = contrast_agreement(real, real.copy())
    assert identical["contrast_wasserstein_p"] == [1.0]
    # two samples of 16 from one normal distribution: about 0.41 standard deviations apart on average
    assert 0.3 < identical["contrast_wasserstein_null_over_real_std"][0] < 0.55
    shifted = contrast_agreement(real, rng.normal(loc=3.0, size=(16, 1)))
    assert shifted["contrast_wasserstein_p"][0] < 0.001


def test_contrast_mean_ratio_interval_by_hand():
    from lesiongen.evaluation.evaluate_inpainting import contrast_agreement

    # real contrast always 2; inserted {2, 4}: bootstrap means 2, 3, 4 with chances 1/4, 1/2, 1/4, so ratios 1, 1.5, 2
    # and the 95 % interval runs from 1 to 2
    result = contrast_agreement(np.full((4, 1), 2.0), np.array([[2.0], [4.0]]))
    assert result["contrast_mean_ratio"] == pytest.approx([1.5])
    assert result["contrast_mean_ratio_ci95"] == [pytest.approx([1.0, 2.0])]
    assert result["contrast_inserted"] == [[2.0], [4.0]]


def test_contrast_agreement_units_floor_and_interval_by_hand():
    """The distance is in units of the *real* spread: real 1..4, inserted twice them: W = (1 + 2 + 3 + 4) / 4 = 2.5,
    over the real s.d. √1.25 (the inserted one is twice that). Fully separated samples of 20: no relabelling of
    2,000 comes as far, so p = 1 / 2,001, the permutation test's floor. Real contrast always 2, inserted {2, 2, 4}:
    each side is resampled at its own size, so a bootstrap mean of the inserted is 4 with chance 1 / 27 (3.7 %) and
    the 95 % interval of the ratio runs from 1 to 2 (a 90 % one would end at 5 / 3)."""
    from lesiongen.evaluation.evaluate_inpainting import contrast_agreement

    real = np.array([[1.0], [2.0], [3.0], [4.0]])
    scaled = contrast_agreement(real, 2 * real)
    assert scaled["contrast_wasserstein_over_real_std"] == pytest.approx([2.5 / np.sqrt(1.25)])
    separated = contrast_agreement(np.zeros((20, 1)), np.full((20, 1), 10.0))
    assert separated["contrast_wasserstein_p"] == pytest.approx([1 / 2001])
    interval = contrast_agreement(np.full((8, 1), 2.0), np.array([[2.0], [2.0], [4.0]]))
    assert interval["contrast_mean_ratio_ci95"] == [pytest.approx([1.0, 2.0])]
