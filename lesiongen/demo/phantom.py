"""A procedural multiple-sclerosis-like brain MRI phantom, and the demo dataset (raw layout) built from it.

Each subject is drawn from its own seeded numpy Generator, so a dataset is reproducible bit for bit and needs no
downloads. The anatomy is built from cheap implicit shapes rather than from full-resolution filtering:

* brain: a perturbed ellipsoid (flatter below, wider behind, smoothly deformed); an approximate distance to its
  surface comes from the ellipsoid's implicit function divided by its gradient, so no distance transform is needed;
* cortex: a 2-3 mm grey-matter ribbon under the surface and along an interhemispheric fissure, folded by sulci that
  are the zero set of a band-limited random field which is constant along rays from the centre (so sulci run
  inwards, perpendicular to the surface, and draw a gyral maze on it);
* deep structures: two curved lateral ventricles, a slit-like third ventricle and deep grey nuclei, evaluated in
  small crops only;
* lesions: rotated, smoothly deformed ellipsoids placed mostly in periventricular, deep and juxtacortical white
  matter, with a soft edge, bright on FLAIR and dark on T1;
* whole heads (``whole_head``, a brain-extraction task): skull tables, marrow and scalp as shells of smoothly
  varying thickness around the brain, found from the same surface distance, and noise in the air.

Random fields are drawn on coarse knot grids and upsampled with ``scipy.ndimage.zoom``'s cubic spline, applied one
axis at a time as a small matrix (zoom is linear and separable); that is the same result as a 3D zoom at a fraction
of the cost, which keeps a 1 mm adult-sized subject well under a few seconds.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesiongen.io.images import NIBABEL, NIFTI_ENDINGS, READER_ALIASES, SUPPORTED_ENDINGS, ImageGeometry, write_image
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_folder, write_json

logger = logging.getLogger(__name__)

GM, WM, CSF = 1, 2, 3
TISSUE_LABELS = {"GM": GM, "WM": WM, "CSF": CSF}
CHANNEL_NAMES = {"0": "T1", "1": "FLAIR"}
LABELS = {"background": 0, "lesion": 1}

# clean intensities relative to T1 white matter, indexed by tissue label (0 = outside the brain)
_T1_LEVELS = np.array([0.0, 0.65, 1.0, 0.2], dtype=np.float32)
_FLAIR_LEVELS = np.array([0.0, 0.70, 0.55, 0.10], dtype=np.float32)
# deep grey nuclei are grey matter in the tissue map but lie between GM and WM on both sequences
_DEEP_GM_LEVELS = (0.80, 0.63)
SCANNER_SCALE = 1000.0
MIN_LESION_VOXELS = 5
_MIN_SHAPE = 16
_LESION_KINDS = ("periventricular", "deep", "juxtacortical")
_LESION_KIND_P = (0.45, 0.35, 0.20)
_SPLIT_SEED = {"training": 0, "test": 1, "healthy": 2}  # part of each subject's seed
# a realistic size for benchmarks (``lesiongen_make_demo_dataset --realistic``): 1 mm isotropic adult-brain-sized
# volumes
REALISTIC = {"shape": (180, 210, 170), "spacing": (1.0, 1.0, 1.0), "lesion_radius_mm": (1.5, 9.0)}
# a stroke-like thick-slice clinical variant (``lesiongen_make_demo_dataset --anisotropic``): 1 mm in-plane, 5 mm
# slices over the default's field of view, one to three larger lesions; anisotropic enough (5 mm > 3 x 1 mm, 26
# slices < a third of the in-plane size) that the planner adds the 2d segmentation configuration
ANISOTROPIC = {"shape": (26, 150, 128), "spacing": (5.0, 1.0, 1.0), "lesions_per_case": (1, 3),
               "lesion_radius_mm": (5.0, 12.0)}
# a brain-extraction variant (``lesiongen_make_demo_dataset --whole_head``): the same brain inside skull and scalp,
# noise in the air around the head (so "nonzero" is no longer the brain), labels = brain masks
WHOLE_HEAD = {"shape": (80, 92, 80), "whole_head": True}
# a whole head's brain radii as a fraction of the skull-stripped default's (which fill the field of view): room for
# skull and scalp, and the default brain's size in WHOLE_HEAD's larger field of view
_HEAD_BRAIN_FRACTION = 0.8
BRAIN_LABELS = {"background": 0, "brain": 1}


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class DemoConfig:
    """What :func:`write_demo_dataset` writes. Shapes and spacings are in array order (z, y, x); mm."""

    dataset_id: int = 501
    dataset_name: str = "DemoMS"
    n_lesion_cases: int = 12
    n_healthy: int = 6
    n_test: int = 2
    shape: tuple[int, int, int] = (64, 76, 64)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    lesions_per_case: tuple[int, int] = (2, 8)  # inclusive range
    lesion_radius_mm: tuple[float, float] = (3.0, 8.0)
    file_ending: str = ".nii.gz"
    seed: int = 0
    image_reader: str = "SimpleITKIO"  # written to dataset.json; NibabelIO needs no SimpleITK (NIfTI only)
    whole_head: bool = False  # skull, scalp and noisy air around the brain; labels are brain masks

    def __post_init__(self) -> None:
        # lists (e.g. from JSON) become tuples so configs stay hashable and comparable
        for name in ("shape", "spacing", "lesions_per_case", "lesion_radius_mm"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if not 1 <= self.dataset_id <= 999:
            problems.append(f"dataset_id must be 1-999, got {self.dataset_id}")
        if not self.dataset_name or any(c.isspace() or c in "/\\" for c in self.dataset_name):
            problems.append(f"dataset_name must be non-empty without spaces or slashes, got {self.dataset_name!r}")
        if self.n_lesion_cases < 1 or self.n_healthy < 0 or self.n_test < 0:
            problems.append("n_lesion_cases must be >= 1, n_healthy and n_test >= 0")
        if len(self.shape) != 3 or min(self.shape) < _MIN_SHAPE:
            problems.append(f"shape must be 3 sizes of at least {_MIN_SHAPE} voxels, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            problems.append(f"spacing must be 3 positive values, got {self.spacing}")
        if self.image_reader not in READER_ALIASES:
            problems.append(f"image_reader must be one of {sorted(READER_ALIASES)}, got {self.image_reader!r}")
        elif READER_ALIASES[self.image_reader] == NIBABEL and self.file_ending not in NIFTI_ENDINGS:
            problems.append(f"{self.image_reader} writes NIfTI only, not {self.file_ending}")
        low, high = self.lesions_per_case
        if not 1 <= low <= high:
            problems.append(f"lesions_per_case must be a range 1 <= low <= high, got {self.lesions_per_case}")
        r_low, r_high = self.lesion_radius_mm
        if not 0 < r_low <= r_high:
            problems.append(f"lesion_radius_mm must be a range 0 < low <= high, got {self.lesion_radius_mm}")
        if self.file_ending not in SUPPORTED_ENDINGS:
            problems.append(f"file_ending {self.file_ending!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if problems:
            raise LesiongenError("invalid demo configuration: " + "; ".join(problems))

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.dataset_name}"


@dataclass
class Phantom:
    """One subject. Arrays are (z, y, x); images are float32 in scanner-like units and exactly 0 outside the brain
    (a whole head: skull, scalp and noise outside it)."""

    t1: np.ndarray
    flair: np.ndarray
    label: np.ndarray  # uint8, 1 = lesion
    tissue: np.ndarray  # uint8, 1 GM, 2 WM, 3 CSF, 0 outside
    brain_mask: np.ndarray  # uint8
    spacing: tuple[float, float, float]
    n_lesions: int  # lesions placed (touching lesions may merge into one component)

    @property
    def images(self) -> list[np.ndarray]:
        """The channels in dataset.json order (T1, FLAIR)."""
        return [self.t1, self.flair]


# -------------------------------------------------------------------------------------------- random fields


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix that ``ndimage.zoom(order=3)`` applies along one axis (zoom is linear)."""
    if n_in == n_out:
        matrix = np.eye(n_in, dtype=np.float32)
    else:
        columns = [ndimage.zoom(unit, n_out / n_in, order=3, mode="mirror", grid_mode=False) for unit in np.eye(n_in)]
        matrix = np.stack(columns, axis=1).astype(np.float32)
    if matrix.shape != (n_out, n_in):
        raise AssertionError(f"zoom gave {matrix.shape[0]} samples instead of {n_out}")
    matrix.setflags(write=False)
    return matrix


