"""nnU-Net-style sliding-window prediction of a segmentation network over a whole preprocessed volume.

:func:`predict_sliding_window` tiles the volume with overlapping patches (:func:`sliding_window_steps`), runs the
network on each (optionally with mirroring test-time augmentation), weights every window's logits with a Gaussian
(:func:`gaussian_importance_map`) so that voxels near a window's centre, where the network saw the most context,
count more than voxels at its border, and divides by the summed weights at the end. :func:`resample_logits_to_shape`
brings the averaged logits back to another grid (e.g. the original spacing) before the argmax.
:func:`predict_slicewise` applies a 2D network (the ``2d`` configuration of anisotropic data) slice by slice,
through the same function on windows of depth 1.

Choices worth knowing
---------------------
* The Gaussian is evaluated analytically, centred at ``(p - 1) / 2`` on every axis, so it is exactly symmetric.
  nnU-Net instead blurs a delta at ``p // 2`` with ``scipy.ndimage.gaussian_filter`` (truncated at 4 sigma), which is
  off by half a voxel for even patch sizes; the difference in the averaged logits is negligible.
* Steps follow nnU-Net's ``compute_steps_for_sliding_window`` exactly (including numpy's round-half-to-even).
* Mirrored predictions are cast to float32 before they are summed, so under AMP only the network runs in half
  precision; all accumulation (mirroring, windows, weights) is float32.
* The whole (padded) image and both accumulation buffers live on ``device``; the network must already be there. The
  network's train/eval mode is left as the caller set it.
"""

from __future__ import annotations

