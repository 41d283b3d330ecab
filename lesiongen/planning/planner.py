"""From a fingerprint to plans: spacing, normalisation, patch and batch sizes, topologies, sphere priors."""

from __future__ import annotations

import logging
import math

import numpy as np

from lesiongen import __version__
from lesiongen.fingerprint.fingerprint import DatasetFingerprint
from lesiongen.io.dataset import DatasetInfo
from lesiongen.planning import channels
from lesiongen.planning import topology as topo
from lesiongen.planning.plans import (
    CT,
    DEFAULT_SAMPLING,
    NO_NORM,
    PLANS_NAME,
    RESCALE_0_1,
    SEG_2D,
    SEG_3D,
    SEGMENTATION_STAGES,
    ZSCORE,
    ChannelNormalization,
    NetworkPlan,
    Plans,
    StagePlan,
)
from lesiongen.planning.priors import fit_sphere_prior

logger = logging.getLogger(__name__)

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: an axis this much coarser than the others is treated separately
LESION_PATCH_QUANTILE = 95.0
LESION_PATCH_DIVISOR = 8  # diffusion UNets halve the patch three times
LESION_PATCH_MIN = 16
LESION_PATCH_MAX = 128
MAX_DATASET_FRACTION_PER_BATCH = 0.05  # nnU-Net: a batch covers at most 5 % of the dataset's voxels
MAX_LESION_BATCH = 64

# the sampler of newly trained diffusion models (diffmask, inpaint). The few-step preset (4 evaluations instead of
# 20 / 44) misses the mask goal at 1 mm and gives smoother fills (documentation/few_step_sampling.md), so the
# default sampler stays planned; a user who wants speed plans with --sampling few_step
PLANNED_SAMPLING = DEFAULT_SAMPLING
PLANNED_SAMPLING_REASON = ("4-step sampling misses the 20-step masks at 1 mm and fills more smoothly "
                           "(documentation/few_step_sampling.md)")

# training length per stage: (epochs, iterations per epoch); segmentation as nnU-Net
TRAINING_LENGTH = {
    "segmentation": (1000, 250),
    "mask_generation": (200, 250),
    "inpainting": (400, 250),
}


