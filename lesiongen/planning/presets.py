"""Plans presets: other plans derived from the default ones and written next to them, as nnU-Net's plans
identifiers (``-p``). A preset changes networks, batches and schedules only, so it shares the default plans'
preprocessed data (``data_identifier``).

``cpu`` (``lesiongenPlansCPU``): the planned topologies with far fewer features, lesion-stage batches of at most 8
and schedules of about a thousand steps per stage, so the whole pipeline runs on a CPU in minutes to an hour
instead of days. Patch sizes, spacing, normalisation and the sphere priors stay as planned.
"""

from __future__ import annotations

import copy
import dataclasses

from lesiongen.planning.plans import Plans

CPU = "cpu"
PRESET_NAMES = {CPU: "lesiongenPlansCPU"}

SEG_FEATURES = (8, 16, 32, 64, 64, 64, 64)
DIFFUSION_CHANNELS = (16, 32, 32)
MASK_UNET_FEATURES = (8, 16, 32, 32, 32)
CPU_LESION_BATCH = 8
CPU_STEPS = {"segmentation": (50, 20), "mask_generation": (50, 20), "inpainting": (50, 20)}  # epochs x iterations


def cpu_plans(plans: Plans) -> Plans:
    """The CPU preset of ``plans`` (a new object; ``plans`` is left as it is)."""
    out = copy.deepcopy(plans)
    seg = out.stages["segmentation"].networks["unet"].kwargs
    seg["features_per_stage"] = list(SEG_FEATURES[: seg["n_stages"]])
    for stage in ("mask_generation", "inpainting"):
        diffusion = out.stages[stage].networks["diffusion"].kwargs
        levels = len(diffusion["channels"])
        diffusion.update(channels=list(DIFFUSION_CHANNELS[:levels]) + [DIFFUSION_CHANNELS[-1]] * max(0, levels - 3),
                         num_head_channels=16, norm_num_groups=8, num_res_blocks=1)
        out.stages[stage].batch_size = min(out.stages[stage].batch_size, CPU_LESION_BATCH)
    unet = out.stages["mask_generation"].networks["unet"].kwargs
    unet["features_per_stage"] = list(MASK_UNET_FEATURES[: unet["n_stages"]])
    for stage, (epochs, iterations) in CPU_STEPS.items():
        out.stages[stage] = dataclasses.replace(out.stages[stage], num_epochs=epochs, iterations_per_epoch=iterations)
    out.plans_name = PRESET_NAMES[CPU]
    out.data_identifier = plans.data_folder_name
    out.notes = [*plans.notes, f"{PRESET_NAMES[CPU]}: CPU-sized networks, lesion batches <= {CPU_LESION_BATCH}, "
                               f"about 1,000 steps per stage; preprocessed data shared with {plans.data_folder_name}"]
    return out


PRESETS = {CPU: cpu_plans}
