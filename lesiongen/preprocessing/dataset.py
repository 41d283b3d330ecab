"""Read access to a preprocessed dataset: what trainers and evaluations start from (no raw data needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lesiongen.fingerprint.fingerprint import FINGERPRINT_FILE, DatasetFingerprint, load_fingerprint
from lesiongen.io.dataset import find_dataset_folder
from lesiongen.paths import preprocessed_root
from lesiongen.planning.plans import PLANS_NAME, Plans, load_plans, plans_path
from lesiongen.preprocessing.preprocessor import PATCH_FOLDER
from lesiongen.utilities.errors import LesiongenError


@dataclass
class PreprocessedDataset:
    name: str
    folder: Path  # $lesiongen_preprocessed/DatasetXXX_Name
    plans: Plans
    fingerprint: DatasetFingerprint

    @property
    def data_folder(self) -> Path:
        return self.folder / self.plans.data_folder_name

    @property
    def lesion_patch_folder(self) -> Path:
        return self.data_folder / PATCH_FOLDER

    def case_ids(self, split: str = "training") -> list[str]:
        folder = self.data_folder / split
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def open_preprocessed(identifier: str | int, plans_name: str = PLANS_NAME) -> PreprocessedDataset:
    """The preprocessed dataset ``identifier`` (ID or name) with the plans ``plans_name``, with clear errors when a
    step has not run yet."""
    folder = find_dataset_folder(identifier, preprocessed_root())
    plans_file = plans_path(folder, plans_name)
    for path, producer in ((folder / FINGERPRINT_FILE, "lesiongen_extract_fingerprint"),
                           (plans_file, "lesiongen_plan")):
        if not path.is_file():
            preset = " --preset cpu" if plans_name != PLANS_NAME else ""
            raise LesiongenError(f"{path}: not found; run {producer} -d {identifier}{preset} first")
    plans = load_plans(plans_file)
    dataset = PreprocessedDataset(folder.name, folder, plans, load_fingerprint(folder / FINGERPRINT_FILE))
    if not dataset.case_ids():
        raise LesiongenError(f"{dataset.data_folder / 'training'}: no preprocessed cases; run lesiongen_preprocess "
                             f"-d {identifier} first")
    return dataset

