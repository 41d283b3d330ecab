"""The lesion-mask generators, one interface: ``sample_masks(n, conditioning, seed) -> masks``.

Masks are lesion-centred patches of the plans' lesion patch size at the target spacing, (n, z, y, x) uint8 label
maps. Every generator starts from spheres drawn from its fold's sphere priors (or given ones) and turns them into
lesion shapes:

* ``spheremask`` renders them as filled ellipsoids (the baseline every learned generator must beat);
* ``unetmask`` (seed 000's tissue-conditioned 3D UNet) draws a lesion into a lesion-free image patch, guided by a
  sphere cue; deterministic given image and spheres, so the seed varies the spheres;
* ``diffmask`` (DiffMask in 3D) denoises a mask conditioned on the union of the spheres (and the tissue map) with
  DPM-Solver++ (20 steps) or the few-step preset (4; with a model trained with distillation, possibly its 4-step
  student network), then binarises it at a threshold calibrated after training for that sampler;
* ``ganmask`` (a pix2pix-style conditional GAN in 3D) maps smooth noise fields, the union of the spheres and the
  tissue map to lesion probabilities in one network evaluation, then binarises them at a calibrated threshold;
  the noise makes repeated draws for the same spheres differ.

Components smaller than the class's smallest real lesion are dropped and masks are cut to the brain.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesiongen.diffusion.presets import (DEFAULT_FEW_STEP_VARIANT, DISTILLED_VARIANT, FEW_STEP_CHOICES,
                                        check_few_step_variant)
from lesiongen.diffusion.schedules import (ScheduleConfig, batch_part, draw_noise, sample, sampling_evaluations,
                                           sampling_preset, sampling_scheduler, seeded_generators)
from lesiongen.models.base import LesionModel
from lesiongen.models.conditioning import (MaskConditioning, drop_small_components, keep_components_on_controls,
                                          min_lesion_voxels)
from lesiongen.models.networks import build_network
from lesiongen.models.spheres import SphereLesion, render_ellipsoids, render_spheres, sample_sphere_lesions
from lesiongen.planning import channels
from lesiongen.planning.plans import (DISTILLED_SAMPLING, FEW_STEP_SAMPLING, MODEL_SAMPLING, SAMPLING_PRESETS,
                                      SpherePrior)
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger(__name__)


@dataclass
class MaskGeneratorConfig:
    priors: dict[str, SpherePrior]  # the fold's sphere priors, per lesion class (fitted on its training lesions)


@dataclass
class UNetMaskConfig(MaskGeneratorConfig):
    probability_threshold: float = 0.5


@dataclass
class GANMaskConfig(MaskGeneratorConfig):
    threshold: float = 0.5  # cut-off on the generator's probabilities, calibrated after training


@dataclass
class DiffMaskConfig(MaskGeneratorConfig):
    # the network predicts the clean mask: with noise prediction, short training left errors that the x0 estimate
    # amplifies by 1 / sqrt(alpha_bar) at high noise, and sampled masks filled their patches
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(prediction_type="sample"))
    threshold: float = 0.0  # cut-off on the denoised mask in [-1, 1], calibrated after training for its sampler
    # the threshold calibrated for each sampling preset (``default``, ``few_step``): what the denoised masks look like
    # depends on the sampler, so switching a model to a preset switches its threshold too
    preset_thresholds: dict[str, float] = field(default_factory=dict)
    # which 4-step sampler the few-step preset is for this model (one of FEW_STEP_CHOICES): chosen after training
    # as the one whose masks come closest to the real lesions of training patches (models from before: DDIM leading)
    few_step_variant: str = DEFAULT_FEW_STEP_VARIANT
    # the sampler of the distilled 4-step student network ("student"), for a model trained with distillation; None:
    # the model has no student
    student_schedule: ScheduleConfig | None = None
    # drop a sampled lesion component that touches none of the given spheres: at 1 mm the calibrated threshold sat
    # where the network's output rose along the patch border, and those blobs stood in for the small lesions it
    # missed (the threshold search still counts them, see DiffMaskTrainer.calibrate); models from before keep them
    lesions_on_controls_only: bool = False

    def __post_init__(self) -> None:
        check_few_step_variant(self.few_step_variant, FEW_STEP_CHOICES)
        if self.few_step_variant == DISTILLED_VARIANT and self.student_schedule is None:
            raise ValueError("few-step variant 'distilled' needs a student schedule")


class MaskGenerator(LesionModel):
    stage = "mask_generation"
    config_class = MaskGeneratorConfig
    config: MaskGeneratorConfig

    @property
    def priors(self) -> dict[str, SpherePrior]:
        return self.config.priors

    @property
    def lesion_labels(self) -> list[int]:
        return list(self.plans.lesion_labels)

    @property
    def max_tissue_label(self) -> int:
        return max(self.plans.tissue_labels.values(), default=1) or 1

    # --------------------------------------------------------------------------------------- encodings
    def encode_control(self, control: np.ndarray) -> np.ndarray:
        """Sphere label map -> one channel in [-1, 1]: -1 outside spheres, class k at -1 + 2k/K."""
        return (-1.0 + 2.0 * control.astype(np.float32) / len(self.lesion_labels))[:, None]

    def encode_tissue(self, tissue: np.ndarray | None, n: int) -> np.ndarray:
        """Tissue map -> one channel in [-1, 1] (zero channels when the plans have no tissue maps)."""
        if not self.plans.has_tissue_maps:
            return np.zeros((n, 0, *self.patch_size), dtype=np.float32)
        if tissue is None:
            logger.warning("%s was trained with tissue maps but none were given; using 'no tissue'", self.kind)
            tissue = np.zeros((n, *self.patch_size), dtype=np.uint8)
        return (-1.0 + 2.0 * tissue.astype(np.float32) / self.max_tissue_label)[:, None]

    def encode_masks(self, masks: np.ndarray) -> np.ndarray:
        """(n, z, y, x) labels -> (n, K, z, y, x): one channel per lesion class, 1 inside and 0 outside."""
        classes = np.asarray(self.lesion_labels).reshape(1, -1, 1, 1, 1)
        return (masks[:, None] == classes).astype(np.float32)

    # ------------------------------------------------------------------------------------------ sampling
    def draw_spheres(self, n: int, conditioning: MaskConditioning,
                     rng: np.random.Generator) -> list[list[SphereLesion]]:
        if conditioning.spheres is not None:
            return conditioning.spheres
        return [sample_sphere_lesions(self.priors, self.patch_size, self.spacing, rng,
                                      brain=conditioning.item("brain", i), tissue=conditioning.item("tissue", i))
                for i in range(n)]

    def render_controls(self, spheres: list[list[SphereLesion]]) -> np.ndarray:
        if not spheres:
            return np.zeros((0, *self.patch_size), dtype=np.uint8)
        return np.stack([render_spheres(s, self.patch_size, self.spacing) for s in spheres])

    def binarise(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """(n, K, z, y, x) per-class values -> labels: the strongest class channel above the threshold, else
        background."""
        best = values.argmax(axis=1)
        above = values.max(axis=1) > threshold
        labels = np.asarray(self.lesion_labels, dtype=np.uint8)[best]
        return np.where(above, labels, 0).astype(np.uint8)

    def minimum_voxels(self) -> dict[int, int]:
        return {int(k): min_lesion_voxels(p.min_lesion_volume_mm3, self.spacing) for k, p in self.priors.items()}

    def sample_masks(self, n: int, conditioning: MaskConditioning | None = None,
                     seed: int | Sequence[int] = 0) -> np.ndarray:
        """``n`` lesion masks (n, z, y, x) uint8 at the plans' lesion patch size; same seed, same masks.

        ``seed`` is one seed for the batch, or one per mask: each mask is then the one a call with that mask's
        conditioning alone and its seed gives (its spheres and noise are its own), so masks of independent lesions
        can share a batch."""
        conditioning = conditioning or MaskConditioning()
        conditioning.check(n, self.patch_size)
        if n == 0:
            return np.zeros((0, *self.patch_size), dtype=np.uint8)
        if isinstance(seed, (int, np.integer)):
            rng = np.random.default_rng(seed)
            spheres = self.draw_spheres(n, conditioning, rng)
            noise_seed: int | list[int] = int(rng.integers(2**31))
        else:
            if len(seed) != n:
                raise LesiongenError(f"sample_masks got {len(seed)} seeds for {n} masks")
            rngs = [np.random.default_rng(s) for s in seed]  # each draws, in order, what a call alone draws
            spheres = [self.draw_spheres(1, conditioning.select(i), rng)[0] for i, rng in enumerate(rngs)]
            noise_seed = [int(rng.integers(2**31)) for rng in rngs]
        masks = self.generate(spheres, conditioning, noise_seed)
        if conditioning.brain is not None:
            masks[~conditioning.brain.astype(bool)] = 0
        minimum = self.minimum_voxels()
        return np.stack([drop_small_components(m, minimum) for m in masks]).astype(np.uint8)

    def generate(self, spheres: list[list[SphereLesion]], conditioning: MaskConditioning,
                 noise_seed: int | list[int]) -> np.ndarray:
        """Label maps for the given spheres, the network's noise (where it has any) seeded by ``noise_seed``: one
        seed for the batch or one per mask; each generator's own method."""
        raise NotImplementedError


