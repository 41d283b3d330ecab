"""Whole-scan synthesis: plausible lesions put into a healthy scan, or lesions removed, at the scan's own geometry.

``synthesize`` maps the scan to model space (crop, normalise, resample as in preprocessing), draws lesion placements
from the sphere priors (``placement``: where in the brain box, in which tissue, bordering what tissue), generates
each lesion's mask with a mask generator (or takes the masks it is given), inpaints the lesion patches (so
overlapping lesions see each other and merge into one label map), and writes only the changed region back into the
original array. Voxels away from the lesions are bit-identical to the input.

Lesions are inpainted in batches: a run of consecutive lesions whose patches do not overlap goes through the network
together, and a lesion whose patch overlaps one of the run waits for the run to be written. Every lesion keeps its
own seed (drawn in lesion order, as one at a time), so batching changes results only by float rounding.

The edit of one scan is a job (``synthesis_job``, ``model_space_synthesis_job``, ``removal_job``): a generator that
yields what it waits on — a batch of lesions to inpaint (:class:`InpaintRequest`) or a lesion's mask to draw
(:class:`MaskRequest`) — and is sent the answer. :func:`run_jobs` runs several jobs at once, so the lesions and masks
of several scans share the networks' batches, and ``synthesize`` / ``synthesize_model_space`` / ``remove_lesions``
run one job alone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from scipy import ndimage

from lesiongen.diffusion.inpainting import InpaintSchedule, edit_region, painted_lesion
from lesiongen.fingerprint.spheres import minimum_enclosing_sphere
from lesiongen.inference.placement import (avoided_tissue, keep_on_lesion_tissue, lesion_tissue_classes,
                                           placement_weights)
from lesiongen.inference.scan_space import ModelSpaceScan, paste_back, region_to_original, to_model_space
from lesiongen.models.conditioning import MaskConditioning
from lesiongen.models.spheres import render_ellipsoids, sample_sphere_lesions
from lesiongen.planning.plans import Categorical, Plans, SpherePrior
from lesiongen.preprocessing.resampling import resample_labels
from lesiongen.utilities.components import label_components
from lesiongen.utilities.cropping import bbox_slices, extract_patch, insert_patch
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger(__name__)

MASK_RETRIES = 3  # draws of a generated mask before the sphere prior's ellipsoid replaces it
# A generated mask is plausible when its volume lies within [smallest / 2, largest x 2] of the fold's real lesions of
# its class and its bounding radius within 1.5 x the largest real one, and it neither fills more than half of its
# patch nor touches all six faces of it (a patch-filling "cube": what a briefly trained diffmask can produce).
VOLUME_TOLERANCE = 2.0
RADIUS_TOLERANCE = 1.5
MAX_PATCH_FRACTION = 0.5
# scans edited together (their lesions share the inpainter's batches) unless chosen: a GPU fills larger batches at
# little extra time; on a CPU a larger batch gains little and every scan of a group is held in memory
GPU_BATCH_SCANS = 4


def default_batch_scans(device_type: str) -> int:
    return 1 if device_type == "cpu" else GPU_BATCH_SCANS


@dataclass
class SynthesisResult:
    images: np.ndarray  # (c, z, y, x), the input's grid and dtype
    label: np.ndarray  # (z, y, x) uint8 lesion labels on the input's grid
    lesions: list[dict] = field(default_factory=list)  # per placed lesion: class, centre, voxels, mask source

    @property
    def sphere_fallbacks(self) -> int:
        return count_fallbacks(self.lesions)


def count_fallbacks(lesions: list[dict]) -> int:
    """Lesions whose generated masks were implausible every time and that took the sphere prior's ellipsoid."""
    return sum(1 for lesion in lesions if lesion.get("mask_source") == SPHERE_FALLBACK)


def _lesion_counts(priors: dict[str, SpherePrior], n_lesions: int | None, rng: np.random.Generator) -> list[int]:
    """Lesion class per lesion to place: ``n_lesions`` split by class frequency, else drawn per class per case."""
    labels = sorted(priors, key=int)
    weights = np.array([max(priors[k].n_lesions_observed, 0) for k in labels], dtype=float)
    if weights.sum() == 0:
        raise LesiongenError("the sphere priors hold no lesions; nothing to sample from")
    if n_lesions is not None:
        return [int(labels[i]) for i in rng.choice(len(labels), size=n_lesions, p=weights / weights.sum())]
    classes: list[int] = []
    for k in labels:
        options = priors[k].lesions_per_case.probabilities
        if options:
            keys = list(options)
            count = int(keys[rng.choice(len(keys), p=np.asarray(list(options.values())) / sum(options.values()))])
            classes += [int(k)] * count
    return classes or [int(labels[int(np.argmax(weights))])]


