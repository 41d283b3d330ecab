"""Lesion segmentation metrics (Dice, lesion-wise detection, HD95, volumes), folder evaluation and its CLI."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from scipy import ndimage

from lesiongen.utilities.files import nan_to_none
from lesiongen.cli import evaluate as evaluate_cli
from lesiongen.evaluation.segmentation_metrics import (
    METRIC_NAMES,
    aggregate,
    case_metrics,
    evaluate_folders,
    hd95,
    lesion_f1,
)
from lesiongen.io.images import ImageGeometry, write_image
from lesiongen.utilities.errors import LesiongenError

ISO = (1.0, 1.0, 1.0)


def _two_lesion_reference(shape=(10, 10, 10)) -> np.ndarray:
    reference = np.zeros(shape, dtype=np.uint8)
    reference[1:3, 1:3, 1:3] = 1  # lesion A: 8 voxels
    reference[6:9, 6:9, 6:9] = 1  # lesion B: 27 voxels, far from A
    return reference


# ----------------------------------------------------------------------------------- lesion matching


def test_one_of_two_lesions_detected_without_false_positive():
    reference = _two_lesion_reference()
    prediction = np.zeros_like(reference)
    prediction[1:3, 1:3, 1:3] = 1  # exactly lesion A
    m = case_metrics(reference, prediction, ISO, [1])[1]
    assert (m["tp_lesions"], m["fn_lesions"], m["fp_lesions"]) == (1, 1, 0)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["matched_pred_lesions"]) == (2, 1, 1)
    assert m["lesion_recall"] == pytest.approx(0.5)
    assert m["lesion_precision"] == pytest.approx(1.0)
    assert m["lesion_f1"] == pytest.approx(2 / 3)
    assert m["dice"] == pytest.approx(2 * 8 / (35 + 8))
    assert set(m) == set(METRIC_NAMES)


def test_false_positive_component_lowers_precision():
    reference = _two_lesion_reference()
    prediction = np.zeros_like(reference)
    prediction[1:3, 1:3, 1:3] = 1  # detects A
    prediction[8, 1, 1] = 1  # touches no reference lesion
    m = case_metrics(reference, prediction, ISO, [1])[1]
    assert (m["tp_lesions"], m["fn_lesions"], m["fp_lesions"]) == (1, 1, 1)
    assert m["lesion_precision"] == pytest.approx(0.5)
    assert m["lesion_recall"] == pytest.approx(0.5)
    assert m["lesion_f1"] == pytest.approx(0.5)


def test_one_voxel_overlap_detects_and_bridging_component_detects_both():
    reference = _two_lesion_reference()
    prediction = np.zeros_like(reference)
    prediction[2, 2, 2:7] = 1  # one component touching A at (2,2,2) ...
    prediction[2:7, 2, 6] = 1
    prediction[6, 2:7, 6] = 1  # ... and B at (6,6,6)
    m = case_metrics(reference, prediction, ISO, [1])[1]
    assert m["n_pred_lesions"] == 1
    assert (m["tp_lesions"], m["fn_lesions"], m["fp_lesions"], m["matched_pred_lesions"]) == (2, 0, 0, 1)
    assert m["lesion_recall"] == 1.0 and m["lesion_precision"] == 1.0 and m["lesion_f1"] == 1.0


def test_components_are_26_connected():
    reference = np.zeros((5, 5, 5), dtype=np.uint8)
    reference[1, 1, 1] = reference[2, 2, 2] = 1  # corner neighbours: one lesion
    reference[4, 4, 4] = 1  # not adjacent: a second lesion
    m = case_metrics(reference, reference, ISO, [1])[1]
    assert m["n_ref_lesions"] == 2


# ------------------------------------------------------------------------------------------- Dice


def test_dice_of_half_overlapping_cubes_and_anisotropic_volumes():
    reference = np.zeros((8, 6, 6), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:4, 0:4, 0:4] = 1  # 64 voxels
    prediction[2:6, 0:4, 0:2] = 1  # 32 voxels, 16 shared
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 per voxel
    m = case_metrics(reference, prediction, spacing, [1])[1]
    assert m["dice"] == pytest.approx(2 * 16 / (64 + 32))
    assert m["volume_ref_mm3"] == pytest.approx(64.0)
    assert m["volume_pred_mm3"] == pytest.approx(32.0)
    assert m["abs_volume_difference_mm3"] == pytest.approx(32.0)
    assert m["volume_difference_mm3"] == pytest.approx(-32.0)  # under-segmented: prediction minus reference
    swapped = case_metrics(prediction, reference, spacing, [1])[1]
    assert swapped["volume_difference_mm3"] == pytest.approx(32.0)


def test_one_side_empty():
    reference = _two_lesion_reference()
    empty = np.zeros_like(reference)
    missed = case_metrics(reference, empty, ISO, [1])[1]
    assert missed["dice"] == 0.0 and missed["lesion_f1"] == 0.0 and missed["lesion_recall"] == 0.0
    assert math.isnan(missed["lesion_precision"]) and math.isnan(missed["hd95"])
    assert missed["fn_lesions"] == 2
    spurious = case_metrics(empty, reference, ISO, [1])[1]
    assert spurious["dice"] == 0.0 and spurious["lesion_f1"] == 0.0 and spurious["lesion_precision"] == 0.0
    assert math.isnan(spurious["lesion_recall"]) and spurious["fp_lesions"] == 2


def test_both_empty():
    empty = np.zeros((6, 6, 6), dtype=np.uint8)
    m = case_metrics(empty, empty, ISO, [1])[1]
    assert m["dice"] == 1.0
    assert m["lesion_f1"] == 1.0
    assert math.isnan(m["hd95"])
    assert math.isnan(m["lesion_recall"]) and math.isnan(m["lesion_precision"])
    assert math.isnan(m["small_lesion_recall"])
    assert m["n_ref_lesions"] == m["n_pred_lesions"] == 0 and m["volume_ref_mm3"] == 0.0


def test_lesion_f1_edge_cases():
    assert lesion_f1(1.0, 0.5) == pytest.approx(2 / 3)
    assert lesion_f1(0.0, 0.0) == 0.0
    assert lesion_f1(math.nan, math.nan) == 1.0
    assert lesion_f1(math.nan, 1.0) == 0.0


# ------------------------------------------------------------------------------------------- HD95


def test_hd95_of_single_voxels_with_anisotropic_spacing():
    spacing = (3.0, 0.5, 2.0)
    reference = np.zeros((8, 8, 8), dtype=bool)
    prediction = np.zeros_like(reference)
    reference[2, 2, 2] = True
    prediction[2, 2, 5] = True  # 3 voxels along x at 2 mm
    assert hd95(reference, prediction, spacing) == pytest.approx(6.0)
    prediction[:] = False
    prediction[5, 2, 2] = True  # 3 voxels along z at 3 mm
    assert hd95(reference, prediction, spacing) == pytest.approx(9.0)


def test_hd95_of_cubes_a_gap_apart_with_anisotropic_spacing():
    spacing = (3.0, 0.5, 2.0)
    reference = np.zeros((6, 6, 8), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[2:4, 2:4, 0:2] = 1  # 2x2x2 cubes: every voxel is surface
    prediction[2:4, 2:4, 4:6] = 1  # two-voxel gap along x: distances 6 mm (near face) and 8 mm (far face)
    m = case_metrics(reference, prediction, spacing, [1])[1]
    assert m["hd95"] == pytest.approx(8.0)
    assert case_metrics(reference, reference, spacing, [1])[1]["hd95"] == 0.0


def _brute_force_hd95(reference, prediction, spacing):
    def surface(mask):
        return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * np.asarray(spacing)

    a, b = surface(reference), surface(prediction)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


def test_hd95_matches_brute_force_including_masks_on_the_border():
    rng = np.random.default_rng(3)
    spacing = (2.5, 1.0, 0.7)
    for _ in range(5):
        reference = ndimage.binary_dilation(rng.random((9, 10, 11)) > 0.93, iterations=1)
        prediction = ndimage.binary_dilation(rng.random((9, 10, 11)) > 0.95, iterations=1)
        reference[0, 2:5, 0] = prediction[-1, -1, 3:6] = True  # masks on the array border
        assert hd95(reference, prediction, spacing) == pytest.approx(
            _brute_force_hd95(reference, prediction, spacing), rel=1e-9)


# --------------------------------------------------------------------------- small lesions, classes


def test_small_lesion_recall_counts_only_small_lesions():
    reference = np.zeros((12, 12, 12), dtype=np.uint8)
    reference[0:2, 0:2, 0:2] = 1  # 8 mm^3: small, missed
    reference[5, 0, 0] = 1  # 1 mm^3: small, detected
    reference[6:9, 6:9, 6:9] = 1  # 27 mm^3: large, detected
    prediction = np.zeros_like(reference)
    prediction[5, 0, 0] = 1
    prediction[7, 7, 7] = 1
    m = case_metrics(reference, prediction, ISO, [1], small_lesion_mm3=10.0)[1]
    assert m["lesion_recall"] == pytest.approx(2 / 3)
    assert m["small_lesion_recall"] == pytest.approx(0.5)
    assert (m["n_small_ref_lesions"], m["tp_small_lesions"]) == (2, 1)
    only_large = case_metrics(reference, prediction, ISO, [1], small_lesion_mm3=1.0)[1]
    assert math.isnan(only_large["small_lesion_recall"])


def test_classes_are_evaluated_separately():
    reference = np.zeros((10, 10, 10), dtype=np.uint8)
    reference[1:3, 1:3, 1:3] = 1
    reference[6:9, 6:9, 6:9] = 2
    prediction = np.zeros_like(reference)
    prediction[6:9, 6:9, 6:9] = 2
    prediction[6, 6, 6] = 1  # class 1 predicted inside the class-2 lesion: a class-1 false positive
    result = case_metrics(reference, prediction, ISO, [1, 2, 3])
    assert set(result) == {1, 2, 3}
    one, two, three = result[1], result[2], result[3]
    assert one["dice"] == 0.0 and one["fp_lesions"] == 1 and one["fn_lesions"] == 1 and one["lesion_f1"] == 0.0
    assert two["dice"] == pytest.approx(2 * 26 / (27 + 26))
    assert two["lesion_f1"] == 1.0 and two["tp_lesions"] == 1
    assert three["dice"] == 1.0 and three["lesion_f1"] == 1.0  # absent everywhere


# -------------------------------------------------------------------------------------------- aggregate


def test_aggregate_means_are_nan_aware_and_totals_are_pooled():
    reference = _two_lesion_reference()
    detected_a = np.zeros_like(reference)
    detected_a[1:3, 1:3, 1:3] = 1
    empty = np.zeros_like(reference)
    per_case = {
        "a": case_metrics(reference, detected_a, ISO, [1]),  # TP 1, FN 1, FP 0
        "b": case_metrics(empty, reference, ISO, [1]),  # TP 0, FN 0, FP 2 (recall NaN, hd95 NaN)
        "c": case_metrics(empty, empty, ISO, [1]),
    }
    summary = aggregate(per_case)[1]
    assert summary["n_cases"] == 3
    assert summary["mean"]["dice"] == pytest.approx((16 / 43 + 0.0 + 1.0) / 3)
    assert summary["std"]["dice"] == pytest.approx(np.std([16 / 43, 0.0, 1.0]))
    assert summary["mean"]["lesion_recall"] == pytest.approx(0.5) and summary["n_valid"]["lesion_recall"] == 1
    assert summary["mean"]["hd95"] == pytest.approx(per_case["a"][1]["hd95"]) and summary["n_valid"]["hd95"] == 1
    assert summary["mean"]["lesion_f1"] == pytest.approx((2 / 3 + 0.0 + 1.0) / 3)
    totals = summary["totals"]
    assert (totals["tp_lesions"], totals["fn_lesions"], totals["fp_lesions"]) == (1, 1, 2)
    assert totals["precision"] == pytest.approx(1 / 3)
    assert totals["recall"] == pytest.approx(0.5)
    assert totals["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    all_nan = aggregate({"c": per_case["c"]})[1]
    assert math.isnan(all_nan["mean"]["hd95"]) and all_nan["n_valid"]["hd95"] == 0


# ------------------------------------------------------------------------------------ folders and CLI


SPACING_ZYX = (3.0, 1.0, 0.5)


def _write_folders(tmp_path):
    """Two cases; returns (reference_dir, prediction_dir, {case: (reference, prediction)})."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    geometry = ImageGeometry.simple((10, 10, 10), SPACING_ZYX)
    reference_1 = _two_lesion_reference()
    reference_1[8, 1, 1] = 2
    prediction_1 = np.zeros_like(reference_1)
    prediction_1[1:3, 1:3, 1:3] = 1
    reference_2 = np.zeros_like(reference_1)
    reference_2[3:6, 3:6, 3:6] = 1
    prediction_2 = np.zeros_like(reference_1)
    prediction_2[4:7, 3:6, 3:6] = 1
    prediction_2[0, 9, 9] = 2
    cases = {"case_001": (reference_1, prediction_1), "case_002": (reference_2, prediction_2)}
    for case, (reference, prediction) in cases.items():
        write_image(ref_dir / f"{case}.nii.gz", reference, geometry)
        write_image(pred_dir / f"{case}.nii.gz", prediction, geometry)
    return ref_dir, pred_dir, cases


