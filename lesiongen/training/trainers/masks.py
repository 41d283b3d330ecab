"""What the three mask generators share: fold data, sphere drawing and the ``sample_masks`` interface."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from lesiongen.models.conditioning import MaskConditioning, drop_small_components, min_lesion_voxels
from lesiongen.models.spheres import SphereLesion, render_spheres, sample_sphere_lesions, sphere_control_from_mask
from lesiongen.training.base import Trainer, priors_from_json
from lesiongen.training.data import LesionPatches, load_lesion_patches

logger = logging.getLogger("lesiongen.training")


class MaskTrainer(Trainer):
    stage = "mask_generation"

    # ------------------------------------------------------------------------------------------ data
    def load_training_data(self) -> None:
        self.data: LesionPatches = load_lesion_patches(self.dataset.lesion_patch_folder, self.train_cases)
        logger.info("%d lesion patches of %s voxels from %d training cases", len(self.data), self.patch_size,
                    len(set(self.data.case_ids)))

    def sphere_controls(self, masks: np.ndarray) -> np.ndarray:
        """Union of the minimum enclosing spheres of each component, per patch: the conditioning a user gives."""
        return np.stack([sphere_control_from_mask(m, self.spacing) for m in masks])

    def finish_training(self) -> None:
        # the fold's priors travel with the checkpoint, so a shared model samples without the fingerprint
        self.extra["sphere_priors"] = {k: dataclasses.asdict(v) for k, v in self.priors.items()}

    def load_for_inference(self, path=None) -> None:
        super().load_for_inference(path)
        self.priors = priors_from_json(self.extra["sphere_priors"])

    # --------------------------------------------------------------------------------------- encodings
    @property
    def n_lesion_classes(self) -> int:
        return len(self.plans.lesion_labels)

    @property
    def max_tissue_label(self) -> int:
        return max(self.plans.tissue_labels.values(), default=1) or 1

    def encode_control(self, control: np.ndarray) -> np.ndarray:
        """Sphere label map -> one channel in [-1, 1]: -1 outside spheres, class k at -1 + 2k/K."""
        return (-1.0 + 2.0 * control.astype(np.float32) / self.n_lesion_classes)[:, None]

    def encode_tissue(self, tissue: np.ndarray | None, n: int) -> np.ndarray | None:
        """Tissue map -> one channel in [-1, 1], or None when the plans have no tissue maps."""
        if not self.plans.has_tissue_maps:
            return None
        if tissue is None:
            logger.warning("%s was trained with tissue maps but none were given; using 'no tissue'", self.name)
            tissue = np.zeros((n, *self.patch_size), dtype=np.uint8)
        return (-1.0 + 2.0 * tissue.astype(np.float32) / self.max_tissue_label)[:, None]

    # ------------------------------------------------------------------------------------------ sampling
    def draw_spheres(self, n: int, conditioning: MaskConditioning, rng: np.random.Generator) -> list[list[SphereLesion]]:
        if conditioning.spheres is not None:
            return conditioning.spheres
        return [sample_sphere_lesions(self.priors, self.patch_size, self.spacing, rng,
                                      brain=conditioning.item("brain", i), tissue=conditioning.item("tissue", i))
                for i in range(n)]

    def render_controls(self, spheres: list[list[SphereLesion]]) -> np.ndarray:
        return np.stack([render_spheres(s, self.patch_size, self.spacing) for s in spheres]) if spheres else \
            np.zeros((0, *self.patch_size), dtype=np.uint8)

    def sample_masks(self, n: int, conditioning: MaskConditioning | None = None, seed: int = 0) -> np.ndarray:
        """``n`` lesion masks (n, z, y, x) uint8 at the plans' lesion patch size; same seed, same masks."""
        conditioning = conditioning or MaskConditioning()
        conditioning.check(n, self.patch_size)
        rng = np.random.default_rng(seed)
        spheres = self.draw_spheres(n, conditioning, rng)
        masks = self.generate(spheres, conditioning, rng)
        if conditioning.brain is not None:
            masks[~conditioning.brain.astype(bool)] = 0
        minimum = {int(k): min_lesion_voxels(p.min_lesion_volume_mm3, self.spacing) for k, p in self.priors.items()}
        return np.stack([drop_small_components(m, minimum) for m in masks]).astype(np.uint8) if n else masks

    def generate(self, spheres: list[list[SphereLesion]], conditioning: MaskConditioning,
                 rng: np.random.Generator) -> np.ndarray:
        """Label maps for the given spheres; each generator's own method."""
        raise NotImplementedError