class SphereMaskGenerator(MaskGenerator):
    kind = "spheremask"

    def generate(self, spheres, conditioning, noise_seed) -> np.ndarray:
        self.last_evaluations = 0
        minimum = self.minimum_voxels()
        return np.stack([render_ellipsoids(s, self.patch_size, self.spacing, minimum) for s in spheres])


class UNetMaskGenerator(MaskGenerator):
    kind = "unetmask"
    config_class = UNetMaskConfig
    config: UNetMaskConfig

    def build_networks(self) -> dict[str, nn.Module]:
        return {"unet": build_network(self.stage_plan.networks["unet"])}

    @property
    def input_layout(self) -> channels.ChannelLayout:
        return channels.unetmask_input(self.plans.num_channels, self.plans.has_tissue_maps)

    def inputs(self, images: np.ndarray, tissue: np.ndarray | None, controls: np.ndarray) -> np.ndarray:
        """The network input: lesion-free image patches, tissue (when planned) and the sphere cue."""
        parts = {"images": images.astype(np.float32), "control": self.encode_control(controls)}
        if self.plans.has_tissue_maps:
            parts["tissue"] = self.encode_tissue(tissue, len(images))
        return self.input_layout.assemble(parts, lambda xs: np.concatenate(xs, axis=1))

    @torch.no_grad()
    def generate(self, spheres, conditioning, noise_seed) -> np.ndarray:
        if conditioning.images is None:
            raise LesiongenError("unetmask draws lesions into image patches: give conditioning images "
                                 "(lesion-free patches of the planned size)")
        controls = self.render_controls(spheres)
        network = self.networks["unet"]
        labels = np.asarray(self.lesion_labels, dtype=np.uint8)
        out = []
        chunk = max(1, self.stage_plan.batch_size)
        for start in range(0, len(spheres), chunk):
            part = slice(start, start + chunk)
            tissue = None if conditioning.tissue is None else conditioning.tissue[part]
            x = self.to_device(self.inputs(conditioning.images[part], tissue, controls[part]))
            with self.autocast():
                logits = network(x)
            logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).float()
            probabilities = torch.sigmoid(logits).cpu().numpy()
            best = probabilities.argmax(axis=1)
            out.append(np.where(probabilities.max(axis=1) > self.config.probability_threshold, labels[best], 0))
        self.last_evaluations = 1
        return np.concatenate(out).astype(np.uint8)


