"""Messages say what is wrong, once: warnings as warnings, the real cause named, nothing reported twice or hidden."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lesiongen.cli import train as train_cli
from lesiongen.cli.common import run_command
from lesiongen.cli.plan_and_preprocess import main_extract_fingerprint, main_plan_and_preprocess
from lesiongen.demo.phantom import DemoConfig, write_demo_dataset
from lesiongen.fingerprint.fingerprint import load_fingerprint
from lesiongen.io.images import ImageGeometry, read_image, write_image
from lesiongen.planning.plans import load_plans
from lesiongen.planning.priors import fold_sphere_priors
from lesiongen.utilities.errors import DatasetError, LesiongenError, Problem

ENDING = ".nii.gz"


def _fingerprint(*extra: str) -> int:
    return main_extract_fingerprint(["-d", "501", "-np", "1", *extra])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _rewrite(path: Path, transform) -> None:
    array, geometry = read_image(path)
    write_image(path, transform(array), geometry)


# ------------------------------------------------------------------------------------ (a) warnings vs errors


def test_dataset_error_prints_one_error_line_per_error_and_warnings_as_warnings(capsys):
    problems = [Problem("a.nii.gz", "first error"), Problem("notes.txt", "ignored", is_warning=True),
                Problem("b.nii.gz", "second error")]

    def body(args: argparse.Namespace) -> None:
        raise DatasetError(problems)

    assert run_command(body, argparse.ArgumentParser(), []) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: a.nii.gz: first error",
        "error: b.nii.gz: second error",
        "warning: notes.txt: ignored",
        "2 problem(s) found; nothing was written.",
    ]


def test_warnings_of_a_failing_dataset_check_are_not_errors(tiny_dataset, lesiongen_folders, capsys):
    (tiny_dataset / "imagesTr" / "notes.txt").write_text("not an image")
    (tiny_dataset / f"labelsTr/demo_001{ENDING}").unlink()
    assert _fingerprint() == 1
    err = capsys.readouterr().err
    assert "error: warning" not in err
    assert _error_lines(err) == [f"error: {tiny_dataset / 'labelsTr' / f'demo_001{ENDING}'}: missing label of case "
                                 f"demo_001"]
    assert f"warning: {tiny_dataset / 'imagesTr' / 'notes.txt'}: ignored" in err


# ------------------------------------------------------------------------------------- (b) wrong file_ending


def test_wrong_file_ending_in_dataset_json_is_named_once(tiny_dataset, lesiongen_folders, capsys):
    content = json.loads((tiny_dataset / "dataset.json").read_text())
    (tiny_dataset / "dataset.json").write_text(json.dumps({**content, "file_ending": ".nrrd"}))
    assert _fingerprint() == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"error: {tiny_dataset / 'dataset.json'}: file_ending is '.nrrd' but the images "
                                 f"end in '.nii.gz'"]
    assert "ignored" not in err and "numTraining" not in err


def test_a_few_stray_files_with_another_ending_stay_per_file_warnings(tiny_dataset, lesiongen_folders, capsys):
    shutil.copy(tiny_dataset / f"imagesTr/demo_000_0000{ENDING}", tiny_dataset / "imagesTr" / "old_copy.nii")
    assert _fingerprint() == 0
    err = capsys.readouterr().err
    assert "file_ending is" not in err and "old_copy.nii: ignored" in err


# ------------------------------------------------------------------------- (c) header problems reported once


def test_header_problem_of_a_healthy_scan_is_reported_once(tiny_dataset, lesiongen_folders, capsys):
    bad = tiny_dataset / f"imagesHealthy/healthy_001_0001{ENDING}"
    array, geometry = read_image(bad)
    write_image(bad, array, ImageGeometry((geometry.spacing[0] * 1.5, *geometry.spacing[1:]), geometry.origin,
                                          geometry.direction, geometry.shape))
    assert _fingerprint("--verify_dataset_integrity") == 1
    err = capsys.readouterr().err
    naming = [line for line in err.splitlines() if str(bad) in line]
    assert len(naming) == 1 and naming[0].startswith("error: ") and "spacing" in naming[0], err
    assert "1 problem(s) found" in err


# --------------------------------------------------------------------- (d, e) lesions outside the brain's box


def _corner_blob(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[0:2, 0:2, 0:2] = 1  # the brain mask's bounding box starts a few voxels in
    return array


def test_lesions_outside_the_brain_are_named_not_dropped_silently(tiny_dataset, lesiongen_folders, capsys):
    labels = tiny_dataset / "labelsTr"
    before, _ = read_image(labels / f"demo_002{ENDING}")
    _rewrite(labels / f"demo_001{ENDING}", lambda a: _corner_blob(np.zeros_like(a)))  # only outside the head
    _rewrite(labels / f"demo_002{ENDING}", _corner_blob)  # its lesions plus one outside
    _rewrite(labels / f"demo_003{ENDING}", np.zeros_like)  # truly empty
    assert _fingerprint() == 0
    err = capsys.readouterr().err
    assert (f"{labels / f'demo_001{ENDING}'}: all 8 lesion voxel(s) of case demo_001 lie outside the brain mask; "
            f"the case is used as a case without lesions") in err
    assert (f"{labels / f'demo_002{ENDING}'}: 8 of {int((before > 0).sum()) + 8} lesion voxel(s) of case demo_002 lie "
            f"outside the bounding box of the brain mask and are dropped") in err
    empty = [line for line in err.splitlines() if "empty label map" in line]
    assert len(empty) == 1 and "1 lesion case(s) have an empty label map (demo_003)" in empty[0], err
    fingerprint = load_fingerprint(lesiongen_folders["preprocessed"] / tiny_dataset.name / "dataset_fingerprint.json")
    counts = {case.case_id: case.lesion_count for case in fingerprint.cases}
    assert counts["demo_001"] == 0 and counts["demo_003"] == 0 and counts["demo_002"] > 0


# ----------------------------------------------------- (4) degenerate lesion data, (f) pickled checkpoints


SMALL = DemoConfig(n_lesion_cases=3, n_healthy=0, n_test=0, shape=(28, 32, 28), spacing=(3.0, 3.0, 3.0),
                   lesion_radius_mm=(3.0, 6.0), seed=11)


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
    """Folders for the module: a small demo dataset (502) and the same with every label map emptied (503)."""
    root = tmp_path_factory.mktemp("messages")
    folders = {name: root / name for name in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as patch:
        for name, folder in folders.items():
            folder.mkdir()
            patch.setenv(f"lesiongen_{name}", str(folder))
        for dataset_id in (502, 503):
            write_demo_dataset(folders["raw"], dataclasses.replace(SMALL, dataset_id=dataset_id))
        for label in (folders["raw"] / "Dataset503_DemoMS" / "labelsTr").iterdir():
            _rewrite(label, np.zeros_like)
        yield folders


def _plan_and_preprocess(dataset_id: int, capsys) -> str:
    code = main_plan_and_preprocess(["-d", str(dataset_id), "-np", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_dataset_without_lesions_plans_images_but_refuses_lesion_stages(small_folders, capsys):
    err = _plan_and_preprocess(503, capsys)
    assert "no training case holds a lesion" in err
    folder = small_folders["preprocessed"] / "Dataset503_DemoMS"
    plans = load_plans(folder / "lesiongenPlans.json")
    assert plans.lesion_fraction_fitting == 0.0
    assert not any("% of" in note for note in plans.notes), plans.notes
    assert any("no lesion in the training cases" in note for note in plans.notes)

    fingerprint = load_fingerprint(folder / "dataset_fingerprint.json")
    with pytest.raises(LesiongenError) as info:
        fold_sphere_priors(fingerprint, [c.case_id for c in fingerprint.cases], plans)
    assert str(info.value).startswith(f"{folder / 'dataset_fingerprint.json'}: no training case holds a lesion")

    assert train_cli.main(["503", "spheremask", "all", "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and "no training case holds a lesion" in lines[0], err


def test_pickled_pretrained_weights_get_lesiongen_s_own_line(small_folders, tmp_path, capsys):
    _plan_and_preprocess(502, capsys)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": 2, "networks": {}, "extra": argparse.Namespace(a=1)}, pickled)
    assert train_cli.main(["502", "spheremask", "all", "-device", "cpu", "-pretrained_weights", str(pickled)]) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {pickled}: ") and "pickled" in lines[0], err
    assert "weights_only=False" not in err and "Traceback" not in err


# ------------------------------------------------------------------- (2) evaluate refuses probability maps


def _evaluation_folders(root: Path, prediction: np.ndarray) -> tuple[Path, Path]:
    geometry = ImageGeometry.simple((6, 6, 6), (1.0, 1.0, 1.0))
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[2:4, 2:4, 2:4] = 1
    folders = root / "ref", root / "pred"
    for folder, array in zip(folders, (reference, prediction)):
        folder.mkdir()
        write_image(folder / "case.nii.gz", array, geometry)
    return folders


def test_evaluate_refuses_a_probability_map_in_one_line(tmp_path, capsys):
    from lesiongen.cli import evaluate as evaluate_cli

    probabilities = np.full((6, 6, 6), 0.1, np.float32)
    probabilities[2:4, 2:4, 2:4] = 0.9
    reference, prediction = _evaluation_folders(tmp_path, probabilities)
    assert evaluate_cli.main(["-ref", str(reference), "-pred", str(prediction)]) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"error: {prediction / 'case.nii.gz'}: prediction has non-integer values "
                                 f"(e.g. 0.1); expected integer labels, not probabilities (threshold or argmax "
                                 f"them first)"]
    assert "Traceback" not in err and not (prediction / "summary.json").exists()


def test_evaluate_refuses_a_non_integer_reference(tmp_path, capsys):
    from lesiongen.evaluation.segmentation_metrics import evaluate_folders

    reference, prediction = _evaluation_folders(tmp_path, np.zeros((6, 6, 6), np.uint8))
    array, geometry = read_image(reference / "case.nii.gz")
    write_image(reference / "case.nii.gz", array.astype(np.float32) * 0.5, geometry)
    with pytest.raises(LesiongenError, match=r"ref/case\.nii\.gz: reference has non-integer values"):
        evaluate_folders(reference, prediction)


def test_evaluate_accepts_float_maps_of_whole_numbers(tmp_path, capsys):
    from lesiongen.cli import evaluate as evaluate_cli

    labels = np.zeros((6, 6, 6), np.float32)
    labels[2:4, 2:4, 2:4] = 1.0
    reference, prediction = _evaluation_folders(tmp_path, labels)
    assert evaluate_cli.main(["-ref", str(reference), "-pred", str(prediction)]) == 0
    summary = json.loads((prediction / "summary.json").read_text())
    assert summary["mean"]["1"]["mean"]["dice"] == 1.0


def test_a_bad_dataset_id_is_the_only_line_on_stderr_of_a_fresh_process(tmp_path):
    """In a new process (imports and logging set up as a user gets them) other libraries' INFO lines, such as
    numexpr's thread count, do not crowd the one error line."""
    # numexpr logs its default thread count when none of these is set
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMEXPR_MAX_THREADS", "NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update({f"lesiongen_{name}": str(tmp_path) for name in ("raw", "preprocessed", "results")})
    for command in ("lesiongen.cli.benefit", "lesiongen.cli.train"):
        arguments = ["-d", "777"] if command.endswith("benefit") else ["777", "seg", "0"]
        result = subprocess.run([sys.executable, "-c", f"import sys; from {command} import main; "
                                 f"sys.exit(main(sys.argv[1:]))", *arguments],
                                capture_output=True, text=True, env=env, timeout=120, check=False)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: no dataset folder with ID 777 "
                                                      "(expected Dataset777_Name)"], result.stderr
