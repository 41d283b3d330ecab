"""Preview PNGs of synthesis results: small phantoms, low resolution, no model involved."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lesiongen.inference.previews import Lesion, crop_window, gallery, lesion_components, lesion_preview

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which directly follows the signature."""
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _phantom(shape=(24, 32, 32), blobs=(((8, 10, 10), 4.0), ((16, 22, 22), 2.5)), channels=2, seed=0):
    """A noisy two-channel 'brain' and the same scan with bright spherical lesions; returns before, after, label."""
    rng = np.random.default_rng(seed)
    before = rng.normal(100.0, 5.0, size=(channels, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    grid = np.indices(shape)
    for centre, radius in blobs:
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        label[distance <= radius] = 1
    after = before.copy()
    after[:, label > 0] += 80.0
    return before, after, label


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".partial" in p.name]


def test_two_blobs_give_two_rows_and_an_atomic_png(tmp_path):
    before, after, label = _phantom()
    path = tmp_path / "case.png"
    assert lesion_preview(before, after, label, (1.0, 1.0, 1.0), path, channel_names=["T1", "FLAIR"]) == 2
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png"]
    _no_leftovers(tmp_path)


def test_outline_is_drawn_in_red(tmp_path):
    from matplotlib.image import imread

    before, after, label = _phantom()
    path = tmp_path / "case.png"
    lesion_preview(before, after, label, (1.0, 1.0, 1.0), path)
    rgb = imread(path)[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 20


def test_max_lesions_limits_the_rows(tmp_path):
    before, after, label = _phantom()
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert lesion_preview(before, after, label, (1.0, 1.0, 1.0), one, max_lesions=1) == 1
    assert lesion_preview(before, after, label, (1.0, 1.0, 1.0), two, max_lesions=6) == 2
    assert _png_size(one)[1] < _png_size(two)[1]
    with pytest.raises(ValueError):
        lesion_preview(before, after, label, (1.0, 1.0, 1.0), tmp_path / "zero.png", max_lesions=0)


def test_no_lesion_still_writes_a_png(tmp_path):
    before, _, _ = _phantom(blobs=())
    label = np.zeros(before.shape[1:], dtype=np.uint8)
    path = tmp_path / "empty.png"
    assert lesion_preview(before, before, label, (1.0, 1.0, 1.0), path) == 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    _no_leftovers(tmp_path)


def test_anisotropic_spacing_and_3d_input(tmp_path):
    before, after, label = _phantom(shape=(12, 40, 40), blobs=(((6, 20, 20), 3.0),), channels=1)
    path = tmp_path / "aniso.png"
    assert lesion_preview(before[0], after[0], label, (4.0, 0.8, 0.8), path) == 1
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_crop_window_is_physically_square_and_at_least_40_mm():
    lesion = Lesion(component=1, voxels=27, volume_mm3=27.0, centre=(50, 50, 50), bbox=(slice(49, 52),) * 3)
    # largest extent 3 voxels x 4 mm = 12 mm -> 4 x 12 = 48 mm -> 24 mm each side: 6 voxels in z, 30 in y and x
    assert crop_window(lesion, (100, 100, 100), (4.0, 0.8, 0.8)) == (slice(44, 57), slice(20, 81), slice(20, 81))
    # 3 mm extent -> 12 mm is below the 40 mm minimum -> 20 voxels each side, clipped at the border
    assert crop_window(lesion, (60, 100, 100), (1.0, 1.0, 1.0)) == (slice(30, 60), slice(30, 71), slice(30, 71))


def test_components_are_26_connected_sorted_and_measured_in_mm():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[1, 1, 1] = label[2, 2, 2] = 1  # corners touch: one lesion under 26-connectivity
    label[5:8, 5:8, 5:8] = 2  # a larger lesion of another class
    _, lesions = lesion_components(label, (2.0, 1.0, 0.5))
    assert [lesion.voxels for lesion in lesions] == [27, 2]
    assert lesions[0].volume_mm3 == pytest.approx(27.0)
    assert lesions[0].centre == (6, 6, 6)


def test_centre_of_a_ring_lies_on_the_lesion():
    label = np.zeros((5, 21, 21), dtype=np.uint8)
    yy, xx = np.mgrid[:21, :21]
    radius = np.hypot(yy - 10, xx - 10)
    label[2][(radius >= 6) & (radius <= 8)] = 1
    labelled, lesions = lesion_components(label, (1.0, 1.0, 1.0))
    assert len(lesions) == 1
    assert labelled[lesions[0].centre] == lesions[0].component


def test_channel_arguments_are_checked(tmp_path):
    before, after, label = _phantom()
    with pytest.raises(ValueError):
        lesion_preview(before, after, label, (1.0, 1.0, 1.0), tmp_path / "a.png", channel=2)
    with pytest.raises(ValueError):
        lesion_preview(before, after, label, (1.0, 1.0, 1.0), tmp_path / "b.png", channel_names=["FLAIR"])
    with pytest.raises(ValueError):
        lesion_preview(before, after, label[:-1], (1.0, 1.0, 1.0), tmp_path / "c.png")
    assert not list(tmp_path.iterdir())


def test_gallery_grows_with_the_number_of_rows(tmp_path):
    cases = []
    for k in range(5):
        blobs = () if k == 4 else (((6 + k, 10, 10), 2.0 + k),)
        before, after, label = _phantom(shape=(16, 24, 24), blobs=blobs, seed=k)
        cases.append((f"case_{k}", after, label, before))
    spacing = [(2.0, 1.0, 1.0)] * 5

    three = tmp_path / "three.png"
    gallery(cases[:3], spacing[:3], three)
    assert three.read_bytes()[:8] == PNG_SIGNATURE

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    gallery(cases[:2], spacing[:2], small, columns=2)
    gallery(cases, spacing, large, columns=2)  # three rows, the last case without lesions
    (small_w, small_h), (large_w, large_h) = _png_size(small), _png_size(large)
    assert large_h > 2 * small_h
    assert large_w == small_w
    _no_leftovers(tmp_path)

    with pytest.raises(ValueError):
        gallery(cases, spacing[:2], tmp_path / "bad.png")
