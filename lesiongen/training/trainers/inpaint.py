"""``inpaint``: trains the lesion-focused 3D diffusion inpainter (LeFusion-style) with a pseudo-healthy mode.

Training (DDPM with diffusers' scheduler; the network predicts the clean patch, ``prediction_type="sample"``):

* predicting the patch rather than the noise: at CPU training lengths, noise prediction gave faint inserted lesions
  and poor pseudo-healthy fills (figures in documentation/inpainting.md);
* the loss is the squared error inside the edit region and, per lesion class, inside the lesion, plus a small
  weight outside (the known region is replaced at sampling time, so only coherence at the border matters there);
* the condition is dropped with probability ``condition_dropout`` (flag set, values zero), so the unconditional
  model that classifier-free guidance needs is trained, unlike LeFusion's never-trained null embedding;
* with probability ``heal_probability`` a sample is *mask-ablated* (seed 001): a real lesion's shape is moved onto
  lesion-free brain tissue in the same patch and the model learns to fill it with the tissue that is really there.
  At sampling time the heal channel turns the model into a pseudo-healthy generator (``remove`` mode).

After training, the texture conditions of the training lesions go into the model's contrast bank, from which
insert mode draws.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from lesiongen.diffusion.inpainting import InpaintSchedule, edit_region, make_scheduler
from lesiongen.diffusion.schedules import short_schedule, training_target
from lesiongen.models.inpainter import Inpainter, InpainterConfig, class_contrast, class_edges, class_step
from lesiongen.preprocessing.lesion_patches import LesionPatches, load_lesion_patches, relocate_shape
from lesiongen.training.base import Trainer
from lesiongen.training.data import draw_batch, mirrored
from lesiongen.training.diffusion import DiffusionTraining
from lesiongen.utilities.files import nan_to_none

logger = logging.getLogger("lesiongen.training")


class InpaintTrainer(DiffusionTraining, Trainer):
    name = "inpaint"
    model_class = Inpainter
    model: Inpainter
    learning_rate = 1e-4
    margin_voxels = 2  # edit region and feathering ramp around the lesion (goes into the model)
    condition_dropout = 0.15
    heal_probability = 0.25
    outside_loss_weight = 0.1
    # the edge bank in Euclidean rings (models.inpainter.EDGE_RINGS) instead of chessboard ones, and how far the edge
    # calibration may amplify a ring painted short of the drawn lesion's halo (InpainterConfig): inserted contrast
    # closer to real, but neither helped segmentation in the benefit runs (README), so both are off
    euclidean_edge_rings = False
    edge_max_gain = 1.0
    sampling_steps = 16  # DDIM steps of the model's default sampler (before resampling jumps)
    # the model's own sampler is the few-step preset (4 DDIM steps, no jumps, no guidance) instead
    few_step_sampling = False
    # train only at the few-step sampler's timesteps (a short schedule, fastWDM3D-style); implies few_step_sampling,
    # and the model can then be sampled only with it
    few_step_training = False

    @property
    def edge_rings(self) -> str:
        return "euclidean" if self.euclidean_edge_rings else "chessboard"

    def model_config(self) -> InpainterConfig:
        config = InpainterConfig(margin_voxels=int(self.margin_voxels), edge_rings=self.edge_rings,
                                 edge_max_gain=float(self.edge_max_gain))
        config.sampling = dataclasses.replace(config.sampling, num_inference_steps=int(self.sampling_steps))
        if self.few_step_sampling or self.few_step_training:
            config.sampling = InpaintSchedule.few_step()
        if self.few_step_training:
            timesteps = make_scheduler(config.sampling, config.schedule).timesteps
            config.schedule = short_schedule(config.schedule, timesteps)
        return config

    def load_training_data(self) -> None:
        self.data: LesionPatches = load_lesion_patches(self.dataset.lesion_patch_folder, self.train_cases)
        labels = self.plans.lesion_labels
        # per patch and class: the contrast of that class's lesions (the texture condition to learn from)
        self.contrasts = np.stack([
            np.stack([class_contrast(self.data.images[i], self.data.masks[i] == label, self.data.brain[i])
                      for label in labels])
            for i in range(len(self.data))])  # (n, K, C)
        self.steps = np.stack([  # the same lesions' intensity steps: what insert mode calibrates to
            np.stack([class_step(self.data.images[i], self.data.masks[i] == label, self.data.brain[i])
                      for label in labels])
            for i in range(len(self.data))])  # (n, K, C)
        self.edges = np.stack([  # and their edge steps: what insert mode calibrates the margin to
            np.stack([class_edges(self.data.images[i], self.data.masks[i] == label, self.data.brain[i],
                                  int(self.margin_voxels), (self.data.masks[i] > 0) & (self.data.masks[i] != label),
                                  self.edge_rings)
                      for label in labels])
            for i in range(len(self.data))])  # (n, K, margin, C)
        logger.info("%d lesion patches from %d training cases", len(self.data), len(set(self.data.case_ids)))

    def draw_inputs(self) -> dict[str, np.ndarray]:
        """A batch's clean images and the conditioning the network sees (numpy), drawn with ``data_rng``."""
        rng = self.data_rng
        margin = self.model.margin_voxels
        index, flips = draw_batch(rng, len(self.data), self.batch_size)
        images = mirrored(self.data.images[index], flips)
        masks = mirrored(self.data.masks[index], flips)
        brain = mirrored(self.data.brain[index], flips)
        contrast = self.contrasts[index].copy()
        heal = np.zeros_like(masks, dtype=bool)
        unconditioned = rng.random(len(index)) < self.condition_dropout
        heal_draw = rng.random(len(index)) < self.heal_probability
        for i in np.flatnonzero(heal_draw):
            moved = heal_shape(masks[i] > 0, brain[i], margin, rng)
            if moved is not None:
                heal[i] = edit_region(moved, margin)
                masks[i] = 0  # the model must not be told where the real lesions are
                unconditioned[i] = True
        lesion = np.where(heal.any(axis=(1, 2, 3))[:, None, None, None], 0, masks)
        region = edit_region(lesion > 0, margin) | heal
        return {"images": images, "known": images * ~region[:, None], "lesion": lesion, "heal": heal,
                "region": region, "contrast": contrast, "unconditioned": unconditioned}

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.draw_inputs()
        clean = self.to_device(batch["images"])
        noisy, noise, timesteps = self.add_training_noise(clean)
        x = self.model.network_input(noisy, batch["known"], batch["lesion"], batch["heal"], batch["contrast"],
                                     batch["unconditioned"])
        predicted = self.trained["denoiser"](x, timesteps)
        error = ((predicted.float() - training_target(self.scheduler, clean, noise, timesteps)) ** 2).mean(dim=1)
        lesions = {label: self.to_device((batch["lesion"] == label).astype(np.float32))
                   for label in self.plans.lesion_labels}
        return inpainting_loss(error, self.to_device(batch["region"].astype(np.float32)), lesions,
                               self.outside_loss_weight)

    def finish_training(self, model: Inpainter) -> None:
        # the texture conditions seen in training, per class: insert mode draws from these
        bank, steps, edges = {}, {}, {}
        for k, label in enumerate(self.plans.lesion_labels):
            present = np.array([(m == label).any() for m in self.data.masks])
            bank[str(label)] = self.contrasts[present, k].tolist()
            steps[str(label)] = self.steps[present, k].tolist()
            edges[str(label)] = nan_to_none(self.edges[present, k].tolist())  # an undefined ring: null
        model.config.contrast_bank = bank
        model.config.step_bank = steps
        model.config.edge_bank = edges


