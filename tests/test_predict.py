"""lesiongen_predict in every mode: geometry (oblique, .nrrd), dtype, atomic outputs, --continue, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import TINY, TINY_NAME, folder_digest
from lesiongen.cli import predict as predict_cli
from lesiongen.cli import train as train_cli
from lesiongen.io.images import ImageGeometry, read_image, write_image


def train(*args: str) -> None:
    assert train_cli.main([str(TINY.dataset_id), *args, "-device", "cpu"]) == 0


@pytest.fixture(scope="module")
def models(tiny_preprocessed):
    train("spheremask", "0")
    train("inpaint", "0", "--steps", "2")
    train("seg", "0", "--steps", "2")
    return tiny_preprocessed


@pytest.fixture(scope="module")
def oblique_inputs(models, tmp_path_factory):
    """The test scan as int16 .nrrd with an oblique direction, plus its label, brain mask and tissue map."""
    raw = models["raw"] / TINY_NAME
    root = tmp_path_factory.mktemp("oblique")
    folders = {name: root / name for name in ("images", "labels", "brain", "tissue")}
    for folder in folders.values():
        folder.mkdir()
    direction = Rotation.from_euler("xyz", [12, -7, 20], degrees=True).as_matrix().ravel()
    for channel in range(2):
        image, geometry = read_image(raw / "imagesTs" / f"test_000_{channel:04d}.nii.gz")
        oblique = ImageGeometry(geometry.spacing, (11.5, -3.25, 40.0), tuple(direction), geometry.shape)
        write_image(folders["images"] / f"scan_{channel:04d}.nrrd", np.rint(image * 100).astype(np.int16), oblique)
    label, _ = read_image(raw / "labelsTs" / "test_000.nii.gz")
    write_image(folders["labels"] / "scan.nrrd", label.astype(np.uint8), oblique)
    brain = (image != 0).astype(np.uint8)
    write_image(folders["brain"] / "scan.nrrd", brain, oblique)
    write_image(folders["tissue"] / "scan.nrrd", np.where(brain > 0, 2, 0).astype(np.uint8), oblique)
    return folders, oblique


def predict(*args) -> int:
    return predict_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-device", "cpu", *map(str, args)])


def test_seg_keeps_oblique_nrrd_geometry_and_saves_probabilities(oblique_inputs, tmp_path):
    folders, geometry = oblique_inputs
    assert predict("-i", folders["images"], "-o", tmp_path, "-m", "seg", "--save_probabilities") == 0
    label, written = read_image(tmp_path / "scan.nrrd")
    assert written.matches(geometry) is None and written.direction == pytest.approx(geometry.direction)
    assert label.shape == geometry.shape
    with np.load(tmp_path / "scan.npz") as data:
        probabilities = data["probabilities"].astype(np.float32)
    assert probabilities.shape == (2, *geometry.shape)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-2)


def test_synth_keeps_geometry_dtype_and_far_voxels(oblique_inputs, tmp_path):
    folders, geometry = oblique_inputs
    before = folder_digest(folders["images"].parent)
    assert predict("-i", folders["images"], "-o", tmp_path, "-m", "synth", "--masks", "spheremask",
                   "--n_lesions", "2", "--brain_masks", folders["brain"], "--tissue", folders["tissue"],
                   "--n_variants", "2", "--preview") == 0
    assert folder_digest(folders["images"].parent) == before  # inputs untouched
    original, _ = read_image(folders["images"] / "scan_0001.nrrd")
    for variant in range(2):
        image, written = read_image(tmp_path / f"scan_syn{variant}_0001.nrrd")
        label, _ = read_image(tmp_path / "labels" / f"scan_syn{variant}.nrrd")
        assert written.matches(geometry) is None and image.dtype == np.int16
        assert label.any()
        near = ndimage.binary_dilation(label > 0, iterations=5)
        assert np.array_equal(image[~near], original[~near])
    assert (tmp_path / "previews" / "scan_syn0.png").is_file() and (tmp_path / "previews" / "gallery.png").is_file()


def test_remove_and_continue(oblique_inputs, tmp_path, capsys):
    folders, geometry = oblique_inputs
    args = ["-i", folders["images"], "-o", tmp_path, "-m", "remove", "--labels", folders["labels"]]
    assert predict(*args) == 0
    healed, written = read_image(tmp_path / "scan_0001.nrrd")
    original, _ = read_image(folders["images"] / "scan_0001.nrrd")
    label, _ = read_image(folders["labels"] / "scan.nrrd")
    assert written.matches(geometry) is None
    assert (healed[label > 0] != original[label > 0]).any()
    near = ndimage.binary_dilation(label > 0, iterations=5)
    assert np.array_equal(healed[~near], original[~near])
    capsys.readouterr()
    assert predict(*args, "--continue") == 0
    assert "0 case(s) written" in capsys.readouterr().out


def test_output_over_input_is_refused(oblique_inputs, capsys):
    folders, _ = oblique_inputs
    before = folder_digest(folders["images"])
    assert predict("-i", folders["images"], "-o", folders["images"], "-m", "remove", "--labels",
                   folders["labels"]) == 1
    err = capsys.readouterr().err
    assert "output folder is the input folder" in err and "Traceback" not in err
    assert folder_digest(folders["images"]) == before


def test_missing_channel_is_one_line_and_writes_nothing(oblique_inputs, tmp_path, capsys):
    folders, _ = oblique_inputs
    broken = tmp_path / "in"
    broken.mkdir()
    (broken / "scan_0000.nrrd").write_bytes((folders["images"] / "scan_0000.nrrd").read_bytes())
    out = tmp_path / "out"
    assert predict("-i", broken, "-o", out, "-m", "seg") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing channel(s) [1]" in err[0]
    assert not out.exists()
