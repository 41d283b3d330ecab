"""Quality of the inpainter on the fold's validation lesion patches (never seen in its training).

(a) remove mode — on real lesions (no ground truth: how much lesion contrast is left) and on healthy tissue
    under fake masks (a validation lesion's shape moved onto lesion-free brain of the same patch: the tissue that
    was there is the ground truth), scored with MSE / PSNR / SSIM inside the mask after BraTS-style normalisation;
(b) insert mode — into the same healthy places: SSIM outside the dilated mask (must be 1.0), DiffMapIoU (did the
    change happen where the mask is) and the inserted lesions' contrasts and intensity steps against the real
    validation lesions' — with the model's calibration, with the calibration to contrasts where the model
    calibrates to steps, and without calibration;
(c) the same for the full DDPM + jumps schedule on a few patches, so the fast sampler's quality loss is measured.

``sampling`` evaluates the inpainter with another sampler than its own (a preset such as ``few_step``); the report
gives the network evaluations and seconds per patch of each mode with it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from lesiongen.diffusion.inpainting import InpaintSchedule, edit_region, painted_lesion
from lesiongen.inference.placement import avoided_tissue, lesion_tissue_classes
from lesiongen.evaluation.inpainting_metrics import (diff_map_iou, in_mask_std_ratio, inpainting_metrics,
                                                     lesion_contrast, ssim_outside)
from lesiongen.paths import results_root
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.preprocessing.lesion_patches import load_lesion_patches, relocate_shape
from lesiongen.models.inpainter import INSERT, REMOVE, Inpainter, class_edges, class_step
from lesiongen.models.registry import load_trained_model
from lesiongen.planning.plans import MODEL_SAMPLING
from lesiongen.planning.priors import fold_sphere_priors
from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits
from lesiongen.utilities.provenance import code_version
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, write_json

logger = logging.getLogger(__name__)

REPORT_JSON = "inpainting_evaluation.json"
REPORT_PNG = "inpainting_evaluation.png"


def moved_masks(masks: np.ndarray, brain: np.ndarray, margin: int, rng: np.random.Generator,
                tissue: np.ndarray | None = None, allowed: dict[int, list[int] | None] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each patch's lesion shape moved onto lesion-free brain (fake masks on healthy tissue); which worked; and the
    voxels an insertion leaves as they were. With ``tissue`` maps and ``allowed`` (lesion class -> the tissue classes
    its lesions may cover, ``placement.lesion_tissue_classes``), the shape lies wholly on allowed tissue and the other
    tissue is left as it was, as whole-scan synthesis does."""
    out = np.zeros_like(masks)
    ok = np.zeros(len(masks), dtype=bool)
    kept = np.zeros(masks.shape, dtype=bool)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask > 0)
        if count == 0:
            continue
        centre = labels[tuple(np.asarray(mask.shape) // 2)]
        lesion = labels == (centre if centre else 1)
        value = int(mask[lesion].max())
        avoided = None if tissue is None or allowed is None else avoided_tissue(tissue[i], allowed.get(value))
        off = np.zeros(mask.shape, bool) if avoided is None else avoided
        moved = relocate_shape(lesion, edit_region(mask > 0, margin + 2) | off, brain[i], rng, tries=32)
        if moved is not None:
            out[i][moved] = value
            ok[i] = True
            kept[i] = off
    return out, ok, kept


def _timed_inpaint(inpainter, images, *args, **kwargs) -> tuple[np.ndarray, dict]:
    """The inpainted patches, and the seconds and network evaluations (counted by the model) per patch."""
    start = time.perf_counter()
    out = inpainter.inpaint(images, *args, **kwargs)
    return out, {"seconds_per_patch": (time.perf_counter() - start) / max(len(images), 1),
                 "network_evaluations_per_patch": float(inpainter.last_evaluations)}


def _remove_scores(inpainter, images, masks, brain, schedule, seed) -> tuple[dict, np.ndarray]:
    healed, speed = _timed_inpaint(inpainter, images, masks, REMOVE, seed=seed, schedule=schedule, brain=brain)
    scores = [{**inpainting_metrics(images[i], healed[i], masks[i] > 0, brain[i]),
               "std_ratio": in_mask_std_ratio(images[i], healed[i], masks[i] > 0)} for i in range(len(images))]
    return {**_mean(scores, ("mse", "psnr", "ssim", "std_ratio")), "speed": speed}, healed


@dataclasses.dataclass
class _Inserted:
    """Insert mode on a set of patches: the mean scores, the patches, and per lesion its contrast, intensity step
    and first-ring edge step (NaN where the ring or its surroundings are empty)."""
    scores: dict
    patches: np.ndarray
    contrasts: np.ndarray
    steps: np.ndarray
    edges: np.ndarray


def _insert_scores(inpainter, images, masks, brain, schedule, seed, calibrate: bool | None = None,
                   kept: np.ndarray | None = None) -> _Inserted:
    inserted, speed = _timed_inpaint(inpainter, images, masks, INSERT, seed=seed, schedule=schedule, brain=brain,
                                     calibrate=calibrate)
    if kept is not None:  # tissue the lesions avoid stays as it was, as in whole-scan synthesis
        inserted = np.where(kept[:, None], images, inserted)
    rows = []
    for i in range(len(images)):
        lesion = masks[i] > 0
        rows.append({"ssim_outside": ssim_outside(images[i], inserted[i], lesion, inpainter.margin_voxels),
                     "diff_map_iou": diff_map_iou(images[i], inserted[i], lesion),
                     "label_growth": label_growth(images[i], inserted[i], masks[i], inpainter.margin_voxels,
                                                  brain[i])})
    lesions = [(inserted[i], masks[i] > 0, brain[i]) for i in range(len(images))]
    return _Inserted({**_mean(rows, ("ssim_outside", "diff_map_iou", "label_growth")), "speed": speed}, inserted,
                     np.asarray([lesion_contrast(*lesion) for lesion in lesions]),
                     np.asarray([class_step(*lesion) for lesion in lesions]),
                     np.asarray([class_edges(*lesion, inpainter.margin_voxels, rings=inpainter.config.edge_rings)[0]
                                 for lesion in lesions]))


def label_growth(before: np.ndarray, after: np.ndarray, mask: np.ndarray, margin_voxels: int,
                 brain: np.ndarray) -> float:
    """Voxels of the label that follows what was painted (:func:`painted_lesion`, the label synthetic cases get)
    over the mask's voxels: 1 when the lesion's intensity ends at its mask, more the further the inpainter
    spilled lesion-like intensity into the margin."""
    return float((painted_lesion(before, after, mask, margin_voxels, brain) > 0).sum() / (mask > 0).sum())


def _agreement(real: np.ndarray, inserted: np.ndarray, name: str) -> dict:
    """:func:`contrast_agreement` over the lesions whose value is defined on both sides (edges can be NaN)."""
    real, inserted = real[np.isfinite(real).all(axis=1)], inserted[np.isfinite(inserted).all(axis=1)]
    if len(real) < 2 or len(inserted) < 2:
        return {f"{name}_skipped": f"{len(real)} real and {len(inserted)} inserted lesions with a defined value"}
    return contrast_agreement(real, inserted, name=name)


CONTRAST_PERMUTATIONS = 2000


def contrast_agreement(real: np.ndarray, inserted: np.ndarray, permutations: int = CONTRAST_PERMUTATIONS,
                       name: str = "contrast") -> dict:
    """Per channel: how far the inserted lesions' contrasts (n, C) are from the real ones' — the Wasserstein distance
    in units of the real contrasts' standard deviation (goal <= 0.25) and the ratio of the means (goal 0.9-1.1).
    ``name`` prefixes the keys (``step``: the same comparison of intensity steps, lesion mean - shell mean).

    Two samples of a few dozen values are never at distance 0, even from one distribution (two samples of 16 from
    one normal distribution are 0.41 standard deviations apart on average), so each distance comes with what the
    same sample sizes give when real and inserted contrasts are exchangeable: the mean distance over random
    relabellings of the pooled contrasts (``..._null_over_real_std``, the floor a perfect inserter would show) and
    the share of relabellings at least as far apart as observed (``contrast_wasserstein_p``, a permutation test).
    The ratio of the means comes with a 95 % bootstrap interval (real and inserted lesions resampled independently):
    where the mean contrast is small against its spread, as for T1, only a large sample can pin the ratio down."""
    real, inserted = np.asarray(real, dtype=np.float64), np.asarray(inserted, dtype=np.float64)
    real_std = real.std(axis=0)
    distance = [float(wasserstein_distance(real[:, c], inserted[:, c])) for c in range(real.shape[1])]
    real_mean, inserted_mean = real.mean(axis=0), inserted.mean(axis=0)
    rng = np.random.default_rng(0)  # the same report for the same contrasts
    null_mean, p_values = [], []
    for c, observed in enumerate(distance):
        pooled = np.concatenate([real[:, c], inserted[:, c]])
        null = np.empty(permutations)
        for b in range(permutations):
            shuffled = rng.permutation(pooled)
            null[b] = wasserstein_distance(shuffled[:len(real)], shuffled[len(real):])
        null_mean.append(float(null.mean() / real_std[c]) if real_std[c] > 0 else None)
        p_values.append(float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations)))
    ratio_ci = []
    for c in range(real.shape[1]):
        real_means = real[rng.integers(0, len(real), (permutations, len(real))), c].mean(axis=1)
        inserted_means = inserted[rng.integers(0, len(inserted), (permutations, len(inserted))), c].mean(axis=1)
        ok = real_means != 0
        ratios = inserted_means[ok] / real_means[ok]
        ratio_ci.append([float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if ok.any() else None)
    report = {"real_mean": real_mean.tolist(), "inserted_mean": inserted_mean.tolist(),
              "real_std": real_std.tolist(), "inserted_std": inserted.std(axis=0).tolist(),
              "wasserstein_per_channel": distance,
              "wasserstein_over_real_std": [d / s if s > 0 else None for d, s in zip(distance, real_std)],
              "wasserstein_null_over_real_std": null_mean, "wasserstein_p": p_values,
              "n_real": int(len(real)), "n_inserted": int(len(inserted)),
              "mean_ratio": [float(i / r) if r != 0 else None for i, r in zip(inserted_mean, real_mean)],
              "mean_ratio_ci95": ratio_ci, "real": real.tolist(), "inserted": inserted.tolist()}
    return {f"{name}_{key}": value for key, value in report.items()}


def _mean(rows: list[dict], keys: tuple[str, ...]) -> dict:
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {k: mean([r[k] for r in rows]) for k in keys} | {"n": len(rows)}


def evaluate_inpainting(dataset: PreprocessedDataset, fold: int | str, device: str = "cpu", seed: int = 0,
                        max_patches: int = 16, full_patches: int = 2, output: Path | None = None,
                        sampling: str = MODEL_SAMPLING) -> dict:
    inpainter = load_trained_model(dataset.name, "inpaint", dataset.plans.plans_name, fold, device)
    if not isinstance(inpainter, Inpainter):
        raise LesiongenError(f"{inpainter.checkpoint}: not an inpainter")
    inpainter = inpainter.with_sampling(sampling)
    train_cases, val_cases = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), fold)
    real = load_lesion_patches(dataset.lesion_patch_folder, val_cases)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(real))[:max_patches]
    real = real.subset(pick)
    priors = fold_sphere_priors(dataset.fingerprint, train_cases, dataset.plans)
    allowed = {int(key): lesion_tissue_classes(prior) for key, prior in priors.items()}
    fake, ok, kept = moved_masks(real.masks, real.brain, inpainter.margin_voxels, rng, real.tissue, allowed)
    if not ok.any():
        raise LesiongenError(f"{dataset.name} fold {fold}: no validation patch has room for a fake mask on healthy "
                             "tissue; the patches are too full of lesions")
    healthy = real.subset(np.flatnonzero(ok))
    fake, kept = fake[ok], kept[ok]
    fast, full = inpainter.config.sampling, InpaintSchedule.full()
    report: dict = {"dataset": dataset.name, "fold": str(fold), "validation_cases": val_cases,
                    "patches_real_lesions": len(real), "patches_fake_masks": len(healthy), "seed": seed,
                    "sampling": {"name": sampling, "schedule": dataclasses.asdict(fast)},
                    # per lesion class, the tissue classes fake masks lie on (None: any; synthesis's rule)
                    "lesion_tissue_classes": {str(k): v for k, v in allowed.items()},
                    "provenance": {**code_version(), "models": {"inpainter": inpainter.record()}}}

    start = time.perf_counter()
    removed_real = inpainter.inpaint(real.images, real.masks, REMOVE, seed=seed, schedule=fast, brain=real.brain)
    before = [lesion_contrast(real.images[i], real.masks[i] > 0, real.brain[i]) for i in range(len(real))]
    after = [lesion_contrast(removed_real[i], real.masks[i] > 0, real.brain[i]) for i in range(len(real))]
    report["remove_real_lesions"] = {"mean_abs_contrast_before": float(np.mean(np.abs(before))),
                                     "mean_abs_contrast_after": float(np.mean(np.abs(after)))}
    report["remove_fake_masks"], healed = _remove_scores(inpainter, healthy.images, fake, healthy.brain, fast, seed)
    real_contrast = np.asarray(before)
    real_lesions = [(real.images[i], real.masks[i] > 0, real.brain[i]) for i in range(len(real))]
    real_step = np.stack([class_step(*lesion) for lesion in real_lesions])
    real_edge = np.stack([class_edges(*lesion, inpainter.margin_voxels, rings=inpainter.config.edge_rings)[0]
                          for lesion in real_lesions])
    # the real lesions' own growth under the same label rule, against the inpainter's healed patches
    report["remove_real_lesions"]["label_growth"] = float(np.mean([
        label_growth(removed_real[i], real.images[i], real.masks[i], inpainter.margin_voxels, real.brain[i])
        for i in range(len(real))]))

    def scored(model, calibrate: bool | None = None) -> tuple[dict, _Inserted]:
        result = _insert_scores(model, healthy.images, fake, healthy.brain, fast, seed, calibrate, kept)
        return {**result.scores, **contrast_agreement(real_contrast, result.contrasts),
                **contrast_agreement(real_step, result.steps, name="step"),
                **_agreement(real_edge, result.edges, name="edge")}, result

    report["insert"], result = scored(inpainter)
    inserted = result.patches
    report["insert"]["contrast_calibrated"] = bool(inpainter.config.calibrate_contrast)
    report["insert"]["calibration_target"] = "step" if inpainter.calibrates_steps(False) else "contrast"
    report["insert"]["edges_calibrated"] = inpainter.calibrates_edges
    # the same patches without each calibration, for comparison
    if inpainter.calibrates_steps(False):
        report["insert_contrast_calibrated"], _ = scored(inpainter.with_calibration_target("contrast"))
    if inpainter.calibrates_edges:
        report["insert_edges_as_painted"], _ = scored(inpainter.with_edge_calibration(False))
    if inpainter.config.calibrate_contrast:  # what the network alone gives
        report["insert_uncalibrated"], _ = scored(inpainter, calibrate=False)
    report["fast_schedule"] = {"network_evaluations_per_patch_insert": int(inpainter.last_evaluations),
                               "seconds": time.perf_counter() - start}

    trained_timesteps = inpainter.config.schedule.trained_timesteps
    if full_patches > 0 and trained_timesteps is not None:  # the full DDPM chain needs every timestep
        logger.info("no full-schedule reference: the inpainter was trained only at timesteps %s",
                    list(trained_timesteps))
        report["full_schedule"] = {"skipped": f"short schedule: trained only at timesteps {list(trained_timesteps)}"}
    elif full_patches > 0:
        k = min(full_patches, len(healthy))
        images, masks, brain, kept_k = healthy.images[:k], fake[:k], healthy.brain[:k], kept[:k]
        fast_remove, _ = _remove_scores(inpainter, images, masks, brain, fast, seed)
        start = time.perf_counter()
        full_remove, _ = _remove_scores(inpainter, images, masks, brain, full, seed)
        full_insert = _insert_scores(inpainter, images, masks, brain, full, seed, kept=kept_k).scores
        report["full_schedule"] = {"patches": k, "remove_fake_masks": full_remove, "insert": full_insert,
                                   "fast_remove_fake_masks_same_patches": fast_remove,
                                   "in_mask_ssim_loss_of_fast": full_remove["ssim"] - fast_remove["ssim"],
                                   "network_evaluations_per_patch_insert": int(inpainter.last_evaluations),
                                   "seconds": time.perf_counter() - start}
    folder = output or results_root() / dataset.name / "inpainting_evaluation" / f"fold_{fold}"
    _figure(folder / REPORT_PNG, healthy.images, fake, inserted, healed, real.images, real.masks, removed_real)
    write_json(folder / REPORT_JSON, report)
    logger.info("wrote %s", folder)
    return report


