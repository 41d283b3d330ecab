"""Sliding-window inference: importance map, window steps, averaging, padding, mirroring, batching, resampling, and
the CPU inference layers and memory settings that make it fast without changing its result."""

from __future__ import annotations

import copy
import itertools
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lesiongen.models.networks import (
    PLAIN_CONV_UNET,
    ConvTranspose3dAsPointwiseConv,
    InstanceNorm3dViaGroupNorm,
    build_network,
)
from lesiongen.models.sliding_window import (
    gaussian_importance_map,
    predict_slicewise,
    predict_sliding_window,
    resample_logits_to_shape,
    sliding_window_steps,
)
from lesiongen.planning.plans import NetworkPlan


# --------------------------------------------------------------------------------------------------- helpers


def _pointwise_net(in_ch: int = 2, out_ch: int = 3) -> torch.nn.Conv3d:
    """1x1x1 conv with fixed weights: flip-equivariant and position independent, so windowing must not matter."""
    net = torch.nn.Conv3d(in_ch, out_ch, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.arange(out_ch * in_ch, dtype=torch.float32).reshape(out_ch, in_ch, 1, 1, 1) * 0.25 - 0.5)
        net.bias.copy_(torch.tensor([0.1, -0.2, 0.3][:out_ch]))
    return net.eval()


def _pointwise_expected(net: torch.nn.Conv3d, image: torch.Tensor) -> torch.Tensor:
    w = net.weight[:, :, 0, 0, 0]
    return torch.einsum("oc,czyx->ozyx", w, image) + net.bias[:, None, None, None]


def _asymmetric_net(in_ch: int = 1, out_ch: int = 2, seed: int = 0) -> torch.nn.Module:
    """3x3x3 conv with random weights: not flip-equivariant, so mirroring changes the result."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(in_ch, out_ch, 3, padding=1), torch.nn.Tanh()).eval()


class _DeepSupervision(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, container=list):
        super().__init__()
        self.net = net
        self.container = container

    def forward(self, x):
        out = self.net(x)
        return self.container([out, torch.nn.functional.avg_pool3d(out, 2)])


class _DistanceFromCentre(torch.nn.Module):
    """Outputs each voxel's distance from the window centre along z: low in the centre, high at the border."""

    def forward(self, x):
        pz = x.shape[2]
        d = (torch.arange(pz, dtype=torch.float32) - (pz - 1) / 2).abs()
        return d[None, None, :, None, None].expand(x.shape[0], 1, *x.shape[2:]).clone()


# --------------------------------------------------------------------------------------------------- importance map


