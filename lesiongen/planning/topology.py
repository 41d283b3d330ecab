"""Network topology and memory estimates, computed analytically (no torch needed to plan).

The UNet rules follow nnU-Net's published heuristics: pool an axis while its feature map stays at least twice
the minimum size and its spacing is within a factor two of the finest; 3x3x3 kernels once an axis is not much
coarser than the finest; features double per stage up to a cap. Memory is estimated from the number of stored
activations and calibrated like nnU-Net's reference (a 3D UNet whose feature maps hold 560 M elements fits 8 GB at
batch size 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_FEATURE_MAP = 4
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512  # nnU-Net's cap for 2D UNets
BASE_FEATURES = 32
# nnU-Net's calibration: this many conv output elements per sample fit its 8 GB target at batch size 2
REFERENCE_ELEMENTS = 560e6
REFERENCE_GB = 8.0
REFERENCE_BATCH = 2


@dataclass
class UNetTopology:
    patch_size: list[int]
    strides: list[list[int]]  # per stage, the first is all ones
    kernel_sizes: list[list[int]]
    features_per_stage: list[int]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def unet_topology(spacing: list[float], patch_size: list[int], max_stages: int = 7) -> UNetTopology:
    """Strides and kernels for a patch; the patch is rounded up to what the pooling needs to divide it."""
    dims = len(spacing)
    current_spacing = np.asarray(spacing, dtype=float)
    current_size = np.asarray(patch_size, dtype=float)
    kernel = [1] * dims
    strides = [[1] * dims]
    kernels = []
    while True:
        # kernels grow to 3 for axes whose spacing is close to the finest one
        finest = current_spacing.min()
        kernel = [3 if kernel[a] == 3 or current_spacing[a] / finest < 2 else 1 for a in range(dims)]
        kernels.append(kernel)
        if len(strides) >= max_stages:
            break
        poolable = [a for a in range(dims) if current_size[a] >= 2 * MIN_FEATURE_MAP]
        if not poolable:
            break
        finest_poolable = min(current_spacing[a] for a in poolable)
        pool = [a for a in poolable if current_spacing[a] / finest_poolable < 2]
        stride = [2 if a in pool else 1 for a in range(dims)]
        strides.append(stride)
        current_spacing = current_spacing * np.asarray(stride)
        current_size = current_size / np.asarray(stride)
    total = np.prod(np.asarray(strides), axis=0)
    rounded = [int(math.ceil(p / t) * t) for p, t in zip(patch_size, total)]
    cap = MAX_FEATURES_3D if dims == 3 else MAX_FEATURES_2D
    features = [min(BASE_FEATURES * 2**s, cap) for s in range(len(strides))]
    return UNetTopology(rounded, strides, kernels, features)


def _stage_voxels(patch_size: list[int], strides: list[list[int]]) -> list[float]:
    sizes, current = [], np.asarray(patch_size, dtype=float)
    for stride in strides:
        current = current / np.asarray(stride)
        sizes.append(float(np.prod(current)))
    return sizes


def unet_activation_elements(topology: UNetTopology, in_channels: int, n_classes: int,
                             convs_per_stage: int = 2) -> float:
    """Conv output elements of a plain UNet with deep supervision, per sample."""
    voxels = _stage_voxels(topology.patch_size, topology.strides)
    total = in_channels * voxels[0]
    for f, v in zip(topology.features_per_stage, voxels):  # encoder
        total += convs_per_stage * f * v
    for f, v in zip(topology.features_per_stage[:-1], voxels[:-1]):  # decoder: upsampling, convs, seg head
        total += f * v + convs_per_stage * f * v + n_classes * v
    return total


def unet_memory_gb(elements: float, batch_size: int) -> float:
    return REFERENCE_GB * (elements * batch_size) / (REFERENCE_ELEMENTS * REFERENCE_BATCH)


def unet_batch_size(elements: float, memory_gb: float, cap: int, minimum: int = 2) -> int:
    fit = int(math.floor(REFERENCE_ELEMENTS * REFERENCE_BATCH * (memory_gb / REFERENCE_GB) / elements))
    return int(max(minimum, min(fit, cap)))


def shrink_until_fits(
    spacing: list[float], patch_size: list[int], median_shape: list[int], memory_gb: float,
    in_channels: int, n_classes: int, min_batch: int = 2,
) -> UNetTopology:
    """nnU-Net's search: shrink the axis that is largest relative to the median shape until batch 2 fits."""
    patch = list(patch_size)
    while True:
        topology = unet_topology(spacing, patch)
        elements = unet_activation_elements(topology, in_channels, n_classes)
        if unet_memory_gb(elements, min_batch) <= memory_gb or all(p <= 2 * MIN_FEATURE_MAP for p in patch):
            return topology
        ratios = np.asarray([p / m for p, m in zip(topology.patch_size, median_shape)])
        axis = int(np.flatnonzero(ratios == ratios.max())[-1])  # ties: the last axis, as nnU-Net
        step = int(np.prod([s[axis] for s in topology.strides]))
        patch = list(topology.patch_size)
        patch[axis] = max(2 * MIN_FEATURE_MAP, patch[axis] - step)


