"""Noise schedules from diffusers: DDPM for training, a DPM-Solver++ / DDIM schedule for sampling, and the few-step
preset (a few deterministic DDIM steps, the last of which returns the network's clean estimate). A schedule may
record that its network was trained at a few timesteps only (a short schedule, as fastWDM3D trains): it can then be
sampled only at those. Distillation pairs a many-step teacher sampler with a 4-step DDIM student whose timesteps lie
on the teacher's grid, and gives the clean estimate whose DDIM step lands where the teacher did."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lesiongen.diffusion.presets import (DEFAULT_FEW_STEP_VARIANT, FEW_STEP_VARIANTS, FEW_STEPS,
                                        check_few_step_variant)
from lesiongen.planning.plans import DEFAULT_SAMPLING, FEW_STEP_SAMPLING, SAMPLING_PRESETS

if TYPE_CHECKING:  # diffusers costs seconds to import: only what samples or trains a diffusion model loads it
    from diffusers import DDPMScheduler

SAMPLERS = ("dpm_solver", "ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # diffusers' names for what the network predicts
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # MONAI's 3D diffusion tutorials and LDM use it
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    sampler: str = "dpm_solver"
    num_inference_steps: int = 20  # network evaluations per sample with dpm_solver / ddim
    # bounded data (masks in [-1, 1]): clip each step's x0 estimate; without it an imperfect noise estimate at high
    # noise levels is amplified by 1 / sqrt(alpha_bar) and the chain diverges
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    # where the sampling timesteps sit; None is the scheduler's own default (DDIM "leading", DPM-Solver "linspace").
    # "trailing" starts at the last training timestep (pure noise), which matters when there are few steps
    timestep_spacing: str | None = None
    # DDIM: the last step goes to alpha_bar = 1 and returns the clean estimate, instead of stopping at the first
    # training timestep's noise level (DPM-Solver++ always ends clean)
    clean_final_step: bool = False
    # the training timesteps the network has seen; None: all of them. A short schedule (trained only at the
    # few-step sampler's timesteps) cannot be sampled anywhere else
    trained_timesteps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type}; choose one of {PREDICTION_TYPES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler}; choose one of {SAMPLERS}")
        if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.timestep_spacing}; choose one of {TIMESTEP_SPACINGS}")
        if self.trained_timesteps is not None:
            self.trained_timesteps = tuple(sorted({int(t) for t in self.trained_timesteps}, reverse=True))
            if not self.trained_timesteps or not all(0 <= t < self.num_train_timesteps
                                                     for t in self.trained_timesteps):
                raise ValueError(f"trained timesteps {self.trained_timesteps} must lie in "
                                 f"[0, {self.num_train_timesteps})")


def default_sampling(config: ScheduleConfig) -> ScheduleConfig:
    """``config``'s training schedule with the default sampler: DPM-Solver++, 20 steps."""
    defaults = ScheduleConfig()
    return dataclasses.replace(config, sampler=defaults.sampler, num_inference_steps=defaults.num_inference_steps,
                               timestep_spacing=None, clean_final_step=False)


def few_step_sampling(config: ScheduleConfig, steps: int = FEW_STEPS,
                      variant: str = DEFAULT_FEW_STEP_VARIANT) -> ScheduleConfig:
    """``config``'s training schedule sampled in ``steps`` deterministic steps of one of
    :data:`~lesiongen.diffusion.presets.FEW_STEP_VARIANTS` (by default DDIM at the leading timesteps, the last step
    returning the network's clean estimate; DPM-Solver++ always ends clean): for x0-predicting models."""
    check_few_step_variant(variant)
    sampler, spacing = FEW_STEP_VARIANTS[variant]
    return dataclasses.replace(config, sampler=sampler, num_inference_steps=int(steps), timestep_spacing=spacing,
                               clean_final_step=sampler == "ddim")