def heal_shape(lesion: np.ndarray, brain: np.ndarray, margin: int, rng: np.random.Generator) -> np.ndarray | None:
    """The lesion's shape moved onto lesion-free brain of the same patch (clear of the lesion's edit region); None
    when it does not fit."""
    if not lesion.any():
        return None
    return relocate_shape(lesion, edit_region(lesion, margin + 1), brain, rng, tries=8)


def inpainting_loss(error: torch.Tensor, region: torch.Tensor, lesions: dict[int, torch.Tensor],
                    outside_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean error in the edit region + the mean error inside each lesion class (each class counts 1 / K, however
    small) + ``outside_weight`` x the mean error outside the region. ``error`` and the masks are (b, z, y, x)."""
    loss = (error * region).sum() / region.sum().clamp(min=1.0)
    parts = {"region": float(loss.detach())}
    for label, inside in lesions.items():
        if float(inside.sum()) > 0:
            class_loss = (error * inside).sum() / inside.sum()
            loss = loss + class_loss / len(lesions)
            parts[f"class_{label}"] = float(class_loss.detach())
    outside = (error * (1 - region)).sum() / (1 - region).sum().clamp(min=1.0)
    loss = loss + outside_weight * outside
    parts["outside"] = float(outside.detach())
    return loss, parts