import functools
import itertools
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_importance_map",
    "sliding_window_steps",
    "predict_sliding_window",
    "predict_slicewise",
    "resample_logits_to_shape",
]


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1 / 8,
                            value_scaling_factor: float = 10.0) -> torch.Tensor:
    """Gaussian weight map of shape ``patch_size`` (float32, CPU), as in nnU-Net's ``compute_gaussian``.

    Sigma per axis is ``patch * sigma_scale``; the map is scaled so its maximum is ``value_scaling_factor`` and any
    voxel that underflowed to 0 gets the smallest nonzero value, so that summed weights can never be 0.
    """
    patch_size = [int(p) for p in patch_size]
    if not patch_size or any(p < 1 for p in patch_size):
        raise ValueError(f"patch_size must be a non-empty sequence of positive ints, got {patch_size}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    # Separable: product of 1D Gaussians. float64 so the normalisation below makes the maximum exactly the factor,
    # and (x - c) with half-integer c is exact, so the map is exactly mirror-symmetric.
    gmap = torch.ones([1] * len(patch_size), dtype=torch.float64)
    for axis, p in enumerate(patch_size):
        coords = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        g = torch.exp(-0.5 * (coords / (p * sigma_scale)) ** 2)
        shape = [1] * len(patch_size)
        shape[axis] = p
        gmap = gmap * g.reshape(shape)
    gmap = (gmap / gmap.max() * value_scaling_factor).to(torch.float32)
    zero = gmap == 0
    if zero.any():
        gmap[zero] = gmap[~zero].min()
    return gmap


def _step_sizes(step_size: float | Sequence[float], n_axes: int) -> list[float]:
    """One step size per axis (a single value applies to every axis), each in (0, 1]."""
    sizes = [float(step_size)] * n_axes if isinstance(step_size, (int, float)) else [float(s) for s in step_size]
    if len(sizes) != n_axes:
        raise ValueError(f"step_size {step_size} needs one value per axis ({n_axes})")
    if not all(0 < s <= 1 for s in sizes):
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    return sizes


@functools.lru_cache(maxsize=8)
def _cached_importance_map(patch_size: tuple[int, ...]) -> torch.Tensor:
    # one map per patch size for the whole run (one call per case); never written to by the caller
    return gaussian_importance_map(patch_size)


def sliding_window_steps(image_size: Sequence[int], patch_size: Sequence[int],
                         step_size: float | Sequence[float] = 0.5) -> list[list[int]]:
    """Window start positions per axis, nnU-Net's ``compute_steps_for_sliding_window``.

    Per axis: ``n = ceil((image - patch) / (patch * step_size)) + 1`` starts, spread evenly from 0 to
    ``image - patch`` and rounded to ints. ``step_size`` is one value for every axis or one per axis (a depth-1
    axis of slice-wise prediction takes 1: every slice once). The image must be at least as large as the patch on
    every axis (pad first, as :func:`predict_sliding_window` does).
    """
    image_size = [int(s) for s in image_size]
    patch_size = [int(p) for p in patch_size]
    if len(image_size) != len(patch_size):
        raise ValueError(f"image_size {image_size} and patch_size {patch_size} differ in length")
    step_sizes = _step_sizes(step_size, len(patch_size))
    if any(i < p for i, p in zip(image_size, patch_size)):
        raise ValueError(f"image_size {image_size} is smaller than patch_size {patch_size}; pad the image first")
    steps = []
    for i, p, fraction in zip(image_size, patch_size, step_sizes):
        target_step = p * fraction
        num_steps = int(np.ceil((i - p) / target_step)) + 1
        max_start = i - p
        if num_steps > 1:
            actual_step = max_start / (num_steps - 1)
            steps.append([int(np.round(actual_step * k)) for k in range(num_steps)])
        else:
            steps.append([0])
    return steps


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    # Deep-supervision networks return one output per resolution, highest resolution first.
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def _mirror_and_predict(network: torch.nn.Module, x: torch.Tensor, mirror_dims: Sequence[int]) -> torch.Tensor:
    """Average of ``flip(net(flip(x)))`` over all subsets of ``mirror_dims`` (tensor dims), the empty one included."""
    prediction = _first_output(network(x)).float()
    combinations = [c for r in range(1, len(mirror_dims) + 1) for c in itertools.combinations(mirror_dims, r)]
    for dims in combinations:
        prediction += torch.flip(_first_output(network(torch.flip(x, dims))).float(), dims)
    return prediction / (len(combinations) + 1)


def _pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad spatial axes up to ``patch_size`` (extra voxel after, like nnU-Net's ``pad_nd_image``).

    Returns the padded image and the spatial slices that crop it back.
    """
    spatial = image.shape[1:]
    below = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    above = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, below)]
    crop = tuple(slice(b, b + s) for b, s in zip(below, spatial))
    if not any(below) and not any(above):
        return image, crop
    pad: list[int] = []
    for b, a in zip(reversed(below), reversed(above)):  # F.pad takes (before, after) pairs from the last dim back
        pad += [b, a]
    return F.pad(image, pad, mode="constant", value=0.0), crop


@torch.no_grad()
def predict_sliding_window(network: torch.nn.Module, image: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                           num_classes: int, step_size: float | Sequence[float] = 0.5, use_gaussian: bool = True,
                           mirror_axes: Sequence[int] | None = (0, 1, 2), device: torch.device | str = "cpu",
                           batch_size: int = 1, use_amp: bool | None = None,
                           progress: bool = False) -> torch.Tensor:
    """Logits of ``network`` over the whole ``image``, averaged over overlapping windows.

    Args:
        network: maps ``(b, c, *patch_size)`` to ``(b, num_classes, *patch_size)`` (or a list/tuple of outputs, of
            which the first is used). Must already be on ``device``; its train/eval mode is not touched.
        image: ``(c, *spatial)`` preprocessed volume (numpy or torch, any device); cast to float32.
        patch_size: spatial window size.
        num_classes: number of output channels.
        step_size: window stride as a fraction of the patch (0.5 = at least 50 % overlap for even patches); one
            value or one per spatial axis.
        use_gaussian: weight windows with :func:`gaussian_importance_map` (else uniformly).
        mirror_axes: spatial axes (0 = first spatial axis) for mirroring TTA; ``None`` or empty disables it.
        device: where the network runs and the buffers live.
        batch_size: number of windows per forward pass.
        use_amp: autocast on CUDA when ``None`` or ``True``; never on other devices.
        progress: show a tqdm bar over windows.

    Returns:
        ``(num_classes, *spatial)`` float32 logits on CPU, same spatial shape as ``image``.
    """
    device = torch.device(device)
    patch_size = tuple(int(p) for p in patch_size)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if image.ndim != len(patch_size) + 1:
        raise ValueError(f"image must be (c, *spatial) with {len(patch_size)} spatial axes to match patch_size "
                         f"{patch_size}, got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_spatial = len(patch_size)
    mirror_axes = tuple(sorted(set(int(a) for a in mirror_axes))) if mirror_axes else ()
    if any(not 0 <= a < n_spatial for a in mirror_axes):
        raise ValueError(f"mirror_axes {mirror_axes} must be spatial axes in [0, {n_spatial})")
    mirror_dims = [a + 2 for a in mirror_axes]  # + batch and channel dims

    image = image.to(device=device, dtype=torch.float32)
    padded, crop = _pad_to_patch(image, patch_size)
    padded_spatial = tuple(padded.shape[1:])

    steps = sliding_window_steps(padded_spatial, patch_size, step_size)
    slicers = [tuple(slice(s, s + p) for s, p in zip(starts, patch_size)) for starts in itertools.product(*steps)]

    if use_gaussian:
        weight = _cached_importance_map(patch_size).to(device)
    else:
        weight = torch.ones(patch_size, dtype=torch.float32, device=device)
    logits = torch.zeros((num_classes, *padded_spatial), dtype=torch.float32, device=device)
    weight_sum = torch.zeros(padded_spatial, dtype=torch.float32, device=device)

    # Autocast only on CUDA: CPU autocast (bfloat16) is slow and lossy for no benefit here.
    amp = device.type == "cuda" and (use_amp is None or use_amp)
    autocast = torch.autocast(device.type) if amp else nullcontext()

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(slicers), desc="sliding window", unit="window")
    try:
        for first in range(0, len(slicers), batch_size):
            batch_slicers = slicers[first:first + batch_size]
            batch = torch.stack([padded[(slice(None), *sl)] for sl in batch_slicers])
            with autocast:
                prediction = _mirror_and_predict(network, batch, mirror_dims)
            expected = (len(batch_slicers), num_classes, *patch_size)
            if tuple(prediction.shape) != expected:
                raise ValueError(f"network output has shape {tuple(prediction.shape)}, expected {expected}")
            for pred, sl in zip(prediction, batch_slicers):
                logits[(slice(None), *sl)].addcmul_(pred, weight)  # in place: no window-sized temporary
                weight_sum[sl] += weight
            if bar is not None:
                bar.update(len(batch_slicers))
    finally:
        if bar is not None:
            bar.close()

    # Every voxel is covered by at least one window and weights are > 0, so no division by zero.
    logits /= weight_sum
    return logits[(slice(None), *crop)].contiguous().cpu()


class _DepthOneWindows(torch.nn.Module):
    """A 2D network seen as a 3D one on depth-1 windows: ``(b, c, 1, h, w)`` in, ``(b, k, 1, h, w)`` out."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first_output(self.network(x[:, :, 0]))[:, :, None]


def predict_slicewise(network: torch.nn.Module, image: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                      num_classes: int, slice_axis: int, step_size: float = 0.5, use_gaussian: bool = True,
                      mirror_axes: Sequence[int] | None = None, device: torch.device | str = "cpu",
                      batch_size: int = 1, use_amp: bool | None = None, progress: bool = False) -> torch.Tensor:
    """Logits of a 2D ``network`` over a whole volume, slice by slice along ``slice_axis``.

    Each slice is tiled in-plane exactly as :func:`predict_sliding_window` tiles a volume (same steps, Gaussian and
    mirroring; it does the work, on windows of depth 1 and step 1 along the slices, so every slice is predicted
    once). ``network`` maps ``(b, c, *patch_size)`` to ``(b, num_classes, *patch_size)``; ``patch_size`` holds the
    in-plane axes in volume order; ``mirror_axes`` are volume axes other than ``slice_axis``.

    Returns ``(num_classes, *spatial)`` float32 logits on CPU, same spatial shape as ``image``.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    n_spatial = image.ndim - 1
    if not 0 <= slice_axis < n_spatial or len(patch_size) != n_spatial - 1:
        raise ValueError(f"slice_axis {slice_axis} and in-plane patch {list(patch_size)} do not fit an image of "
                         f"shape {tuple(image.shape)}")
    mirror_axes = sorted(set(int(a) for a in mirror_axes)) if mirror_axes else []
    if slice_axis in mirror_axes:
        raise ValueError(f"mirror_axes {mirror_axes} include the slice axis {slice_axis}")
    order = [slice_axis] + [a for a in range(n_spatial) if a != slice_axis]  # slices first, in-plane axes after
    stacked = image.permute(0, *[a + 1 for a in order])
    logits = predict_sliding_window(_DepthOneWindows(network), stacked, (1, *patch_size), num_classes,
                                    step_size=(1.0, *[step_size] * (n_spatial - 1)), use_gaussian=use_gaussian,
                                    mirror_axes=[order.index(a) for a in mirror_axes], device=device,
                                    batch_size=batch_size, use_amp=use_amp, progress=progress)
    return logits.permute(0, *[order.index(a) + 1 for a in range(n_spatial)]).contiguous()


def resample_logits_to_shape(logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize ``(c, *spatial)`` logits to ``(c, *shape)`` with (tri)linear interpolation, float32, same device.

    Uses ``align_corners=False`` so voxel edges line up (the same grid convention as resampling with
    ``grid_mode=True``). Logits rather than a label map are resampled so the argmax can be taken afterwards.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != logits.ndim - 1:
        raise ValueError(f"shape {shape} must have one entry per spatial axis of logits {tuple(logits.shape)}")
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    if len(shape) not in modes:
        raise ValueError(f"only 1 to 3 spatial axes are supported, got {len(shape)}")
    logits = logits.float()
    if tuple(logits.shape[1:]) == shape:
        return logits.clone()
    return F.interpolate(logits[None], size=shape, mode=modes[len(shape)], align_corners=False)[0]
