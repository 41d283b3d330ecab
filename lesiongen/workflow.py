"""The plan-and-preprocess workflow over the standard folders: fingerprint -> plans -> preprocessed data.

Each step reads what the previous one wrote, so the CLI can run them together or one at a time.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lesiongen.fingerprint.fingerprint import (
    FINGERPRINT_FILE,
    DatasetFingerprint,
    extract_fingerprint,
    input_signature,
    load_fingerprint,
    save_fingerprint,
)
from lesiongen.io.dataset import RawDataset, load_dataset
from lesiongen.io.integrity import verify_dataset
from lesiongen.paths import preprocessed_root
from lesiongen.planning.plans import PLANS_NAME, Plans, load_plans, plans_file_name, plans_path, save_plans
from lesiongen.planning.presets import PRESETS
from lesiongen.planning.planner import plan_dataset
from lesiongen.preprocessing.preprocessor import preprocess_dataset
from lesiongen.utilities.errors import DatasetError, LesiongenError
from lesiongen.utilities.files import atomic_path
from lesiongen.utilities.locks import exclusive_lock

logger = logging.getLogger(__name__)


def preprocessed_folder(dataset: RawDataset) -> Path:
    return preprocessed_root() / dataset.name


def plans_data_folder(dataset: RawDataset, plans: Plans) -> Path:
    return preprocessed_folder(dataset) / plans.data_folder_name


def open_dataset(identifier: str | int) -> RawDataset:
    return load_dataset(identifier)


def check_dataset(dataset: RawDataset, full: bool = False, num_processes: int = 1) -> None:
    """Names and counts, headers of every case always; with ``full`` the voxels of healthy and test scans too.

    Training cases' voxels are checked while fingerprinting, which reads them anyway. Raises DatasetError with
    every problem found; logs warnings. The full pass re-reads the headers of healthy and test scans, so a header
    problem comes back from both passes: identical problems are reported once.
    """
    problems = list(dataset.layout_problems)
    problems += verify_dataset(dataset, full=False, num_processes=num_processes)
    if full:
        problems += verify_dataset(dataset, full=True, num_processes=num_processes, splits=("healthy", "test"))
    problems = list(dict.fromkeys(problems))  # Problem is frozen: equal problems hash alike; order is kept
    errors = [p for p in problems if not p.is_warning]
    if errors:
        raise DatasetError(problems)
    for warning in problems:
        logger.warning("%s: %s", warning.path, warning.message)


def _require(path: Path, producer: str, dataset: RawDataset) -> Path:
    """``path`` if an earlier step wrote it, else a clear error naming the command that writes it."""
    if not path.is_file():
        raise LesiongenError(f"{path}: not found; run {producer} -d {dataset.dataset_id} first")
    return path


def run_fingerprint(dataset: RawDataset, num_processes: int = 1, clean: bool = False) -> DatasetFingerprint:
    """Fingerprint the training cases (reusing an up-to-date one); call :func:`check_dataset` first."""
    folder = preprocessed_folder(dataset)
    path = folder / FINGERPRINT_FILE
    if path.is_file() and not clean:
        existing = load_fingerprint(path)
        if existing.input_signature == input_signature(dataset):
            logger.info("fingerprint is up to date: %s", path)
            return existing
        logger.info("training data changed since the last fingerprint; extracting again")
    logger.info("extracting the fingerprint of %s (%d cases)", dataset.name, len(dataset.training))
    fingerprint = extract_fingerprint(dataset, num_processes)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "dataset.json") as tmp:
        shutil.copyfile(dataset.folder / "dataset.json", tmp)
    save_fingerprint(fingerprint, path)
    logger.info("wrote %s", path)
    return fingerprint


def run_planning(dataset: RawDataset, fingerprint: DatasetFingerprint | None = None,
                 gpu_memory_target_gb: float = 8.0, presets: tuple[str, ...] = (),
                 lesion_margin_mm: float | None = None, sampling: str | None = None) -> Plans:
    """Write the default plans (and each preset's plans next to them); returns the default plans.
    ``lesion_margin_mm`` replaces the planned context around the lesions in the lesion patch, ``sampling`` the
    planned sampler of newly trained diffusion models."""
    folder = preprocessed_folder(dataset)
    if fingerprint is None:
        fingerprint = load_fingerprint(_require(folder / FINGERPRINT_FILE, "lesiongen_extract_fingerprint", dataset))
    has_masks = all(c.brain_mask is not None for c in dataset.training)
    plans = plan_dataset(fingerprint, dataset.info, gpu_memory_target_gb, has_brain_masks=has_masks,
                         lesion_margin_mm=lesion_margin_mm, sampling=sampling)
    for note in plans.notes:
        logger.info("plan: %s", note)
    for written in [plans, *(PRESETS[name](plans) for name in presets)]:
        save_plans(written, folder / plans_file_name(written.plans_name))
        logger.info("wrote %s", folder / plans_file_name(written.plans_name))
    return plans


def run_preprocessing(dataset: RawDataset, plans: Plans | None = None, num_processes: int = 1,
                      clean: bool = False) -> dict[str, int]:
    folder = preprocessed_folder(dataset)
    if plans is None:
        plans = load_plans(_require(plans_path(folder, PLANS_NAME), "lesiongen_plan", dataset))
    output = plans_data_folder(dataset, plans)
    with exclusive_lock(folder, "preprocessing"):  # a second run on this dataset stops here, before touching it
        if clean and output.exists():
            logger.info("--clean: removing %s", output)
            shutil.rmtree(output)
        counts = preprocess_dataset(dataset, plans, output, num_processes)
    logger.info("preprocessed %d case(s), skipped %d up-to-date case(s), %d lesion patches -> %s",
                counts["done"], counts["skipped"], counts["lesion_patches"], output)
    return counts
