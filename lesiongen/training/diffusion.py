"""What the two diffusion trainers (diffmask, inpaint) share: the DDPM scheduler of their model's own noise schedule,
which adds the training noise, at every training timestep or only at the few-step sampler's (``few_step_training``:
a short schedule, as fastWDM3D trains). The schedule lives in the model's configuration, so it is rebuilt when a
checkpoint (with its configuration) is loaded to continue. The plans choose the model's own sampler (the stage's
``sampling``); ``--set few_step_sampling=true|false`` overrides them."""

from __future__ import annotations

import torch

from lesiongen.diffusion.schedules import add_noise, training_scheduler
from lesiongen.planning.plans import FEW_STEP_SAMPLING


class DiffusionTraining:
    model: object
    generator: torch.Generator
    few_step_sampling: bool

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        where = f"plans {self.plans.plans_name} of {self.plans.dataset_name}, stage {self.model_class.stage}"
        self.few_step_sampling = self.stage_plan.planned_sampling(where) == FEW_STEP_SAMPLING

    def initialize(self) -> None:
        super().initialize()
        self.scheduler = training_scheduler(self.model.config.schedule)

    def after_load(self) -> None:
        super().after_load()
        self.scheduler = training_scheduler(self.model.config.schedule)

    def add_training_noise(self, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy, noise, timesteps) at the timesteps the model's schedule trains (all, or a short schedule's)."""
        return add_noise(self.scheduler, clean, self.generator, self.model.config.schedule.trained_timesteps)
