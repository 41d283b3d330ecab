"""``diffmask``: trains the sphere-conditioned 3D diffusion model of lesion masks (DiffMask, done in 3D).

The denoiser (MONAI ``DiffusionModelUNet``, 3D in every axis) sees the noisy mask (one channel per lesion class,
in [-1, 1]) with the sphere control (the union of each real lesion's minimum enclosing sphere) and, when the
dataset has them, the tissue map. Training uses diffusers' DDPM scheduler with the network predicting the clean
mask (see :class:`lesiongen.models.mask_generators.DiffMaskConfig`). The loss adds a lesion-weighted term (default
weight 10, as the MS study used) so the few lesion voxels are not drowned by background. After training, the
binarisation threshold is calibrated on training patches so generated lesion counts and sizes match the real ones,
for the model's own sampler and for each sampling preset (default DPM-Solver++; few-step: of the 4-step samplers in
``FEW_STEP_VARIANTS``, the one whose masks come closest to the real lesions of other training patches). With
``--set distill_steps=N`` a 4-step student network is distilled from the 20-step sampler first
(:mod:`lesiongen.training.distillation`) and is one more candidate for the few-step preset.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch.optim.swa_utils import AveragedModel

from lesiongen.diffusion.presets import DISTILLED_VARIANT, FEW_STEP_VARIANTS
from lesiongen.diffusion.schedules import (ScheduleConfig, distillation_schedules, few_step_sampling,
                                           samples_trained_timesteps, sampling_evaluations, sampling_preset,
                                           sampling_scheduler, short_schedule, training_target)
from lesiongen.evaluation.mask_metrics import MaskStatistics, mask_statistics
from lesiongen.models.conditioning import drop_small_components
from lesiongen.models.mask_generators import DiffMaskConfig, DiffMaskGenerator
from lesiongen.planning.plans import DEFAULT_SAMPLING, DISTILLED_SAMPLING, FEW_STEP_SAMPLING, SAMPLING_PRESETS
from lesiongen.training.data import draw_batch, mirrored
from lesiongen.training.diffusion import DiffusionTraining
from lesiongen.training.distillation import DistillationSettings, build_teacher_bank, distill_student
from lesiongen.training.few_step_choice import choose_few_step_variant
from lesiongen.training.trainers.masks import MaskTrainer
from lesiongen.utilities.components import component_sizes, label_components
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.progress_log import ProgressLog
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger("lesiongen.training")

THRESHOLDS = np.round(np.linspace(-0.8, 0.8, 17), 3)  # candidate cut-offs on the denoised mask in [-1, 1]
CALIBRATION_PATCHES = 32
# training patches, besides those the thresholds are fitted on, below which the few-step sampler is chosen on the
# fitted ones (where every sampler matches the real lesion count by construction)
MIN_CHOICE_PATCHES = 8


class DiffMaskTrainer(DiffusionTraining, MaskTrainer):
    name = "diffmask"
    model_class = DiffMaskGenerator
    model: DiffMaskGenerator
    learning_rate = 1e-4
    lesion_loss_weight = 10.0
    sampling_steps = 20  # network evaluations per mask of the model's default sampler (DPM-Solver++)
    # the model's own sampler is the few-step preset instead (4 steps; which sampler is chosen after training)
    few_step_sampling = False
    # train only at the few-step sampler's timesteps (a short schedule, fastWDM3D-style); implies few_step_sampling,
    # and the model can then be sampled only with it
    few_step_training = False
    # training patches the threshold is calibrated on, per sampler (own and each preset); fewer is faster and noisier
    calibration_patches = CALIBRATION_PATCHES
    # noise draws per training patch when the few-step sampler is chosen, pooled: more smooth the scores (a patch's
    # lesion count is whole) at that multiple of the choice's cost; 4 did not change the 2 mm demo's choice
    choice_draws = 1
    # after training, distil the 20-step sampler into a 4-step student network for this many steps (0: no student)
    distill_steps = 0
    # teacher trajectories (20 evaluations each, sampled once) the student learns from
    distill_trajectories = 256
    # share of each distillation batch that is real training patches noised to the student's timesteps (target:
    # their real mask) instead of teacher trajectories
    distill_real_fraction = 0.0

    def model_config(self) -> DiffMaskConfig:
        config = DiffMaskConfig(priors=self.priors, lesions_on_controls_only=True)
        config.schedule = dataclasses.replace(config.schedule, num_inference_steps=int(self.sampling_steps))
        if self.few_step_sampling or self.few_step_training:
            config.schedule = few_step_sampling(config.schedule)
        if self.few_step_training:
            config.schedule = short_schedule(config.schedule, sampling_scheduler(config.schedule).timesteps)
        return config

    def apply_settings(self, values: dict) -> None:
        super().apply_settings(values)
        for name in ("calibration_patches", "choice_draws"):
            if getattr(self, name) < 1:
                raise LesiongenError(f"--set {name}={getattr(self, name)}: expected at least 1")
        if self.distill_steps < 0 or self.distill_trajectories < 1:
            raise LesiongenError(f"--set distill_steps={self.distill_steps} distill_trajectories="
                                 f"{self.distill_trajectories}: expected steps >= 0 and at least 1 trajectory")
        if not 0.0 <= self.distill_real_fraction <= 1.0:
            raise LesiongenError(f"--set distill_real_fraction={self.distill_real_fraction}: expected a share in "
                                 "[0, 1]")
        if self.distill_steps and (self.few_step_sampling or self.few_step_training):
            raise LesiongenError("--set distill_steps: the student learns the default 20-step sampler; it cannot be "
                                 "combined with a few-step own sampler (few_step_sampling / few_step_training, or "
                                 "plans whose diffusion stages sample few_step)")

    def load_training_data(self) -> None:
        super().load_training_data()
        self.controls = self.sphere_controls(self.data.masks)

    def mirrored_patches(self, rng: np.random.Generator, count: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``count`` random training patches, mirrored as in training: (masks, sphere controls, tissue maps or
        None)."""
        index, flips = draw_batch(rng, len(self.data), count)
        tissue = mirrored(self.data.tissue[index], flips) if self.data.tissue is not None else None
        return mirrored(self.data.masks[index], flips), mirrored(self.controls[index], flips), tissue

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        masks, controls, tissue = self.mirrored_patches(self.data_rng, self.batch_size)
        clean = self.to_device(self.model.encode_masks(masks))
        condition = self.to_device(self.model.condition(controls, tissue))
        # where the lesion's shape is decided: the lesion itself and the sphere around it
        region = self.to_device(((masks > 0) | (controls > 0))[:, None].astype(np.float32))
        noisy, noise, timesteps = self.add_training_noise(clean)
        predicted = self.trained["denoiser"](self.model.network_input(noisy, condition), timesteps)
        error = (predicted.float() - training_target(self.scheduler, clean, noise, timesteps)) ** 2
        return lesion_weighted_loss(error, region, self.lesion_loss_weight)

    # --------------------------------------------------------------------------------------- calibration
    def finish_training(self, model: DiffMaskGenerator) -> None:
        """The threshold whose masks best match the real lesion count and sizes on training patches: for the
        model's own sampler and for each sampling preset (so ``--sampling`` can switch the model to it). The
        few-step preset is the 4-step sampler of :data:`FEW_STEP_VARIANTS` whose masks, at their thresholds, come
        closest to the real ones (:func:`choose_few_step_variant`) on other training patches than the thresholds
        were fitted on (the same ones when there are too few). A distilled student (``distill_steps``) is trained
        first and is the preferred few-step candidate: kept unless another is clearly closer."""
        if self.distill_steps > 0:
            self.distill(model)
        fit, check = self.calibration_patch_sets()
        own = model.config.schedule
        details = {"own": self.calibrate(model, own, fit)}

        def calibrated(schedule: ScheduleConfig, sampler: DiffMaskGenerator = model) -> dict:
            return details["own"] if schedule == own and sampler is model else self.calibrate(sampler, schedule, fit)

        default = sampling_preset(own, DEFAULT_SAMPLING)
        if samples_trained_timesteps(default):
            details[DEFAULT_SAMPLING] = calibrated(default)
        # name -> (the model running the right network, its 4-step sampler)
        variants = {name: (model, few_step_sampling(own, variant=name)) for name in FEW_STEP_VARIANTS}
        variants = {name: v for name, v in variants.items() if samples_trained_timesteps(v[1])}
        if model.config.student_schedule is not None:
            variants[DISTILLED_VARIANT] = (model.running(model.STUDENT), model.config.student_schedule)
        candidates = {name: calibrated(schedule, sampler) for name, (sampler, schedule) in variants.items()}
        choice: dict = {"few_step_variant": next(iter(variants))}
        if len(variants) > 1 and DEFAULT_SAMPLING in details:  # a short-schedule model runs only its own sampler
            real = mask_statistics(self.data.masks[check], model.spacing, self.data.tissue_at(check))
            reference = self.choice_statistics(model, default, details[DEFAULT_SAMPLING]["threshold"], check)
            generated = {name: self.choice_statistics(sampler, schedule, candidates[name]["threshold"], check)
                         for name, (sampler, schedule) in variants.items()}
            result = choose_few_step_variant(
                generated, reference, real, draws=self.choice_draws,
                preferred=DISTILLED_VARIANT if DISTILLED_VARIANT in variants else None,
                seed=derive_seed(self.options.seed, "few-step choice bootstrap"))
            choice = {"few_step_variant": result.chosen, "choice_patches": len(check),
                      "choice_draws": self.choice_draws,
                      "choice_on_fit_patches": bool(np.array_equal(np.sort(check), np.sort(fit))),
                      "default_distances": result.reference_distances, "preferred": result.preferred,
                      "few_step_variants": {name: {"threshold": candidates[name]["threshold"],
                                                   "distances": result.distances[name],
                                                   "worst_excess": result.worst_excess[name],
                                                   **({"beats_preferred": result.beats_preferred[name]}
                                                      if name in result.beats_preferred else {})}
                                            for name in variants}}
            logger.info("few-step sampler: %s (on %d training patches%s; %s)", result.chosen, len(check),
                        f" × {self.choice_draws} noise draws" if self.choice_draws > 1 else "", result.describe())
        chosen = choice["few_step_variant"]
        details[FEW_STEP_SAMPLING] = candidates[chosen]
        if own == few_step_sampling(own):  # the model's own sampler is the few-step preset: it follows the choice
            model.config.schedule = variants[chosen][1]
            details["own"] = candidates[chosen]
        model.config.few_step_variant = chosen
        model.config.threshold = details["own"]["threshold"]
        model.config.preset_thresholds = {name: details[name]["threshold"] for name in SAMPLING_PRESETS
                                          if name in details}
        if DISTILLED_VARIANT in candidates:
            details[DISTILLED_SAMPLING] = candidates[DISTILLED_VARIANT]
            model.config.preset_thresholds[DISTILLED_SAMPLING] = details[DISTILLED_SAMPLING]["threshold"]
        real_count, real_volume = count_and_volume(self.data.masks[fit])
        logger.info("calibrated threshold %.2f (real: mean lesions %.2f, mean voxels %.1f per patch); presets %s",
                    model.config.threshold, real_count, real_volume, model.config.preset_thresholds)
        self.extra["calibration"] = {
            **details["own"], "patches": len(fit), "real_mean_lesions": real_count, "real_mean_voxels": real_volume,
            "presets": {name: details[name] for name in model.config.preset_thresholds}, **choice}

    def distill(self, model: DiffMaskGenerator) -> None:
        """Distil the model's 20-step sampler into a 4-step student network (:mod:`lesiongen.training.distillation`):
        a bank of teacher trajectories from training patches' sphere controls (mirrored as in training), then
        ``distill_steps`` student steps. The student becomes the model's ``student`` network (saved with it) and its
        sampler the model's ``student_schedule``."""
        teacher, student_schedule = distillation_schedules(model.config.schedule)
        rng = np.random.default_rng(derive_seed(self.options.seed, "distillation"))
        _, controls, tissue = self.mirrored_patches(rng, self.distill_trajectories)
        logger.info("distillation: sampling %d teacher trajectories (%s, %d network evaluations each)", len(controls),
                    teacher.sampler, sampling_evaluations(teacher))
        start = time.perf_counter()
        bank = build_teacher_bank(
            lambda c, t: model.trajectories(c, t, seed=derive_seed(self.options.seed, "distillation noise"),
                                            schedule=teacher, timesteps=student_schedule.trained_timesteps,
                                            progress=ProgressLog(logger, "distillation teacher sampling",
                                                                 unit="batched network evaluations").update),
            controls, tissue, student_schedule)
        bank_seconds = round(time.perf_counter() - start, 1)
        settings = DistillationSettings(steps=self.distill_steps, batch_size=self.batch_size,
                                        learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                                        grad_clip=self.grad_clip,
                                        seed=derive_seed(self.options.seed, "distillation batches"),
                                        real_fraction=self.distill_real_fraction)
        student, record = distill_student(
            model.networks["denoiser"], bank,
            lambda states, c, t: model.network_input(states, self.to_device(model.condition(c, t))),
            lambda error, region: lesion_weighted_loss(error, region, self.lesion_loss_weight), settings,
            self.device, self.amp, real_batch=lambda rng, timesteps: self.noised_real_patches(model, rng, timesteps))
        model.config.student_schedule = student_schedule
        model.networks[model.STUDENT] = student
        self.networks[model.STUDENT] = student  # saved with the model: raw weights and (unaveraged) EMA copy
        self.ema[model.STUDENT] = AveragedModel(student, use_buffers=True)
        self.extra["distillation"] = {**record, "teacher": {"sampler": teacher.sampler,
                                                            "steps": teacher.num_inference_steps,
                                                            "timestep_spacing": teacher.timestep_spacing},
                                      "teacher_seconds": bank_seconds}

    def noised_real_patches(self, model: DiffMaskGenerator, rng: np.random.Generator, timesteps: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Random training patches (mirrored as in training) noised to ``timesteps`` by the training schedule:
        (noisy masks, clean masks, sphere controls, tissue maps or None), the real part of a distillation batch."""
        masks, controls, tissue = self.mirrored_patches(rng, len(timesteps))
        clean = model.encode_masks(masks)
        noise = rng.standard_normal(clean.shape, dtype=np.float32)
        noisy = self.scheduler.add_noise(torch.from_numpy(clean), torch.from_numpy(noise),
                                         torch.from_numpy(np.asarray(timesteps, dtype=np.int64)))
        return noisy.numpy(), clean, controls, tissue

    def calibration_patch_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training patches the thresholds are fitted on (up to ``calibration_patches``) and of those
        the few-step sampler is chosen on: as many others, drawn from the rest, when at least
        :data:`MIN_CHOICE_PATCHES` are left; else the same ones."""
        rng = np.random.default_rng(derive_seed(self.options.seed, "calibration"))
        fit = rng.choice(len(self.data), size=min(self.calibration_patches, len(self.data)), replace=False)
        rest = np.setdiff1d(np.arange(len(self.data)), fit)
        if len(rest) < MIN_CHOICE_PATCHES:
            return fit, fit
        return fit, rng.choice(rest, size=min(len(fit), len(rest)), replace=False)

    def calibrate(self, model: DiffMaskGenerator, schedule: ScheduleConfig, index: np.ndarray) -> dict:
        """Threshold calibration for one sampler on the training patches ``index``: the best threshold, the
        evaluations per mask and every candidate's score. Components off every sphere count here although sampling
        drops them: a threshold at which the network grows them pays for them, since near a sphere they can join its
        lesion, which sampling keeps (judged without them, the 2 mm demo's diffmask chose a lower threshold and far
        worse masks; documentation/training.md)."""
        denoised, evaluations = self.denoise_patches(model, schedule, index, "calibration")
        best, scores = calibrate_threshold(denoised, self.data.masks[index], self.data.brain[index], model.binarise,
                                           model.minimum_voxels(),
                                           progress=ProgressLog(logger, "calibration threshold search",
                                                                unit="thresholds").update)
        return {"threshold": best, "evaluations_per_mask": evaluations, "sampler": schedule.sampler,
                "steps": schedule.num_inference_steps, "timestep_spacing": schedule.timestep_spacing,
                "scores": scores}

    def choice_statistics(self, model: DiffMaskGenerator, schedule: ScheduleConfig, threshold: float,
                          index: np.ndarray) -> MaskStatistics:
        """The lesion statistics of the masks one sampler makes at ``threshold`` for the training patches ``index``,
        ``choice_draws`` noise draws each, in a row per patch."""
        drawn = np.repeat(index, self.choice_draws)
        denoised, _ = self.denoise_patches(model, schedule, drawn, "few-step choice")
        masks = calibrated_masks(denoised, threshold, self.data.brain[drawn], model.binarise, model.minimum_voxels())
        return mask_statistics(masks, model.spacing, self.data.tissue_at(drawn))

    def denoise_patches(self, model: DiffMaskGenerator, schedule: ScheduleConfig, index: np.ndarray,
                        purpose: str) -> tuple[np.ndarray, int]:
        """Denoised masks for the training patches ``index`` (a patch repeated is drawn again) from their sphere
        controls (noise seeded by ``purpose``), and the network evaluations per mask."""
        patches = len(np.unique(index))
        logger.info("%s: sampling %d training patches%s (%s, %d network evaluations each)", purpose, patches,
                    f", {len(index)} masks" if len(index) > patches else "", schedule.sampler,
                    sampling_evaluations(schedule))
        return model.denoise(self.controls[index], self.data.tissue_at(index),
                             seed=derive_seed(self.options.seed, purpose), schedule=schedule,
                             progress=ProgressLog(logger, f"{purpose} sampling",
                                                  unit="batched network evaluations").update)


def lesion_weighted_loss(error: torch.Tensor, region: torch.Tensor, lesion_weight: float
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error everywhere + ``lesion_weight`` x mean squared error inside ``region`` (b, 1, ...)."""
    mean_loss = error.mean()
    lesion_loss = (error * region).sum() / (region.sum() * error.shape[1]).clamp(min=1.0)
    loss = mean_loss + lesion_weight * lesion_loss
    return loss, {"mse": float(mean_loss.detach()), "lesion": float(lesion_loss.detach())}


def calibrate_threshold(denoised: np.ndarray, real: np.ndarray, brain: np.ndarray,
                        binarise: Callable[[np.ndarray, float], np.ndarray], minimum_voxels: dict[int, int],
                        candidates: np.ndarray = THRESHOLDS, progress: Callable[[int, int], None] | None = None
                        ) -> tuple[float, dict[float, float]]:
    """The candidate threshold whose binarised masks (cut to ``brain``, small components dropped) come closest to
    the real masks' lesions: their mean count per patch and the distribution of their sizes; and every candidate's
    score. ``progress(done, total)`` is called after each candidate.

    A score adds the absolute log ratio of the counts and :func:`size_distance` (so twice too many and half as many
    weigh the same, and a threshold that gets the mean size right with too few small lesions still pays); the lower
    threshold wins a tie.
    """
    real_sizes = stack_component_sizes(real)
    real_count = len(real_sizes) / max(len(real), 1)
    scores = {}
    for threshold in candidates:
        masks = calibrated_masks(denoised, float(threshold), brain, binarise, minimum_voxels)
        sizes = stack_component_sizes(masks)
        count = len(sizes) / max(len(masks), 1)  # mean lesions per patch, as count_and_volume gives
        scores[float(threshold)] = float(size_distance(sizes, real_sizes) +
                                         abs(np.log((count + 1e-3) / (real_count + 1e-3))))
        if progress is not None:
            progress(len(scores), len(candidates))
    return min(scores, key=scores.get), scores


def calibrated_masks(denoised: np.ndarray, threshold: float, brain: np.ndarray,
                     binarise: Callable[[np.ndarray, float], np.ndarray], minimum_voxels: dict[int, int]
                     ) -> np.ndarray:
    """The masks (n, z, y, x) at ``threshold`` as calibration judges them: binarised, cut to ``brain``, small
    components dropped (components off the spheres kept, see :meth:`DiffMaskTrainer.calibrate`)."""
    masks = binarise(denoised, threshold)
    masks[~brain] = 0
    return np.stack([drop_small_components(m, minimum_voxels) for m in masks])


def stack_component_sizes(masks: np.ndarray) -> np.ndarray:
    """Voxels of every lesion (connected component) in the masks (n, z, y, x)."""
    sizes = [component_sizes(m > 0) for m in masks]
    return np.concatenate(sizes) if sizes else np.zeros(0, int)


def size_distance(sizes: np.ndarray, real_sizes: np.ndarray) -> float:
    """Wasserstein distance between the log lesion sizes (voxels) and the real ones'; without a lesion, the distance
    of single voxels to the real sizes (so "nothing" is never closer than the smallest lesions)."""
    if len(real_sizes) == 0:
        return 0.0
    sizes = sizes if len(sizes) else np.ones(1)
    return float(wasserstein_distance(np.log(sizes), np.log(real_sizes)))


def count_and_volume(masks: np.ndarray) -> tuple[float, float]:
    """Mean lesion (component) count and mean lesion voxels per patch."""
    counts = [label_components(m > 0)[1] for m in masks]
    return float(np.mean(counts)), float((masks > 0).sum() / max(len(masks), 1))
