"""CPU-sized networks for the demo: the planned topologies with far fewer features, so the whole pipeline runs on
a laptop CPU in minutes. Patch sizes, spacing and everything else stay as planned."""

from __future__ import annotations

from pathlib import Path

from lesiongen.planning.plans import load_plans, save_plans

SEG_FEATURES = (8, 16, 32, 64, 64, 64, 64)
DIFFUSION_CHANNELS = (16, 32, 32)
MASK_UNET_FEATURES = (8, 16, 32, 32, 32)


def write_cpu_sized_networks(plans_file: Path) -> None:
    plans = load_plans(plans_file)
    seg = plans.stages["segmentation"].networks["unet"].kwargs
    seg["features_per_stage"] = list(SEG_FEATURES[: seg["n_stages"]])
    for stage in ("mask_generation", "inpainting"):
        diffusion = plans.stages[stage].networks["diffusion"].kwargs
        levels = len(diffusion["channels"])
        diffusion.update(channels=list(DIFFUSION_CHANNELS[:levels]) + [DIFFUSION_CHANNELS[-1]] * max(0, levels - 3),
                         num_head_channels=16, norm_num_groups=8, num_res_blocks=1)
    unet = plans.stages["mask_generation"].networks["unet"].kwargs
    unet["features_per_stage"] = list(MASK_UNET_FEATURES[: unet["n_stages"]])
    plans.notes.append("networks reduced to CPU size by lesiongen_demo")
    save_plans(plans, plans_file)
