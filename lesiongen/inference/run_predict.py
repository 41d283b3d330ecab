"""The ``lesiongen_predict`` modes, from model folders alone (no raw or preprocessed data needed).

The models come from a results dataset folder (``$lesiongen_results/DatasetXXX_Name``, holding ``TRAINER__PLANS``
model folders) or from one model folder given directly; see :func:`resolve_models`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lesiongen.inference.brain_extraction import check_brain_extraction_labels, extract_brain
from lesiongen.inference.predict import InputCase, LoadedCase, PredictOptions, one_by_one, run_cases, write_channels
from lesiongen.inference.segment import segment
from lesiongen.inference.strategies import SegVariant, seg_variant_name
from lesiongen.inference.synthesis import (EditJob, SynthesisResult, count_fallbacks, removal_job, run_jobs,
                                           synthesis_job)
from lesiongen.io.images import write_image
from lesiongen.models.folder import PLANS_JSON, ModelFolder, trainer_folder_name
from lesiongen.models.inpainter import Inpainter
from lesiongen.models.mask_generators import MaskGenerator
from lesiongen.models.postprocessing import POSTPROCESSING_JSON, Postprocessing, load_postprocessing
from lesiongen.models.registry import MASK_GENERATORS, load_model
from lesiongen.models.segmenter import Segmenter
from lesiongen.models.sliding_window import resample_logits_to_shape
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, write_json
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger(__name__)

VOLUME_TRIES = 5


@dataclass
class PredictionModels:
    """The model folders one prediction run uses; ``main`` decides the input channels."""

    main: ModelFolder  # seg, brainmask: the segmenter; synth / remove: the inpainter
    mask_generator: ModelFolder | None = None  # synth only
    brain_extractor: ModelFolder | None = None  # --brain_model: a seg model trained to extract brains


def resolve_models(source: Path, options: PredictOptions, plans_name: str) -> PredictionModels:
    """The model folders of a run: ``source`` is a results dataset folder (``TRAINER__PLANS`` inside) or one model
    folder (``plans.json`` inside; for synth the inpainter, whose mask generator sits next to it)."""
    segments = options.mode in ("seg", "brainmask")
    if (source / PLANS_JSON).is_file():  # a model folder itself
        folder = ModelFolder(source)
        expected = _seg_variant_name(options) if segments else "inpaint"
        if segments:
            _require_seg_folder(folder, f"-m {options.mode}")
        own = SegVariant.parse(folder.variant)
        if segments and own and options.configuration and own.configuration != options.configuration:
            raise LesiongenError(f"{source}: a {own.configuration} segmentation model folder, not "
                                 f"{options.configuration} as -c asks")
        if not segments and folder.variant != "inpaint":
            raise LesiongenError(f"{source}: a {folder.variant} model folder; -m {options.mode} needs the inpaint "
                                 f"model folder ({expected}__{folder.plans_name})")
        dataset_folder, plans_name = source.parent, folder.plans_name
        main = folder
    else:
        if not source.is_dir():
            raise LesiongenError(f"{source}: model folder not found")
        dataset_folder = source
        variant = _seg_variant_name(options) if segments else "inpaint"
        main = ModelFolder(dataset_folder / trainer_folder_name(variant, plans_name))
    main.check()
    if options.mode == "brainmask":
        check_brain_extraction_labels(main.plans().labels, main.path)
    generator = None
    if options.mode == "synth":
        if options.masks not in MASK_GENERATORS:
            raise LesiongenError(f"--masks {options.masks}: choose one of {', '.join(MASK_GENERATORS)}")
        generator = ModelFolder(dataset_folder / trainer_folder_name(options.masks, plans_name)).check()
    return PredictionModels(main, generator, _brain_extractor(options.brain_model))


def _brain_extractor(path: Path | None) -> ModelFolder | None:
    """The ``--brain_model`` folder: a seg model folder whose labels are background and brain."""
    if path is None:
        return None
    if not (path / PLANS_JSON).is_file():
        raise LesiongenError(f"{path}: --brain_model needs a seg model folder (plans.json inside)")
    folder = _require_seg_folder(ModelFolder(path), "--brain_model")
    folder.check()
    check_brain_extraction_labels(folder.plans().labels, path)
    return folder


def _require_seg_folder(folder: ModelFolder, needed_by: str) -> ModelFolder:
    if not folder.variant.startswith("seg_"):
        raise LesiongenError(f"{folder.path}: a {folder.variant} model folder; {needed_by} needs a seg_* model folder")
    return folder


def _seg_variant_name(options: PredictOptions) -> str:
    return seg_variant_name(options.synthetic, options.configuration)


def _seg_folds(folder: ModelFolder, folds: list | None) -> list:
    """Given folds, else ``all`` when trained, else every trained fold (an ensemble, as nnU-Net predicts)."""
    if folds:
        return folds
    trained = folder.trained_folds()
    if not trained:
        raise LesiongenError(f"{folder.path}: no trained fold (fold_X/checkpoint_final.pt)")
    return ["all"] if "all" in trained else trained


def predict(models: PredictionModels, cases: list[InputCase], out: Path, options: PredictOptions,
            folds: list | None, device: str) -> dict[str, int]:
    n_channels = len(models.main.plans().channel_names)
    if options.mode in ("seg", "brainmask"):
        segmenters = [load_model(models.main, f, device, expect=Segmenter) for f in _seg_folds(models.main, folds)]
        if options.mode == "seg":
            work = _seg_work(segmenters, out, options, _postprocessing(models.main, options))
        else:
            work = _brainmask_work(segmenters, out, options)
    else:
        fold = (folds or [models.main.default_fold()])[0]
        inpainter = load_model(models.main, fold, device, expect=Inpainter).with_sampling(options.sampling)
        if options.mode == "remove":
            work = _remove_work(inpainter, out, options)
        else:
            generator = load_model(models.mask_generator, fold, device,
                                   expect=MaskGenerator).with_sampling(options.sampling)
            _check_same_plans(inpainter, generator)
            work = _synth_work(inpainter, generator, out, options)
    extractors = []
    if models.brain_extractor is not None:
        _check_same_channels(models.brain_extractor, models.main)
        extractors = [load_model(models.brain_extractor, f, device, expect=Segmenter)
                      for f in _seg_folds(models.brain_extractor, None)]
    steps = _with_extracted_brain(work, extractors, options) if extractors else work
    counts = run_cases(cases, out, options, n_channels, steps, plans=models.main.plans())
    if options.mode == "synth":
        if options.preview and work.gallery:
            from lesiongen.inference.previews import gallery

            entries, spacings = zip(*work.gallery)
            gallery(list(entries), list(spacings), out / "previews" / "gallery.png")
        counts["lesions"] = sum(len(r["lesions"]) for r in work.records.values())
        counts["sphere_fallbacks"] = sum(count_fallbacks(r["lesions"]) for r in work.records.values())
        if work.records:  # this run's cases (cases skipped by --continue were summarised by their own run)
            write_json(out / f"synthesis_summary_part{options.part_id}.json" if options.num_parts > 1 else
                       out / "synthesis_summary.json",
                       {"cases": work.records, "lesions": counts["lesions"],
                        "sphere_fallbacks": counts["sphere_fallbacks"], "mask_generator": generator.record(),
                        "inpainter": inpainter.record(), "seed": options.seed, "sampling": options.sampling,
                        "brain_masks": _brain_mask_source(extractors)})
    return counts


def _brain_mask_source(extractors: list[Segmenter]) -> dict:
    """Where the brain masks of a run came from, for its summary."""
    if not extractors:
        return {"source": "given (--brain_masks), else the scan's nonzero voxels"}
    return {"source": "given (--brain_masks), else extracted by the brain model",
            "brain_model": [m.record() for m in extractors]}


def _check_same_channels(extractor: ModelFolder, main: ModelFolder) -> None:
    """Brain extraction reads the same input files as the main model: the same channels in the same order."""
    theirs, ours = extractor.plans().channel_names, main.plans().channel_names
    if theirs != ours:
        raise LesiongenError(f"{extractor.path}: the brain model takes channels {theirs}, the {main.variant} model "
                             f"{ours}; both read the same input scans, so they must agree")


def _with_extracted_brain(work, extractors: list[Segmenter], options: PredictOptions):
    """``work`` with each case's brain mask extracted by ``extractors`` where no brain mask file was given."""
    def with_brain(loaded: LoadedCase) -> LoadedCase:
        if loaded.brain is not None:
            return loaded
        brain = extract_brain(loaded.images, loaded.spacing, extractors, mirror=options.mirror) > 0
        if not brain.any():
            raise LesiongenError(f"{loaded.case.images[0]}: the brain model ({extractors[0].checkpoint}) found no "
                                 "brain")
        logger.info("%s: brain extracted (%d voxels)", loaded.case.case_id, int(brain.sum()))
        return dataclasses.replace(loaded, brain=brain)

    def work_with_brains(group: list[LoadedCase]) -> None:
        work([with_brain(loaded) for loaded in group])

    return work_with_brains


