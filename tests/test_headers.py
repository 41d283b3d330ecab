"""Headers that lie: shape, size and spacing are checked from the header before any voxel is read."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from lesiongen.cli.plan_and_preprocess import main_plan_and_preprocess
from lesiongen.io.dataset import CaseFiles
from lesiongen.io.images import MAX_VOXELS, read_geometry, read_image
from lesiongen.io.integrity import check_case_headers
from lesiongen.utilities.errors import FileError

_DIM_OFFSET = 40  # NIfTI-1: dim[8] int16 at byte 40 of the 348-byte header


def patch_nifti_dims(path: Path, dims: list[int]) -> None:
    """Overwrite ``dim[0..]`` of a NIfTI-1 file in place; the voxel data stays as it was."""
    compressed = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    field = np.frombuffer(bytes(raw[_DIM_OFFSET:_DIM_OFFSET + 16]), dtype="<i2").copy()
    field[:len(dims)] = dims
    raw[_DIM_OFFSET:_DIM_OFFSET + 16] = field.tobytes()
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))


def patch_nifti_x_spacing(path: Path, value: float) -> None:
    """Set the x spacing of a NIfTI-1 file to ``value`` in both pixdim[1] and the sform's first column."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = np.float32(value).tobytes()  # pixdim[1]
    for row in (280, 296, 312):  # srow_x, srow_y, srow_z: their first entry is the x column
        raw[row:row + 4] = np.float32(value if row == 280 else 0.0).tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def tiny_nifti(path: Path, dims: list[int] | None = None, x_spacing: float | None = None) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    if dims is not None:
        patch_nifti_dims(path, dims)
    if x_spacing is not None:
        patch_nifti_x_spacing(path, x_spacing)
    return path


def tiny_itk(path: Path, *replacements: tuple[str, str]) -> Path:
    """A 2x2x2 int16 .nrrd / .mha written uncompressed, with header texts replaced."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(path), useCompression=False)
    data = path.read_bytes()
    for old, new in replacements:
        assert old.encode() in data
        data = data.replace(old.encode(), new.encode(), 1)
    path.write_bytes(data)
    return path


def _message(call, path: Path) -> str:
    with pytest.raises(FileError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    return text


HUGE = [3, 32767, 32767, 32767]

CASES = {
    # name: (writer taking a folder, reader, expected words)
    "nifti huge, SimpleITK": (lambda d: tiny_nifti(d / "a.nii.gz", HUGE), None,
                              "header claims shape (32767, 32767, 32767) — 35,181,150,961,663 voxels"),
    "nifti huge, nibabel": (lambda d: tiny_nifti(d / "a.nii.gz", HUGE), "NibabelIO",
                            "header claims shape (32767, 32767, 32767) — 35,181,150,961,663 voxels"),
    "nifti zero dim, SimpleITK": (lambda d: tiny_nifti(d / "a.nii", [3, 0, 2, 2]), None,
                                  "header claims shape (0, 2, 2) — every dimension must be at least 1"),
    "nifti zero dim, nibabel": (lambda d: tiny_nifti(d / "a.nii.gz", [3, 2, 0, 2]), "NibabelIO",
                                "header claims shape (2, 0, 2) — every dimension must be at least 1"),
    "nifti zero spacing": (lambda d: tiny_nifti(d / "a.nii.gz", x_spacing=0.0), None,
                           "header claims spacing (0, 1, 1) — every spacing must be finite and > 0"),
    "nifti nan spacing": (lambda d: tiny_nifti(d / "a.nii.gz", x_spacing=float("nan")), "NibabelIO",
                          "header claims spacing (nan, 1, 1)"),
    "nrrd huge": (lambda d: tiny_itk(d / "a.nrrd", ("sizes: 2 2 2", "sizes: 100000 100000 3")), None,
                  f"header claims shape (100000, 100000, 3) — 30,000,000,000 voxels, more than the limit of "
                  f"{MAX_VOXELS:,}"),
    "nrrd zero spacing": (lambda d: tiny_itk(d / "a.nrrd", ("space directions: (1,0,0)", "space directions: (0,0,0)")),
                          None, "header claims spacing (0, 1, 1)"),
    "mha huge": (lambda d: tiny_itk(d / "a.mha", ("DimSize = 2 2 2", "DimSize = 4000 4000 4000")), None,
                 "header claims shape (4000, 4000, 4000)"),
    # 1100^3 = 1.33e9 voxels is under the voxel limit; at 8 bytes per voxel it is over the byte limit
    "mha too many bytes": (lambda d: tiny_itk(d / "a.mha", ("DimSize = 2 2 2", "DimSize = 1100 1100 1100"),
                                              ("MET_SHORT", "MET_DOUBLE")), None,
                           "GiB of voxel data, more than the limit of 8 GiB"),
    "mha zero dim": (lambda d: tiny_itk(d / "a.mha", ("DimSize = 2 2 2", "DimSize = 2 2 0")), None,
                     "header claims shape (2, 2, 0) — every dimension must be at least 1"),
    "mha negative spacing": (lambda d: tiny_itk(d / "a.mha", ("ElementSpacing = 1 1 1", "ElementSpacing = 1 -1 1")),
                             None, "header claims spacing (1, -1, 1)"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_lying_header_is_one_line_before_any_voxel_is_read(name, tmp_path):
    write, reader, words = CASES[name]
    path = write(tmp_path)
    for call in (lambda: read_geometry(path, reader), lambda: read_image(path, reader)):
        text = _message(call, path)
        assert words in text, text


def test_integrity_check_reports_a_lying_header_as_a_problem(tmp_path):
    good = tiny_nifti(tmp_path / "case_0000.nii.gz")
    bad = tiny_nifti(tmp_path / "case_0001.nii.gz", HUGE)
    problems = check_case_headers(CaseFiles("case", [good, bad]), None)
    assert len(problems) == 1
    assert problems[0].path == str(bad) and not problems[0].is_warning
    assert problems[0].message.startswith("header claims shape (32767, 32767, 32767)")


def test_plan_and_preprocess_refuses_a_lying_header(tiny_dataset, lesiongen_folders, capsys):
    bad = tiny_dataset / "imagesTr" / "demo_001_0000.nii.gz"
    patch_nifti_dims(bad, HUGE)
    code = main_plan_and_preprocess(["-d", "501", "-np", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "MemoryError" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {bad}: header claims shape (32767, 32767, 32767) — 35,181,150,961,663 voxels, "
                           f"more than the limit of {MAX_VOXELS:,}"]
    assert re.search(r"^1 problem\(s\) found; nothing was written\.$", err, re.M)
    assert not any(lesiongen_folders["preprocessed"].iterdir()), "something was written"
