"""A model folder, nnU-Net style: everything a trained model needs, and nothing of the data it was trained on.

``$lesiongen_results/DatasetXXX_Name/TRAINER__PLANS/`` holds ``plans.json`` (the plans the model was trained with),
``dataset.json`` (channel names, labels, file ending) and ``fold_X/checkpoint_final.pt`` (weights, the model's kind
and full configuration, provenance). A folder copied or installed anywhere predicts without the raw or
preprocessed data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lesiongen.io.dataset import DatasetInfo, parse_dataset_json
from lesiongen.models.checkpoint import FINAL
from lesiongen.paths import results_root
from lesiongen.planning.plans import Plans, load_plans
from lesiongen.utilities.errors import LesiongenError

PLANS_JSON = "plans.json"
DATASET_JSON = "dataset.json"
SEPARATOR = "__"


def trainer_folder_name(trainer_variant: str, plans_name: str) -> str:
    return f"{trainer_variant}{SEPARATOR}{plans_name}"


def trainer_folder(dataset_name: str, trainer_variant: str, plans_name: str, root: Path | None = None) -> Path:
    """``$lesiongen_results/DATASET/TRAINER__PLANS`` (``trainer_variant`` e.g. ``diffmask`` or ``seg_diffmask``)."""
    return (root or results_root()) / dataset_name / trainer_folder_name(trainer_variant, plans_name)


@dataclass(frozen=True)
class ModelFolder:
    path: Path  # TRAINER__PLANS

    @property
    def variant(self) -> str:
        """The trainer part of the folder name (``diffmask``, ``seg_none``)."""
        return self.path.name.split(SEPARATOR)[0]

    @property
    def plans_name(self) -> str:
        return self.path.name.split(SEPARATOR, 1)[1] if SEPARATOR in self.path.name else ""

    def check(self) -> "ModelFolder":
        if not self.path.is_dir():
            raise LesiongenError(f"{self.path}: model folder not found")
        for name in (PLANS_JSON, DATASET_JSON):
            if not (self.path / name).is_file():
                hint = " (results of lesiongen 0.1: copy the dataset's preprocessed dataset.json here)" \
                    if name == DATASET_JSON and (self.path / PLANS_JSON).is_file() else ""
                raise LesiongenError(f"{self.path / name}: missing; a model folder holds {PLANS_JSON}, "
                                     f"{DATASET_JSON} and fold_X/{FINAL}{hint}")
        return self

    def plans(self) -> Plans:
        return load_plans(self.path / PLANS_JSON)

    def dataset_info(self) -> DatasetInfo:
        info, problems = parse_dataset_json(self.path / DATASET_JSON)
        errors = [p for p in problems if not p.is_warning]
        if info is None or errors:
            raise LesiongenError(str(errors[0]) if errors else f"{self.path / DATASET_JSON}: unreadable")
        return info

    def checkpoint(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}" / FINAL

    def trained_folds(self) -> list[str]:
        return sorted(p.parent.name[len("fold_"):] for p in self.path.glob(f"fold_*/{FINAL}"))

    def default_fold(self) -> str:
        """``all`` when a model was trained on every case, else the first trained fold."""
        folds = self.trained_folds()
        if not folds:
            raise LesiongenError(f"{self.path}: no trained fold (fold_X/{FINAL})")
        return "all" if "all" in folds else folds[0]