def _assert_same(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value), key


def test_evaluate_folders_gives_per_case_metrics(tmp_path, caplog):
    ref_dir, pred_dir, cases = _write_folders(tmp_path)
    write_image(pred_dir / "extra.nii.gz", np.zeros((10, 10, 10), np.uint8),
                ImageGeometry.simple((10, 10, 10), SPACING_ZYX))
    with caplog.at_level(logging.WARNING):
        result = evaluate_folders(ref_dir, pred_dir)
    assert "extra.nii.gz" in caplog.text
    assert result["labels"] == [1, 2]
    assert set(result["per_case"]) == set(cases)
    for case, (reference, prediction) in cases.items():
        expected = case_metrics(reference, prediction, SPACING_ZYX, [1, 2])
        for label in (1, 2):
            _assert_same(result["per_case"][case][label], expected[label])
    assert result["per_case"]["case_001"][1]["lesion_f1"] == pytest.approx(2 / 3)
    assert result["per_case"]["case_002"][1]["dice"] == pytest.approx(2 * 18 / 54)
    assert result["mean"][1]["totals"]["tp_lesions"] == 2
    only_two = evaluate_folders(ref_dir, pred_dir, labels=[2], file_ending=".nii.gz")
    assert only_two["labels"] == [2] and set(only_two["per_case"]["case_001"]) == {2}


