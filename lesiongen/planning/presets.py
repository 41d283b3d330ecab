"""Plans presets: other plans derived from the default ones and written next to them, as nnU-Net's plans
identifiers (``-p``). A preset changes networks, batches and schedules only, so it shares the default plans'
preprocessed data (``data_identifier``).

``cpu`` (``lesiongenPlansCPU``): the planned topologies with far fewer features, lesion-stage batches of at most 8,
a segmentation patch of at most 32^3 voxels (batch 4; the sliding window covers whole scans as before) and schedules
of about a thousand steps per stage, so the whole pipeline runs on a CPU in minutes to an hour instead of days.
On anisotropic data the 2d segmentation stage gets the same features, an in-plane patch of at most 32,768 pixels
and at most 12 slices per batch.
Spacing, normalisation, the lesion patch and the sphere priors stay as planned.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from lesiongen.planning import topology as topo
from lesiongen.planning.planner import plain_unet_plan
from lesiongen.planning.plans import SEG_2D, SEGMENTATION_STAGES, Plans

CPU = "cpu"
PRESET_NAMES = {CPU: "lesiongenPlansCPU"}

SEG_FEATURES = (8, 16, 32, 64, 64, 64, 64)
DIFFUSION_CHANNELS = (16, 32, 32)
MASK_UNET_FEATURES = (8, 16, 32, 32, 32)
DISCRIMINATOR_FEATURES = 8
CPU_LESION_BATCH = 8
CPU_SEG_VOXELS = 32**3  # segmentation patch budget: a 48x80x56 patch took ~1 s per step on 2 cores, 32^3 ~0.5 s
CPU_SEG_BATCH = 4
# the 2D configuration (anisotropic data): an in-plane patch of at most CPU_SEG_VOXELS pixels and a batch of at
# most 12 slices, about the compute of a 3D step (a 3x3 kernel is a third of a 3x3x3 one)
CPU_SEG_2D_BATCH = 12
# epochs x iterations. Segmentation 2,000 steps since 2026-12-05: at 1,000, real-only 3d seg models were still
# learning on every dataset measured (README, "Longer training moves the baseline"); 2d keeps 3d's schedule (a step of
# about the same compute), not measured on its own
CPU_STEPS = {"segmentation": (100, 20), "segmentation_2d": (100, 20), "mask_generation": (50, 20),
             "inpainting": (50, 20)}


def cpu_plans(plans: Plans) -> Plans:
    """The CPU preset of ``plans`` (a new object; ``plans`` is left as it is)."""
    out = copy.deepcopy(plans)
    _small_segmentation_patch(out)
    if SEGMENTATION_STAGES[SEG_2D] in out.stages:
        _small_2d_segmentation(out)
    for configuration in SEGMENTATION_STAGES.values():
        if configuration in out.stages:
            seg = out.stages[configuration].networks["unet"].kwargs
            seg["features_per_stage"] = list(SEG_FEATURES[: seg["n_stages"]])
    for stage in ("mask_generation", "inpainting"):
        diffusion = out.stages[stage].networks["diffusion"].kwargs
        levels = len(diffusion["channels"])
        diffusion.update(channels=list(DIFFUSION_CHANNELS[:levels]) + [DIFFUSION_CHANNELS[-1]] * max(0, levels - 3),
                         num_head_channels=16, norm_num_groups=8, num_res_blocks=1)
        out.stages[stage].batch_size = min(out.stages[stage].batch_size, CPU_LESION_BATCH)
    mask_networks = out.stages["mask_generation"].networks
    for name in ("unet", "gan_generator"):
        if name in mask_networks:  # plans written before ganmask have no GAN networks
            unet = mask_networks[name].kwargs
            unet["features_per_stage"] = list(MASK_UNET_FEATURES[: unet["n_stages"]])
    if "gan_discriminator" in mask_networks:
        mask_networks["gan_discriminator"].kwargs["channels"] = DISCRIMINATOR_FEATURES
    for stage, (epochs, iterations) in CPU_STEPS.items():
        if stage not in out.stages:  # segmentation_2d: anisotropic data only
            continue
        out.stages[stage] = dataclasses.replace(out.stages[stage], num_epochs=epochs, iterations_per_epoch=iterations)
    out.plans_name = PRESET_NAMES[CPU]
    out.data_identifier = plans.data_folder_name
    out.notes = [*plans.notes, f"{PRESET_NAMES[CPU]}: CPU-sized networks, lesion batches <= {CPU_LESION_BATCH}, "
                               f"about 1,000 steps per stage (segmentation 2,000); preprocessed data shared with "
                               f"{plans.data_folder_name}"]
    return out


def _small_segmentation_patch(plans: Plans) -> None:
    """Shrink the segmentation patch to the CPU voxel budget (the spacing's aspect ratio kept, the median shape not
    exceeded) and plan the UNet's topology for it."""
    stage = plans.stages["segmentation"]
    if np.prod(stage.patch_size) <= CPU_SEG_VOXELS:
        stage.batch_size = max(stage.batch_size, CPU_SEG_BATCH)
        return
    inverse = 1 / np.asarray(plans.target_spacing)
    wanted = inverse * (CPU_SEG_VOXELS / np.prod(inverse)) ** (1 / 3)
    patch = [int(min(round(w), p)) for w, p in zip(wanted, stage.patch_size)]
    unet = topo.unet_topology(plans.target_spacing, patch)
    kwargs = stage.networks["unet"].kwargs
    stage.networks["unet"] = plain_unet_plan(unet, kwargs["input_channels"], kwargs["num_classes"])
    stage.patch_size = unet.patch_size
    stage.batch_size = CPU_SEG_BATCH
    elements = topo.unet_activation_elements(unet, kwargs["input_channels"], kwargs["num_classes"])
    stage.estimated_memory_gb = round(topo.unet_memory_gb(elements, CPU_SEG_BATCH), 3)