def _figure(path: Path, images, fake, inserted, healed, real_images, real_masks, removed_real, n: int = 4) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = min(n, len(images)) + min(n, len(real_images))
    fig = Figure(figsize=(10, 2.4 * max(rows, 1)))
    FigureCanvasAgg(fig)
    channel = images.shape[1] - 1  # the last channel (e.g. FLAIR) shows MS lesions best

    def draw_row(row: int, mask: np.ndarray, panels: list[tuple[str, np.ndarray]]) -> None:
        """One example: the panels' slices through the mask's fullest axial slice; the second panel outlines it."""
        z = int(np.argmax((mask > 0).sum(axis=(1, 2))))
        for col, (title, img) in enumerate(panels):
            ax = fig.add_subplot(rows, 4, row * 4 + col + 1)
            ax.imshow(img[channel, z], cmap="gray")
            if col == 1:
                ax.contour(mask[z] > 0, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{title} z={z}", fontsize=8)
            ax.axis("off")

    shown_fake = min(n, len(images))
    for i in range(shown_fake):
        draw_row(i, fake[i], [("input", images[i]), ("mask", images[i]), ("insert", inserted[i]),
                              ("remove (fake mask)", healed[i])])
    for i in range(min(n, len(real_images))):
        draw_row(shown_fake + i, real_masks[i], [("real lesion", real_images[i]), ("lesion mask", real_images[i]),
                                                 ("remove (real)", removed_real[i])])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
