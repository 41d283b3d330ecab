"""The one interface every mask generator shares: ``sample_masks(n, conditioning, seed) -> masks``.

Masks are lesion-centred patches of the plans' lesion patch size at the target spacing, returned as
(n, z, y, x) uint8 label maps (0 background, 1..K lesion classes). Conditioning is optional per field; a generator
that needs a field it is not given says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesiongen.models.spheres import SphereLesion
from lesiongen.utilities.components import CONNECTIVITY_26
from lesiongen.utilities.errors import LesiongenError



@dataclass
class MaskConditioning:
    brain: np.ndarray | None = None  # (n, z, y, x) bool: where lesions may lie
    tissue: np.ndarray | None = None  # (n, z, y, x) uint8 tissue labels (e.g. 1 GM, 2 WM, 3 CSF)
    images: np.ndarray | None = None  # (n, c, z, y, x) normalised, lesion-free image patches
    spheres: list[list[SphereLesion]] | None = None  # given lesion spheres instead of ones drawn from the priors

    def check(self, n: int, patch_size: list[int]) -> None:
        for name in ("brain", "tissue", "images"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != n or list(value.shape[-3:]) != list(patch_size):
                raise LesiongenError(f"conditioning '{name}' has shape {value.shape}; expected {n} patches of "
                                     f"{patch_size}")
        if self.spheres is not None and len(self.spheres) != n:
            raise LesiongenError(f"conditioning gives spheres for {len(self.spheres)} patches, {n} requested")

    def item(self, name: str, index: int) -> np.ndarray | None:
        value = getattr(self, name)
        return None if value is None else value[index]

    def select(self, index: int) -> MaskConditioning:
        """The conditioning of patch ``index`` alone (a batch of one)."""
        return MaskConditioning(*(None if v is None else v[index:index + 1]
                                  for v in (self.brain, self.tissue, self.images)),
                                spheres=None if self.spheres is None else self.spheres[index:index + 1])

    @staticmethod
    def stack(parts: list[MaskConditioning]) -> MaskConditioning:
        """The patches of ``parts``, in order, as one conditioning; a field must be given for all parts or none."""
        def joined(name: str):
            values = [getattr(part, name) for part in parts]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise LesiongenError(f"conditioning '{name}' is given for some patches and not for others")
            return [x for v in values for x in v] if name == "spheres" else np.concatenate(values)

        return MaskConditioning(*(joined(name) for name in ("brain", "tissue", "images", "spheres")))


def min_lesion_voxels(min_volume_mm3: float, spacing: list[float]) -> int:
    """The smallest real lesion's volume in voxels of the target spacing (at least one voxel)."""
    return max(1, int(round(min_volume_mm3 / float(np.prod(spacing)))))


def drop_small_components(labels: np.ndarray, min_voxels: dict[int, int]) -> np.ndarray:
    """Remove connected components (26-connectivity, per class) smaller than the class's smallest real lesion."""
    out = labels.copy()
    for label, minimum in min_voxels.items():
        if minimum <= 1:
            continue
        ids, count = ndimage.label(labels == label, structure=CONNECTIVITY_26)
        if count == 0:
            continue
        sizes = np.bincount(ids.ravel())
        small = np.flatnonzero(sizes < minimum)
        small = small[small > 0]
        out[np.isin(ids, small)] = 0
    return out


def keep_components_on_controls(labels: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """``labels`` (z, y, x) without the connected lesion components (26-connectivity, any class) that share no voxel
    with the sphere ``controls`` (z, y, x; > 0 inside a sphere): a lesion is made for a sphere it was given, and every
    real lesion a generator learns from lies in its own sphere."""
    ids, count = ndimage.label(labels > 0, structure=CONNECTIVITY_26)
    if count == 0:
        return labels.copy()
    on_control = np.unique(ids[(controls > 0) & (ids > 0)])
    return np.where(np.isin(ids, on_control), labels, 0).astype(labels.dtype)
