"""Synthetic training cases for a segmentation fold, made from the healthy scans and cached with their provenance.

Every model used is the one trained on **the same fold**, and it is checked: a generator or inpainter whose
training cases differ from the fold's is refused, so no validation lesion reaches a synthetic case; copy_paste
and realmask take their donor lesions from the fold's training cases only.

Cases live in ``$lesiongen_preprocessed/DatasetXXX/synthetic/STRATEGY/fold_X/seed_S/`` (S: the seg run's seed, so
runs with different seeds neither share nor overwrite each other's cases) in the preprocessed format
(``syn_000.b2nd``, ``_seg.b2nd``, ``_locations.npz``, ``.json`` last). Runs of one seed at different synthetic
ratios share the cases they have in common; the folder is locked while cases are made, so a second run waits and
then reuses them. The JSON records what made the case (strategy, fold, seed, healthy source, the sha256 of every
model, the plans hash, the code) and what it holds (lesion count and volume). A rerun reuses a case only when the
part of that record that determines it matches what is asked now; anything else is made again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lesiongen.inference.copy_paste import copy_paste, donor_lesions
from lesiongen.inference.strategies import SYNTHETIC, strategy as get_strategy
from lesiongen.inference.synthesis import (EditJob, count_fallbacks, finished_job, model_space_synthesis_job,
                                           run_jobs)
from lesiongen.models.folder import trainer_folder
from lesiongen.models.registry import load_model
from lesiongen.planning.priors import fold_sphere_priors
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.preprocessing.lesion_patches import load_lesion_patches
from lesiongen.preprocessing.storage import CHECKSUMS, case_checksums, load_array, save_array
from lesiongen.training.seg_data import SegCase
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, read_json, write_json
from lesiongen.utilities.locks import exclusive_lock
from lesiongen.utilities.progress_log import ProgressLog
from lesiongen.utilities.provenance import code_version, json_sha256, sha256_file
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger(__name__)

# bump when what a seed and set of models produce changes, so cached cases are made again (5: copy_paste keeps the
# recipient's voxels where its carved margin reaches past the donor's brain); tests/test_synthesis_reference.py
# fails when the output changes and this does not
SYNTHESIS_VERSION = 5
EMPTY_RETRIES = 3  # a draw may give no lesion (e.g. every mask below the minimum lesion size): redraw
MAX_EMPTY_FRACTION = 0.1  # default: more lesion-free synthetic cases than this is an error, not a warning


@dataclasses.dataclass
class SyntheticSet:
    cases: list[SegCase]
    models_used: dict[str, dict[str, Any]]  # role -> model record (checkpoint, sha256, steps ...)
    made: int  # cases made by this call (the rest came from the cache)
    empty: int  # cases without a lesion
    lesions: int = 0  # lesions in all cases
    sphere_fallbacks: int = 0  # lesions whose generated masks were implausible and took the sphere prior's


def synthetic_folder(dataset: PreprocessedDataset, strategy: str, fold: int | str, seed: int) -> Path:
    return dataset.folder / "synthetic" / strategy / f"fold_{fold}" / f"seed_{seed}"


def synthetic_case_count(ratio: float, n_real: int) -> int:
    """How many synthetic cases a seg run at ``ratio`` synthetic cases per real one trains with (at least one)."""
    return max(1, math.ceil(ratio * n_real))


def synthetic_cases(dataset: PreprocessedDataset, strategy: str, fold: int | str, seed: int,
                    n_cases: int) -> list[SegCase]:
    """The first ``n_cases`` synthetic cases of a strategy, fold and seed (runs at other ratios share them)."""
    folder = synthetic_folder(dataset, strategy, fold, seed)
    return [SegCase(f"syn_{i:03d}", folder / f"syn_{i:03d}", synthetic=True) for i in range(n_cases)]


def _healthy(dataset: PreprocessedDataset, case_id: str):
    stem = dataset.data_folder / "healthy" / case_id
    images = load_array(f"{stem}.b2nd")
    seg = load_array(f"{stem}_seg.b2nd")
    tissue_file = Path(f"{stem}_tissue.b2nd")
    tissue = load_array(tissue_file) if tissue_file.is_file() else None
    return images, seg >= 0, tissue


def _models_needed(strategy: str) -> dict[str, str]:
    """role -> trainer of each model a strategy needs."""
    plan = get_strategy(strategy, SYNTHETIC)
    return {**({"mask_generator": plan.mask_generator} if plan.mask_generator else {}),
            **({"inpainter": "inpaint"} if plan.inpainted else {})}


def strategy_checkpoints(dataset: PreprocessedDataset, fold: int | str, strategy: str) -> dict[str, Path]:
    """role -> where the final checkpoint of each model a strategy needs is (whether or not it exists yet)."""
    return {role: trainer_folder(dataset.name, kind, dataset.plans.plans_name) / f"fold_{fold}" / "checkpoint_final.pt"
            for role, kind in _models_needed(strategy).items()}


def _checkpoints(dataset: PreprocessedDataset, fold: int | str, strategy: str) -> dict[str, Path]:
    """role -> final checkpoint of the models a strategy needs; a missing one is an error naming its command."""
    paths = strategy_checkpoints(dataset, fold, strategy)
    for role, kind in _models_needed(strategy).items():
        if not paths[role].is_file():
            raise LesiongenError(f"{paths[role]}: not found; synthetic {strategy} cases need it: run lesiongen_train "
                                 f"{dataset.name} {kind} {fold}")
    return paths


def _load_fold_model(path: Path, train_cases: list[str], plans_sha256: str, device: str):
    model = load_model(path.parent.parent, path.parent.name[len("fold_"):], device)
    if model.provenance.get("plans_sha256", plans_sha256) != plans_sha256:
        raise LesiongenError(f"{path}: trained with other plans than the dataset's current ones; retrain it")
    trained_on = model.provenance.get("train_cases")
    if trained_on is not None and sorted(trained_on) != sorted(train_cases):
        raise LesiongenError(f"{path}: trained on other cases than this fold's training split; retrain it so no "
                             "validation lesion leaks into synthetic cases")
    return model


def case_key(strategy: str, fold: int | str, seed: int, source: str, model_sha256: dict[str, str],
             plans_sha256: str, train_cases: list[str]) -> dict[str, Any]:
    """What determines a synthetic case: a cached case is reused only when its recorded key equals this."""
    return {"synthesis_version": SYNTHESIS_VERSION, "strategy": strategy, "fold": str(fold), "seed": seed,
            "source_healthy_case": source, "models_sha256": model_sha256, "plans_sha256": plans_sha256,
            "train_cases_sha256": json_sha256(sorted(train_cases))}


def make_synthetic_cases(dataset: PreprocessedDataset, fold: int | str, strategy: str, n_cases: int,
                         train_cases: list[str], plans_sha256: str, device: str = "cpu", seed: int = 0,
                         max_empty_fraction: float = MAX_EMPTY_FRACTION, batch_scans: int = 1) -> SyntheticSet:
    """``n_cases`` synthetic cases of ``strategy`` for ``fold``: cached ones whose key matches, the rest made now,
    ``batch_scans`` at a time (their lesions share the inpainter's batches; each case is the one it is alone).

    More than ``max_empty_fraction`` of cases without any lesion is an error (the models give too few lesions to
    train on); fewer is a warning, and the count is returned.
    """
    get_strategy(strategy, SYNTHETIC)
    healthy_ids = dataset.case_ids("healthy")
    if not healthy_ids:
        raise LesiongenError(f"{dataset.data_folder / 'healthy'}: no preprocessed healthy scans; synthetic cases "
                             "are made from imagesHealthy")
    checkpoints = _checkpoints(dataset, fold, strategy)
    sha = {role: sha256_file(path) for role, path in checkpoints.items()}
    folder = synthetic_folder(dataset, strategy, fold, seed)
    _remove_unseeded_cases(folder.parent)
    cases = synthetic_cases(dataset, strategy, fold, seed, n_cases)
    keys = [case_key(strategy, fold, derive_seed(seed, "synthetic", strategy, i), healthy_ids[i % len(healthy_ids)],
                     sha, plans_sha256, train_cases) for i in range(n_cases)]
    models: dict[str, Any] = {}
    with exclusive_lock(folder, f"synthetic {strategy} cases", wait=True):  # a run of the same seed waits, then reuses
        todo = [i for i, case in enumerate(cases) if _recorded_key(case) != keys[i]]
        if todo:
            models = {role: _load_fold_model(path, train_cases, plans_sha256, device)
                      for role, path in checkpoints.items()}
            logger.info("making %d synthetic %s case(s) for fold %s in %s (%d cached)", len(todo), strategy, fold,
                        folder, n_cases - len(todo))
            maker = _maker(dataset, strategy, train_cases, models)
            progress = ProgressLog(logger, f"synthetic {strategy} cases for fold {fold}", len(todo), "cases")
            for start in range(0, len(todo), batch_scans):
                group = todo[start:start + batch_scans]
                run_jobs([_case_job(dataset, cases[i], keys[i], maker) for i in group])
                progress.advance(len(group))
    model_records = {role: {"checkpoint": str(path), "sha256": sha[role],
                            **({"steps_trained": models[role].provenance.get("steps_trained")} if role in models
                               else {})}
                     for role, path in checkpoints.items()}
    records = [read_json(Path(f"{c.stem}.json")) for c in cases]
    empty = sum(1 for r in records if r["lesions"] == 0)
    lesions = sum(r["lesions"] for r in records)
    fallbacks = sum(count_fallbacks(r["lesion_records"]) for r in records)
    if fallbacks:
        logger.warning("%d of %d synthetic %s lesion(s) took the sphere prior's ellipsoid: the generated masks were "
                       "implausible", fallbacks, lesions, strategy)
    if empty > max_empty_fraction * n_cases:
        raise LesiongenError(f"{folder}: {empty} of {n_cases} synthetic {strategy} cases hold no lesion (more than "
                             f"{max_empty_fraction:.0%}); the {strategy} models give too few lesions to train on "
                             "(train them longer, or allow it with --set max_empty_synthetic_fraction=F)")
    if empty:
        logger.warning("%d of %d synthetic %s case(s) hold no lesion", empty, n_cases, strategy)
    return SyntheticSet(cases, model_records, len(todo), empty, lesions, fallbacks)


_UNSEEDED_CASE = re.compile(r"^syn_\d{3}(\.b2nd|_seg\.b2nd|_locations\.npz|\.json)$")


def _remove_unseeded_cases(fold_folder: Path) -> None:
    """Cases of the layout before one folder per seed (directly in ``fold_X/``): nothing reads them any more."""
    old = [f for f in fold_folder.glob("syn_*") if f.is_file() and _UNSEEDED_CASE.match(f.name)]
    for path in old:
        path.unlink(missing_ok=True)
    if old:
        logger.info("%s: removed %d file(s) of synthetic cases cached before one folder per seed", fold_folder,
                    len(old))


def _recorded_key(case: SegCase) -> dict[str, Any] | None:
    """The key a cached case was made with (None: no complete case there)."""
    record = Path(f"{case.stem}.json")
    return read_json(record).get("key") if record.is_file() else None


def case_tissue(dataset: PreprocessedDataset, case: SegCase) -> np.ndarray | None:
    """The tissue map on a training case's grid: a real case's own, a synthetic case's healthy source scan's (the
    edit leaves the grid as it is); None without one."""
    if case.synthetic:
        key = _recorded_key(case)
        stem = dataset.data_folder / "healthy" / key["source_healthy_case"] if key else None
    else:
        stem = case.stem
    path = Path(f"{stem}_tissue.b2nd") if stem is not None else None
    return load_array(path) if path is not None and path.is_file() else None


def _maker(dataset: PreprocessedDataset, strategy: str, train_cases: list[str], models: dict[str, Any]):
    """``make(images, brain, tissue, seed)``: the job that edits one healthy scan into (images, label, lesion
    records)."""
    plan = get_strategy(strategy, SYNTHETIC)
    if not plan.inpainted:
        return _copy_paste_maker(dataset, train_cases)
    if plan.mask_generator is None:
        return _real_mask_maker(dataset, train_cases, models["inpainter"])
    return _inpainting_maker(dataset, models["inpainter"], models["mask_generator"])


def _inpainting_maker(dataset: PreprocessedDataset, inpainter, generator):
    def make(images, brain, tissue, seed: int) -> EditJob[tuple]:
        edit = yield from model_space_synthesis_job(images, brain, tissue, dataset.plans, inpainter, generator,
                                                    seed=seed)
        return edit.images, edit.label, edit.lesions

    return make


def _donors_and_priors(dataset: PreprocessedDataset, train_cases: list[str]):
    """The fold's training lesion patches (the donors) and sphere priors (how many lesions, where)."""
    return (load_lesion_patches(dataset.lesion_patch_folder, train_cases),
            fold_sphere_priors(dataset.fingerprint, train_cases, dataset.plans))


def _copy_paste_maker(dataset: PreprocessedDataset, train_cases: list[str]):
    donors, priors = _donors_and_priors(dataset, train_cases)

    def make(images, brain, tissue, seed: int) -> EditJob[tuple]:
        return finished_job(copy_paste(images, brain, tissue, donors, priors, dataset.plans.lesion_patch_size,
                                       dataset.plans.target_spacing, np.random.default_rng(seed)))

    return make


def _real_mask_maker(dataset: PreprocessedDataset, train_cases: list[str], inpainter):
    donors, priors = _donors_and_priors(dataset, train_cases)
    patch = dataset.plans.lesion_patch_size

    def make(images, brain, tissue, seed: int) -> EditJob[tuple]:
        drawn = list(donor_lesions(brain, tissue, donors, priors, patch, dataset.plans.target_spacing,
                                   np.random.default_rng(seed)))
        edit = yield from model_space_synthesis_job(images, brain, tissue, dataset.plans, inpainter,
                                                    placements=[(d.label, d.centre, d.lesion) for d in drawn],
                                                    seed=seed, lesion_priors=priors)
        for record, lesion in zip(edit.lesions, drawn, strict=True):  # given masks are never skipped
            record["donor_case"] = donors.case_ids[lesion.donor]
        return edit.images, edit.label, edit.lesions

    return make


def _case_job(dataset: PreprocessedDataset, case: SegCase, key: dict[str, Any], make) -> EditJob[None]:
    """Makes and saves one synthetic case (redrawn while it holds no lesion)."""
    images, brain, tissue = _healthy(dataset, key["source_healthy_case"])
    for attempt in range(EMPTY_RETRIES):
        used_seed = derive_seed(key["seed"], "attempt", attempt)
        out, label, lesions = yield from make(images, brain, tissue, used_seed)
        if label.any():
            break
    voxel_mm3 = float(np.prod(dataset.plans.target_spacing))
    record = {"key": key, "used_seed": used_seed, "attempts": attempt + 1, "lesions": len(lesions),
              "lesion_voxels": int((label > 0).sum()), "lesion_volume_mm3": float((label > 0).sum()) * voxel_mm3,
              "lesion_records": lesions, "code": code_version()}
    if not label.any():
        logger.warning("synthetic case %s (%s from %s) has no lesion after %d draws", case.case_id, key["strategy"],
                       key["source_healthy_case"], EMPTY_RETRIES)
    _save_case(case, out, label, brain, record)


def _save_case(case: SegCase, images: np.ndarray, label: np.ndarray, brain: np.ndarray, record: dict) -> None:
    Path(f"{case.stem}.json").unlink(missing_ok=True)  # the record goes last: until then the case is incomplete
    seg = label.astype(np.int8)
    seg[~brain & (seg == 0)] = -1  # the preprocessed convention: -1 outside the brain
    save_array(f"{case.stem}.b2nd", images.astype(np.float32))
    save_array(f"{case.stem}_seg.b2nd", seg)
    locations = {f"class_{v}": np.argwhere(label == v) for v in np.unique(label[label > 0])}
    with atomic_path(Path(f"{case.stem}_locations.npz")) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **locations)
    write_json(Path(f"{case.stem}.json"), {**record, CHECKSUMS: case_checksums(case.stem)})  # training verifies them


def case_record(case: SegCase) -> dict:
    return read_json(Path(f"{case.stem}.json"))