@pytest.mark.parametrize("patch", [(64, 64, 64), (7, 12, 9), (1, 5, 6)])
def test_gaussian_max_min_symmetry(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == 10.0
    assert g.min().item() > 0
    for axis in range(3):
        assert torch.equal(g, torch.flip(g, (axis,)))
    # Highest weight in the centre, lowest at a corner.
    centre = tuple(p // 2 for p in patch)
    assert g[centre] == g.max()
    assert g[0, 0, 0] == g.min()


def test_gaussian_scaling_and_underflow():
    assert gaussian_importance_map((8, 8, 8), value_scaling_factor=1.0).max().item() == 1.0
    # A tiny sigma underflows to 0 away from the centre; those voxels must get the smallest nonzero value.
    g = gaussian_importance_map((64, 64, 64), sigma_scale=0.01)
    assert g.min().item() > 0
    assert (g == g.min()).sum() > g.numel() // 2


# --------------------------------------------------------------------------------------------------- steps


@pytest.mark.parametrize("image, patch, step, expected", [
    # n = ceil((image - patch) / (patch * step)) + 1, starts = round(k * (image - patch) / (n - 1))
    (100, 64, 0.5, [0, 18, 36]),             # ceil(36 / 32) + 1 = 3
    (64, 64, 0.5, [0]),                      # ceil(0 / 32) + 1 = 1
    (65, 64, 0.5, [0, 1]),                   # ceil(1 / 32) + 1 = 2
    (128, 64, 0.5, [0, 32, 64]),             # ceil(64 / 32) + 1 = 3
    (200, 64, 0.5, [0, 27, 54, 82, 109, 136]),  # ceil(136 / 32) + 1 = 6, step 27.2
    (100, 64, 1.0, [0, 36]),                 # ceil(36 / 64) + 1 = 2
    (160, 128, 0.5, [0, 32]),                # ceil(32 / 64) + 1 = 2
])
def test_steps_match_nnunet_rule(image, patch, step, expected):
    assert sliding_window_steps([image], [patch], step) == [expected]


def test_steps_per_axis_and_coverage():
    image, patch = (100, 200, 65), (64, 64, 64)
    steps = sliding_window_steps(image, patch, 0.5)
    assert steps == [[0, 18, 36], [0, 27, 54, 82, 109, 136], [0, 1]]
    for size, p, starts in zip(image, patch, steps):
        assert starts[0] == 0 and starts[-1] == size - p
        assert all(0 < b - a <= p // 2 for a, b in zip(starts, starts[1:]))  # overlap >= 50 %
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + p] = True
        assert covered.all()


def test_steps_reject_image_smaller_than_patch():
    with pytest.raises(ValueError):
        sliding_window_steps((30, 64, 64), (64, 64, 64))


# --------------------------------------------------------------------------------------------------- prediction


@pytest.mark.parametrize("shape", [(20, 17, 13), (5, 6, 3), (5, 30, 8)])  # non-multiple, all padded, mixed
@pytest.mark.parametrize("use_gaussian, mirror_axes, step", [
    (True, (0, 1, 2), 0.5), (False, None, 0.5), (True, (1,), 0.3), (False, (0, 2), 1.0)])
def test_pointwise_network_is_exact(shape, use_gaussian, mirror_axes, step):
    torch.manual_seed(1)
    image = torch.randn(2, *shape)
    net = _pointwise_net()
    out = predict_sliding_window(net, image, (8, 8, 8), num_classes=3, step_size=step, use_gaussian=use_gaussian,
                                 mirror_axes=mirror_axes)
    assert out.shape == (3, *shape) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, _pointwise_expected(net, image), rtol=1e-5, atol=1e-5)


def test_numpy_input():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 10, 11))  # float64
    net = _pointwise_net()
    out = predict_sliding_window(net, image, (8, 8, 8), num_classes=3)
    torch.testing.assert_close(out, _pointwise_expected(net, torch.from_numpy(image).float()), rtol=1e-5, atol=1e-5)


def test_gaussian_weighting_emphasises_window_centres():
    # z = 24, patch 16, step 0.5 -> windows at z 0 and 8, overlapping on z 8..15.
    image = torch.zeros(1, 24, 8, 8)
    kwargs = dict(patch_size=(16, 8, 8), num_classes=1, mirror_axes=None)
    gauss = predict_sliding_window(_DistanceFromCentre(), image, use_gaussian=True, **kwargs)[0, :, 0, 0]
    uniform = predict_sliding_window(_DistanceFromCentre(), image, use_gaussian=False, **kwargs)[0, :, 0, 0]

    dist = (torch.arange(16) - 7.5).abs()
    # Outside the overlap only one window counts: the distance itself, whatever the weighting.
    torch.testing.assert_close(gauss[:8], dist[:8])
    torch.testing.assert_close(gauss[16:], dist[8:])
    # Uniform averaging in the overlap gives (|z - 7.5| + |z - 15.5|) / 2 = 4; the Gaussian favours whichever
    # window has the voxel nearer its centre, so it is strictly smaller everywhere in the overlap.
    torch.testing.assert_close(uniform[8:16], torch.full((8,), 4.0))
    assert (gauss[8:16] < uniform[8:16] - 0.2).all()
    # And exactly the weighted mean with the importance map's weights along z.
    g = gaussian_importance_map((16, 8, 8))[:, 0, 0]
    z = torch.arange(8, 16)
    expected = (g[z] * dist[z] + g[z - 8] * dist[z - 8]) / (g[z] + g[z - 8])
    torch.testing.assert_close(gauss[8:16], expected)


def test_padding_is_split_like_pad_nd_image():
    # z = 5 padded to the patch's 8: 1 voxel before, 2 after, so the image sits at window positions 1..5.
    out = predict_sliding_window(_DistanceFromCentre(), torch.zeros(1, 5, 8, 8), (8, 8, 8), num_classes=1,
                                 mirror_axes=None)
    assert out.shape == (1, 5, 8, 8)
    torch.testing.assert_close(out[0, :, 0, 0], (torch.arange(1, 6) - 3.5).abs())


