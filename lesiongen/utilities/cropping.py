"""The brain region and its bounding box (fingerprinting and preprocessing crop alike), and the one patch crop every
layer uses: a patch of a given size centred on a voxel, padded outside the volume."""

from __future__ import annotations

from collections.abc import Sequence

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


def _patch_slices(shape: Sequence[int], centre: Sequence[float], patch_size: Sequence[int]
                  ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(slices in the volume, slices in the patch) of a patch of ``patch_size`` centred on ``centre``.

    The patch starts at ``round(centre) - patch_size // 2``.
    """
    shape, size = list(shape)[-3:], [int(s) for s in patch_size]
    if len(size) != 3 or len(centre) != 3:
        raise ValueError(f"centre and patch_size need 3 values (z, y, x), got {list(centre)} and {size}")
    volume, patch = [], []
    for c, n, dim in zip(centre, size, shape):
        start = int(np.round(c)) - n // 2
        lo, hi = min(max(start, 0), dim), max(min(start + n, dim), 0)
        hi = max(hi, lo)
        volume.append(slice(lo, hi))
        patch.append(slice(lo - start, lo - start + (hi - lo)))
    return tuple(volume), tuple(patch)


def model_crop(scan_shape: Sequence[int], centre: Sequence[float], patch_size: Sequence[int]) -> tuple[slice, ...]:
    """Slices (z, y, x) of the part of a ``patch_size`` patch centred on ``centre`` that lies inside the volume.

    ``scan_shape`` may carry leading axes (c, z, y, x); only the last three count. A patch entirely outside gives
    empty slices.
    """
    return _patch_slices(scan_shape, centre, patch_size)[0]


def extract_patch(array: np.ndarray, centre: Sequence[float], patch_size: Sequence[int], fill=0) -> np.ndarray:
    """The ``patch_size`` patch of ``array`` (..., z, y, x) centred on ``centre``, ``fill`` outside the volume."""
    volume, patch = _patch_slices(array.shape, centre, patch_size)
    lead = (slice(None),) * (array.ndim - 3)
    out = np.full(array.shape[:-3] + tuple(int(s) for s in patch_size), fill, dtype=array.dtype)
    out[lead + patch] = array[lead + volume]
    return out


def insert_patch(array: np.ndarray, patch: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    """Write the inside part of ``patch`` (..., pz, py, px) into ``array`` at ``centre``, in place; returns it."""
    if patch.shape[:-3] != array.shape[:-3]:
        raise ValueError(f"patch leading axes {patch.shape[:-3]} differ from the array's {array.shape[:-3]}")
    volume, inside = _patch_slices(array.shape, centre, patch.shape[-3:])
    lead = (slice(None),) * (array.ndim - 3)
    array[lead + volume] = patch[lead + inside]
    return array
