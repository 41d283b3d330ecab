"""Where a new lesion goes: a weight per brain voxel of a model-space scan, from one lesion class's sphere prior.

The weight of a candidate centre is the product of
* the location histogram (where in the brain's bounding box the class's lesions lie),
* the tissue probability of the voxel's own tissue class (what the lesions lie in), and
* with tissue maps and a prior that records it, the **neighbourhood factor**: how much more often real lesions
  border the tissue a lesion placed there would border than the first two factors alone would place lesions against
  it. Real lesions in MS sit against the ventricles and the cortex; the first two factors alone put synthetic ones
  deeper in the white matter, where their shells are smoother than real ones (README, "Where lesions go").

The neighbourhood of a candidate is the share of each tissue class among the brain voxels of the shell a sphere of
the class's median size would have there (between ``inner_radius_mm`` and ``inner_radius_mm + shell_mm`` from the
centre): a stand-in for the shell of a lesion whose size is drawn only after its place. The factor is the ratio of
two Gaussian kernel densities of such shares: the observed lesions' (``plans.NeighbourhoodBank``) over the one the
other two factors alone would place lesions with, so that placed lesions border tissue as the real ones do.

What a placed lesion may cover: with tissue maps, an inserted mask is kept off the tissue classes that (almost) none
of the class's real lesion voxels lie in (``lesion_tissue_classes``, ``keep_on_lesion_tissue``). Placement chooses a
centre; the mask drawn around it can still reach into a ventricle, where no MS lesion lies.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from lesiongen.planning.plans import NeighbourhoodBank, SpherePrior
from lesiongen.utilities.components import label_components
from lesiongen.utilities.cropping import mask_bbox
from lesiongen.utilities.errors import LesiongenError

# the neighbourhood factor never drops below this share of its largest value: a scan whose tissue is unlike the
# training scans' still gets lesions (like the location histogram's pseudo count)
NEIGHBOURHOOD_FLOOR = 1e-3
# shares are rounded to this fraction of the kernel's width before the densities are evaluated (once per distinct
# value): the rounding moves a density by a few per cent at most, and the cost grows with the distinct values squared
SHARE_STEP_PER_BANDWIDTH = 0.25
# a tissue class holding less than this share of a lesion class's real voxels is kept free of inserted lesions of
# the class (tissue maps misclassify some lesion voxels; a class they reach that rarely is not where lesions lie)
LESION_TISSUE_MIN_SHARE = 0.01


def shell_kernel(spacing, inner_mm: float, shell_mm: float) -> np.ndarray:
    """Boolean (z, y, x) kernel of the offsets whose distance from the centre, in mm, lies in (inner, inner + shell]."""
    spacing = np.asarray(spacing, dtype=float)
    half = np.ceil((inner_mm + shell_mm) / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    distance = np.sqrt(sum(g ** 2 for g in grids))
    return (distance > inner_mm) & (distance <= inner_mm + shell_mm)


def neighbourhood_shares(brain: np.ndarray, tissue: np.ndarray, spacing, bank: NeighbourhoodBank) -> np.ndarray:
    """(brain voxels, tissue classes) share of each of the bank's tissue classes among the brain voxels of the
    shell around each brain voxel (``np.argwhere(brain)`` order); rows of zeros where the shell holds no brain."""
    kernel = shell_kernel(spacing, bank.inner_radius_mm, bank.shell_mm).astype(np.float32)
    pad = np.asarray(kernel.shape) // 2
    box = tuple(slice(max(start - p, 0), min(stop + p, n))
                for (start, stop), p, n in zip(mask_bbox(brain), pad, brain.shape))
    brain_box, tissue_box = brain[box], tissue[box]

    def shell_count(mask: np.ndarray) -> np.ndarray:
        # FFT convolution is exact up to rounding, so counts come back as near-integers
        return np.maximum(signal.fftconvolve(mask.astype(np.float32), kernel, mode="same"), 0.0)[brain_box]

    total = shell_count(brain_box)
    shares = np.zeros((len(total), len(bank.tissue_classes)), dtype=np.float64)
    filled = total > 0.5
    for column, value in enumerate(bank.tissue_classes):
        shares[filled, column] = shell_count(brain_box & (tissue_box == value))[filled] / total[filled]
    return shares


def _kernel_sum(points: np.ndarray, centres: np.ndarray, masses: np.ndarray, bandwidth: float,
                chunk: int = 2048) -> np.ndarray:
    """sum_j masses[j] exp(-|points[i] - centres[j]|^2 / (2 bandwidth^2)) for each point."""
    out = np.empty(len(points))
    for start in range(0, len(points), chunk):
        part = points[start:start + chunk]
        squared = ((part[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
        out[start:start + chunk] = np.exp(-squared / (2.0 * bandwidth ** 2)) @ masses
    return out


def neighbourhood_factor(shares: np.ndarray, weights: np.ndarray, bank: NeighbourhoodBank) -> np.ndarray:
    """Per candidate (rows of ``shares``), the factor that turns placement by ``weights`` into placement whose
    neighbourhoods follow the real lesions': the ratio of the bank's kernel density to the density of the
    neighbourhoods ``weights`` alone would place lesions in (same kernel). Relative to its largest value, floored
    at ``NEIGHBOURHOOD_FLOOR``.

    A ratio, not the bank's density alone: most real lesions border mostly white matter, so their density peaks
    there, and multiplying by it would pull lesions further from the ventricles than the other factors already do."""
    step = SHARE_STEP_PER_BANDWIDTH * bank.bandwidth
    grid = np.round(shares / step).astype(np.int64)  # shares are in [0, 1]: at most 1 / step + 1 values per column
    radix = int(np.ceil(1.0 / step)) + 1
    if radix ** grid.shape[1] < 2 ** 62:  # one integer per row: a 1-d unique is ten times faster than on rows
        _, first, inverse = np.unique(grid @ radix ** np.arange(grid.shape[1], dtype=np.int64), return_index=True,
                                      return_inverse=True)
    else:  # many tissue classes
        _, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    points = grid[first] * step
    observed = np.asarray(bank.shares, dtype=np.float64)
    real = _kernel_sum(points, observed, np.full(len(observed), 1.0 / len(observed)), bank.bandwidth)
    mass = np.bincount(inverse, weights=weights, minlength=len(points))
    placed = _kernel_sum(points, points, mass / mass.sum(), bank.bandwidth)
    ratio = np.divide(real, placed, out=np.zeros_like(real), where=placed > 0)
    top = ratio.max()
    factor = np.maximum(ratio / top, NEIGHBOURHOOD_FLOOR) if top > 0 else np.ones_like(ratio)
    return factor[inverse]


def placement_weights(brain: np.ndarray, tissue: np.ndarray | None, prior: SpherePrior, spacing,
                      tissue_classes: list[int] | None = None) -> np.ndarray:
    """Per brain voxel (``np.argwhere`` order): location histogram x tissue probability (x neighbourhood density
    with a tissue map and a prior that has a neighbourhood bank), normalised. ``spacing`` is the scan's (z, y, x) mm;
    ``tissue_classes`` restricts lesions to those classes and replaces both tissue factors."""
    coords = np.argwhere(brain)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    bins = prior.location_bins
    relative = (coords - lo) / np.maximum(hi - lo, 1)
    index = np.minimum((relative * bins).astype(int), bins - 1)
    histogram = np.asarray(prior.location_histogram).reshape((bins,) * 3)
    weights = histogram[index[:, 0], index[:, 1], index[:, 2]]
    if tissue is not None:
        tissue_in_brain = tissue[brain]
        probabilities = prior.tissue_probability.probabilities
        if tissue_classes:
            weights = weights * np.isin(tissue_in_brain, tissue_classes)
        else:
            if set(probabilities) - {"0"}:
                lookup = np.full(int(tissue_in_brain.max()) + 1, 1e-3)
                for key, p in probabilities.items():
                    if int(key) < len(lookup):
                        lookup[int(key)] = max(p, 1e-3)
                weights = weights * lookup[tissue_in_brain]
            if prior.neighbourhood is not None:
                shares = neighbourhood_shares(brain, tissue, spacing, prior.neighbourhood)
                weights = weights * neighbourhood_factor(shares, weights, prior.neighbourhood)
    if weights.sum() <= 0:
        raise LesiongenError(f"no brain voxel of tissue class {tissue_classes} to place a lesion in")
    return weights / weights.sum()


def lesion_tissue_classes(prior: SpherePrior, tissue_classes: list[int] | None = None) -> list[int] | None:
    """The tissue classes an inserted lesion of the prior's class may cover: those holding at least
    ``LESION_TISSUE_MIN_SHARE`` of the real lesions' voxels, and any of ``tissue_classes`` (where a caller asked for
    lesions); None, no restriction, when the prior does not record its lesions' tissue (no tissue maps, older plans)."""
    if prior.lesion_tissue is None:
        return None
    kept = {int(key) for key, share in prior.lesion_tissue.items() if share >= LESION_TISSUE_MIN_SHARE}
    return sorted(kept | set(tissue_classes or ()))


def avoided_tissue(tissue: np.ndarray | None, allowed: list[int] | None) -> np.ndarray | None:
    """The voxels of ``tissue`` on classes outside ``allowed`` (``lesion_tissue_classes``): what an inserted lesion
    may not cover and its edit leaves as it was. None without a tissue map or a restriction."""
    return None if tissue is None or allowed is None else ~np.isin(tissue, allowed)


def keep_on_lesion_tissue(mask: np.ndarray, avoided: np.ndarray | None) -> np.ndarray:
    """``mask`` (a lesion's class values, z, y, x) without its voxels on ``avoided`` tissue (:func:`avoided_tissue`);
    when that removes any, only the largest remaining 26-connected piece stays (a lesion is one piece, not the
    slivers a cut leaves). Unchanged without a restriction (None)."""
    if avoided is None:
        return mask
    off = (mask > 0) & avoided
    if not off.any():
        return mask
    kept = np.where(off, 0, mask).astype(mask.dtype)
    ids, count = label_components(kept > 0)
    if count > 1:
        sizes = np.bincount(ids.ravel())
        sizes[0] = 0
        kept[ids != int(np.argmax(sizes))] = 0
    return kept
