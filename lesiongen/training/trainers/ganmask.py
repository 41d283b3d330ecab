"""``ganmask``: a pix2pix-style conditional GAN of lesion masks, in 3D.

The generator (dynamic-network-architectures' ``PlainConvUNet`` with the mask UNet's planned topology, no deep
supervision) maps smooth noise fields, the sphere cue (the union of each real lesion's minimum enclosing sphere) and
the tissue map to one sigmoid channel per lesion class. The discriminator (MONAI's ``PatchDiscriminator``, pix2pix's
PatchGAN in 3D) judges (condition, mask) pairs patch by patch: the real mask or the generator's probabilities, next
to the same sphere cue and tissue map. Per step the discriminator takes one step on the non-saturating GAN loss (its
gradient does not reach the generator: the generated mask is detached), then the generator one step on
``adversarial_weight x BCE(D(fake), 1) + reconstruction_weight x (BCE + soft Dice to the real mask)`` with the
discriminator frozen. Both networks' optimisers and LR schedules are in the checkpoint, so ``--c`` continues exactly;
only the generator is the model (its EMA weights sample). After training the probability threshold is calibrated on
training patches, as diffmask's, so generated lesion counts and volumes match the real ones.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lesiongen.models.mask_generators import GANMaskConfig, GANMaskGenerator
from lesiongen.models.networks import build_network
from lesiongen.training.base import clipped_step
from lesiongen.training.data import draw_batch, mirrored
from lesiongen.training.losses import discriminator_loss, generator_loss
from lesiongen.training.trainers.diffmask import CALIBRATION_PATCHES, calibrate_threshold, count_and_volume
from lesiongen.training.trainers.masks import MaskTrainer
from lesiongen.training.trainers.unetmask import start_at_lesion_prior
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger("lesiongen.training")

THRESHOLDS = np.round(np.linspace(0.1, 0.9, 17), 3)  # candidate cut-offs on the generator's probabilities


def patch_verdicts(discriminator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The discriminator's logits per patch (MONAI's PatchDiscriminator returns every layer's features, last the
    verdicts)."""
    out = discriminator(x)
    return out[-1] if isinstance(out, (list, tuple)) else out


