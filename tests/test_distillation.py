"""diffmask's distilled 4-step student (``--set distill_steps=N``): the student learns from a bank of teacher
trajectories, is saved as a second network of the model, and runs under ``--sampling distilled`` (or ``few_step``
when the choice after training took it). The schedule maths (targets, the oracle student retracing the teacher) is
tested in test_schedules.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY, TINY_NAME, trained_model
from lesiongen.cli import train as train_cli
from lesiongen.diffusion.schedules import ScheduleConfig, distillation_schedules, training_scheduler
from lesiongen.models.checkpoint import FINAL, load_checkpoint
from lesiongen.training.distillation import (DistillationSettings, TeacherBank, build_teacher_bank, distill_student,
                                             student_batch)
from lesiongen.utilities.errors import LesiongenError


@pytest.fixture(scope="module")
def distilled(tiny_preprocessed):
    """diffmask trained 2 steps on fold 0, then a student distilled for 3 steps from 6 teacher trajectories, half
    of each batch real patches."""
    assert train_cli.main([str(TINY.dataset_id), "diffmask", "0", "-device", "cpu", "--steps", "2", "--batch_size",
                           "4", "--set", "distill_steps=3", "--set", "distill_trajectories=6", "--set",
                           "distill_real_fraction=0.5"]) == 0
    path = tiny_preprocessed["results"] / TINY_NAME / "diffmask__lesiongenPlans" / "fold_0" / FINAL
    return tiny_preprocessed, load_checkpoint(path)


def test_the_student_is_saved_with_the_model_and_differs_from_its_teacher(distilled):
    _, state = distilled
    assert set(state["networks"]) == set(state["ema"]) == {"denoiser", "student"}
    teacher, student = state["networks"]["denoiser"], state["networks"]["student"]
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the student was trained
    record = state["extra"]["distillation"]
    assert (record["steps"], record["trajectories"], record["timesteps"]) == (3, 6, [999, 749, 499, 249])
    assert record["real_per_batch"] == 2
    assert record["teacher"] == {"sampler": "dpm_solver", "steps": 20, "timestep_spacing": "trailing"}
    assert "distilled" in state["extra"]["calibration"]["few_step_variants"]


def test_the_loaded_model_samples_with_its_student_in_four_evaluations(distilled):
    model = trained_model("diffmask")
    student_schedule = distillation_schedules(model.config.schedule)[1]
    assert model.config.student_schedule == student_schedule
    assert {"default", "few_step", "distilled"} <= set(model.config.preset_thresholds)
    twin = model.with_sampling("distilled")
    assert twin.sampling_network == "student" and twin.config.schedule == student_schedule
    assert twin.config.threshold == model.config.preset_thresholds["distilled"]
    masks = twin.sample_masks(3, seed=0)
    assert masks.shape == (3, *model.patch_size) and twin.last_evaluations == 4
    # the student's sampler on the teacher's network gives other values: the student network is what runs
    controls = np.zeros((2, *model.patch_size), np.uint8)
    controls[:, 5:10, 5:10, 5:10] = 1
    by_student, _ = twin.denoise(controls, None, seed=1)
    by_teacher, _ = model.running("denoiser").denoise(controls, None, seed=1, schedule=student_schedule)
    assert not np.allclose(by_student, by_teacher)


def test_few_step_runs_the_student_when_the_choice_took_it(distilled):
    model = trained_model("diffmask")
    model.config = dataclasses.replace(model.config, few_step_variant="distilled")
    twin = model.with_sampling("few_step")
    assert twin.sampling_network == "student" and twin.config.schedule == model.config.student_schedule
    assert twin.config.threshold == model.config.preset_thresholds["few_step"]
    assert model.with_sampling("default").sampling_network == "denoiser"


def test_a_model_without_a_student_refuses_the_distilled_sampler(tiny_plans):
    from lesiongen.models.mask_generators import DiffMaskConfig, DiffMaskGenerator

    model = DiffMaskGenerator(tiny_plans, DiffMaskConfig(priors={}))
    assert set(model.networks) == {"denoiser"}
    with pytest.raises(LesiongenError, match="has no distilled student"):
        model.with_sampling("distilled")
    with pytest.raises(ValueError, match="needs a student schedule"):
        DiffMaskConfig(priors={}, few_step_variant="distilled")


@pytest.mark.parametrize("setting", ["few_step_training=true", "few_step_sampling=true"])
def test_distillation_is_refused_with_a_few_step_own_sampler_before_anything_is_written(tiny_preprocessed, setting,
                                                                                       capsys):
    folder = tiny_preprocessed["results"] / TINY_NAME / "diffmask__lesiongenPlans"
    before = sorted(folder.rglob("*")) if folder.exists() else []
    assert train_cli.main([str(TINY.dataset_id), "diffmask", "1", "-device", "cpu", "--steps", "1", "--set",
                           "distill_steps=2", "--set", setting]) == 1
    assert "cannot be combined with a few-step own sampler" in capsys.readouterr().err
    assert (sorted(folder.rglob("*")) if folder.exists() else []) == before


def test_distilling_fits_the_banks_targets_and_leaves_the_teacher_alone():
    """A small network distilled on a bank whose targets are a fixed function of the states: the loss falls to a
    fraction of its start, the student moves and the teacher's weights do not."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 1, 3, padding=1))

    class Timed(nn.Module):  # the networks take (x, t)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            return self.inner(x)

    network = Timed(teacher)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    rng = np.random.default_rng(0)
    n, shape = 16, (6, 6, 6)
    states = rng.normal(size=(n, 4, 1, *shape)).astype(np.float32)
    controls = (rng.random((n, *shape)) < 0.3).astype(np.uint8)
    bank = TeacherBank(controls=controls, tissue=None, states=states, targets=np.tanh(0.5 * states),
                       timesteps=(999, 749, 499, 249))

    def network_input(x, c, t):
        return torch.cat([x, torch.from_numpy(c[:, None].astype(np.float32))], dim=1)

    def loss_fn(error, region):
        return error.mean(), {}

    settings = DistillationSettings(steps=150, batch_size=8, learning_rate=3e-3, weight_decay=0.0, grad_clip=1.0,
                                    seed=0)
    student, record = distill_student(network, bank, network_input, loss_fn, settings, torch.device("cpu"))
    assert record["loss_last"] < 0.3 * record["loss_first"]
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert not student.training


