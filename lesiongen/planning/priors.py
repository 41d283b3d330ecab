"""Sphere priors: distributions fitted to the fingerprint's lesions, used by the mask samplers."""

from __future__ import annotations

import dataclasses

import numpy as np

from lesiongen.fingerprint.fingerprint import FINGERPRINT_FILE, DatasetFingerprint
from lesiongen.fingerprint.lesions import SHELL_MM
from lesiongen.paths import preprocessed_root
from lesiongen.planning.plans import Beta, Categorical, LogNormal, NeighbourhoodBank, ShapeBank, SpherePrior
from lesiongen.utilities.errors import LesiongenError

LOCATION_BINS = 4
LOCATION_PSEUDO_COUNT = 0.05  # lets sampling reach bins next to observed ones, rarely
SHAPE_BANK_MAX = 1000  # entries kept in plans.json; a larger dataset keeps evenly spaced ranks by radius
# Silverman's rule assumes one peak and oversmooths several (the demo's radii have two); and a log-radius jitter
# triples in log volume. Half the rule kept the demo's rendered lesion sizes at the real quantiles (the full rule
# spread them: 5th / 95th percentile 7 / 215 voxels against the real 12 / 143).
SHAPE_BANK_BANDWIDTH_FACTOR = 0.5
# Tissue shares vary in steps of 1 / shell voxels; narrower kernels would make a placement's score hinge on a voxel
NEIGHBOURHOOD_MIN_BANDWIDTH = 0.05


def categorical(values: list) -> Categorical:
    if not values:
        return Categorical({})
    keys, counts = np.unique(np.asarray(values), return_counts=True)
    total = counts.sum()
    return Categorical({str(k): float(c / total) for k, c in zip(keys.tolist(), counts)})


def fit_lognormal(values: list[float], floor: float) -> LogNormal:
    data = np.maximum(np.asarray(values, dtype=float), floor)
    if data.size == 0:
        return LogNormal(float(np.log(floor)), 0.0, floor, floor, {})
    logs = np.log(data)
    quantiles = {f"q{int(q):02d}": float(np.percentile(data, q)) for q in (5, 25, 50, 75, 95)}
    return LogNormal(float(logs.mean()), float(logs.std()), float(data.min()), float(data.max()), quantiles)


def fit_beta(values: list[float]) -> Beta:
    """Method of moments on (0, 1); a flat-ish Beta(2, 2) when too few or degenerate values."""
    data = np.clip(np.asarray(values, dtype=float), 1e-3, 1 - 1e-3)
    if data.size < 2 or data.var() <= 1e-8:
        mean = float(data.mean()) if data.size else 0.5
        concentration = 20.0  # a confident but not degenerate peak at the one value seen
        return Beta(max(mean * concentration, 1e-2), max((1 - mean) * concentration, 1e-2))
    mean, var = data.mean(), data.var()
    common = mean * (1 - mean) / var - 1
    if common <= 0:
        return Beta(2.0, 2.0)
    return Beta(float(mean * common), float((1 - mean) * common))


def silverman_bandwidth(values: np.ndarray) -> float:
    """Silverman's rule-of-thumb kernel width, 0.9 min(s.d., IQR / 1.34) n^(-1/5); 0 for fewer than 2 values."""
    if values.size < 2:
        return 0.0
    q75, q25 = np.percentile(values, [75, 25])
    spread = min(float(values.std(ddof=1)), float(q75 - q25) / 1.34) or float(values.std(ddof=1))
    return float(0.9 * spread * values.size ** -0.2)