def _small_2d_segmentation(plans: Plans) -> None:
    """The 2D stage within the CPU pixel budget (in-plane aspect ratio kept) and at most CPU_SEG_2D_BATCH slices."""
    stage = plans.stages[SEGMENTATION_STAGES[SEG_2D]]
    kwargs = stage.networks["unet"].kwargs
    if np.prod(stage.patch_size) > CPU_SEG_VOXELS:
        in_plane = [a for a in range(len(plans.target_spacing)) if a != stage.slice_axis]
        spacing = [plans.target_spacing[a] for a in in_plane]
        inverse = 1 / np.asarray(spacing)
        wanted = inverse * (CPU_SEG_VOXELS / np.prod(inverse)) ** (1 / 2)
        unet = topo.unet_topology(spacing, [int(min(round(w), p)) for w, p in zip(wanted, stage.patch_size)])
        while np.prod(unet.patch_size) > CPU_SEG_VOXELS:  # the pooling rounded it up past the budget
            axis = int(np.argmax(unet.patch_size))
            patch = list(unet.patch_size)
            patch[axis] -= int(np.prod([s[axis] for s in unet.strides]))
            unet = topo.unet_topology(spacing, patch)
        stage.networks["unet"] = plain_unet_plan(unet, kwargs["input_channels"], kwargs["num_classes"])
        stage.patch_size = unet.patch_size
        kwargs = stage.networks["unet"].kwargs
    stage.batch_size = min(stage.batch_size, CPU_SEG_2D_BATCH)
    unet = topo.UNetTopology(stage.patch_size, kwargs["strides"], kwargs["kernel_sizes"], kwargs["features_per_stage"])
    elements = topo.unet_activation_elements(unet, kwargs["input_channels"], kwargs["num_classes"])
    stage.estimated_memory_gb = round(topo.unet_memory_gb(elements, stage.batch_size), 3)


PRESETS = {CPU: cpu_plans}