class _Constant(nn.Module):
    """A network whose output is one learnable value everywhere: trained on squared error it settles on the mean
    of its targets, which makes what a batch is made of measurable."""

    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.value.expand(x.shape[0], 1, *x.shape[2:])


@pytest.mark.parametrize("real_fraction, expected", [(0.0, 0.5), (0.25, 0.125), (0.5, -0.25)])
def test_the_real_share_of_the_batches_pulls_the_student_towards_the_real_masks(real_fraction, expected):
    """Teacher targets 0.5 everywhere, real masks empty (-1): a constant student settles on the batch's mean target,
    (1 - f) * 0.5 + f * (-1) for a real share f of 8 samples."""
    n, shape = 4, (3, 3, 3)
    bank = TeacherBank(controls=np.zeros((n, *shape), np.uint8), tissue=None,
                       states=np.zeros((n, 4, 1, *shape), np.float32),
                       targets=np.full((n, 4, 1, *shape), 0.5, np.float32), timesteps=(999, 749, 499, 249))
    drawn: list[np.ndarray] = []

    def real_batch(rng, timesteps):
        drawn.append(timesteps)
        b = len(timesteps)
        return (np.zeros((b, 1, *shape), np.float32), np.full((b, 1, *shape), -1.0, np.float32),
                np.zeros((b, *shape), np.uint8), None)

    settings = DistillationSettings(steps=300, batch_size=8, learning_rate=0.02, weight_decay=0.0, grad_clip=10.0,
                                    seed=0, real_fraction=real_fraction)
    student, record = distill_student(_Constant(), bank, lambda x, c, t: x, lambda error, region: (error.mean(), {}),
                                      settings, torch.device("cpu"), real_batch=real_batch)
    assert float(student.value.detach()) == pytest.approx(expected, abs=0.03)
    assert record["real_per_batch"] == round(8 * real_fraction)
    assert all(set(t) <= {999, 749, 499, 249} for t in drawn)  # real samples at the student's timesteps only