class GANMaskTrainer(MaskTrainer):
    name = "ganmask"
    model_class = GANMaskGenerator
    model: GANMaskGenerator
    # pix2pix's 2e-4 is for long runs: at CPU lengths (300 steps) it left the masks far from their sphere cues
    # (documentation/training.md); unetmask's 1e-3 for both players followed them within 400
    learning_rate = 1e-3  # generator
    discriminator_learning_rate = 1e-3
    adam_beta1 = 0.5  # pix2pix's: Adam's default 0.9 carries stale momentum through the two players' moves
    adversarial_weight = 1.0
    reconstruction_weight = 10.0  # BCE + Dice to the real mask: keeps the lesion inside its sphere cue

    def model_config(self) -> GANMaskConfig:
        return GANMaskConfig(priors=self.priors)

    def configure_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(parameters, lr=self.learning_rate, betas=(self.adam_beta1, 0.999),
                                 weight_decay=self.weight_decay)

    def initialise_networks(self) -> None:
        generator = self.networks["generator"]
        start_at_lesion_prior(generator)
        # without deep supervision only the last output layer is used: the others would leave DDP waiting for
        # gradients that never come
        for layer in generator.decoder.seg_layers[:-1]:
            layer.requires_grad_(False)

    def initialize(self) -> None:
        super().initialize()
        # the discriminator only serves training: it lives in the trainer (and its checkpoints), not in the model
        self.discriminator = build_network(self.stage_plan.networks["gan_discriminator"]).to(self.device)
        self.discriminator.train()
        self.discriminator_optimizer = torch.optim.AdamW(
            self.discriminator.parameters(), lr=self.discriminator_learning_rate, betas=(self.adam_beta1, 0.999),
            weight_decay=self.weight_decay)
        self.discriminator_scheduler = torch.optim.lr_scheduler.PolynomialLR(
            self.discriminator_optimizer, total_iters=max(self.total_steps, 1), power=0.9)
        self.trained_discriminator = (DistributedDataParallel(self.discriminator) if self.distributed.enabled
                                      else self.discriminator)
        logger.info("network discriminator (training only): %s, %.2f M parameters", type(self.discriminator).__name__,
                    sum(p.numel() for p in self.discriminator.parameters()) / 1e6)

    def load_training_data(self) -> None:
        super().load_training_data()
        self.controls = self.sphere_controls(self.data.masks)

    # ------------------------------------------------------------------------------------------- one step
    def draw(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """A mirrored batch: its condition (by layout part), its real masks (b, K, ...) and generator noise."""
        index, flips = draw_batch(self.data_rng, len(self.data), self.batch_size)
        tissue = mirrored(self.data.tissue[index], flips) if self.data.tissue is not None else None
        condition = {k: self.to_device(v) for k, v in
                     self.model.condition(mirrored(self.controls[index], flips), tissue).items()}
        real = self.to_device(self.model.encode_masks(mirrored(self.data.masks[index], flips)))
        noise = self.model.noise(len(index), self.generator).to(self.device)
        return condition, real, noise

    def discriminator_step(self, condition: dict[str, torch.Tensor], real: torch.Tensor,
                           fake: torch.Tensor) -> float:
        """One discriminator step on real vs generated masks; ``fake`` is detached, so no gradient reaches the
        generator. Real and generated pairs go through in one batch (instance norm keeps samples apart)."""
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        pairs = torch.cat([self.model.discriminator_input(real, condition),
                           self.model.discriminator_input(fake.detach(), condition)])
        with torch.autocast(self.device.type, enabled=self.amp):
            verdicts = patch_verdicts(self.trained_discriminator, pairs).float()
        loss = discriminator_loss(verdicts[:len(real)], verdicts[len(real):])
        self.scaler.scale(loss).backward()
        clipped_step(self.scaler, self.discriminator_optimizer, self.discriminator.parameters(), self.grad_clip)
        return float(loss.detach())

    def generator_step(self, condition: dict[str, torch.Tensor], real: torch.Tensor,
                       logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One generator step: fool the (frozen) discriminator and stay close to the real mask."""
        self.optimizer.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)  # it judges here but is not trained (nor synchronised under DDP)
        try:
            with torch.autocast(self.device.type, enabled=self.amp):
                verdicts = patch_verdicts(self.discriminator, self.model.discriminator_input(
                    torch.sigmoid(logits.float()), condition)).float()
            loss, parts = generator_loss(verdicts, logits.float(), real, self.adversarial_weight,
                                         self.reconstruction_weight)
            self.scaler.scale(loss).backward()
        finally:
            self.discriminator.requires_grad_(True)
        clipped_step(self.scaler, self.optimizer, self.networks["generator"].parameters(), self.grad_clip)
        return loss, parts

    def _train_step(self) -> tuple[float, dict[str, float]]:
        condition, real, noise = self.draw()
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.trained["generator"](self.model.generator_input(noise, condition))
        discriminator = self.discriminator_step(condition, real, torch.sigmoid(logits.float()))
        loss, parts = self.generator_step(condition, real, logits)
        self.scaler.update()
        self.lr_scheduler.step()
        self.discriminator_scheduler.step()
        self.ema["generator"].update_parameters(self.networks["generator"])
        return float(loss.detach()), {**parts, "discriminator": discriminator}

    # --------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, final: bool) -> dict[str, Any]:
        state = super().state_dict(final)
        state["discriminator"] = {"network": self.discriminator.state_dict(),
                                  "optimizer": self.discriminator_optimizer.state_dict(),
                                  "lr_scheduler": self.discriminator_scheduler.state_dict()}
        return state

    def load_state(self, state: dict[str, Any], path) -> None:
        super().load_state(state, path)
        saved = state.get("discriminator")
        if not isinstance(saved, dict) or not {"network", "optimizer", "lr_scheduler"} <= set(saved):
            raise LesiongenError(f"{path}: holds no ganmask discriminator state; start afresh without --c")
        self.discriminator.load_state_dict(saved["network"])
        self.discriminator_optimizer.load_state_dict(saved["optimizer"])
        self.discriminator_scheduler.load_state_dict(saved["lr_scheduler"])
        if state["total_steps"] != self.total_steps:
            self.stretch_schedule(self.discriminator_optimizer, self.discriminator_scheduler, state["step"])

    # --------------------------------------------------------------------------------------- calibration
    def finish_training(self, model: GANMaskGenerator) -> None:
        """The probability threshold whose masks best match the real lesion count and sizes on training patches."""
        n = min(CALIBRATION_PATCHES, len(self.data))
        seed = derive_seed(self.options.seed, "calibration")
        index = np.random.default_rng(seed).choice(len(self.data), size=n, replace=False)
        probabilities = model.probabilities(self.controls[index], self.data.tissue_at(index), seed=seed)
        best, scores = calibrate_threshold(probabilities, self.data.masks[index], self.data.brain[index],
                                           model.binarise, model.minimum_voxels(), THRESHOLDS)
        model.config.threshold = best
        real_count, real_volume = count_and_volume(self.data.masks[index])
        logger.info("calibrated threshold %.2f on %d training patches (real: mean lesions %.2f, mean voxels %.1f "
                    "per patch)", best, n, real_count, real_volume)
        self.extra["calibration"] = {"threshold": best, "patches": n, "scores": scores,
                                     "real_mean_lesions": real_count, "real_mean_voxels": real_volume}
