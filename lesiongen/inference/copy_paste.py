"""Copy-paste lesions as CarveMix does it: a region carved around a real lesion of the fold's training cases (the
lesion grown by a random margin, so some of its surrounding tissue comes along) is pasted into a healthy model-space
scan at a place drawn as synthetic lesions are placed (``placement``), its intensities harmonised to the
recipient (per channel, the donor's surroundings are shifted to the recipient's; TumorCP's matching) and its edge
feathered over the margin. With tissue maps, the pasted lesion is kept off the recipient's tissue classes that real
lesions of its class avoid, and the carved region leaves those voxels as they are (a lesion pasted next to a
ventricle borders the recipient's ventricle, not the donor's white matter).

``donor_lesions`` is the drawing rule (how many lesions, which donor lesion, where, which margin) that copy_paste and
the ``realmask`` strategy share: with the same random stream both place the same real lesion shapes at the same
places; realmask has the inpainter paint them instead of pasting the donor's voxels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesiongen.diffusion.inpainting import edit_region, feather_blend
from lesiongen.inference.placement import (avoided_tissue, keep_on_lesion_tissue, lesion_tissue_classes,
                                           placement_weights)
from lesiongen.planning.plans import SpherePrior
from lesiongen.preprocessing.lesion_patches import LesionPatches
from lesiongen.utilities.cropping import extract_patch, insert_patch


MAX_MARGIN_VOXELS = 3  # the carved margin is drawn from 1..3 voxels around the lesion, per pasted lesion


@dataclass
class DonorLesion:
    donor: int  # index into the donor patches
    lesion: np.ndarray  # (z, y, x) uint8: the donor patch's centre lesion, cut to the recipient's brain
    label: int
    centre: np.ndarray  # model-space voxel of the recipient the patch is centred on
    margin: int  # voxels of surrounding tissue carved with it (copy_paste)
    # the recipient patch's voxels of tissue the lesion's class avoids (placement.avoided_tissue); None: no such rule
    avoided: np.ndarray | None = None


def donor_lesions(brain: np.ndarray, tissue: np.ndarray | None, donors: LesionPatches,
                  priors: dict[str, SpherePrior], patch_size: list[int], spacing, rng: np.random.Generator,
                  max_margin: int = MAX_MARGIN_VOXELS) -> Iterator[DonorLesion]:
    """Real training lesions drawn for one healthy scan (model space, ``spacing`` mm), lazily in drawing order: the
    count from the lesions-per-case prior, per lesion a donor patch, a place (``placement.placement_weights``) and a
    carving margin. A lesion that falls wholly outside the recipient's brain is skipped."""
    coords = np.argwhere(brain)
    weights: dict[int, np.ndarray] = {}  # per class: computed once per scan
    for _ in range(_lesion_count(priors, rng)):
        donor = int(rng.integers(len(donors)))
        mask = donors.masks[donor]
        ids = ndimage.label(mask > 0)[0]
        centre_id = ids[tuple(np.asarray(mask.shape) // 2)]  # the lesion the donor patch is centred on
        lesion = np.where(ids == centre_id if centre_id else mask > 0, mask, 0).astype(np.uint8)
        value = int(lesion.max()) if lesion.any() else 1
        if value not in weights:
            weights[value] = placement_weights(brain, tissue, priors[str(value)], spacing)
        centre = coords[rng.choice(len(coords), p=weights[value])]
        lesion = np.where(extract_patch(brain, centre, patch_size, fill=False), lesion, 0).astype(np.uint8)
        avoided = None if tissue is None else avoided_tissue(extract_patch(tissue, centre, patch_size, fill=0),
                                                             lesion_tissue_classes(priors[str(value)]))
        lesion = keep_on_lesion_tissue(lesion, avoided)
        if not lesion.any():
            continue
        yield DonorLesion(donor, lesion, value, centre, int(rng.integers(1, max_margin + 1)), avoided)


def copy_paste(images: np.ndarray, brain: np.ndarray, tissue: np.ndarray | None, donors: LesionPatches,
               priors: dict[str, SpherePrior], patch_size: list[int], spacing, rng: np.random.Generator,
               max_margin: int = MAX_MARGIN_VOXELS) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Paste real training lesions into a healthy model-space scan; (images, label map, one record per lesion)."""
    out = images.copy()
    label = np.zeros(brain.shape, np.uint8)
    records = []
    for drawn in donor_lesions(brain, tissue, donors, priors, patch_size, spacing, rng, max_margin):
        donor, lesion, value, centre, margin = drawn.donor, drawn.lesion, drawn.label, drawn.centre, drawn.margin
        recipient = extract_patch(out, centre, patch_size, fill=0.0)
        recipient_brain = extract_patch(brain, centre, patch_size, fill=False)
        # the recipient's tissue that lesions avoid stays as it is, and so does its brain where the carved margin
        # reaches past the donor's brain (a cortical lesion's margin would carry background)
        paste_into = recipient_brain & (donors.brain[donor] | (lesion > 0))
        paste_into = paste_into if drawn.avoided is None else paste_into & ~drawn.avoided
        shell = edit_region(lesion > 0, margin + 2) & ~edit_region(lesion > 0, margin) & recipient_brain
        donor_shell = shell & donors.brain[donor]
        if not shell.any() or not donor_shell.any():
            continue
        # keep the donor lesion's offset from its own surroundings, per channel (TumorCP's intensity matching)
        shift = recipient[:, shell].mean(axis=1) - donors.images[donor][:, donor_shell].mean(axis=1)
        pasted = donors.images[donor] + shift[:, None, None, None]
        blended = feather_blend(recipient, pasted.astype(recipient.dtype), lesion > 0, margin)
        blended = np.where(paste_into[None], blended, recipient)  # the ramp must not spill out of the brain either
        insert_patch(out, blended, centre)
        existing = extract_patch(label, centre, patch_size, fill=0)
        insert_patch(label, np.where(lesion > 0, lesion, existing).astype(np.uint8), centre)
        records.append({"label": value, "centre_model_voxel": [int(c) for c in centre],
                        "voxels_model": int((lesion > 0).sum()), "donor_case": donors.case_ids[donor],
                        "margin_voxels": margin})
    return out, label, records


def _lesion_count(priors: dict[str, SpherePrior], rng: np.random.Generator) -> int:
    """Lesions per scan: drawn from the lesions-per-case distribution of the class with the most lesions."""
    prior = max(priors.values(), key=lambda p: p.n_lesions_observed)
    options = prior.lesions_per_case.probabilities
    if not options:
        return 1
    keys = list(options)
    p = np.asarray(list(options.values()), dtype=float)
    return max(1, int(keys[rng.choice(len(keys), p=p / p.sum())]))