# ------------------------------------------------------------------------------------ diffusion UNet


@dataclass
class DiffusionTopology:
    channels: list[int]
    attention_levels: list[bool]
    num_res_blocks: int
    num_head_channels: int
    norm_num_groups: int


def diffusion_levels(patch_size: list[int]) -> int:
    """Levels of an isotropically downsampling diffusion UNet: halve until the smallest edge reaches 4-8."""
    smallest = min(patch_size)
    levels = 1
    while smallest % 2 == 0 and smallest // 2 >= 4 and levels < 5:
        smallest //= 2
        levels += 1
    return levels


def diffusion_topology(patch_size: list[int], base_channels: int = 32, max_channels: int = 256) -> DiffusionTopology:
    levels = diffusion_levels(patch_size)
    channels = [min(base_channels * 2**i, max_channels) for i in range(levels)]
    # self-attention only where the token count stays small (quadratic memory)
    voxels = _stage_voxels(patch_size, [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1))
    attention = [v <= 16**3 and i == levels - 1 for i, v in enumerate(voxels)]
    return DiffusionTopology(channels, attention, num_res_blocks=2, num_head_channels=32, norm_num_groups=32)


# Bytes held per stored activation element, as a multiple of its storage size: the element, its gradient and what
# autocast keeps beside it. Fitted to the peak memory allocated on a GPU (the README's GPU check: diffmask and
# inpaint at 32^3, batch 35, AMP), where the earlier 2 (element and gradient) left the estimate 21 % low.
DIFFUSION_ACTIVATION_FOOTPRINT = 2.67
# weights, optimizer state and workspace
DIFFUSION_FIXED_GB = 1.5


def diffusion_memory_gb(topology: DiffusionTopology, patch_size: list[int], in_channels: int, batch_size: int,
                        mixed_precision: bool = True) -> float:
    """Stored activations of a residual diffusion UNet (two norms, two activations, two convs per block)."""
    levels = len(topology.channels)
    voxels = _stage_voxels(patch_size, [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1))
    elements = in_channels * voxels[0]
    blocks_per_level = 2 * topology.num_res_blocks + 1  # encoder blocks, decoder blocks (+1 for the skip merge)
    for c, v, attention in zip(topology.channels, voxels, topology.attention_levels):
        elements += blocks_per_level * 6 * c * v
        if attention:
            heads = max(1, c // topology.num_head_channels)
            elements += blocks_per_level * (heads * v * v + 4 * c * v)
    bytes_per_element = 2 if mixed_precision else 4
    activations = DIFFUSION_ACTIVATION_FOOTPRINT * elements * bytes_per_element * batch_size
    return float(activations / 1024**3 + DIFFUSION_FIXED_GB)


def diffusion_batch_size(topology: DiffusionTopology, patch_size: list[int], in_channels: int,
                         memory_gb: float, cap: int, minimum: int = 1) -> int:
    per_sample = diffusion_memory_gb(topology, patch_size, in_channels, 1) - DIFFUSION_FIXED_GB
    fit = int(math.floor((memory_gb - DIFFUSION_FIXED_GB) / per_sample)) if per_sample > 0 else cap
    return int(max(minimum, min(fit, cap)))
