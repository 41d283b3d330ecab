"""Classifier-free guidance (Ho & Salimans 2022): extrapolate from the unconditioned prediction through the
conditioned one. Scale 1 is the conditioned model alone; larger scales follow the condition more strongly."""

from __future__ import annotations

import torch


def classifier_free_guidance(conditioned: torch.Tensor, unconditioned: torch.Tensor, scale: float) -> torch.Tensor:
    return unconditioned + scale * (conditioned - unconditioned)