def _check_same_plans(inpainter: Inpainter, generator: MaskGenerator) -> None:
    a, b = inpainter.provenance.get("plans_sha256"), generator.provenance.get("plans_sha256")
    if a and b and a != b:
        raise LesiongenError(f"{generator.checkpoint}: trained with other plans than the inpainter "
                             f"{inpainter.checkpoint}; both must come from the same plans")


def case_seed(seed: int, case_id: str, variant: int, attempt: int = 0) -> int:
    return derive_seed(seed, "predict", case_id, variant, attempt)


def _synth_work(inpainter: Inpainter, generator: MaskGenerator, out: Path, options: PredictOptions):
    low, high = options.volume_range_mm3 or (0.0, np.inf)

    def variant_job(loaded: LoadedCase, variant: int) -> EditJob[tuple[SynthesisResult, float]]:
        """One synthetic version of a scan, redrawn while its total lesion volume is outside ``--volume_range``."""
        voxel_mm3 = float(np.prod(loaded.spacing))
        for attempt in range(VOLUME_TRIES):
            result = yield from synthesis_job(
                loaded.images, loaded.spacing, inpainter.plans, inpainter, generator, n_lesions=options.n_lesions,
                seed=case_seed(options.seed, loaded.case.case_id, variant, attempt), brain_mask=loaded.brain,
                tissue=loaded.tissue, tissue_classes=options.tissue_classes)
            volume = float((result.label > 0).sum()) * voxel_mm3
            if low <= volume <= high:
                return result, volume
            logger.info("%s variant %d: total lesion volume %.0f mm3 outside [%g, %g]; redrawing",
                        loaded.case.case_id, variant, volume, low, high)
        logger.warning("%s variant %d: no draw within the volume range after %d tries; keeping the last (%.0f mm3)",
                       loaded.case.case_id, variant, VOLUME_TRIES, volume)
        return result, volume

    def write(loaded: LoadedCase, variant: int, result: SynthesisResult, volume: float) -> None:
        """A version's channels, preview and label (last: the case's marker of being done); its record."""
        name = f"{loaded.case.case_id}_syn{variant}"
        work.records[name] = {"lesions": result.lesions, "lesion_volume_mm3": volume}
        write_channels(result.images, loaded.geometry, out / name, loaded.case.ending, loaded.dtypes)
        if options.preview:
            from lesiongen.inference.previews import lesion_preview

            lesion_preview(loaded.images, result.images, result.label, loaded.spacing,
                           out / "previews" / f"{name}.png",
                           channel_names=list(inpainter.plans.channel_names.values()))
            if len(work.gallery) < 16:
                work.gallery.append(((name, result.images, result.label, loaded.images), loaded.spacing))
        write_image(out / "labels" / f"{name}{loaded.case.ending}", result.label, loaded.geometry)

    def work(group: list[LoadedCase]) -> None:
        versions = [(loaded, variant) for loaded in group for variant in range(options.n_variants)]
        # every version of every scan of the group at once: their lesions share the inpainter's batches
        results = run_jobs([variant_job(loaded, variant) for loaded, variant in versions])
        for (loaded, variant), (result, volume) in zip(versions, results, strict=True):
            write(loaded, variant, result, volume)

    work.gallery, work.records = [], {}
    return work