def target_spacing(spacings: list[list[float]], shapes: list[list[int]]) -> tuple[list[float], bool, list[str]]:
    """Median spacing; for a strongly anisotropic axis with few slices the 10th percentile (nnU-Net's rule)."""
    spacings_arr = np.asarray(spacings, dtype=float)
    target = np.percentile(spacings_arr, 50, axis=0)
    median_shape = np.percentile(np.asarray(shapes, dtype=float), 50, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    notes = [f"median spacing {target.round(4).tolist()} mm"]
    anisotropic_spacing = target[coarse] > ANISOTROPY_THRESHOLD * max(target[others])
    anisotropic_voxels = median_shape[coarse] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    anisotropic = bool(anisotropic_spacing and anisotropic_voxels)
    if anisotropic:
        coarse_target = float(np.percentile(spacings_arr[:, coarse], 10))
        # never finer than the in-plane spacing, which would invent slices
        if coarse_target < max(target[others]):
            coarse_target = max(max(target[others]), coarse_target) + 1e-5
        target[coarse] = coarse_target
        notes.append(f"anisotropic: axis {coarse} spacing set to its 10th percentile {coarse_target:.4g} mm")
    return [float(s) for s in target], anisotropic, notes


def normalization_schemes(fingerprint: DatasetFingerprint,
                          has_brain_masks: bool) -> tuple[list[ChannelNormalization], list[str]]:
    """Scheme by channel name as nnU-Net; z-score within the brain when the brain is a clear subset of the box."""
    # nnU-Net uses the nonzero mask when cropping removed a lot; skull-stripped MRI also has many zeros
    # inside the crop box, which would otherwise bias mean and std towards background
    use_mask = bool(
        has_brain_masks
        or fingerprint.median_relative_size_after_cropping < 0.75
        or fingerprint.median_brain_fraction_after_cropping < 0.9
    )
    result, notes = [], []
    for key, name in fingerprint.channel_names.items():
        lowered = name.lower()
        if lowered == "ct":
            props = fingerprint.foreground_intensity_properties_per_channel[key]
            result.append(ChannelNormalization(int(key), name, CT, False, props.percentile_00_5,
                                               props.percentile_99_5, props.mean, props.std))
        elif lowered == "nonorm":
            result.append(ChannelNormalization(int(key), name, NO_NORM, False))
        elif lowered in ("rescale_to_0_1", "rgb_to_0_1"):
            result.append(ChannelNormalization(int(key), name, RESCALE_0_1, False))
        else:
            result.append(ChannelNormalization(int(key), name, ZSCORE, use_mask))
        notes.append(f"channel {key} ({name}): {result[-1].scheme}, brain mask {result[-1].use_brain_mask}")
    return result, notes


def lesion_patch_size(fingerprint: DatasetFingerprint, spacing: list[float], median_shape: list[int],
                      margin_mm: float | None = None) -> tuple[list[int], float, float]:
    """Cube-in-mm patch so that the 95th-percentile lesion (bounding sphere plus margin) fits;
    (patch, margin, share). ``margin_mm`` replaces the planned margin (a context study)."""
    radii = np.asarray([l.bounding_radius_mm for c in fingerprint.cases for l in c.lesions], dtype=float)
    r95 = float(np.percentile(radii, LESION_PATCH_QUANTILE)) if radii.size else 5.0
    margin = max(4.0, 2 * max(spacing), 0.25 * r95)  # context around the lesion for the generators
    if margin_mm is not None:
        margin = float(margin_mm)
    edge_mm = 2 * (r95 + margin)
    patch = []
    for s, m in zip(spacing, median_shape):
        voxels = math.ceil(edge_mm / s / LESION_PATCH_DIVISOR) * LESION_PATCH_DIVISOR
        limit = max(LESION_PATCH_MIN, int(m) // LESION_PATCH_DIVISOR * LESION_PATCH_DIVISOR)
        patch.append(int(min(max(voxels, LESION_PATCH_MIN), LESION_PATCH_MAX, limit)))
    patch_mm = np.asarray(patch) * np.asarray(spacing)
    # without lesions no lesion is known to fit: 0, never a vacuous 100 %
    fits = float(np.mean(2 * (radii + margin) <= patch_mm.min())) if radii.size else 0.0
    return patch, float(margin), fits


def _lesion_patch_note(patch: list[int], fits: float, margin: float, n_lesions: int) -> str:
    """The plans note on the lesion patch; with no lesion it says so instead of a share of nothing."""
    if n_lesions == 0:
        return (f"lesion patch {patch} voxels: no lesion in the training cases, so none is known to fit; sized "
                f"for a default radius, and the lesion stages cannot be trained")
    return f"lesion patch {patch} voxels: {fits:.1%} of {n_lesions} lesions fit with a {margin:.1f} mm margin"


def _segmentation_stage(fingerprint: DatasetFingerprint, spacing: list[float], median_shape: list[int],
                        memory_gb: float, n_channels: int, n_classes: int) -> StagePlan:
    # nnU-Net's start: a 256^3-voxel-volume patch with the spacing's aspect ratio, clipped to the median shape
    inverse = 1 / np.asarray(spacing)
    initial = inverse * (256**3 / np.prod(inverse)) ** (1 / 3)
    initial = [int(min(round(i), m)) for i, m in zip(initial, median_shape)]
    unet = topo.shrink_until_fits(spacing, initial, median_shape, memory_gb, n_channels, n_classes)
    return _unet_stage(fingerprint, unet, memory_gb, n_channels, n_classes)


def _unet_stage(fingerprint: DatasetFingerprint, unet: topo.UNetTopology, memory_gb: float, n_channels: int,
                n_classes: int, slice_axis: int | None = None) -> StagePlan:
    """A segmentation stage for a sized UNet: batch size from the memory estimate, capped at 5 % of the dataset."""
    elements = topo.unet_activation_elements(unet, n_channels, n_classes)
    dataset_voxels = float(np.sum([np.prod(s) for s in fingerprint.shapes_after_crop]))
    cap = max(2, int(round(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / np.prod(unet.patch_size))))
    batch = topo.unet_batch_size(elements, memory_gb, cap)
    epochs, iterations = TRAINING_LENGTH["segmentation"]
    return StagePlan(
        patch_size=unet.patch_size,
        batch_size=batch,
        networks={"unet": plain_unet_plan(unet, n_channels, n_classes)},
        num_epochs=epochs,
        iterations_per_epoch=iterations,
        estimated_memory_gb=round(topo.unet_memory_gb(elements, batch), 3),
        slice_axis=slice_axis,
    )


def _segmentation_2d_stage(fingerprint: DatasetFingerprint, spacing: list[float], median_shape: list[int],
                           memory_gb: float, n_channels: int, n_classes: int, slice_axis: int) -> StagePlan:
    """nnU-Net's ``2d`` next to ``3d_fullres``: a 2D UNet on in-plane patches of single slices along
    ``slice_axis`` (the coarse axis), batch size from the same memory estimate and 5 % cap as the 3D stage."""
    in_plane = [a for a in range(len(spacing)) if a != slice_axis]
    plane_spacing = [spacing[a] for a in in_plane]
    plane_shape = [median_shape[a] for a in in_plane]
    # nnU-Net's start for 2D: a 2048^2-pixel-area patch with the in-plane aspect ratio, clipped to the median shape
    inverse = 1 / np.asarray(plane_spacing)
    initial = inverse * (2048**2 / np.prod(inverse)) ** (1 / 2)
    initial = [int(min(round(i), m)) for i, m in zip(initial, plane_shape)]
    unet = topo.shrink_until_fits(plane_spacing, initial, plane_shape, memory_gb, n_channels, n_classes)
    return _unet_stage(fingerprint, unet, memory_gb, n_channels, n_classes, slice_axis)


def plain_unet_plan(unet: topo.UNetTopology, in_channels: int, n_classes: int) -> NetworkPlan:
    """Keyword arguments of dynamic_network_architectures' PlainConvUNet; 2D or 3D by the topology's axes."""
    dims = len(unet.patch_size)
    return NetworkPlan(
        architecture="dynamic_network_architectures.architectures.unet.PlainConvUNet",
        kwargs={
            "input_channels": in_channels,
            "n_stages": unet.n_stages,
            "features_per_stage": unet.features_per_stage,
            "kernel_sizes": unet.kernel_sizes,
            "strides": unet.strides,
            "n_conv_per_stage": [2] * unet.n_stages,
            "num_classes": n_classes,
            "n_conv_per_stage_decoder": [2] * (unet.n_stages - 1),
            "conv_bias": True,
            "conv_op": f"Conv{dims}d",
            "norm_op": f"InstanceNorm{dims}d",
            "nonlin": "LeakyReLU",
            "deep_supervision": True,
        },
    )


def _diffusion_plan(patch: list[int], in_channels: int,
                    out_channels: int) -> tuple[NetworkPlan, topo.DiffusionTopology]:
    """Keyword arguments of MONAI's DiffusionModelUNet (3D in all axes)."""
    net = topo.diffusion_topology(patch)
    kwargs = {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": net.channels,
        "attention_levels": net.attention_levels,
        "num_res_blocks": net.num_res_blocks,
        "num_head_channels": net.num_head_channels,
        "norm_num_groups": net.norm_num_groups,
    }
    return NetworkPlan("monai.networks.nets.DiffusionModelUNet", kwargs), net


PATCH_DISCRIMINATOR = "monai.networks.nets.PatchDiscriminator"
DISCRIMINATOR_FEATURES = 32  # first layer's filters (doubled per layer); pix2pix uses 64 in 2D
DISCRIMINATOR_MAX_LAYERS = 3  # pix2pix's 70x70 PatchGAN has three strided layers


def patch_discriminator_plan(patch: list[int], in_channels: int, features: int = DISCRIMINATOR_FEATURES) -> NetworkPlan:
    """Keyword arguments of MONAI's PatchDiscriminator (pix2pix's PatchGAN in 3D): as many halvings (at most three)
    as leave at least 4 voxels along the patch's shortest axis, so its output is a grid of at least 3^3 patch
    verdicts; instance norm; a size-keeping 3^3 last convolution."""
    halvings = int(np.clip(int(np.log2(min(patch))) - 2, 1, DISCRIMINATOR_MAX_LAYERS))
    return NetworkPlan(PATCH_DISCRIMINATOR, {
        "spatial_dims": 3, "channels": features, "in_channels": in_channels, "out_channels": 1,
        "num_layers_d": halvings, "kernel_size": 4, "norm": "INSTANCE", "last_conv_kernel_size": 3,
    })


def gan_generator_plan(unet: topo.UNetTopology, in_channels: int, n_classes: int) -> NetworkPlan:
    """ganmask's generator: the mask UNet's topology without deep supervision (the adversarial loss judges the
    full-resolution mask only)."""
    plan = plain_unet_plan(unet, in_channels, n_classes)
    plan.kwargs["deep_supervision"] = False
    return plan


def _lesion_stage(name: str, patch: list[int],
                  networks: dict[str, tuple[NetworkPlan, topo.DiffusionTopology | None, int]],
                  memory_gb: float, n_lesions: int) -> StagePlan:
    """Batch size from the largest network of a lesion-patch stage."""
    cap = int(min(MAX_LESION_BATCH, max(2, n_lesions)))
    batches, memories = [], []
    for plan, diffusion, in_channels in networks.values():
        if diffusion is not None:
            batch = topo.diffusion_batch_size(diffusion, patch, in_channels, memory_gb, cap)
            batches.append(batch)
            memories.append(lambda b, d=diffusion, c=in_channels: topo.diffusion_memory_gb(d, patch, c, b))
        else:
            unet = topo.UNetTopology(patch, plan.kwargs["strides"], plan.kwargs["kernel_sizes"],
                                     plan.kwargs["features_per_stage"])
            elements = topo.unet_activation_elements(unet, in_channels, plan.kwargs["num_classes"])
            batches.append(topo.unet_batch_size(elements, memory_gb, cap))
            memories.append(lambda b, e=elements: topo.unet_memory_gb(e, b))
    batch = min(batches)
    epochs, iterations = TRAINING_LENGTH[name]
    return StagePlan(
        patch_size=list(patch),
        batch_size=batch,
        networks={k: v[0] for k, v in networks.items()},
        num_epochs=epochs,
        iterations_per_epoch=iterations,
        estimated_memory_gb=round(max(m(batch) for m in memories), 3),
    )


def plan_dataset(fingerprint: DatasetFingerprint, info: DatasetInfo, gpu_memory_target_gb: float = 8.0,
                 has_brain_masks: bool = False, lesion_margin_mm: float | None = None,
                 sampling: str | None = None) -> Plans:
    """Every planning decision for one dataset; pure computation on the fingerprint. ``lesion_margin_mm``
    overrides the planned context around the lesions (see :func:`lesion_patch_size`), ``sampling`` the planned
    sampler of the diffusion models (:data:`PLANNED_SAMPLING`)."""
    spacing, anisotropic, notes = target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop)
    original_spacing = [float(s) for s in np.median(np.asarray(fingerprint.spacings), axis=0)]
    original_shape = [int(s) for s in np.median(np.asarray(fingerprint.shapes_after_crop), axis=0)]
    resampled = [
        np.asarray(shape) * np.asarray(sp) / np.asarray(spacing)
        for shape, sp in zip(fingerprint.shapes_after_crop, fingerprint.spacings)
    ]
    median_shape = [int(round(s)) for s in np.median(np.asarray(resampled), axis=0)]
    normalization, norm_notes = normalization_schemes(fingerprint, has_brain_masks)
    notes += norm_notes

    n_channels = info.num_channels
    n_classes = len(info.labels)
    segmentation = _segmentation_stage(fingerprint, spacing, median_shape, gpu_memory_target_gb,
                                       channels.segmentation_input(n_channels).total, n_classes)

    stages = {SEGMENTATION_STAGES[SEG_3D]: segmentation}
    if anisotropic:
        slice_axis = int(np.argmax(spacing))
        segmentation_2d = _segmentation_2d_stage(fingerprint, spacing, median_shape, gpu_memory_target_gb,
                                                 channels.segmentation_input(n_channels).total, n_classes, slice_axis)
        stages[SEGMENTATION_STAGES[SEG_2D]] = segmentation_2d
        notes.append(f"anisotropic: a 2d segmentation configuration next to 3d, slices along axis {slice_axis}, "
                     f"in-plane patch {segmentation_2d.patch_size}, batch {segmentation_2d.batch_size}")

    patch, margin, fits = lesion_patch_size(fingerprint, spacing, median_shape, lesion_margin_mm)
    mask_unet = topo.unet_topology(spacing, patch)
    patch = mask_unet.patch_size  # deep pooling may round the patch up; every lesion stage shares it
    n_lesions = sum(c.lesion_count for c in fingerprint.cases)
    notes.append(_lesion_patch_note(patch, fits, margin, n_lesions))
    if lesion_margin_mm is not None:
        notes.append(f"lesion margin {margin:.1f} mm given (--lesion_margin_mm), not planned")
    if n_lesions == 0:
        # the image stages (segmentation, preprocessing) can go on; fold_sphere_priors refuses the lesion stages
        logger.warning("%s: no training case holds a lesion; the lesion stages (mask generation, inpainting, "
                       "synthetic lesions) cannot be trained from this dataset", fingerprint.dataset_name)
    elif fits < 0.95:
        logger.warning("only %.1f%% of lesions fit the largest allowed lesion patch %s", 100 * fits, patch)
    n_lesion_classes = len(info.lesion_labels)

    # mask generation: the diffusion model denoises one channel per lesion class; the UNet gives one sigmoid each
    mask_diffusion_in = channels.diffmask_input(n_lesion_classes, fingerprint.has_tissue_maps).total
    mask_diffusion, mask_diffusion_topology = _diffusion_plan(patch, mask_diffusion_in, n_lesion_classes)
    mask_unet_in = channels.unetmask_input(n_channels, fingerprint.has_tissue_maps).total
    gan_in = channels.ganmask_input(fingerprint.has_tissue_maps).total
    mask_stage = _lesion_stage(
        "mask_generation", patch,
        {
            "diffusion": (mask_diffusion, mask_diffusion_topology, mask_diffusion_in),
            "unet": (plain_unet_plan(mask_unet, mask_unet_in, n_lesion_classes), None, mask_unet_in),
            "gan_generator": (gan_generator_plan(mask_unet, gan_in, n_lesion_classes), None, gan_in),
        },
        gpu_memory_target_gb, n_lesions,
    )
    # the discriminator's activations are a fraction of the generator's (strided from its first layer): it does not
    # size the batch
    mask_stage.networks["gan_discriminator"] = patch_discriminator_plan(
        patch, channels.ganmask_discriminator_input(n_lesion_classes, fingerprint.has_tissue_maps).total)
    inpaint_in = channels.inpaint_input(n_channels, n_lesion_classes).total
    inpaint_net, inpaint_topology = _diffusion_plan(patch, inpaint_in, n_channels)
    inpaint_stage = _lesion_stage("inpainting", patch, {"diffusion": (inpaint_net, inpaint_topology, inpaint_in)},
                                  gpu_memory_target_gb, n_lesions)
    mask_stage.sampling = inpaint_stage.sampling = sampling or PLANNED_SAMPLING
    notes.append(f"diffusion sampling {mask_stage.sampling}: "
                 + ("given (--sampling), not planned" if sampling else PLANNED_SAMPLING_REASON))

    patch_mm = np.asarray(patch) * np.asarray(spacing)
    priors = {str(label): fit_sphere_prior(fingerprint, label, patch_mm, min(spacing)) for label in info.lesion_labels}
    return Plans(
        dataset_name=fingerprint.dataset_name,
        plans_name=PLANS_NAME,
        lesiongen_version=__version__,
        fingerprint_signature=fingerprint.input_signature,
        channel_names=dict(info.channel_names),
        labels=dict(info.labels),
        tissue_labels=dict(info.tissue_labels),
        has_tissue_maps=fingerprint.has_tissue_maps,
        image_reader=info.reader,
        original_median_spacing=original_spacing,
        original_median_shape=original_shape,
        target_spacing=spacing,
        anisotropic=anisotropic,
        median_shape_at_target_spacing=median_shape,
        normalization=normalization,
        gpu_memory_target_gb=float(gpu_memory_target_gb),
        lesion_patch_size=patch,
        lesion_patch_margin_mm=margin,
        lesion_fraction_fitting=fits,
        stages={**stages, "mask_generation": mask_stage, "inpainting": inpaint_stage},
        sphere_priors=priors,
        notes=notes,
    )