class DiffMaskGenerator(MaskGenerator):
    kind = "diffmask"
    config_class = DiffMaskConfig
    config: DiffMaskConfig
    STUDENT: ClassVar[str] = "student"  # the distilled network's name, next to the "denoiser"
    sampling_network: str = "denoiser"  # the network ``generate`` samples with (a twin may run the student)

    def build_networks(self) -> dict[str, nn.Module]:
        networks = {"denoiser": build_network(self.stage_plan.networks["diffusion"])}
        if self.config.student_schedule is not None:
            networks[self.STUDENT] = build_network(self.stage_plan.networks["diffusion"])
        return networks

    @property
    def input_layout(self) -> channels.ChannelLayout:
        return channels.diffmask_input(len(self.lesion_labels), self.plans.has_tissue_maps)

    def encode_masks(self, masks: np.ndarray) -> np.ndarray:
        """Diffusion works in [-1, 1]: -1 outside, +1 inside each class channel."""
        return 2.0 * super().encode_masks(masks) - 1.0

    def condition(self, controls: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
        """The conditioning channels (sphere control, tissue when planned) in layout order."""
        parts = [self.encode_control(controls)]
        if self.plans.has_tissue_maps:
            parts.append(self.encode_tissue(tissue, len(controls)))
        return np.concatenate(parts, axis=1)

    def network_input(self, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        offsets = self.input_layout.offsets()
        parts = {"noisy": noisy, "control": condition[:, :1]}
        if "tissue" in offsets:
            parts["tissue"] = condition[:, 1:2]
        return self.input_layout.assemble(parts, lambda xs: torch.cat(xs, dim=1))

    @torch.no_grad()
    def denoise(self, controls: np.ndarray, tissue: np.ndarray | None, seed: int | Sequence[int],
                schedule: ScheduleConfig | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
        """Denoised masks (n, K, z, y, x) in [-1, 1] for the given controls; and network evaluations per mask.

        ``seed``: one for the batch, or one per mask (whose noise is then that of the mask alone).
        ``progress(done, total)`` is called after every (batched) network evaluation."""
        return self._run_sampler(controls, tissue, seed, schedule or self.config.schedule, progress)

    @torch.no_grad()
    def trajectories(self, controls: np.ndarray, tissue: np.ndarray | None, seed: int | Sequence[int],
                     schedule: ScheduleConfig, timesteps: Sequence[int],
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The sampler's states at ``timesteps`` (before the network sees them) and its denoised mask: (n,
        len(timesteps) + 1, K, z, y, x) float32; what a distilled student learns to reproduce in fewer steps."""
        wanted = [int(t) for t in timesteps]
        states: dict[int, list[torch.Tensor]] = {t: [] for t in wanted}

        def record(t: int, x: torch.Tensor) -> None:
            if t in states:
                states[t].append(x.float().cpu())

        final, _ = self._run_sampler(controls, tissue, seed, schedule, progress, record)
        missing = [t for t in wanted if not states[t]]
        if missing:
            raise ValueError(f"the sampler does not visit timesteps {missing}")
        stacked = [torch.cat(states[t]).numpy() for t in wanted]
        return np.stack([*stacked, final], axis=1).astype(np.float32)

    def _run_sampler(self, controls: np.ndarray, tissue: np.ndarray | None, seed: int | Sequence[int],
                     schedule: ScheduleConfig, progress: Callable[[int, int], None] | None,
                     record: Callable[[int, torch.Tensor], None] | None = None) -> tuple[np.ndarray, int]:
        network = self.networks[self.sampling_network]
        generator = seeded_generators(seed)
        out, evaluations = [], 0
        chunk = max(1, self.stage_plan.batch_size)
        total_calls = -(-len(controls) // chunk) * sampling_evaluations(schedule)
        calls = 0
        for start in range(0, len(controls), chunk):
            condition = self.to_device(self.condition(controls[start:start + chunk],
                                                      None if tissue is None else tissue[start:start + chunk]))
            shape = (len(condition), len(self.lesion_labels), *self.patch_size)

            def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                with self.autocast():
                    prediction = network(self.network_input(x, condition), t)
                calls += 1
                if progress is not None:
                    progress(calls, total_calls)
                return prediction

            x, evaluations = sample(predict, shape, schedule, batch_part(generator, slice(start, start + chunk)),
                                    self.device, record)
            out.append(x.clamp(-1, 1).float().cpu().numpy())
        return np.concatenate(out), evaluations

    def with_sampling(self, sampling: str) -> "DiffMaskGenerator":
        """This model with the sampler ``sampling`` names (``model``: its own; ``default``: DPM-Solver++ 20 steps;
        ``few_step``: the 4-step sampler chosen for it after training; ``distilled``: its distilled student) and the
        threshold calibrated for that sampler."""
        if sampling == MODEL_SAMPLING:
            return self
        if sampling == DISTILLED_SAMPLING or (sampling == FEW_STEP_SAMPLING
                                              and self.config.few_step_variant == DISTILLED_VARIANT):
            return self.distilled(sampling)
        if sampling not in SAMPLING_PRESETS:
            raise LesiongenError(f"unknown sampling '{sampling}'; choose {MODEL_SAMPLING}, "
                                 f"{', '.join(SAMPLING_PRESETS)}, {DISTILLED_SAMPLING}")
        schedule = sampling_preset(self.config.schedule, sampling, self.config.few_step_variant)
        try:
            sampling_scheduler(schedule)  # a short-schedule network runs only at the timesteps it was trained at
        except ValueError as error:
            raise LesiongenError(f"{self.checkpoint or self.kind}: cannot sample with '{sampling}': {error}") from None
        if sampling not in self.config.preset_thresholds:
            raise LesiongenError(f"{self.checkpoint or self.kind}: has no threshold calibrated for the '{sampling}' "
                                 "sampler (trained before sampling presets); retrain it or use its own sampler")
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, schedule=schedule,
                                          threshold=self.config.preset_thresholds[sampling])
        return twin

    def distilled(self, sampling: str = DISTILLED_SAMPLING) -> "DiffMaskGenerator":
        """This model running its distilled student with the student's sampler and the threshold calibrated for it
        (under ``sampling``'s name: ``distilled``, or ``few_step`` when the choice after training took the
        student)."""
        if self.config.student_schedule is None:
            raise LesiongenError(f"{self.checkpoint or self.kind}: has no distilled student (train diffmask with "
                                 "--set distill_steps=N)")
        if sampling not in self.config.preset_thresholds:
            raise LesiongenError(f"{self.checkpoint or self.kind}: its student has no threshold calibrated for "
                                 f"'{sampling}'")
        twin = self.running(self.STUDENT)
        calibrated = self.config.preset_thresholds[sampling]
        twin.config = dataclasses.replace(self.config, schedule=self.config.student_schedule, threshold=calibrated)
        return twin

    def running(self, network: str) -> "DiffMaskGenerator":
        """This model sampling with its network ``network`` (``denoiser`` or the distilled ``student``), same
        configuration object."""
        if network not in self.networks:
            raise LesiongenError(f"{self.checkpoint or self.kind}: has no network '{network}'")
        twin = copy.copy(self)
        twin.sampling_network = network
        return twin

    def generate(self, spheres, conditioning, noise_seed) -> np.ndarray:
        controls = self.render_controls(spheres)
        denoised, self.last_evaluations = self.denoise(controls, conditioning.tissue, noise_seed)
        masks = self.binarise(denoised, self.config.threshold)
        if self.config.lesions_on_controls_only:
            masks = np.stack([keep_components_on_controls(m, c) for m, c in zip(masks, controls)])
        return masks


class GANMaskGenerator(MaskGenerator):
    kind = "ganmask"
    config_class = GANMaskConfig
    config: GANMaskConfig
    NOISE_CELL_VOXELS: ClassVar[int] = 4  # the noise fields vary on this scale (voxels), about a small lesion's radius

    def build_networks(self) -> dict[str, nn.Module]:
        networks = self.stage_plan.networks
        if "gan_generator" not in networks:
            raise LesiongenError(f"plans {self.plans.plans_name} were written before ganmask and have no GAN "
                                 "networks; run lesiongen_plan_and_preprocess again")
        return {"generator": build_network(networks["gan_generator"])}

    @property
    def input_layout(self) -> channels.ChannelLayout:
        return channels.ganmask_input(self.plans.has_tissue_maps)

    @property
    def discriminator_layout(self) -> channels.ChannelLayout:
        return channels.ganmask_discriminator_input(len(self.lesion_labels), self.plans.has_tissue_maps)

    def condition(self, controls: np.ndarray, tissue: np.ndarray | None) -> dict[str, np.ndarray]:
        """The conditioning channels by layout part: the sphere cue and the tissue map when planned."""
        parts = {"control": self.encode_control(controls)}
        if self.plans.has_tissue_maps:
            parts["tissue"] = self.encode_tissue(tissue, len(controls))
        return parts

    def noise(self, n: int, generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """(n, noise channels, z, y, x) smooth standard-normal fields: normal values on a grid of one knot per
        ``NOISE_CELL_VOXELS`` voxels, trilinearly interpolated, so the network gets lesion-sized variation to shape
        masks with (voxel-wise white noise is easy to average away)."""
        knots = [max(2, -(-size // self.NOISE_CELL_VOXELS) + 1) for size in self.patch_size]
        coarse = draw_noise((n, channels.GAN_NOISE_CHANNELS, *knots), generator)
        fields = F.interpolate(coarse, size=self.patch_size, mode="trilinear", align_corners=True)
        return fields / fields.flatten(1).std(dim=1).clamp(min=1e-6).view(-1, 1, 1, 1, 1)

    def generator_input(self, noise: torch.Tensor, condition: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.input_layout.assemble({"noise": noise, **condition}, lambda xs: torch.cat(xs, dim=1))

    def discriminator_input(self, masks: torch.Tensor, condition: dict[str, torch.Tensor]) -> torch.Tensor:
        """A (real or generated) per-class mask in [0, 1] with its condition, for the trainer's discriminator."""
        return self.discriminator_layout.assemble({"mask": masks, **condition}, lambda xs: torch.cat(xs, dim=1))

    @torch.no_grad()
    def probabilities(self, controls: np.ndarray, tissue: np.ndarray | None, seed: int | Sequence[int]
                      ) -> np.ndarray:
        """Lesion probabilities (n, K, z, y, x) for the given sphere controls; the seed draws the noise (one for the
        batch, or one per mask)."""
        network = self.networks["generator"]
        generator = seeded_generators(seed)
        out = []
        chunk = max(1, self.stage_plan.batch_size)
        for start in range(0, len(controls), chunk):
            part = slice(start, start + chunk)
            condition = {k: self.to_device(v) for k, v in
                         self.condition(controls[part], None if tissue is None else tissue[part]).items()}
            noise = self.noise(len(controls[part]), batch_part(generator, part)).to(self.device)
            with self.autocast():
                logits = network(self.generator_input(noise, condition))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out)

    def generate(self, spheres, conditioning, noise_seed) -> np.ndarray:
        probabilities = self.probabilities(self.render_controls(spheres), conditioning.tissue, noise_seed)
        self.last_evaluations = 1
        return self.binarise(probabilities, self.config.threshold)
