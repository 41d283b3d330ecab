"""Diffusion schedules: every prediction type's target, and the sampler reproducing a known x0 from an oracle."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lesiongen.diffusion.presets import FEW_STEPS
from lesiongen.diffusion.schedules import (PREDICTION_TYPES, ScheduleConfig, add_noise, default_sampling, draw_noise,
                                           few_step_sampling, sample, sampling_scheduler, training_scheduler,
                                           training_target)


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


def test_ddim_without_a_clean_final_step_ends_at_the_first_training_timesteps_noise_level():
    """An exact x0 network keeps DDIM (eta 0) on one path, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, with eps fixed by
    the starting noise: the default DDIM stops at t = 0 of that path, the clean final step on x0 itself."""
    x0 = _mask()
    config = ScheduleConfig(sampler="ddim", prediction_type="sample")
    alphas = training_scheduler(config).alphas_cumprod.double()
    first = int(sampling_scheduler(config).timesteps[0])
    start = draw_noise(tuple(x0.shape), torch.Generator().manual_seed(0)).double()
    eps = (start - alphas[first].sqrt() * x0) / (1 - alphas[first]).sqrt()
    out, _ = sample(lambda x, t: x0, tuple(x0.shape), config, torch.Generator().manual_seed(0), torch.device("cpu"))
    expected = alphas[0].sqrt() * x0 + (1 - alphas[0]).sqrt() * eps
    assert float((out - expected).abs().max()) < 1e-5
    assert float((out - x0).abs().max()) > 0.05
    clean, _ = sample(lambda x, t: x0, tuple(x0.shape), dataclasses.replace(config, clean_final_step=True),
                      torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(clean, x0)


@pytest.mark.parametrize("clip, expected", [(True, 1.0), (False, 3.0)])
def test_dpm_solver_clips_an_overshooting_clean_estimate_to_the_mask_range(clip, expected):
    """An x0 network that says 3 everywhere: DPM-Solver++ ends on its estimate, clipped to [-1, 1] when asked."""
    config = ScheduleConfig(prediction_type="sample", clip_sample=clip)
    out, _ = sample(lambda x, t: torch.full_like(x, 3.0), (1, 1, 4, 4, 4), config,
                    torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.allclose(out, torch.full_like(out, expected))


def test_ddpm_evaluates_every_training_timestep_and_its_step_noise_follows_the_seed():
    config = ScheduleConfig(sampler="ddpm", num_train_timesteps=50)

    def run(seed: int) -> tuple[torch.Tensor, int]:
        return sample(lambda x, t: 0.1 * x, (1, 1, 4, 4, 4), config, torch.Generator().manual_seed(seed),
                      torch.device("cpu"))

    (first, evaluations), (again, _), (other, _) = run(0), run(0), run(1)
    assert evaluations == 50
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_default_sampler_of_a_few_step_model_samples_at_the_default_timesteps():
    few = few_step_sampling(ScheduleConfig(prediction_type="sample"))
    default = default_sampling(few)
    assert (default.timestep_spacing, default.clean_final_step) == (None, False)
    assert sampling_scheduler(default).timesteps.tolist() == sampling_scheduler(ScheduleConfig()).timesteps.tolist()
    assert sampling_scheduler(few).timesteps.tolist() == [750, 500, 250, 0]


def test_trained_timesteps_are_kept_once_each_noisiest_first():
    assert ScheduleConfig(trained_timesteps=(249, 999, 499, 749, 249)).trained_timesteps == (999, 749, 499, 249)


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


# ------------------------------------------------------------------------------------------------ distillation
def test_the_distillation_student_steps_on_the_teachers_grid_without_clipping():
    from lesiongen.diffusion.schedules import distillation_schedules, sampling_scheduler

    teacher, student = distillation_schedules(ScheduleConfig(prediction_type="sample"))
    assert (teacher.sampler, teacher.num_inference_steps) == ("dpm_solver", 20)
    assert student.trained_timesteps == (999, 749, 499, 249)
    assert [int(t) for t in sampling_scheduler(student).timesteps] == [999, 749, 499, 249]
    assert set(student.trained_timesteps) <= {int(t) for t in sampling_scheduler(teacher).timesteps}
    assert student.sampler == "ddim" and student.clean_final_step and not student.clip_sample


def test_the_distillation_target_makes_the_ddim_step_land_on_the_teachers_next_state():
    """Known answer: a DDIM step (diffusers' own) from x_t with the target as its clean estimate gives x_s; the
    last step's target is the teacher's final sample."""
    from lesiongen.diffusion.schedules import distillation_schedules, distillation_target, sampling_scheduler

    _, student = distillation_schedules(ScheduleConfig(prediction_type="sample"))
    generator = torch.Generator().manual_seed(3)
    x_t, x_s = torch.randn(2, 1, 4, 4, 4, generator=generator), torch.randn(2, 1, 4, 4, 4, generator=generator)
    for t, s in ((999, 749), (749, 499), (499, 249)):
        scheduler = sampling_scheduler(student)
        target = distillation_target(x_t, x_s, t, s, student)
        landed = scheduler.step(target, t, x_t).prev_sample
        assert torch.allclose(landed, x_s, atol=1e-4), (t, s)
    assert torch.equal(distillation_target(x_t, x_s, 249, -1, student), x_s)


def test_a_student_with_exact_targets_retraces_the_teachers_trajectory_in_four_steps():
    """An oracle student (it returns the bank's targets) run by the student's sampler passes through the teacher's
    recorded states and ends on the teacher's 20-step sample."""
    import numpy as np

    from lesiongen.diffusion.schedules import distillation_schedules, seeded_generators
    from lesiongen.training.distillation import student_targets

    teacher, student = distillation_schedules(ScheduleConfig(prediction_type="sample"))

    def teacher_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # any x0 prediction in [-1, 1]
        return torch.tanh(1.5 * x + 0.3 * torch.sin(3 * x) + t.view(-1, 1, 1, 1, 1) / 2000)

    states: dict[int, torch.Tensor] = {}
    shape = (3, 1, 4, 4, 4)
    final, _ = sample(teacher_network, shape, teacher, seeded_generators(0), torch.device("cpu"),
                      lambda t, x: states.__setitem__(t, x.clone()))
    timesteps = student.trained_timesteps
    trajectories = np.stack([*(states[t].numpy() for t in timesteps), final.numpy()], axis=1).astype(np.float32)
    targets = torch.from_numpy(student_targets(trajectories, timesteps, student))
    visited = []

    def oracle_student(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = timesteps.index(int(t[0]))
        visited.append(int(t[0]))
        assert torch.allclose(x, torch.from_numpy(trajectories[:, k]), atol=1e-4)
        return targets[:, k]

    out, evaluations = sample(oracle_student, shape, student, seeded_generators(0), torch.device("cpu"))
    assert evaluations == 4 and visited == list(timesteps)
    assert torch.allclose(out, final, atol=1e-4)
    assert not torch.allclose(states[749], final, atol=0.1)  # the states are not the answer already
