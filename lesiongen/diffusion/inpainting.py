"""RePaint-style inpainting with diffusers schedulers, and the feathered paste that keeps the background exact.

The reverse process runs over a scheduler's timesteps (DDIM with 16 steps by default, the full DDPM chain as the
reference, or the few-step preset). Before every denoising step the known region is replaced by the known image
noised to the current level, so the model only ever invents the region to inpaint. A few *resampling jumps*
(RePaint) go back ``jump_length`` steps by re-noising with q(x_t | x_s) and denoise again, which lets the generated
region harmonise with its surroundings. The few-step preset has no jumps and no guidance: 4 deterministic DDIM steps
from (nearly) pure noise, the last returning the network's clean estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from lesiongen.diffusion.presets import FEW_STEP_SPACING, FEW_STEPS
from lesiongen.diffusion.schedules import TIMESTEP_SPACINGS, ScheduleConfig, check_trained_timesteps, draw_noise


@dataclass
class InpaintSchedule:
    """How to sample: ``fast`` is the default, ``full`` the DDPM + jumps reference it is measured against,
    ``few_step`` the preset of at most 4 network evaluations per patch."""

    sampler: str = "ddim"  # "ddim" (few steps) or "ddpm" (every training timestep)
    num_inference_steps: int = 16  # ddim only
    jump_length: int = 2  # states gone back per resampling jump
    n_jumps: int = 3  # jumps, spread over the noisier half of the chain
    guidance_scale: float = 1.5  # classifier-free guidance for insert mode; 1 = no guidance (half the evaluations)
    timestep_spacing: str = "leading"  # ddim: diffusers' "leading" starts below the last training timestep
    clean_final_step: bool = False  # ddim: the last step returns the clean estimate (alpha_bar = 1)

    def __post_init__(self) -> None:
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown inpainting sampler {self.sampler}; use 'ddim' or 'ddpm'")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.timestep_spacing}; choose one of {TIMESTEP_SPACINGS}")

    @classmethod
    def fast(cls) -> "InpaintSchedule":
        return cls()

    @classmethod
    def full(cls) -> "InpaintSchedule":
        return cls(sampler="ddpm", num_inference_steps=1000, jump_length=10, n_jumps=10)

    @classmethod
    def few_step(cls, steps: int = FEW_STEPS) -> "InpaintSchedule":
        """``steps`` deterministic DDIM steps from pure noise, no resampling jumps and no classifier-free guidance
        (insert mode's contrast calibration sets the lesion contrast instead): ``steps`` evaluations per patch."""
        return cls(sampler="ddim", num_inference_steps=int(steps), n_jumps=0, guidance_scale=1.0,
                   timestep_spacing=FEW_STEP_SPACING, clean_final_step=True)


def make_scheduler(schedule: InpaintSchedule, config: ScheduleConfig):
    from diffusers import DDIMScheduler, DDPMScheduler  # seconds to import: only when inpainting

    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                  prediction_type=config.prediction_type)
    if schedule.sampler == "ddim":
        scheduler = DDIMScheduler(**common, set_alpha_to_one=schedule.clean_final_step,
                                  timestep_spacing=schedule.timestep_spacing)
        scheduler.set_timesteps(schedule.num_inference_steps)
    elif schedule.sampler == "ddpm":
        scheduler = DDPMScheduler(**common)
        scheduler.set_timesteps(config.num_train_timesteps)
    else:
        raise ValueError(f"unknown inpainting sampler {schedule.sampler}; use 'ddim' or 'ddpm'")
    check_trained_timesteps(config, scheduler.timesteps)  # resampling jumps revisit these same timesteps
    return scheduler


