"""The three ``lesiongen_predict`` modes on top of the synthesis, segmentation and removal functions."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from lesiongen.inference.predict import InputCase, PredictOptions, run_cases, write_channels
from lesiongen.inference.segment import segment
from lesiongen.inference.sliding_window import resample_logits_to_shape
from lesiongen.inference.synthesis import remove_lesions, synthesize
from lesiongen.io.images import ImageGeometry, write_image
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.training.base import trainer_folder
from lesiongen.training.checkpoint import FINAL
from lesiongen.training.registry import load_trained
from lesiongen.utilities.files import atomic_path, write_json

logger = logging.getLogger(__name__)

VOLUME_TRIES = 5


def _default_fold(dataset: PreprocessedDataset, folder_name: str) -> int | str:
    folder = trainer_folder(dataset.name, folder_name, dataset.plans.plans_name)
    return "all" if (folder / "fold_all" / FINAL).is_file() else 0


def _case_seed(seed: int, case_id: str, variant: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(case_id.encode()) + 7919 * variant) % 2**31


def predict(dataset: PreprocessedDataset, cases: list[InputCase], out: Path, options: PredictOptions,
            folds: list | None, device: str) -> dict[str, int]:
    n_channels = dataset.plans.num_channels
    if options.mode == "seg":
        strategy = options.extra.get("synthetic", "none")
        folds = folds or [_default_fold(dataset, f"seg_{strategy}")]
        models = [load_trained(dataset, "seg", f, device, strategy=strategy) for f in folds]
        work = _seg_work(models, out, options)
    elif options.mode == "remove":
        fold = (folds or [_default_fold(dataset, "inpaint")])[0]
        work = _remove_work(dataset, load_trained(dataset, "inpaint", fold, device), out, options)
    else:
        fold = (folds or [_default_fold(dataset, "inpaint")])[0]
        inpainter = load_trained(dataset, "inpaint", fold, device)
        generator = load_trained(dataset, options.extra.get("masks", "diffmask"), fold, device)
        work = _synth_work(dataset, inpainter, generator, out, options)
    counts = run_cases(cases, out, options, n_channels, work)
    if options.mode == "synth" and options.preview and getattr(work, "gallery", None):
        from lesiongen.inference.previews import gallery

        entries, spacings = zip(*work.gallery)
        gallery(list(entries), list(spacings), out / "previews" / "gallery.png")
    return counts


def _synth_work(dataset, inpainter, generator, out: Path, options: PredictOptions):
    def work(case: InputCase, images, geometry: ImageGeometry, dtypes, label, brain, tissue) -> None:
        spacing = list(geometry.spacing_zyx)
        voxel_mm3 = float(np.prod(spacing))
        for variant in range(options.n_variants):
            seed = _case_seed(options.seed, case.case_id, variant)
            for attempt in range(VOLUME_TRIES):
                result = synthesize(images, spacing, dataset.plans, inpainter, generator, n_lesions=options.n_lesions,
                                    seed=seed + attempt * 104_729, brain_mask=brain, tissue=tissue,
                                    tissue_classes=options.tissue_classes)
                volume = float((result.label > 0).sum()) * voxel_mm3
                low, high = options.volume_range_mm3 or (0.0, np.inf)
                if low <= volume <= high:
                    break
                logger.info("%s variant %d: total lesion volume %.0f mm3 outside [%g, %g]; redrawing", case.case_id,
                            variant, volume, low, high)
            else:
                logger.warning("%s variant %d: no draw within the volume range after %d tries; keeping the last "
                               "(%.0f mm3)", case.case_id, variant, VOLUME_TRIES, volume)
            name = f"{case.case_id}_syn{variant}"
            write_channels(result.images, geometry, out / name, case.ending, dtypes)
            if options.preview:
                from lesiongen.inference.previews import lesion_preview

                lesion_preview(images, result.images, result.label, spacing, out / "previews" / f"{name}.png",
                               channel_names=list(dataset.plans.channel_names.values()))
                if len(work.gallery) < 16:
                    work.gallery.append(((name, result.images, result.label, images), spacing))
            write_image(out / "labels" / f"{name}{case.ending}", result.label, geometry)  # last: case done

    work.gallery = []
    return work


def _remove_work(dataset, inpainter, out: Path, options: PredictOptions):
    def work(case: InputCase, images, geometry: ImageGeometry, dtypes, label, brain, tissue) -> None:
        healed = remove_lesions(images, list(geometry.spacing_zyx), label, dataset.plans, inpainter,
                                seed=_case_seed(options.seed, case.case_id, 0), brain_mask=brain)
        write_channels(healed, geometry, out / case.case_id, case.ending, dtypes)

    return work


def _seg_work(models, out: Path, options: PredictOptions):
    plans = models[0].plans

    def work(case: InputCase, images, geometry: ImageGeometry, dtypes, label, brain, tissue) -> None:
        spacing = list(geometry.spacing_zyx)
        prediction, probabilities, scan = segment(images, spacing, models, brain, mirror=options.mirror)
        if options.save_probabilities:
            full = _probabilities_on_original_grid(probabilities, scan)
            with atomic_path(out / f"{case.case_id}.npz") as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, probabilities=full.astype(np.float16))
            write_json(out / f"{case.case_id}.json", {"labels": plans.labels, "geometry": geometry.to_json(),
                                                       "axes": "class, z, y, x"})
        write_image(out / f"{case.case_id}{case.ending}", prediction, geometry)

    return work


def _probabilities_on_original_grid(probabilities: np.ndarray, scan) -> np.ndarray:
    cropped = resample_logits_to_shape(torch.from_numpy(probabilities), scan.cropped_shape).numpy()
    full = np.zeros((len(probabilities), *scan.original_shape), dtype=np.float32)
    full[0] = 1.0  # outside the brain crop: background for sure
    full[(slice(None), *[slice(a, b) for a, b in scan.crop_bbox])] = cropped
    return full



