"""The lesion inpainter (LeFusion-style, 3D): lesions into healthy patches, or out of them (pseudo-healthy).

One MONAI ``DiffusionModelUNet`` denoises all image channels at once. Its input (``planning.channels.inpaint_input``)
is the noisy image, the known image with the edit region blanked, the lesion mask per class, a *heal* region, the
texture condition broadcast as channels (per class and channel, the lesion-vs-surrounding contrast) and a
*no condition* flag. Sampling is RePaint-style (known region replaced at every step, a few resampling jumps) with
classifier-free guidance in insert mode, then a feathered blend: voxels farther than ``margin_voxels`` from the
lesion come back bit-identical. Insert mode then calibrates what the network over- or undershoots to the training
lesion the condition was drawn from: the margin's rings to its edge steps, the lesion to its intensity step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from lesiongen.diffusion.guidance import classifier_free_guidance
from lesiongen.diffusion.inpainting import InpaintSchedule, edit_region, feather_blend, make_scheduler, repaint
from lesiongen.diffusion.schedules import ScheduleConfig
from lesiongen.fingerprint.lesions import lesion_contrast, lesion_shell_statistics
from lesiongen.models.base import LesionModel
from lesiongen.models.networks import build_network
from lesiongen.planning import channels
from lesiongen.planning.plans import DEFAULT_SAMPLING, FEW_STEP_SAMPLING, MODEL_SAMPLING
from lesiongen.utilities.errors import LesiongenError

INSERT, REMOVE = "insert", "remove"
SHELL_VOXELS = 2
SURROUNDING_RINGS = 2  # rings just beyond the edit margin: the tissue an edge step is measured against
CALIBRATION_TARGETS = ("step", "contrast")
# how the edit margin is cut into rings for the edge steps: "chessboard", ring k = the voxels k 26-neighbour steps
# from the lesion (models trained before 2026-12-05); "euclidean", ring k < margin = the margin's voxels at a
# Euclidean distance in (k - 1, k] voxels, the last ring the rest of the margin. A lesion's partial-volume halo falls
# off with the Euclidean distance (its face neighbours carry it, the corners hardly): one chessboard ring averages
# the two, and calibrating to that average left synthetic halos flatter than real ones. Euclidean rings bring the
# inserted contrast closer to real, yet cost diffmask Dice in the 4-case benefit run: the trainers keep chessboard.
EDGE_RINGS = ("chessboard", "euclidean")


@dataclass
class InpainterConfig:
    # the training noise schedule (timesteps, betas, what the network predicts): the sampler must use the same
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(prediction_type="sample"))
    sampling: InpaintSchedule = field(default_factory=InpaintSchedule)  # default sampler, steps, jumps, guidance
    margin_voxels: int = 2  # edit region and feathering ramp around the lesion
    contrast_scale: float = 4.0  # contrasts of a few standard deviations -> network inputs of order 1
    # insert mode: shift each inserted lesion's intensities to the training lesion its condition was drawn from; the
    # network alone over- or undershoots. To what (calibration_target): that lesion's intensity step to its shell
    # ("step", lesion mean - shell mean in normalised units) or its contrast ("contrast", the step over the shell's
    # spread). Real lesions' steps vary little; a contrast moved to another place with another shell spread does not
    # keep its step (measured: steps 2-2.5x as spread as the real ones'), so "step" is the default.
    calibrate_contrast: bool = True
    calibration_target: str = "step"
    # per lesion class: the (channel) contrasts of the training lesions; insert mode draws its condition from these
    contrast_bank: dict[str, list[list[float]]] = field(default_factory=dict)
    # per lesion class, entry by entry with contrast_bank: the same lesions' intensity steps (empty: an older model,
    # which calibrates to the contrast)
    step_bank: dict[str, list[list[float]]] = field(default_factory=dict)
    # per lesion class, entry by entry with contrast_bank: the same lesions' edge steps (class_edges; a ring beyond
    # the patch's brain is null). Insert mode scales the painted change in the rings of the edit margin to them
    # before the step calibration (calibrate_edges); the network alone paints lesion-like intensity into the
    # margin. Empty: an older model, whose margin stays as painted.
    edge_bank: dict[str, list[list[list[float | None]]]] = field(default_factory=dict)
    calibrate_edges: bool = True
    edge_rings: str = "chessboard"  # the rings the edge bank was measured in (EDGE_RINGS)
    # how far the edge calibration may amplify a ring painted short of its target (1: only shrink a spill)
    edge_max_gain: float = 1.0

    def __post_init__(self):
        if self.calibration_target not in CALIBRATION_TARGETS:
            raise LesiongenError(f"inpainter calibration_target '{self.calibration_target}': choose one of "
                                 f"{', '.join(CALIBRATION_TARGETS)}")
        if self.edge_rings not in EDGE_RINGS:
            raise LesiongenError(f"inpainter edge_rings '{self.edge_rings}': choose one of {', '.join(EDGE_RINGS)}")
        if not self.edge_max_gain >= 1.0:
            raise LesiongenError(f"inpainter edge_max_gain must be >= 1 (1: never amplify), got {self.edge_max_gain}")


def class_contrast(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(C,) contrast of the lesion voxels of a (c, z, y, x) patch, the fingerprint's definition
    (:func:`lesiongen.fingerprint.lesions.lesion_contrast`); zeros for an empty lesion."""
    if not lesion.any():
        return np.zeros(image.shape[0], dtype=np.float32)
    return np.asarray(lesion_contrast(image, lesion, brain, SHELL_VOXELS), dtype=np.float32)


