"""Every integrity problem: one line naming the file, exit 1, no traceback, nothing written or changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import folder_digest

from lesiongen.cli.plan_and_preprocess import main_extract_fingerprint
from lesiongen.io.images import ImageGeometry, read_image, write_image

ENDING = ".nii.gz"


def _run(dataset: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main_extract_fingerprint(["-d", "501", "-np", "1", *extra])
    return code, capsys.readouterr().err


def _rewrite(path: Path, transform) -> None:
    array, geometry = read_image(path)
    array, geometry = transform(array, geometry)
    write_image(path, array, geometry)


def _shift_origin(a, g):
    return a, ImageGeometry(g.spacing, (g.origin[0] + 5.0, g.origin[1], g.origin[2]), g.direction, g.shape)


def _change_spacing(a, g):
    return a, ImageGeometry((g.spacing[0] * 1.5, g.spacing[1], g.spacing[2]), g.origin, g.direction, g.shape)


def _change_direction(a, g):
    return a, ImageGeometry(g.spacing, g.origin, (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), g.shape)


def _change_shape(a, g):
    return a[:-1], g.with_shape(a[:-1].shape)


def _put_nan(a, g):
    a = a.astype(np.float32)
    a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2] = np.nan
    return a, g


def _put_label(value):
    def transform(a, g):
        a = a.astype(np.float32)
        a[0, 0, 0] = value
        return a, g
    return transform


def _break(path: Path) -> None:
    path.write_bytes(b"garbage that is no image")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _as_dimension(ndim: int):
    def corrupt(path: Path) -> None:
        shape = (5, 6) if ndim == 2 else (2, 4, 5, 6)
        sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.float32), isVector=False), str(path))
    return corrupt


CASES = {
    # name: (corruption taking the dataset folder, expected file (relative), expected words, needs full check)
    "missing channel": (lambda d: (d / f"imagesTr/demo_000_0001{ENDING}").unlink(),
                        f"imagesTr/demo_000_0001{ENDING}", "missing channel 1", False),
    "extra channel": (lambda d: (d / f"imagesTr/demo_000_0002{ENDING}").write_bytes(
                          (d / f"imagesTr/demo_000_0001{ENDING}").read_bytes()),
                      f"imagesTr/demo_000_0002{ENDING}", "extra channel 2", False),
    "missing label": (lambda d: (d / f"labelsTr/demo_001{ENDING}").unlink(),
                      f"labelsTr/demo_001{ENDING}", "missing label of case demo_001", False),
    "label without image": (lambda d: (d / f"labelsTr/stray{ENDING}").write_bytes(
                                (d / f"labelsTr/demo_001{ENDING}").read_bytes()),
                            f"labelsTr/stray{ENDING}", "without a matching image", False),
    "shape mismatch": (lambda d: _rewrite(d / f"labelsTr/demo_002{ENDING}", _change_shape),
                       f"labelsTr/demo_002{ENDING}", "shape", False),
    "spacing mismatch": (lambda d: _rewrite(d / f"imagesTr/demo_002_0001{ENDING}", _change_spacing),
                         f"imagesTr/demo_002_0001{ENDING}", "spacing", False),
    "direction mismatch": (lambda d: _rewrite(d / f"labelsTr/demo_000{ENDING}", _change_direction),
                           f"labelsTr/demo_000{ENDING}", "direction", False),
    "origin mismatch": (lambda d: _rewrite(d / f"tissueTr/demo_001{ENDING}", _shift_origin),
                        f"tissueTr/demo_001{ENDING}", "origin", False),
    "nan in image": (lambda d: _rewrite(d / f"imagesTr/demo_001_0000{ENDING}", _put_nan),
                     f"imagesTr/demo_001_0000{ENDING}", "NaN or Inf", False),
    "unexpected label value": (lambda d: _rewrite(d / f"labelsTr/demo_003{ENDING}", _put_label(3)),
                               f"labelsTr/demo_003{ENDING}", "unexpected label value(s) [3]", False),
    "non-integer label": (lambda d: _rewrite(d / f"labelsTr/demo_003{ENDING}", _put_label(0.5)),
                          f"labelsTr/demo_003{ENDING}", "non-integer", False),
    "2D image": (lambda d: _as_dimension(2)(d / f"imagesTr/demo_000_0000{ENDING}"),
                 f"imagesTr/demo_000_0000{ENDING}", "2D", False),
    "4D image": (lambda d: _as_dimension(4)(d / f"labelsTr/demo_000{ENDING}"),
                 f"labelsTr/demo_000{ENDING}", "4D", False),
    "unreadable file": (lambda d: _break(d / f"imagesTr/demo_001_0001{ENDING}"),
                        f"imagesTr/demo_001_0001{ENDING}", "unreadable", False),
    "truncated file": (lambda d: _truncate(d / f"imagesTr/demo_002_0000{ENDING}"),
                       f"imagesTr/demo_002_0000{ENDING}", "truncated", False),
    "truncated healthy scan": (lambda d: _truncate(d / f"imagesHealthy/healthy_000_0000{ENDING}"),
                               f"imagesHealthy/healthy_000_0000{ENDING}", "truncated", True),
    "healthy scan with one channel": (lambda d: (d / f"imagesHealthy/healthy_001_0001{ENDING}").unlink(),
                                      f"imagesHealthy/healthy_001_0001{ENDING}", "missing channel 1", False),
    "numTraining mismatch": (lambda d: _edit_json(d, numTraining=9),
                             "dataset.json", "numTraining is 9", False),
    "malformed dataset.json": (lambda d: (d / "dataset.json").write_text("{not json"),
                               "dataset.json", "malformed JSON", False),
    "dataset.json without labels": (lambda d: _edit_json(d, labels=None),
                                    "dataset.json", "'labels' is missing", False),
}


def _edit_json(dataset: Path, **changes) -> None:
    content = json.loads((dataset / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key)
        else:
            content[key] = value
    (dataset / "dataset.json").write_text(json.dumps(content))


@pytest.mark.parametrize("name", list(CASES))
def test_integrity_problem_is_one_clear_line(name, tiny_dataset, lesiongen_folders, capsys):
    corrupt, relative, words, full = CASES[name]
    corrupt(tiny_dataset)
    before = folder_digest(tiny_dataset)
    code, err = _run(tiny_dataset, capsys, *(["--verify_dataset_integrity"] if full else []))
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if str(tiny_dataset / relative) in line]
    assert lines, f"no line names {relative}:\n{err}"
    assert any(words in line for line in lines), err
    assert folder_digest(tiny_dataset) == before, "the raw dataset was changed"
    assert not any(lesiongen_folders["preprocessed"].iterdir()), "something was written"


def test_truncated_healthy_scan_passes_without_full_check(tiny_dataset, lesiongen_folders, capsys):
    # the cheap check reads headers only; the full read is what --verify_dataset_integrity adds
    _truncate(tiny_dataset / f"imagesHealthy/healthy_000_0000{ENDING}")
    code, _ = _run(tiny_dataset, capsys)
    assert code == 0


def test_empty_lesion_masks_are_a_warning_with_count(tiny_dataset, lesiongen_folders, capsys):
    for case in ("demo_001", "demo_002"):
        _rewrite(tiny_dataset / f"labelsTr/{case}{ENDING}", lambda a, g: (np.zeros_like(a), g))
    code, err = _run(tiny_dataset, capsys, "--verify_dataset_integrity")
    assert code == 0, err
    assert "2 lesion case(s) have an empty label map (demo_001, demo_002)" in err
    assert (lesiongen_folders["preprocessed"] / tiny_dataset.name / "dataset_fingerprint.json").is_file()


def test_all_problems_are_listed_in_one_run(tiny_dataset, lesiongen_folders, capsys):
    (tiny_dataset / f"labelsTr/demo_001{ENDING}").unlink()
    _rewrite(tiny_dataset / f"imagesTr/demo_002_0001{ENDING}", _change_spacing)
    code, err = _run(tiny_dataset, capsys)
    assert code == 1
    assert "missing label of case demo_001" in err and "spacing" in err


def test_unknown_dataset_id_is_a_clear_error(lesiongen_folders, capsys):
    code = main_extract_fingerprint(["-d", "777"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no dataset folder with ID 777" in err and "Traceback" not in err


@pytest.mark.parametrize("edit, differs", [
    (lambda g: ImageGeometry(g.spacing, g.origin, (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), g.shape),
     "direction"),  # one axis flipped: the same |direction|, mirrored voxels
    (lambda g: ImageGeometry(g.spacing, (g.origin[0] + 1.5, *g.origin[1:]), g.direction, g.shape), "origin"),
    (lambda g: ImageGeometry(g.spacing, (g.origin[0] + 1e-5, *g.origin[1:]), g.direction, g.shape), None),
])
def test_a_flipped_axis_or_an_origin_half_a_voxel_off_is_another_grid_and_rounding_is_not(edit, differs):
    grid = ImageGeometry((3.0, 3.0, 3.0), (10.0, -20.0, 5.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (8, 8, 8))
    message = grid.matches(edit(grid))
    assert (message is None) if differs is None else message.startswith(differs)
