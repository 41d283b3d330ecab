"""Cross-validation folds shared by every stage: ``splits_final.json`` in the preprocessed dataset folder.

Like nnU-Net: five folds over the training cases, shuffled with a fixed seed, written once and then only read, so
mask generators, the inpainter and the segmentation folds of one dataset all hold out the same cases.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json, write_json
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
N_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """``n_folds`` folds (fewer when there are fewer cases), each case validated exactly once."""
    cases = sorted(case_ids)
    if len(cases) < 2:
        raise LesiongenError(f"cross-validation needs at least 2 training cases, found {len(cases)}")
    n_folds = min(n_folds, len(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    splits = []
    for val_index in np.array_split(order, n_folds):
        val = sorted(cases[i] for i in val_index)
        splits.append({"train": [c for c in cases if c not in val], "val": val})
    return splits


def load_or_create_splits(preprocessed_dataset: Path, case_ids: list[str]) -> list[dict[str, list[str]]]:
    path = preprocessed_dataset / SPLITS_FILE
    if path.is_file():
        splits = read_json(path)
        known = set(case_ids)
        listed = {c for fold in splits for c in fold["train"] + fold["val"]}
        if listed - known:
            raise LesiongenError(f"{path}: lists cases that are not preprocessed: {sorted(listed - known)[:5]}")
        return splits
    splits = make_splits(case_ids)
    write_json(path, splits)
    logger.info("wrote %s (%d folds)", path, len(splits))
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int | str) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold``; fold ``all`` trains and validates on every case."""
    if fold == "all":
        cases = sorted({c for s in splits for c in s["train"] + s["val"]})
        return cases, cases
    if not 0 <= int(fold) < len(splits):
        raise LesiongenError(f"fold {fold} does not exist: the splits have folds 0-{len(splits) - 1} and 'all'")
    split = splits[int(fold)]
    return list(split["train"]), list(split["val"])


def case_subset(cases: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded share ``fraction`` of ``cases`` (rounded half up, at least one), in their order: one point of a
    learning curve. Each training seed draws its own subset, so a comparison over seeds also varies which cases."""
    if not 0.0 < fraction <= 1.0:
        raise LesiongenError(f"a share of the training cases must be in (0, 1], got {fraction}")
    keep = max(1, math.floor(fraction * len(cases) + 0.5))
    if keep >= len(cases):
        return list(cases)
    chosen = np.random.default_rng(derive_seed(seed, "case subset")).choice(len(cases), size=keep, replace=False)
    return [cases[i] for i in sorted(chosen)]


def parse_fold(text: str) -> int | str:
    """A fold as the command line gives it: 0-4 or ``all``."""
    if text == "all":
        return "all"
    if not str(text).isdigit():
        raise LesiongenError(f"fold must be 0-4 or 'all', got '{text}'")
    return int(text)
