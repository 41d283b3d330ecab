"""Model kinds by name, and loading a trained model from its model folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lesiongen.diffusion.schedules import ScheduleConfig
from lesiongen.models.base import LesionModel
from lesiongen.models.checkpoint import ema_weights, load_checkpoint
from lesiongen.models.folder import ModelFolder, trainer_folder
from lesiongen.models.inpainter import Inpainter
from lesiongen.models.mask_generators import (
    DiffMaskGenerator,
    GANMaskGenerator,
    MaskGenerator,
    SphereMaskGenerator,
    UNetMaskGenerator,
)
from lesiongen.models.segmenter import Segmenter
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.serialization import from_dict

MODEL_CLASSES: dict[str, type[LesionModel]] = {
    cls.kind: cls for cls in (SphereMaskGenerator, UNetMaskGenerator, DiffMaskGenerator, GANMaskGenerator,
                              Inpainter, Segmenter)}
MASK_GENERATORS = tuple(k for k, cls in MODEL_CLASSES.items() if issubclass(cls, MaskGenerator))


def model_class(kind: str) -> type[LesionModel]:
    if kind not in MODEL_CLASSES:
        raise LesiongenError(f"unknown model kind '{kind}'; lesiongen has {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind]


def _legacy_description(state: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` entry of a format-1 checkpoint (written before models were split from trainers): the sampling
    settings of that version, with what the checkpoint recorded (priors, threshold, prediction type, contrasts)."""
    kind, extra = state["trainer"], state.get("extra", {})
    schedule = ScheduleConfig(prediction_type=extra.get("prediction_type", "epsilon"))
    config: Any
    if kind in ("spheremask", "unetmask", "diffmask"):
        priors = extra.get("sphere_priors", {})
        config = {"priors": priors}
        if kind == "diffmask":
            config.update(schedule=schedule.__dict__, threshold=float(extra.get("threshold", 0.0)))
    elif kind == "inpaint":
        config = {"schedule": schedule.__dict__, "contrast_bank": extra.get("contrast_bank", {})}
    else:
        config = {}
    return {"kind": kind, "config": config}


def model_config_from_state(state: dict[str, Any], source: Any = None) -> tuple[type[LesionModel], Any]:
    """The model class and typed configuration a checkpoint describes."""
    description = state.get("model") or _legacy_description(state)
    cls = model_class(description["kind"])
    try:
        return cls, from_dict(cls.config_class, description["config"])
    except (TypeError, KeyError, ValueError, LesiongenError) as exc:
        raise LesiongenError(f"{source}: its {cls.kind} configuration cannot be read ({exc})") from None


def model_from_state(state: dict[str, Any], plans, device: torch.device | str = "cpu", source: Any = None,
                     weights: str = "ema") -> LesionModel:
    """Build the model a checkpoint describes and load its weights (``ema``, the default, or the raw ``networks``)."""
    cls, config = model_config_from_state(state, source)
    model = cls(plans, config, device)
    if weights == "ema":
        model.load_weights({k: ema_weights(v) for k, v in state.get("ema", {}).items()}, source)
    else:
        model.load_weights(state.get("networks", {}), source)
    model.provenance = dict(state.get("provenance", {}))
    return model


def load_model(folder: ModelFolder | Path, fold: int | str | None = None, device: torch.device | str = "cpu",
               expect: type[LesionModel] | None = None) -> LesionModel:
    """The trained model of ``fold`` (default: ``all`` when trained, else the first fold) from a model folder.

    Reads ``plans.json`` and ``fold_X/checkpoint_final.pt`` only; writes nothing and leaves every global random
    generator as it was.
    """
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(Path(folder))
    folder.check()
    fold = folder.default_fold() if fold is None else fold
    path = folder.checkpoint(fold)
    if not path.is_file():
        trained = folder.trained_folds()
        raise LesiongenError(f"{path}: not found (trained folds: {', '.join(trained) or 'none'})")
    state = load_checkpoint(path, device)
    model = model_from_state(state, folder.plans(), device, source=path)
    if expect is not None and not isinstance(model, expect):
        raise LesiongenError(f"{path}: holds a {model.kind} model, not a {expect.__name__}")
    model.checkpoint = path
    return model


def load_trained_model(dataset_name: str, variant: str, plans_name: str, fold: int | str | None = None,
                       device: torch.device | str = "cpu", root: Path | None = None) -> LesionModel:
    """The model ``variant`` (e.g. ``diffmask``, ``seg_none``) of a results dataset, by the standard layout."""
    return load_model(ModelFolder(trainer_folder(dataset_name, variant, plans_name, root)), fold, device)
