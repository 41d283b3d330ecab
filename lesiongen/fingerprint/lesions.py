"""Per-lesion statistics: connected components of a label map with their geometry, tissue and contrast.

Components are found per lesion class with 26-connectivity. Everything per component is computed inside the
component's bounding box padded by the shell width, so the cost scales with lesion size, not volume size.
Every number returned is a finite plain python float or int, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesiongen.fingerprint.spheres import minimum_enclosing_sphere
from lesiongen.utilities.components import CONNECTIVITY_26

# Width of the shell around a lesion (its contrast and the tissue it borders are measured there).
SHELL_MM = 3.0
# Shell intensity spread below this fraction of the shell mean counts as zero (rounding noise on a
# constant background would otherwise give enormous contrasts).
_STD_RTOL = 1e-9


@dataclass
class LesionComponent:
    """Statistics of one connected lesion component."""

    label: int  # lesion class value from the label map
    voxel_count: int
    volume_mm3: float
    bounding_radius_mm: float  # minimum enclosing sphere radius of the voxel centres, mm
    centroid_voxel: list[float]  # (z, y, x) in array index coordinates
    centroid_relative: list[float]  # centroid position within the brain bounding box, each in [0, 1]
    extent_voxels: list[int]  # bounding-box size (z, y, x)
    extent_mm: list[float]
    semi_axes_mm: list[float]  # ellipsoid semi-axes from the principal moments, descending; zeros for 1 voxel
    tissue_class: int  # most frequent tissue label under the lesion voxels (0 when no tissue map)
    contrast: list[float]  # per channel: (mean in lesion - mean in shell) / std in shell
    intensity_ratio: list[float]  # per channel: mean in lesion / mean in shell
    # share of each tissue class (str(value)) among the shell's voxels: what the lesion borders; None without a
    # tissue map (and in fingerprints written before it was recorded)
    shell_tissue: dict[str, float] | None = None
    # share of each tissue class (str(value)) among the lesion's own voxels: what lesions may cover (synthetic masks
    # are kept off the rest); None without a tissue map (and in fingerprints written before it was recorded)
    lesion_tissue: dict[str, float] | None = None


def analyse_lesions(
    label: np.ndarray,
    spacing: Sequence[float],
    images: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    shell_mm: float = SHELL_MM,
) -> list[LesionComponent]:
    """Connected lesion components of ``label`` (per class, 26-connected) with their statistics.

    ``images`` is (c, z, y, x) raw intensities, ``tissue`` an integer tissue map and ``brain_mask`` a boolean
    mask, all matching ``label``'s (z, y, x) shape. Without a brain mask the nonzero region of the images
    (or the whole volume) is used. The contrast shell is the brain voxels within ``shell_mm`` mm of the
    component that belong to no lesion. Components are ordered by class, then by component index.
    """
    label = as_label_array(label)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing must be 3 positive values (z, y, x), got {spacing}")
    if images is not None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != label.shape:
            raise ValueError(f"images must be (c, *{label.shape}), got {images.shape}")
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != label.shape:
            raise ValueError(f"tissue shape {tissue.shape} differs from label shape {label.shape}")
    if brain_mask is not None:
        brain_mask = np.asarray(brain_mask, dtype=bool)
        if brain_mask.shape != label.shape:
            raise ValueError(f"brain_mask shape {brain_mask.shape} differs from label shape {label.shape}")
    elif images is not None:
        brain_mask = images.any(axis=0)

    # One find_objects pass gives every class's bounding box, so labelling never touches the full volume.
    class_boxes = ndimage.find_objects(label)
    if not any(box is not None for box in class_boxes):
        return []

    lesion_any = label > 0
    brain_lo, brain_size = _brain_box(brain_mask, label.shape)
    voxel_volume = float(np.prod(spacing_arr))
    needs_shell = images is not None or tissue is not None
    pad = [int(math.ceil(shell_mm / s)) for s in spacing_arr] if needs_shell else [0, 0, 0]

    components: list[LesionComponent] = []
    for value, class_box in enumerate(class_boxes, start=1):
        if class_box is None:
            continue
        comp_map, _ = ndimage.label(label[class_box] == value, structure=CONNECTIVITY_26)
        class_offset = [sl.start for sl in class_box]
        for index, comp_box in enumerate(ndimage.find_objects(comp_map), start=1):
            if comp_box is None:
                continue
            box = tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(comp_box, class_offset))
            crop = tuple(
                slice(max(sl.start - p, 0), min(sl.stop + p, n)) for sl, p, n in zip(box, pad, label.shape)
            )
            # Component mask inside the padded crop (the crop may reach beyond the class box).
            comp = np.zeros([sl.stop - sl.start for sl in crop], dtype=bool)
            inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))
            comp[inner] = comp_map[comp_box] == index
            components.append(
                _describe(
                    value, comp, crop, spacing_arr, voxel_volume, brain_lo, brain_size,
                    images, tissue, brain_mask, lesion_any, shell_mm,
                )
            )
    return components


def summarise(values: list[float]) -> dict:
    """Count, mean, std, min, max and 5/25/50/75/95th percentiles as python numbers (zeros when empty).

    Non-finite values are ignored so the summary always serialises to JSON.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    keys = ("mean", "std", "min", "max", "percentile_05", "percentile_25", "median", "percentile_75",
            "percentile_95")
    if arr.size == 0:
        return {"count": 0, **{k: 0.0 for k in keys}}
    p05, p25, p50, p75, p95 = np.percentile(arr, [5.0, 25.0, 50.0, 75.0, 95.0])
    stats = (arr.mean(), arr.std(), arr.min(), arr.max(), p05, p25, p50, p75, p95)
    return {"count": int(arr.size), **{k: float(v) for k, v in zip(keys, stats)}}