def class_step(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(C,) intensity step of the lesion voxels of a (c, z, y, x) patch: lesion mean - mean of its shell (the shell of
    :func:`class_contrast`); zeros for an empty lesion or an empty shell."""
    if not lesion.any():
        return np.zeros(len(image), dtype=np.float32)
    inside, shell_mean, _ = lesion_shell_statistics(image, lesion, brain, SHELL_VOXELS)
    return np.nan_to_num(inside - shell_mean, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def calibrate_step(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``image`` (c, z, y, x) with the lesion voxels shifted per channel so that the lesion mean is its shell's mean
    + ``target`` (C,) exactly; only lesion voxels change, so the shell stays."""
    inside, shell_mean, _ = lesion_shell_statistics(image, lesion, brain, SHELL_VOXELS)
    return _shift_lesion(image, lesion, np.where(np.isfinite(shell_mean),
                                                 np.asarray(target, dtype=np.float64) + shell_mean - inside, 0.0))


def calibrate_contrast(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``image`` (c, z, y, x) with the lesion voxels shifted per channel so that the lesion's contrast to its shell
    is ``target`` (C,) exactly. Only lesion voxels change, so the shell the contrast is measured against stays."""
    inside, shell_mean, shell_std = lesion_shell_statistics(image, lesion, brain, SHELL_VOXELS)
    usable = np.isfinite(shell_std) & (shell_std > 1e-6)
    return _shift_lesion(image, lesion, np.where(
        usable, np.asarray(target, dtype=np.float64) * shell_std + shell_mean - inside, 0.0))


def margin_rings(lesion: np.ndarray, brain: np.ndarray, margin_voxels: int, other_lesions: np.ndarray | None = None,
                 rings: str = "chessboard") -> tuple[list[np.ndarray], np.ndarray]:
    """The ``margin_voxels`` rings of the edit margin around ``lesion`` (z, y, x; together the brain voxels of the
    margin :func:`edit_region` adds), cut as :data:`EDGE_RINGS` says, and the surroundings, the
    :data:`SURROUNDING_RINGS` 26-neighbour rings beyond the margin, which insertion leaves as they were. Voxels of
    ``other_lesions`` belong to no ring."""
    if rings not in EDGE_RINGS:
        raise LesiongenError(f"edge rings '{rings}': choose one of {', '.join(EDGE_RINGS)}")
    outside = ~lesion.astype(bool)
    steps = ndimage.distance_transform_cdt(outside, metric="chessboard")  # 0 in the lesion
    usable = brain.astype(bool) & outside
    if other_lesions is not None:
        usable &= ~other_lesions.astype(bool)
    if rings == "chessboard":
        cut = [(steps == k) & usable for k in range(1, margin_voxels + 1)]
    else:
        margin = (steps >= 1) & (steps <= margin_voxels) & usable
        distance = ndimage.distance_transform_edt(outside)
        cut = [margin & (distance > k - 1) & (distance <= k) for k in range(1, margin_voxels)]
        cut.append(margin & (distance > margin_voxels - 1))
    surroundings = (steps > margin_voxels) & (steps <= margin_voxels + SURROUNDING_RINGS) & usable
    return cut, surroundings


def class_edges(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, margin_voxels: int,
                other_lesions: np.ndarray | None = None, rings: str = "chessboard") -> np.ndarray:
    """(margin_voxels, C) edge steps of a (c, z, y, x) patch's lesion: per ring of :func:`margin_rings`, its mean minus
    the surroundings' mean, per channel — how far the lesion's intensity reaches past its label (about 0 for a sharp
    edge, a fraction of the lesion's step where partial volume blurs it). NaN where a ring or the surroundings
    are empty."""
    cut, surroundings = margin_rings(lesion, brain, margin_voxels, other_lesions, rings)
    edges = np.full((margin_voxels, len(image)), np.nan, dtype=np.float64)
    if not lesion.any() or not surroundings.any():
        return edges
    base = image[:, surroundings].mean(axis=1, dtype=np.float64)
    for k, ring in enumerate(cut):
        if ring.any():
            edges[k] = image[:, ring].mean(axis=1, dtype=np.float64) - base
    return edges


def calibrate_edges(image: np.ndarray, before: np.ndarray, lesion: np.ndarray, brain: np.ndarray, target: np.ndarray,
                    other_lesions: np.ndarray | None = None, rings: str = "chessboard",
                    max_gain: float = 1.0) -> np.ndarray:
    """``image`` (c, z, y, x), a lesion inserted into ``before``, with the change (image - before) in each ring of the
    edit margin scaled per channel by the factor in [0, ``max_gain``] that gives the edge step ``target`` (rings, C;
    :func:`class_edges`): a spill shrinks most where it is strongest and a voxel the inpainter left alone stays.
    Exact where the target is within ``max_gain`` times the painted change; a ring painted further short of it is
    amplified ``max_gain`` times, one painted against it goes back to ``before``. NaN targets and empty rings stay;
    only ring voxels change."""
    target = np.asarray(target, dtype=np.float64)
    cut, surroundings = margin_rings(lesion, brain, len(target), other_lesions, rings)
    out = image.copy()
    if not surroundings.any():
        return out
    base = image[:, surroundings].mean(axis=1, dtype=np.float64)
    for ring, ring_target in zip(cut, target):
        if not ring.any():
            continue
        was = before[:, ring].astype(np.float64)
        change = image[:, ring].astype(np.float64) - was
        wanted = ring_target + base - was.mean(axis=1)  # the ring's mean change that gives the target step
        mean_change = change.mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.clip(wanted / mean_change, 0.0, max_gain)
        scale = np.where(np.isfinite(scale), scale, 1.0)  # NaN target, or nothing painted: as it is
        out[:, ring] = (was + scale[:, None] * change).astype(image.dtype)
    return out


def _shift_lesion(image: np.ndarray, lesion: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (c, z, y, x) with ``shift`` (C,) added to the lesion voxels of each channel."""
    out = image.copy()
    out[:, lesion] += shift.astype(image.dtype)[:, None]
    return out


class Inpainter(LesionModel):
    kind = "inpaint"
    stage = "inpainting"
    config_class = InpainterConfig
    config: InpainterConfig
    evaluated_patches = 0  # patches the denoiser network has evaluated in the current inpaint call

    def build_networks(self) -> dict[str, nn.Module]:
        return {"denoiser": build_network(self.stage_plan.networks["diffusion"])}

    @property
    def n_classes(self) -> int:
        return len(self.plans.lesion_labels)

    @property
    def n_channels(self) -> int:
        return self.plans.num_channels

    @property
    def margin_voxels(self) -> int:
        return self.config.margin_voxels

    @property
    def input_layout(self) -> channels.ChannelLayout:
        return channels.inpaint_input(self.n_channels, self.n_classes)

    def network_input(self, noisy: torch.Tensor, known: np.ndarray, lesion: np.ndarray, heal: np.ndarray,
                      contrast: np.ndarray, unconditioned: np.ndarray) -> torch.Tensor:
        """Every input channel in layout order; numpy parts are (b, ...) and go to the device here."""
        b = len(known)
        spatial = known.shape[2:]
        labels = np.asarray(self.plans.lesion_labels).reshape(1, -1, 1, 1, 1)
        condition = (contrast.reshape(b, -1) / self.config.contrast_scale).astype(np.float32)
        condition[unconditioned] = 0.0
        parts = {
            "known": known.astype(np.float32),
            "lesion": (lesion[:, None] == labels).astype(np.float32),
            "heal": heal[:, None].astype(np.float32),
            "condition": np.broadcast_to(condition[:, :, None, None, None], (b, condition.shape[1], *spatial)),
            "unconditioned": np.broadcast_to(unconditioned.astype(np.float32)[:, None, None, None, None],
                                             (b, 1, *spatial)),
        }
        rest = {k: self.to_device(np.ascontiguousarray(v, dtype=np.float32)) for k, v in parts.items()}
        return self.input_layout.assemble({"noisy": noisy, **rest}, lambda xs: torch.cat(xs, dim=1))

    def draw_condition(self, lesion_masks: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, K, C) texture conditions drawn from the training lesions, for the classes present, the same
        lesions' intensity steps (zeros where the model has no step bank) and (n, K, margin, C) their edge steps
        (NaN where it has no edge bank: those rings stay as painted)."""
        bank, steps, edge_bank = self.config.contrast_bank, self.config.step_bank, self.config.edge_bank
        contrast = np.zeros((len(lesion_masks), self.n_classes, self.n_channels), dtype=np.float32)
        step = np.zeros_like(contrast)
        edges = np.full((len(lesion_masks), self.n_classes, self.margin_voxels, self.n_channels), np.nan)
        for i, mask in enumerate(lesion_masks):
            for k, label in enumerate(self.plans.lesion_labels):
                choices = bank.get(str(label), [])
                if (mask == label).any() and choices:
                    j = int(rng.integers(len(choices)))
                    contrast[i, k] = choices[j]
                    if steps.get(str(label)):
                        step[i, k] = steps[str(label)][j]
                    if edge_bank.get(str(label)):
                        edges[i, k] = np.array(edge_bank[str(label)][j], dtype=np.float64)  # null -> NaN
        return contrast, step, edges

    def calibrates_steps(self, contrast_given: bool) -> bool:
        """Whether insert mode's calibration targets the drawn lesions' steps (else their contrasts): only when the
        model has steps and the caller did not set the contrasts itself."""
        return self.config.calibration_target == "step" and bool(self.config.step_bank) and not contrast_given

    def denoiser(self, known: np.ndarray, lesion: np.ndarray, heal: np.ndarray, contrast: np.ndarray,
                 unconditioned: np.ndarray, guidance_scale: float):
        """``predict(x_t, t)`` for the sampler: one network call, or two combined by classifier-free guidance.
        Every patch the network sees adds one to ``self.evaluated_patches``."""
        network = self.networks["denoiser"]
        b = len(known)

        def evaluate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.evaluated_patches += len(x)
            return network(x, t).float()

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                if guidance_scale == 1.0:
                    return evaluate(self.network_input(x, known, lesion, heal, contrast, unconditioned), t)
                both = self.network_input(torch.cat([x, x]), np.concatenate([known, known]),
                                          np.concatenate([lesion, lesion]), np.concatenate([heal, heal]),
                                          np.concatenate([contrast, contrast]),
                                          np.concatenate([np.zeros(b, bool), np.ones(b, bool)]))
                conditioned, free = evaluate(both, torch.cat([t, t])).chunk(2)
                return classifier_free_guidance(conditioned, free, guidance_scale)

        return predict

    def with_sampling(self, sampling: str) -> "Inpainter":
        """This model with the sampler ``sampling`` names: ``model`` (its configuration's) or a preset of
        :data:`lesiongen.diffusion.schedules.SAMPLING_PRESETS` (``default``: 16 DDIM steps, 3 resampling jumps and
        guidance 1.5, 44 evaluations per inserted patch; ``few_step``: 4)."""
        presets = {DEFAULT_SAMPLING: InpaintSchedule.fast, FEW_STEP_SAMPLING: InpaintSchedule.few_step}
        if sampling == MODEL_SAMPLING:
            return self
        if sampling not in presets:
            raise LesiongenError(f"unknown sampling '{sampling}'; choose {MODEL_SAMPLING}, {', '.join(presets)}")
        try:
            make_scheduler(presets[sampling](), self.config.schedule)  # a short-schedule network: its timesteps only
        except ValueError as error:
            raise LesiongenError(f"{self.checkpoint or self.kind}: cannot sample with '{sampling}': {error}") from None
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, sampling=presets[sampling]())
        return twin

    @property
    def calibrates_edges(self) -> bool:
        """Whether insert mode brings the margin's rings to the drawn training lesions' edge steps."""
        return self.config.calibrate_edges and bool(self.config.edge_bank)

    def with_edge_calibration(self, enabled: bool) -> "Inpainter":
        """This model with the margin's edge calibration on or off."""
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, calibrate_edges=enabled)
        return twin

    def with_calibration_target(self, target: str) -> "Inpainter":
        """This model calibrating inserted lesions to ``target`` (one of :data:`CALIBRATION_TARGETS`)."""
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, calibration_target=target)
        return twin

    def inpaint(self, images: np.ndarray, lesion_masks: np.ndarray, mode: str = INSERT,
                contrast: np.ndarray | None = None, seed: int | Sequence[int] = 0,
                schedule: InpaintSchedule | None = None,
                brain: np.ndarray | None = None, calibrate: bool | None = None) -> np.ndarray:
        """Insert lesions into (or remove them from) (n, C, z, y, x) patches at the plans' lesion patch size.

        ``lesion_masks`` (n, z, y, x) hold lesion class labels. ``contrast`` (n, K, C) is the texture condition
        (default: drawn from the training lesions); ignored in ``remove`` mode. ``schedule`` defaults to the
        model's sampler; ``calibrate`` (default: the configuration's ``calibrate_contrast``) shifts each inserted
        lesion to exactly its condition's step (or contrast), and first, for a drawn condition and a model with an
        edge bank, the rings of its margin to that training lesion's edge steps. Voxels farther than
        ``margin_voxels`` from the masks come back bit-identical. ``seed`` is one seed for the batch, or one per
        patch: each patch then draws (its condition and its noise) exactly what a call with that patch alone and its
        seed draws, so patches of independent lesions can share a batch without changing their results beyond float
        rounding.
        """
        if mode not in (INSERT, REMOVE):
            raise LesiongenError(f"inpainting mode must be '{INSERT}' or '{REMOVE}', got '{mode}'")
        images = np.asarray(images, dtype=np.float32)
        n = len(images)
        if images.shape[1:] != (self.n_channels, *self.patch_size) or lesion_masks.shape != (n, *self.patch_size):
            raise LesiongenError(f"inpainting expects images (n, {self.n_channels}, *{self.patch_size}) and masks "
                                 f"(n, *{self.patch_size}); got {images.shape} and {lesion_masks.shape}")
        schedule = schedule or self.config.sampling
        per_patch = not isinstance(seed, (int, np.integer))
        if per_patch and len(seed) != n:
            raise LesiongenError(f"inpainting got {len(seed)} seeds for {n} patches")
        seeds = [int(s) for s in seed] if per_patch else [int(seed)]
        by_step = self.calibrates_steps(contrast is not None)
        # edge targets come with a drawn training lesion; contrasts set by the caller have none
        edges = np.full((n, self.n_classes, self.margin_voxels, self.n_channels), np.nan)
        if contrast is None:
            drawn = [self.draw_condition(lesion_masks[i:i + 1], np.random.default_rng(s))
                     for i, s in enumerate(seeds)] if per_patch else \
                [self.draw_condition(lesion_masks, np.random.default_rng(seeds[0]))]
            contrast, step, edges = (np.concatenate(parts) for parts in zip(*drawn))
        if not self.config.calibrate_edges:
            edges[:] = np.nan
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        lesion_any = lesion_masks > 0
        region = edit_region(lesion_any, self.margin_voxels)
        if brain is not None:
            region &= brain.astype(bool)
        heal = region if mode == REMOVE else np.zeros_like(region)
        lesion = np.zeros_like(lesion_masks) if mode == REMOVE else lesion_masks
        # remove mode heals: there is no lesion texture to follow, so no condition and no guidance
        guidance = schedule.guidance_scale if mode == INSERT else 1.0
        out = np.empty_like(images)
        chunk = max(1, self.stage_plan.batch_size // (1 if guidance == 1.0 else 2))
        self.evaluated_patches = 0
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            known = images[part] * ~region[part][:, None]
            predict = self.denoiser(known, lesion[part], heal[part], contrast[part],
                                    np.full(len(known), mode == REMOVE), guidance)
            sampled, _ = repaint(predict, self.to_device(images[part]),
                                 self.to_device(region[part][:, None].astype(np.float32)), schedule,
                                 self.config.schedule, generators[part] if per_patch else generators[0])
            generated = sampled.float().cpu().numpy()
            for i in range(len(known)):
                out[start + i] = feather_blend(images[start + i], generated[i], lesion_any[start + i],
                                               self.margin_voxels)
        # counted, not computed from the schedule: what the network really evaluated, per patch
        self.last_evaluations = self.evaluated_patches / n if n else 0
        if mode == INSERT and (self.config.calibrate_contrast if calibrate is None else calibrate):
            for i in range(n):
                patch_brain = np.ones(self.patch_size, bool) if brain is None else brain[i].astype(bool)
                for k, label in enumerate(self.plans.lesion_labels):
                    lesion_k = lesion_masks[i] == label
                    if lesion_k.any():
                        # the margin first: the step is measured against a shell that lies in it
                        if not np.isnan(edges[i, k]).all():
                            out[i] = calibrate_edges(out[i], images[i], lesion_k, patch_brain, edges[i, k],
                                                     lesion_any[i] & ~lesion_k, self.config.edge_rings,
                                                     self.config.edge_max_gain)
                        out[i] = calibrate_step(out[i], lesion_k, patch_brain, step[i, k]) if by_step else \
                            calibrate_contrast(out[i], lesion_k, patch_brain, contrast[i, k])
        return out
