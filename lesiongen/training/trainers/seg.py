"""``seg``: the downstream nnU-Net-style segmentation fold that measures whether synthetic lesions help.

Network: dynamic-network-architectures' PlainConvUNet with the planned topology and deep supervision; with
``configuration="2d"`` (``-c 2d``, anisotropic data) the plans' 2D stage: a 2D UNet trained on single slices and
applied slice by slice. Loss: soft Dice (batch Dice, background excluded) + cross-entropy at every resolution with
nnU-Net's weights; with ``loss="weighted"`` (``--loss weighted``) generalised Dice + class-balanced cross-entropy
for lesions that fill a tiny fraction of the scan; with ``--set balanced_ce_until=F`` dice_ce's cross-entropy starts
class-balanced and becomes plain at F of the steps (short schedules). SGD with
Nesterov momentum 0.99, lr 1e-2, poly decay, gradient clipping at 12. Batches: foreground oversampling and
batchgenerators augmentation (spatial, noise, blur, brightness, contrast, gamma, mirroring), in ``num_workers``
background processes. With ``--synthetic STRATEGY`` a share ``R / (1 + R)`` of the samples (``R`` = the synthetic
ratio) comes from synthetic cases made from the healthy scans by that strategy's models of the same fold; with
``--set synthetic_fade_start=F`` (< 1) that share holds for the first F of the steps and then falls linearly
towards 0 at the last step (the synthetic cases early, the real ones last).

After training, every validation case is predicted by sliding window (Gaussian weighting, mirroring), exported at
its original geometry to ``fold_X/validation/`` and scored against the raw label in ``fold_X/summary.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lesiongen.evaluation.compare import found_no_lesion, no_lesion_remedy, per_case_metrics
from lesiongen.evaluation.segmentation_metrics import aggregate, case_metrics
from lesiongen.inference.segment import probabilities_to_labels
from lesiongen.inference.strategies import SegVariant, strategy as get_strategy
from lesiongen.inference.synthesis import default_batch_scans
from lesiongen.io.dataset import load_dataset
from lesiongen.io.images import ImageGeometry, read_image, write_image
from lesiongen.models.segmenter import Segmenter, SegmenterConfig
from lesiongen.planning.plans import SEG_3D, StagePlan, segmentation_stage_name
from lesiongen.preprocessing.splits import case_subset
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import Trainer, plans_sha256
from lesiongen.training.losses import (
    LossTerm,
    balanced_cross_entropy,
    blended_cross_entropy,
    deep_supervision_loss,
    generalized_dice_loss,
    softmax_dice_loss,
)
from lesiongen.training.seg_data import SegCase, SegPatchLoader, SyntheticShare, augmentation, batch_stream
from lesiongen.training.synthetic import (MAX_EMPTY_FRACTION, make_synthetic_cases, strategy_checkpoints,
                                         synthetic_case_count)
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import json_plain, read_json, write_json
from lesiongen.utilities.parallel import usable_cores
from lesiongen.utilities.progress_log import ProgressLog
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger("lesiongen.training")


class SegTrainer(Trainer):
    name = "seg"
    model_class = Segmenter
    model: Segmenter
    learning_rate = 1e-2
    weight_decay = 3e-5
    grad_clip = 12.0
    synthetic_ratio = 1.0  # synthetic cases per real training case (when a strategy is chosen)
    # fraction of the steps after which the synthetic share of samples fades linearly to 0 at the end; 1: no fade.
    # 0.5 since 2026-12-05: on the 4-case demo it raised every strategy's Dice (README, "the fade")
    synthetic_fade_start = 0.5
    settings_before_recorded = {"synthetic_fade_start": 1.0}  # seg models trained before the fade had none
    num_workers = -1  # background augmentation processes; -1: nnU-Net's rule from the CPU count and device
    mirror_validation = True  # mirroring test-time augmentation when predicting the validation cases
    max_empty_synthetic_fraction = MAX_EMPTY_FRACTION  # more lesion-free synthetic cases than this is an error
    # synthetic cases made at once, their lesions sharing the inpainter's batches; -1: default_batch_scans(device)
    synthetic_batch_scans = -1
    validate = True  # predict and score the validation cases after training (fold all: its own training cases)
    loss = "dice_ce"  # dice_ce (nnU-Net's) or weighted (generalised Dice + balanced cross-entropy); see SEG_LOSSES
    # dice_ce only: over this fraction of the steps the cross-entropy moves linearly from class-balanced (step 0) to
    # plain, so that a short schedule leaves the all-background start sooner; 0: plain throughout (nnU-Net's)
    balanced_ce_until = 0.0
    # train on this seeded share of the fold's training cases (real-only; lesiongen_benefit --data_check): one point
    # of a learning curve. The validation cases stay the fold's.
    real_case_fraction = 1.0

    def __init__(self, dataset, *args, strategy: str = "none", configuration: str = SEG_3D, **kwargs):
        self.strategy = get_strategy(strategy).name
        # a known configuration that these plans have, before any work (the base writes the splits)
        segmentation_stage_name(configuration, dataset.plans)
        self.configuration = configuration
        super().__init__(dataset, *args, **kwargs)
        self.fold_train_cases = list(self.train_cases)  # before a real_case_fraction takes its share

    @property
    def variant(self) -> SegVariant:
        return SegVariant.of(self.strategy, self.synthetic_ratio, self.options.seed, self.configuration)

    @property
    def folder_name(self) -> str:
        """``seg_STRATEGY``, with ``_rRATIO`` for another synthetic ratio, ``_sSEED`` for another seed and ``_2d``
        for the 2d configuration, so runs that differ in any keep their own models."""
        return self.variant.name

    @property
    def stage_plan(self) -> StagePlan:
        return self.plans.stages[segmentation_stage_name(self.configuration, self.plans)]

    def model_config(self) -> SegmenterConfig:
        return SegmenterConfig(configuration=self.configuration)

    def settings(self) -> dict:
        settings = {**super().settings(), "loss": self.loss}
        if self.strategy == "none":  # nothing to fade: a real-only model does not depend on it
            del settings["synthetic_fade_start"]
        return settings

    def apply_settings(self, values: dict) -> None:
        if self.strategy == "none" and "synthetic_fade_start" in values:
            raise LesiongenError("--set synthetic_fade_start: a seg run with --synthetic none has no synthetic cases "
                                 "to fade out")
        super().apply_settings(values)
        if self.loss not in SEG_LOSSES:
            raise LesiongenError(f"--loss {self.loss}: unknown segmentation loss; choose one of "
                                 f"{', '.join(SEG_LOSSES)}")
        if not 0.0 <= self.balanced_ce_until <= 1.0:
            raise LesiongenError(f"--set balanced_ce_until={self.balanced_ce_until}: a fraction of the steps, from 0 "
                                 f"to 1 (0: plain cross-entropy throughout)")
        if self.balanced_ce_until > 0 and self.loss != "dice_ce":
            raise LesiongenError(f"--set balanced_ce_until: only with the dice_ce loss; {self.loss} has its own "
                                 f"cross-entropy")
        if not 0.0 <= self.synthetic_fade_start <= 1.0:
            raise LesiongenError(f"--set synthetic_fade_start={self.synthetic_fade_start}: a fraction of the steps, "
                                 f"from 0 to 1 (1: no fade)")
        if not 0.0 < self.real_case_fraction <= 1.0:
            raise LesiongenError(f"--set real_case_fraction={self.real_case_fraction}: a share of the training "
                                 f"cases, above 0 and at most 1")
        if self.real_case_fraction < 1.0 and self.strategy != "none":
            # the strategy's generators learnt from every training case, so the seg model would not be limited
            raise LesiongenError("--set real_case_fraction: only with --synthetic none; the synthetic cases' "
                                 "models learnt from all of the fold's training cases")
        self.train_cases = case_subset(self.fold_train_cases, self.real_case_fraction, self.options.seed)

    # ---------------------------------------------------------------------------------------------- set-up
    def configure_optimizer(self, parameters):
        return torch.optim.SGD(parameters, lr=self.learning_rate, weight_decay=self.weight_decay, momentum=0.99,
                               nesterov=True)

    @property
    def workers(self) -> int:
        if self.num_workers >= 0:
            return int(self.num_workers)
        if self.device.type == "cpu":
            return 0  # the CPU is busy with the network itself
        return max(1, min(12, usable_cores() - 1) // self.distributed.world_size)

    def models_to_use(self) -> dict[str, Path]:
        return {} if self.strategy == "none" else strategy_checkpoints(self.dataset, self.fold, self.strategy)

    def _synthetic_cases(self, n_real: int) -> list[SegCase]:
        n_synthetic = synthetic_case_count(self.synthetic_ratio, n_real)

        def make():
            return make_synthetic_cases(self.dataset, self.fold, self.strategy, n_synthetic, self.train_cases,
                                        plans_sha256(self.plans), str(self.device), self.options.seed,
                                        self.max_empty_synthetic_fraction,
                                        int(self.synthetic_batch_scans) if self.synthetic_batch_scans > 0 else
                                        default_batch_scans(self.device.type))

        made = make() if self.distributed.is_main else None
        self.distributed.barrier()  # the other ranks read the cases rank 0 made
        made = made or make()
        self.models_used.update(made.models_used)
        self.extra.update(synthetic_empty_cases=made.empty, synthetic_lesions=made.lesions,
                          synthetic_sphere_fallbacks=made.sphere_fallbacks)
        return made.cases

    def load_training_data(self) -> None:
        folder = self.dataset.data_folder / "training"
        real = [SegCase(c, folder / c) for c in self.train_cases]
        synthetic = self._synthetic_cases(len(real)) if self.strategy != "none" else []
        for case in real + synthetic:  # here, not in an augmentation worker, a corrupt file ends in one line
            case.verify()
        share = SyntheticShare(self.synthetic_ratio / (1 + self.synthetic_ratio) if synthetic else 0.0,
                               self.total_steps, self.synthetic_fade_start)
        self.extra.update({"strategy": self.strategy, "synthetic_cases": len(synthetic),
                           "synthetic_share_of_samples": share.share, "synthetic_fade_start": share.fade_start,
                           "synthetic_share_over_the_run": share.mean})
        loader = SegPatchLoader(real, synthetic, self.stage_plan.patch_size, self.batch_size, share,
                                derive_seed(self.options.seed, "augmentation", self.distributed.rank),
                                first_batch=self.step, n_workers=self.workers, slice_axis=self.stage_plan.slice_axis)
        self.batches = batch_stream(loader, augmentation(self.stage_plan.patch_size, self.plans.anisotropic),
                                    self.workers)
        logger.info("%d real + %d synthetic (%s) training cases, %s configuration, %s loss, %d augmentation "
                    "worker(s)", len(real), len(synthetic), self.strategy, self.configuration, self.loss,
                    self.workers)

    # ------------------------------------------------------------------------------------------ training
    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        batch = next(self.batches)
        data = self.to_device(batch["data"].astype(np.float32))
        target = self.to_device(batch["seg"].round().astype(np.int64))  # (b, 1, ...) labels
        return deep_supervision_loss(self.trained["unet"](data), target, self.loss_terms())

    def loss_terms(self) -> dict[str, LossTerm]:
        """The loss at this step: ``loss``'s terms; dice_ce's cross-entropy blended from class-balanced towards
        plain over the first ``balanced_ce_until`` of the steps (above 0 with dice_ce only: apply_settings)."""
        share = balanced_ce_share(self.step, self.total_steps, self.balanced_ce_until)
        if share == 0:
            return SEG_LOSSES[self.loss]
        return {**SEG_LOSS_TERMS, "ce": lambda logits, labels: blended_cross_entropy(logits, labels[:, 0], share)}

    # ---------------------------------------------------------------------------------------- validation
    def finish_training(self, model: Segmenter) -> None:
        self.batches.close()
        if self.distributed.is_main and self.validate:
            self.extra["validation"] = json_plain(self.validate_cases(model))

    def validate_cases(self, model: Segmenter) -> dict:
        """Predict the validation cases, export them at their original geometry and score them."""
        folder = self.output_folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        raw = load_dataset(self.dataset.name)  # the raw labels are the reference, as in nnU-Net
        cases = {c.case_id: c for c in raw.split("training")}
        ending = raw.info.file_ending
        per_case = {}
        progress = ProgressLog(logger, f"validation of fold {self.fold} (sliding window"
                                       f"{', mirrored' if self.mirror_validation else ''})",
                               len(self.val_cases), "cases")
        for case_id in self.val_cases:
            stem = self.dataset.data_folder / "training" / case_id
            properties = read_json(f"{stem}.json")
            probabilities = model.predict_probabilities(load_array(f"{stem}.b2nd"), mirror=self.mirror_validation)
            geometry = ImageGeometry.from_json(properties["original_geometry"])
            prediction = probabilities_to_labels(probabilities, model.label_values, properties["crop_bbox"],
                                                 properties["shape_after_crop"], list(geometry.shape))
            write_image(folder / f"{case_id}{ending}", prediction, geometry, raw.info.reader)
            reference, _ = read_image(cases[case_id].label, raw.info.reader)
            per_case[case_id] = case_metrics(reference.astype(np.uint8), prediction, geometry.spacing_zyx,
                                             self.plans.lesion_labels)
            progress.advance()
        summary = {"per_case": per_case, "mean": aggregate(per_case), "labels": self.plans.lesion_labels,
                   "strategy": self.strategy, "fold": str(self.fold), "provenance": json_plain(self.provenance())}
        summary["found_no_lesion"] = found_no_lesion(per_case_metrics(summary).values())
        if summary["found_no_lesion"]:
            logger.warning("%s fold %s found no lesion in any validation case (Dice and lesion recall 0): the "
                           "training did not start. %s", self.folder_name, self.fold,
                           no_lesion_remedy("--steps", "--set"))
        write_json(self.output_folder / "summary.json", json_plain(summary))
        return summary["mean"]


def balanced_ce_share(step: int, total_steps: int, until: float) -> float:
    """The class-balanced share of dice_ce's cross-entropy at ``step``: 1 at step 0, falling linearly to 0 at
    ``until`` x ``total_steps`` and 0 after; 0 throughout when ``until`` is 0."""
    if until <= 0:
        return 0.0
    return max(0.0, 1.0 - step / (until * total_steps))


SEG_LOSS_TERMS = {
    "ce": lambda logits, labels: F.cross_entropy(logits, labels[:, 0]),
    "dice": lambda logits, labels: softmax_dice_loss(logits, labels[:, 0]),
}
WEIGHTED_SEG_LOSS_TERMS = {
    "balanced_ce": lambda logits, labels: balanced_cross_entropy(logits, labels[:, 0]),
    "generalized_dice": lambda logits, labels: generalized_dice_loss(logits, labels[:, 0]),
}
SEG_LOSSES = {"dice_ce": SEG_LOSS_TERMS, "weighted": WEIGHTED_SEG_LOSS_TERMS}