def as_label_array(label: np.ndarray) -> np.ndarray:
    """The label map as an integer array, negative values treated as background."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be 3D (z, y, x), got shape {label.shape}")
    if label.dtype.kind == "b":
        return label.astype(np.uint8)
    if label.dtype.kind == "f":
        label = np.rint(label).astype(np.int64)
    elif label.dtype.kind not in "iu":
        raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
    if label.dtype.kind == "i" and label.size and label.min() < 0:
        label = np.where(label > 0, label, 0)
    return label


def _brain_box(brain_mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Lower corner and size (in voxels) of the brain mask's bounding box; the whole volume without one."""
    if brain_mask is not None:
        box = ndimage.find_objects(brain_mask.astype(np.uint8))
        if box and box[0] is not None:
            lo = np.array([sl.start for sl in box[0]], dtype=np.float64)
            size = np.array([sl.stop - sl.start for sl in box[0]], dtype=np.float64)
            return lo, size
    return np.zeros(3), np.asarray(shape, dtype=np.float64)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _describe(
    value: int,
    comp: np.ndarray,
    crop: tuple[slice, ...],
    spacing: np.ndarray,
    voxel_volume: float,
    brain_lo: np.ndarray,
    brain_size: np.ndarray,
    images: np.ndarray | None,
    tissue: np.ndarray | None,
    brain_mask: np.ndarray | None,
    lesion_any: np.ndarray,
    shell_mm: float,
) -> LesionComponent:
    """Statistics of one component given as a mask ``comp`` over the volume region ``crop``."""
    offset = np.array([sl.start for sl in crop], dtype=np.float64)
    idx = np.argwhere(comp)
    count = len(idx)
    centroid = idx.mean(axis=0) + offset
    # Voxels as unit cells: the middle of the brain box is 0.5, the outer faces of its edge voxels 0 and 1.
    relative = np.clip((centroid - brain_lo + 0.5) / brain_size, 0.0, 1.0)
    extent = idx.max(axis=0) - idx.min(axis=0) + 1

    coords_mm = idx * spacing
    if count > 1:
        eig = np.linalg.eigvalsh(np.cov(coords_mm, rowvar=False, bias=True))
        semi_axes = np.sqrt(5.0 * np.clip(eig[::-1], 0.0, None))  # solid ellipsoid: variance = a^2 / 5
    else:
        semi_axes = np.zeros(3)

    # Only surface voxels can be extreme points, which keeps the hull and sphere work small.
    surface = comp & ~ndimage.binary_erosion(comp)
    _, radius = minimum_enclosing_sphere(np.argwhere(surface) * spacing)

    needs_shell = images is not None or tissue is not None
    shell = _shell(comp, crop, spacing, brain_mask, lesion_any, shell_mm) if needs_shell else None
    tissue_class = 0
    shell_tissue = lesion_tissue = None
    if tissue is not None:
        lesion_tissue = _shares(tissue[crop][comp])
        tissue_class = int(max(lesion_tissue, key=lesion_tissue.get))  # ties: the smallest tissue label (first key)
        shell_tissue = _shares(tissue[crop][shell])

    contrast: list[float] = []
    ratio: list[float] = []
    if images is not None:
        for channel in images:
            region = channel[crop]
            lesion_mean = float(np.mean(region[comp], dtype=np.float64))
            shell_values = region[shell].astype(np.float64)
            if shell_values.size == 0:
                contrast.append(0.0)
                ratio.append(0.0)
                continue
            shell_mean = float(shell_values.mean())
            shell_std = float(shell_values.std())
            spread_ok = shell_std > _STD_RTOL * max(abs(shell_mean), np.finfo(np.float64).tiny)
            contrast.append(_finite((lesion_mean - shell_mean) / shell_std) if spread_ok else 0.0)
            ratio.append(_finite(lesion_mean / shell_mean) if shell_mean != 0.0 else 0.0)

    return LesionComponent(
        label=int(value),
        voxel_count=int(count),
        volume_mm3=float(count * voxel_volume),
        bounding_radius_mm=_finite(radius),
        centroid_voxel=[float(c) for c in centroid],
        centroid_relative=[float(r) for r in relative],
        extent_voxels=[int(e) for e in extent],
        extent_mm=[float(e * s) for e, s in zip(extent, spacing)],
        semi_axes_mm=[_finite(a) for a in semi_axes],
        tissue_class=tissue_class,
        contrast=contrast,
        intensity_ratio=ratio,
        shell_tissue=shell_tissue,
        lesion_tissue=lesion_tissue,
    )


