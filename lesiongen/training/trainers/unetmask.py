"""``unetmask``: seed 000's tissue-conditioned 3D UNet that draws a lesion mask into healthy-looking tissue.

Training input: the image patch with its lesions filled by the surrounding tissue's median (so the network cannot
copy the lesion), the tissue map when the dataset has one, and a sphere cue (where and how large lesions should be);
target: one sigmoid channel per lesion class. The network is dynamic-network-architectures' PlainConvUNet with the
planned topology and deep supervision; the loss is BCE + soft Dice at every resolution with nnU-Net's weights.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from lesiongen.models.mask_generators import UNetMaskGenerator
from lesiongen.preprocessing.lesion_patches import fill_lesions
from lesiongen.training.data import draw_batch, mirrored
from lesiongen.training.losses import deep_supervision_loss, sigmoid_dice_loss
from lesiongen.training.trainers.masks import MaskTrainer

logger = logging.getLogger("lesiongen.training")

INITIAL_LESION_FRACTION = 0.01


def start_at_lesion_prior(unet: torch.nn.Module, fraction: float = INITIAL_LESION_FRACTION) -> None:
    """Start every output of a PlainConvUNet at the lesion prior (~1 % of patch voxels) instead of p = 0.5
    everywhere: otherwise the first few hundred steps only learn "mostly background" (RetinaNet's prior-bias init)."""
    with torch.no_grad():
        for layer in getattr(unet.decoder, "seg_layers", []):
            if getattr(layer, "bias", None) is not None:
                layer.bias.fill_(float(np.log(fraction / (1 - fraction))))


class UNetMaskTrainer(MaskTrainer):
    name = "unetmask"
    model_class = UNetMaskGenerator
    model: UNetMaskGenerator
    learning_rate = 1e-3

    def initialise_networks(self) -> None:
        start_at_lesion_prior(self.networks["unet"])

    def load_training_data(self) -> None:
        super().load_training_data()
        data = self.data
        tissue = data.tissue if data.tissue is not None else [None] * len(data)
        self.filled = np.stack([fill_lesions(data.images[i], data.masks[i], data.brain[i], tissue[i])
                                for i in range(len(data))])
        self.controls = self.sphere_controls(data.masks)

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        index, flips = draw_batch(self.data_rng, len(self.data), self.batch_size)
        tissue = mirrored(self.data.tissue[index], flips) if self.data.tissue is not None else None
        x = self.to_device(self.model.inputs(mirrored(self.filled[index], flips), tissue,
                                             mirrored(self.controls[index], flips)))
        target = self.to_device(self.model.encode_masks(mirrored(self.data.masks[index], flips)))
        return deep_supervision_loss(self.trained["unet"](x), target, {
            "bce": F.binary_cross_entropy_with_logits,
            "dice": sigmoid_dice_loss,
        })
