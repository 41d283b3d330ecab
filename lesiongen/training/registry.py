"""Trainer names as ``lesiongen_train`` takes them, and loading a trained model for sampling."""

from __future__ import annotations

import torch

from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.training.base import Trainer
from lesiongen.training.trainers.diffmask import DiffMaskTrainer
from lesiongen.training.trainers.inpaint import InpaintTrainer
from lesiongen.training.trainers.seg import SegTrainer
from lesiongen.training.trainers.spheremask import SphereMaskTrainer
from lesiongen.training.trainers.unetmask import UNetMaskTrainer
from lesiongen.utilities.errors import LesiongenError

TRAINERS: dict[str, type[Trainer]] = {t.name: t for t in (SphereMaskTrainer, UNetMaskTrainer, DiffMaskTrainer, InpaintTrainer, SegTrainer)}
MASK_GENERATORS = ("spheremask", "unetmask", "diffmask")


def trainer_class(name: str) -> type[Trainer]:
    if name not in TRAINERS:
        raise LesiongenError(f"unknown trainer '{name}'; choose one of {', '.join(TRAINERS)}")
    return TRAINERS[name]


def load_trained(dataset: PreprocessedDataset, name: str, fold: int | str, device: torch.device | str = "cpu",
                 **variant) -> Trainer:
    """The trainer ``name`` of ``fold`` with its final (EMA) weights loaded, ready to sample / predict.

    ``variant`` selects a trainer variant, e.g. ``strategy="diffmask"`` for ``seg``.
    """
    trainer = trainer_class(name)(dataset, fold, device, **variant)
    trainer.load_for_inference()
    return trainer


def parse_fold(text: str) -> int | str:
    if text == "all":
        return "all"
    if not text.isdigit():
        raise LesiongenError(f"fold must be 0-4 or 'all', got '{text}'")
    return int(text)


def pick_device(name: str | None) -> torch.device:
    """``cuda`` when present unless told otherwise; a clear error when the requested device is missing."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LesiongenError("-device cuda: no CUDA device is available; use -device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise LesiongenError("-device mps: MPS is not available; use -device cpu")
    return torch.device(name)
