"""The names of the samplers a diffusion model can be switched to at inference (``--sampling``), apart from the
schedules themselves so that command-line parsing needs no torch or diffusers."""

MODEL_SAMPLING = "model"  # the sampler the model's configuration holds
DEFAULT_SAMPLING = "default"  # inpainter: 16 DDIM steps + 3 resampling jumps + guidance; diffmask: DPM-Solver++ 20
FEW_STEP_SAMPLING = "few_step"  # FEW_STEPS deterministic DDIM steps, no jumps, no guidance
SAMPLING_PRESETS = (DEFAULT_SAMPLING, FEW_STEP_SAMPLING)
FEW_STEPS = 4  # network evaluations per sample of the few-step preset
# where its steps sit: diffusers' "leading" spacing, timesteps 750, 500, 250, 0 (alpha_bar 0.008 at 750, so starting
# from pure noise there is nearly exact). On the CPU demo it gave diffmask masks closer to the real lesions than
# "trailing" (999, 749, 499, 249) at equal inpainting quality (documentation/few_step_sampling.md)
FEW_STEP_SPACING = "leading"
