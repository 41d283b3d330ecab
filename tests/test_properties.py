"""Property-based tests (hypothesis): image I/O round trips, minimum enclosing spheres, feathered blending and
sliding-window reassembly hold for random inputs, not only for the hand-picked ones of the other tests."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from scipy.optimize import nnls
from scipy.spatial.transform import Rotation

from lesiongen.diffusion.inpainting import feather_blend
from lesiongen.fingerprint.spheres import minimum_enclosing_sphere
from lesiongen.io.images import ImageGeometry, read_image, write_image
from lesiongen.models.sliding_window import predict_sliding_window

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ image round trip

DTYPES = (np.uint8, np.int16, np.float32)
FORMATS = ((".nii.gz", None), (".nii.gz", "NibabelIO"), (".nrrd", None))


@st.composite
def images(draw) -> tuple[np.ndarray, ImageGeometry]:
    """A random scalar 3D image: shape 2-6 per axis, a dtype of DTYPES, any rotation (with or without a reflection),
    spacing 0.2-5 mm and origin within 200 mm."""
    shape = tuple(draw(st.lists(st.integers(2, 6), min_size=3, max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    spacing = tuple(draw(st.lists(st.floats(0.2, 5.0), min_size=3, max_size=3)))
    origin = tuple(draw(st.lists(st.floats(-200.0, 200.0), min_size=3, max_size=3)))
    rotation = Rotation.from_quat(draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4).filter(
        lambda q: np.linalg.norm(q) > 0.1))).as_matrix()
    if draw(st.booleans()):
        rotation = rotation @ np.diag([1.0, 1.0, -1.0])  # a left-handed frame, as radiological NIfTIs have
    return array, ImageGeometry(spacing, origin, tuple(float(v) for v in rotation.ravel()), shape)


@PROPERTY
@given(image=images(), file_format=st.sampled_from(FORMATS))
def test_write_then_read_keeps_geometry_voxels_and_dtype(image, file_format):
    array, geometry = image
    ending, reader = file_format
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{ending}"
        write_image(path, array, geometry, reader)
        back, read_geometry = read_image(path, reader)
    assert read_geometry.matches(geometry) is None, read_geometry.matches(geometry)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


# ---------------------------------------------------------------------------------- minimum enclosing sphere


def _sphere_through(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Smallest sphere with every point of ``points`` (1-4) on it, from the Gram system; None when degenerate."""
    base, rest = points[0], points[1:] - points[0]
    if len(rest) == 0:
        return base, 0.0
    gram = rest @ rest.T
    if abs(np.linalg.det(gram)) <= 1e-9 * np.prod(np.diag(gram)):
        return None
    weights = np.linalg.solve(2 * gram, np.diag(gram))
    centre = base + weights @ rest
    return centre, float(np.linalg.norm(points - centre, axis=1).max())


def _brute_force_radius(points: np.ndarray) -> float:
    """Smallest radius over the spheres through subsets of up to 4 points that enclose every point."""
    best = np.inf
    scale = max(float(np.ptp(points, axis=0).max()), 1.0)
    for size in range(1, min(4, len(points)) + 1):
        for subset in itertools.combinations(range(len(points)), size):
            sphere = _sphere_through(points[list(subset)])
            if sphere is None:
                continue
            centre, radius = sphere
            if np.linalg.norm(points - centre, axis=1).max() <= radius + 1e-9 * scale:
                best = min(best, radius)
    return best


def _coordinates(low: float, high: float):
    # whole numbers give the collinear / coplanar / repeated points that voxel data is full of
    return st.one_of(st.floats(low, high), st.integers(int(low), int(high)).map(float))


point_sets = hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.just(3)), elements=_coordinates(-20.0, 20.0))


@PROPERTY
@given(points=point_sets)
def test_minimum_enclosing_sphere_encloses_and_no_smaller_sphere_does(points):
    centre, radius = minimum_enclosing_sphere(points)
    scale = max(float(np.ptp(points, axis=0).max()), 1.0)
    assert np.linalg.norm(points - centre, axis=1).max() <= radius + 1e-12 * scale
    assert radius == pytest.approx(_brute_force_radius(points), rel=1e-7, abs=1e-9 * scale)


