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
    dist = np.sqrt(np.sum((points[start:] - centre) ** 2, axis=1))
    outside = np.flatnonzero(dist > limit)
    return start + int(outside[0]) if outside.size else -1


def _welzl(points: np.ndarray, boundary: list[np.ndarray], scale: float) -> Sphere:
    """Smallest sphere containing ``points`` with all ``boundary`` points (at most 4) on its surface.

    Incremental form: scan for the first point outside the current sphere, then rebuild the sphere from the
    points before it with that point added to the boundary. Recursion depth is bounded by the 4 boundary
    points a sphere in 3D can need.
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
        sphere = _welzl(points[:i], boundary + [points[i]], scale)
        start = i + 1


def _sphere_through(boundary: list[np.ndarray], scale: float) -> Sphere:
    """Smallest sphere with the boundary points on its surface; robust fallback when that is undefined."""
    exact = _circumsphere(boundary)
    if exact is not None:
        return exact
    return _smallest_containing_subset_sphere(boundary, scale)


def _circumsphere(boundary: list[np.ndarray]) -> Sphere | None:
    """Smallest sphere through 1-4 points, or None when the points are degenerate (coincident/collinear/coplanar)."""
    p0 = boundary[0]
    n = len(boundary)
    if n == 1:
        return p0.copy(), 0.0
    rel = np.array([p - p0 for p in boundary[1:]])
    sq = np.sum(rel**2, axis=1)
    if np.any(sq == 0.0):
        return None  # coincident points: fewer distinct points than the formula assumes
    if n == 2:
        centre = p0 + 0.5 * rel[0]
    elif n == 3:
        a, b = rel
        axb = np.cross(a, b)
        axb_sq = float(axb @ axb)
        if axb_sq <= _DEGENERATE_RTOL * sq[0] * sq[1]:
            return None  # collinear: no circle through the three points
        # Circumcentre in the plane of the triangle, relative to p0.
        centre = p0 + np.cross(sq[0] * b - sq[1] * a, axb) / (2.0 * axb_sq)
    else:
        det = float(np.linalg.det(rel))
        if abs(det) <= _DEGENERATE_RTOL * float(np.prod(np.sqrt(sq))):
            return None  # coplanar: the circumsphere is undefined or infinite
        # |c - p_i|^2 = |c - p0|^2  <=>  2 (p_i - p0) . x = |p_i - p0|^2 with x = c - p0.
        centre = p0 + np.linalg.solve(2.0 * rel, sq)
    radius = float(np.sqrt(max(np.sum((np.array(boundary) - centre) ** 2, axis=1))))
    return centre, radius


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
