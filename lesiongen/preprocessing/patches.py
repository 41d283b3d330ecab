"""Lesion-centred patches for the mask generation and inpainting stages.

One patch per lesion component (26-connectivity, per class), centred on the component's centroid, of the planned
lesion patch size. Other lesions that the patch border cuts are **zeroed in the patch's mask** (set to 0, as the
earlier prototypes did), so every mask holds only whole lesions; the image patch is left as it is and the number of
zeroed lesions is recorded. A centre lesion that does not fit into the patch itself is skipped and counted.
Voxels beyond the image border are padded with 0 in the image and -1 (outside the brain) in the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesiongen.utilities.components import CONNECTIVITY_26
from lesiongen.utilities.cropping import extract_patch



@dataclass
class LesionPatch:
    centre: list[int]  # (z, y, x) in the preprocessed case
    label: int  # class of the centre lesion
    lesion_voxels: int
    lesions_in_patch: int  # whole lesions kept in the mask, the centre one included
    cut_lesions_zeroed: int


@dataclass
class PatchSet:
    images: np.ndarray  # (n, c, z, y, x) float32
    masks: np.ndarray  # (n, z, y, x) int8: 0 background, 1..K lesions, -1 outside brain
    tissue: np.ndarray | None  # (n, z, y, x) uint8
    patches: list[LesionPatch]
    skipped_too_large: int


def _components(seg: np.ndarray, lesion_labels: list[int]):
    """Yield (label, component id map, number of components) per lesion class present."""
    for label in lesion_labels:
        ids, count = ndimage.label(seg == label, structure=CONNECTIVITY_26)
        if count:
            yield label, ids, count


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def extract_lesion_patches(images: np.ndarray, seg: np.ndarray, tissue: np.ndarray | None,
                           patch_size: list[int], lesion_labels: list[int]) -> PatchSet:
    image_patches, mask_patches, tissue_patches, records = [], [], [], []
    skipped = 0
    for label, ids, count in _components(seg, lesion_labels):
        centroids = ndimage.center_of_mass(np.ones_like(ids, dtype=np.uint8), ids, range(1, count + 1))
        sizes = ndimage.sum_labels(np.ones_like(ids, dtype=np.uint8), ids, range(1, count + 1))
        for component, (centroid, voxels) in enumerate(zip(centroids, sizes), start=1):
            centre = np.round(centroid).astype(int)
            centre_ids = extract_patch(ids, centre, patch_size, fill=0)
            if _touches_border(centre_ids == component):
                skipped += 1
                continue
            mask = extract_patch(seg, centre, patch_size, fill=-1).astype(np.int8)
            # every lesion (any class) in the patch that the border cuts is removed from the mask
            lesion, n = ndimage.label(mask > 0, structure=CONNECTIVITY_26)
            cut = 0
            if n:
                objects = ndimage.find_objects(lesion)
                for index, box in enumerate(objects, start=1):
                    on_border = any(s.start == 0 or s.stop == dim for s, dim in zip(box, mask.shape))
                    if on_border and _touches_border(lesion == index):
                        mask[lesion == index] = 0
                        cut += 1
            image_patches.append(extract_patch(images, centre, patch_size, fill=0.0))
            mask_patches.append(mask)
            if tissue is not None:
                tissue_patches.append(extract_patch(tissue, centre, patch_size, fill=0))
            records.append(LesionPatch(centre.tolist(), int(label), int(voxels), int(n - cut), int(cut)))
    n_channels = images.shape[0]
    empty_images = np.zeros((0, n_channels, *patch_size), dtype=np.float32)
    return PatchSet(
        images=np.stack(image_patches).astype(np.float32) if image_patches else empty_images,
        masks=np.stack(mask_patches) if mask_patches else np.zeros((0, *patch_size), dtype=np.int8),
        tissue=(np.stack(tissue_patches) if tissue_patches else np.zeros((0, *patch_size), np.uint8))
               if tissue is not None else None,
        patches=records,
        skipped_too_large=skipped,
    )
