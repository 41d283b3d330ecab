"""The lesion segmenter: nnU-Net's recipe (PlainConvUNet with the planned topology, Gaussian-weighted sliding
window, mirroring test-time augmentation) applied to a preprocessed volume.

Its configuration names the plans stage it uses: ``3d`` (a 3D UNet on 3D patches) or, for anisotropic data, ``2d``
(a 2D UNet applied slice by slice along the stage's ``slice_axis``). The configuration is part of the checkpoint's
``model`` entry, so a model folder alone rebuilds the right network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lesiongen.models.base import LesionModel
from lesiongen.models.networks import build_network
from lesiongen.models.sliding_window import predict_sliding_window, predict_slicewise
from lesiongen.planning.plans import SEG_3D, StagePlan, segmentation_stage_name


@dataclass
class SegmenterConfig:
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])  # test-time mirroring (when asked for)
    step_size: float = 0.5  # sliding-window stride as a fraction of the patch
    configuration: str = SEG_3D  # 3d or 2d (models trained before 2d existed have no entry: 3d)


class Segmenter(LesionModel):
    kind = "seg"
    stage = "segmentation"
    config_class = SegmenterConfig
    config: SegmenterConfig

    @property
    def stage_plan(self) -> StagePlan:
        return self.plans.stages[segmentation_stage_name(self.config.configuration, self.plans)]

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
        slice_axis = self.stage_plan.slice_axis
        try:
            if slice_axis is None:
                logits = predict_sliding_window(network, images, self.patch_size, len(self.label_values),
                                                step_size=self.config.step_size,
                                                mirror_axes=tuple(self.config.mirror_axes) if mirror else None,
                                                device=self.device)
            else:
                # mirroring across slices would only repeat the same 2D prediction
                in_plane = [a for a in self.config.mirror_axes if a != slice_axis] if mirror else None
                logits = predict_slicewise(network, images, self.patch_size, len(self.label_values), slice_axis,
                                           step_size=self.config.step_size, mirror_axes=in_plane,
                                           device=self.device, batch_size=self.stage_plan.batch_size)
        finally:
            if decoder is not None:
                decoder.deep_supervision = supervised
            network.train(was_training)
        return torch.softmax(logits, dim=0).numpy()