def _single_lesion_priors(priors: dict[str, SpherePrior], label: int) -> dict[str, SpherePrior]:
    """The class's prior with exactly one lesion per patch: whole-scan placement decides the count."""
    prior = dataclasses.replace(priors[str(label)], lesions_per_patch=Categorical({"1": 1.0}))
    return {str(label): prior}


@dataclass
class ModelSpaceEdit:
    images: np.ndarray  # (c, z, y, x) model-space image after editing
    label: np.ndarray  # (z, y, x) uint8 lesion labels in model space
    changed: np.ndarray  # (z, y, x) bool voxels the edit may have changed
    lesions: list[dict]


def patches_overlap(centre: Sequence[int], other: Sequence[int], patch_size: Sequence[int]) -> bool:
    """Whether the patches of ``patch_size`` centred on the two voxels share a voxel (``extract_patch``'s boxes)."""
    return all(abs(int(np.round(a)) - int(np.round(b))) < n for a, b, n in zip(centre, other, patch_size))


@dataclass
class _PendingLesion:
    """A lesion whose mask and seed are drawn, waiting for its batch to be inpainted."""

    centre: np.ndarray
    image_patch: np.ndarray
    brain_patch: np.ndarray
    mask: np.ndarray
    seed: int
    record: dict
    # patch voxels the edit leaves as they were (tissue the class's lesions avoid: a ventricle next to a new lesion
    # stays a ventricle rather than being painted over by the inpainter's margin); None: the whole edit region
    keep: np.ndarray | None = None


@dataclass
class InpaintRequest:
    """Lesions a job waits on: their patches go through ``inpainter`` (with other jobs' of the same kind)."""

    inpainter: Any
    mode: str
    schedule: InpaintSchedule | None
    lesions: list[_PendingLesion]

    def kind(self) -> tuple:
        return "inpaint", id(self.inpainter), self.mode, self.schedule

    @staticmethod
    def answer(requests: list[InpaintRequest]) -> list[list[np.ndarray]]:
        """The inpainted patches of each request, from one call for all their lesions (each with its own seed)."""
        lesions = [lesion for request in requests for lesion in request.lesions]
        first = requests[0]
        patches = first.inpainter.inpaint(np.stack([p.image_patch for p in lesions]),
                                          np.stack([p.mask for p in lesions]), first.mode,
                                          seed=[p.seed for p in lesions], schedule=first.schedule,
                                          brain=np.stack([p.brain_patch for p in lesions]))
        answers, start = [], 0
        for request in requests:
            answers.append(list(patches[start:start + len(request.lesions)]))
            start += len(request.lesions)
        return answers


@dataclass
class MaskRequest:
    """One lesion's mask a job waits on: drawn by ``generator`` (with other jobs' masks from the same generator)."""

    generator: Any
    conditioning: MaskConditioning  # of one patch
    seed: int

    def kind(self) -> tuple:
        return "mask", id(self.generator)

    @staticmethod
    def answer(requests: list[MaskRequest]) -> list[np.ndarray]:
        """Each request's mask, from one call (per-mask seeds: each is the mask it gets alone)."""
        conditioning = MaskConditioning.stack([request.conditioning for request in requests])
        return list(requests[0].generator.sample_masks(len(requests), conditioning,
                                                       seed=[request.seed for request in requests]))


T = TypeVar("T")
# one scan's edit: yields the requests (lesions to inpaint, a mask to draw) it waits on, is sent their answers,
# returns its result
EditJob = Generator[InpaintRequest | MaskRequest, Any, T]


def run_jobs(jobs: Sequence[EditJob[T]]) -> list[T]:
    """The results of ``jobs``, run together: whenever every unfinished job waits on a request, the requests of the
    kind most of them wait on (lesions for the same inpainter, mode and sampler; masks from the same generator) are
    answered by one network call. Each lesion and mask keeps its own seed, so the results are those of running the
    jobs one by one up to float rounding."""
    results: list[Any] = [None] * len(jobs)
    waiting: dict[int, InpaintRequest | MaskRequest] = {}

    def advance(number: int, answer: Any) -> None:
        try:
            waiting[number] = jobs[number].send(answer)
        except StopIteration as finished:
            results[number] = finished.value

    for number in range(len(jobs)):
        advance(number, None)
    while waiting:
        kinds = [request.kind() for request in waiting.values()]
        kind = max(kinds, key=kinds.count)
        together = {number: waiting.pop(number) for number in [n for n, r in waiting.items() if r.kind() == kind]}
        requests = list(together.values())
        for number, answer in zip(together, type(requests[0]).answer(requests), strict=True):
            advance(number, answer)
    return results


