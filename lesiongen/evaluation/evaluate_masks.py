"""Mask realism of trained generators against the fold's held-out real lesions, side by side.

Every generator gets the same conditioning: the validation lesion patches with their lesions filled in
(healthy-looking images), their tissue maps and brain masks. The generated masks' per-lesion statistics are
compared with the real validation masks' by 1-D Wasserstein distances (see ``mask_metrics``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from lesiongen.evaluation.mask_metrics import mask_statistics, write_report
from lesiongen.models.conditioning import MaskConditioning
from lesiongen.models.folder import ModelFolder, trainer_folder
from lesiongen.models.mask_generators import MaskGenerator
from lesiongen.models.registry import MASK_GENERATORS, load_model
from lesiongen.planning.plans import MODEL_SAMPLING
from lesiongen.paths import results_root
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.preprocessing.lesion_patches import fill_lesions, load_lesion_patches
from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.provenance import code_version

logger = logging.getLogger(__name__)


def evaluation_folder(dataset: PreprocessedDataset, fold: int | str) -> Path:
    return results_root() / dataset.name / "mask_evaluation" / f"fold_{fold}"


def _folder(dataset: PreprocessedDataset, name: str) -> ModelFolder:
    return ModelFolder(trainer_folder(dataset.name, name, dataset.plans.plans_name))


def trained_generators(dataset: PreprocessedDataset, fold: int | str) -> list[str]:
    return [name for name in MASK_GENERATORS if _folder(dataset, name).checkpoint(fold).is_file()]


def evaluate_mask_generators(dataset: PreprocessedDataset, fold: int | str, trainers: list[str] | None = None,
                             n_masks: int | None = None, seed: int = 0, device: str = "cpu",
                             output: Path | None = None, sampling: str = MODEL_SAMPLING) -> dict:
    """``sampling`` switches diffmask to a sampling preset (``few_step``) with the threshold calibrated for it."""
    trainers = trainers or trained_generators(dataset, fold)
    if not trainers:
        raise LesiongenError(f"no trained mask generator for {dataset.name} fold {fold}; run e.g. "
                             f"lesiongen_train {dataset.name} spheremask {fold} first")
    for name in trainers:
        if name not in MASK_GENERATORS:
            raise LesiongenError(f"{name}: not a mask generator; choose from {', '.join(MASK_GENERATORS)}")
        checkpoint = _folder(dataset, name).checkpoint(fold)
        if not checkpoint.is_file():
            raise LesiongenError(f"{checkpoint}: not found; run lesiongen_train {dataset.name} {name} {fold} first")
    generators = {name: load_model(_folder(dataset, name), fold, device, expect=MaskGenerator).with_sampling(sampling)
                  for name in trainers}
    _, val_cases = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), fold)
    for name, generator in generators.items():
        trained_on = set(generator.provenance.get("train_cases", []))
        if trained_on & set(val_cases) and fold != "all":
            raise LesiongenError(f"{generator.checkpoint}: was trained on held-out case(s) "
                                 f"{sorted(trained_on & set(val_cases))[:3]} of fold {fold}; retrain it")
    real = load_lesion_patches(dataset.lesion_patch_folder, val_cases)
    n = n_masks or len(real)
    index = np.arange(n) % len(real)  # more masks than held-out patches reuse the conditioning in turn
    tissue = real.tissue[index] if real.tissue is not None else None
    filled = np.stack([fill_lesions(real.images[i], real.masks[i], real.brain[i],
                                    None if real.tissue is None else real.tissue[i]) for i in index])
    conditioning = MaskConditioning(brain=real.brain[index], tissue=tissue, images=filled)
    spacing = dataset.plans.target_spacing
    reference = mask_statistics(real.masks, spacing, real.tissue)
    generated, galleries, timing = {}, {}, {}
    for name, generator in generators.items():
        start = time.perf_counter()
        masks = generator.sample_masks(n, conditioning, seed=seed)
        seconds = time.perf_counter() - start
        timing[name] = {"seconds_per_mask": seconds / max(n, 1),
                        "network_evaluations_per_mask": getattr(generator, "last_evaluations", 0)}
        generated[name] = mask_statistics(masks, spacing, tissue)
        galleries[name] = masks
        logger.info("%s: %d masks in %.1f s", name, n, seconds)
    folder = output or evaluation_folder(dataset, fold)
    report = write_report(folder, reference, generated, galleries, real.masks,
                          extra={"dataset": dataset.name, "fold": str(fold), "validation_cases": val_cases,
                                 "n_masks": n, "seed": seed, "spacing_mm": spacing, "timing": timing,
                                 "sampling": sampling,
                                 "samplers": {name: dataclasses.asdict(g.config.schedule)
                                              for name, g in generators.items() if hasattr(g.config, "schedule")},
                                 "provenance": {**code_version(),
                                                "models": {k: g.record() for k, g in generators.items()}}})
    logger.info("wrote %s", folder)
    return report