def test_a_real_share_without_real_patches_is_refused():
    states = np.zeros((1, 4, 1, 2, 2, 2), np.float32)
    bank = TeacherBank(controls=np.zeros((1, 2, 2, 2), np.uint8), tissue=None, states=states, targets=states,
                       timesteps=(999, 749, 499, 249))
    settings = DistillationSettings(steps=1, batch_size=4, learning_rate=0.0, weight_decay=0.0, grad_clip=1.0, seed=0,
                                    real_fraction=0.1)
    assert settings.real_per_batch() == 1  # any positive share gives at least one real sample
    with pytest.raises(ValueError, match="needs real_batch"):
        distill_student(_Constant(), bank, lambda x, c, t: x, lambda e, r: (e.mean(), {}), settings,
                        torch.device("cpu"))


def test_real_patches_are_noised_to_the_asked_timesteps_by_the_training_schedule(tiny_preprocessed):
    """The trainer's real part of a batch: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e with x_0 the training
    patch's mask in [-1, 1] (known answer from the scheduler's alphas)."""
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer

    trainer = DiffMaskTrainer(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions())
    trainer.initialize()
    trainer.load_training_data()
    timesteps = np.array([999, 249, 249, 499])
    noisy, clean, controls, tissue = trainer.noised_real_patches(trainer.model, np.random.default_rng(3), timesteps)
    assert noisy.shape == clean.shape == (4, 1, *trainer.model.patch_size)
    assert set(np.unique(clean)) == {-1.0, 1.0} and controls.shape == (4, *trainer.model.patch_size)
    assert (controls[clean[:, 0] > 0] > 0).all()  # each mask comes with its own sphere control
    abar = trainer.scheduler.alphas_cumprod.numpy()[timesteps].reshape(-1, 1, 1, 1, 1)
    noise = (noisy - np.sqrt(abar) * clean) / np.sqrt(1 - abar)
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(1.0, abs=0.05)
    assert (tissue is None) == (trainer.data.tissue is None)


def test_a_configuration_with_a_student_round_trips_through_json():
    """A model configuration with a student schedule survives the checkpoint's JSON."""
    from lesiongen.models.mask_generators import DiffMaskConfig
    from lesiongen.utilities.files import json_plain
    from lesiongen.utilities.serialization import from_dict

    student = distillation_schedules(ScheduleConfig(prediction_type="sample"))[1]
    config = DiffMaskConfig(priors={}, student_schedule=student, few_step_variant="distilled",
                            preset_thresholds={"distilled": -0.2})
    assert from_dict(DiffMaskConfig, json_plain(dataclasses.asdict(config))) == config


def test_the_last_steps_estimate_is_judged_as_sampled_clamped_and_the_others_as_they_are():
    from lesiongen.training.distillation import as_sampled

    prediction = torch.tensor([1.5, -2.0, 0.3, 1.7]).view(2, 1, 2, 1, 1)
    out = as_sampled(prediction, torch.tensor([True, False]))
    assert out.flatten().tolist() == pytest.approx([1.0, -1.0, 0.3, 1.7])