def finished_job(result: T) -> EditJob[T]:
    """A job with nothing to inpaint: it returns ``result`` at once (so edits without the inpainter run with
    :func:`run_jobs` like the others)."""
    return result
    yield  # unreachable; makes this function a generator


def run_alone(job_factory: Callable[..., EditJob[T]]) -> Callable[..., T]:
    """``job_factory`` as a function that runs its job by itself and returns the job's result."""
    @functools.wraps(job_factory)
    def run(*args, **kwargs) -> T:
        return run_jobs([job_factory(*args, **kwargs)])[0]

    return run


class _LesionBatches:
    """Collects lesions whose patches do not overlap and has them inpainted together into ``edited`` (``make_room``
    and ``flush`` are sub-generators of a job: ``yield from``)."""

    def __init__(self, edited: np.ndarray, label_model: np.ndarray | None, changed: np.ndarray, patch: list[int],
                 inpainter, mode: str, schedule: InpaintSchedule | None, batched: bool):
        self.edited, self.label_model, self.changed, self.patch = edited, label_model, changed, patch
        self.inpainter, self.mode, self.schedule, self.batched = inpainter, mode, schedule, batched
        self.pending: list[_PendingLesion] = []
        self.records: list[dict] = []

    def make_room(self, centre: Sequence[int]) -> EditJob[None]:
        """Inpaint the pending lesions first when a lesion at ``centre`` would see (overlap) one of them."""
        if not self.batched or any(patches_overlap(centre, p.centre, self.patch) for p in self.pending):
            yield from self.flush()

    def add(self, lesion: _PendingLesion) -> None:
        self.pending.append(lesion)

    def flush(self) -> EditJob[None]:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        results = yield InpaintRequest(self.inpainter, self.mode, self.schedule, batch)
        for lesion, result in zip(batch, results, strict=True):
            if lesion.keep is not None:
                result = np.where(lesion.keep[None], lesion.image_patch, result)
            insert_patch(self.edited, result, lesion.centre)
            if self.label_model is not None:  # insert: the new lesions join the label map
                # a generated mask's label follows what was painted around it; a given mask is the label asked for
                label = lesion.mask if lesion.record["mask_source"] == GIVEN_MASK else painted_lesion(
                    lesion.image_patch, result, lesion.mask, self.inpainter.margin_voxels, lesion.brain_patch)
                lesion.record["voxels_labelled"] = int((label > 0).sum())
                existing = extract_patch(self.label_model, lesion.centre, self.patch, fill=0)
                insert_patch(self.label_model, np.where(label > 0, label, existing).astype(np.uint8), lesion.centre)
            region = extract_patch(self.changed, lesion.centre, self.patch, fill=False) | \
                edit_region(lesion.mask > 0, self.inpainter.margin_voxels)
            insert_patch(self.changed, region, lesion.centre)
            self.records.append(lesion.record)


