"""Image-quality metrics for a 3D lesion inpainter (brain MRI), in its two modes.

* **remove**: a masked region is filled with healthy tissue. When the mask is placed on healthy tissue the
  original scan is the ground truth, and ``inpainting_metrics`` scores the fill like the BraTS 2023
  local-synthesis (inpainting) challenge: percentile normalisation with the ground truth's robust range,
  then MSE and PSNR over the mask voxels and SSIM averaged over the mask voxels.
* **insert**: a lesion is painted into a healthy scan; there is no ground truth. ``ssim_outside`` checks
  that nothing away from the mask changed, ``diff_map_iou`` that the change happened where the mask is, and
  ``lesion_contrast`` how strongly the lesion stands out from its surroundings (same definition as the
  fingerprint's per-lesion contrast, so generated and real lesions compare directly).

Arrays are (z, y, x) volumes or (c, z, y, x) channel stacks; masks are always (z, y, x) and shared by all
channels. Everything is computed in float64 and returned as plain python floats.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lesiongen.fingerprint.lesions import lesion_contrast  # noqa: F401  (one definition, re-exported)

# BraTS 2023 robust range: percentiles of the ground truth that map to 0 and 1.
_PERCENTILE_LOW = 0.5
_PERCENTILE_HIGH = 99.5
# PSNR of a perfect (or near-perfect) reconstruction: caps +inf so channel means and JSON stay finite.
PSNR_CAP_DB = 100.0
# 3.5 sigma of 1.5 gives a radius of 5 voxels, the 11-tap window of Wang et al., torchmetrics and skimage.
_SSIM_TRUNCATE = 3.5
# Same rule as lesiongen.fingerprint.lesions: a shell spread below this fraction of the shell mean counts
# as zero, because rounding noise on a constant background would otherwise give enormous contrasts.
_STD_RTOL = 1e-9
_OTSU_BINS = 256
# Nonzero changes whose spread is below this fraction of the largest count as one size (rounding only). Images are
# float32 (epsilon 1.2e-7): a constant change c on values a few times larger than c comes back as c +- ~1e-6 c.
_EQUAL_RTOL = 1e-5


def normalise_like_brats(
    gt: np.ndarray, prediction: np.ndarray, brain: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip both images to the gt's 0.5/99.5 percentiles and map those bounds to 0 and 1.

    Works on ONE 3D channel (z, y, x); call it per channel. The percentiles are taken over the ``brain``
    voxels, or over the gt's nonzero voxels without a brain mask (the zero background would otherwise pull
    the lower percentile to 0). Both images use the gt's bounds, so the prediction is judged on the gt's
    scale. Unlike the BraTS code the lower bound is not forced to be >= 0, so z-scored data works too.
    Raises ValueError when the gt has no intensity range there.
    """
    gt = np.asarray(gt, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    if gt.ndim != 3:
        raise ValueError(f"normalise_like_brats works on one 3D channel (z, y, x), got shape {gt.shape}")
    if prediction.shape != gt.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from gt shape {gt.shape}")
    if brain is None:
        region = gt != 0
    else:
        region = _spatial_mask(brain, gt.shape, "brain")
    values = gt[region]
    if values.size == 0:
        raise ValueError("no brain (or nonzero gt) voxels to take the normalisation percentiles from")
    low, high = np.percentile(values, [_PERCENTILE_LOW, _PERCENTILE_HIGH])
    if not high > low:
        raise ValueError(f"gt has no intensity range for normalisation (percentiles {low} and {high})")
    scale = high - low
    return (np.clip(gt, low, high) - low) / scale, (np.clip(prediction, low, high) - low) / scale


def ssim_map(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Local SSIM of two same-shape volumes with a Gaussian window (sigma 1.5, 11 taps); same shape out.

    Population (not sample) local statistics, as in Wang et al. and torchmetrics. The borders are padded by
    mirroring without repeating the edge voxel, like torch's reflect padding used by torchmetrics. An image
    compared with itself gives exactly 1 everywhere.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim_map needs equal shapes, got {a.shape} and {b.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=sigma, mode="mirror", truncate=_SSIM_TRUNCATE)

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    # Written so that a == b gives numerator == denominator bit for bit (2*x*x == x*x + x*x in floats).
    numerator = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return numerator / denominator


def inpainting_metrics(
    gt: np.ndarray, prediction: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None
) -> dict[str, float | list[dict[str, float]]]:
    """BraTS-style fill quality: per channel MSE, PSNR and SSIM over the ``mask`` voxels, and their means.

    ``gt`` and ``prediction`` are (c, z, y, x) or (z, y, x); ``mask`` and ``brain`` are (z, y, x). Per
    channel both images go through ``normalise_like_brats``; MSE is over the mask voxels, PSNR is
    10 log10(1 / MSE) (data range 1) capped at ``PSNR_CAP_DB`` = 100 dB (a perfect fill would give +inf),
    and SSIM is the mean over the mask voxels of a map computed on the whole volume, so the context around
    the mask enters the windows at its border. (The BraTS 2023 code zeroes both images outside the mask
    before SSIM and takes percentiles over the whole voided image; here the context is kept, as asked.)
    Returns ``{"mse", "psnr", "ssim"}`` channel means and ``"per_channel"``, a list of such dicts.
    """
    gt_stack = _as_channels(gt, "gt")
    pred_stack = _as_channels(prediction, "prediction")
    if pred_stack.shape != gt_stack.shape:
        raise ValueError(f"prediction shape {np.shape(prediction)} differs from gt shape {np.shape(gt)}")
    mask = _spatial_mask(mask, gt_stack.shape[1:], "mask")
    if not mask.any():
        raise ValueError("mask is empty: there are no inpainted voxels to score")

    per_channel = []
    for gt_channel, pred_channel in zip(gt_stack, pred_stack):
        gt_n, pred_n = normalise_like_brats(gt_channel, pred_channel, brain)
        mse = float(np.mean((gt_n[mask] - pred_n[mask]) ** 2))
        psnr = PSNR_CAP_DB if mse == 0.0 else min(10.0 * math.log10(1.0 / mse), PSNR_CAP_DB)
        ssim = float(np.mean(ssim_map(gt_n, pred_n, data_range=1.0)[mask]))
        per_channel.append({"mse": mse, "psnr": float(psnr), "ssim": ssim})
    means = {key: float(np.mean([entry[key] for entry in per_channel])) for key in ("mse", "psnr", "ssim")}
    return {**means, "per_channel": per_channel}


def in_mask_std_ratio(gt: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float | None:
    """How much texture a fill has: the spread of the prediction's mask voxels over the ground truth's, per channel,
    averaged (1 = as varied as the real tissue; a blurred, mean-like fill is well below 1). PSNR and SSIM reward such
    a blurred fill, so this is reported next to them. None when the ground truth is constant in the mask."""
    gt_stack = _as_channels(gt, "gt").astype(np.float64)
    pred_stack = _as_channels(prediction, "prediction").astype(np.float64)
    mask = _spatial_mask(mask, gt_stack.shape[1:], "mask")
    ratios = [float(p[mask].std() / g[mask].std()) for g, p in zip(gt_stack, pred_stack) if g[mask].std() > 0]
    return float(np.mean(ratios)) if ratios else None


def ssim_outside(original: np.ndarray, edited: np.ndarray, mask: np.ndarray, margin_voxels: int) -> float:
    """Mean SSIM over the voxels more than ``margin_voxels`` (26-neighbour steps) away from the mask.

    For insert mode: an inpainter that leaves the outside alone scores exactly 1.0, because identical
    outside voxels return 1.0 from a direct comparison rather than from floating-point SSIM. Otherwise the
    SSIM map is computed per channel on the whole volume with data_range = the original's range over all
    channels (1 if constant) and averaged over the outside voxels of every channel. With a margin below the
    window radius (5 voxels) changes inside the mask leak into the outside windows and lower the score.
    """
    original_stack = _as_channels(original, "original").astype(np.float64)
    edited_stack = _as_channels(edited, "edited").astype(np.float64)
    if edited_stack.shape != original_stack.shape:
        raise ValueError(f"edited shape {np.shape(edited)} differs from original shape {np.shape(original)}")
    mask = _spatial_mask(mask, original_stack.shape[1:], "mask")
    if margin_voxels < 0:
        raise ValueError(f"margin_voxels must be >= 0, got {margin_voxels}")

    if not mask.any():
        outside = np.ones_like(mask)
    else:
        # Chessboard distance <= n is exactly n iterations of a 26-neighbour binary dilation, in one pass.
        distance = ndimage.distance_transform_cdt(~mask, metric="chessboard")
        outside = distance > margin_voxels
    if not outside.any():
        raise ValueError(f"no voxels are farther than {margin_voxels} voxels from the mask")

    if np.array_equal(original_stack[:, outside], edited_stack[:, outside]):
        return 1.0
    data_range = float(original_stack.max() - original_stack.min())
    data_range = data_range if data_range > 0 else 1.0
    values = [ssim_map(o, e, data_range=data_range)[outside] for o, e in zip(original_stack, edited_stack)]
    return float(np.mean(np.concatenate(values)))


def diff_map_iou(
    original: np.ndarray, edited: np.ndarray, mask: np.ndarray, threshold: float | None = None
) -> float:
    """DiffMapIoU: IoU between the binarised change |edited - original| and the mask.

    It says whether the edit happened where the mask is: 1 when exactly the mask changed, near 0 when the
    change landed elsewhere (or spread far beyond the mask). For (c, z, y, x) inputs the change is the
    maximum over channels. A voxel counts as changed when its change exceeds ``threshold``; by default the
    threshold is Otsu's on the nonzero changes only (unchanged voxels, most of an insert-mode volume, would
    otherwise dominate the histogram), and 0 when all nonzero changes are equal (up to rounding). No change
    at all gives 0.0.
    """
    original_stack = _as_channels(original, "original").astype(np.float64)
    edited_stack = _as_channels(edited, "edited").astype(np.float64)
    if edited_stack.shape != original_stack.shape:
        raise ValueError(f"edited shape {np.shape(edited)} differs from original shape {np.shape(original)}")
    mask = _spatial_mask(mask, original_stack.shape[1:], "mask")
    if not mask.any():
        raise ValueError("mask is empty: IoU with an empty mask is undefined")

    difference = np.abs(edited_stack - original_stack).max(axis=0)
    if threshold is None:
        nonzero = difference[difference > 0]
        if nonzero.size == 0:
            return 0.0
        threshold = _otsu_threshold(nonzero)
    changed = difference > threshold
    union = np.count_nonzero(changed | mask)
    return float(np.count_nonzero(changed & mask) / union)


def _as_channels(array: np.ndarray, name: str) -> np.ndarray:
    """A (z, y, x) or (c, z, y, x) array as (c, z, y, x)."""
    array = np.asarray(array)
    if array.ndim == 3:
        return array[None]
    if array.ndim == 4:
        return array
    raise ValueError(f"{name} must be (z, y, x) or (c, z, y, x), got shape {array.shape}")


def _spatial_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``mask`` as a boolean (z, y, x) array of ``shape`` (nonzero counts as inside)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have the spatial shape {tuple(shape)}, got {mask.shape}")
    return mask.astype(bool)


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of positive ``values``: ``values > threshold`` is exactly the upper class.

    Returned as the largest value of the lower class rather than a bin centre, so no value of the upper
    class's lowest bin falls below it; 0 (everything is upper) when all values are equal up to rounding.
    """
    # Equal changes (up to rounding, e.g. x + 25 - x) have no two classes, and a range this small could not
    # be split into finite-width bins anyway.
    if values.max() - values.min() <= _EQUAL_RTOL * values.max():
        return 0.0
    counts, edges = np.histogram(values, bins=_OTSU_BINS)
    centres = (edges[:-1] + edges[1:]) / 2.0
    # Class weights and means for every split between bin i and bin i+1. The first bin holds the minimum and
    # the last the maximum, so neither cumulative weight is ever zero.
    weight_low = np.cumsum(counts)
    weight_high = np.cumsum(counts[::-1])[::-1]
    mean_low = np.cumsum(counts * centres) / weight_low
    mean_high = (np.cumsum((counts * centres)[::-1]) / weight_high[::-1])[::-1]
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    split = int(np.argmax(between))
    # np.histogram puts a value equal to an inner edge in the upper bin, so "< edge" is the lower class.
    return float(values[values < edges[split + 1]].max())
