"""Preview PNGs of lesion synthesis results.

``lesion_preview`` draws one PNG per case: a row per synthetic lesion (26-connected component of ``label > 0``,
largest first) with the axial, coronal and sagittal slices through the lesion, each as a before / after pair with
the mask outline on the after panel. ``gallery`` draws one tile per case of a whole run (the axial slice with the
most lesion voxels). Arrays are on the scan's own grid: (z, y, x) or (c, z, y, x); spacing is (z, y, x) in mm.

Figures use ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot state, the user's backend is untouched)
and are written atomically, so a killed run never leaves a half-written PNG under the final name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesiongen.utilities.components import label_components
from lesiongen.utilities.files import atomic_path

DPI = 80
WINDOW_FACTOR = 4.0  # the crop around a lesion is this many times its largest physical extent ...
MIN_WINDOW_MM = 40.0  # ... but at least this wide
PANEL_INCHES = 2.2
TILE_INCHES = 3.0
THIS_LESION = "red"
OTHER_LESIONS = "yellow"

# (name, axis the slice is taken along, the two in-plane axes (rows, columns), origin of imshow).
# Coronal and sagittal slices put z upwards (origin="lower"); the axial slice is shown like the array (y down).
_VIEWS = (
    ("axial", 0, (1, 2), "upper"),
    ("coronal", 1, (0, 2), "lower"),
    ("sagittal", 2, (0, 1), "lower"),
)


@dataclass(frozen=True)
class Lesion:
    """One connected component of ``label > 0``."""

    component: int  # its number in the labelled array
    voxels: int
    volume_mm3: float
    centre: tuple[int, int, int]  # voxel of the component closest to its centroid: every slice through it hits it
    bbox: tuple[slice, slice, slice]


def lesion_components(label: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, list[Lesion]]:
    """26-connected components of ``label > 0``, largest first (ties: lower component number first).

    Returns the labelled array and the components. The centre is the rounded centroid when that voxel belongs to
    the component; otherwise (a ring, a crescent) it is the component's voxel nearest to the centroid in mm.
    """
    spacing = _spacing(spacing)
    label = _spatial(label, "label")
    labelled, n = label_components(label > 0)
    if n == 0:
        return labelled, []
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labelled)
    voxel_volume = float(np.prod(spacing))
    lesions = []
    for k in range(1, n + 1):
        box = boxes[k - 1]
        local = np.argwhere(labelled[box] == k)  # only the bounding box is scanned, not the whole volume
        offset = np.array([s.start for s in box])
        centroid = local.mean(axis=0)
        centre = np.rint(centroid).astype(int)
        if labelled[box][tuple(centre)] != k:
            distance = (((local - centroid) * spacing) ** 2).sum(axis=1)
            centre = local[int(np.argmin(distance))]
        lesions.append(Lesion(component=k, voxels=int(sizes[k]), volume_mm3=float(sizes[k]) * voxel_volume,
                              centre=tuple(int(c) for c in centre + offset), bbox=box))
    lesions.sort(key=lambda lesion: (-lesion.voxels, lesion.component))
    return labelled, lesions


def crop_window(lesion: Lesion, shape: Sequence[int], spacing: Sequence[float]) -> tuple[slice, slice, slice]:
    """A box around the lesion's centre, ``WINDOW_FACTOR`` x its largest extent (at least ``MIN_WINDOW_MM``) wide.

    The side is the same in mm along every axis (so the panels are physically square), hence fewer voxels along
    coarse axes; it is clipped at the volume's border.
    """
    spacing = _spacing(spacing)
    extent_mm = max((s.stop - s.start) * sp for s, sp in zip(lesion.bbox, spacing))
    half_mm = max(WINDOW_FACTOR * extent_mm, MIN_WINDOW_MM) / 2.0
    window = []
    for centre, size, sp in zip(lesion.centre, shape, spacing):
        half = int(math.ceil(half_mm / sp))
        window.append(slice(max(centre - half, 0), min(centre + half + 1, int(size))))
    return tuple(window)


def lesion_preview(
    before: np.ndarray,
    after: np.ndarray,
    label: np.ndarray,
    spacing,
    path: Path,
    channel_names: list[str] | None = None,
    channel: int | None = None,
    max_lesions: int = 6,
) -> int:
    """Write one PNG for a case: a row per lesion (largest first, at most ``max_lesions``); returns how many rows.

    Each row holds axial, coronal and sagittal before / after pairs through the lesion's centre, cropped to
    ``crop_window``, with physical aspect ratios, one grey window per row (1-99 percentiles of the before image in
    the crop) and the outline of this lesion (red) and of any other lesion in the crop (yellow) on the after panels.
    ``channel`` defaults to the last channel (FLAIR-like). Without lesions a single panel says "no lesions".
    """
    if max_lesions < 1:
        raise ValueError(f"max_lesions must be at least 1, got {max_lesions}")
    spacing = _spacing(spacing)
    before_image, channel_name = _channel(before, channel, channel_names, "before")
    after_image, _ = _channel(after, channel, channel_names, "after")
    label = _spatial(label, "label")
    if before_image.shape != after_image.shape or label.shape != after_image.shape:
        raise ValueError(f"spatial shapes differ: before {before_image.shape}, after {after_image.shape}, "
                         f"label {label.shape}")
    labelled, lesions = lesion_components(label, spacing)
    shown = lesions[:max_lesions]

    fig = _figure()
    if not shown:
        fig.set_size_inches(4.0, 4.4)
        ax = fig.add_subplot(1, 1, 1)
        _no_lesion_panel(ax, before_image, after_image, spacing)
        fig.suptitle(f"{Path(path).name} (channel {channel_name})", fontsize=9)
        _save(fig, path)
        return 0

    fig.set_size_inches(6 * PANEL_INCHES, len(shown) * (PANEL_INCHES + 0.55) + 0.5)
    heading = f"{Path(path).name}: channel {channel_name}, {len(lesions)} lesion{'s' if len(lesions) != 1 else ''}"
    if len(shown) < len(lesions):
        heading += f" (largest {len(shown)} shown)"
    fig.suptitle(heading, fontsize=11)
    rows = np.atleast_1d(fig.subfigures(len(shown), 1))
    for number, (row, lesion) in enumerate(zip(rows, shown), start=1):
        window = crop_window(lesion, after_image.shape, spacing)
        vmin, vmax = _intensity_window(before_image[window])
        centre = ", ".join(str(c) for c in lesion.centre)
        row.suptitle(f"lesion {number}: {lesion.volume_mm3:.1f} mm³ ({lesion.voxels} voxels), "
                     f"centre (z, y, x) = ({centre})", fontsize=10)
        axes = row.subplots(1, 6)
        for v, (view, axis, (row_axis, col_axis), origin) in enumerate(_VIEWS):
            index = [window[0], window[1], window[2]]
            index[axis] = lesion.centre[axis]
            index = tuple(index)
            aspect = spacing[row_axis] / spacing[col_axis]
            component = labelled[index]
            for side, image in enumerate((before_image, after_image)):
                ax = axes[2 * v + side]
                ax.imshow(image[index], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin,
                          interpolation="nearest")
                if side == 1:
                    _outline(ax, (component > 0) & (component != lesion.component), OTHER_LESIONS, 0.8)
                    _outline(ax, component == lesion.component, THIS_LESION, 1.2)
                ax.set_title(f"{view} {('before', 'after')[side]}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
    _save(fig, path)
    return len(shown)


def gallery(
    entries: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    spacing_list: list,
    path: Path,
    channel: int | None = None,
    columns: int = 4,
) -> None:
    """Write one PNG for a run: a tile per case ``(name, after, label, before)`` on a grid of ``columns`` columns.

    Each tile is the axial slice of the after image with the most lesion voxels (the middle slice when there is no
    lesion), the lesion outline in red and the case name as title; its grey window is the before image's 1-99
    percentiles on that slice (the after image's when ``before`` is None). The image height grows with the number
    of rows; the width is ``min(columns, len(entries))`` tiles.
    """
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if len(spacing_list) != len(entries):
        raise ValueError(f"{len(entries)} entries but {len(spacing_list)} spacings")
    fig = _figure()
    if not entries:
        fig.set_size_inches(TILE_INCHES, TILE_INCHES)
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no cases", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_axis_off()
        _save(fig, path)
        return
    n_columns = min(columns, len(entries))
    n_rows = math.ceil(len(entries) / n_columns)
    fig.set_size_inches(n_columns * TILE_INCHES, n_rows * (TILE_INCHES + 0.3))
    axes = np.asarray(fig.subplots(n_rows, n_columns, squeeze=False)).ravel()
    for ax, (name, after, label, before), spacing in zip(axes, entries, spacing_list):
        spacing = _spacing(spacing)
        after_image, _ = _channel(after, channel, None, f"after of {name}")
        before_image = after_image if before is None else _channel(before, channel, None, f"before of {name}")[0]
        label = _spatial(label, f"label of {name}")
        if label.shape != after_image.shape or before_image.shape != after_image.shape:
            raise ValueError(f"{name}: spatial shapes differ: after {after_image.shape}, label {label.shape}, "
                             f"before {before_image.shape}")
        mask = label > 0
        per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1)
        lesion_voxels = int(per_slice.sum())
        z = int(np.argmax(per_slice)) if lesion_voxels else mask.shape[0] // 2
        vmin, vmax = _intensity_window(before_image[z])
        ax.imshow(after_image[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=spacing[1] / spacing[2],
                  interpolation="nearest")
        _outline(ax, mask[z], THIS_LESION, 1.0)
        detail = f"z={z}, {lesion_voxels} lesion voxels" if lesion_voxels else "no lesions"
        ax.set_title(f"{name}\n{detail}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(entries):]:
        ax.set_axis_off()
    _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _spacing(spacing) -> np.ndarray:
    values = np.asarray(spacing, dtype=float).ravel()
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    return values


def _spatial(array: np.ndarray, what: str) -> np.ndarray:
    """A (z, y, x) array; a single leading channel is dropped."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{what} must be (z, y, x), got shape {array.shape}")
    return array


