"""The lesion patches as trainers load them, and the patch edits they share: lesions filled with their
surroundings' median, a lesion's shape moved onto healthy brain."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesiongen.preprocessing.lesion_patches import fill_lesions, load_lesion_patches, relocate_shape
from lesiongen.preprocessing.storage import CHECKSUMS, checksum_files, save_array
from lesiongen.utilities.files import write_json


def test_a_loaded_patchs_brain_is_its_nonzero_tissue_and_its_lesions_not_padding_or_background(tmp_path):
    """Normalisation leaves zeros outside the brain and padding is -1 in the mask: the brain is the non-zero voxels
    that are not padding, plus the lesion voxels (here one where the image is 0)."""
    images = np.zeros((1, 1, 4, 4, 4), np.float32)
    images[0, 0, :, :, :3] = 0.5
    masks = np.zeros((1, 4, 4, 4), np.int8)
    masks[0, :, :, 2:] = -1  # padding beyond the scan, where the image is non-zero in x = 2
    masks[0, 1, 1, 1] = 1
    masks[0, 2, 2, 3] = 1  # (impossible in practice, but a lesion is always brain)
    names = ["c_images.b2nd", "c_masks.b2nd"]
    save_array(tmp_path / names[0], images)
    save_array(tmp_path / names[1], masks)
    write_json(tmp_path / "c_patches.json", {"case_id": "c", "n_patches": 1,
                                              CHECKSUMS: checksum_files(tmp_path, names)})
    patches = load_lesion_patches(tmp_path, ["c"])
    expected = np.zeros((4, 4, 4), bool)
    expected[:, :, :2] = True
    expected[2, 2, 3] = True
    np.testing.assert_array_equal(patches.brain[0], expected)
    np.testing.assert_array_equal(patches.masks[0], np.clip(masks[0], 0, None))


def test_a_filled_lesion_takes_the_median_of_the_healthy_voxels_of_its_tissue_class_around_it():
    """Two tissue classes of random intensity and a bright lesion across both: the lesion and a voxel around it take,
    per class and channel, the median of that class's voxels outside the filled region; the rest is unchanged."""
    rng = np.random.default_rng(0)
    image = rng.random((2, 10, 10, 10)).astype(np.float32)
    image[1] += 3
    tissue = np.ones((10, 10, 10), np.uint8)
    tissue[:, :, 5:] = 2
    brain = np.ones((10, 10, 10), bool)
    lesion = np.zeros((10, 10, 10), np.uint8)
    lesion[3:7, 3:7, 2:8] = 1
    image[:, lesion > 0] = 9.0
    out = fill_lesions(image, lesion, brain, tissue)
    region = ndimage.binary_dilation(lesion > 0)
    for cls in (1, 2):
        target, source = region & (tissue == cls), ~region & (tissue == cls)
        for c in range(2):
            assert np.all(out[c][target] == np.median(image[c][source]))
    np.testing.assert_array_equal(out[:, ~region], image[:, ~region])


def test_a_relocated_shape_lies_wholly_in_the_brain_off_the_avoided_voxels_and_moves_both_ways():
    shape = np.zeros((12, 12, 12), bool)
    shape[5:7, 5:7, 5:7] = True
    brain = np.zeros((12, 12, 12), bool)
    brain[2:10, 2:10, 2:10] = True
    avoid = np.zeros((12, 12, 12), bool)
    avoid[2:10, 2:10, 2:4] = True
    rng = np.random.default_rng(0)
    moved = [relocate_shape(shape, avoid, brain, rng, tries=200) for _ in range(200)]
    assert all(m is not None and m.sum() == 8 and brain[m].all() and not (m & avoid).any() for m in moved)
    corners = np.array([np.argwhere(m).min(axis=0) for m in moved]) - 5
    assert (corners.min(axis=0) < 0).all() and (corners.max(axis=0) > 0).all()
