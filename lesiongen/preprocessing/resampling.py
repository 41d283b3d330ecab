"""Resampling to the target spacing: cubic splines for images, per-label linear for label maps.

An anisotropic axis (much coarser than the others) is interpolated with nearest neighbour only, as nnU-Net
does, so that information is not smeared across thick slices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ANISOTROPY_RATIO = 3.0


def new_shape(shape: tuple[int, ...], spacing: list[float], target: list[float]) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target)]


def needs_resampling(shape: tuple[int, ...], spacing: list[float], target: list[float]) -> bool:
    return list(shape) != new_shape(shape, spacing, target)


def _coarse_axis(spacing: list[float]) -> int | None:
    spacing = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(spacing))
    others = np.delete(spacing, axis)
    return axis if spacing[axis] > ANISOTROPY_RATIO * others.max() else None


def _zoom(volume: np.ndarray, shape: list[int], order: int, coarse_axis: int | None) -> np.ndarray:
    factors = [n / o for n, o in zip(shape, volume.shape)]
    if coarse_axis is None or factors[coarse_axis] == 1:
        return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    # in-plane at full order, then nearest neighbour along the coarse axis
    in_plane = list(factors)
    in_plane[coarse_axis] = 1.0
    out = ndimage.zoom(volume, in_plane, order=order, mode="nearest", grid_mode=True)
    along = [1.0] * volume.ndim
    along[coarse_axis] = factors[coarse_axis]
    return ndimage.zoom(out, along, order=0, mode="nearest", grid_mode=True)


def resample_images(images: np.ndarray, spacing: list[float], target: list[float]) -> np.ndarray:
    """(c, z, y, x) float32 to the target spacing."""
    shape = new_shape(images.shape[1:], spacing, target)
    if list(images.shape[1:]) == shape:
        return images
    coarse = _coarse_axis(spacing) if _coarse_axis(target) is None else _coarse_axis(target)
    return np.stack([_zoom(c, shape, 3, coarse).astype(np.float32) for c in images])


def resample_labels(labels: np.ndarray, spacing: list[float], target: list[float]) -> np.ndarray:
    """An integer (z, y, x) map to the target spacing: each value interpolated linearly as a soft mask."""
    shape = new_shape(labels.shape, spacing, target)
    if list(labels.shape) == shape:
        return labels
    coarse = _coarse_axis(spacing) if _coarse_axis(target) is None else _coarse_axis(target)
    values = np.unique(labels)
    background = values[0]
    out = np.full(shape, background, dtype=labels.dtype)
    for value in values[1:]:
        soft = _zoom((labels == value).astype(np.float32), shape, 1, coarse)
        out[soft >= 0.5] = value
    return out