def _remove_work(inpainter: Inpainter, out: Path, options: PredictOptions):
    def work(group: list[LoadedCase]) -> None:
        healed = run_jobs([removal_job(loaded.images, loaded.spacing, loaded.label, inpainter.plans, inpainter,
                                       seed=case_seed(options.seed, loaded.case.case_id, 0), brain_mask=loaded.brain)
                           for loaded in group])
        for loaded, images in zip(group, healed, strict=True):
            write_channels(images, loaded.geometry, out / loaded.case.case_id, loaded.case.ending, loaded.dtypes)

    return work


def _postprocessing(folder: ModelFolder, options: PredictOptions) -> Postprocessing | None:
    if not options.postprocess:
        return None
    postprocessing = load_postprocessing(folder)
    if postprocessing is not None and postprocessing.min_lesion_volume_mm3 > 0:
        logger.info("postprocessing (%s): predicted lesions below %g mm3 are removed; --disable_postprocessing "
                    "keeps them", POSTPROCESSING_JSON, postprocessing.min_lesion_volume_mm3)
    return postprocessing


def _seg_work(models: list[Segmenter], out: Path, options: PredictOptions,
              postprocessing: Postprocessing | None = None):
    plans = models[0].plans

    def work(loaded: LoadedCase) -> None:
        case_id = loaded.case.case_id
        prediction, probabilities, scan = segment(loaded.images, loaded.spacing, models, loaded.brain,
                                                  mirror=options.mirror)
        if postprocessing is not None:  # the probabilities stay the network's
            prediction = postprocessing.apply(prediction, loaded.spacing)
        if options.save_probabilities:
            full = _probabilities_on_original_grid(probabilities, scan)
            with atomic_path(out / f"{case_id}.npz") as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, probabilities=full.astype(np.float16))
            write_json(out / f"{case_id}.json", {"labels": plans.labels, "geometry": loaded.geometry.to_json(),
                                                  "axes": "class, z, y, x"})
        write_image(out / f"{case_id}{loaded.case.ending}", prediction, loaded.geometry)

    return one_by_one(work)


def _brainmask_work(models: list[Segmenter], out: Path, options: PredictOptions):
    def work(loaded: LoadedCase) -> None:
        mask = extract_brain(loaded.images, loaded.spacing, models, mirror=options.mirror)
        if not mask.any():
            logger.warning("%s: no brain found; writing an empty mask", loaded.case.images[0])
        write_image(out / f"{loaded.case.case_id}{loaded.case.ending}", mask, loaded.geometry)

    return one_by_one(work)


def _probabilities_on_original_grid(probabilities: np.ndarray, scan) -> np.ndarray:
    cropped = resample_logits_to_shape(torch.from_numpy(probabilities), scan.cropped_shape).numpy()
    full = np.zeros((len(probabilities), *scan.original_shape), dtype=np.float32)
    full[0] = 1.0  # outside the brain crop: background for sure
    full[(slice(None), *[slice(a, b) for a, b in scan.crop_bbox])] = cropped
    return full
