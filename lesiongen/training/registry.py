"""Trainer names as ``lesiongen_train`` takes them."""

from __future__ import annotations

from lesiongen.training.base import Trainer
from lesiongen.training.trainers.diffmask import DiffMaskTrainer
from lesiongen.training.trainers.ganmask import GANMaskTrainer
from lesiongen.training.trainers.inpaint import InpaintTrainer
from lesiongen.training.trainers.seg import SegTrainer
from lesiongen.training.trainers.spheremask import SphereMaskTrainer
from lesiongen.training.trainers.unetmask import UNetMaskTrainer
from lesiongen.utilities.errors import LesiongenError

TRAINERS: dict[str, type[Trainer]] = {t.name: t for t in (SphereMaskTrainer, UNetMaskTrainer, DiffMaskTrainer,
                                                          GANMaskTrainer, InpaintTrainer, SegTrainer)}


def trainer_class(name: str) -> type[Trainer]:
    if name not in TRAINERS:
        raise LesiongenError(f"unknown trainer '{name}'; choose one of {', '.join(TRAINERS)}")
    return TRAINERS[name]