def _shares(values: np.ndarray) -> dict[str, float]:
    """Share of each value among ``values`` (str keys, ascending); empty for no values."""
    if values.size == 0:
        return {}
    classes, counts = np.unique(values, return_counts=True)
    return {str(int(c)): float(n / values.size) for c, n in zip(classes, counts)}


def _shell(
    comp: np.ndarray,
    crop: tuple[slice, ...],
    spacing: np.ndarray,
    brain_mask: np.ndarray | None,
    lesion_any: np.ndarray,
    shell_mm: float,
) -> np.ndarray:
    """Brain, non-lesion voxels of the crop within ``shell_mm`` mm (anisotropic) of the component."""
    # The crop holds the whole component, so distances to its nearest voxel are exact inside the crop.
    distance = ndimage.distance_transform_edt(~comp, sampling=spacing)
    shell = (distance <= shell_mm) & ~lesion_any[crop]
    if brain_mask is not None:
        shell &= brain_mask[crop]
    return shell


# ------------------------------------------------------------------------------------ contrast in a patch


def lesion_shell_statistics(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, shell_voxels: int = 2
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel (mean in the lesion, mean in its shell, std in its shell), float64; NaN where the shell is empty.

    ``image`` is (c, z, y, x) (a (z, y, x) volume counts as one channel); the shell is the ``brain`` voxels within
    Euclidean distance ``shell_voxels`` of the lesion that are not lesion — the fingerprint's rule (:func:`_shell`)
    with unit spacing. Raises ValueError for an empty lesion.
    """
    stack = np.asarray(image)
    stack = stack[None] if stack.ndim == 3 else stack
    lesion, brain = np.asarray(lesion, dtype=bool), np.asarray(brain, dtype=bool)
    if stack.ndim != 4 or lesion.shape != stack.shape[1:] or brain.shape != stack.shape[1:]:
        raise ValueError(f"image {stack.shape}, lesion {lesion.shape} and brain {brain.shape} do not fit together")
    if shell_voxels < 0:
        raise ValueError(f"shell_voxels must be >= 0, got {shell_voxels}")
    if not lesion.any():
        raise ValueError("lesion mask is empty: contrast is undefined")
    # the lesion's bounding box padded by the shell width: exact distances, cost scaling with the lesion
    box = ndimage.find_objects(lesion.astype(np.uint8))[0]
    crop = tuple(slice(max(sl.start - shell_voxels, 0), min(sl.stop + shell_voxels, n))
                 for sl, n in zip(box, lesion.shape))
    lesion_crop = lesion[crop]
    shell = (ndimage.distance_transform_edt(~lesion_crop) <= shell_voxels) & ~lesion_crop & brain[crop]
    region = stack[(slice(None), *crop)].astype(np.float64)
    inside = region[:, lesion_crop].mean(axis=1)
    if not shell.any():
        nan = np.full(len(stack), np.nan)
        return inside, nan, nan
    around = region[:, shell]
    return inside, around.mean(axis=1), around.std(axis=1)


def lesion_contrast(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, shell_voxels: int = 2) -> list[float]:
    """Per channel (mean in lesion - mean in shell) / std in shell: the fingerprint's lesion contrast, measured in a
    patch (the one definition the inpainter's condition, its calibration and the evaluation share).

    As in the fingerprint, a channel whose shell is empty or has (relatively) zero spread gives 0.0, and a
    non-finite value becomes 0.0. Raises ValueError for an empty lesion.
    """
    inside, shell_mean, shell_std = lesion_shell_statistics(image, lesion, brain, shell_voxels)
    contrasts = []
    for lesion_mean, mean, std in zip(inside, shell_mean, shell_std):
        spread_ok = np.isfinite(std) and std > _STD_RTOL * max(abs(mean), np.finfo(np.float64).tiny)
        contrasts.append(_finite((lesion_mean - mean) / std) if spread_ok else 0.0)
    return contrasts