def _manual_mirror(net, x, axes):
    """Mean over all subsets of ``axes`` (spatial) of flip(net(flip(x))), x being (c, z, y, x)."""
    dims = [a + 1 for a in axes]
    preds = []
    for r in range(len(dims) + 1):
        for combo in itertools.combinations(dims, r):
            xf = torch.flip(x, combo) if combo else x
            p = net(xf[None])[0]
            preds.append(torch.flip(p, combo) if combo else p)
    return torch.stack(preds).mean(0), len(preds)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1,), (0, 2)])
def test_mirroring_single_window_matches_manual(axes):
    torch.manual_seed(2)
    image = torch.randn(1, 6, 5, 4)
    net = _asymmetric_net()
    out = predict_sliding_window(net, image, (6, 5, 4), num_classes=2, mirror_axes=axes)
    with torch.no_grad():
        expected, n = _manual_mirror(net, image, axes)
        plain = net(image[None])[0]
    assert n == 2 ** len(axes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out - plain).abs().max() > 1e-3  # the network is not flip-equivariant, so mirroring did something
    no_mirror = predict_sliding_window(net, image, (6, 5, 4), num_classes=2, mirror_axes=None)
    torch.testing.assert_close(no_mirror, plain, rtol=1e-5, atol=1e-6)


def test_mirroring_multi_window_matches_manual():
    torch.manual_seed(3)
    image = torch.randn(1, 10, 6, 6)  # z steps 0, 2, 4 with patch 6
    net = _asymmetric_net(seed=3)
    out = predict_sliding_window(net, image, (6, 6, 6), num_classes=2, mirror_axes=(0, 1, 2))
    g = gaussian_importance_map((6, 6, 6))
    acc = torch.zeros(2, 10, 6, 6)
    wsum = torch.zeros(10, 6, 6)
    with torch.no_grad():
        for z in (0, 2, 4):
            pred, _ = _manual_mirror(net, image[:, z:z + 6], (0, 1, 2))
            acc[:, z:z + 6] += pred * g
            wsum[z:z + 6] += g
    torch.testing.assert_close(out, acc / wsum, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("container", [list, tuple])
def test_deep_supervision_uses_first_output(container):
    torch.manual_seed(4)
    image = torch.randn(1, 12, 10, 9)
    net = _asymmetric_net(seed=4)
    kwargs = dict(patch_size=(8, 8, 8), num_classes=2, mirror_axes=(0, 1))
    expected = predict_sliding_window(net, image, **kwargs)
    out = predict_sliding_window(_DeepSupervision(net, container).eval(), image, **kwargs)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_batch_size_does_not_change_result(batch_size):
    torch.manual_seed(5)
    image = torch.randn(1, 14, 13, 9)  # 3 x 3 x 2 = 18 windows with patch 8; 4 leaves a short last batch
    net = _asymmetric_net(seed=5)
    kwargs = dict(patch_size=(8, 8, 8), num_classes=2, mirror_axes=(0, 1, 2))
    one = predict_sliding_window(net, image, batch_size=1, **kwargs)
    many = predict_sliding_window(net, image, batch_size=batch_size, **kwargs)
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)


def test_network_mode_untouched_and_no_cpu_autocast():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return x[:, :1]

    image = torch.randn(1, 9, 9, 9)
    for training in (True, False):
        net = Probe().train(training)
        out = predict_sliding_window(net, image, (8, 8, 8), num_classes=1, use_amp=True, mirror_axes=None,
                                     progress=True)
        assert net.training is training
        torch.testing.assert_close(out, image)
    assert seen and not any(seen)


def test_wrong_output_shape_raises():
    with pytest.raises(ValueError, match="expected"):
        predict_sliding_window(_pointwise_net(), torch.randn(2, 8, 8, 8), (8, 8, 8), num_classes=2)


# --------------------------------------------------------------------------------------------------- resampling


def test_resample_logits_to_shape():
    logits = torch.randn(3, 4, 5, 6)
    same = resample_logits_to_shape(logits, (4, 5, 6))
    torch.testing.assert_close(same, logits, rtol=0, atol=0)

    constant = torch.full((2, 4, 5, 6), 1.5)
    out = resample_logits_to_shape(constant, (7, 3, 11))
    assert out.shape == (2, 7, 3, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 1.5))

    # Doubling a linear ramp along z: output voxel j samples source coordinate (j + 0.5) / 2 - 0.5 (voxel edges
    # aligned), clamped to the first/last voxel at the borders.
    ramp = torch.arange(4, dtype=torch.float32)[None, :, None, None].expand(1, 4, 2, 2)
    up = resample_logits_to_shape(ramp, (8, 2, 2))[0, :, 0, 0]
    expected = ((torch.arange(8) + 0.5) / 2 - 0.5).clamp(0, 3)
    torch.testing.assert_close(up, expected)


