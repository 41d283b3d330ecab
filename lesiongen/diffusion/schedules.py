"""Noise schedules from diffusers: DDPM for training, a few-step DDIM / DPM-Solver++ schedule for sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SAMPLERS = ("dpm_solver", "ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # diffusers' names for what the network predicts


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

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type}; choose one of {PREDICTION_TYPES}")


def training_scheduler(config: ScheduleConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                         prediction_type=config.prediction_type)


def sampling_scheduler(config: ScheduleConfig):
    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  beta_start=config.beta_start, beta_end=config.beta_end, prediction_type=config.prediction_type)
    if config.sampler == "dpm_solver":
        # dpmsolver++ works on x0; thresholding with a maximum of 1 is plain clipping to [-1, 1]
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                thresholding=config.clip_sample, sample_max_value=1.0)
    elif config.sampler == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=config.clip_sample, set_alpha_to_one=False)
    elif config.sampler == "ddpm":
        scheduler = DDPMScheduler(**common, clip_sample=config.clip_sample)
    else:
        raise ValueError(f"unknown sampler {config.sampler}; choose one of {SAMPLERS}")
    scheduler.set_timesteps(sampling_evaluations(config))
    return scheduler


def sampling_evaluations(config: ScheduleConfig) -> int:
    """Network evaluations per sample: every training timestep with ddpm, else the few inference steps."""
    return config.num_train_timesteps if config.sampler == "ddpm" else config.num_inference_steps


def add_noise(scheduler: DDPMScheduler, clean: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, noise, timesteps) for a training batch; randomness from ``generator`` (on CPU) so runs resume exactly."""
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
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


@torch.no_grad()
def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           config: ScheduleConfig, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, int]:
    """Run the reverse process from pure noise; returns the sample and the number of network evaluations.

    ``denoise(x_t, t)`` predicts what ``config.prediction_type`` names (the noise by default); conditioning is the
    caller's business (it closes over it).
    """
    scheduler = sampling_scheduler(config)
    x = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    evaluations = 0
    for t in scheduler.timesteps:
        timestep = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        output = denoise(scheduler.scale_model_input(x, t), timestep)
        evaluations += 1
        # the step's own noise (DDPM) must come from the seeded generator too, for reproducible samples
        step_kwargs = {"generator": generator} if config.sampler == "ddpm" else {}
        x = scheduler.step(output.float(), t, x, **step_kwargs).prev_sample
    return x, evaluations