def test_evaluate_folders_with_two_processes_matches_one(tmp_path):
    ref_dir, pred_dir, _ = _write_folders(tmp_path)
    one = evaluate_folders(ref_dir, pred_dir, labels=[1])
    two = evaluate_folders(ref_dir, pred_dir, labels=[1], num_processes=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_missing_prediction_names_the_file(tmp_path):
    ref_dir, pred_dir, _ = _write_folders(tmp_path)
    (pred_dir / "case_002.nii.gz").unlink()
    with pytest.raises(LesiongenError) as info:
        evaluate_folders(ref_dir, pred_dir)
    message = str(info.value)
    assert "case_002.nii.gz" in message and "\n" not in message


def test_geometry_mismatch_names_the_file(tmp_path):
    ref_dir, pred_dir, _ = _write_folders(tmp_path)
    write_image(pred_dir / "case_001.nii.gz", np.zeros((10, 10, 10), np.uint8),
                ImageGeometry.simple((10, 10, 10), (2.0, 1.0, 0.5)))
    with pytest.raises(LesiongenError) as info:
        evaluate_folders(ref_dir, pred_dir)
    message = str(info.value)
    assert "case_001.nii.gz" in message and "spacing" in message and "\n" not in message


def test_cli_writes_summary_and_prints_table(tmp_path, capsys):
    ref_dir, pred_dir, _ = _write_folders(tmp_path)
    assert evaluate_cli.main(["-ref", str(ref_dir), "-pred", str(pred_dir)]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["labels"] == [1, 2]
    assert summary["per_case"]["case_001"]["1"]["lesion_f1"] == pytest.approx(2 / 3)
    assert summary["per_case"]["case_001"]["2"]["hd95"] is None  # NaN (class 2 not predicted) -> null
    assert summary["mean"]["1"]["mean"]["dice"] == pytest.approx(
        (2 * 8 / 43 + 2 * 18 / 54) / 2)
    assert summary["provenance"]["reference"] == str(ref_dir.resolve())
    assert summary["provenance"]["small_lesion_mm3"] == 100.0  # the default, recorded as used
    assert summary["provenance"]["lesiongen_version"] == __import__("lesiongen").__version__
    out = capsys.readouterr().out
    assert "lesion F1" in out and "HD95" in out
    output = tmp_path / "elsewhere" / "s.json"
    assert evaluate_cli.main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-l", "1", "-o", str(output)]) == 0
    assert json.loads(output.read_text())["labels"] == [1]


def test_cli_missing_folder_is_one_line_error(tmp_path, capsys):
    ref_dir, _, _ = _write_folders(tmp_path)
    assert evaluate_cli.main(["-ref", str(ref_dir), "-pred", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1


def test_nan_to_none_makes_strict_json_possible():
    converted = nan_to_none({1: {"hd95": math.nan, "x": [1.0, math.inf]}})
    assert converted == {"1": {"hd95": None, "x": [1.0, None]}}
    json.dumps(converted, allow_nan=False)


def test_small_lesions_are_judged_by_their_volume_in_cubic_millimetres():
    """At 2 mm a voxel is 8 mm³: a 13-voxel lesion (104 mm³) is not small under the 100 mm³ default, a 12-voxel one
    (96 mm³) is."""
    reference = np.zeros((12, 12, 12), dtype=np.uint8)
    reference[0, 0, 0:12] = 1
    reference[0, 1, 0] = 1  # 13 voxels
    reference[6, 6, 0:12] = 1  # 12 voxels
    m = case_metrics(reference, reference, (2.0, 2.0, 2.0), [1])[1]
    assert (m["n_ref_lesions"], m["n_small_ref_lesions"]) == (2, 1)


def test_pooled_recall_weighs_every_lesion_not_every_case():
    """One case with its one lesion found, another with none of its three: pooled recall 1 / 4, while the mean of
    the cases' recalls is 1 / 2."""
    one = np.zeros((12, 12, 12), dtype=np.uint8)
    one[1:3, 1:3, 1:3] = 1
    three = np.zeros_like(one)
    three[1, 1, 1] = three[5, 5, 5] = three[9, 9, 9] = 1
    summary = aggregate({"found": case_metrics(one, one, ISO, [1]),
                         "missed": case_metrics(three, np.zeros_like(three), ISO, [1])})[1]
    assert summary["mean"]["lesion_recall"] == pytest.approx(0.5)
    assert summary["totals"]["recall"] == pytest.approx(0.25)