# --------------------------------------------------------------------------------------------------- slice-wise (2d)


class _Pointwise2d(torch.nn.Module):
    """A 1x1 Conv2d with the weights of ``_pointwise_net``, refusing anything but (b, c, h, w); counts the slices and
    windows it sees."""

    def __init__(self):
        super().__init__()
        reference = _pointwise_net()
        self.conv = torch.nn.Conv2d(2, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(reference.weight[:, :, 0])
            self.conv.bias.copy_(reference.bias)
        self.windows = 0

    def forward(self, x):
        assert x.ndim == 4, f"a 2D network gets (b, c, h, w), got {tuple(x.shape)}"
        self.windows += x.shape[0]
        return self.conv(x)


@pytest.mark.parametrize("slice_axis, shape, patch", [
    (0, (5, 20, 17), (8, 8)), (2, (19, 13, 4), (8, 8)), (1, (12, 3, 9), (16, 4))])  # last: padded in-plane
@pytest.mark.parametrize("mirror", [False, True])
def test_slicewise_pointwise_2d_network_is_exact_and_sees_every_slice_once(slice_axis, shape, patch, mirror):
    torch.manual_seed(2)
    image = torch.randn(2, *shape)
    net = _Pointwise2d().eval()
    in_plane = [a for a in range(3) if a != slice_axis]
    mirror_axes = in_plane if mirror else None
    out = predict_slicewise(net, image, patch, num_classes=3, slice_axis=slice_axis, mirror_axes=mirror_axes,
                            batch_size=3)
    assert out.shape == (3, *shape)
    torch.testing.assert_close(out, _pointwise_expected(_pointwise_net(), image), rtol=1e-5, atol=1e-5)
    # every slice once, tiled in-plane by the 3D rule's steps (no repeated depth-1 windows), times the mirrorings
    padded = [max(shape[a], p) for a, p in zip(in_plane, patch)]
    tiles = np.prod([len(s) for s in sliding_window_steps(padded, patch, 0.5)])
    assert net.windows == shape[slice_axis] * tiles * (4 if mirror else 1)


def test_slicewise_equals_a_per_slice_sliding_window():
    """A 2D network with in-plane context: slice-wise prediction is the 2D sliding window of each slice, stacked."""
    torch.manual_seed(3)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh()).eval()
    image = torch.randn(1, 6, 21, 18)
    out = predict_slicewise(conv, image, (8, 8), num_classes=2, slice_axis=0, mirror_axes=(1,))
    for k in range(image.shape[1]):
        expected = predict_sliding_window(conv, image[:, k], (8, 8), num_classes=2, mirror_axes=(0,))
        torch.testing.assert_close(out[:, k], expected, rtol=1e-5, atol=1e-5)


def test_slicewise_refuses_mirroring_across_slices():
    with pytest.raises(ValueError, match="slice axis"):
        predict_slicewise(_Pointwise2d(), torch.zeros(2, 4, 8, 8), (8, 8), 3, slice_axis=0, mirror_axes=(0, 1))


def test_per_axis_step_size():
    assert sliding_window_steps((4, 20), (1, 8), (1.0, 0.5)) == [[0, 1, 2, 3], [0, 4, 8, 12]]
    with pytest.raises(ValueError, match="one value per axis"):
        sliding_window_steps((4, 20), (1, 8), (1.0,))


# --------------------------------------------------------------------------------------------------- CPU speed-ups


def _small_unet(seed: int) -> torch.nn.Module:
    """A 3-stage PlainConvUNet as build_network makes it, with an anisotropic (2, 2, 1) upsampling."""
    torch.manual_seed(seed)
    kwargs = dict(input_channels=2, n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
                  strides=[[1, 1, 1], [2, 2, 2], [2, 2, 1]], n_conv_per_stage=[1, 1, 1], num_classes=2,
                  n_conv_per_stage_decoder=[1, 1], conv_bias=True, norm_op="InstanceNorm3d", nonlin="LeakyReLU",
                  deep_supervision=False)
    return build_network(NetworkPlan(PLAIN_CONV_UNET, kwargs)).eval()