def test_a_teacher_path_of_one_clean_mask_asks_every_student_step_for_that_mask():
    """Teacher states on one deterministic DDIM path of x0 (x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, eps fixed): the
    clean estimate whose step lands on the next state is x0 at every student step, the last one included."""
    student = distillation_schedules(ScheduleConfig(prediction_type="sample"))[1]
    alphas = training_scheduler(student).alphas_cumprod.double().numpy()
    rng = np.random.default_rng(0)
    x0 = np.where(rng.random((2, 1, 4, 4, 4)) < 0.3, 1.0, -1.0)
    eps = rng.normal(size=x0.shape)
    timesteps = (999, 749, 499, 249)
    path = [np.sqrt(alphas[t]) * x0 + np.sqrt(1 - alphas[t]) * eps for t in timesteps]
    trajectories = np.stack([*path, x0], axis=1).astype(np.float32)
    bank = build_teacher_bank(lambda controls, tissue: trajectories, np.zeros((2, 4, 4, 4), np.uint8), None, student)
    assert bank.timesteps == timesteps
    np.testing.assert_array_equal(bank.states, trajectories[:, :-1])
    np.testing.assert_allclose(bank.targets, np.repeat(x0[:, None], 4, axis=1), atol=1e-4)


def test_a_batch_keeps_each_samples_parts_from_one_trajectory_and_flags_the_last_step():
    """Trajectory i at student step k holds the state i + 10 k, the target 0.5 above it and the control i: every part
    of a drawn sample must come from the same trajectory and step, its final mask be that trajectory's last target,
    and exactly the samples of the last step be flagged."""
    n, shape, timesteps = 5, (2, 2, 2), (999, 749, 499, 249)
    states = (np.arange(n)[:, None] + 10.0 * np.arange(4)[None, :]).astype(np.float32)
    states = np.broadcast_to(states[:, :, None, None, None, None], (n, 4, 1, *shape)).copy()
    controls = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, *shape)).copy()
    bank = TeacherBank(controls=controls, tissue=None, states=states, targets=states + 0.5, timesteps=timesteps)
    batch = student_batch(bank, np.random.default_rng(0), 64)
    item = batch.controls[:, 0, 0, 0].astype(np.float32)
    step = ((batch.states[:, 0, 0, 0, 0] - item) / 10).astype(int)
    assert set(step) == {0, 1, 2, 3} and set(item) == set(range(n))
    np.testing.assert_array_equal(batch.timesteps, np.asarray(timesteps)[step])
    np.testing.assert_array_equal(batch.targets[:, 0, 0, 0, 0], batch.states[:, 0, 0, 0, 0] + 0.5)
    np.testing.assert_array_equal(batch.finals[:, 0, 0, 0, 0], item + 30.5)
    np.testing.assert_array_equal(batch.last_step, step == 3)


def test_the_students_loss_weighs_the_sphere_and_the_lesion_its_trajectory_ends_on():
    """The loss region is the sphere control or the teacher's final lesion: here a lesion reaching past its sphere."""
    n, shape = 3, (4, 4, 4)
    controls = np.zeros((n, *shape), np.uint8)
    controls[:, 1:3, 1:3, 1:3] = 1
    targets = np.full((n, 4, 1, *shape), -1.0, np.float32)
    targets[:, -1, 0, 1:3, 1:3, 0:4] = 1.0  # the final lesion, longer than the sphere along x
    bank = TeacherBank(controls=controls, tissue=None, states=np.zeros_like(targets), targets=targets,
                       timesteps=(999, 749, 499, 249))
    regions: list[torch.Tensor] = []

    def loss_fn(error, region):
        regions.append(region)
        return (error * region).mean(), {}

    settings = DistillationSettings(steps=1, batch_size=4, learning_rate=0.01, weight_decay=0.0, grad_clip=1.0, seed=0)
    distill_student(_Constant(), bank, lambda x, c, t: x, loss_fn, settings, torch.device("cpu"))
    expected = np.zeros(shape, bool)
    expected[1:3, 1:3, 0:4] = True
    assert regions[0].shape == (4, 1, *shape)
    assert all(np.array_equal(r[0].numpy() > 0, expected) for r in regions[0])
