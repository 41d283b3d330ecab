"""``spheremask``: the baseline every learned generator must beat.

Nothing is learned by gradient descent: "training" fits the sphere priors on the fold's training lesions and
stores them in the model's configuration. Sampling draws lesion count, class, radius, anisotropy, rotation and
tissue-weighted positions from those priors and renders filled ellipsoids.
"""

from __future__ import annotations

from lesiongen.models.mask_generators import SphereMaskGenerator
from lesiongen.training.trainers.masks import MaskTrainer


class SphereMaskTrainer(MaskTrainer):
    name = "spheremask"
    model_class = SphereMaskGenerator

    @property
    def total_steps(self) -> int:
        return 0  # the priors are fitted, nothing steps: --steps does not apply, and a fitted model stays up to date

    def load_training_data(self) -> None:
        pass  # the priors come from the fingerprint; no patches needed