def _with_torch_layers(network: torch.nn.Module) -> torch.nn.Module:
    """The same network and parameters with torch's own InstanceNorm3d and ConvTranspose3d."""
    twin = copy.deepcopy(network)
    for module in twin.modules():
        if isinstance(module, torch.nn.InstanceNorm3d):
            module.__class__ = torch.nn.InstanceNorm3d
        if isinstance(module, torch.nn.ConvTranspose3d):
            module.__class__ = torch.nn.ConvTranspose3d
    return twin


def test_cpu_inference_layers_give_torch_layers_result():
    net = _small_unet(seed=6)
    kinds = {type(m) for m in net.modules()}
    assert InstanceNorm3dViaGroupNorm in kinds and ConvTranspose3dAsPointwiseConv in kinds
    torch_net = _with_torch_layers(net)
    torch.manual_seed(6)
    x = torch.randn(2, 2, 16, 12, 8) * 4 + 30  # a batch of two; a large mean the normalisation must not lose
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch_net(x), rtol=1e-5, atol=1e-5)
    # with gradients (training) they are torch's layers themselves, bit for bit
    torch.testing.assert_close(net(x), torch_net(x), rtol=0, atol=0)


@pytest.mark.parametrize("kernel, stride, bias", [((2, 2, 1), (2, 2, 1), True), ((2, 2, 2), (2, 2, 2), False),
                                                  ((3, 2, 3), (2, 2, 2), True)])  # the last: torch's own code
def test_transposed_convolution_as_pointwise_convolution(kernel, stride, bias):
    torch.manual_seed(7)
    layer = ConvTranspose3dAsPointwiseConv(5, 3, kernel, stride, bias=bias)
    x = torch.randn(2, 5, 4, 3, 5)
    with torch.no_grad():
        expected = torch.nn.functional.conv_transpose3d(x, layer.weight, layer.bias, stride)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_unet_windows_batched_repeated_and_with_torch_layers_agree():
    net = _small_unet(seed=8)
    torch.manual_seed(8)
    image = torch.randn(2, 12, 10, 9)  # 2 x 2 x 2 windows of 8^3
    kwargs = dict(patch_size=(8, 8, 8), num_classes=2, mirror_axes=(2,))
    one = predict_sliding_window(net, image, batch_size=1, **kwargs)
    again = predict_sliding_window(net, image, batch_size=1, **kwargs)
    torch.testing.assert_close(again, one, rtol=0, atol=0)  # nothing a call keeps (the importance map) changes
    torch.testing.assert_close(predict_sliding_window(net, image, batch_size=3, **kwargs), one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predict_sliding_window(_with_torch_layers(net), image, **kwargs), one,
                               rtol=1e-5, atol=1e-5)


def _huge_pages_and_glibc() -> bool:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and thp.is_file()
            and "[never]" not in thp.read_text())


_REALLOCATION_FAULTS = """
import resource
import lesiongen.cli.predict  # what lesiongen_predict imports before the call
from lesiongen.utilities.devices import reuse_cpu_tensor_memory
assert reuse_cpu_tensor_memory()
import torch
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(8 * 2**20)  # 32 MB, freed again: as a forward pass's activations are
    block.fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


@pytest.mark.skipif(not _huge_pages_and_glibc(), reason="needs Linux, glibc and transparent huge pages")
def test_reuse_cpu_tensor_memory_maps_a_freed_block_only_once():
    # By default every 32 MB block is mapped anew: 8192 page faults each time (16 and more with huge pages alone).
    # The quietest reallocation counts: on a busy machine the kernel's compaction or khugepaged may migrate a reused
    # page now and then (hundreds of faults once), which says nothing about whether the block was mapped anew.
    # In about half of fresh processes the heap first grows by 2 MB per reallocation (torch aligns the block to
    # huge pages and glibc carves the alignment from the heap's top: 528 faults, what a process without the setting
    # shows every time) until the freed space before the block can take the alignment, after 10-12 reallocations
    # here; from then on the block is reused. So 24 reallocations: without the setting none of them is quiet.
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    result = subprocess.run([sys.executable, "-c", _REALLOCATION_FAULTS], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 16
