"""Images keep their geometry through read/write, for every format and both back-ends."""

import numpy as np
import pytest

from lesiongen.io.images import ImageGeometry, read_geometry, read_image, write_image
from lesiongen.utilities.errors import FileError


def _oblique_geometry(shape):
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return ImageGeometry(spacing=(0.9, 1.1, 2.5), origin=(-90.5, 12.25, 30.0),
                         direction=tuple(rotation.ravel()), shape=shape)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_sitk_round_trip_keeps_data_and_geometry(tmp_path, ending, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((5, 7, 9)) * 100).astype(dtype)
    geometry = _oblique_geometry(array.shape)
    path = tmp_path / f"img{ending}"
    write_image(path, array, geometry)
    back, geo = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    assert geo.matches(geometry, rtol=1e-6, atol=1e-6) is None
    assert read_geometry(path).matches(geometry, rtol=1e-6, atol=1e-6) is None
    assert not list(tmp_path.glob(".*partial*")), "temporary file left behind"


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nibabel_reads_what_sitk_writes_and_back(tmp_path, ending):
    array = np.arange(5 * 7 * 9, dtype=np.float32).reshape(5, 7, 9)
    geometry = _oblique_geometry(array.shape)
    write_image(tmp_path / f"a{ending}", array, geometry)  # SimpleITK
    back, geo = read_image(tmp_path / f"a{ending}", reader="NibabelIO")
    np.testing.assert_array_equal(back, array)
    assert geo.matches(geometry, rtol=1e-5, atol=1e-5) is None
    write_image(tmp_path / f"b{ending}", back, geo, reader="NibabelIO")
    again, geo2 = read_image(tmp_path / f"b{ending}")  # SimpleITK reads nibabel's output identically
    np.testing.assert_array_equal(again, array)
    assert geo2.matches(geometry, rtol=1e-5, atol=1e-5) is None


def test_geometry_mismatch_messages():
    a = ImageGeometry.simple((4, 5, 6), (2.0, 1.0, 1.0))
    assert a.matches(a) is None
    assert "shape" in a.matches(a.with_shape((4, 5, 7)))
    b = ImageGeometry.simple((4, 5, 6), (2.5, 1.0, 1.0))
    assert "spacing" in a.matches(b)
    c = ImageGeometry.simple((4, 5, 6), (2.0, 1.0, 1.0), origin_xyz=(3.0, 0.0, 0.0))
    assert "origin" in a.matches(c)
    d = ImageGeometry(a.spacing, a.origin, (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), a.shape)
    assert "direction" in a.matches(d)


def test_unreadable_and_unsupported_files_raise_file_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(FileError, match="broken.nii.gz"):
        read_image(bad)
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(FileError, match="unsupported"):
        read_image(other)
    with pytest.raises(FileError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_files_are_reported(tmp_path, ending):
    # ITK itself reads truncated NIfTI silently, zero-filling the missing voxels
    array = np.random.default_rng(1).random((20, 20, 20)).astype(np.float32)
    path = tmp_path / f"t{ending}"
    write_image(path, array, ImageGeometry.simple(array.shape, (1, 1, 1)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(FileError, match="truncated"):
        read_image(path)


def test_2d_and_4d_are_rejected(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(tmp_path / "flat.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False),
                    str(tmp_path / "time.nii.gz"))
    with pytest.raises(FileError, match="2D"):
        read_geometry(tmp_path / "flat.nii.gz")
    with pytest.raises(FileError, match="4D"):
        read_image(tmp_path / "time.nii.gz")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_and_inf_survive_reading(tmp_path, ending):
    # ITK alone turns NaN into 0 when reading NIfTI, which would hide broken scans
    array = np.ones((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 2] = np.inf
    write_image(tmp_path / f"n{ending}", array, ImageGeometry.simple(array.shape, (1, 1, 1)))
    back, _ = read_image(tmp_path / f"n{ending}")
    assert np.isnan(back[1, 2, 3]) and np.isinf(back[2, 2, 2])
