"""``seg``: the downstream nnU-Net-style segmentation fold that measures whether synthetic lesions help.

Network: dynamic-network-architectures' PlainConvUNet with the planned topology and deep supervision. Loss: soft
Dice (batch Dice, background excluded) + cross-entropy at every resolution with nnU-Net's weights. SGD with
Nesterov momentum 0.99, lr 1e-2, poly decay, gradient clipping at 12. Batches: foreground oversampling and
batchgenerators augmentation (spatial, noise, blur, brightness, contrast, gamma, mirroring), in ``num_workers``
background processes. With ``--synthetic STRATEGY`` a share ``R / (1 + R)`` of the samples (``R`` = the synthetic
ratio) comes from synthetic cases made from the healthy scans by that strategy's models of the same fold.

After training, every validation case is predicted by sliding window (Gaussian weighting, mirroring), exported at
its original geometry to ``fold_X/validation/`` and scored against the raw label in ``fold_X/summary.json``.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesiongen.evaluation.segmentation_metrics import aggregate, case_metrics
from lesiongen.inference.segment import probabilities_to_labels
from lesiongen.inference.sliding_window import predict_sliding_window
from lesiongen.io.dataset import load_dataset
from lesiongen.io.images import ImageGeometry, read_image, write_image
from lesiongen.models.networks import build_network
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import Trainer
from lesiongen.training.losses import deep_supervision_loss, softmax_dice_loss
from lesiongen.training.seg_data import SegCase, SegPatchLoader, augmentation, batch_stream
from lesiongen.training.synthetic import STRATEGIES, make_synthetic_cases
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import json_plain, read_json, write_json

logger = logging.getLogger("lesiongen.training")


class SegTrainer(Trainer):
    name = "seg"
    stage = "segmentation"
    learning_rate = 1e-2
    weight_decay = 3e-5
    grad_clip = 12.0
    synthetic_ratio = 1.0  # synthetic cases per real training case (when a strategy is chosen)
    num_workers = -1  # background augmentation processes; -1: nnU-Net's rule from the CPU count and device
    mirror_validation = 1  # mirroring test-time augmentation when predicting the validation cases (0: off)

    def __init__(self, *args, strategy: str = "none", **kwargs):
        if strategy not in STRATEGIES:
            raise LesiongenError(f"unknown synthetic strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        super().__init__(*args, **kwargs)

    @property
    def folder_name(self) -> str:
        return f"{self.name}_{self.strategy}"

    # ---------------------------------------------------------------------------------------------- set-up
    def configure_optimizer(self, parameters):
        return torch.optim.SGD(parameters, lr=self.learning_rate, weight_decay=self.weight_decay, momentum=0.99,
                               nesterov=True)

    def build_networks(self) -> dict[str, nn.Module]:
        return {"unet": build_network(self.stage_plan.networks["unet"])}

    @property
    def workers(self) -> int:
        if self.num_workers >= 0:
            return int(self.num_workers)
        if self.device.type == "cpu":
            return 0  # the CPU is busy with the network itself
        return max(1, min(12, (os.cpu_count() or 2) - 1) // self.distributed.world_size)

    def load_training_data(self) -> None:
        folder = self.dataset.data_folder / "training"
        real = [SegCase(c, folder / c) for c in self.train_cases]
        synthetic: list[SegCase] = []
        share = 0.0
        if self.strategy != "none":
            n_synthetic = max(1, math.ceil(self.synthetic_ratio * len(real)))
            if self.distributed.is_main:
                synthetic = make_synthetic_cases(self.dataset, self.fold, self.strategy, n_synthetic,
                                                 self.train_cases, str(self.device), self.options.seed)
            self.distributed.barrier()
            if not self.distributed.is_main:
                synthetic = make_synthetic_cases(self.dataset, self.fold, self.strategy, n_synthetic,
                                                 self.train_cases, str(self.device), self.options.seed)
            share = self.synthetic_ratio / (1 + self.synthetic_ratio)
        self.extra.update({"strategy": self.strategy, "synthetic_cases": len(synthetic),
                           "synthetic_share_of_samples": share})
        # the augmentation stream restarts from a step-dependent seed, so a resumed run is reproducible too
        seed = self.options.seed * 1009 + self.distributed.rank * 7919 + self.step
        loader = SegPatchLoader(real, synthetic, self.stage_plan.patch_size, self.batch_size, share, seed)
        self.batches = batch_stream(loader, augmentation(self.stage_plan.patch_size, self.plans.anisotropic),
                                    self.workers, seed)
        logger.info("%d real + %d synthetic (%s) training cases, %d augmentation worker(s)", len(real),
                    len(synthetic), self.strategy, self.workers)

    # ------------------------------------------------------------------------------------------ training
    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        batch = next(self.batches)
        data = self.to_device(batch["data"].astype(np.float32))
        target = self.to_device(batch["seg"].round().astype(np.int64))  # (b, 1, ...) labels
        return deep_supervision_loss(self.trained["unet"](data), target, {
            "ce": lambda logits, labels: F.cross_entropy(logits, labels[:, 0]),
            "dice": lambda logits, labels: softmax_dice_loss(logits, labels[:, 0]),
        })

    # ---------------------------------------------------------------------------------------- validation
    def finish_training(self) -> None:
        if hasattr(self.batches, "_finish"):
            self.batches._finish()
        if self.distributed.is_main:
            self.extra["validation"] = json_plain(self.validate())

    def predict_case(self, images: np.ndarray, mirror: bool = True) -> np.ndarray:
        """Softmax probabilities (classes, z, y, x) of a preprocessed case."""
        network = self.networks["unet"]
        network.eval()
        if hasattr(network, "decoder"):
            network.decoder.deep_supervision = False  # only the full-resolution output is needed
        try:
            logits = predict_sliding_window(network, images, self.stage_plan.patch_size, len(self.plans.labels),
                                            mirror_axes=(0, 1, 2) if mirror else None, device=self.device)
        finally:
            if hasattr(network, "decoder"):
                network.decoder.deep_supervision = True
        return torch.softmax(logits, dim=0).numpy()

    def validate(self) -> dict:
        """Predict the validation cases, export them at their original geometry and score them."""
        folder = self.output_folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        raw = load_dataset(self.dataset.name)  # the raw labels are the reference, as in nnU-Net
        cases = {c.case_id: c for c in raw.split("training")}
        ending = raw.info.file_ending
        per_case = {}
        for case_id in self.val_cases:
            stem = self.dataset.data_folder / "training" / case_id
            properties = read_json(f"{stem}.json")
            probabilities = self.predict_case(load_array(f"{stem}.b2nd"), mirror=bool(self.mirror_validation))
            prediction = self.export_prediction(probabilities, properties)
            geometry = ImageGeometry.from_json(properties["original_geometry"])
            write_image(folder / f"{case_id}{ending}", prediction, geometry, raw.info.reader)
            reference, _ = read_image(cases[case_id].label, raw.info.reader)
            per_case[case_id] = case_metrics(reference.astype(np.uint8), prediction, geometry.spacing_zyx,
                                             self.plans.lesion_labels)
        summary = {"per_case": per_case, "mean": aggregate(per_case), "labels": self.plans.lesion_labels,
                   "strategy": self.strategy, "fold": str(self.fold)}
        write_json(self.output_folder / "summary.json", json_plain(summary))
        return summary["mean"]

    def export_prediction(self, probabilities: np.ndarray, properties: dict) -> np.ndarray:
        """Probabilities at the target spacing -> label map on the case's original grid."""
        geometry = ImageGeometry.from_json(properties["original_geometry"])
        return probabilities_to_labels(probabilities, list(self.plans.labels.values()), properties["crop_bbox"],
                                       properties["shape_after_crop"], list(geometry.shape))