def distillation_schedules(config: ScheduleConfig, steps: int = FEW_STEPS) -> tuple[ScheduleConfig, ScheduleConfig]:
    """(teacher, student) for distilling ``config``'s default sampler into ``steps`` DDIM steps.

    The teacher is the default sampler (DPM-Solver++, 20 steps) at the "trailing" spacing (999, 949, ..., 49), whose
    grid holds the student's DDIM "trailing" timesteps (999, 749, 499, 249), so each student step has the teacher's
    state at both of its ends. The student is a short schedule at those timesteps (its network is trained only
    there), with a clean final step and without clipping: its step must be exactly the DDIM step the targets of
    :func:`distillation_target` assume."""
    teacher = dataclasses.replace(default_sampling(config), timestep_spacing="trailing")
    student = dataclasses.replace(few_step_sampling(config, steps, variant="ddim_trailing"), clip_sample=False)
    student = short_schedule(student, _sampling_scheduler(student).timesteps)
    off_grid = set(student.trained_timesteps) - {int(t) for t in _sampling_scheduler(teacher).timesteps}
    if off_grid:
        raise ValueError(f"the student's timesteps {sorted(off_grid)} are not on the teacher's grid")
    return teacher, student


def distillation_target(x_t: torch.Tensor, x_s: torch.Tensor, t: int, s: int, config: ScheduleConfig) -> torch.Tensor:
    """The clean estimate whose deterministic DDIM step from ``x_t`` at timestep ``t`` lands exactly on ``x_s`` at
    timestep ``s`` (``s`` < 0: the clean end, where the estimate is ``x_s`` itself).

    DDIM steps x_s = a_s x0 + b_s (x_t - a_t x0) / b_t with a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar); solved for
    x0: (x_s - (b_s / b_t) x_t) / (a_s - b_s a_t / b_t)."""
    if s < 0:
        return x_s
    alphas = training_scheduler(config).alphas_cumprod.double()
    a_t, a_s = alphas[t].sqrt(), alphas[s].sqrt()
    b_t, b_s = (1 - alphas[t]).sqrt(), (1 - alphas[s]).sqrt()
    return ((x_s.double() - (b_s / b_t) * x_t.double()) / (a_s - b_s * a_t / b_t)).to(x_s.dtype)


def sampling_preset(config: ScheduleConfig, name: str,
                    few_step_variant: str = DEFAULT_FEW_STEP_VARIANT) -> ScheduleConfig:
    """The named sampler of :data:`SAMPLING_PRESETS` on ``config``'s training schedule (the few-step preset as
    ``few_step_variant``)."""
    if name == DEFAULT_SAMPLING:
        return default_sampling(config)
    if name == FEW_STEP_SAMPLING:
        return few_step_sampling(config, variant=few_step_variant)
    raise ValueError(f"unknown sampling preset {name}; choose one of {SAMPLING_PRESETS}")


def training_scheduler(config: ScheduleConfig) -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                         prediction_type=config.prediction_type)


def sampling_scheduler(config: ScheduleConfig):
    """The diffusers scheduler that samples ``config``, its timesteps set; refused for a short-schedule network at
    timesteps it was not trained at."""
    scheduler = _sampling_scheduler(config)
    check_trained_timesteps(config, scheduler.timesteps)
    return scheduler


def samples_trained_timesteps(config: ScheduleConfig) -> bool:
    """Whether ``config``'s sampler visits only timesteps its network was trained at (always, without a short
    schedule)."""
    return config.trained_timesteps is None or not untrained_timesteps(config, _sampling_scheduler(config).timesteps)


def _sampling_scheduler(config: ScheduleConfig):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  beta_start=config.beta_start, beta_end=config.beta_end, prediction_type=config.prediction_type)
    if config.timestep_spacing is not None:
        common["timestep_spacing"] = config.timestep_spacing
    if config.sampler == "dpm_solver":
        # dpmsolver++ works on x0; thresholding with a maximum of 1 is plain clipping to [-1, 1]
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                thresholding=config.clip_sample, sample_max_value=1.0)
    elif config.sampler == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=config.clip_sample, set_alpha_to_one=config.clean_final_step)
    elif config.sampler == "ddpm":
        scheduler = DDPMScheduler(**common, clip_sample=config.clip_sample)
    else:
        raise ValueError(f"unknown sampler {config.sampler}; choose one of {SAMPLERS}")
    scheduler.set_timesteps(sampling_evaluations(config))
    return scheduler