def _channel(image: np.ndarray, channel: int | None, names: list[str] | None, what: str) -> tuple[np.ndarray, str]:
    """The (z, y, x) image of one channel (default: the last) and that channel's name."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"{what} must be (z, y, x) or (c, z, y, x), got shape {image.shape}")
    n = image.shape[0]
    index = n - 1 if channel is None else int(channel)
    if not -n <= index < n:
        raise ValueError(f"channel {channel} out of range for {what} with {n} channel(s)")
    index %= n
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} channel names for {n} channel(s)")
    return image[index], (str(names[index]) if names is not None else str(index))


def _intensity_window(region: np.ndarray) -> tuple[float, float]:
    values = np.asarray(region, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if high <= low:  # flat region: fall back to the full range, then to a unit window around the value
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
    return low, high


def _outline(ax, mask: np.ndarray, colour: str, width: float) -> None:
    """The 0.5 contour of a 2-D mask; nothing (and no matplotlib warning) when it is empty, full or too small."""
    if mask.ndim != 2 or min(mask.shape) < 2 or not mask.any() or mask.all():
        return
    ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=width)


def _no_lesion_panel(ax, before_image: np.ndarray, after_image: np.ndarray, spacing: np.ndarray) -> None:
    z = after_image.shape[0] // 2
    if after_image.size:
        vmin, vmax = _intensity_window(before_image[z])
        ax.imshow(after_image[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=spacing[1] / spacing[2],
                  interpolation="nearest", alpha=0.5)
    ax.text(0.5, 0.5, "no lesions", ha="center", va="center", transform=ax.transAxes, fontsize=14,
            color="black", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_title(f"axial z={z} (after)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
