"""lesiongen_predict in every mode: geometry (oblique, .nrrd), dtype, atomic outputs, --continue, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import TINY, TINY_NAME, count_inpaint_calls, folder_digest
from lesiongen.cli import predict as predict_cli
from lesiongen.cli import train as train_cli
from lesiongen.io.images import ImageGeometry, read_image, write_image


def train(*args: str) -> None:
    assert train_cli.main([str(TINY.dataset_id), *args, "-device", "cpu"]) == 0


@pytest.fixture(scope="module")
def models(tiny_preprocessed):
    train("spheremask", "0")
    train("ganmask", "0", "--steps", "2")
    train("inpaint", "0", "--steps", "2", "--set", "sampling_steps=4")  # few sampling steps: mechanics only
    train("seg", "0", "--steps", "2", "--set", "mirror_validation=false")  # its validation is tests/test_seg.py's
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


# ---------------------------------------------------------------------------------- self-contained model folders
def test_loading_a_model_writes_nothing_and_leaves_every_rng_alone(models):
    import random

    import torch

    from lesiongen.models.registry import load_trained_model

    before = folder_digest(models["results"])
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    for name in ("spheremask", "ganmask", "inpaint", "seg_none"):
        model = load_trained_model(TINY_NAME, name, "lesiongenPlans", 0, "cpu")
        assert not any(net.training for net in model.networks.values())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    assert random.getstate() == python_state
    assert folder_digest(models["results"]) == before


def test_an_installed_zip_predicts_anywhere_exactly_as_at_home(oblique_inputs, tmp_path, monkeypatch):
    """Train here, zip, install into empty folders (no raw, no preprocessed data), predict: the same outputs (synth
    with spheremask and with ganmask masks)."""
    from lesiongen.cli.model_sharing import main_export, main_install
    from lesiongen.utilities.provenance import sha256_file

    folders, geometry = oblique_inputs
    archive = tmp_path / "models.zip"
    assert main_export(["-d", str(TINY.dataset_id), "-o", str(archive)]) == 0
    synth = ["--n_lesions", "2", "--brain_masks", folders["brain"], "--seed", "3"]
    runs = {"seg": ("seg", ["--disable_tta"]), "remove": ("remove", ["--labels", folders["labels"]]),
            "synth": ("synth", ["--masks", "spheremask", *synth]),
            "synth_ganmask": ("synth", ["--masks", "ganmask", "--tissue", folders["tissue"], *synth])}
    for run, (mode, extra) in runs.items():  # at home, from the results dataset
        assert predict("-i", folders["images"], "-o", tmp_path / "home" / run, "-m", mode, *extra) == 0
    summary = json.loads((tmp_path / "home" / "synth_ganmask" / "synthesis_summary.json").read_text())
    generator = summary["mask_generator"]
    assert generator["kind"] == "ganmask" and generator["sha256"] == sha256_file(Path(generator["checkpoint"]))
    elsewhere = tmp_path / "elsewhere"
    for name in ("raw", "preprocessed", "results"):
        (elsewhere / name).mkdir(parents=True)
        monkeypatch.setenv(f"lesiongen_{name}", str(elsewhere / name))
    assert main_install([str(archive)]) == 0
    installed = elsewhere / "results" / TINY_NAME
    for run, (mode, extra) in runs.items():
        out = tmp_path / "away" / run
        assert predict_cli.main(["-model", str(installed), "-f", "0", "-device", "cpu", "-i", str(folders["images"]),
                                 "-o", str(out), "-m", mode, *map(str, extra)]) == 0
        home_files = sorted(p.relative_to(tmp_path / "home" / run) for p in (tmp_path / "home" / run).rglob("*.nrrd"))
        assert home_files and home_files == sorted(p.relative_to(out) for p in out.rglob("*.nrrd"))
        for name in home_files:
            a, geometry_a = read_image(tmp_path / "home" / run / name)
            b, geometry_b = read_image(out / name)
            assert a.dtype == b.dtype
            assert geometry_b.matches(geometry_a) is None and geometry_b.matches(geometry) is None
            np.testing.assert_array_equal(a, b)
    assert not any((elsewhere / "preprocessed").iterdir()) and not any((elsewhere / "raw").iterdir())


def test_one_model_folder_is_enough_for_seg(oblique_inputs, models, tmp_path):
    folder = models["results"] / TINY_NAME / "seg_none__lesiongenPlans"
    assert predict_cli.main(["-model", str(folder), "-device", "cpu", "-i", str(oblique_inputs[0]["images"]),
                             "-o", str(tmp_path), "-m", "seg"]) == 0
    assert (tmp_path / "scan.nrrd").is_file()


def _copies_of_the_scan(folders, target: Path, cases) -> Path:
    """The oblique test scan once per case name in ``target`` (a folder of several input cases)."""
    target.mkdir()
    for case in cases:
        for channel in range(2):
            shutil.copyfile(folders["images"] / f"scan_{channel:04d}.nrrd", target / f"{case}_{channel:04d}.nrrd")
    return target


def test_parts_split_the_cases_between_runs(oblique_inputs, tmp_path, capsys):
    many = _copies_of_the_scan(oblique_inputs[0], tmp_path / "in", ("a", "b", "c"))
    for part in range(2):
        assert predict("-i", many, "-o", tmp_path / "out", "-m", "seg", "--disable_tta", "--num_parts", "2",
                       "--part_id", part) == 0
        written = sorted(p.name for p in (tmp_path / "out").glob("*.nrrd"))
        assert written == (["a.nrrd", "c.nrrd"] if part == 0 else ["a.nrrd", "b.nrrd", "c.nrrd"])
    assert predict("-i", many, "-o", tmp_path / "x", "-m", "seg", "--num_parts", "2", "--part_id", "2") == 1
    assert "--part_id must be 0-1" in capsys.readouterr().err


def test_batch_scans_shares_the_inpainter_between_scans_and_changes_no_output(oblique_inputs, tmp_path,
                                                                               monkeypatch):
    """--batch_scans 2 on three scans: scans a and b go through the inpainter together (fewer calls, as many
    patches) and every written file is the one --batch_scans 1 writes."""
    many = _copies_of_the_scan(oblique_inputs[0], tmp_path / "in", ("a", "b", "c"))
    calls = count_inpaint_calls(monkeypatch)
    patches = {}
    for batch in (1, 2):
        calls.clear()
        assert predict("-i", many, "-o", tmp_path / f"out{batch}", "-m", "synth", "--masks", "spheremask",
                       "--n_lesions", "2", "--batch_scans", batch) == 0
        patches[batch] = list(calls)
    assert sum(patches[2]) == sum(patches[1]) == 6 and len(patches[2]) < len(patches[1])
    for case in ("a", "b", "c"):
        label, _ = read_image(tmp_path / "out1" / "labels" / f"{case}_syn0.nrrd")
        batched, _ = read_image(tmp_path / "out2" / "labels" / f"{case}_syn0.nrrd")
        assert label.any() and np.array_equal(label, batched)
        for channel in range(2):
            alone, _ = read_image(tmp_path / "out1" / f"{case}_syn0_{channel:04d}.nrrd")
            together, _ = read_image(tmp_path / "out2" / f"{case}_syn0_{channel:04d}.nrrd")
            assert np.abs(alone.astype(int) - together.astype(int)).max() <= 1  # int16 rounding of float noise
    assert not np.array_equal(*(read_image(tmp_path / "out1" / f"{c}_syn0_0000.nrrd")[0] for c in "ab"))


def test_wrong_channel_count_names_the_models_dataset_json(oblique_inputs, tmp_path, capsys):
    folders, _ = oblique_inputs
    one = tmp_path / "in"
    one.mkdir()
    for channel in range(3):
        (one / f"scan_{channel:04d}.nrrd").write_bytes((folders["images"] / "scan_0000.nrrd").read_bytes())
    assert predict("-i", one, "-o", tmp_path / "out", "-m", "seg") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unexpected channel(s) [2]" in line and "seg_none__lesiongenPlans/dataset.json" in line
    assert "0000 T1, 0001 FLAIR" in line


def test_kill_9_during_prediction_then_continue_leaves_no_partial(oblique_inputs, models, tmp_path):
    """SIGKILL a prediction at a random moment, rerun with --continue: every output complete, no leftovers."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    folders, _ = oblique_inputs
    many = tmp_path / "in"
    many.mkdir()
    for case in ("a", "b", "c", "d"):
        for channel in range(2):
            shutil.copyfile(folders["images"] / f"scan_{channel:04d}.nrrd", many / f"{case}_{channel:04d}.nrrd")
    out = tmp_path / "out"
    args = ["-d", str(TINY.dataset_id), "-f", "0", "-device", "cpu", "-i", str(many), "-o", str(out), "-m", "seg",
            "--save_probabilities", "--disable_tta"]
    env = {**os.environ, **{f"lesiongen_{k}": str(v) for k, v in models.items()}}
    process = subprocess.Popen([sys.executable, "-m", "lesiongen.cli.predict", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "a.npz").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))  # somewhere in the middle of writing the other cases
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert predict_cli.main([*args, "--continue"]) == 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "a partial file survived the rerun"
    for case in ("a", "b", "c", "d"):
        label, _ = read_image(out / f"{case}.nrrd")
        with np.load(out / f"{case}.npz") as data:
            assert data["probabilities"].shape[1:] == label.shape



