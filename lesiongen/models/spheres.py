"""Sphere / ellipsoid lesion masks: sampled from the plans' sphere priors, or fitted to a real mask.

``sample_sphere_lesions`` draws the lesions of one lesion-centred training patch from a ``SpherePrior``
(class, count, bounding radius, axis ratios, orientation, position) and ``render_ellipsoids`` turns them into
a label map. ``sphere_control_from_mask`` replaces every connected lesion component of a real mask by its
minimum enclosing sphere, the coarse "control" shape a generator is conditioned on.

Conventions: arrays are (z, y, x), spacing is mm (z, y, x), lesion centres are voxel index coordinates in
the patch and every size is mm. A bounding radius is that of the voxel CENTRES (as in the fingerprint), so a
one-voxel lesion has radius 0. Everything random comes from the ``np.random.Generator`` passed in, so a seed
fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from lesiongen.fingerprint.lesions import as_label_array
from lesiongen.fingerprint.spheres import minimum_enclosing_sphere, voxel_points_mm
from lesiongen.planning.plans import Beta, Categorical, LogNormal, SpherePrior
from lesiongen.utilities.components import CONNECTIVITY_26

# Weight of a voxel whose tissue class the prior never saw: small, but positive so sampling never fails.
_TISSUE_EPSILON = 1e-3
# Draws of a truncated log-normal before clipping: truncation is usually mild, so this rarely runs out.
_TRUNCATION_TRIES = 64
# Candidate positions tried per extra lesion before accepting the least overlapping one.
_PLACEMENT_TRIES = 8
# Relative slack of the membership tests, so voxels exactly on a surface are not lost to rounding.
_RTOL = 1e-9
_MAX_LABEL = np.iinfo(np.uint8).max
# Growth steps of an ellipsoid below its class's minimum voxel count; more than the cube-root rule needs.
_GROWTH_TRIES = 8


@dataclass
class SphereLesion:
    """One ellipsoidal lesion in a patch."""

    label: int  # lesion class
    centre: list[float]  # (z, y, x) voxel coordinates in the patch
    radius_mm: float  # bounding-sphere radius (= largest semi-axis)
    # descending; the ellipsoid drawn. Equal to radius_mm for a fitted prior's draw; a shape bank's holds its
    # lesion's volume, so its long axis reaches about half a voxel beyond the voxel-centre radius, as the cells do
    semi_axes_mm: list[float]
    rotation: list[list[float]]  # 3x3 rotation matrix (rows); its columns are the ellipsoid axes in (z, y, x)


# ---------------------------------------------------------------------------------------------- sampling


def sample_sphere_lesions(
    priors: dict[str, SpherePrior],
    patch_size: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    brain: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    centre_first: bool = True,
) -> list[SphereLesion]:
    """The lesions of one lesion-centred patch, drawn from the sphere priors.

    One lesion class per patch, chosen with probability proportional to ``n_lesions_observed``; that
    prior's ``lesions_per_patch`` gives the count (at least 1). The first lesion sits at the patch centre
    (``patch_size // 2``, as in the extracted lesion patches) when ``centre_first``, or at the nearest
    allowed voxel; the others at random allowed voxels, weighted by the prior's tissue probabilities when a
    ``tissue`` map is given. Allowed: inside ``brain`` and far enough from the border that the bounding
    sphere fits in the patch; each condition is dropped in turn when no voxel meets it. Returns [] when no
    prior has observed lesions.
    """
    shape = _as_shape(patch_size)
    spacing_arr = _as_spacing(spacing)
    if brain is not None:
        brain = np.asarray(brain, dtype=bool)
        if brain.shape != shape:
            raise ValueError(f"brain shape {brain.shape} differs from patch size {shape}")
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != shape:
            raise ValueError(f"tissue shape {tissue.shape} differs from patch size {shape}")

    # Sorted keys: the draw must not depend on how the dict happened to be built (e.g. JSON order).
    usable = [priors[k] for k in sorted(priors) if priors[k].n_lesions_observed > 0]
    if not usable:
        return []
    counts = np.array([p.n_lesions_observed for p in usable], dtype=np.float64)
    prior = usable[int(rng.choice(len(usable), p=counts / counts.sum()))]
    if not 0 < prior.label <= _MAX_LABEL:
        raise ValueError(f"lesion label {prior.label} does not fit a uint8 label map")

    n_lesions = max(1, _sample_categorical_int(prior.lesions_per_patch, rng, default=1))
    # All shapes first, then positions: the shape draws stay the same whatever placement needs.
    shapes = [_sample_shape(prior, rng) for _ in range(n_lesions)]
    # Only lesions after a centred first one need placement weights; skip the per-voxel work otherwise.
    needs_weights = n_lesions > (1 if centre_first else 0)
    weights = _tissue_weights(prior.tissue_probability, tissue) if needs_weights else None

    lesions: list[SphereLesion] = []
    placed_mm: list[np.ndarray] = []
    placed_radius: list[float] = []
    for index, (radius, semi_axes, rotation) in enumerate(shapes):
        allowed, offset = _allowed_region(shape, spacing_arr, radius, brain)
        if index == 0 and centre_first:
            voxel = _nearest_allowed(allowed, offset, np.array(shape) // 2, spacing_arr)
        else:
            voxel = _place(allowed, offset, weights, spacing_arr, radius, placed_mm, placed_radius, rng)
        placed_mm.append(voxel * spacing_arr)
        placed_radius.append(radius)
        lesions.append(
            SphereLesion(
                label=int(prior.label),
                centre=[float(v) for v in voxel],
                radius_mm=float(radius),
                semi_axes_mm=[float(a) for a in semi_axes],
                rotation=rotation.tolist(),
            )
        )
    return lesions


def _sample_categorical_int(dist: Categorical, rng: np.random.Generator, default: int) -> int:
    """An integer drawn from a Categorical with string-integer keys; ``default`` when it is empty."""
    items = sorted((int(k), float(p)) for k, p in dist.probabilities.items() if float(p) > 0)
    if not items:
        return default
    probs = np.array([p for _, p in items])
    return items[int(rng.choice(len(items), p=probs / probs.sum()))][0]


def _sample_truncated_lognormal(dist: LogNormal, rng: np.random.Generator) -> float:
    """A draw of log(x) ~ N(mu, sigma) within [minimum, maximum]: rejection first, clipping as a fallback."""
    lo, hi = sorted((float(dist.minimum), float(dist.maximum)))
    value = math.exp(dist.mu)  # the median; all a zero-sigma (one observed value) prior can give
    if dist.sigma > 0 and math.isfinite(dist.sigma):
        for _ in range(_TRUNCATION_TRIES):
            value = float(rng.lognormal(dist.mu, dist.sigma))
            if lo <= value <= hi:
                return value
    # Zero sigma, or the bounds sit far in a tail: clipping keeps the value legal at least.
    return float(np.clip(value, lo, hi))


def _sample_beta(dist: Beta, rng: np.random.Generator) -> float:
    # Fitted Betas are positive already; the floor only guards hand-written priors.
    return float(rng.beta(max(float(dist.alpha), 1e-3), max(float(dist.beta), 1e-3)))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3x3 rotation: a normalised 4D Gaussian is a uniform unit quaternion."""
    quat = rng.standard_normal(4)
    while not np.linalg.norm(quat) > 1e-12:  # practically never; keeps the normalisation defined
        quat = rng.standard_normal(4)
    return Rotation.from_quat(quat / np.linalg.norm(quat)).as_matrix()


def _sample_shape(prior: SpherePrior, rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """Bounding radius (mm), descending semi-axes (mm) and a rotation matrix of one lesion.

    From the shape bank where the prior has one: an observed lesion, its size jittered, rendered as the ellipsoid of
    its axis ratios that holds its volume (the voxel-centre radius as semi-axis would draw a small lesion at about
    half its voxels). Else from the fitted distributions, the radius as long semi-axis.
    """
    bank = prior.observed_shapes
    if bank is not None and bank.radius_mm:
        pick = int(rng.integers(len(bank.radius_mm)))
        # the kernel truncated to the observed range, as the fitted distribution is
        kernel = LogNormal(math.log(bank.radius_mm[pick]), bank.log_bandwidth, min(bank.radius_mm),
                           max(bank.radius_mm), {})
        radius = _sample_truncated_lognormal(kernel, rng)
        middle, minor = bank.axis_ratio_middle[pick], bank.axis_ratio_minor[pick]
        volume = bank.volume_mm3[pick] * (radius / bank.radius_mm[pick]) ** 3
        # volume = 4/3 pi a^3 m^2 n for semi-axes (a, a m, a m n)
        major = (3 * volume / (4 * math.pi * max(middle * middle * minor, 1e-9))) ** (1 / 3)
    else:
        radius = max(_sample_truncated_lognormal(prior.radius_mm, rng), 0.0)
        middle, minor = _sample_beta(prior.axis_ratio_middle, rng), _sample_beta(prior.axis_ratio_minor, rng)
        major = radius
    return radius, np.array([major, major * middle, major * middle * minor]), _random_rotation(rng)


def _tissue_weights(dist: Categorical, tissue: np.ndarray | None) -> np.ndarray | None:
    """Per-voxel placement weight from the tissue class under it; None means uniform."""
    probs = {k: float(p) for k, p in dist.probabilities.items()}
    # Only "0" means the plans had no tissue maps: the prior says nothing about tissue then.
    if tissue is None or not (set(probs) - {"0"}):
        return None
    tissue = np.rint(tissue).astype(np.int64) if tissue.dtype.kind == "f" else tissue.astype(np.int64)
    if tissue.size == 0:
        return None
    # A lookup table over the (few, small) class values: a gather, no sort of the whole patch.
    low = int(tissue.min())
    lookup = np.array([max(probs.get(str(c), 0.0), _TISSUE_EPSILON) for c in range(low, int(tissue.max()) + 1)])
    return lookup[tissue - low]


def _allowed_region(
    shape: tuple[int, int, int], spacing: np.ndarray, radius: float, brain: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask of allowed centre voxels within a box of the patch, and the box's offset.

    The box holds the voxels whose bounding sphere stays inside the patch. Relaxed in order when empty:
    brain and border, then brain only, then border only, then the whole patch.
    """
    margin = np.ceil(radius / spacing - _RTOL).astype(int)
    lo = np.maximum(margin, 0)
    hi = np.array(shape) - lo  # exclusive
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)) if np.all(hi > lo) else None
    options = []
    if brain is not None:
        if box is not None:
            options.append((brain[box], lo))
        options.append((brain, np.zeros(3, dtype=int)))
    if box is not None:
        options.append((np.ones(tuple(hi - lo), dtype=bool), lo))
    options.append((np.ones(shape, dtype=bool), np.zeros(3, dtype=int)))
    for allowed, offset in options:
        if allowed.any():
            return allowed, offset
    raise AssertionError("unreachable: the whole patch is always allowed")


def _nearest_allowed(allowed: np.ndarray, offset: np.ndarray, target: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The allowed voxel nearest (in mm) to ``target``; ties go to the first in C order."""
    local = target - offset
    if np.all(local >= 0) and np.all(local < allowed.shape) and allowed[tuple(local)]:
        return target.astype(int)
    points = np.argwhere(allowed) + offset
    dist = np.sum(((points - target) * spacing) ** 2, axis=1)
    return points[int(np.argmin(dist))]


def _place(
    allowed: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray | None,
    spacing: np.ndarray,
    radius: float,
    placed_mm: list[np.ndarray],
    placed_radius: list[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """A random allowed voxel, tissue-weighted, that keeps its bounding sphere off the earlier lesions'.

    A few candidates are tried; when all overlap, the one with the least overlap is taken, so crowded
    patches still get their lesions.
    """
    flat = np.flatnonzero(allowed)
    if weights is None:
        cumulative = None
    else:
        box = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, allowed.shape))
        cumulative = np.cumsum(weights[box].ravel()[flat])
    best, best_clearance = None, -np.inf
    for _ in range(_PLACEMENT_TRIES):
        if cumulative is None:
            pick = int(rng.integers(len(flat)))
        else:
            # Inverse-CDF draw; min() guards the rounding case u * total == total.
            pick = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(flat) - 1)
        voxel = np.array(np.unravel_index(flat[pick], allowed.shape)) + offset
        if not placed_mm:
            return voxel
        centre_mm = voxel * spacing
        clearance = min(
            float(np.linalg.norm(centre_mm - other)) - (radius + other_radius)
            for other, other_radius in zip(placed_mm, placed_radius)
        )
        if clearance >= 0:
            return voxel
        if clearance > best_clearance:
            best, best_clearance = voxel, clearance
    return best


# --------------------------------------------------------------------------------------------- rendering


def render_ellipsoids(lesions: list[SphereLesion], patch_size: Sequence[int], spacing: Sequence[float],
                      min_voxels: dict[int, int] | None = None) -> np.ndarray:
    """uint8 label map of the lesions' ellipsoids; later lesions overwrite earlier ones.

    A voxel p belongs to a lesion when || diag(1 / semi_axes) R^T (p - c) || <= 1 (mm). Semi-axes below
    half the smallest spacing are raised to it, and the voxel nearest each centre is always set, so thin
    or tiny lesions never vanish. With ``min_voxels`` (lesion class -> voxels), an ellipsoid that renders
    smaller than its class's minimum is grown, shape kept, until it reaches it (or the patch border stops it):
    a small lesion's voxel-centre ellipsoid holds fewer voxels than the lesion it was measured on, and the
    mask generators drop components under the minimum.
    """
    shape = _as_shape(patch_size)
    spacing_arr = _as_spacing(spacing)
    floor = float(spacing_arr.min()) / 2
    out = np.zeros(shape, dtype=np.uint8)
    for lesion in lesions:
        semi_axes = np.maximum(np.asarray(lesion.semi_axes_mm, dtype=np.float64), floor)
        rotation = np.asarray(lesion.rotation, dtype=np.float64)
        minimum = (min_voxels or {}).get(int(lesion.label), 0)
        if minimum > 1:
            semi_axes = _grown_to(minimum, lesion, semi_axes, rotation, shape, spacing_arr)
        _paint(out, lesion, semi_axes, rotation, spacing_arr)
    return out


def _grown_to(minimum: int, lesion: SphereLesion, semi_axes: np.ndarray, rotation: np.ndarray,
              shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    """The semi-axes, scaled up in steps until the ellipsoid renders at least ``minimum`` voxels."""
    for _ in range(_GROWTH_TRIES):
        alone = np.zeros(shape, dtype=np.uint8)
        _paint(alone, lesion, semi_axes, rotation, spacing)
        count = int(np.count_nonzero(alone))
        if count >= minimum:
            break
        # volume grows with the cube of the scale; the 5 % extra ends the loop in a step or two
        semi_axes = semi_axes * max((minimum / max(count, 1)) ** (1 / 3), 1.05)
    return semi_axes


def render_spheres(lesions: list[SphereLesion], patch_size: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """uint8 label map of balls of radius ``radius_mm`` + half the smallest spacing; later lesions overwrite.

    The half-voxel tolerance makes a radius-0 lesion one voxel and, as a ball of voxel-centre radius r
    covers the voxel cells out to about r + s / 2, matches the extent of the lesion it was fitted to.
    """
    shape = _as_shape(patch_size)
    spacing_arr = _as_spacing(spacing)
    tolerance = float(spacing_arr.min()) / 2
    out = np.zeros(shape, dtype=np.uint8)
    for lesion in lesions:
        radius = max(float(lesion.radius_mm), 0.0) + tolerance
        _paint(out, lesion, np.full(3, radius), np.eye(3), spacing_arr)
    return out


def _paint(
    out: np.ndarray, lesion: SphereLesion, semi_axes: np.ndarray, rotation: np.ndarray, spacing: np.ndarray
) -> None:
    """Set the ellipsoid's voxels to its label, working only inside its bounding box."""
    label = int(lesion.label)
    if not 0 < label <= _MAX_LABEL:
        raise ValueError(f"lesion label {label} does not fit a uint8 label map")
    centre = np.asarray(lesion.centre, dtype=np.float64)
    # Half extent of the rotated ellipsoid along each array axis: sqrt(sum_j R_ij^2 a_j^2).
    half_mm = np.sqrt((rotation**2) @ (semi_axes**2)) * (1 + _RTOL)
    lo = np.maximum(np.floor(centre - half_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half_mm / spacing).astype(int) + 1, out.shape)
    if np.all(hi > lo):
        # Offsets in mm from the centre along each axis; broadcasting builds the box without meshgrid copies.
        dz, dy, dx = (
            ((np.arange(a, b) - c) * s).reshape([-1 if k == axis else 1 for k in range(3)])
            for axis, (a, b, c, s) in enumerate(zip(lo, hi, centre, spacing))
        )
        # Coordinates in the ellipsoid frame, q = R^T d, each scaled by its semi-axis.
        inside = np.zeros(tuple(hi - lo), dtype=np.float64)
        for j in range(3):
            q = (rotation[0, j] * dz + rotation[1, j] * dy + rotation[2, j] * dx) / semi_axes[j]
            inside += q * q
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        out[box][inside <= 1 + _RTOL] = label
    nearest = np.rint(centre).astype(int)
    if np.all(nearest >= 0) and np.all(nearest < out.shape):
        out[tuple(nearest)] = label


# ------------------------------------------------------------------------------------- fitting to a mask


def lesion_spheres_from_mask(mask: np.ndarray, spacing: Sequence[float]) -> list[SphereLesion]:
    """One sphere per 26-connected component of each lesion class (values > 0) of a label map.

    Negative values (e.g. -1 outside the brain) are background. Each sphere is the minimum enclosing
    sphere of the component's voxel centres, so a one-voxel component has radius 0. Ordered by class, then
    by component (scipy's scan order).
    """
    label = _as_label_array(mask)
    spacing_arr = _as_spacing(spacing)
    lesions: list[SphereLesion] = []
    # One find_objects pass gives each class's box, so the labelling never touches the whole array.
    for value, class_box in enumerate(ndimage.find_objects(label), start=1):
        if class_box is None:
            continue
        components, _ = ndimage.label(label[class_box] == value, structure=CONNECTIVITY_26)
        class_offset = np.array([sl.start for sl in class_box])
        for index, comp_box in enumerate(ndimage.find_objects(components), start=1):
            if comp_box is None:
                continue
            offset = class_offset + [sl.start for sl in comp_box]
            points = voxel_points_mm(components[comp_box] == index, spacing_arr) + offset * spacing_arr
            centre_mm, radius = minimum_enclosing_sphere(points)
            lesions.append(
                SphereLesion(
                    label=int(value),
                    centre=(centre_mm / spacing_arr).tolist(),
                    radius_mm=float(radius),
                    semi_axes_mm=[float(radius)] * 3,
                    rotation=np.eye(3).tolist(),
                )
            )
    return lesions


def sphere_control_from_mask(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """uint8 label map: every lesion component replaced by its minimum enclosing sphere (render_spheres)."""
    mask = np.asarray(mask)
    return render_spheres(lesion_spheres_from_mask(mask, spacing), mask.shape, spacing)


# ------------------------------------------------------------------------------------------------ helpers


def _as_shape(patch_size: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in patch_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"patch size must be 3 positive integers (z, y, x), got {patch_size}")
    return shape  # type: ignore[return-value]


def _as_spacing(spacing: Sequence[float]) -> np.ndarray:
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape != (3,) or not np.all(arr > 0):
        raise ValueError(f"spacing must be 3 positive values (z, y, x), got {spacing}")
    return arr


def _as_label_array(mask: np.ndarray) -> np.ndarray:
    """The fingerprint's label convention (floats rounded, negatives = background), bounded to uint8 labels."""
    mask = as_label_array(mask)
    if mask.size and mask.max() > _MAX_LABEL:
        raise ValueError(f"lesion label {int(mask.max())} does not fit a uint8 label map")
    return mask
