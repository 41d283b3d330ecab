"""Scan <-> model space round trip: crop/normalise/resample, denormalise, region mapping, paste-back, patches."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from lesiongen.demo.phantom import make_phantom
from lesiongen.inference.scan_space import ModelSpaceScan, denormalise, paste_back, region_to_original, to_model_space
from lesiongen.planning.plans import CT, NO_NORM, RESCALE_0_1, ZSCORE, ChannelNormalization, Plans
from lesiongen.preprocessing.normalization import normalize
from lesiongen.preprocessing.resampling import new_shape
from lesiongen.utilities.cropping import bbox_slices, extract_patch, insert_patch, mask_bbox, model_crop


def make_plans(target_spacing, schemes=(ZSCORE, ZSCORE), use_brain_mask=True) -> Plans:
    normalization = []
    for channel, scheme in enumerate(schemes):
        extra = {}
        if scheme == CT:
            extra = {"clip_lower": -1e6, "clip_upper": 1e6, "mean": 300.0, "std": 150.0}
        normalization.append(ChannelNormalization(channel, f"ch{channel}", scheme, use_brain_mask, **extra))
    return Plans(
        dataset_name="Test", plans_name="lesiongenPlans", lesiongen_version="0", fingerprint_signature="x",
        channel_names={str(i): f"ch{i}" for i in range(len(schemes))}, labels={"background": 0, "lesion": 1},
        tissue_labels={"GM": 1, "WM": 2, "CSF": 3}, has_tissue_maps=True, image_reader=None,
        original_median_spacing=list(target_spacing), original_median_shape=[32, 32, 32],
        target_spacing=[float(t) for t in target_spacing], anisotropic=False,
        median_shape_at_target_spacing=[32, 32, 32], normalization=normalization, gpu_memory_target_gb=8.0,
        lesion_patch_size=[16, 16, 16], lesion_patch_margin_mm=2.0, lesion_fraction_fitting=1.0, stages={},
        sphere_priors={},
    )


def phantom(shape=(40, 48, 44), spacing=(1.0, 1.0, 1.0), seed=0):
    p = make_phantom(shape, spacing, np.random.default_rng(seed), 2)
    images = np.stack([p.t1, p.flair]).astype(np.float32)
    return images, p.brain_mask.astype(bool), p.tissue


def ball(shape, centre, radius):
    grid = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def model_to_original_coordinate(m, scan: ModelSpaceScan):
    """Inverse of the zoom(grid_mode=True) mapping, plus the crop offset."""
    n_m, n_c = np.array(scan.model_shape, float), np.array(scan.cropped_shape, float)
    offset = np.array([a for a, _ in scan.crop_bbox], float)
    return (np.asarray(m, float) + 0.5) * n_c / n_m - 0.5 + offset


# ------------------------------------------------------------------------------------- to_model_space


def test_same_spacing_gives_cropped_zscore_image():
    images, brain, tissue = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.0, 1.0, 1.0)), brain, tissue)
    bbox = mask_bbox(brain)
    crop = bbox_slices(bbox)
    assert scan.crop_bbox == bbox
    assert scan.cropped_shape == scan.model_shape == list(brain[crop].shape)
    assert scan.images.dtype == np.float32 and scan.brain.dtype == bool and scan.tissue.dtype == np.uint8
    np.testing.assert_array_equal(scan.brain, brain[crop])
    np.testing.assert_array_equal(scan.tissue, tissue[crop])
    for channel in scan.images:
        assert abs(channel[scan.brain].mean()) < 1e-4
        assert abs(channel[scan.brain].std() - 1) < 1e-4
        assert np.all(channel[~scan.brain] == 0)
    # identical to what preprocessing's normalize produces
    expected = normalize(images[(slice(None), *crop)].copy(), make_plans((1, 1, 1)).normalization, brain[crop])
    np.testing.assert_array_equal(scan.images, expected)
    assert scan.normalization[0]["scheme"] == ZSCORE
    assert scan.normalization[0]["mean"] == pytest.approx(float(images[0][brain].mean()), rel=1e-5)
    # the input is not modified
    assert images[0][brain].mean() > 100


def test_without_brain_mask_crops_to_the_nonzero_region():
    images, brain, _ = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.0, 1.0, 1.0)))
    assert scan.crop_bbox == mask_bbox(np.any(images != 0, axis=0))


def test_each_normalisation_scheme_by_hand():
    """rescale maps min..max to 0..1; CT clips to the fingerprint's range, then takes its mean and std; nonorm
    leaves the values."""
    images = np.array([[2.0, 4.0, 6.0, 10.0], [-500.0, 0.0, 50.0, 500.0], [3.0, -1.0, 7.0, 0.5]],
                      dtype=np.float32).reshape(3, 1, 1, 4)
    schemes = [ChannelNormalization(0, "rescale_to_0_1", RESCALE_0_1, False),
               ChannelNormalization(1, "CT", CT, False, clip_lower=-100.0, clip_upper=100.0, mean=0.0, std=50.0),
               ChannelNormalization(2, "nonorm", NO_NORM, False)]
    out = normalize(images.copy(), schemes, np.ones((1, 1, 4), bool))
    assert out[0].ravel() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert out[1].ravel() == pytest.approx([-2.0, 0.0, 1.0, 2.0])
    assert out[2].ravel() == pytest.approx(images[2].ravel())


@pytest.mark.parametrize("scheme, use_brain_mask", [(ZSCORE, True), (ZSCORE, False), (RESCALE_0_1, False),
                                                    (NO_NORM, False), (CT, False)])
def test_denormalise_inverts_normalisation(scheme, use_brain_mask):
    images, brain, _ = phantom()
    images = images + 5.0  # a minimum above 0, so that rescaling's offset has to be undone too
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.0, 1.0, 1.0), (scheme, scheme), use_brain_mask),
                          brain)
    crop = (slice(None), *bbox_slices(scan.crop_bbox))
    back = denormalise(scan.images, scan)
    assert back.dtype == np.float32 and back.shape == scan.images.shape
    where = np.broadcast_to(scan.brain if use_brain_mask else np.ones_like(scan.brain), back.shape)
    np.testing.assert_allclose(back[where], images[crop][where], rtol=1e-5, atol=1e-2)
    if scheme != NO_NORM:
        assert not np.allclose(scan.images[where], images[crop][where])  # something was undone


def test_resampling_to_2mm_gives_new_shape():
    images, brain, tissue = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((2.0, 2.0, 2.0)), brain, tissue)
    expected = new_shape(tuple(scan.cropped_shape), [1.0] * 3, [2.0] * 3)
    assert scan.model_shape == expected
    assert scan.images.shape == (2, *expected)
    assert list(scan.brain.shape) == expected and list(scan.tissue.shape) == expected
    assert scan.tissue.dtype == np.uint8 and set(np.unique(scan.tissue)) <= {0, 1, 2, 3}
    assert scan.brain.sum() == pytest.approx(brain.sum() / 8, rel=0.1)
    assert scan.original_shape == list(images.shape[1:]) and scan.target_spacing == [2.0] * 3


# ------------------------------------------------------------------------------------- paste_back


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_paste_back_unedited_and_unchanged_is_bitwise_original(dtype):
    images, brain, _ = phantom()
    original = images.astype(dtype)
    scan = to_model_space(original, (1.0, 1.0, 1.0), make_plans((2.0, 2.0, 2.0)), brain)
    out = paste_back(original, scan.images.copy(), np.zeros(scan.model_shape, bool), scan)
    assert out.dtype == original.dtype and out is not original
    assert out.tobytes() == original.tobytes()


def _blob_edit(original, spacing, target, shift=3.0, radius=3.0, margin=2):
    images, brain, _ = phantom(spacing=spacing) if original is None else original
    scan = to_model_space(images, spacing, make_plans(target), brain)
    centre = [int(round(c)) for c in ndimage.center_of_mass(scan.brain)]
    blob = ball(scan.model_shape, centre, radius) & scan.brain
    edited = scan.images.copy()
    edited[:, blob] += shift
    out = paste_back(images, edited, blob, scan, margin_voxels=margin)
    return images, brain, scan, blob, out


@pytest.mark.parametrize("spacing, target", [((1.0, 1.0, 1.0), (2.0, 2.0, 2.0)),
                                             ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
                                             ((3.0, 1.0, 1.0), (1.5, 1.5, 1.5))])
def test_paste_back_changes_only_near_the_edit(spacing, target):
    margin = 2
    images, brain, scan, blob, out = _blob_edit(None, spacing, target, margin=margin)
    blob_original = region_to_original(blob, scan).astype(bool)
    assert blob_original.sum() > 10
    # resampling support on the original grid: one model voxel (linear footprint) in original voxels, rounded up
    support = int(np.ceil(max(t / s for s, t in zip(spacing, target)))) + 1
    distance = ndimage.distance_transform_cdt(~blob_original, metric="chessboard")
    far = distance > margin + support
    assert far.sum() > 0.5 * far.size
    for channel in range(2):
        assert out[channel][far].tobytes() == images[channel][far].tobytes()
        inner = ndimage.binary_erosion(blob_original, iterations=1)
        assert np.all(out[channel][blob_original] != images[channel][blob_original])
        # the edit moved intensities up by ~shift standard deviations
        std = scan.normalization[channel]["std"]
        gain = (out[channel][inner] - images[channel][inner]).mean() / std
        assert 2.0 < gain < 4.0
    differs = np.any(out != images, axis=0)
    assert differs.sum() < 0.1 * differs.size
    assert np.all(distance[differs] <= margin + support)
    assert not np.any(differs & ~brain)  # z-score with brain mask: nothing written outside the brain


def test_edit_at_the_brain_edge_leaves_outside_the_brain_alone():
    """Z-score channels with the brain mask are 0 outside the brain in model space: nothing is written there."""
    images, brain, _ = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((2.0, 2.0, 2.0)), brain)
    edge = scan.brain & ~ndimage.binary_erosion(scan.brain)
    centre = np.argwhere(edge)[len(np.argwhere(edge)) // 2]
    blob = ball(scan.model_shape, centre, 3)
    edited = scan.images.copy()
    edited[:, blob] += 3.0
    out = paste_back(images, edited, blob, scan)
    differs = np.any(out != images, axis=0)
    assert differs.any()
    assert not np.any(differs & ~brain)
    # a channel without brain masking is written outside the brain too
    plans = make_plans((2.0, 2.0, 2.0), (RESCALE_0_1, RESCALE_0_1), use_brain_mask=False)
    scan = to_model_space(images, (1.0, 1.0, 1.0), plans, brain)
    edited = scan.images.copy()
    edited[:, blob] += 0.5
    out = paste_back(images, edited, blob, scan)
    assert np.any(np.any(out != images, axis=0) & ~brain)


def test_margin_zero_stays_within_the_footprint():
    _, _, scan, blob, out0 = _blob_edit(None, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), margin=0)
    images, _, _, _, out3 = _blob_edit(None, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), margin=3)
    assert np.any(out0 != images, axis=0).sum() < np.any(out3 != images, axis=0).sum()


def test_the_margin_is_the_whole_cube_around_the_change_on_the_same_grid():
    """One changed voxel, the model grid the scan's own, margin 2, the edit pasted as it is (not as a change): the
    5 x 5 x 5 cube around the voxel takes the edited values, nothing else changes."""
    images, brain, _ = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.0, 1.0, 1.0), use_brain_mask=False), brain)
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(scan.brain))
    changed = np.zeros(scan.model_shape, bool)
    changed[centre] = True
    out = paste_back(images, scan.images + 1.0, changed, scan, margin_voxels=2, as_change=False)
    moved = np.any(out != images, axis=0)
    offset = [a for a, _ in scan.crop_bbox]
    cube = tuple(slice(c + o - 2, c + o + 3) for c, o in zip(centre, offset))
    assert moved.sum() == 125 and moved[cube].all()


def test_integer_originals_stay_integer_and_clip():
    images, brain, _ = phantom()
    original = np.round(images).astype(np.int16)
    images_, brain_, scan, blob, out = _blob_edit((original, brain, None), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0),
                                                  shift=1e4)
    assert out.dtype == np.int16
    blob_original = region_to_original(blob, scan).astype(bool)
    assert np.all(out[:, blob_original] == np.iinfo(np.int16).max)  # clipped, not wrapped
    # a modest edit rounds to integers
    _, _, _, _, out_small = _blob_edit((original, brain, None), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), shift=1.0)
    assert out_small.dtype == np.int16
    assert np.any(out_small != original) and out_small.max() < np.iinfo(np.int16).max


def test_paste_back_uses_zooms_grid_alignment():
    """Writing back everything equals ndimage.zoom(grid_mode=True) to the cropped shape, and the round trip of a
    smooth image returns it (a half-voxel misalignment would not)."""
    shape = (30, 34, 32)
    grid = np.indices(shape, dtype=float)
    smooth = (1000 + 200 * np.sin(grid[0] / 5) + 150 * np.cos(grid[1] / 6) + 100 * np.sin(grid[2] / 4 + 1))
    images = smooth[None].astype(np.float32)
    brain = np.ones(shape, bool)
    brain[0] = brain[-1] = False  # crop box smaller than the array
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.7, 1.7, 1.7), (NO_NORM,)), brain)
    crop = bbox_slices(scan.crop_bbox)
    out = paste_back(images, scan.images, np.ones(scan.model_shape, bool), scan, margin_voxels=0, as_change=False)
    factors = [c / m for c, m in zip(scan.cropped_shape, scan.model_shape)]
    zoomed = ndimage.zoom(scan.images[0].astype(np.float64), factors, order=3, mode="nearest", grid_mode=True)
    assert list(zoomed.shape) == scan.cropped_shape
    np.testing.assert_allclose(out[0][crop], zoomed, rtol=0, atol=1e-2)
    assert out[0][0].tobytes() == images[0][0].tobytes()  # outside the crop box: untouched
    interior = (slice(3, -3),) * 3
    error = np.abs(out[0][crop][interior] - images[0][crop][interior]).max()
    shifted = np.abs(np.roll(images[0][crop], 1, axis=0)[interior] - images[0][crop][interior]).max()
    assert error < 0.25 * shifted


def test_paste_back_small_edit_on_1mm_brain_is_fast():
    rng = np.random.default_rng(0)
    shape, target = (180, 210, 170), (1.2, 1.2, 1.2)
    original = rng.integers(0, 1000, size=(2, *shape), dtype=np.int16)
    model_shape = new_shape(shape, [1.0] * 3, list(target))
    scan = ModelSpaceScan(
        images=rng.normal(size=(2, *model_shape)).astype(np.float32), brain=np.ones(model_shape, bool), tissue=None,
        crop_bbox=[[0, s] for s in shape], original_shape=list(shape), original_spacing=[1.0] * 3,
        target_spacing=list(target), cropped_shape=list(shape),
        normalization=[{"channel": c, "scheme": ZSCORE, "use_brain_mask": False, "mean": 500.0, "std": 100.0}
                       for c in range(2)],
    )
    changed = ball(model_shape, [m // 2 for m in model_shape], 6)
    start = time.perf_counter()
    out = paste_back(original, scan.images, changed, scan, as_change=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    differs = np.any(out != original, axis=0)
    assert 0 < differs.sum() < 20_000


def test_paste_back_rejects_wrong_shapes():
    images, brain, _ = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((2.0, 2.0, 2.0)), brain)
    with pytest.raises(ValueError):
        paste_back(images, scan.images[:, :-1], np.zeros(scan.model_shape, bool), scan)
    with pytest.raises(ValueError):
        paste_back(images[:, :-1], scan.images, np.zeros(scan.model_shape, bool), scan)
    edited = scan.images.copy()
    blob = ball(scan.model_shape, [m // 2 for m in scan.model_shape], 2)
    edited[:, blob] = np.nan
    with pytest.raises(ValueError):
        paste_back(images, edited, blob, scan)


# ------------------------------------------------------------------------------------- region_to_original


@pytest.mark.parametrize("spacing, target", [((5.0, 1.0, 1.0), (2.5, 1.5, 1.5)),  # thick slices: nearest in z
                                             ((2.0, 0.8, 1.2), (1.0, 1.6, 1.6)),
                                             ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))])
def test_region_to_original_lands_at_the_right_place(spacing, target):
    shape = tuple(max(16, int(round(60 / s))) for s in spacing)
    images, brain, _ = phantom(shape=shape, spacing=spacing)
    scan = to_model_space(images, spacing, make_plans(target), brain)
    labels = np.zeros(scan.model_shape, np.uint8)
    m = np.array(scan.model_shape)
    centres = {1: m * [0.4, 0.45, 0.4], 2: m * [0.6, 0.55, 0.62]}
    for value, centre in centres.items():
        labels[ball(scan.model_shape, centre, 4) & (labels == 0)] = value
    mapped = region_to_original(labels, scan)
    assert mapped.shape == tuple(scan.original_shape) and mapped.dtype == labels.dtype
    outside = np.ones(mapped.shape, bool)
    outside[bbox_slices(scan.crop_bbox)] = False
    assert not mapped[outside].any()
    for value in centres:
        assert (mapped == value).any()
        expected = model_to_original_coordinate(ndimage.center_of_mass(labels == value), scan)
        actual = np.array(ndimage.center_of_mass(mapped == value))
        assert np.all(np.abs(actual - expected) <= 1.0), (value, actual, expected)
        # volume in mm^3 is preserved roughly
        volume_model = (labels == value).sum() * np.prod(
            [s * c / n for s, c, n in zip(spacing, scan.cropped_shape, scan.model_shape)])
        volume_original = (mapped == value).sum() * np.prod(spacing)
        assert volume_original == pytest.approx(volume_model, rel=0.35)


# ------------------------------------------------------------------------------------- patches


def test_extract_and_insert_patch_at_the_border_round_trip():
    rng = np.random.default_rng(1)
    array = rng.normal(size=(2, 20, 22, 24)).astype(np.float32)
    centre, size = (1, 21, 5), (8, 8, 8)
    patch = extract_patch(array, centre, size, fill=-7.0)
    assert patch.shape == (2, 8, 8, 8) and patch.dtype == array.dtype
    inside = model_crop(array.shape, centre, size)
    assert inside == (slice(0, 5), slice(17, 22), slice(1, 9))
    # start = centre - size // 2 = (-3, 17, 1): the first 3 z-planes and last 3 y-rows are outside
    np.testing.assert_array_equal(patch[:, 3:, :5, :], array[(slice(None), *inside)])
    assert np.all(patch[:, :3] == -7.0) and np.all(patch[:, :, 5:] == -7.0)
    # inserting back writes only the inside part
    target = np.zeros_like(array)
    assert insert_patch(target, patch, centre) is target
    expected = np.zeros_like(array)
    expected[(slice(None), *inside)] = array[(slice(None), *inside)]
    np.testing.assert_array_equal(target, expected)
    again = array.copy()
    insert_patch(again, extract_patch(again, centre, size, fill=0), centre)
    assert again.tobytes() == array.tobytes()


def test_patch_entirely_outside_is_fill_and_insert_is_a_no_op():
    array = np.arange(10 * 10 * 10, dtype=np.int32).reshape(10, 10, 10)
    patch = extract_patch(array, (30, 5, 5), (4, 4, 4), fill=-1)
    assert np.all(patch == -1)
    assert array[model_crop(array.shape, (30, 5, 5), (4, 4, 4))].size == 0
    before = array.copy()
    insert_patch(array, np.full((4, 4, 4), 99, np.int32), (30, 5, 5))
    np.testing.assert_array_equal(array, before)
    # an odd-sized patch fully inside is centred: centre voxel lands at index size // 2
    patch = extract_patch(array, (4, 5, 6), (5, 5, 5))
    assert patch[2, 2, 2] == array[4, 5, 6]


def test_paste_back_as_change_leaves_an_unedited_region_exactly_original():
    images, brain, _ = phantom()
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((2.0, 2.0, 2.0)), brain)
    changed = np.zeros(scan.model_shape, bool)
    centre = [n // 2 for n in scan.model_shape]
    changed[tuple(slice(c - 1, c + 2) for c in centre)] = True
    same = paste_back(images, scan.images.copy(), changed, scan)  # nothing really changed
    np.testing.assert_allclose(same, images, atol=1e-3)
    edited = scan.images.copy()
    edited[:, changed] += 1.0
    out = paste_back(images, edited, changed, scan)
    assert (out > images + 1e-3).any()


def test_each_given_lesion_gets_a_patch_of_its_own_without_its_neighbours():
    """Two lesions close enough to share a patch: each patch mask holds its own lesion only, centred on it."""
    from lesiongen.inference.synthesis import _given_lesions

    images = np.ones((2, 24, 24, 24), np.float32)
    scan = to_model_space(images, (1.0, 1.0, 1.0), make_plans((1.0, 1.0, 1.0)), np.ones((24, 24, 24), bool))
    label = np.zeros((24, 24, 24), np.uint8)
    label[10:13, 10:13, 8:11] = 1
    label[10:13, 10:13, 13:16] = 1  # two voxels of background between them along x
    lesions = _given_lesions(label, scan, [16, 16, 16])
    assert [(value, centre.tolist()) for value, centre, _ in lesions] == [(1, [11, 11, 9]), (1, [11, 11, 14])]
    for _, centre, mask in lesions:
        assert int(mask.sum()) == 27 and mask[8 - 1:8 + 2, 8 - 1:8 + 2, 8 - 1:8 + 2].all()