def short_schedule(config: ScheduleConfig, timesteps: Sequence[int]) -> ScheduleConfig:
    """``config`` for a network trained only at ``timesteps`` (those of the sampler it will be used with)."""
    return dataclasses.replace(config, trained_timesteps=tuple(int(t) for t in timesteps))


def untrained_timesteps(config: ScheduleConfig, timesteps: Sequence[int]) -> list[int]:
    """The sampling ``timesteps`` at which a network trained on ``config``'s schedule has never been trained."""
    if config.trained_timesteps is None:
        return []
    return [int(t) for t in timesteps if int(t) not in config.trained_timesteps]


def check_trained_timesteps(config: ScheduleConfig, timesteps: Sequence[int]) -> None:
    """Refuse to sample a short-schedule network at timesteps it was never trained at (its output there is noise)."""
    missing = untrained_timesteps(config, timesteps)
    if missing:
        raise ValueError(f"the network was trained only at timesteps {list(config.trained_timesteps)}; this sampler "
                         f"also needs {missing[:4]}{' ...' if len(missing) > 4 else ''} (use the model's own sampler)")


def sampling_evaluations(config: ScheduleConfig) -> int:
    """Network evaluations per sample: every training timestep with ddpm, else the few inference steps."""
    return config.num_train_timesteps if config.sampler == "ddpm" else config.num_inference_steps


def add_noise(scheduler: DDPMScheduler, clean: torch.Tensor, generator: torch.Generator,
              trained_timesteps: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, noise, timesteps) for a training batch; randomness from ``generator`` (on CPU) so runs resume exactly.
    Timesteps are uniform over the training schedule, or over ``trained_timesteps`` (a short schedule)."""
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    if trained_timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
    else:
        choices = torch.as_tensor(list(trained_timesteps), dtype=torch.long)
        timesteps = choices[torch.randint(0, len(choices), (clean.shape[0],), generator=generator)]
    timesteps = timesteps.to(clean.device)
    return scheduler.add_noise(clean, noise, timesteps), noise, timesteps


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to output for the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return clean
    return scheduler.get_velocity(clean, noise, timesteps)


def draw_noise(shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise (on the CPU) from one generator, or from one generator per batch item: each item then
    gets exactly what a batch of one with its generator gets, so batching items does not change their draws."""
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])


def seeded_generators(seed: int | Sequence[int]) -> torch.Generator | list[torch.Generator]:
    """A CPU generator for one seed, or one per seed (per batch item; see :func:`draw_noise`)."""
    if isinstance(seed, (int, np.integer)):
        return torch.Generator().manual_seed(int(seed))
    return [torch.Generator().manual_seed(int(s)) for s in seed]


def batch_part(generator: torch.Generator | Sequence[torch.Generator], part: slice
               ) -> torch.Generator | list[torch.Generator]:
    """The generator(s) for the batch items ``part``: the one shared generator, or those items' own."""
    return generator if isinstance(generator, torch.Generator) else list(generator[part])


@torch.no_grad()
def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           config: ScheduleConfig, generator: torch.Generator | Sequence[torch.Generator],
           device: torch.device, record: Callable[[int, torch.Tensor], None] | None = None
           ) -> tuple[torch.Tensor, int]:
    """Run the reverse process from pure noise; returns the sample and the number of network evaluations.

    ``denoise(x_t, t)`` predicts what ``config.prediction_type`` names (the noise by default); conditioning is the
    caller's business (it closes over it). ``generator``: one for the batch, or one per item (a list), whose draws
    then do not depend on the batch. ``record(t, x_t)`` sees every state before the network does (a teacher's
    trajectory, for distillation).
    """
    scheduler = sampling_scheduler(config)
    x = draw_noise(shape, generator).to(device) * scheduler.init_noise_sigma
    evaluations = 0
    for t in scheduler.timesteps:
        timestep = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        if record is not None:
            record(int(t), x)
        output = denoise(scheduler.scale_model_input(x, t), timestep)
        evaluations += 1
        # the step's own noise (DDPM) must come from the seeded generator too, for reproducible samples
        step_kwargs = {"generator": generator if isinstance(generator, torch.Generator) else list(generator)} \
            if config.sampler == "ddpm" else {}
        x = scheduler.step(output.float(), t, x, **step_kwargs).prev_sample
    return x, evaluations
