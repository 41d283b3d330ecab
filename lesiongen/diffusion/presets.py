"""What the few-step sampling preset is made of (its names, which the plans choose from, are in
``lesiongen.planning.plans``), apart from the schedules themselves so that it needs no torch or diffusers."""

FEW_STEPS = 4  # network evaluations per sample of the few-step preset
# where its steps sit: diffusers' "leading" spacing, timesteps 750, 500, 250, 0 (alpha_bar 0.008 at 750, so starting
# from pure noise there is nearly exact). On the CPU demo it gave diffmask masks closer to the real lesions than
# "trailing" (999, 749, 499, 249) at equal inpainting quality (documentation/few_step_sampling.md)
FEW_STEP_SPACING = "leading"