def fit_shape_bank(lesions: list, floor: float) -> ShapeBank:
    """Each lesion's bounding radius (at least ``floor``), volume and axis ratios, at most ``SHAPE_BANK_MAX`` of
    them."""
    radii = np.maximum(np.asarray([l.bounding_radius_mm for l in lesions], dtype=float), floor)
    # semi-axes floored as the radius is: a lesion one voxel thick has a zero moment axis, not a zero thickness
    axes = np.maximum(np.asarray([l.semi_axes_mm for l in lesions], dtype=float).reshape(-1, 3), floor)
    middle, minor = axes[:, 1] / axes[:, 0], axes[:, 2] / axes[:, 1]
    keep = np.arange(radii.size)
    if radii.size > SHAPE_BANK_MAX:
        keep = np.argsort(radii, kind="stable")[evenly_spaced(radii.size, SHAPE_BANK_MAX)]
    volumes = np.asarray([l.volume_mm3 for l in lesions], dtype=float)
    return ShapeBank(radius_mm=radii[keep].tolist(), volume_mm3=volumes[keep].tolist(),
                     axis_ratio_middle=np.clip(middle[keep], 0, 1).tolist(),
                     axis_ratio_minor=np.clip(minor[keep], 0, 1).tolist(),
                     log_bandwidth=SHAPE_BANK_BANDWIDTH_FACTOR * silverman_bandwidth(np.log(radii)))


def evenly_spaced(n: int, keep: int) -> np.ndarray:
    """Indices of at most ``keep`` of ``n`` entries, evenly spaced (all of them when ``n <= keep``)."""
    return np.arange(n) if n <= keep else np.linspace(0, n - 1, keep).round().astype(int)


def fit_neighbourhood_bank(lesions: list) -> NeighbourhoodBank | None:
    """The tissue shares of the lesions' shells (at most ``SHAPE_BANK_MAX``), with a kernel width by Scott's rule
    (at least ``NEIGHBOURHOOD_MIN_BANDWIDTH``); None when a lesion has no shell shares (no tissue maps) or none
    borders any tissue."""
    if not lesions or any(l.shell_tissue is None for l in lesions):
        return None
    classes = sorted({int(k) for l in lesions for k in l.shell_tissue if int(k) > 0})
    if not classes:
        return None
    shares = np.asarray([[l.shell_tissue.get(str(c), 0.0) for c in classes] for l in lesions], dtype=float)
    n, dims = shares.shape
    spread = float(shares.std(axis=0, ddof=1).mean()) if n > 1 else 0.0
    bandwidth = max(spread * n ** (-1.0 / (dims + 4)), NEIGHBOURHOOD_MIN_BANDWIDTH)
    radii = np.cbrt(3.0 * np.asarray([l.volume_mm3 for l in lesions], dtype=float) / (4.0 * np.pi))
    keep = evenly_spaced(n, SHAPE_BANK_MAX)
    return NeighbourhoodBank(tissue_classes=classes, shares=shares[keep].round(4).tolist(),
                             inner_radius_mm=float(np.median(radii)), shell_mm=SHELL_MM, bandwidth=bandwidth)


def fit_lesion_tissue(lesions: list) -> dict[str, float] | None:
    """Share of each tissue class among all the lesions' voxels (each lesion weighted by its voxels); None when a
    lesion has no tissue shares (no tissue maps, or a fingerprint written before they were recorded)."""
    if not lesions or any(l.lesion_tissue is None for l in lesions):
        return None
    totals: dict[str, float] = {}
    for lesion in lesions:
        for key, share in lesion.lesion_tissue.items():
            totals[key] = totals.get(key, 0.0) + share * lesion.voxel_count
    voxels = sum(totals.values())
    return {key: round(totals[key] / voxels, 6) for key in sorted(totals, key=int)} if voxels > 0 else None


def lesions_per_patch(fingerprint: DatasetFingerprint, label: int, patch_mm: np.ndarray) -> list[int]:
    """For each lesion, the lesions of its case whose centroids fall in the patch centred on it (itself included)."""
    counts = []
    for case in fingerprint.cases:
        centres = np.array([np.asarray(l.centroid_voxel) * case.spacing for l in case.lesions if l.label == label])
        if centres.size == 0:
            continue
        half = patch_mm / 2
        for centre in centres:
            inside = np.all(np.abs(centres - centre) <= half, axis=1)
            counts.append(int(inside.sum()))
    return counts


