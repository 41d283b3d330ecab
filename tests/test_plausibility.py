"""Prediction refuses scans far from the training data (spacing, physical extent) unless forced."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lesiongen.cli import predict as predict_cli
from lesiongen.inference.predict import (
    MAX_EXTENT_FACTOR,
    MAX_SPACING_FACTOR,
    InputCase,
    PredictOptions,
    check_plausible,
    run_cases,
)
from lesiongen.io.images import ImageGeometry, write_image
from lesiongen.utilities.errors import LesiongenError

# what the plans say about the (brain-cropped) training scans, array order (z, y, x)
PLANS = SimpleNamespace(original_median_spacing=[1.0, 1.0, 1.0], original_median_shape=[140, 170, 140])
PATH = Path("/data/scan_0000.nii.gz")


def _geometry(spacing_zyx, shape_zyx) -> ImageGeometry:
    return ImageGeometry.simple(tuple(shape_zyx), tuple(spacing_zyx))


def test_a_scan_like_the_training_data_passes():
    check_plausible(_geometry((1.0, 0.9, 0.9), (176, 256, 256)), PLANS, PATH)  # a full head around the brain box


def test_an_8_mm_73_cm_scan_is_refused_in_one_line():
    with pytest.raises(LesiongenError) as info:
        check_plausible(_geometry((8.0, 8.0, 8.0), (91, 91, 91)), PLANS, PATH)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{PATH}: spacing (8, 8, 8) mm / extent (728, 728, 728) mm is far from what the model "
                           f"was trained on (median spacing (1, 1, 1) mm / extent (140, 170, 140) mm; ")
    assert "spacing 8x the median on axis z" in text and "extent 5.2x the median on axis z" in text
    assert text.endswith("; use --force to predict anyway")


@pytest.mark.parametrize("spacing, shape, reason", [
    ((1.0, 1.0, 0.2), (140, 170, 700), "spacing 0.2x the median on axis x"),  # 5x finer, same extent
    ((5.0, 1.0, 1.0), (28, 170, 140), "spacing 5x the median on axis z"),  # thick slices, same extent
    ((1.0, 1.0, 1.0), (40, 170, 140), "extent 0.29x the median on axis z"),  # a slab
    ((1.0, 1.0, 1.0), (140, 600, 140), "extent 3.5x the median on axis y"),  # head to hip
])
def test_each_axis_and_direction_is_checked(spacing, shape, reason):
    with pytest.raises(LesiongenError, match=reason):
        check_plausible(_geometry(spacing, shape), PLANS, PATH)


def test_the_thresholds_themselves_are_allowed():
    coarse = (MAX_SPACING_FACTOR, 1.0, 1.0)
    check_plausible(_geometry(coarse, (35, 170, 140)), PLANS, PATH)
    check_plausible(_geometry((1.0, 1.0, 1.0), (int(140 * MAX_EXTENT_FACTOR), 170, 140)), PLANS, PATH)
    check_plausible(_geometry((1.0, 1.0, 1.0), (round(140 / MAX_EXTENT_FACTOR) + 1, 170, 140)), PLANS, PATH)


def test_force_turns_the_error_into_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lesiongen"):
        check_plausible(_geometry((8.0, 8.0, 8.0), (91, 91, 91)), PLANS, PATH, force=True)
    assert any("is far from what the model was trained on" in r.getMessage() and "--force" in r.getMessage()
               for r in caplog.records)


def test_plans_without_medians_check_nothing():
    check_plausible(_geometry((8.0, 8.0, 8.0), (91, 91, 91)), SimpleNamespace(), PATH)


# ----------------------------------------------------------------------------------------------- run_cases


def _cases(folder: Path) -> list[InputCase]:
    """Two one-channel cases: one like the training data (at the plans' scale), one 8 mm / 73 cm."""
    folder.mkdir()
    cases = []
    for name, spacing, shape in (("near", (1.0, 1.0, 1.0), (140, 170, 140)), ("far", (8.0, 8.0, 8.0), (91, 91, 91))):
        path = folder / f"{name}_0000.nii.gz"
        write_image(path, np.zeros(shape, np.uint8), _geometry(spacing, shape))
        cases.append(InputCase(name, [path], ".nii.gz"))
    return cases


def test_run_cases_refuses_before_any_case_is_worked_on(tmp_path):
    cases = _cases(tmp_path / "in")
    worked: list[str] = []
    with pytest.raises(LesiongenError, match=r"far_0000\.nii\.gz: spacing \(8, 8, 8\) mm"):
        run_cases(cases, tmp_path / "out", PredictOptions(mode="seg"), 1,
                  lambda group: worked.extend(c.case.case_id for c in group), plans=PLANS)
    assert worked == [], "the near case was worked on before the far one was refused"


def test_run_cases_with_force_works_on_every_case(tmp_path):
    cases = _cases(tmp_path / "in")
    worked: list[str] = []
    counts = run_cases(cases, tmp_path / "out", PredictOptions(mode="seg", force=True), 1,
                       lambda group: worked.extend(c.case.case_id for c in group), plans=PLANS)
    assert worked == ["near", "far"] and counts["done"] == 2


def test_predict_command_has_force():
    args = predict_cli.build_parser().parse_args(["-d", "1", "-i", "in", "-o", "out", "-m", "seg", "--force"])
    assert args.force is True
    assert predict_cli.build_parser().parse_args(["-d", "1", "-i", "in", "-o", "out", "-m", "seg"]).force is False


# ----------------------------------------------------------------------------- the demo data stays accepted


def test_the_demo_test_and_healthy_scans_are_plausible_for_their_own_plans(tiny_dataset, lesiongen_folders):
    from lesiongen import workflow
    from lesiongen.io.images import read_geometry
    from lesiongen.planning.planner import plan_dataset

    dataset = workflow.open_dataset(501)
    plans = plan_dataset(workflow.run_fingerprint(dataset), dataset.info, has_brain_masks=True)
    for case in dataset.test + dataset.healthy + dataset.training:
        check_plausible(read_geometry(case.images[0]), plans, case.images[0])
