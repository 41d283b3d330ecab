"""What the three mask-generator trainers share: the fold's sphere priors (fitted on its training lesions only),
its lesion patches and the sphere controls derived from them."""

from __future__ import annotations

import logging

import numpy as np

from lesiongen.models.mask_generators import MaskGenerator
from lesiongen.models.spheres import sphere_control_from_mask
from lesiongen.planning.priors import fold_sphere_priors
from lesiongen.preprocessing.lesion_patches import LesionPatches, load_lesion_patches
from lesiongen.training.base import Trainer

logger = logging.getLogger("lesiongen.training")


class MaskTrainer(Trainer):
    model_class = MaskGenerator
    model: MaskGenerator

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.priors = fold_sphere_priors(self.dataset.fingerprint, self.train_cases, self.plans)

    def model_config(self):
        return self.model_class.config_class(priors=self.priors)

    def load_training_data(self) -> None:
        self.data: LesionPatches = load_lesion_patches(self.dataset.lesion_patch_folder, self.train_cases)
        logger.info("%d lesion patches of %s voxels from %d training cases", len(self.data), self.patch_size,
                    len(set(self.data.case_ids)))

    def sphere_controls(self, masks: np.ndarray) -> np.ndarray:
        """Union of the minimum enclosing spheres of each component, per patch: the conditioning a user gives."""
        return np.stack([sphere_control_from_mask(m, self.spacing) for m in masks])