def model_space_synthesis_job(images: np.ndarray, brain: np.ndarray, tissue: np.ndarray | None, plans: Plans,
                              inpainter, mask_generator=None, placements: list | None = None,
                              n_lesions: int | None = None, seed: int = 0, tissue_classes: list[int] | None = None,
                              schedule: InpaintSchedule | None = None, batch_lesions: bool = True,
                              lesion_priors: dict[str, SpherePrior] | None = None) -> EditJob[ModelSpaceEdit]:
    """Lesions into a preprocessed (normalised, target-spacing) scan; what ``synthesis_job`` runs in model space.

    ``placements`` are (class, centre, patch mask or None) tuples; without them they are drawn from the generator's
    priors. Preprocessed healthy scans (e.g. for synthetic training cases) go through here directly.
    ``lesion_priors`` (default: the generator's) say which tissue the edits keep off (``placement``); given masks
    without them are painted wherever they reach.
    ``batch_lesions=False`` inpaints one lesion at a time (the reference the batched path is tested against).
    """
    rng = np.random.default_rng(seed)
    patch = plans.lesion_patch_size
    if lesion_priors is None and mask_generator is not None:
        lesion_priors = mask_generator.priors
    edited = images.copy()
    label_model = np.zeros(brain.shape, dtype=np.uint8)
    changed = np.zeros(brain.shape, dtype=bool)
    if placements is None:
        if mask_generator is None:
            raise LesiongenError("synthesis needs lesion masks or a mask generator")
        priors = mask_generator.priors
        brain_coords = np.argwhere(brain)
        placements = []
        weights: dict[int, np.ndarray] = {}  # per class: computed once per scan
        for label in _lesion_counts(priors, n_lesions, rng):
            if label not in weights:
                weights[label] = placement_weights(brain, tissue, priors[str(label)], plans.target_spacing,
                                                   tissue_classes)
            placements.append((label, brain_coords[rng.choice(len(brain_coords), p=weights[label])], None))

    batches = _LesionBatches(edited, label_model, changed, patch, inpainter, "insert", schedule, batch_lesions)
    for number, (label, centre, given) in enumerate(placements):
        yield from batches.make_room(centre)  # this lesion's patch must see the lesions already placed over it
        image_patch = extract_patch(edited, centre, patch, fill=0.0)
        brain_patch = extract_patch(brain, centre, patch, fill=False)
        tissue_patch = None if tissue is None else extract_patch(tissue, centre, patch, fill=0)
        source, rejected = GIVEN_MASK, []
        avoided = None if lesion_priors is None else avoided_tissue(
            tissue_patch, lesion_tissue_classes(lesion_priors[str(label)], tissue_classes))
        if given is not None:
            mask = given
        else:
            mask, source, rejected = yield from _generate_mask(mask_generator, label, image_patch, brain_patch,
                                                               tissue_patch, avoided, rng)
            if mask is None:
                logger.warning("lesion %d: no mask, not even the sphere prior's, fits the brain here; skipped", number)
                continue
            if source == SPHERE_FALLBACK:
                logger.warning("lesion %d: the %s masks were implausible %d time(s) (%s); used the sphere prior's "
                               "ellipsoid instead", number, mask_generator.kind, len(rejected), rejected[-1])
        keep = None if avoided is None else avoided & (mask == 0)
        batches.add(_PendingLesion(
            np.asarray(centre), image_patch, brain_patch, mask, int(rng.integers(2**31)),
            {"label": int(label), "centre_model_voxel": [int(c) for c in centre],
             "voxels_model": int((mask > 0).sum()), "mask_source": source, "rejected_masks": rejected}, keep))
    yield from batches.flush()
    return ModelSpaceEdit(edited, label_model, changed, batches.records)


def synthesis_job(images: np.ndarray, spacing: list[float], plans: Plans, inpainter, mask_generator=None,
                  masks: np.ndarray | None = None, n_lesions: int | None = None, seed: int = 0,
                  brain_mask: np.ndarray | None = None, tissue: np.ndarray | None = None,
                  tissue_classes: list[int] | None = None, schedule: InpaintSchedule | None = None,
                  batch_lesions: bool = True) -> EditJob[SynthesisResult]:
    """Put lesions into a healthy (c, z, y, x) scan; ``masks`` (a label map on the scan's grid) or generated ones."""
    if masks is None and mask_generator is None:
        raise LesiongenError("synthesis needs lesion masks or a mask generator")
    scan = to_model_space(images, spacing, plans, brain_mask, tissue)
    placements = _given_lesions(masks, scan, plans.lesion_patch_size) if masks is not None else None
    edit = yield from model_space_synthesis_job(scan.images, scan.brain, scan.tissue, plans, inpainter,
                                                mask_generator, placements, n_lesions, seed, tissue_classes, schedule,
                                                batch_lesions)
    out = paste_back(images, edit.images, edit.changed, scan, margin_voxels=1)
    return SynthesisResult(out, region_to_original(edit.label, scan).astype(np.uint8), edit.lesions)


synthesize_model_space = run_alone(model_space_synthesis_job)
synthesize = run_alone(synthesis_job)


SPHERE_FALLBACK = "sphere_fallback"
GIVEN_MASK = "given"  # the mask source of a lesion whose mask the caller gave


def implausible_mask(mask: np.ndarray, prior: SpherePrior, spacing: list[float]) -> str | None:
    """Why a generated lesion mask is implausible for its class (None when it is not), by the rule above."""
    voxels = int((mask > 0).sum())
    if voxels == 0:
        return "empty"
    volume = voxels * float(np.prod(spacing))
    low, high = prior.volume_mm3.minimum / VOLUME_TOLERANCE, prior.volume_mm3.maximum * VOLUME_TOLERANCE
    if not low <= volume <= high:
        return f"volume {volume:.0f} mm3 outside {low:.0f}-{high:.0f} mm3"
    if voxels > MAX_PATCH_FRACTION * mask.size:
        return f"fills {voxels / mask.size:.0%} of its patch"
    if all(np.take(mask > 0, i, axis=a).any() for a in range(3) for i in (0, -1)):
        return "touches every face of its patch"
    _, radius = minimum_enclosing_sphere(np.argwhere(mask > 0) * np.asarray(spacing))
    if radius > prior.radius_mm.maximum * RADIUS_TOLERANCE:
        return f"radius {radius:.1f} mm above {prior.radius_mm.maximum * RADIUS_TOLERANCE:.1f} mm"
    return None


