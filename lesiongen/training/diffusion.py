"""What the two diffusion trainers (diffmask, inpaint) share: the DDPM scheduler of their model's own noise schedule,
which adds the training noise, at every training timestep or only at the few-step sampler's (``few_step_training``:
a short schedule, as fastWDM3D trains). The schedule lives in the model's configuration, so it is rebuilt when a
checkpoint (with its configuration) is loaded to continue."""

from __future__ import annotations

import torch

from lesiongen.diffusion.schedules import add_noise, training_scheduler


class DiffusionTraining:
    model: object
    generator: torch.Generator

    def initialize(self) -> None:
        super().initialize()
        self.scheduler = training_scheduler(self.model.config.schedule)

    def after_load(self) -> None:
        super().after_load()
        self.scheduler = training_scheduler(self.model.config.schedule)

    def add_training_noise(self, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy, noise, timesteps) at the timesteps the model's schedule trains (all, or a short schedule's)."""
        return add_noise(self.scheduler, clean, self.generator, self.model.config.schedule.trained_timesteps)
