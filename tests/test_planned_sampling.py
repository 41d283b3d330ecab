"""The plans choose the sampler of newly trained diffusion models (``StagePlan.sampling``): the planner writes it,
``--sampling`` replaces it, the trainers take it as their default and ``--set few_step_sampling`` overrides it."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import TINY, TINY_NAME, shrink_networks, trained_model
from lesiongen.cli import plan_and_preprocess
from lesiongen.cli import train as train_cli
from lesiongen.diffusion.inpainting import InpaintSchedule
from lesiongen.diffusion.presets import FEW_STEPS
from lesiongen.diffusion.schedules import sampling_evaluations
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.training.trainers.diffmask import DiffMaskTrainer
from lesiongen.training.trainers.inpaint import InpaintTrainer
from lesiongen.utilities.errors import LesiongenError

DIFFUSION_STAGES = ("mask_generation", "inpainting")


def _plans_file(folders):
    return folders["preprocessed"] / TINY_NAME / "lesiongenPlans.json"


def _replan(folders, *extra: str) -> dict:
    assert plan_and_preprocess.main_plan(["-d", str(TINY.dataset_id), *extra]) == 0
    shrink_networks(_plans_file(folders))
    return json.loads(_plans_file(folders).read_text())


def _set_sampling(folders, value: str) -> None:
    plans = json.loads(_plans_file(folders).read_text())
    for stage in DIFFUSION_STAGES:
        plans["stages"][stage]["sampling"] = value
    _plans_file(folders).write_text(json.dumps(plans))


def test_the_planner_plans_the_default_sampler_and_sampling_replaces_it(tiny_preprocessed):
    planned = _replan(tiny_preprocessed)
    assert [planned["stages"][s]["sampling"] for s in DIFFUSION_STAGES] == ["default", "default"]
    assert planned["stages"]["segmentation"]["sampling"] is None  # no diffusion model there
    assert any(n.startswith("diffusion sampling default: 4-step sampling misses") for n in planned["notes"])
    given = _replan(tiny_preprocessed, "--sampling", "few_step")
    assert [given["stages"][s]["sampling"] for s in DIFFUSION_STAGES] == ["few_step", "few_step"]
    assert "diffusion sampling few_step: given (--sampling), not planned" in given["notes"]


@pytest.mark.parametrize("value", ["default", "few_step"])
def test_the_diffusion_trainers_take_the_planned_sampler_and_the_setting_overrides_it(tiny_preprocessed, value):
    _set_sampling(tiny_preprocessed, value)
    dataset = open_preprocessed(str(TINY.dataset_id))
    few = value == "few_step"
    inpaint = InpaintTrainer(dataset, 0, "cpu")
    diffmask = DiffMaskTrainer(dataset, 0, "cpu")
    assert inpaint.few_step_sampling is few and diffmask.few_step_sampling is few
    assert (inpaint.model_config().sampling == InpaintSchedule.few_step()) is few
    assert sampling_evaluations(diffmask.model_config().schedule) == (FEW_STEPS if few else 20)
    inpaint.apply_settings({"few_step_sampling": str(not few).lower()})  # --set beats the plans, either way
    assert (inpaint.model_config().sampling == InpaintSchedule.few_step()) is not few


def test_the_inpaint_trainers_edge_settings_reach_the_model_it_writes(tiny_preprocessed, caplog):
    inpaint = InpaintTrainer(open_preprocessed(str(TINY.dataset_id)), 0, "cpu")
    assert (inpaint.model_config().edge_rings, inpaint.model_config().edge_max_gain) == ("chessboard", 1.0)
    with caplog.at_level(logging.INFO, logger="lesiongen.training"):
        inpaint.apply_settings({"edge_max_gain": "2.5", "euclidean_edge_rings": "true"})  # --set
    assert (inpaint.model_config().edge_rings, inpaint.model_config().edge_max_gain) == ("euclidean", 2.5)
    # the log shows the values as parsed, not the strings typed
    assert "settings changed: {'edge_max_gain': 2.5, 'euclidean_edge_rings': True}" in caplog.text


def test_a_model_trained_under_few_step_plans_samples_in_few_steps_by_default(tiny_preprocessed):
    _set_sampling(tiny_preprocessed, "few_step")
    assert train_cli.main([str(TINY.dataset_id), "inpaint", "0", "-device", "cpu", "--steps", "2"]) == 0
    assert trained_model("inpaint").config.sampling == InpaintSchedule.few_step()


def test_a_sampling_that_is_no_preset_is_one_line_naming_the_plans(tiny_preprocessed, capsys):
    _set_sampling(tiny_preprocessed, "fast")
    expected = "plans lesiongenPlans of .*stage inpainting: sampling 'fast' is not one of default, few_step"
    with pytest.raises(LesiongenError, match=expected):
        InpaintTrainer(open_preprocessed(str(TINY.dataset_id)), 0, "cpu")
    capsys.readouterr()
    assert train_cli.main([str(TINY.dataset_id), "diffmask", "0", "-device", "cpu", "--steps", "1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "stage mask_generation: sampling 'fast'" in error[0]
