"""The names of the samplers a diffusion model can be switched to at inference (``--sampling``), apart from the
schedules themselves so that command-line parsing needs no torch or diffusers."""

MODEL_SAMPLING = "model"  # the sampler the model's configuration holds
DEFAULT_SAMPLING = "default"  # inpainter: 16 DDIM steps + 3 resampling jumps + guidance; diffmask: DPM-Solver++ 20
FEW_STEP_SAMPLING = "few_step"  # FEW_STEPS deterministic DDIM steps, no jumps, no guidance
SAMPLING_PRESETS = (DEFAULT_SAMPLING, FEW_STEP_SAMPLING)
FEW_STEPS = 4  # network evaluations per sample of the few-step preset
