"""What a lesion is, everywhere in lesiongen: a 26-connected component of one class (voxels touching by a face,
an edge or a corner belong together), as nnU-Net's and most lesion-wise metrics count them."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(component id per voxel, number of components) of a boolean 3D mask."""
    return ndimage.label(mask, structure=CONNECTIVITY_26)


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxels of every component (lesion) of a boolean 3D mask, in component order."""
    ids, n = label_components(mask)
    return np.bincount(ids.ravel(), minlength=n + 1)[1:]
