"""Synthetic training cases for a segmentation fold, made from the healthy scans and cached.

Strategies: ``sphere`` (spheremask masks + inpainter), ``unetmask`` and ``diffmask`` (those generators' masks +
inpainter) and ``copy_paste`` (real lesions of the fold's training cases cut out with their surroundings and pasted
into healthy tissue with their contrast kept, CarveMix / TumorCP-like; no learned model). Every model used is the
one trained on **the same fold**, and it is checked: a generator whose training cases differ from the fold's is
refused, so no validation lesion reaches a synthetic case.

Cases live in ``$lesiongen_preprocessed/DatasetXXX/synthetic/STRATEGY/fold_X/`` in the preprocessed format
(``syn_000.b2nd``, ``_seg.b2nd``, ``_locations.npz``, ``.json`` last); a rerun reuses what is there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesiongen.diffusion.inpainting import edit_region, feather_blend
from lesiongen.inference.scan_space import extract_patch, insert_patch
from lesiongen.inference.synthesis import placement_weights, synthesize_model_space
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.preprocessing.storage import load_array, save_array
from lesiongen.training.data import load_lesion_patches
from lesiongen.training.seg_data import SegCase
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "sphere", "unetmask", "diffmask", "copy_paste")
GENERATOR_OF = {"sphere": "spheremask", "unetmask": "unetmask", "diffmask": "diffmask"}


def synthetic_folder(dataset: PreprocessedDataset, strategy: str, fold: int | str) -> Path:
    return dataset.folder / "synthetic" / strategy / f"fold_{fold}"


def _load_trained_for_fold(dataset, name: str, fold, train_cases: list[str], device):
    from lesiongen.training.registry import load_trained

    try:
        model = load_trained(dataset, name, fold, device)
    except LesiongenError as exc:
        raise LesiongenError(f"{exc}; synthetic cases need it: run lesiongen_train {dataset.name} {name} {fold}") \
            from None
    if sorted(model.train_cases) != sorted(train_cases):
        raise LesiongenError(f"{name} fold {fold} was trained on other cases than this fold's training split; "
                             "retrain it so no validation lesion leaks into synthetic cases")
    return model


def _healthy(dataset: PreprocessedDataset, case_id: str):
    stem = dataset.data_folder / "healthy" / case_id
    images = load_array(f"{stem}.b2nd")
    seg = load_array(f"{stem}_seg.b2nd")
    tissue_file = Path(f"{stem}_tissue.b2nd")
    tissue = load_array(tissue_file) if tissue_file.is_file() else None
    return images, seg >= 0, tissue


def make_synthetic_cases(dataset: PreprocessedDataset, fold: int | str, strategy: str, n_cases: int,
                         train_cases: list[str], device: str = "cpu", seed: int = 0) -> list[SegCase]:
    """At least ``n_cases`` cached synthetic cases of ``strategy`` for ``fold`` (made when missing)."""
    if strategy not in STRATEGIES or strategy == "none":
        raise LesiongenError(f"unknown synthetic strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    healthy_ids = dataset.case_ids("healthy")
    if not healthy_ids:
        raise LesiongenError(f"{dataset.data_folder / 'healthy'}: no preprocessed healthy scans; synthetic cases "
                             "are made from imagesHealthy")
    folder = synthetic_folder(dataset, strategy, fold)
    folder.mkdir(parents=True, exist_ok=True)
    cases = [SegCase(f"syn_{i:03d}", folder / f"syn_{i:03d}", synthetic=True) for i in range(n_cases)]
    todo = [i for i, c in enumerate(cases) if not Path(f"{c.stem}.json").is_file()]
    if not todo:
        return cases
    inpainter = generator = donors = None
    if strategy == "copy_paste":
        donors = load_lesion_patches(dataset.lesion_patch_folder, train_cases)
        priors = _priors_for_copy_paste(dataset, train_cases)
    else:
        inpainter = _load_trained_for_fold(dataset, "inpaint", fold, train_cases, device)
        generator = _load_trained_for_fold(dataset, GENERATOR_OF[strategy], fold, train_cases, device)
    logger.info("making %d synthetic %s case(s) for fold %s in %s", len(todo), strategy, fold, folder)
    for i in todo:
        source = healthy_ids[i % len(healthy_ids)]
        images, brain, tissue = _healthy(dataset, source)
        rng_seed = seed * 100_003 + i
        if strategy == "copy_paste":
            out, label = copy_paste(images, brain, tissue, donors, priors, dataset.plans.lesion_patch_size,
                                    np.random.default_rng(rng_seed))
            records = []
        else:
            edit = synthesize_model_space(images, brain, tissue, dataset.plans, inpainter, generator, seed=rng_seed)
            out, label, records = edit.images, edit.label, edit.lesions
        if not label.any():
            logger.warning("synthetic case %s (%s from %s) has no lesion: the generator gave none", cases[i].case_id,
                           strategy, source)
        _save_case(cases[i], out, label, brain, {"source_healthy_case": source, "strategy": strategy,
                                                 "fold": str(fold), "seed": rng_seed, "lesions": records})
    return cases


def _priors_for_copy_paste(dataset: PreprocessedDataset, train_cases: list[str]):
    from lesiongen.training.base import fold_sphere_priors

    return fold_sphere_priors(dataset.fingerprint, train_cases, dataset.plans)


def copy_paste(images: np.ndarray, brain: np.ndarray, tissue: np.ndarray | None, donors, priors, patch_size,
               rng: np.random.Generator, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Paste real training lesions into a healthy model-space scan, keeping their contrast to the surroundings."""
    out = images.copy()
    label = np.zeros(brain.shape, np.uint8)
    coords = np.argwhere(brain)
    count = _copy_paste_count(priors, rng)
    for _ in range(count):
        donor = int(rng.integers(len(donors)))
        mask = donors.masks[donor]
        ids = ndimage.label(mask > 0)[0]
        centre_id = ids[tuple(np.asarray(mask.shape) // 2)]  # the lesion the donor patch is centred on
        lesion = np.where(ids == centre_id if centre_id else mask > 0, mask, 0).astype(np.uint8)
        value = int(lesion.max()) if lesion.any() else 1
        weights = placement_weights(brain, tissue, priors[str(value)], None)
        centre = coords[rng.choice(len(coords), p=weights)]
        recipient = extract_patch(out, centre, patch_size, fill=0.0)
        recipient_brain = extract_patch(brain, centre, patch_size, fill=False)
        lesion = np.where(recipient_brain, lesion, 0).astype(np.uint8)
        if not lesion.any():
            continue
        shell = edit_region(lesion > 0, margin + 2) & ~edit_region(lesion > 0, margin) & recipient_brain
        donor_shell = shell & donors.brain[donor]
        if not shell.any() or not donor_shell.any():
            continue
        # keep the donor lesion's offset from its own surroundings, per channel (TumorCP's intensity matching)
        shift = recipient[:, shell].mean(axis=1) - donors.images[donor][:, donor_shell].mean(axis=1)
        pasted = donors.images[donor] + shift[:, None, None, None]
        blended = feather_blend(recipient, pasted.astype(recipient.dtype), lesion > 0, margin)
        blended = np.where(recipient_brain[None], blended, recipient)  # the ramp must not spill out of the brain
        insert_patch(out, blended, centre)
        existing = extract_patch(label, centre, patch_size, fill=0)
        insert_patch(label, np.where(lesion > 0, lesion, existing).astype(np.uint8), centre)
    return out, label


def _copy_paste_count(priors, rng: np.random.Generator) -> int:
    options = next(iter(priors.values())).lesions_per_case.probabilities
    if not options:
        return 1
    keys = list(options)
    p = np.asarray(list(options.values()), dtype=float)
    return max(1, int(keys[rng.choice(len(keys), p=p / p.sum())]))


def _save_case(case: SegCase, images: np.ndarray, label: np.ndarray, brain: np.ndarray, record: dict) -> None:
    seg = label.astype(np.int8)
    seg[~brain & (seg == 0)] = -1  # the preprocessed convention: -1 outside the brain
    save_array(f"{case.stem}.b2nd", images.astype(np.float32))
    save_array(f"{case.stem}_seg.b2nd", seg)
    locations = {f"class_{v}": np.argwhere(label == v) for v in np.unique(label[label > 0])}
    with atomic_path(Path(f"{case.stem}_locations.npz")) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **locations)
    write_json(Path(f"{case.stem}.json"), record)  # last: marks the case complete


def case_record(case: SegCase) -> dict:
    return read_json(Path(f"{case.stem}.json"))
