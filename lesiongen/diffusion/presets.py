"""What the few-step sampling preset is made of (its names, which the plans choose from, are in
``lesiongen.planning.plans``), apart from the schedules themselves so that it needs no torch or diffusers."""

FEW_STEPS = 4  # network evaluations per sample of the few-step preset
# where its steps sit: diffusers' "leading" spacing, timesteps 750, 500, 250, 0 (alpha_bar 0.008 at 750, so starting
# from pure noise there is nearly exact). On the CPU demo it gave diffmask masks closer to the real lesions than
# "trailing" (999, 749, 499, 249) at equal inpainting quality (documentation/few_step_sampling.md)
FEW_STEP_SPACING = "leading"

# The 4-step samplers a diffmask model chooses its few-step preset from after training, as (sampler, timestep
# spacing): which one comes closest to the real lesions differs between datasets and training runs (leading DDIM on
# the 2 mm demo, trailing DDIM or DPM-Solver++ on sphericity at 1 mm; documentation/few_step_sampling.md). The first
# is the preset of every model trained before the choice, and wins ties.
FEW_STEP_VARIANTS: dict[str, tuple[str, str | None]] = {
    "ddim_leading": ("ddim", FEW_STEP_SPACING),
    "ddim_trailing": ("ddim", "trailing"),
    "dpm_solver": ("dpm_solver", None),  # DPM-Solver++ (2nd order), diffusers' own "linspace" spacing
}
DEFAULT_FEW_STEP_VARIANT = "ddim_leading"
# a diffmask model trained with distillation carries a 4-step student network of its own (DDIM at the trailing
# timesteps, trained to land where 20 DPM-Solver++ steps do); the few-step choice after training weighs it too
DISTILLED_VARIANT = "distilled"
FEW_STEP_CHOICES = (*FEW_STEP_VARIANTS, DISTILLED_VARIANT)


def check_few_step_variant(name: str, choices: tuple[str, ...] | dict = FEW_STEP_VARIANTS) -> None:
    """Refuse a name that is not one of ``choices`` (by default the samplers of :data:`FEW_STEP_VARIANTS`;
    a model's choice may also be :data:`DISTILLED_VARIANT`) (ValueError)."""
    if name not in choices:
        raise ValueError(f"unknown few-step variant {name}; choose one of {', '.join(choices)}")
