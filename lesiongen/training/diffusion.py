"""What the two diffusion trainers (diffmask, inpaint) share: the DDPM scheduler of their model's own noise schedule,
which adds the training noise. The schedule lives in the model's configuration, so it is rebuilt when a checkpoint
(with its configuration) is loaded to continue."""

from __future__ import annotations

from lesiongen.diffusion.schedules import training_scheduler


class DiffusionTraining:
    model: object

    def initialize(self) -> None:
        super().initialize()
        self.scheduler = training_scheduler(self.model.config.schedule)

    def after_load(self) -> None:
        super().after_load()
        self.scheduler = training_scheduler(self.model.config.schedule)
