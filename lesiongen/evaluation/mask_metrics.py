"""Mask realism: distributions of lesion shape statistics, real held-out masks against generated ones.

Masks are lesion-centred patches ``(n, z, y, x)`` of integers: 0 background, 1..K lesion classes and -1 for
outside the brain (treated as background, like every value <= 0). A *lesion* is a 26-connected component of
one class, so two touching lesions of different classes count as two lesions. Per lesion the statistics are

* ``log_volume_mm3``: natural log of voxel count times voxel volume;
* ``radius_mm``: radius of the minimum enclosing sphere of the voxel CENTRES (a single voxel has radius 0, a
  line of 3 voxels along an axis with spacing s has radius s);
* ``sphericity``: ``pi^(1/3) (6 V)^(2/3) / A`` with ``A`` the exposed voxel-face area in mm^2 (every face
  between a lesion voxel and a non-lesion voxel, the patch border included). The staircase voxel surface is
  larger than the true smooth surface, so absolute values are low: about 0.6-0.7 for a voxelised ball and
  0.81 for a single cubic voxel, never 1. Real and generated masks are voxelised identically, so comparing
  their distributions is still fair;
* ``tissue_class``: most frequent tissue label under the lesion (ties: smallest label; 0 without tissue map).

Per patch ``lesions_per_patch`` counts the lesions. ``wasserstein_distances`` compares each metric's 1-D
distribution with ``scipy.stats.wasserstein_distance`` and ``write_report`` writes JSON, a markdown table
(methods side by side) and a figure of overlaid histograms and mid-slice galleries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from lesiongen.fingerprint.spheres import minimum_enclosing_sphere, voxel_points_mm
from lesiongen.utilities.components import CONNECTIVITY_26
from lesiongen.utilities.files import atomic_path, write_json

METRICS = ("log_volume_mm3", "radius_mm", "sphericity", "lesions_per_patch", "tissue_class")
# Metrics with integer values: histograms use one bin per integer.
_DISCRETE = frozenset({"lesions_per_patch", "tissue_class"})
_METRIC_TITLES = {
    "log_volume_mm3": "lesion volume, ln(mm³)",
    "radius_mm": "enclosing-sphere radius (mm)",
    "sphericity": "sphericity (voxel-face area)",
    "lesions_per_patch": "lesions per patch",
    "tissue_class": "tissue class under lesion",
}
GALLERY_SIZE = 8  # masks per gallery row
_HIST_BINS = 30

JSON_NAME = "mask_evaluation.json"
MARKDOWN_NAME = "mask_evaluation.md"
FIGURE_NAME = "mask_evaluation.png"


@dataclass
class MaskStatistics:
    """Per-lesion and per-patch statistics of a set of lesion-mask patches."""

    log_volume_mm3: list[float] = field(default_factory=list)  # per lesion, ln(mm^3)
    radius_mm: list[float] = field(default_factory=list)  # per lesion, enclosing-sphere radius of voxel centres
    sphericity: list[float] = field(default_factory=list)  # per lesion, voxel-face sphericity in (0, 1]
    tissue_class: list[int] = field(default_factory=list)  # per lesion, majority tissue label (0 without)
    lesions_per_patch: list[int] = field(default_factory=list)  # per patch, number of lesions

    def values(self, metric: str) -> np.ndarray:
        """The values of one of ``METRICS`` as a float array."""
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}; expected one of {METRICS}")
        return np.asarray(getattr(self, metric), dtype=np.float64)

    def of_patches(self, patches: Sequence[int] | np.ndarray) -> MaskStatistics:
        """The statistics of the patches ``patches`` (positions in ``lesions_per_patch``; a repeated patch counts
        again, as a bootstrap resample needs), in that order: lesions are listed patch by patch."""
        counts = np.asarray(self.lesions_per_patch, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        patches = np.asarray(patches, dtype=np.int64)
        lesions = (np.concatenate([np.arange(starts[p], starts[p + 1]) for p in patches]) if patches.size
                   else np.zeros(0, np.int64))
        per_lesion = {item.name: np.asarray(getattr(self, item.name))[lesions].tolist()
                      for item in fields(self) if item.name != "lesions_per_patch"}
        return MaskStatistics(**per_lesion, lesions_per_patch=[self.lesions_per_patch[p] for p in patches])


# ------------------------------------------------------------------------------------------- statistics


def mask_statistics(masks: np.ndarray, spacing: Sequence[float], tissue: np.ndarray | None = None) -> MaskStatistics:
    """Statistics of every lesion in ``masks`` (n, z, y, x); ``tissue`` is an optional (n, z, y, x) label map.

    Lesions are listed patch by patch, within a patch by class, then by component index.
    """
    masks = _as_masks(masks, "masks")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or not np.all(np.isfinite(spacing_arr)) or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing must be 3 positive values (z, y, x), got {spacing}")
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != masks.shape:
            raise ValueError(f"tissue shape {tissue.shape} differs from masks shape {masks.shape}")

    voxel_volume = float(np.prod(spacing_arr))
    # Area of a voxel face perpendicular to axis a: product of the other two spacings.
    face_area = np.array([spacing_arr[1] * spacing_arr[2], spacing_arr[0] * spacing_arr[2],
                          spacing_arr[0] * spacing_arr[1]])
    stats = MaskStatistics()
    for i, patch in enumerate(masks):
        count = 0
        class_boxes = ndimage.find_objects(np.where(patch > 0, patch, 0))
        for value, class_box in enumerate(class_boxes, start=1):
            if class_box is None:
                continue
            comp_map, _ = ndimage.label(patch[class_box] == value, structure=CONNECTIVITY_26)
            for index, comp_box in enumerate(ndimage.find_objects(comp_map), start=1):
                if comp_box is None:
                    continue
                comp = comp_map[comp_box] == index
                n_voxels = int(np.count_nonzero(comp))
                volume = n_voxels * voxel_volume
                area = _exposed_face_area(comp, face_area)
                stats.log_volume_mm3.append(math.log(volume))
                stats.radius_mm.append(_radius(comp, spacing_arr))
                stats.sphericity.append(float(math.pi ** (1 / 3) * (6.0 * volume) ** (2 / 3) / area))
                tissue_label = 0
                if tissue is not None:
                    box = tuple(slice(c.start + b.start, c.start + b.stop) for c, b in zip(class_box, comp_box))
                    labels, counts = np.unique(tissue[i][box][comp], return_counts=True)
                    tissue_label = int(labels[np.argmax(counts)])  # ties: the smallest label
                stats.tissue_class.append(tissue_label)
                count += 1
        stats.lesions_per_patch.append(count)
    return stats


def _as_masks(masks: np.ndarray, name: str) -> np.ndarray:
    """``masks`` as a 4-D integer array; raises on other shapes or non-integer values."""
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f"{name} must be 4D (n, z, y, x), got shape {masks.shape}")
    if masks.dtype.kind == "b":
        return masks.astype(np.int8)
    if masks.dtype.kind == "f":
        rounded = np.rint(masks)
        if not np.array_equal(rounded, masks):
            raise ValueError(f"{name} must hold integer labels, got non-integer floats")
        return rounded.astype(np.int64)
    if masks.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {masks.dtype}")
    return masks


def _exposed_face_area(comp: np.ndarray, face_area: np.ndarray) -> float:
    """Total area (mm^2) of the voxel faces between ``comp`` and everything outside it."""
    padded = np.pad(comp, 1, constant_values=False)
    # np.diff on booleans is "not equal": one True per face where the mask switches on or off.
    return float(sum(np.count_nonzero(np.diff(padded, axis=a)) * face_area[a] for a in range(3)))


def _radius(comp: np.ndarray, spacing: np.ndarray) -> float:
    """Minimum enclosing sphere radius (mm) of the voxel centres of ``comp``."""
    # Interior voxels can never be extreme points; dropping them keeps the sphere work small.
    surface = comp & ~ndimage.binary_erosion(comp)
    _, radius = minimum_enclosing_sphere(voxel_points_mm(surface, spacing))
    return float(radius)


# --------------------------------------------------------------------------------------------- comparison


def wasserstein_distances(reference: MaskStatistics, generated: MaskStatistics) -> dict[str, float]:
    """1-D Wasserstein-1 distance per metric between reference and generated values (NaN if a side is empty)."""
    distances: dict[str, float] = {}
    for metric in METRICS:
        ref, gen = reference.values(metric), generated.values(metric)
        distances[metric] = float(wasserstein_distance(ref, gen)) if ref.size and gen.size else math.nan
    return distances


def summarise(stats: MaskStatistics) -> dict:
    """Per metric n, mean, median, q05, q95 (NaN when empty), plus n_patches and empty_patches."""
    summary: dict = {}
    for metric in METRICS:
        values = stats.values(metric)
        if values.size:
            q05, median, q95 = np.percentile(values, [5.0, 50.0, 95.0])
            summary[metric] = {"n": int(values.size), "mean": float(values.mean()), "median": float(median),
                               "q05": float(q05), "q95": float(q95)}
        else:
            summary[metric] = {"n": 0, "mean": math.nan, "median": math.nan, "q05": math.nan, "q95": math.nan}
    summary["n_patches"] = len(stats.lesions_per_patch)
    summary["empty_patches"] = int(sum(1 for c in stats.lesions_per_patch if c == 0))
    return summary


def _mean_volume_mm3(stats: MaskStatistics) -> float:
    """Arithmetic mean lesion volume in mm^3 (NaN without lesions)."""
    values = stats.values("log_volume_mm3")
    return float(np.exp(values).mean()) if values.size else math.nan


def _mean_lesions(stats: MaskStatistics) -> float:
    values = stats.values("lesions_per_patch")
    return float(values.mean()) if values.size else math.nan


# ----------------------------------------------------------------------------------------------- report


def write_report(
    folder: Path,
    reference: MaskStatistics,
    generated: dict[str, MaskStatistics],
    galleries: dict[str, np.ndarray],
    reference_masks: np.ndarray,
    extra: dict | None = None,
) -> dict:
    """Write mask_evaluation.{json,md,png} into ``folder`` atomically and return the JSON content.

    ``galleries`` maps method names to (n, z, y, x) masks of which the first 8 are shown: the axial slice
    through the patch centre, or the nearest slice with lesion voxels when the centre slice has none.
    ``reference_masks`` gives the reference gallery row. ``extra`` is merged into the JSON at top level (a key
    clashing with the report's own keys raises ValueError). NaN values (empty sides) are written as JSON
    null. The JSON file is written last, so its presence marks a complete report.
    """
    folder = Path(folder)
    extra = dict(extra or {})
    report: dict = {
        "metrics": list(METRICS),
        "reference": {"summary": summarise(reference)},
        "methods": {
            name: {"wasserstein": wasserstein_distances(reference, stats), "summary": summarise(stats)}
            for name, stats in generated.items()
        },
    }
    clashes = sorted(set(extra) & set(report))
    if clashes:
        raise ValueError(f"extra keys {clashes} clash with the report's own keys")
    report.update(extra)
    report = _nan_to_none(report)

    reference_masks = _as_masks(reference_masks, "reference_masks")
    gallery_rows = [("reference", reference_masks)]
    for name in [*generated, *(g for g in galleries if g not in generated)]:
        if name in galleries:
            gallery_rows.append((name, _as_masks(galleries[name], f"galleries[{name!r}]")))

    folder.mkdir(parents=True, exist_ok=True)
    _write_figure(folder / FIGURE_NAME, reference, generated, gallery_rows)
    with atomic_path(folder / MARKDOWN_NAME) as tmp:
        tmp.write_text(_markdown(reference, generated))
    write_json(folder / JSON_NAME, report)
    return report


def _nan_to_none(value):
    """Copy of nested dicts/lists with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _format(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _markdown(reference: MaskStatistics, generated: dict[str, MaskStatistics]) -> str:
    """Markdown report: one table row per method with its Wasserstein distances and mean count/volume."""
    headers = ["method", *(f"W1 {m}" for m in METRICS), "mean lesions/patch", "mean volume (mm³)"]
    lines = [
        "# Mask realism evaluation",
        "",
        f"Reference: {len(reference.lesions_per_patch)} patches, {len(reference.log_volume_mm3)} lesions, "
        f"mean lesions/patch {_format(_mean_lesions(reference))}, "
        f"mean volume {_format(_mean_volume_mm3(reference))} mm³.",
        "",
        "W1: 1-D Wasserstein distance of each metric's distribution to the reference (lower is closer; "
        "n/a when either side has no values). Sphericity uses the voxel-face area, so absolute values are "
        "low; real and generated masks are voxelised identically.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for name, stats in generated.items():
        distances = wasserstein_distances(reference, stats)
        cells = [str(name).replace("|", "\\|"), *(_format(distances[m]) for m in METRICS),
                 _format(_mean_lesions(stats)), _format(_mean_volume_mm3(stats))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shared_bins(metric: str, arrays: list[np.ndarray]) -> np.ndarray:
    """Histogram edges shared by all sides: one bin per integer for discrete metrics."""
    pooled = np.concatenate([a for a in arrays if a.size] or [np.zeros(0)])
    if pooled.size == 0:
        return np.array([-0.5, 0.5]) if metric in _DISCRETE else np.array([0.0, 1.0])
    lo, hi = float(pooled.min()), float(pooled.max())
    if metric in _DISCRETE:
        return np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.0, 1.0)
    if hi - lo < 1e-12:
        return np.linspace(lo - 0.5, hi + 0.5, 2)
    return np.linspace(lo, hi, _HIST_BINS + 1)


def _axial_mid_slice(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Axial (z) slice through the patch centre; if that misses every lesion, the nearest slice with one."""
    centre = mask.shape[0] // 2
    lesion_slices = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    z = centre
    if lesion_slices.size and centre not in lesion_slices:
        z = int(lesion_slices[np.argmin(np.abs(lesion_slices - centre))])
    return mask[z], z


def _write_figure(
    path: Path,
    reference: MaskStatistics,
    generated: dict[str, MaskStatistics],
    gallery_rows: list[tuple[str, np.ndarray]],
) -> None:
    """Histogram rows (one per metric) above gallery rows (one per method), saved atomically as PNG."""
    # Figure + Agg canvas directly: no pyplot state, no change to the user's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    sides = [("reference", reference), *generated.items()]
    hist_height, gallery_height = 2.4, 2.1
    fig = Figure(figsize=(16, hist_height * len(METRICS) + gallery_height * len(gallery_rows) + 1.0),
                 layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[hist_height * len(METRICS),
                                                      gallery_height * len(gallery_rows)])
    top.suptitle("Lesion statistics: reference vs generated (density, shared bins)", fontsize=13)
    colours = [f"C{k % 10}" for k in range(len(generated))]
    for ax, metric in zip(np.atleast_1d(top.subplots(len(METRICS), 1)), METRICS):
        arrays = [stats.values(metric) for _, stats in sides]
        bins = _shared_bins(metric, arrays)
        for k, ((name, _), values) in enumerate(zip(sides, arrays)):
            label = f"{name} (n={values.size})"
            if values.size == 0:
                ax.plot([], [], color="0.4" if k == 0 else colours[k - 1], label=f"{name} (empty)")
            elif k == 0:
                ax.hist(values, bins=bins, density=True, color="0.6", alpha=0.6, label=label)
            else:
                ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8,
                        color=colours[k - 1], label=label)
        ax.set_title(_METRIC_TITLES[metric], fontsize=11)
        ax.set_ylabel("density")
        if metric in _DISCRETE:
            ax.set_xticks(np.arange(bins[0] + 0.5, bins[-1], max(1, math.ceil((bins[-1] - bins[0]) / 20))))
        ax.legend(fontsize=8, loc="upper right")

    bottom.suptitle("Axial slice through each mask's centre "
                    "(grey: outside brain, black: background, colours: lesion classes)", fontsize=13)
    max_label = max([1] + [int(m.max()) for _, m in gallery_rows if m.size])
    # Class colours differ from the method colours of the histograms (C0, C1, ...) to avoid confusion.
    class_colours = ["red", "yellow", "cyan", "magenta", "lime", "white", "orange", "deepskyblue"]
    cmap = ListedColormap(["0.8", "black"] + [class_colours[k % len(class_colours)] for k in range(max_label)])
    norm = BoundaryNorm(np.arange(-1.5, max_label + 1.0, 1.0), cmap.N)
    axes = np.asarray(bottom.subplots(len(gallery_rows), GALLERY_SIZE, squeeze=False))
    for row, (name, masks) in zip(axes, gallery_rows):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(masks):
                image, z = _axial_mid_slice(masks[col])
                ax.imshow(np.clip(image, -1, None), cmap=cmap, norm=norm, interpolation="nearest")
                ax.set_title(f"#{col} z={z}", fontsize=8)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if col == 0:
                    ax.text(0.5, 0.5, "no masks", ha="center", va="center", transform=ax.transAxes)
        row[0].set_ylabel(name, fontsize=11, rotation=90)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
