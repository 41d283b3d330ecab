"""Diffusion schedules: every prediction type's target, and the sampler reproducing a known x0 from an oracle."""

from __future__ import annotations

import pytest
import torch

from lesiongen.diffusion.presets import FEW_STEPS
from lesiongen.diffusion.schedules import (PREDICTION_TYPES, ScheduleConfig, add_noise, few_step_sampling, sample,
                                           training_scheduler, training_target)


def _mask() -> torch.Tensor:
    x0 = -torch.ones(2, 1, 12, 12, 12)
    x0[:, :, 4:8, 5:9, 3:7] = 1.0
    return x0


def _oracle(config: ScheduleConfig, x0: torch.Tensor):
    """The exact network output for ``x_t`` when the clean sample is known."""
    scheduler = training_scheduler(config)
    alpha_bar = scheduler.alphas_cumprod

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar[t].view(-1, 1, 1, 1, 1).float()
        noise = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return training_target(scheduler, x0, noise, t)

    return predict


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler", ["dpm_solver", "ddim"])
def test_sampler_with_an_exact_network_returns_the_clean_mask(prediction_type, sampler):
    x0 = _mask()
    config = ScheduleConfig(sampler=sampler, prediction_type=prediction_type)
    out, evaluations = sample(_oracle(config, x0), tuple(x0.shape), config, torch.Generator().manual_seed(0),
                              torch.device("cpu"))
    assert evaluations == config.num_inference_steps
    assert torch.equal(out > 0, x0 > 0)  # every voxel on the right side
    assert float((out - x0).abs().max()) < 0.25


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_few_step_sampler_with_an_exact_network_ends_on_the_clean_mask(prediction_type):
    """Four network calls, and the last step returns the clean estimate: exactly x0 for an x0 network; for the
    others up to the rounding of converting their output to x0."""
    x0 = _mask()
    config = few_step_sampling(ScheduleConfig(prediction_type=prediction_type))
    oracle, timesteps = _oracle(config, x0), []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timesteps.append(int(t[0]))
        return oracle(x, t)

    out, evaluations = sample(counted, tuple(x0.shape), config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert evaluations == len(timesteps) == FEW_STEPS
    if prediction_type == "sample":
        assert torch.equal(out, x0)
    else:
        assert float((out - x0).abs().max()) < 1e-3


def test_training_targets_match_the_prediction_type():
    x0 = _mask()
    for prediction_type in PREDICTION_TYPES:
        scheduler = training_scheduler(ScheduleConfig(prediction_type=prediction_type))
        noisy, noise, t = add_noise(scheduler, x0, torch.Generator().manual_seed(1))
        target = training_target(scheduler, x0, noise, t)
        expected = {"epsilon": noise, "sample": x0,
                    "v_prediction": scheduler.get_velocity(x0, noise, t)}[prediction_type]
        assert torch.equal(target, expected)
    assert not torch.equal(training_target(training_scheduler(ScheduleConfig()), x0, noise, t), x0)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction type"):
        ScheduleConfig(prediction_type="noise")
