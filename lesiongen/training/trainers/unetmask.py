"""``unetmask``: seed 000's tissue-conditioned 3D UNet that draws a lesion mask into healthy-looking tissue.

Input: the image patch with its lesions filled by the surrounding tissue's median (so the network cannot copy the
lesion), the tissue map when the dataset has one, and a sphere cue (where and how large lesions should be);
output: one sigmoid channel per lesion class. The network is dynamic-network-architectures' PlainConvUNet with the
planned topology and deep supervision; the loss is BCE + soft Dice at every resolution with nnU-Net's weights.
At sampling, spheres come from the fold's priors; the mask is deterministic given image and spheres, so the seed
varies the spheres.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesiongen.models.conditioning import MaskConditioning
from lesiongen.models.networks import build_network
from lesiongen.models.spheres import SphereLesion
from lesiongen.training.data import draw_batch, fill_lesions, mirrored
from lesiongen.training.losses import deep_supervision_loss, sigmoid_dice_loss
from lesiongen.training.trainers.masks import MaskTrainer
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger("lesiongen.training")

PROBABILITY_THRESHOLD = 0.5
INITIAL_LESION_FRACTION = 0.01


class UNetMaskTrainer(MaskTrainer):
    name = "unetmask"
    learning_rate = 1e-3

    def build_networks(self) -> dict[str, nn.Module]:
        unet = build_network(self.stage_plan.networks["unet"])
        # start every output at the lesion prior (~1 % of patch voxels) instead of p = 0.5 everywhere: otherwise
        # the first few hundred steps only learn "mostly background" (the prior-bias init of RetinaNet)
        with torch.no_grad():
            for layer in getattr(unet.decoder, "seg_layers", []):
                if getattr(layer, "bias", None) is not None:
                    layer.bias.fill_(float(np.log(INITIAL_LESION_FRACTION / (1 - INITIAL_LESION_FRACTION))))
        return {"unet": unet}

    def load_training_data(self) -> None:
        super().load_training_data()
        data = self.data
        tissue = data.tissue if data.tissue is not None else [None] * len(data)
        self.filled = np.stack([fill_lesions(data.images[i], data.masks[i], data.brain[i], tissue[i])
                                for i in range(len(data))])
        self.controls = self.sphere_controls(data.masks)

    def inputs(self, images: np.ndarray, tissue: np.ndarray | None, controls: np.ndarray) -> np.ndarray:
        parts = [images.astype(np.float32)]
        encoded_tissue = self.encode_tissue(tissue, len(images))
        if encoded_tissue is not None:
            parts.append(encoded_tissue)
        parts.append(self.encode_control(controls))
        return np.concatenate(parts, axis=1)

    def targets(self, masks: np.ndarray) -> np.ndarray:
        classes = np.asarray(self.plans.lesion_labels).reshape(1, -1, 1, 1, 1)
        return (masks[:, None] == classes).astype(np.float32)

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        index, flips = draw_batch(self.data_rng, len(self.data), self.batch_size)
        tissue = mirrored(self.data.tissue[index], flips) if self.data.tissue is not None else None
        x = self.to_device(self.inputs(mirrored(self.filled[index], flips), tissue,
                                       mirrored(self.controls[index], flips)))
        target = self.to_device(self.targets(mirrored(self.data.masks[index], flips)))
        return deep_supervision_loss(self.trained["unet"](x), target, {
            "bce": F.binary_cross_entropy_with_logits,
            "dice": sigmoid_dice_loss,
        })

    @torch.no_grad()
    def generate(self, spheres: list[list[SphereLesion]], conditioning: MaskConditioning,
                 rng: np.random.Generator) -> np.ndarray:
        if not spheres:
            return np.zeros((0, *self.patch_size), dtype=np.uint8)
        if conditioning.images is None:
            raise LesiongenError("unetmask draws lesions into image patches: give conditioning images "
                                 "(lesion-free patches of the planned size)")
        controls = self.render_controls(spheres)
        network = self.networks["unet"]
        labels = np.asarray(self.plans.lesion_labels, dtype=np.uint8)
        out = []
        chunk = max(1, self.stage_plan.batch_size)
        for start in range(0, len(spheres), chunk):
            part = slice(start, start + chunk)
            tissue = None if conditioning.tissue is None else conditioning.tissue[part]
            x = self.to_device(self.inputs(conditioning.images[part], tissue, controls[part]))
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = network(x)
            logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).float()
            probabilities = torch.sigmoid(logits).cpu().numpy()
            best = probabilities.argmax(axis=1)
            out.append(np.where(probabilities.max(axis=1) > PROBABILITY_THRESHOLD, labels[best], 0))
        self.last_evaluations = 1
        return np.concatenate(out).astype(np.uint8)