def _upsample(knots: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Cubic-spline upsampling of a 3D knot grid to ``shape`` (corners to corners), one axis at a time."""
    out = np.asarray(knots, dtype=np.float32)
    out = np.tensordot(_interpolation_matrix(out.shape[0], shape[0]), out, axes=(1, 0))
    out = np.matmul(_interpolation_matrix(out.shape[1], shape[1]), out)
    out = np.matmul(out, _interpolation_matrix(out.shape[2], shape[2]).T)
    return np.ascontiguousarray(out)


def _knot_counts(shape: tuple[int, int, int], spacing: np.ndarray, knot_mm: float) -> tuple[int, int, int]:
    fov = (np.asarray(shape) - 1) * spacing
    counts = np.ceil(fov / knot_mm).astype(int) + 1
    return tuple(int(c) for c in np.clip(counts, 4, np.maximum(np.asarray(shape), 4)))


def _random_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray,
                  wavelength_mm: float) -> np.ndarray:
    """A smooth, roughly unit-variance random field with features about ``wavelength_mm`` across."""
    knots = rng.standard_normal(_knot_counts(shape, spacing, wavelength_mm / 2)).astype(np.float32)
    field = _upsample(knots, shape)
    # normalised on a sparse subsample: a full pass would cost as much as the upsampling itself
    field /= max(float(field[::3, ::3, ::3].std()), 1e-6)
    return field


# ------------------------------------------------------------------------------------------------ geometry


class _Grid:
    """Voxel-centre coordinates in mm relative to the brain centre, shaped for broadcasting."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray, centre_mm: np.ndarray):
        self.shape = shape
        self.spacing = spacing
        self.axes = [((np.arange(n) - (n - 1) / 2) * s - c).astype(np.float32)
                     for n, s, c in zip(shape, spacing, centre_mm)]
        self.z = self.axes[0][:, None, None]
        self.y = self.axes[1][None, :, None]
        self.x = self.axes[2][None, None, :]

    def box(self, centre: np.ndarray, half: np.ndarray) -> tuple[slice, slice, slice]:
        """Index slices of the voxels within ``centre ± half`` (mm); possibly empty at the border."""
        slices = []
        for axis, c, h in zip(self.axes, centre, half):
            lo = int(np.searchsorted(axis, c - h, side="left"))
            hi = int(np.searchsorted(axis, c + h, side="right"))
            slices.append(slice(lo, max(lo, hi)))
        return tuple(slices)

    def local(self, box: tuple[slice, slice, slice], origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinates of a crop, relative to ``origin`` (mm)."""
        z, y, x = (a[b] - o for a, b, o in zip(self.axes, box, origin))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def point(self, index: tuple[int, int, int]) -> np.ndarray:
        return np.array([a[i] for a, i in zip(self.axes, index)], dtype=np.float64)


@dataclass
class _Ventricle:
    """A lateral ventricle: an ellipsoid bent downwards at both ends and drifting sideways towards the back."""

    centre: np.ndarray  # (z, y, x) mm
    radii: np.ndarray
    bend: float  # how far the ends drop, in units of radii[0]
    drift: float  # lateral mm per mm towards posterior

    def centreline(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = (y - self.centre[1]) / self.radii[1]
        z = self.centre[0] - self.bend * self.radii[0] * t**2
        # only the posterior parts drift apart: the frontal horns stay parallel, either side of the septum
        x = self.centre[2] + np.sign(self.centre[2]) * self.drift * np.maximum(y - self.centre[1], 0)
        return z, x

    def rho(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, grow_mm: float = 0.0) -> np.ndarray:
        zc, xc = self.centreline(y)
        rz, ry, rx = self.radii + grow_mm
        return np.sqrt(((z - zc) / rz) ** 2 + ((y - self.centre[1]) / ry) ** 2 + ((x - xc) / rx) ** 2)

    def half_extent(self, margin: float) -> np.ndarray:
        rz, ry, rx = self.radii
        return np.array([rz * (1 + self.bend) + margin, ry + margin, rx + self.drift * ry + margin])


@dataclass
class _Anatomy:
    """The healthy subject plus what lesion placement needs to find white matter near ventricles and cortex."""

    grid: _Grid
    tissue: np.ndarray
    brain: np.ndarray  # bool
    deep_gm: list[tuple[tuple[slice, slice, slice], np.ndarray]]  # crops of deep grey nuclei
    depth: np.ndarray  # mm below the outer surface or the fissure
    fold: np.ndarray  # ~signed mm from the nearest sulcal mid-surface
    sulcus_depth: np.ndarray
    gm_thickness: np.ndarray
    csf_thickness: np.ndarray
    outer_depth: np.ndarray  # ~mm below the brain's outer surface, negative outside it
    sulcus_width: float
    ventricles: list[_Ventricle]
    periventricular: np.ndarray  # flat indices of white matter next to the ventricles

    def cortex_distance(self, flat: np.ndarray) -> np.ndarray:
        """Approximate mm from white-matter voxels ``flat`` to the nearest cortical grey matter."""
        depth = self.depth.ravel()[flat]
        gm = self.gm_thickness.ravel()[flat]
        below_ribbon = depth - self.csf_thickness.ravel()[flat] - gm
        # distance to the grey-matter slab lining a sulcus (open at the surface, closed at its fundus)
        side = np.abs(self.fold.ravel()[flat]) - (self.sulcus_width / 2 + gm)
        under = depth - (self.sulcus_depth.ravel()[flat] + gm)
        slab = np.where(under <= 0, side, np.hypot(np.maximum(side, 0), under))
        return np.minimum(below_ribbon, slab)


def _fold_field(rng: np.random.Generator, grid: _Grid, radii: np.ndarray, wavelength_mm: float) -> np.ndarray:
    """A gyral-maze field in ~mm: a sum of random plane waves evaluated on the unit ellipsoid and extended along
    rays, so its zero set (the sulci) runs inwards from the surface."""
    counts = _knot_counts(grid.shape, grid.spacing, wavelength_mm / 5)
    knots = [np.linspace(a[0], a[-1], n, dtype=np.float32) for a, n in zip(grid.axes, counts)]
    kz, ky, kx = np.meshgrid(*knots, indexing="ij")
    rho = np.sqrt((kz / radii[0]) ** 2 + (ky / radii[1]) ** 2 + (kx / radii[2]) ** 2)
    points = np.stack([kz, ky, kx], axis=-1) / np.maximum(rho, 0.25)[..., None]
    n_waves = 32
    directions = rng.standard_normal((n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavenumbers = 2 * np.pi / (wavelength_mm * rng.uniform(0.8, 1.25, n_waves))
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    waves = (directions * wavenumbers[:, None]).T.astype(np.float32)
    values = np.cos(points @ waves + phases.astype(np.float32)) @ np.full(n_waves, np.sqrt(2 / n_waves), np.float32)
    # the tangential gradient of such a field has an RMS of k*sqrt(2/3): dividing by it turns values into ~mm
    scale = float(np.mean(wavenumbers)) * np.sqrt(2 / 3)
    return _upsample(values / scale, grid.shape)


def _ellipsoid_crop(grid: _Grid, centre: np.ndarray, radii: np.ndarray,
                    wobble: np.ndarray | None = None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The crop around an ellipsoid and its mask there; ``wobble`` (a full-size field) roughens the wall."""
    box = grid.box(centre, radii * 1.15 + grid.spacing)
    z, y, x = grid.local(box, centre)
    rho = np.sqrt((z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2)
    limit = 1.0 if wobble is None else 1.0 + 0.08 * wobble[box]
    return box, rho < limit


def _build_anatomy(shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator,
                   brain_fraction: float = 1.0) -> _Anatomy:
    half_fov = np.asarray(shape) * spacing / 2
    centre = rng.uniform(-0.01, 0.01, 3) * half_fov
    grid = _Grid(shape, spacing, centre)
    z, y, x = grid.z, grid.y, grid.x
    # at most ~0.93 of the half field of view with every perturbation below: background stays on all sides
    radii = half_fov * np.array([0.80, 0.85, 0.80]) * rng.uniform(0.96, 1.03, 3) * brain_fraction
    az, ay, ax = radii
    mean_radius = float(np.cbrt(np.prod(radii)))
    voxel = float(spacing.min())

    # ---- brain: flatter below, wider behind (+y is posterior, +z superior in LPS), smoothly deformed
    az_eff = np.where(z < 0, az * rng.uniform(0.82, 0.92), az).astype(np.float32)
    ax_eff = (ax * (1 + rng.uniform(0.0, 0.04) * np.clip(y / ay, -1, 1))).astype(np.float32)
    shape_noise = _random_field(rng, shape, spacing, mean_radius)
    surface = 1 + 0.025 * np.clip(shape_noise, -1.5, 1.5)
    rho2 = (z / az_eff) ** 2 + (y / ay) ** 2 + (x / ax_eff) ** 2
    grad2 = (z / az_eff**2) ** 2 + (y / ay**2) ** 2 + (x / ax_eff**2) ** 2
    rho = np.sqrt(rho2)
    # first-order distance to the implicit surface: (s - rho) / |grad rho|, with |grad rho| = sqrt(grad2) / rho
    depth_outer = (surface - rho) * rho / np.sqrt(np.maximum(grad2, 1e-12))
    del rho2, grad2, rho, surface
    brain = depth_outer > 0
    border = 2  # a guard so the brain never touches the edge of the volume
    brain[:border] = brain[-border:] = False
    brain[:, :border] = brain[:, -border:] = False
    brain[:, :, :border] = brain[:, :, -border:] = False

    # ---- ventricles (lateral pair and a midline slit), bigger in "older" subjects
    size = rng.uniform(0.75, 1.45)
    sx = float(spacing[2])
    v_radii = np.array([0.10 * az * size, 0.34 * ay * np.sqrt(size), max(0.075 * ax * size, 1.2 * sx)])
    # half the septum plus room for the wall's wobble: the two ventricles must not fuse
    v_centre_x = 1.06 * v_radii[2] + max(1.0, 0.6 * sx)
    ventricles = [
        _Ventricle(np.array([0.10 * az, -0.03 * ay, side * v_centre_x]),
                   v_radii * np.append(rng.uniform(0.92, 1.08, 2), 1.0),
                   bend=rng.uniform(0.5, 1.0), drift=rng.uniform(0.05, 0.15))
        for side in (-1, 1)
    ]
    callosum_bottom = max(v.centre[0] + v.radii[0] for v in ventricles)
    fissure_bottom_centre = callosum_bottom + max(0.09 * az, 1.5 * float(spacing[0]))

    # ---- interhemispheric fissure: a slab at the midline, down to the corpus callosum, through at both poles
    width = max(rng.uniform(2.0, 3.0), 1.0 * sx)
    midline = rng.uniform(1.0, 2.0) * np.sin(2 * np.pi * y / rng.uniform(80, 140) + rng.uniform(0, 2 * np.pi))
    bottom = fissure_bottom_centre - 1.6 * az * np.clip((np.abs(y) / ay - 0.6) / 0.3, 0, 1)
    sideways = np.abs(x - midline) - width / 2
    below = bottom - z
    fissure_distance = np.where(below <= 0, sideways, np.hypot(np.maximum(sideways, 0), below))
    depth = np.minimum(depth_outer, fissure_distance)
    fissure = fissure_distance < 0
    del sideways, below, fissure_distance

    # ---- cortex: ribbon, surface CSF in places, sulci
    fold = _fold_field(rng, grid, radii, max(rng.uniform(18.0, 26.0), 6 * float(spacing.max())))
    # a finer 3D wiggle (in mm) bends the sulci as they run inwards instead of leaving straight spokes
    fold += 1.5 * _random_field(rng, shape, spacing, 14.0)
    sulcus_depth = np.clip(0.2 * mean_radius * (1 + 0.3 * _random_field(rng, shape, spacing, 50.0)),
                           0.1 * mean_radius, 0.35 * mean_radius)
    gm_thickness = np.clip(rng.uniform(2.3, 2.8) + 0.35 * _random_field(rng, shape, spacing, 40.0), 1.8, 3.3)
    csf_presence = _random_field(rng, shape, spacing, 45.0) > rng.uniform(0.0, 0.6)
    csf_thickness = (csf_presence * max(rng.uniform(1.0, 2.0), 0.6 * voxel)).astype(np.float32)
    sulcus_width = max(rng.uniform(1.0, 1.6) * np.sqrt(size), 0.5 * voxel)
    abs_fold = np.abs(fold)
    csf = (depth_outer < csf_thickness) | fissure
    csf |= (abs_fold < sulcus_width / 2) & (depth < sulcus_depth)
    gm = depth < csf_thickness + gm_thickness
    gm |= (abs_fold < sulcus_width / 2 + gm_thickness) & (depth < sulcus_depth + gm_thickness)
    del abs_fold, csf_presence

    # ---- deep grey nuclei (basal ganglia, thalami) and the ventricles, evaluated in crops only
    deep_gm = []
    for side in (-1, 1):
        lateral = v_centre_x + v_radii[2] + 0.10 * ax
        for c, r in (((-0.06 * az, -0.10 * ay, side * lateral), (0.13 * az, 0.20 * ay, 0.08 * ax)),
                     ((-0.11 * az, 0.10 * ay, side * 0.09 * ax), (0.11 * az, 0.13 * ay, 0.08 * ax))):
            r = np.maximum(np.array(r) * rng.uniform(0.9, 1.1, 3), 1.2 * spacing)
            box, inside = _ellipsoid_crop(grid, np.array(c), r, shape_noise)
            gm[box] |= inside
            deep_gm.append((box, inside))
    third = np.array([0.09 * az, 0.11 * ay, max(1.2, 0.6 * sx)]) * np.array([size, np.sqrt(size), np.sqrt(size)])
    box, inside = _ellipsoid_crop(grid, np.array([-0.10 * az, 0.06 * ay, 0.0]), third)
    csf[box] |= inside
    pv_margin = max(4.0, 1.5 * float(spacing.max()))
    pv_boxes = []
    for v in ventricles:
        box = grid.box(v.centre, v.half_extent(pv_margin + float(spacing.max())))
        lz, ly, lx = grid.local(box, np.zeros(3))
        csf[box] |= v.rho(lz, ly, lx) < 1 + 0.05 * np.clip(shape_noise[box], -1, 1)
        pv_boxes.append((box, v.rho(lz, ly, lx, grow_mm=pv_margin) < 1))
    del shape_noise

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = WM
    tissue[brain & gm] = GM
    tissue[brain & csf] = CSF
    del gm, csf

    periventricular = []
    for box, zone in pv_boxes:
        zone = zone & (tissue[box] == WM)
        local = np.nonzero(zone)
        periventricular.append(np.ravel_multi_index(
            tuple(ix + b.start for ix, b in zip(local, box)), shape))
    return _Anatomy(grid=grid, tissue=tissue, brain=brain, deep_gm=deep_gm, depth=depth, fold=fold,
                    sulcus_depth=sulcus_depth, gm_thickness=gm_thickness, csf_thickness=csf_thickness,
                    outer_depth=depth_outer, sulcus_width=sulcus_width, ventricles=ventricles,
                    periventricular=np.concatenate(periventricular))


# --------------------------------------------------------------------------------------------------- lesions


def _random_rotation(rng: np.random.Generator, first_axis: np.ndarray | None = None) -> np.ndarray:
    """A rotation matrix whose columns are the lesion's axes; the first one is ``first_axis`` when given."""
    if first_axis is None:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        return q * np.sign(np.diag(r))
    e1 = first_axis / np.linalg.norm(first_axis)
    helper = rng.standard_normal(3)
    e2 = helper - helper.dot(e1) * e1
    e2 /= max(np.linalg.norm(e2), 1e-9)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


def _sample_white_matter(rng: np.random.Generator, anatomy: _Anatomy, kind: str) -> int | None:
    """A random flat voxel index of white matter of the wanted kind, or None."""
    if kind == "periventricular":
        candidates = anatomy.periventricular
        return int(candidates[rng.integers(len(candidates))]) if len(candidates) else None
    near = max(2.0, 0.75 * float(anatomy.grid.spacing.max()))
    size = int(np.prod(anatomy.grid.shape))
    # rejection sampling: cheaper than listing every white-matter voxel of a large volume
    for _ in range(40):
        flat = rng.integers(0, size, 512)
        flat = flat[anatomy.tissue.ravel()[flat] == WM]
        if not len(flat):
            continue
        distance = anatomy.cortex_distance(flat)
        ok = flat[distance < near] if kind == "juxtacortical" else flat[distance > near + 1.0]
        if len(ok):
            return int(ok[0])
    return None


def _lesion_radius(rng: np.random.Generator, radius_range: tuple[float, float], spacing: np.ndarray) -> float:
    low, high = radius_range
    # log-uniform with the mass pushed towards small radii, like MS lesion volumes
    radius = float(np.exp(np.log(low) + (np.log(high) - np.log(low)) * rng.uniform() ** 1.5))
    # at least a few voxels even after deformation and clipping to white matter
    smallest = float(np.cbrt(2 * MIN_LESION_VOXELS * np.prod(spacing) * 3 / (4 * np.pi)))
    return max(radius, smallest)


def _add_lesions(rng: np.random.Generator, anatomy: _Anatomy, n_lesions: int, radius_range: tuple[float, float],
                 t1: np.ndarray, flair: np.ndarray) -> tuple[np.ndarray, int]:
    """Paint ``n_lesions`` lesions into ``t1``/``flair`` (in place); returns the label map and how many were placed."""
    grid = anatomy.grid
    spacing = grid.spacing
    label = np.zeros(grid.shape, dtype=np.uint8)
    edge_mm = max(1.0, 0.5 * float(spacing.mean()))
    placed = 0
    for _ in range(n_lesions):
        kind = _LESION_KINDS[rng.choice(len(_LESION_KINDS), p=_LESION_KIND_P)]
        radius = _lesion_radius(rng, radius_range, spacing)
        for _attempt in range(30):
            flat = _sample_white_matter(rng, anatomy, kind)
            if flat is None:
                kind = "deep"
                continue
            index = np.unravel_index(flat, grid.shape)
            if label[index]:
                continue
            centre = grid.point(index) + rng.uniform(-0.5, 0.5, 3) * spacing
            axis = None
            if kind == "periventricular":
                # Dawson's fingers: ovoid lesions pointing away from the ventricle wall
                v = min(anatomy.ventricles, key=lambda v: float(v.rho(*centre)))
                zc, xc = v.centreline(np.array(centre[1]))
                axis = np.array([centre[0] - zc, 0.0, centre[2] - xc])
                axis = axis if np.linalg.norm(axis) > 1e-6 else None
            rotation = _random_rotation(rng, axis)
            aspect = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9)])
            radii = radius * aspect / np.cbrt(np.prod(aspect))  # same volume as a sphere of ``radius``
            amplitude = rng.uniform(0.1, 0.25)
            box = grid.box(centre, np.full(3, radii.max() * (1 + 2 * amplitude) + edge_mm) + spacing)
            if any(b.stop - b.start < 2 for b in box):
                continue
            lz, ly, lx = grid.local(box, centre)
            u = [rotation[0, i] * lz + rotation[1, i] * ly + rotation[2, i] * lx for i in range(3)]
            rho = np.sqrt(sum((ui / ri) ** 2 for ui, ri in zip(u, radii)))
            crop_shape = rho.shape
            wobble = ndimage.zoom(rng.standard_normal((5, 5, 5)), np.array(crop_shape) / 5, order=3, mode="mirror")
            boundary = 1 + amplitude * np.clip(wobble[: crop_shape[0], : crop_shape[1], : crop_shape[2]], -2, 2)
            inside_mm = (boundary - rho) * radius  # ~signed distance to the lesion wall
            # the soft edge sits mostly outside the label, so even small labelled lesions keep most of their contrast
            membership = np.clip(0.7 + inside_mm / edge_mm, 0, 1)
            tissue = anatomy.tissue[box]
            # lesions stay out of CSF; only juxtacortical ones may reach into the cortex
            allowed = (tissue == WM) | ((tissue == GM) & (kind == "juxtacortical"))
            lesion = (inside_mm >= 0) & allowed
            # clipping to white matter can cut off slivers; a lesion is one piece, so keep the largest
            pieces, n_pieces = ndimage.label(lesion)
            if n_pieces > 1:
                sizes = np.bincount(pieces.ravel())
                sizes[0] = 0
                lesion = pieces == int(np.argmax(sizes))
            existing = label[box]
            new = int(np.count_nonzero(lesion & (existing == 0)))
            if new < MIN_LESION_VOXELS or new < 0.5 * np.count_nonzero(lesion):
                continue
            existing[lesion] = 1
            # the soft edge reaches one voxel beyond the kept piece, not into the cut-off slivers
            weight = (membership * (allowed & ndimage.binary_dilation(lesion))).astype(np.float32)
            core = np.clip(1 - rho / boundary, 0, 1)  # larger lesions darken towards their core on T1
            t1_level = _T1_LEVELS[WM] * rng.uniform(0.6, 0.8) * (1 - 0.15 * core * (radius > 3.0))
            flair_level = _FLAIR_LEVELS[WM] * rng.uniform(1.4, 1.8)
            t1[box] += weight * (t1_level - t1[box])
            flair[box] += weight * (flair_level - flair[box])
            placed += 1
            break
        else:
            logger.debug("could not place a %s lesion of radius %.1f mm", kind, radius)
    return label, placed


