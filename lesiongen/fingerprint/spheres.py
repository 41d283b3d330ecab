"""Minimum enclosing spheres of point sets and of voxel masks.

``minimum_enclosing_sphere`` computes the true smallest sphere containing a 3D point set with Welzl's
randomised incremental algorithm (expected linear time). Large sets are first reduced to their convex hull
vertices, since only extreme points can lie on the minimal sphere.

For voxel masks the points are the voxel CENTRES in mm (``voxel_points_mm``), so the bounding-sphere radius
of a lesion is that of its voxel centres: a single voxel has radius 0 and two face-adjacent voxels along an
axis with spacing s have radius s / 2. Add half a voxel diagonal if the extent of the voxel cells is wanted.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError

logger = logging.getLogger(__name__)

# Relative tolerance of the containment test; absorbs rounding in the circumsphere formulas so points that
# are on the sphere in exact arithmetic do not trigger spurious (and possibly degenerate) updates.
_CONTAIN_RTOL = 1e-9
# Below this relative size of the cross product / determinant the boundary points count as collinear /
# coplanar and the circumsphere through them as undefined.
_DEGENERATE_RTOL = 1e-10
# Hull reduction only pays off (and Qhull only works) beyond a handful of points.
_HULL_MIN_POINTS = 32

Sphere = tuple[np.ndarray, float]


def voxel_points_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """(N, 3) mm coordinates (z, y, x) of the voxel centres of a boolean mask: index * spacing."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,):
        raise ValueError(f"spacing must have 3 entries (z, y, x), got {spacing}")
    return np.argwhere(mask).astype(np.float64) * spacing_arr