@PROPERTY
@given(points=hnp.arrays(np.float64, st.tuples(st.integers(32, 120), st.just(3)), elements=_coordinates(-50.0, 50.0)))
def test_minimum_enclosing_sphere_of_many_points_is_optimal(points):
    """Optimality certificate for the hull-reduced path: the centre lies in the convex hull of the points on the
    sphere (otherwise moving the centre towards them would shrink it)."""
    centre, radius = minimum_enclosing_sphere(points)
    distance = np.linalg.norm(points - centre, axis=1)
    assert distance.max() <= radius * (1 + 1e-12) + 1e-12
    support = points[distance >= radius * (1 - 1e-7) - 1e-9]
    if radius == 0:
        return
    # convex weights w >= 0 with sum 1 and sum w_i p_i = centre; the sum row is weighted so it is kept exactly
    system = np.vstack([support.T, 1e3 * np.ones(len(support))])
    target = np.concatenate([centre, [1e3]])
    _, residual = nnls(system, target)
    assert residual <= 1e-6 * max(radius, 1.0), (residual, radius)


# ------------------------------------------------------------------------------------------- feather blend


@st.composite
def blend_inputs(draw):
    shape = tuple(draw(st.lists(st.integers(3, 9), min_size=3, max_size=3)))
    channels = draw(st.integers(1, 2))
    values = st.floats(-1e3, 1e3, width=32)
    known = draw(hnp.arrays(np.float32, (channels, *shape), elements=values))
    generated = draw(hnp.arrays(np.float32, (channels, *shape), elements=values))
    mask = draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))
    return known, generated, mask, draw(st.integers(0, 3))


@PROPERTY
@given(inputs=blend_inputs())
def test_feather_blend_keeps_far_voxels_uses_generated_in_the_mask_and_stays_between(inputs):
    known, generated, mask, margin = inputs
    out = feather_blend(known, generated, mask, margin)
    assert out.shape == known.shape and out.dtype == known.dtype
    if mask.any():
        # farther than the margin in the 26-neighbourhood sense (what the model may edit is the mask grown so)
        far = ndimage.distance_transform_cdt(~mask, metric="chessboard") > margin
    else:
        far = np.ones_like(mask)
    assert out[:, far].tobytes() == known[:, far].tobytes(), "a voxel beyond the margin changed"
    np.testing.assert_array_equal(out[:, mask], generated[:, mask])
    low, high = np.minimum(known, generated), np.maximum(known, generated)
    slack = 1e-6 * np.maximum(np.abs(low), np.abs(high))
    assert np.all(out >= low - slack) and np.all(out <= high + slack)


# ----------------------------------------------------------------------------------- sliding window reassembly


def _pointwise_net(in_channels: int, num_classes: int, seed: int) -> torch.nn.Conv3d:
    """A 1x1x1 conv with fixed weights: each output voxel depends on its own input voxel only, so the windows,
    their weights, padding and mirroring must not change the result."""
    generator = torch.Generator().manual_seed(seed)
    net = torch.nn.Conv3d(in_channels, num_classes, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.randn(net.weight.shape, generator=generator))
        net.bias.copy_(torch.randn(net.bias.shape, generator=generator))
    return net.eval()


@st.composite
def window_cases(draw):
    patch = tuple(draw(st.lists(st.integers(4, 10), min_size=3, max_size=3)))
    # per axis smaller than, equal to or larger than the patch (up to about 2.5 patches)
    size = tuple(draw(st.integers(2, 2 * p + p // 2)) for p in patch)
    channels = draw(st.integers(1, 2))
    image = draw(hnp.arrays(np.float32, (channels, *size), elements=st.floats(-10, 10, width=32)))
    return dict(image=image, patch=patch, num_classes=draw(st.integers(1, 3)),
                step=draw(st.sampled_from([0.5, 0.75, 1.0])), gaussian=draw(st.booleans()),
                mirror=tuple(draw(st.sets(st.integers(0, 2), max_size=3))), seed=draw(st.integers(0, 100)))


@PROPERTY
@given(case=window_cases())
def test_sliding_window_reassembles_a_pointwise_network_exactly(case):
    image = torch.from_numpy(case["image"])
    net = _pointwise_net(image.shape[0], case["num_classes"], case["seed"])
    logits = predict_sliding_window(net, image, case["patch"], case["num_classes"], step_size=case["step"],
                                    use_gaussian=case["gaussian"], mirror_axes=case["mirror"], batch_size=16)
    with torch.no_grad():
        expected = net(image[None])[0]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
