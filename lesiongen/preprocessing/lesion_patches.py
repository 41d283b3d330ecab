"""The lesion-centred patches of a set of cases, as trainers and evaluations load them, and the patch edits they
share: lesions filled with their surroundings, and a lesion's shape moved onto healthy tissue.

The patches are small (one per lesion, the planned lesion patch size), so a fold's patches fit in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesiongen.preprocessing.storage import CHECKSUMS, load_array, verify_files
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json

logger = logging.getLogger(__name__)

LESION_FILL_DILATION = 1  # voxels around a lesion that are also replaced, so no rim of lesion contrast remains


@dataclass
class LesionPatches:
    images: np.ndarray  # (n, c, z, y, x) float32, normalised
    masks: np.ndarray  # (n, z, y, x) uint8 lesion labels (patch padding -1 folded into 0)
    brain: np.ndarray  # (n, z, y, x) bool: voxels where a lesion may lie
    tissue: np.ndarray | None  # (n, z, y, x) uint8
    case_ids: list[str]  # case of each patch

    def __len__(self) -> int:
        return len(self.masks)

    def subset(self, index: np.ndarray | list[int]) -> "LesionPatches":
        index = np.asarray(index, dtype=int)
        return LesionPatches(self.images[index], self.masks[index], self.brain[index], self.tissue_at(index),
                             [self.case_ids[i] for i in index])

    def tissue_at(self, index: np.ndarray | list[int]) -> np.ndarray | None:
        """The tissue maps of the patches ``index`` (None without tissue maps)."""
        return None if self.tissue is None else self.tissue[np.asarray(index, dtype=int)]


def load_lesion_patches(folder: Path, case_ids: list[str]) -> LesionPatches:
    """The lesion patches of ``case_ids`` from the preprocessed ``lesion_patches`` folder.

    Each case's arrays must match the size and sha256 its ``_patches.json`` records: a damaged file is an error
    naming it, never training data.
    """
    images, masks, tissue, owners = [], [], [], []
    for case_id in case_ids:
        record = folder / f"{case_id}_patches.json"
        if not record.is_file():
            raise LesiongenError(f"{record}: lesion patches missing; run lesiongen_preprocess first")
        patch_record = read_json(record)
        if patch_record["n_patches"] == 0:
            continue
        verify_files(record, patch_record.get(CHECKSUMS))
        images.append(load_array(folder / f"{case_id}_images.b2nd"))
        masks.append(load_array(folder / f"{case_id}_masks.b2nd"))
        tissue_file = folder / f"{case_id}_tissue.b2nd"
        if tissue_file.is_file():
            tissue.append(load_array(tissue_file))
        owners += [case_id] * len(masks[-1])
    if not masks:
        raise LesiongenError(f"{folder}: the cases {case_ids[:5]} have no lesion patches to train on")
    image_array = np.concatenate(images).astype(np.float32)
    raw_masks = np.concatenate(masks)
    lesion = np.clip(raw_masks, 0, None).astype(np.uint8)
    tissue_array = np.concatenate(tissue).astype(np.uint8) if len(tissue) == len(images) else None
    # normalisation leaves zeros outside the brain; padding beyond the scan border is marked -1
    brain = ((raw_masks >= 0) & (image_array != 0).any(axis=1)) | (lesion > 0)
    if tissue_array is not None:
        brain |= tissue_array > 0
    return LesionPatches(image_array, lesion, brain, tissue_array, owners)


def fill_lesions(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    """A healthy-looking version of a (c, z, y, x) patch: lesion voxels take the median of their tissue class.

    This is the cheap stand-in for an inpainter that the tissue-conditioned mask UNet needs for training: it must
    predict a lesion shape from tissue that does not show the lesion already.
    """
    region = ndimage.binary_dilation(lesion > 0, iterations=LESION_FILL_DILATION) & brain
    if not region.any():
        return image.copy()
    out = image.copy()
    healthy = brain & ~region
    classes = np.unique(tissue[region]) if tissue is not None else [None]
    for cls in classes:
        target = region if cls is None else region & (tissue == cls)
        source = healthy if cls is None else healthy & (tissue == cls)
        if not source.any():
            source = healthy if healthy.any() else brain
        for c in range(image.shape[0]):
            out[c][target] = np.median(image[c][source]) if source.any() else 0.0
    return out


def shifted(array: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``array`` moved by whole voxels along every axis (``shift[i]`` along axis i), zero where nothing moved in."""
    out = np.zeros_like(array)
    source, target = [], []
    for n, s in zip(array.shape, (int(v) for v in shift)):
        if abs(s) >= n:
            return out
        source.append(slice(max(0, -s), n - max(0, s)))
        target.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(target)] = array[tuple(source)]
    return out


def relocate_shape(shape: np.ndarray, avoid: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
                   tries: int) -> np.ndarray | None:
    """``shape`` (bool) shifted to a random place in the patch, whole, inside ``brain`` and off ``avoid``; None
    when ``tries`` shifts find none. Gives fake lesion masks over tissue whose true (healthy) look is known."""
    size = np.asarray(shape.shape)
    for _ in range(tries):
        shift = rng.integers(-size // 2, size // 2 + 1)
        moved = shifted(shape, shift)
        if moved.sum() == shape.sum() and not (moved & avoid).any() and brain[moved].all():
            return moved
    return None
