"""The lesion segmenter: nnU-Net's recipe (PlainConvUNet with the planned topology, Gaussian-weighted sliding
window, mirroring test-time augmentation) applied to a preprocessed volume."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lesiongen.models.base import LesionModel
from lesiongen.models.networks import build_network
from lesiongen.models.sliding_window import predict_sliding_window


@dataclass
class SegmenterConfig:
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])  # test-time mirroring (when asked for)
    step_size: float = 0.5  # sliding-window stride as a fraction of the patch


class Segmenter(LesionModel):
    kind = "seg"
    stage = "segmentation"
    config_class = SegmenterConfig
    config: SegmenterConfig

    def build_networks(self) -> dict[str, nn.Module]:
        return {"unet": build_network(self.stage_plan.networks["unet"])}

    @property
    def label_values(self) -> list[int]:
        return sorted(self.plans.labels.values())

    def predict_probabilities(self, images: np.ndarray, mirror: bool = True) -> np.ndarray:
        """Softmax probabilities (classes, z, y, x) of a preprocessed (c, z, y, x) volume."""
        network = self.networks["unet"]
        was_training = network.training
        network.eval()
        decoder = getattr(network, "decoder", None)
        supervised = getattr(decoder, "deep_supervision", False)
        if decoder is not None:
            decoder.deep_supervision = False  # only the full-resolution output is needed
        try:
            logits = predict_sliding_window(network, images, self.patch_size, len(self.label_values),
                                            step_size=self.config.step_size,
                                            mirror_axes=tuple(self.config.mirror_axes) if mirror else None,
                                            device=self.device)
        finally:
            if decoder is not None:
                decoder.deep_supervision = supervised
            network.train(was_training)
        return torch.softmax(logits, dim=0).numpy()