def _generate_mask(generator, label: int, image_patch, brain_patch, tissue_patch, avoided: np.ndarray | None, rng
                   ) -> EditJob[tuple[np.ndarray | None, str, list[str]]]:
    """(mask, "generator" or "sphere_fallback", why earlier draws were rejected): up to ``MASK_RETRIES`` draws of
    the generator (each a :class:`MaskRequest`), then the sphere prior's ellipsoid of the last draw's spheres. Each
    is kept off the ``avoided`` tissue (``placement.keep_on_lesion_tissue``) before it is judged."""
    priors = _single_lesion_priors(generator.priors, label)
    rejected: list[str] = []
    spheres = []
    for _ in range(MASK_RETRIES):
        spheres = sample_sphere_lesions(priors, generator.patch_size, generator.spacing, rng, brain=brain_patch,
                                        tissue=tissue_patch)
        conditioning = MaskConditioning(brain=brain_patch[None], tissue=None if tissue_patch is None else
                                        tissue_patch[None], images=image_patch[None], spheres=[spheres])
        drawn = yield MaskRequest(generator, conditioning, int(rng.integers(2**31)))
        mask = keep_on_lesion_tissue(drawn, avoided)
        problem = ("only on tissue its class's lesions avoid" if drawn.any() and not mask.any()
                   else implausible_mask(mask, priors[str(label)], generator.spacing))
        if problem is None:
            return mask, "generator", rejected
        rejected.append(problem)
    fallback = (render_ellipsoids(spheres, generator.patch_size, generator.spacing, generator.minimum_voxels())
                if spheres else None)
    if fallback is not None:
        fallback[~brain_patch.astype(bool)] = 0
        fallback = keep_on_lesion_tissue(fallback, avoided)
    if fallback is None or not fallback.any():
        return None, SPHERE_FALLBACK, rejected
    return fallback, SPHERE_FALLBACK, rejected


def _given_lesions(masks: np.ndarray, scan: ModelSpaceScan,
                   patch_size: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class, model-space centre, patch mask) per connected lesion of a label map on the scan's grid."""
    cropped = np.asarray(masks)[bbox_slices(scan.crop_bbox)].astype(np.uint8)
    model = resample_labels(cropped, scan.original_spacing, scan.target_spacing)
    if list(model.shape) != scan.model_shape:  # rounding of the resampled shape: pad / cut to the model grid
        fixed = np.zeros(scan.model_shape, np.uint8)
        common = tuple(slice(0, min(a, b)) for a, b in zip(model.shape, scan.model_shape))
        fixed[common] = model[common]
        model = fixed
    out = []
    for value in np.unique(model[model > 0]):
        ids, count = label_components(model == value)
        for index, centre in enumerate(ndimage.center_of_mass(np.ones_like(ids), ids, range(1, count + 1)), 1):
            centre = np.round(centre).astype(int)
            patch_mask = np.where(extract_patch(ids, centre, patch_size, fill=0) == index, value, 0)
            out.append((int(value), centre, patch_mask.astype(np.uint8)))
    return out


def removal_job(images: np.ndarray, spacing: list[float], label: np.ndarray, plans: Plans, inpainter,
                seed: int = 0, brain_mask: np.ndarray | None = None,
                schedule: InpaintSchedule | None = None, batch_lesions: bool = True) -> EditJob[np.ndarray]:
    """A pseudo-healthy version of a (c, z, y, x) scan: every lesion of ``label`` filled with healthy tissue."""
    rng = np.random.default_rng(seed)
    scan = to_model_space(images, spacing, plans, brain_mask)
    edited = scan.images.copy()
    changed = np.zeros(scan.model_shape, dtype=bool)
    patch = plans.lesion_patch_size
    batches = _LesionBatches(edited, None, changed, patch, inpainter, "remove", schedule, batch_lesions)
    for _, centre, mask in _given_lesions(label, scan, patch):
        yield from batches.make_room(centre)
        batches.add(_PendingLesion(centre, extract_patch(edited, centre, patch, fill=0.0),
                                   extract_patch(scan.brain, centre, patch, fill=False), mask,
                                   int(rng.integers(2**31)), {}))
    yield from batches.flush()
    return paste_back(images, edited, changed, scan, margin_voxels=1)


remove_lesions = run_alone(removal_job)