def location_histogram(relative_centroids: list[list[float]], bins: int = LOCATION_BINS) -> list[float]:
    hist = np.full((bins,) * 3, LOCATION_PSEUDO_COUNT)
    for rel in relative_centroids:
        index = tuple(min(int(np.clip(r, 0, 1) * bins), bins - 1) for r in rel)
        hist[index] += 1
    return (hist / hist.sum()).ravel().tolist()


def fit_sphere_prior(fingerprint: DatasetFingerprint, label: int, patch_mm: np.ndarray,
                     finest_spacing: float) -> SpherePrior:
    pairs = fingerprint.lesions_of_class(label)
    lesions = [l for _, l in pairs]
    voxel_volume = min(float(np.prod(c.spacing)) for c in fingerprint.cases)
    ratios_middle = [l.semi_axes_mm[1] / l.semi_axes_mm[0] for l in lesions if l.semi_axes_mm[0] > 0]
    ratios_minor = [l.semi_axes_mm[2] / l.semi_axes_mm[1] for l in lesions if l.semi_axes_mm[1] > 0]
    return SpherePrior(
        label=label,
        n_lesions_observed=len(lesions),
        lesions_per_case=categorical([c.lesion_count_per_class[str(label)] for c in fingerprint.cases]),
        lesions_per_patch=categorical(lesions_per_patch(fingerprint, label, patch_mm)),
        # a single voxel has radius 0; half the finest spacing keeps the log defined and the size honest
        radius_mm=fit_lognormal([l.bounding_radius_mm for l in lesions], floor=finest_spacing / 2),
        volume_mm3=fit_lognormal([l.volume_mm3 for l in lesions], floor=voxel_volume),
        axis_ratio_middle=fit_beta(ratios_middle),
        axis_ratio_minor=fit_beta(ratios_minor),
        tissue_probability=categorical([l.tissue_class for l in lesions]),
        location_bins=LOCATION_BINS,
        location_histogram=location_histogram([l.centroid_relative for l in lesions]),
        min_lesion_voxels=int(min((l.voxel_count for l in lesions), default=1)),
        min_lesion_volume_mm3=float(min((l.volume_mm3 for l in lesions), default=voxel_volume)),
        observed_shapes=fit_shape_bank(lesions, floor=finest_spacing / 2),
        neighbourhood=fit_neighbourhood_bank(lesions),
        lesion_tissue=fit_lesion_tissue(lesions),
    )


def fold_sphere_priors(fingerprint: DatasetFingerprint, train_cases: list[str], plans) -> dict[str, SpherePrior]:
    """Sphere priors refitted on the fold's training cases only, so validation lesions never shape a generator.

    A lesion class without a training lesion in the fold keeps its empty prior (``n_lesions_observed`` 0): it is
    never generated, rather than borrowing the dataset-wide prior that the validation lesions helped fit. A fold
    without any training lesion is an error; so is a dataset without any lesion (every label map empty, or its
    lesions all outside the brain), which planning lets through for the image stages only. Both errors name the
    fingerprint the lesions were counted in.
    """
    where = preprocessed_root() / fingerprint.dataset_name / FINGERPRINT_FILE
    if not any(case.lesion_count for case in fingerprint.cases):
        raise LesiongenError(f"{where}: no training case holds a lesion ({len(fingerprint.cases)} case(s), every "
                             f"label map empty or outside the brain); the lesion models need lesions to learn from")
    train = set(train_cases)
    subset = dataclasses.replace(fingerprint, cases=[c for c in fingerprint.cases if c.case_id in train])
    if not any(case.lesion_count for case in subset.cases):
        raise LesiongenError(f"{where}: the training cases of this fold ({len(train)}) hold no lesion of any class "
                             f"{sorted(plans.sphere_priors)}; nothing to learn lesion shapes from")
    patch_mm = np.asarray(plans.lesion_patch_size) * np.asarray(plans.target_spacing)
    return {key: fit_sphere_prior(subset, int(key), patch_mm, min(plans.target_spacing)) for key in plans.sphere_priors}