# ---------------------------------------------------------------------------------- brain extraction
SEG_FOLDER = "seg_none__lesiongenPlans"  # one foreground class: usable as a brain model once its network is an oracle


def _oracle_brain(monkeypatch) -> None:
    """Every Segmenter becomes a brain-extraction oracle: in model space the middle half of each axis is brain but
    for a cavity at its centre, plus a stray blob in a corner, so cleaning has a known answer (the filled box)."""
    from lesiongen.models.segmenter import Segmenter

    def oracle(self, images, mirror=True):
        shape = images.shape[1:]
        brain = np.zeros(shape, dtype=bool)
        brain[tuple(slice(s // 4, s - s // 4) for s in shape)] = True
        brain[tuple(slice(s // 2 - 1, s // 2 + 1) for s in shape)] = False  # a ventricle-like cavity
        brain[:2, :2, :2] = True  # a piece of scalp the network mistook for brain
        return np.stack([~brain, brain]).astype(np.float32)

    monkeypatch.setattr(Segmenter, "predict_probabilities", oracle)


def _expected_brain(images_folder: Path, plans) -> np.ndarray:
    """The oracle's cleaned mask on the input grid: its box, cavity filled, within the scan's nonzero crop."""
    from lesiongen.inference.scan_space import to_model_space

    channels = [read_image(images_folder / f"scan_{c:04d}.nrrd") for c in range(2)]
    images = np.stack([image.astype(np.float32) for image, _ in channels])
    scan = to_model_space(images, channels[0][1].spacing_zyx, plans, None)
    assert list(scan.images.shape[1:]) == list(scan.cropped_shape)  # same spacing: model space is the crop
    expected = np.zeros(images.shape[1:], dtype=np.uint8)
    crop = tuple(slice(a, b) for a, b in scan.crop_bbox)
    expected[crop][tuple(slice(s // 4, s - s // 4) for s in scan.cropped_shape)] = 1
    return expected


def test_brainmask_writes_the_largest_piece_of_the_brain_model_with_holes_filled(oblique_inputs, models, tmp_path,
                                                                                 monkeypatch):
    from lesiongen.models.folder import ModelFolder

    folders, geometry = oblique_inputs
    folder = models["results"] / TINY_NAME / SEG_FOLDER
    _oracle_brain(monkeypatch)
    assert predict_cli.main(["-model", str(folder), "-device", "cpu", "-i", str(folders["images"]),
                             "-o", str(tmp_path), "-m", "brainmask", "--disable_tta"]) == 0
    mask, written = read_image(tmp_path / "scan.nrrd")
    assert written.matches(geometry) is None and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, _expected_brain(folders["images"], ModelFolder(folder).plans()))


def test_synth_with_a_brain_model_keeps_lesions_and_changes_inside_its_mask(oblique_inputs, models, tmp_path,
                                                                            monkeypatch):
    from lesiongen.models.folder import ModelFolder
    from lesiongen.utilities.provenance import sha256_file

    folders, _ = oblique_inputs
    brain_model = models["results"] / TINY_NAME / SEG_FOLDER
    _oracle_brain(monkeypatch)
    expected = _expected_brain(folders["images"], ModelFolder(brain_model).plans()) > 0
    assert predict("-i", folders["images"], "-o", tmp_path, "-m", "synth", "--masks", "spheremask", "--n_lesions",
                   "3", "--brain_model", brain_model, "--seed", "4") == 0
    label, _ = read_image(tmp_path / "labels" / "scan_syn0.nrrd")
    assert label.any() and not label[~expected].any()
    for channel in range(2):
        original, _ = read_image(folders["images"] / f"scan_{channel:04d}.nrrd")
        image, _ = read_image(tmp_path / f"scan_syn0_{channel:04d}.nrrd")
        assert np.array_equal(image[~expected], original[~expected])  # the scan outside the brain stays as it was
    summary = json.loads((tmp_path / "synthesis_summary.json").read_text())
    checkpoint = brain_model / "fold_0" / "checkpoint_final.pt"
    assert [m["sha256"] for m in summary["brain_masks"]["brain_model"]] == [sha256_file(checkpoint)]


def test_a_brain_model_needs_one_foreground_class_and_matching_channels(oblique_inputs, models, tmp_path, capsys):
    from lesiongen.inference.brain_extraction import check_brain_extraction_labels
    from lesiongen.utilities.errors import LesiongenError

    with pytest.raises(LesiongenError, match="2 foreground classes"):
        check_brain_extraction_labels({"background": 0, "brain": 1, "scalp": 2}, "model")
    folders, _ = oblique_inputs
    inpainter = models["results"] / TINY_NAME / "inpaint__lesiongenPlans"
    assert predict("-i", folders["images"], "-o", tmp_path / "out", "-m", "synth", "--masks", "spheremask",
                   "--brain_model", inpainter) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--brain_model needs a seg_* model folder" in err[0]
    assert not (tmp_path / "out").exists()


def test_clean_brain_mask_keeps_the_largest_piece_and_fills_its_cavities():
    from lesiongen.inference.brain_extraction import clean_brain_mask

    label = np.zeros((12, 12, 12), dtype=np.uint8)
    label[2:10, 2:10, 2:10] = 1
    label[5:7, 5:7, 5:7] = 0  # enclosed: filled
    label[2:4, 2:4, 9] = 0  # a notch open to the outside: stays
    label[0, 11, 11] = 1  # a stray voxel: dropped
    expected = np.zeros_like(label)
    expected[2:10, 2:10, 2:10] = 1
    expected[2:4, 2:4, 9] = 0
    np.testing.assert_array_equal(clean_brain_mask(label), expected)
    assert not clean_brain_mask(np.zeros((4, 4, 4))).any()