def state_sequence(n_steps: int, jump_length: int, n_jumps: int) -> list[int]:
    """Chain states visited: 0 is pure noise, ``n_steps`` the clean image; a jump revisits earlier states.

    Jumps sit at evenly spaced states in the noisier half, where coarse structure (and disharmony) is decided.
    """
    jump_at = set()
    if n_jumps > 0 and jump_length > 0:
        candidates = np.linspace(jump_length, max(jump_length, n_steps // 2), n_jumps).round().astype(int)
        jump_at = {int(c) for c in candidates if jump_length <= c < n_steps}
    states, state = [0], 0
    done_jumps: set[int] = set()
    while state < n_steps:
        state += 1
        states.append(state)
        if state in jump_at and state not in done_jumps:
            done_jumps.add(state)
            for back in range(1, jump_length + 1):
                states.append(state - back)
            for forward in range(state - jump_length + 1, state + 1):
                states.append(forward)
    return states


def denoising_steps(schedule: InpaintSchedule) -> int:
    """Number of network calls per sample (before classifier-free guidance doubles them)."""
    n = schedule.num_inference_steps if schedule.sampler == "ddim" else 1000
    seq = state_sequence(n, schedule.jump_length, schedule.n_jumps)
    return sum(1 for a, b in zip(seq, seq[1:]) if b == a + 1)


@torch.no_grad()
def repaint(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], known: torch.Tensor, region: torch.Tensor,
            schedule: InpaintSchedule, config: ScheduleConfig,
            generator: torch.Generator | Sequence[torch.Generator]) -> tuple[torch.Tensor, int]:
    """Inpaint ``region`` (b, 1, ...) of ``known`` (b, c, ...); returns the sample and the number of denoise calls.

    ``generator``: one for the batch, or one per item (a list), whose draws then do not depend on the batch."""
    scheduler = make_scheduler(schedule, config)
    timesteps = [int(t) for t in scheduler.timesteps]
    n = len(timesteps)
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0)))

    def alpha_of(state: int) -> float:
        return float(alphas[timesteps[state]]) if state < n else final_alpha

    def randn() -> torch.Tensor:
        return draw_noise(known.shape, generator).to(known.device)

    def noised_known(state: int) -> torch.Tensor:
        a = alpha_of(state)
        return known * a**0.5 + randn() * (1 - a) ** 0.5

    x = region * randn() + (1 - region) * noised_known(0)
    sequence = state_sequence(n, schedule.jump_length, schedule.n_jumps)
    calls = 0
    for current, following in zip(sequence, sequence[1:]):
        if following == current + 1:  # denoise one step
            t = timesteps[current]
            noise = denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            calls += 1
            # diffusers' DDPM step takes one generator or one per batch item, as draw_noise does
            kwargs = {"generator": generator if isinstance(generator, torch.Generator) else list(generator)} \
                if schedule.sampler == "ddpm" else {}
            x = scheduler.step(noise.float(), t, x, **kwargs).prev_sample
            known_part = known if following == n else noised_known(following)
            x = region * x + (1 - region) * known_part
        else:  # resampling jump: re-noise from state `current` back to `following` (one state at a time)
            ratio = alpha_of(following) / alpha_of(current)
            x = x * ratio**0.5 + randn() * (1 - ratio) ** 0.5
    return x, calls


def edit_region(mask: np.ndarray, margin_voxels: int) -> np.ndarray:
    """Voxels the model may change: the mask (z, y, x), or a stack of masks along leading axes, grown by
    ``margin_voxels`` in every direction, diagonals included: the 26-neighbourhood dilation repeated
    ``margin_voxels`` times, which is the maximum over a cube of ``2 * margin_voxels + 1`` voxels."""
    mask = mask.astype(bool)
    if margin_voxels <= 0:
        return mask
    # the cube's maximum is separable: one pass per axis instead of margin passes over 27 neighbours
    size = (1,) * (mask.ndim - 3) + (2 * margin_voxels + 1,) * 3
    return ndimage.maximum_filter(mask.view(np.uint8), size=size, mode="constant", cval=0).astype(bool)


def painted_lesion(before: np.ndarray, after: np.ndarray, mask: np.ndarray, margin_voxels: int,
                   brain: np.ndarray | None = None) -> np.ndarray:
    """The lesion label of an inserted lesion: ``mask`` (z, y, x, its class values) grown into the voxels of its edit
    margin that the inpainter painted like the lesion.

    The inpainter may change the margin around a mask (to blend), and it can paint lesion-like intensity there; left
    unlabelled, that rim teaches a segmentation network that a lesion's edge is background. In the channel where
    the lesion changed most (``after - before``, both (c, z, y, x), mean over the mask), a margin voxel joins the
    label when it changed in the same direction by at least half the lesion's mean change (the half-maximum edge)
    and touches the mask through such voxels (26-neighbourhood); it takes the class of the nearest mask voxel.
    """
    inside = mask > 0
    if not inside.any() or margin_voxels <= 0:
        return mask.copy()
    change = after - before
    mean_change = change[:, inside].mean(axis=1)
    channel = int(np.argmax(np.abs(mean_change)))
    if mean_change[channel] == 0:
        return mask.copy()
    like_lesion = change[channel] * np.sign(mean_change[channel]) >= 0.5 * abs(mean_change[channel])
    candidates = edit_region(inside, margin_voxels) & like_lesion
    if brain is not None:
        candidates &= brain.astype(bool)
    grown = ndimage.binary_propagation(inside, structure=np.ones((3, 3, 3), bool), mask=candidates | inside)
    if not (grown & ~inside).any():
        return mask.copy()
    nearest = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
    return np.where(grown, mask[tuple(nearest)], 0).astype(mask.dtype)


def feather_blend(known: np.ndarray, generated: np.ndarray, mask: np.ndarray, margin_voxels: int) -> np.ndarray:
    """Generated inside ``mask``, a linear ramp over ``margin_voxels`` around it, and ``known`` bit-for-bit beyond.

    ``known`` / ``generated`` are (c, z, y, x); ``mask`` (z, y, x). The ramp hides a seam at the mask edge; beyond
    the margin ``np.where`` copies the known voxels, so they are exactly the input.
    """
    mask = mask.astype(bool)
    if not mask.any():
        return known.copy()
    distance = ndimage.distance_transform_edt(~mask)  # 0 inside the mask
    weight = np.clip(1.0 - distance / (margin_voxels + 1), 0.0, 1.0).astype(known.dtype)
    blended = known * (1 - weight) + generated * weight
    inside = edit_region(mask, margin_voxels) & (weight > 0)
    return np.where(inside[None], blended, known).astype(known.dtype)
