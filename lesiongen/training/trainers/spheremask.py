"""``spheremask``: the baseline every learned generator must beat.

Nothing is learned by gradient descent: "training" refits the sphere priors on the fold's training lesions (done by
the base) and stores them with the checkpoint. Sampling draws lesion count, class, radius, anisotropy, rotation and
tissue-weighted positions from those priors and renders filled ellipsoids.
"""

from __future__ import annotations

import numpy as np

from lesiongen.models.conditioning import MaskConditioning
from lesiongen.models.spheres import SphereLesion, render_ellipsoids
from lesiongen.training.trainers.masks import MaskTrainer


class SphereMaskTrainer(MaskTrainer):
    name = "spheremask"

    def load_training_data(self) -> None:
        pass  # the priors come from the fingerprint; no patches needed

    def generate(self, spheres: list[list[SphereLesion]], conditioning: MaskConditioning,
                 rng: np.random.Generator) -> np.ndarray:
        if not spheres:
            return np.zeros((0, *self.patch_size), dtype=np.uint8)
        return np.stack([render_ellipsoids(s, self.patch_size, self.spacing) for s in spheres])
