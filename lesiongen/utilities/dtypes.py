"""Casting computed values back to an input's dtype, so untouched voxels come back exactly as they were read."""

from __future__ import annotations

import numpy as np


def cast_to(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """``values`` in ``dtype``: rounded and clipped for integers, thresholded at 0.5 for booleans, clipped to the
    finite range for floats (an overflow would otherwise become inf)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.asarray(values) >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        if np.asarray(values).dtype == dtype:
            return np.asarray(values)
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    return np.asarray(values).astype(dtype)
