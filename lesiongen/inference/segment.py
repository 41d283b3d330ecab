"""Lesion segmentation of a scan in its own geometry with one or more ``seg`` models (fold ensemble)."""

from __future__ import annotations

import numpy as np
import torch

from lesiongen.inference.scan_space import ModelSpaceScan, to_model_space
from lesiongen.models.sliding_window import resample_logits_to_shape


def probabilities_to_labels(probabilities: np.ndarray, label_values: list[int], crop_bbox: list[list[int]],
                            cropped_shape: list[int], original_shape: list[int]) -> np.ndarray:
    """Model-space class probabilities -> a uint8 label map on the original grid (zeros outside the crop)."""
    if list(probabilities.shape[1:]) != list(cropped_shape):
        probabilities = resample_logits_to_shape(torch.from_numpy(probabilities), cropped_shape).numpy()
    labels = np.asarray(sorted(label_values), dtype=np.uint8)[probabilities.argmax(axis=0)]
    full = np.zeros(original_shape, dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in crop_bbox)] = labels
    return full


def segment(images: np.ndarray, spacing: list[float], models: list, brain_mask: np.ndarray | None = None,
            mirror: bool = True) -> tuple[np.ndarray, np.ndarray, ModelSpaceScan]:
    """(label map on the input grid, mean model-space probabilities, the model-space scan) of a (c, z, y, x) scan.

    ``models`` are segmenters (e.g. one per fold) of one plans file; their softmax outputs are averaged before the
    argmax, as nnU-Net ensembles folds.
    """
    plans = models[0].plans
    scan = to_model_space(images, spacing, plans, brain_mask)
    probabilities = np.mean([m.predict_probabilities(scan.images, mirror=mirror) for m in models], axis=0)
    label = probabilities_to_labels(probabilities, list(plans.labels.values()), scan.crop_bbox, scan.cropped_shape,
                                    scan.original_shape)
    return label, probabilities, scan
