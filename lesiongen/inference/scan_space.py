"""The round trip between a scan in its own geometry and the model space, for tools that edit a scan locally.

:func:`to_model_space` prepares a scan exactly as :func:`lesiongen.preprocessing.preprocessor.preprocess_case`
does (crop to the brain region, normalise per channel, resample to the plans' target spacing) and keeps everything
needed to go back: the crop box, the shapes, the spacings and, per channel, the normalisation that was applied.
:func:`paste_back` writes an edited model-space image back into the original array so that only voxels near the edit
change and every other voxel stays bit for bit what it was.

Grid alignment
--------------
``resample_images`` resamples with ``scipy.ndimage.zoom(..., grid_mode=True)`` from the cropped shape ``n_c`` to the
model shape ``n_m = new_shape(...)`` per axis, so voxel *edges* line up: model voxel ``j`` samples the cropped array
at ``(j + 0.5) * n_c / n_m - 0.5``. The way back uses the same convention, with the factor taken from the shapes
(``n_m / n_c``, the *effective* spacing ratio after rounding ``new_shape``) rather than from the nominal spacings:
cropped original voxel ``i`` lies at model-space coordinate ``(i + 0.5) * n_m / n_c - 0.5``. Resampling a whole
model volume back this way equals ``ndimage.zoom(model, n_c / n_m, grid_mode=True, mode="nearest")``; only the box
around the edit is computed (``map_coordinates`` on a model-space block padded by :data:`SPLINE_PAD` voxels, so the
spline prefilter sees enough context that the block edge does not matter).

On the axis that ``resample_images`` treats as anisotropic (nearest neighbour along thick slices), the coordinate
is rounded to the nearest model slice, as ``zoom(order=0)`` does; a spline of any order evaluated at integer
coordinates along that axis reproduces the slice, so that axis is nearest-neighbour while the others stay cubic.

Choices worth knowing
---------------------
* The region that is written back is the set of cropped-grid voxels whose *linear* interpolation footprint touches a
  changed model voxel (so a single changed 2 mm voxel still reaches its 1 mm voxels, which a ``>= 0.5`` threshold
  would drop), dilated by ``margin_voxels`` with a 3x3x3 cube (Chebyshev distance). The cubic spline's tail beyond
  that is cut off: voxels outside the region keep their original value exactly.
* Inside the region the voxels take the resampled-back edited *values* (not original + resampled difference), so the
  margin band also carries the resampling blur of the unedited neighbourhood; a margin of 1-2 voxels keeps that seam
  small.
* Voxels outside the crop box are never written; for z-score channels normalised with the brain mask (which are 0
  outside the brain in model space, so carry no information there) voxels outside the original brain mask keep their
  original value too.
* Integer originals are rounded and clipped to the dtype's range; non-finite edited values raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesiongen.diffusion.inpainting import edit_region
from lesiongen.planning.plans import CT, NO_NORM, RESCALE_0_1, ZSCORE, ChannelNormalization, Plans
from lesiongen.preprocessing.normalization import normalize
from lesiongen.preprocessing.resampling import _coarse_axis, resample_images, resample_labels
from lesiongen.utilities.cropping import bbox_slices, brain_region, mask_bbox
from lesiongen.utilities.dtypes import cast_to

SPLINE_PAD = 12  # model voxels of context around a block for the cubic prefilter (0.268**12 ~ 1e-7)


@dataclass
class ModelSpaceScan:
    images: np.ndarray  # (c, z, y, x) float32, cropped, normalised, resampled to target spacing
    brain: np.ndarray  # (z, y, x) bool in model space
    tissue: np.ndarray | None  # (z, y, x) uint8 in model space (label resampling)
    crop_bbox: list[list[int]]  # [[start, stop], ...] in the original array
    original_shape: list[int]  # (z, y, x) of the original array
    original_spacing: list[float]
    target_spacing: list[float]
    cropped_shape: list[int]
    normalization: list[dict]  # per channel: scheme and its parameters (see :func:`denormalise`)
    brain_original: np.ndarray | None = None  # (z, y, x) bool on the cropped original grid

    @property
    def model_shape(self) -> list[int]:
        return list(self.images.shape[1:])

    @property
    def coarse_axis(self) -> int | None:
        """The axis ``resample_images`` interpolates with nearest neighbour (None when isotropic enough)."""
        target = _coarse_axis(self.target_spacing)
        return _coarse_axis(self.original_spacing) if target is None else target


# ------------------------------------------------------------------------------------------- to model space


def _normalisation_params(images: np.ndarray, schemes: list[ChannelNormalization], brain: np.ndarray) -> list[dict]:
    """What :func:`normalize` will apply to each channel, computed the same way (before it runs)."""
    params = [{"channel": c, "scheme": NO_NORM} for c in range(images.shape[0])]
    for scheme in schemes:
        if not 0 <= scheme.channel < images.shape[0]:
            raise ValueError(f"plans normalise channel {scheme.channel}, the scan has {images.shape[0]} channels")
        channel = images[scheme.channel]
        entry = {"channel": scheme.channel, "scheme": scheme.scheme, "use_brain_mask": bool(scheme.use_brain_mask)}
        if scheme.scheme == ZSCORE:
            region = channel[brain] if scheme.use_brain_mask and brain.any() else channel
            entry.update(mean=float(region.mean()), std=float(region.std()))
        elif scheme.scheme == CT:
            entry.update(mean=float(scheme.mean), std=float(scheme.std),
                         clip_lower=float(scheme.clip_lower), clip_upper=float(scheme.clip_upper))
        elif scheme.scheme == RESCALE_0_1:
            entry.update(low=float(channel.min()), high=float(channel.max()))
        elif scheme.scheme != NO_NORM:
            raise ValueError(f"unknown normalisation scheme {scheme.scheme!r}")
        params[scheme.channel] = entry
    return params


def to_model_space(images: np.ndarray, spacing: Sequence[float], plans: Plans, brain_mask: np.ndarray | None = None,
                   tissue: np.ndarray | None = None) -> ModelSpaceScan:
    """Crop, normalise and resample a (c, z, y, x) scan as preprocessing does; keep what is needed to go back.

    ``brain_mask`` (z, y, x) is the brain region when given, else the hole-filled nonzero region of all channels
    (as in preprocessing). ``tissue`` (z, y, x) integer labels follow with label resampling.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (c, z, y, x), got shape {images.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 values (z, y, x), got {spacing}")
    spatial = images.shape[1:]
    for name, array in (("brain_mask", brain_mask), ("tissue", tissue)):
        if array is not None and np.shape(array) != spatial:
            raise ValueError(f"{name} has shape {np.shape(array)}, the images {spatial}")
    brain = brain_region(images, None if brain_mask is None else np.asarray(brain_mask).astype(bool))
    bbox = mask_bbox(brain)
    crop = bbox_slices(bbox)
    cropped = np.array(images[(slice(None), *crop)], dtype=np.float32)  # a copy: normalised in place
    brain_cropped = np.ascontiguousarray(brain[crop], dtype=bool)
    params = _normalisation_params(cropped, plans.normalization, brain_cropped)
    normalize(cropped, plans.normalization, brain_cropped)
    target = [float(t) for t in plans.target_spacing]
    model = resample_images(cropped, spacing, target)
    brain_model = resample_labels(brain_cropped.astype(np.uint8), spacing, target).astype(bool)
    tissue_model = None
    if tissue is not None:
        tissue_model = resample_labels(np.ascontiguousarray(np.asarray(tissue)[crop], dtype=np.uint8), spacing, target)
    return ModelSpaceScan(
        images=np.ascontiguousarray(model, dtype=np.float32),
        brain=brain_model,
        tissue=tissue_model,
        crop_bbox=bbox,
        original_shape=[int(s) for s in spatial],
        original_spacing=spacing,
        target_spacing=target,
        cropped_shape=list(brain_cropped.shape),
        normalization=params,
        brain_original=brain_cropped,
    )


# ------------------------------------------------------------------------------------------- intensities


def _denormalise_channel(values: np.ndarray, params: dict) -> np.ndarray:
    """One channel from the normalised scale back to the original intensity scale, in float64."""
    values = np.asarray(values, dtype=np.float64)
    scheme = params["scheme"]
    if scheme in (ZSCORE, CT):
        return values * max(params["std"], 1e-8) + params["mean"]
    if scheme == RESCALE_0_1:
        return values * max(params["high"] - params["low"], 1e-8) + params["low"]
    if scheme == NO_NORM:
        return values.copy()
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


def denormalise(images: np.ndarray, scan: ModelSpaceScan) -> np.ndarray:
    """Model-space (c, ...) intensities back to the original scale, inverting each channel's normalisation.

    Any spatial shape works (a whole model image or a patch). Not invertible where normalisation lost information:
    z-score channels with the brain mask are 0 outside the brain (they come back as the channel mean), CT channels
    were clipped. The result is float32 for float32 input (float64 for float64).
    """
    images = np.asarray(images)
    if images.shape[0] != len(scan.normalization):
        raise ValueError(f"{images.shape[0]} channels given, the scan has {len(scan.normalization)}")
    dtype = np.result_type(images.dtype, np.float32)
    return np.stack([_denormalise_channel(c, p).astype(dtype) for c, p in zip(images, scan.normalization)])


# ------------------------------------------------------------------------------------------- geometry back


def _model_coordinates(scan: ModelSpaceScan) -> list[np.ndarray]:
    """Per axis, the model-space coordinate of every cropped original voxel (zoom's grid_mode convention)."""
    coarse = scan.coarse_axis
    coords = []
    for axis, (n_m, n_c) in enumerate(zip(scan.model_shape, scan.cropped_shape)):
        c = (np.arange(n_c, dtype=np.float64) + 0.5) * (n_m / n_c) - 0.5
        if axis == coarse and n_m != n_c:
            c = np.floor(c + 0.5)  # nearest neighbour along thick slices, as zoom(order=0)
        coords.append(c)
    return coords


def _footprint_box(mask_model: np.ndarray, coords: list[np.ndarray], support: float) -> list[list[int]] | None:
    """Cropped-grid index ranges whose model coordinates lie strictly within ``support`` of the mask's bbox."""
    if not mask_model.any():
        return None
    box = []
    for (lo, hi), c in zip(mask_bbox(mask_model), coords):
        start = int(np.searchsorted(c, lo - support, side="right"))
        stop = int(np.searchsorted(c, hi - 1 + support, side="left"))
        box.append([start, max(stop, start)])
    return box


def _resample_back(volume: np.ndarray, coords: list[np.ndarray], box: list[list[int]], order: int) -> np.ndarray:
    """``volume`` (model space, z, y, x) sampled at the cropped-grid voxels of ``box``, as float64."""
    block, local = [], []
    pad = SPLINE_PAD if order > 1 else 1
    for (start, stop), c, n in zip(box, coords, volume.shape):
        c = c[start:stop]
        lo = max(int(np.floor(c.min())) - pad, 0)
        hi = min(int(np.ceil(c.max())) + 1 + pad, n)
        block.append(slice(lo, hi))
        local.append(c - lo)
    grid = np.meshgrid(*local, indexing="ij")
    return ndimage.map_coordinates(np.asarray(volume[tuple(block)], dtype=np.float64), grid, order=order,
                                   mode="nearest", output=np.float64)


def _check_model_shape(shape: tuple[int, ...], scan: ModelSpaceScan, what: str) -> None:
    if list(shape) != scan.model_shape:
        raise ValueError(f"{what} has spatial shape {list(shape)}, the model space is {scan.model_shape}")


def _same_grid(scan: ModelSpaceScan) -> bool:
    return scan.model_shape == scan.cropped_shape


def region_to_original(mask_model: np.ndarray, scan: ModelSpaceScan) -> np.ndarray:
    """A (z, y, x) label map in model space on the original grid.

    Each label is resampled as a soft mask with linear interpolation (nearest along an anisotropic axis) and kept
    where it reaches 0.5, later labels overwriting earlier ones, as ``resample_labels`` does; inside the crop box the
    lowest value is the background, outside it the map is 0. Only the bounding box of each label is computed.
    """
    mask_model = np.asarray(mask_model)
    _check_model_shape(mask_model.shape, scan, "mask_model")
    out = np.zeros(scan.original_shape, dtype=mask_model.dtype)
    crop = bbox_slices(scan.crop_bbox)
    if _same_grid(scan):
        out[crop] = mask_model
        return out
    values = np.unique(mask_model)
    cropped = np.full(scan.cropped_shape, values[0], dtype=mask_model.dtype)
    coords = _model_coordinates(scan)
    for value in values[1:]:
        label = mask_model == value
        box = _footprint_box(label, coords, 1.0)
        if any(stop <= start for start, stop in box):
            continue
        soft = _resample_back(label.astype(np.float32), coords, box, order=1)
        cropped[bbox_slices(box)][soft >= 0.5] = value
    out[crop] = cropped
    return out


# ------------------------------------------------------------------------------------------- paste back


def paste_back(original: np.ndarray, edited_model: np.ndarray, changed_model: np.ndarray, scan: ModelSpaceScan,
               margin_voxels: int = 2, as_change: bool = True) -> np.ndarray:
    """The original (c, z, y, x) array with the edited model-space region written back; everything else bitwise equal.

    ``edited_model`` is the model-space (c, z, y, x) image after editing (normalised scale), ``changed_model`` the
    (z, y, x) model-space voxels that may have changed. Voxels of the original grid whose linear footprint touches
    ``changed_model``, dilated by ``margin_voxels`` (cube), restricted to the crop box (and to the brain for
    brain-masked z-score channels), take the edited image resampled back (cubic, see the module docstring) and
    denormalised, cast to the original's dtype (rounded and clipped for integers). Only the box around the change is
    resampled, so the cost scales with the edit, not with the scan.

    With ``as_change`` (the default) the written voxels are the original plus the resampled *change*
    (edited - unedited model image), so the margin band keeps the original's own texture instead of a resampled
    copy of it; otherwise they take the resampled edited values.
    """
    original = np.asarray(original)
    edited_model = np.asarray(edited_model)
    changed = np.asarray(changed_model).astype(bool, copy=False)
    if original.ndim != 4 or list(original.shape[1:]) != list(scan.original_shape):
        raise ValueError(f"original has shape {original.shape}, expected (c, *{scan.original_shape})")
    if edited_model.ndim != 4 or edited_model.shape[0] != original.shape[0]:
        raise ValueError(f"edited_model has shape {edited_model.shape}, expected ({original.shape[0]}, z, y, x)")
    if original.shape[0] != len(scan.normalization):
        raise ValueError(f"original has {original.shape[0]} channels, the scan {len(scan.normalization)}")
    _check_model_shape(edited_model.shape[1:], scan, "edited_model")
    _check_model_shape(changed.shape, scan, "changed_model")
    if margin_voxels < 0:
        raise ValueError(f"margin_voxels must be >= 0, got {margin_voxels}")
    out = original.copy()
    if not changed.any():
        return out

    same_grid = _same_grid(scan)
    coords = _model_coordinates(scan)
    box = mask_bbox(changed) if same_grid else _footprint_box(changed, coords, 1.0)
    if any(stop <= start for start, stop in box):
        return out
    box = [[max(a - margin_voxels, 0), min(b + margin_voxels, n)] for (a, b), n in zip(box, scan.cropped_shape)]
    if same_grid:
        region = changed[bbox_slices(box)].copy()
    else:
        region = _resample_back(changed.astype(np.float32), coords, box, order=1) > 0
    if margin_voxels:
        region = edit_region(region, margin_voxels)
    if not region.any():
        return out
    # tighten to the region before the (costlier) cubic resampling
    inner = mask_bbox(region)
    region = region[bbox_slices(inner)]
    box = [[a + lo, a + hi] for (a, _), (lo, hi) in zip(box, inner)]

    offset = [start for start, _ in scan.crop_bbox]
    target = tuple(slice(o + a, o + b) for o, (a, b) in zip(offset, box))
    brain = None if scan.brain_original is None else scan.brain_original[bbox_slices(box)]
    for channel, params in enumerate(scan.normalization):
        if same_grid:
            values = np.asarray(edited_model[channel][bbox_slices(box)], dtype=np.float64)
        else:
            values = _resample_back(edited_model[channel], coords, box, order=3)
        values = _denormalise_channel(values, params)
        if as_change:
            unedited = np.asarray(scan.images[channel][bbox_slices(box)], dtype=np.float64) if same_grid else \
                _resample_back(scan.images[channel], coords, box, order=3)
            values = original[channel][target].astype(np.float64) + values - _denormalise_channel(unedited, params)
        where = region
        if brain is not None and params["scheme"] == ZSCORE and params.get("use_brain_mask"):
            where = region & brain
        if not np.isfinite(values[where]).all():
            raise ValueError(f"edited_model channel {channel} has non-finite values in the changed region")
        view = out[channel][target]
        view[where] = cast_to(values[where], original.dtype)
    return out
