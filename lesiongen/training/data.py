"""Random batches of in-memory lesion patches: an index draw plus mirroring.

Every draw comes from the trainer's seeded generator, which is what makes a resumed run continue exactly where it
stopped.
"""

from __future__ import annotations

import numpy as np


def draw_batch(rng: np.random.Generator, n_patches: int, batch_size: int,
               mirror: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Patch indices and, per sample, which of the three spatial axes to mirror."""
    index = rng.integers(0, n_patches, size=batch_size)
    flips = rng.random((batch_size, 3)) < 0.5 if mirror else np.zeros((batch_size, 3), dtype=bool)
    return index, flips


def mirrored(array: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Mirror each sample of a (b, ..., z, y, x) batch along the spatial axes its ``flips`` row selects."""
    out = array.copy()
    for i, row in enumerate(flips):
        axes = tuple(out[i].ndim - 3 + int(a) for a in np.flatnonzero(row))
        if axes:
            out[i] = np.flip(out[i], axis=axes)
    return out
