"""Short-schedule training (``few_step_training``): the network is trained only at the few-step sampler's timesteps,
the schedule records them, and samplers that need other timesteps are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import TINY, TINY_NAME, trained_model
from lesiongen.cli import evaluate_inpainting as evaluate_inpainting_cli
from lesiongen.cli import train as train_cli
from lesiongen.diffusion.inpainting import InpaintSchedule, make_scheduler
from lesiongen.diffusion.schedules import (ScheduleConfig, add_noise, default_sampling, few_step_sampling,
                                           samples_trained_timesteps, sampling_scheduler, short_schedule,
                                           training_scheduler)
from lesiongen.models.checkpoint import FINAL, load_checkpoint
from lesiongen.training import diffusion as diffusion_training
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.serialization import from_dict

FEW_STEP_TIMESTEPS = (750, 500, 250, 0)  # diffusers' "leading" spacing of 4 steps over 1,000 training timesteps


def _short() -> ScheduleConfig:
    few = few_step_sampling(ScheduleConfig(prediction_type="sample"))
    return short_schedule(few, sampling_scheduler(few).timesteps)


def test_the_short_schedule_is_the_few_step_samplers_timesteps_and_round_trips_through_json():
    config = _short()
    assert config.trained_timesteps == FEW_STEP_TIMESTEPS
    assert from_dict(ScheduleConfig, dataclasses.asdict(config)) == config
    old = {k: v for k, v in dataclasses.asdict(ScheduleConfig()).items() if k != "trained_timesteps"}
    assert from_dict(ScheduleConfig, old).trained_timesteps is None  # models saved before the field still load
    with pytest.raises(ValueError, match="trained timesteps"):
        ScheduleConfig(trained_timesteps=(1000,))


def test_training_noise_is_drawn_only_at_the_short_schedules_timesteps_and_at_all_of_them():
    config = _short()
    scheduler = training_scheduler(config)
    clean = torch.zeros(400, 1, 2, 2, 2)
    _, _, timesteps = add_noise(scheduler, clean, torch.Generator().manual_seed(0), config.trained_timesteps)
    assert set(timesteps.tolist()) == set(FEW_STEP_TIMESTEPS)
    _, _, everywhere = add_noise(scheduler, clean, torch.Generator().manual_seed(0))
    assert len(set(everywhere.tolist())) > 300  # the full schedule: uniform over 1,000 timesteps


def test_samplers_needing_other_timesteps_are_refused():
    config = _short()
    assert samples_trained_timesteps(config) and not samples_trained_timesteps(default_sampling(config))
    with pytest.raises(ValueError, match="trained only at timesteps"):
        sampling_scheduler(default_sampling(config))
    assert [int(t) for t in make_scheduler(InpaintSchedule.few_step(), config).timesteps] == list(FEW_STEP_TIMESTEPS)
    for refused in (InpaintSchedule.fast(), InpaintSchedule.full()):
        with pytest.raises(ValueError, match="trained only at timesteps"):
            make_scheduler(refused, config)
    assert samples_trained_timesteps(default_sampling(ScheduleConfig()))  # a fully trained network: anything


@pytest.fixture(scope="module")
def short_trained(tiny_preprocessed):
    """diffmask and the inpainter trained 4 steps on fold 0 with ``few_step_training``; the timesteps of every
    training batch recorded."""
    seen: dict[str, list[int]] = {}
    original = diffusion_training.add_noise
    with pytest.MonkeyPatch.context() as patch:
        for name in ("diffmask", "inpaint"):
            def recording(scheduler, clean, generator, trained_timesteps=None, name=name):
                noisy, noise, timesteps = original(scheduler, clean, generator, trained_timesteps)
                seen.setdefault(name, []).extend(int(t) for t in timesteps)
                return noisy, noise, timesteps

            patch.setattr(diffusion_training, "add_noise", recording)
            assert train_cli.main([str(TINY.dataset_id), name, "0", "-device", "cpu", "--steps", "4",
                                   "--set", "few_step_training=true"]) == 0
    return tiny_preprocessed, seen


@pytest.mark.parametrize("name", ["diffmask", "inpaint"])
def test_a_short_schedule_model_trains_at_its_samplers_timesteps_and_refuses_the_default_sampler(short_trained,
                                                                                                  name):
    folders, seen = short_trained
    assert set(seen[name]) <= set(FEW_STEP_TIMESTEPS) and len(seen[name]) >= 8
    model = trained_model(name)
    assert model.config.schedule.trained_timesteps == FEW_STEP_TIMESTEPS
    assert model.with_sampling("few_step") is not None
    with pytest.raises(LesiongenError, match="cannot sample with 'default'"):
        model.with_sampling("default")
    if name == "diffmask":  # its own sampler is the few-step one, calibrated, and no threshold for the other
        state = load_checkpoint(folders["results"] / TINY_NAME / "diffmask__lesiongenPlans" / "fold_0" / FINAL)
        assert state["extra"]["calibration"]["evaluations_per_mask"] == 4
        assert set(model.config.preset_thresholds) == {"few_step"}
    else:
        assert model.config.sampling == InpaintSchedule.few_step()


def test_evaluating_a_short_schedule_inpainter_skips_the_full_chain_and_refuses_the_default_sampler(short_trained,
                                                                                                   tmp_path, capsys):
    assert evaluate_inpainting_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--max_patches", "16",
                                         "--full_patches", "1", "-o", str(tmp_path / "own")]) == 0
    report = json.loads((tmp_path / "own" / "inpainting_evaluation.json").read_text())
    assert report["full_schedule"] == {"skipped": "short schedule: trained only at timesteps [750, 500, 250, 0]"}
    assert report["insert"]["speed"]["network_evaluations_per_patch"] == 4
    capsys.readouterr()
    assert evaluate_inpainting_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--sampling", "default",
                                         "-o", str(tmp_path / "default")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot sample with 'default'" in error[0]
    assert not (tmp_path / "default").exists()