def minimum_enclosing_sphere(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Smallest sphere (centre (3,), radius) containing all of an (N, 3) point set, N >= 1.

    Welzl's algorithm on a seeded random permutation of the (convex hull vertices of the) points. The
    returned radius is the largest distance from the centre to any input point, so every point is enclosed
    even after rounding.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if len(pts) == 0:
        raise ValueError("points must contain at least one point")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points must be finite")

    candidates = _hull_vertices(pts) if len(pts) >= _HULL_MIN_POINTS else pts
    rng = np.random.default_rng(seed)
    # Fancy indexing copies, so the in-place move-to-front never touches the caller's array.
    candidates = candidates[rng.permutation(len(candidates))]
    scale = float(np.max(np.ptp(candidates, axis=0))) if len(candidates) > 1 else 0.0

    centre, _ = _welzl(candidates, [], scale)
    # Measured over all input points, not only hull vertices: guarantees enclosure whatever Qhull dropped.
    radius = float(np.sqrt(np.max(np.sum((pts - centre) ** 2, axis=1))))
    return centre, radius


def _hull_vertices(pts: np.ndarray) -> np.ndarray:
    """Convex hull vertices of pts, or pts itself when Qhull cannot build a 3D hull (flat/degenerate)."""
    try:
        return pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        # Flat (coplanar/collinear) or too few distinct points; the full set is still correct, just slower.
        return pts


def _first_outside(points: np.ndarray, start: int, sphere: Sphere, scale: float) -> int:
    """Index of the first point at or after ``start`` outside the sphere, or -1 when all are inside."""
    if start >= len(points):
        return -1
    centre, radius = sphere
    limit = radius + _CONTAIN_RTOL * max(radius, scale)
    diff = points[start:] - centre
    # Squared distances against a squared limit; a negative limit (the "empty" sphere) rejects everything.
    outside = np.flatnonzero(np.einsum("ij,ij->i", diff, diff) > (limit * abs(limit)))
    return start + int(outside[0]) if outside.size else -1


def _welzl(points: np.ndarray, boundary: list[np.ndarray], scale: float) -> Sphere:
    """Smallest sphere containing ``points`` with all ``boundary`` points (at most 4) on its surface.

    Incremental form: scan for the first point outside the current sphere, then rebuild the sphere from the
    points before it with that point added to the boundary. Recursion depth is bounded by the 4 boundary
    points a sphere in 3D can need. Move-to-front: each violator is moved to the start of ``points`` (in
    place), so points that define the sphere are tried first in later rebuilds, which cuts the number of
    rebuilds severalfold on voxel data.
    """
    if boundary:
        sphere = _sphere_through(boundary, scale)
    else:
        # An "empty" sphere that every point violates, so the first point seeds the boundary.
        sphere = (np.zeros(3), -1.0)
    if len(boundary) == 4:
        return sphere
    start = 0
    while True:
        i = _first_outside(points, start, sphere, scale)
        if i < 0:
            return sphere
        violator = points[i].copy()  # copy: the rows are reordered in place below
        sphere = _welzl(points[:i], boundary + [violator], scale)
        # Only the prefix up to i is reordered, so the scan can go on from i + 1.
        points[1 : i + 1] = points[:i].copy()
        points[0] = violator
        start = i + 1


def _sphere_through(boundary: list[np.ndarray], scale: float) -> Sphere:
    """Smallest sphere with the boundary points on its surface; robust fallback when that is undefined."""
    exact = _circumsphere(boundary)
    if exact is not None:
        return exact
    return _smallest_containing_subset_sphere(boundary, scale)


def _circumsphere(boundary: list[np.ndarray]) -> Sphere | None:
    """Smallest sphere through 1-4 points; None when they are degenerate (coincident/collinear/coplanar)."""
    n = len(boundary)
    if n == 1:
        return np.array(boundary[0], dtype=np.float64), 0.0
    # Scalar arithmetic: this runs thousands of times on 3-vectors, where numpy call overhead dominates.
    p0 = boundary[0].tolist()
    rel = [[q - o for q, o in zip(p.tolist(), p0)] for p in boundary[1:]]
    sq = [_dot(r, r) for r in rel]
    if min(sq) == 0.0:
        return None  # coincident points: fewer distinct points than the formula assumes
    if n == 2:
        offset = [0.5 * v for v in rel[0]]
    elif n == 3:
        a, b = rel
        axb = _cross(a, b)
        axb_sq = _dot(axb, axb)
        if axb_sq <= _DEGENERATE_RTOL * sq[0] * sq[1]:
            return None  # collinear: no circle through the three points
        # Circumcentre in the plane of the triangle: ((|a|^2 b - |b|^2 a) x (a x b)) / (2 |a x b|^2).
        w = [sq[0] * bi - sq[1] * ai for ai, bi in zip(a, b)]
        offset = [v / (2.0 * axb_sq) for v in _cross(w, axb)]
    else:
        a, b, c = rel
        bxc, cxa, axb = _cross(b, c), _cross(c, a), _cross(a, b)
        det = _dot(a, bxc)
        if abs(det) <= _DEGENERATE_RTOL * math.sqrt(sq[0] * sq[1] * sq[2]):
            return None  # coplanar: the circumsphere is undefined or infinite
        # Cramer's rule for 2 (p_i - p0) . x = |p_i - p0|^2, x = centre - p0.
        offset = [(sq[0] * u + sq[1] * v + sq[2] * t) / (2.0 * det) for u, v, t in zip(bxc, cxa, axb)]
    # Largest distance to any boundary point, so rounding never leaves one of them outside.
    to_others = [[o - r for o, r in zip(offset, rv)] for rv in rel]
    radius = math.sqrt(max(_dot(offset, offset), *(_dot(d, d) for d in to_others)))
    return np.array([o + q for o, q in zip(offset, p0)]), radius


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _smallest_containing_subset_sphere(boundary: list[np.ndarray], scale: float) -> Sphere:
    """Smallest among the circumspheres of subsets of ``boundary`` that contain every boundary point.

    Used when the boundary is degenerate (e.g. 3 collinear or 4 coplanar points, duplicates): the sphere
    through a subset that already contains the rest is then the best sphere the boundary admits.
    """
    pts = np.array(boundary)
    best: Sphere | None = None
    for size in range(1, len(boundary)):
        for subset in itertools.combinations(range(len(boundary)), size):
            sphere = _circumsphere([pts[k] for k in subset])
            if sphere is None:
                continue
            centre, radius = sphere
            limit = radius + _CONTAIN_RTOL * max(radius, scale)
            if np.all(np.sqrt(np.sum((pts - centre) ** 2, axis=1)) <= limit):
                if best is None or radius < best[1]:
                    best = sphere
    if best is None:
        # Cannot happen for finite points (the two farthest points always give a containing sphere up to
        # rounding); enclose everything around the mean as a last resort.
        centre = pts.mean(axis=0)
        best = (centre, float(np.sqrt(np.max(np.sum((pts - centre) ** 2, axis=1)))))
        logger.debug("degenerate boundary without a containing subset sphere: %s", pts.tolist())
    return best
