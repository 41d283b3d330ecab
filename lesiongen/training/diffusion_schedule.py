"""What the two diffusion trainers (diffmask, inpaint) share about their noise schedule: the training scheduler, and
the prediction type recorded in every checkpoint and adopted again when one is loaded."""

from __future__ import annotations

from typing import Any, ClassVar

from lesiongen.diffusion.schedules import ScheduleConfig, stored_schedule, training_scheduler


class DiffusionScheduleMixin:
    schedule: ClassVar[ScheduleConfig]
    extra: dict[str, Any]

    def init_schedule(self) -> None:
        """Call from ``build_networks``: before any checkpoint is written or read."""
        self.scheduler = training_scheduler(self.schedule)
        self.extra["prediction_type"] = self.schedule.prediction_type

    def after_load(self) -> None:
        adopted = stored_schedule(self.schedule, self.extra)
        if adopted != self.schedule:
            self.schedule = adopted  # an instance attribute: the class default stays as it is
            self.scheduler = training_scheduler(adopted)
