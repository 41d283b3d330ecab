"""The brain region and its bounding box, shared by fingerprinting and preprocessing so both crop alike."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def brain_region(images: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """The given brain mask, else the hole-filled nonzero region of all channels (nnU-Net's crop mask)."""
    if brain_mask is not None:
        return brain_mask
    return ndimage.binary_fill_holes(np.any(images != 0, axis=0))


def mask_bbox(mask: np.ndarray) -> list[list[int]]:
    """Bounding box of a boolean mask as [[start, stop], ...]; the whole array when the mask is empty.

    Axis projections instead of ``np.nonzero`` keep this to one cheap pass.
    """
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return bbox


def bbox_slices(bbox: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in bbox)