# -------------------------------------------------------------------------------------------------- images


def _render(rng: np.random.Generator, anatomy: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Clean tissue intensities with a fine texture; deep nuclei between GM and WM."""
    texture = 1 + 0.025 * np.clip(_random_field(rng, anatomy.grid.shape, anatomy.grid.spacing, 8.0), -3, 3)
    t1 = _T1_LEVELS[anatomy.tissue] * texture
    flair = _FLAIR_LEVELS[anatomy.tissue] * texture
    for box, inside in anatomy.deep_gm:
        deep = inside & (anatomy.tissue[box] == GM)
        t1[box][deep] = _DEEP_GM_LEVELS[0] * texture[box][deep]
        flair[box][deep] = _DEEP_GM_LEVELS[1] * texture[box][deep]
    return t1, flair


# clean skull and scalp intensities (T1, FLAIR) relative to T1 white matter: cortical bone is dark on both, the
# diploe's marrow fat and the scalp's fat are bright on T1 and less so on FLAIR
_BONE_LEVELS = (0.06, 0.04)
_DIPLOE_LEVELS = (0.55, 0.35)
_SCALP_LEVELS = (0.90, 0.60)


def _add_head(rng: np.random.Generator, anatomy: _Anatomy, t1: np.ndarray, flair: np.ndarray) -> None:
    """Paint skull (inner table, diploe, outer table) and scalp around the brain into ``t1``/``flair`` (in place),
    with thicknesses that vary smoothly over the head; air (0 before acquisition) around it."""
    grid = anatomy.grid
    outside = -anatomy.outer_depth  # ~mm from the brain surface; the first-order estimate stays smooth far out
    skull = np.clip(rng.uniform(5.0, 7.0) + 1.0 * _random_field(rng, grid.shape, grid.spacing, 60.0), 3.5, 9.0)
    scalp = np.clip(rng.uniform(4.0, 6.0) + 1.0 * _random_field(rng, grid.shape, grid.spacing, 60.0), 2.5, 8.0)
    texture = 1 + 0.05 * np.clip(_random_field(rng, grid.shape, grid.spacing, 10.0), -3, 3)
    layers = [  # (outer edge in mm from the brain surface, (T1, FLAIR)), inside out
        (0.3 * skull, _BONE_LEVELS),
        (0.7 * skull, _DIPLOE_LEVELS),
        (skull, _BONE_LEVELS),
        (skull + scalp, _SCALP_LEVELS),
    ]
    inner = np.zeros(grid.shape, dtype=np.float32)
    for outer, (t1_level, flair_level) in layers:
        layer = ~anatomy.brain & (outside >= inner) & (outside < outer)
        t1[layer] = t1_level * texture[layer]
        flair[layer] = flair_level * texture[layer]
        inner = outer
    border = 1  # air on every side of the volume, as in a scan whose field of view contains the head
    head = anatomy.brain | (outside < skull + scalp)
    head[:border] = head[-border:] = False
    head[:, :border] = head[:, -border:] = False
    head[:, :, :border] = head[:, :, -border:] = False
    t1[~head] = 0
    flair[~head] = 0


def _acquire(rng: np.random.Generator, clean: np.ndarray, brain_flat: np.ndarray | None,
             spacing: np.ndarray, reference: float) -> np.ndarray:
    """Partial volume, bias field, Rician noise and scanner scaling; exactly 0 outside the brain (``brain_flat``,
    flat indices), or noise in the air around a whole head (``brain_flat`` None: every voxel is acquired)."""
    shape = clean.shape
    image = ndimage.gaussian_filter(clean, sigma=0.5, truncate=3.0)  # partial volume at tissue borders
    # a head-sized bias field within ±10 %; linear in the field (a tanh would flatten it into plateaus with edges)
    bias = _random_field(rng, shape, spacing, 2.0 * float(np.max(np.asarray(shape) * spacing)))
    image *= 1 + 0.1 * np.clip(bias / 2.5, -1, 1)
    if brain_flat is None:
        brain_flat = np.arange(image.size)
    values = image.ravel()[brain_flat]
    sigma = reference * rng.uniform(0.02, 0.03)
    real = values + sigma * rng.standard_normal(values.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(values.shape, dtype=np.float32)
    gain = SCANNER_SCALE * rng.uniform(0.9, 1.1)
    out = np.zeros(shape, dtype=np.float32)
    # never 0 inside the brain, so the brain mask of a skull-stripped scan can be read off the image
    out.ravel()[brain_flat] = np.maximum(np.hypot(real, imaginary) * gain, 1.0)
    return out


def make_phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator,
                 n_lesions: int, lesion_radius_mm: tuple[float, float] = (1.5, 7.0),
                 whole_head: bool = False) -> Phantom:
    """One random subject of ``shape`` voxels at ``spacing`` mm (both (z, y, x)) with ``n_lesions`` lesions;
    skull-stripped, or a ``whole_head`` with skull, scalp and noise around it."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < _MIN_SHAPE:
        raise ValueError(f"shape must be 3 sizes of at least {_MIN_SHAPE} voxels, got {shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    anatomy = _build_anatomy(shape, spacing_arr, rng, _HEAD_BRAIN_FRACTION if whole_head else 1.0)
    t1, flair = _render(rng, anatomy)
    label, placed = _add_lesions(rng, anatomy, n_lesions, lesion_radius_mm, t1, flair)
    if whole_head:
        _add_head(rng, anatomy, t1, flair)
    brain_flat = None if whole_head else np.flatnonzero(anatomy.brain)
    t1 = _acquire(rng, t1, brain_flat, spacing_arr, float(_T1_LEVELS.max()))
    flair = _acquire(rng, flair, brain_flat, spacing_arr, float(_FLAIR_LEVELS.max()))
    return Phantom(t1=t1, flair=flair, label=label, tissue=anatomy.tissue,
                   brain_mask=anatomy.brain.astype(np.uint8), spacing=tuple(float(s) for s in spacing),
                   n_lesions=placed)


# ------------------------------------------------------------------------------------------------- dataset


def _subject_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # one stream per subject: changing how many cases of one split are written leaves the others unchanged
    return np.random.default_rng([seed, _SPLIT_SEED[split], index])


def _write_case(folder: Path, config: DemoConfig, case: str, phantom: Phantom, image_dir: str,
                label_dir: str | None, tissue_dir: str | None, mask_dir: str | None) -> None:
    geometry = ImageGeometry.simple(phantom.t1.shape, config.spacing)
    ending = config.file_ending
    for channel, image in enumerate(phantom.images):
        # float32, not rounded: ITK's NIfTI reader reads NaN as 0 in float files whose other values are all
        # integers, which would hide the NaN that integrity tests plant in demo images
        write_image(folder / image_dir / f"{case}_{channel:04d}{ending}", image.astype(np.float32), geometry,
                    config.image_reader)
    if label_dir:
        # a whole-head dataset is a brain-extraction task: its label is the brain
        label = phantom.brain_mask if config.whole_head else phantom.label
        write_image(folder / label_dir / f"{case}{ending}", label, geometry, config.image_reader)
    if tissue_dir:
        write_image(folder / tissue_dir / f"{case}{ending}", phantom.tissue, geometry, config.image_reader)
    if mask_dir:
        write_image(folder / mask_dir / f"{case}{ending}", phantom.brain_mask, geometry, config.image_reader)


def _dataset_json(config: DemoConfig) -> dict:
    if config.whole_head:
        description = ("Procedural MS-like brain MRI phantom (lesiongen demo); whole-head T1 and FLAIR with skull, "
                       "scalp and noise; labels are brain masks (a brain-extraction task).")
    else:
        description = "Procedural MS-like brain MRI phantom (lesiongen demo); skull-stripped T1 and FLAIR."
    content = {
        "name": config.dataset_name,
        "description": description,
        "channel_names": dict(CHANNEL_NAMES),
        "labels": dict(BRAIN_LABELS if config.whole_head else LABELS),
        "numTraining": config.n_lesion_cases,
        "file_ending": config.file_ending,
        "overwrite_image_reader_writer": config.image_reader,
        "tissue_labels": dict(TISSUE_LABELS),
        "numHealthy": config.n_healthy,
        "numTest": config.n_test,
    }
    if config.whole_head:
        del content["tissue_labels"]  # no tissue maps are written
    return content


def _write_all(folder: Path, config: DemoConfig) -> None:
    low, high = config.lesions_per_case
    # a whole-head dataset's labels are its brain masks; its healthy heads come without masks (that is the task)
    maps = (None, None) if config.whole_head else ("tissueTr", "brainmasksTr")
    splits = (
        ("training", "demo", config.n_lesion_cases, ("imagesTr", "labelsTr", *maps)),
        ("test", "test", config.n_test, ("imagesTs", "labelsTs", None, None)),
        ("healthy", "healthy", config.n_healthy,
         ("imagesHealthy", None, None, None) if config.whole_head else
         ("imagesHealthy", None, "tissueHealthy", "brainmasksHealthy")),
    )
    for split, prefix, count, folders in splits:
        for index in range(count):
            rng = _subject_rng(config.seed, split, index)
            n_lesions = 0 if split == "healthy" else int(rng.integers(low, high + 1))
            phantom = make_phantom(config.shape, config.spacing, rng, n_lesions, config.lesion_radius_mm,
                                   config.whole_head)
            case = f"{prefix}_{index:03d}"
            _write_case(folder, config, case, phantom, *folders)
            logger.debug("%s: %d lesion(s)", case, phantom.n_lesions)
    write_json(folder / "dataset.json", _dataset_json(config))


def write_demo_dataset(raw_root: str | Path, config: DemoConfig = DemoConfig(), overwrite: bool = False) -> Path:
    """Write the demo dataset below ``raw_root`` in the raw layout and return its folder.

    The dataset is built in a hidden sibling folder and swapped into place at the end (``atomic_folder``), so an
    interrupted run leaves either nothing or the previous dataset, never half a dataset.
    """
    folder = Path(raw_root) / config.folder_name
    if folder.exists() and not overwrite:
        raise LesiongenError(f"{folder}: dataset folder already exists (overwrite to replace it)")
    logger.info("writing demo dataset %s (%d lesion, %d test, %d healthy cases of %s voxels)", folder.name,
                config.n_lesion_cases, config.n_test, config.n_healthy, "x".join(map(str, config.shape)))
    try:
        with atomic_folder(folder, replace=overwrite) as staging:
            _write_all(staging, config)
    except FileExistsError:  # appeared while we were writing
        raise LesiongenError(f"{folder}: dataset folder already exists (overwrite to replace it)") from None
    return folder
