"""Known answers for the core algorithms: each test fails when the line that makes the algorithm right is broken.

RePaint with a deliberately wrong denoiser (the known region must still be the correctly noised known image, and the
resampling jumps must re-noise by q(x_t | x_s)), classifier-free guidance on a fake network, diffmask with an exact
network (the mask follows the sphere control), ganmask with networks that copy the sphere cue or the noise,
the GAN losses by hand, threshold calibration on a constructed case, every loss on fixed
inputs with a hand-computed value, and the realised condition-dropout rate of the inpainting trainer.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import TINY, TINY_NAME
from lesiongen.diffusion.guidance import classifier_free_guidance
from lesiongen.diffusion.inpainting import InpaintSchedule, make_scheduler, repaint
from lesiongen.diffusion.presets import FEW_STEPS
from lesiongen.diffusion.schedules import ScheduleConfig
from lesiongen.models.conditioning import MaskConditioning, keep_components_on_controls
from lesiongen.models.inpainter import Inpainter, InpainterConfig
from lesiongen.models.mask_generators import DiffMaskConfig, DiffMaskGenerator, GANMaskConfig, GANMaskGenerator
from lesiongen.models.spheres import SphereLesion, render_spheres
from lesiongen.utilities.errors import LesiongenError
from lesiongen.training.losses import (
    batch_soft_dice_loss,
    deep_supervision_loss,
    deep_supervision_weights,
    discriminator_loss,
    generator_loss,
    sigmoid_dice_loss,
    softmax_dice_loss,
)
from lesiongen.training.data import draw_batch, mirrored
from lesiongen.training.trainers.diffmask import (calibrate_threshold, count_and_volume,
                                                  lesion_weighted_loss, size_distance, stack_component_sizes)
from lesiongen.training.trainers.inpaint import inpainting_loss
from lesiongen.training.trainers.seg import SEG_LOSS_TERMS


@pytest.fixture(scope="module")
def plans(tiny_plans):
    return tiny_plans


# ---------------------------------------------------------------------------------------------------- RePaint
KNOWN_VALUE = 2.0


def _repaint_run(schedule: InpaintSchedule):
    """RePaint with a denoiser that always predicts x0 = 0 (wrong in the known region, whose image is 2.0)."""
    config = ScheduleConfig(prediction_type="sample")
    shape = (1, 1, 24, 24, 24)
    known = torch.full(shape, KNOWN_VALUE)
    region = torch.zeros(shape)
    region[..., :12] = 1.0  # the half to inpaint
    calls: list[tuple[int, torch.Tensor]] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((int(t[0]), x.clone()))
        return torch.zeros_like(x)

    out, n = repaint(denoise, known, region, schedule, config, torch.Generator().manual_seed(0))
    alphas = make_scheduler(schedule, config).alphas_cumprod.double()
    return out, calls, alphas, region.bool(), known


def test_repaint_keeps_the_known_region_correctly_noised_at_every_state():
    out, calls, alphas, region, known = _repaint_run(InpaintSchedule(num_inference_steps=12, n_jumps=0,
                                                                     guidance_scale=1.0))
    assert len(calls) == 12
    for t, x in calls:
        values = x[~region].double()
        a = float(alphas[t])
        # q(x_t | x_0 = known): mean sqrt(a) * 2, variance 1 - a, whatever the (wrong) denoiser said
        assert float(values.mean()) == pytest.approx(KNOWN_VALUE * math.sqrt(a), abs=0.06), f"t={t}"
        assert float(values.var()) == pytest.approx(1 - a, rel=0.1, abs=2e-3), f"t={t}"
    assert torch.equal(out[~region], known[~region])  # the end is the known image itself


def test_repaint_jumps_renoise_by_q_xt_given_xs():
    schedule = InpaintSchedule(num_inference_steps=12, jump_length=1, n_jumps=3, guidance_scale=1.0)
    _, calls, alphas, region, _ = _repaint_run(schedule)
    timesteps = [t for t, _ in calls]
    revisited = [i for i, t in enumerate(timesteps) if t in timesteps[:i]]
    assert len(revisited) == 3
    order = sorted(set(timesteps), reverse=True)  # the states' timesteps, noisiest first
    for second in revisited:
        t = timesteps[second]
        first = timesteps.index(t)
        a_s, a_next = float(alphas[t]), float(alphas[order[order.index(t) + 1]])
        # with x0 = 0 a DDIM step scales the inpainted region by sqrt((1 - a_next) / (1 - a_s)); the jump back must
        # then give sqrt(r) x_next + sqrt(1 - r) noise with r = a_s / a_next: fresh noise of variance 1 - r
        x_s, x_again = calls[first][1][region].double(), calls[second][1][region].double()
        ratio = a_s / a_next
        residual = x_again - math.sqrt(ratio) * math.sqrt((1 - a_next) / (1 - a_s)) * x_s
        assert float(residual.mean()) == pytest.approx(0.0, abs=0.05)
        assert float(residual.var()) == pytest.approx(1 - ratio, rel=0.12)
        assert abs(float(torch.corrcoef(torch.stack([residual, x_s]))[0, 1])) < 0.08


# ------------------------------------------------------------------------------------------ few-step sampling
def test_few_step_repaint_with_an_oracle_x0_network_returns_the_known_image_exactly():
    """A network that predicts the clean image exactly: the few-step sampler's last step returns that estimate,
    so the inpainted region and the known region both come back as the clean image, bit for bit."""
    config = ScheduleConfig(prediction_type="sample")
    clean = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 2, 12, 12, 12)).astype(np.float32))
    region = torch.zeros((2, 1, 12, 12, 12))
    region[..., 3:9, 2:10, 4:8] = 1.0
    timesteps: list[int] = []

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timesteps.append(int(t[0]))
        return clean.clone()

    out, calls = repaint(oracle, clean, region, InpaintSchedule.few_step(), config, torch.Generator().manual_seed(0))
    assert calls == len(timesteps) == FEW_STEPS
    assert torch.equal(out, clean)


@pytest.mark.parametrize("mode", ["insert", "remove"])
def test_few_step_inpainting_evaluates_the_network_at_most_four_times_per_patch(plans, mode):
    """Counted on the network itself: no resampling jumps and no guidance doubling in few-step mode; the default
    sampler on the same network shows what the counter catches (22 steps, doubled by guidance in insert mode)."""
    model = Inpainter(plans, InpainterConfig(), "cpu")
    network = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start, model.n_channels)
    model.networks["denoiser"] = network
    n, patch = 3, model.patch_size
    images = np.random.default_rng(1).normal(size=(n, model.n_channels, *patch)).astype(np.float32)
    masks = np.zeros((n, *patch), np.uint8)
    masks[:, 6:10, 5:9, 6:11] = 1
    few = model.with_sampling("few_step")
    few.inpaint(images, masks, mode, seed=0)
    assert network.patches / n <= 4 and few.last_evaluations == network.patches / n
    network.patches = 0
    default = model.with_sampling("default")
    default.inpaint(images, masks, mode, seed=0)
    assert default.last_evaluations == network.patches / n == (44 if mode == "insert" else 22)
    assert model.config.sampling == InpaintSchedule.fast()  # switching made new models; this one is as it was


def test_sampling_settings_round_trip_through_the_checkpoint_description(plans):
    from lesiongen.diffusion.schedules import few_step_sampling
    from lesiongen.models.registry import model_config_from_state

    inpainter = Inpainter(plans, InpainterConfig(sampling=InpaintSchedule.few_step()), "cpu")
    schedule = few_step_sampling(ScheduleConfig(prediction_type="sample"))
    config = DiffMaskConfig(priors=plans.sphere_priors, schedule=schedule, threshold=-0.2,
                            preset_thresholds={"default": 0.1, "few_step": -0.2}, few_step_variant="dpm_solver")
    diffmask = DiffMaskGenerator(plans, config, "cpu")
    for model in (inpainter, diffmask):
        _, config = model_config_from_state({"model": json.loads(json.dumps(model.description()))})
        assert config == model.config
    described = json.loads(json.dumps(diffmask.description()))
    described["config"]["few_step_variant"] = "ddim_quadratic"
    with pytest.raises(LesiongenError, match="ckpt.pt: .*unknown few-step variant ddim_quadratic"):
        model_config_from_state({"model": described}, source="ckpt.pt")


def test_diffmask_switches_sampler_and_threshold_together(plans):
    model = _exact_diffmask(plans)
    model.config.preset_thresholds = {"default": 0.1, "few_step": -0.3}
    few = model.with_sampling("few_step")
    assert few.config.threshold == -0.3 and few.config.schedule.sampler == "ddim"
    assert few.config.schedule.num_inference_steps == FEW_STEPS and few.config.schedule.clean_final_step
    assert few.config.schedule.prediction_type == model.config.schedule.prediction_type == "sample"
    assert model.config.threshold == 0.0 and model.config.schedule.sampler == "dpm_solver"  # the original stays
    assert model.with_sampling("default").config.threshold == 0.1
    model.config.few_step_variant = "ddim_trailing"  # the 4-step sampler chosen after training
    trailing = model.with_sampling("few_step").config.schedule
    assert (trailing.sampler, trailing.timestep_spacing, trailing.num_inference_steps) == ("ddim", "trailing", 4)
    model.config.few_step_variant = "dpm_solver"
    assert model.with_sampling("few_step").config.schedule.sampler == "dpm_solver"
    model.config.preset_thresholds = {}
    with pytest.raises(LesiongenError, match="no threshold calibrated for the 'few_step' sampler"):
        model.with_sampling("few_step")


# --------------------------------------------------------------------------------------------------- guidance
class _FlagNetwork(torch.nn.Module):
    """Outputs 3 where the "no condition" flag is 0 and 1 where it is 1; counts its calls."""

    def __init__(self, flag_channel: int, out_channels: int):
        super().__init__()
        self.flag_channel, self.out_channels, self.calls, self.patches = flag_channel, out_channels, 0, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.patches += len(x)  # network evaluations, one per patch in the batch
        flag = x[:, self.flag_channel:self.flag_channel + 1]
        return (3.0 - 2.0 * flag).expand(-1, self.out_channels, *x.shape[2:]).contiguous()


def test_classifier_free_guidance_follows_the_formula_on_a_fake_network(plans):
    model = Inpainter(plans, InpainterConfig(), "cpu")
    flag = model.input_layout.offsets()["unconditioned"].start
    network = _FlagNetwork(flag, model.n_channels)
    model.networks["denoiser"] = network
    b, patch = 2, model.patch_size
    args = (np.zeros((b, model.n_channels, *patch), np.float32), np.ones((b, *patch), np.uint8),
            np.zeros((b, *patch), bool), np.ones((b, 1, model.n_channels), np.float32), np.zeros(b, bool))
    x, t = torch.zeros((b, model.n_channels, *patch)), torch.full((b,), 10)
    assert torch.all(model.denoiser(*args, guidance_scale=1.0)(x, t) == 3.0)  # the conditioned model alone
    assert network.calls == 1
    guided = model.denoiser(*args, guidance_scale=2.5)(x, t)
    assert torch.all(guided == 1.0 + 2.5 * (3.0 - 1.0))  # unconditioned + s (conditioned - unconditioned)
    assert network.calls == 2  # both halves in one batch
    assert torch.equal(classifier_free_guidance(torch.tensor(3.0), torch.tensor(1.0), 0.0), torch.tensor(1.0))


def test_guidance_changes_the_inpainted_lesion(plans):
    model = Inpainter(plans, InpainterConfig(calibrate_contrast=False), "cpu")
    model.networks["denoiser"] = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start, model.n_channels)
    patch = model.patch_size
    images = np.zeros((1, model.n_channels, *patch), np.float32)
    mask = np.zeros((1, *patch), np.uint8)
    mask[0, 6:10, 6:10, 6:10] = 1
    plain = model.inpaint(images, mask, "insert", seed=0, schedule=InpaintSchedule(guidance_scale=1.0))
    guided = model.inpaint(images, mask, "insert", seed=0, schedule=InpaintSchedule(guidance_scale=3.0))
    inside = mask[0] > 0
    assert float(plain[0][:, inside].mean()) == pytest.approx(3.0, abs=0.05)  # the x0 the network predicts
    assert float(guided[0][:, inside].mean()) == pytest.approx(7.0, abs=0.05)  # 1 + 3 (3 - 1)


# --------------------------------------------------------------------------------------------------- diffmask
def _exact_diffmask(plans) -> DiffMaskGenerator:
    """diffmask with a network that predicts the clean mask = the sphere control (the exact answer)."""
    model = DiffMaskGenerator(plans, DiffMaskConfig(priors=plans.sphere_priors), "cpu")
    control = model.input_layout.offsets()["control"]
    model.networks["denoiser"] = lambda x, t: x[:, control].expand(-1, len(model.lesion_labels), *x.shape[2:])
    return model


def _sphere(centre, radius) -> SphereLesion:
    return SphereLesion(label=1, centre=list(centre), radius_mm=radius, semi_axes_mm=[radius] * 3,
                        rotation=np.eye(3).tolist())


@pytest.mark.parametrize("sampling", ["model", "few_step:ddim_leading", "few_step:ddim_trailing",
                                      "few_step:dpm_solver"])
def test_diffmask_masks_follow_the_sphere_control(plans, sampling):
    """An oracle network (its output is the sphere control) gives back the spheres with every sampler, the
    few-step ones in 4 evaluations."""
    model = _exact_diffmask(plans)
    model.config.preset_thresholds = {"default": 0.0, "few_step": 0.0}
    sampling, _, variant = sampling.partition(":")
    model.config.few_step_variant = variant or model.config.few_step_variant
    model = model.with_sampling(sampling)
    spheres = [[_sphere((8, 8, 8), 9.0)], [_sphere((6, 9, 7), 5.0), _sphere((11, 6, 10), 4.0)]]
    masks = model.sample_masks(2, MaskConditioning(spheres=spheres), seed=1)
    for sphere_set, mask in zip(spheres, masks):
        np.testing.assert_array_equal(mask, render_spheres(sphere_set, model.patch_size, model.spacing))
    assert masks[0].sum() != masks[1].sum()
    assert model.last_evaluations == (20 if sampling == "model" else FEW_STEPS)


def test_diffmask_drops_lesions_off_its_spheres_in_models_trained_with_the_rule(plans):
    """An oracle network that draws the sphere and, like a briefly trained one at its patch border, a blob in a
    corner: a model trained since the rule keeps only the sphere; an older model keeps both, as it always did."""
    model = _exact_diffmask(plans)
    control = model.input_layout.offsets()["control"]

    def network(x, t):
        out = x[:, control].expand(-1, len(model.lesion_labels), *x.shape[2:]).clone()
        out[:, :, :2, :2, :2] = 1.0
        return out

    model.networks["denoiser"] = network
    spheres = [[_sphere((8, 8, 8), 3.0)]]
    sphere = render_spheres(spheres[0], model.patch_size, model.spacing)
    assert model.minimum_voxels()[1] <= 8  # the corner blob is large enough to stay otherwise
    older = model.sample_masks(1, MaskConditioning(spheres=spheres), seed=0)[0]
    np.testing.assert_array_equal(older[:2, :2, :2], 1)
    np.testing.assert_array_equal(older[2:, 2:, 2:], sphere[2:, 2:, 2:])
    model.config.lesions_on_controls_only = True
    np.testing.assert_array_equal(model.sample_masks(1, MaskConditioning(spheres=spheres), seed=0)[0], sphere)


def test_keep_components_on_controls_by_hand():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # on the control
    labels[5:7, 5:7, 5:7] = 2  # off it
    labels[0, 7, 7] = 1  # off it
    controls = np.zeros_like(labels)
    controls[2, 2, 2] = 1  # one shared voxel is enough
    kept = keep_components_on_controls(labels, controls)
    expected = np.zeros_like(labels)
    expected[1:3, 1:3, 1:3] = 1
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(keep_components_on_controls(labels, np.zeros_like(labels)), 0)


# ---------------------------------------------------------------------------------------------------- ganmask
def _ganmask_passing(plans, part: str, channel: int = 0) -> GANMaskGenerator:
    """ganmask whose generator returns logits 20 x (one channel of its input ``part``) for every lesion class."""
    model = GANMaskGenerator(plans, GANMaskConfig(priors=plans.sphere_priors, threshold=0.5), "cpu")
    index = model.input_layout.offsets()[part].start + channel
    model.networks["generator"] = lambda x: 20 * x[:, index:index + 1].expand(-1, len(model.lesion_labels),
                                                                               *x.shape[2:])
    return model


def test_ganmask_masks_follow_the_sphere_cue_it_is_given(plans):
    """A generator that copies its sphere-cue channel (+1 inside, -1 outside) draws exactly the spheres."""
    model = _ganmask_passing(plans, "control")
    spheres = [[_sphere((8, 8, 8), 9.0)], [_sphere((6, 9, 7), 5.0), _sphere((11, 6, 10), 4.0)]]
    masks = model.sample_masks(2, MaskConditioning(spheres=spheres), seed=1)
    for sphere_set, mask in zip(spheres, masks):
        np.testing.assert_array_equal(mask, render_spheres(sphere_set, model.patch_size, model.spacing))


def test_ganmask_noise_draws_differ_and_a_seed_repeats(plans):
    """A generator that thresholds a noise channel at 0: each seed is its own draw, the same seed the same masks;
    the noise varies smoothly (lesion-sized blobs), not voxel by voxel."""
    model = _ganmask_passing(plans, "noise", channel=1)
    spheres = [[_sphere((8, 8, 8), 6.0)]] * 3
    a = model.sample_masks(3, MaskConditioning(spheres=spheres), seed=1)
    b = model.sample_masks(3, MaskConditioning(spheres=spheres), seed=2)
    assert not np.array_equal(a, b) and not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(a, model.sample_masks(3, MaskConditioning(spheres=spheres), seed=1))
    assert 0.2 < a.mean() < 0.8  # about half the voxels: standard-normal fields cut at 0
    noise = model.noise(64, torch.Generator().manual_seed(0))
    assert noise.shape == (64, 4, *model.patch_size)
    assert float(noise.std()) == pytest.approx(1.0, abs=0.05)
    neighbours = torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1]
    assert float(neighbours) > 0.8  # white noise would give 0


def test_gan_losses_by_hand():
    """Non-saturating GAN losses on fixed logits: log(1 + e^-x) for "real", log(1 + e^x) for "fake"."""
    real = torch.tensor([0.0, math.log(3.0)])  # BCE to 1: ln 2 and ln(4/3)
    fake = torch.tensor([math.log(3.0), 0.0])  # BCE to 0: ln 4 and ln 2; BCE to 1: ln(4/3) and ln 2
    expected = 0.5 * ((math.log(2) + math.log(4 / 3)) / 2 + (math.log(4) + math.log(2)) / 2)
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected)  # = ln(64/3) / 4
    logits = torch.zeros((1, 1, 2, 1, 1))  # p = 0.5 on both voxels
    target = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    bce, dice = math.log(2), 1 - (2 * 0.5 + 1e-5) / (2 + 1e-5)  # soft Dice: intersection 0.5, sums 1 + 1
    loss, parts = generator_loss(fake, logits, target, adversarial_weight=2.0, reconstruction_weight=10.0)
    adversarial = (math.log(4 / 3) + math.log(2)) / 2
    assert parts == pytest.approx({"adversarial": adversarial, "bce": bce, "dice": dice})
    assert float(loss) == pytest.approx(2.0 * adversarial + 10.0 * (bce + dice))


def test_mirroring_flips_only_the_spatial_axes_whatever_comes_before_them():
    """A (b, c, z, y, x) batch: each sample flipped along the spatial axes of its row (z and x, then y), its channels
    kept in place, as a (b, z, y, x) batch of one of its channels is flipped by the same rows."""
    batch = np.arange(2 * 2 * 3 * 4 * 5).reshape(2, 2, 3, 4, 5)
    flips = np.array([[True, False, True], [False, True, False]])
    out = mirrored(batch, flips)
    assert np.array_equal(out[0], batch[0][:, ::-1, :, ::-1]) and np.array_equal(out[1], batch[1][:, :, ::-1])
    assert np.array_equal(mirrored(batch[:, 1], flips), out[:, 1])
    assert np.array_equal(batch, np.arange(batch.size).reshape(batch.shape))  # the input is not flipped in place



def test_each_axis_is_mirrored_for_about_half_the_samples_and_never_when_mirroring_is_off():
    index, flips = draw_batch(np.random.default_rng(0), n_patches=7, batch_size=4000)
    assert set(index) == set(range(7))
    assert np.allclose(flips.mean(axis=0), 0.5, atol=0.03)
    assert not draw_batch(np.random.default_rng(0), 7, 100, mirror=False)[1].any()

# ----------------------------------------------------------------------------------------- threshold calibration
def _above(d: np.ndarray, threshold: float) -> np.ndarray:
    return (d[:, 0] > threshold).astype(np.uint8)


def test_calibration_picks_the_threshold_that_matches_count_and_volume():
    size = 12
    grid = np.indices((size,) * 3) - size // 2
    distance = np.abs(grid).max(axis=0)  # Chebyshev distance from the centre
    # cut at t, the "denoised" cone is the cube of Chebyshev radius < (0.9 - t) / 0.2: 1, 27, 125, ... voxels
    denoised = np.repeat((0.9 - 0.2 * distance)[None, None], 4, axis=0).astype(np.float32)
    real = np.zeros((4, size, size, size), np.uint8)
    real[:, 5:8, 5:8, 5:8] = 1  # one lesion of 27 voxels per patch
    brain = np.ones_like(real, bool)
    best, scores = calibrate_threshold(denoised, real, brain, _above, {1: 1})
    assert best == pytest.approx(0.5)  # 27 voxels: thresholds 0.5 and 0.6 tie, the lower one wins
    assert scores[0.5] == pytest.approx(0.0) and scores[0.4] > 0 and scores[0.7] > 0
    assert count_and_volume(_above(denoised, 0.3)) == (1.0, 125.0)
    brain[:, :, :, 7:] = False  # cut to the brain before scoring: 18 voxels remain at 0.5, 27 at 0.3
    best, _ = calibrate_threshold(denoised, real[:, :, :, :] * brain, brain, _above, {1: 1})
    assert best == pytest.approx(0.5)


def _two_cube_patches(levels: tuple[float, float]) -> np.ndarray:
    """Two "denoised" patches (2, 1, 12, 12, 12), background -1, each with two 27-voxel cubes apart: the first at
    ``levels[0]``, the second at ``levels[1]``."""
    denoised = np.full((2, 1, 12, 12, 12), -1.0, np.float32)
    denoised[:, 0, 1:4, 1:4, 1:4] = levels[0]
    denoised[:, 0, 7:10, 7:10, 7:10] = levels[1]
    return denoised


def test_calibration_pays_for_too_many_lesions_of_the_right_size():
    """Below 0.35 each patch has the real lesion's size twice over: the sizes alone are perfect there, and only the
    count's log ratio makes the lowest threshold that drops the extra cube (0.4) win."""
    real = np.zeros((2, 12, 12, 12), np.uint8)
    real[:, 1:4, 1:4, 1:4] = 1
    best, scores = calibrate_threshold(_two_cube_patches((0.9, 0.35)), real, np.ones_like(real, bool), _above,
                                       {1: 1})
    assert best == pytest.approx(0.4)
    assert scores[0.3] == pytest.approx(np.log(2.001 / 1.001)) and scores[0.4] == pytest.approx(0.0)


def test_calibration_judges_only_what_lies_in_the_brain():
    """A bright cube outside the brain would make 0.4 the threshold that leaves one real-sized lesion; cut to the
    brain, as sampling cuts its masks, every threshold below the in-brain cube's 0.4 does, and the lowest wins."""
    real = np.zeros((2, 12, 12, 12), np.uint8)
    real[:, 1:4, 1:4, 1:4] = 1
    brain = np.ones_like(real, bool)
    brain[:, 6:, 6:, 6:] = False  # the second cube lies outside
    best, scores = calibrate_threshold(_two_cube_patches((0.4, 0.9)), real, brain, _above, {1: 1})
    assert best == pytest.approx(-0.8) and scores[0.3] == pytest.approx(0.0)
    assert scores[0.5] == pytest.approx(np.log(27) + abs(np.log(0.001 / 1.001)))  # nothing left: 1 voxel, 0 lesions


def test_size_distance_by_hand_and_a_threshold_it_picks_that_count_and_mean_volume_would_not():
    real = np.zeros((1, 12, 12, 12), np.uint8)
    real[0, 1, 1, 1] = 1  # a 1-voxel lesion and a 27-voxel one
    real[0, 5:8, 5:8, 5:8] = 1
    assert sorted(stack_component_sizes(real)) == [1, 27]
    assert size_distance(np.array([27, 27]), stack_component_sizes(real)) == pytest.approx(np.log(27) / 2)
    assert size_distance(np.zeros(0), stack_component_sizes(real)) == pytest.approx(np.log(27) / 2)  # nothing ~ 1 voxel
    # two candidate outputs with the real count and mean volume per patch (2 lesions, 28 voxels): two lesions of 14
    # voxels, or the real 1 and 27. Count and mean volume alone tie them (and the lower threshold would win); the
    # sizes pick the real ones
    even = np.zeros_like(real)
    even[0, 1:3, 1:8, 1] = 1  # 14 voxels
    even[0, 5:7, 5:12, 6] = 1  # 14 voxels
    outputs = {0.0: even, 0.5: real}
    best, scores = calibrate_threshold(np.zeros((1, 1, 12, 12, 12), np.float32), real, np.ones_like(real, bool),
                                       lambda d, t: outputs[t].copy(), {1: 1}, np.array([0.0, 0.5]))
    assert count_and_volume(even) == count_and_volume(real)
    assert best == 0.5 and scores[0.5] == pytest.approx(0.0)
    assert scores[0.0] == pytest.approx((abs(np.log(14)) + abs(np.log(14) - np.log(27))) / 2)



def test_few_step_choice_weighs_each_statistic_by_the_real_spread_and_takes_the_smallest_worst_excess():
    """By hand: real radii 1 and 3 mm (spread 1), log-volumes 2 and 2.5 (spread 0.25), one lesion per patch and
    no tissue map (no spread: left out). Leading is 0.1 further on log-volume (0.4 spreads), trailing 0.2 further on
    radius (0.2 spreads) and 0.05 closer on log-volume: trailing's worst excess is smaller. A variant without
    lesions (NaN) gets infinity."""
    from lesiongen.evaluation.mask_metrics import METRICS
    from lesiongen.training.few_step_choice import worst_excesses

    spread = {**dict.fromkeys(METRICS, 0.0), "radius_mm": 1.0, "log_volume_mm3": 0.25}
    reference = dict.fromkeys(METRICS, 0.3)
    leading = {**reference, "log_volume_mm3": 0.4, "sphericity": 5.0}  # sphericity has no spread: not counted
    trailing = {**reference, "radius_mm": 0.5, "log_volume_mm3": 0.25}
    empty = dict.fromkeys(METRICS, float("nan"))
    worst = worst_excesses({"ddim_leading": leading, "ddim_trailing": trailing, "dpm_solver": empty}, reference,
                           spread)
    assert worst["ddim_leading"] == pytest.approx(0.4) and worst["ddim_trailing"] == pytest.approx(0.2)
    assert worst["dpm_solver"] == float("inf")


def _radius_statistics(radii):
    """One lesion per patch (entry), only the radius varies: the one statistic with a real spread."""
    from lesiongen.evaluation.mask_metrics import MaskStatistics

    n = len(radii)
    return MaskStatistics(log_volume_mm3=[3.0] * n, radius_mm=list(map(float, radii)), sphericity=[0.6] * n,
                          tissue_class=[0] * n, lesions_per_patch=[1] * n)


def test_few_step_choice_keeps_the_preferred_student_unless_another_sampler_is_closer_on_nearly_every_resample():
    """Ten choice patches with real radii 0..9 mm; the default sampler and DDIM make the real masks, the student too
    except on patch 0, where its lesion is 5 mm larger (Wasserstein 0.5 on all ten). DDIM has the smaller worst
    excess, but only in the resamples that hold patch 0: 1 - 0.9**10 = 65 % of them, below 95 %, so the preferred
    student stays; without a preference DDIM wins. A student larger on every patch loses in every resample."""
    from lesiongen.training.few_step_choice import CLEARLY_BETTER, choose_few_step_variant

    real = _radius_statistics(range(10))
    student = _radius_statistics([5, *range(1, 10)])
    generated = {"ddim_leading": real, "distilled": student}
    choice = choose_few_step_variant(generated, real, real, preferred="distilled", resamples=2000)
    assert choice.chosen == "distilled"
    assert choice.worst_excess["distilled"] == pytest.approx(0.5 / float(np.std(range(10))))
    assert choice.beats_preferred["ddim_leading"] == pytest.approx(1 - 0.9 ** 10, abs=0.03)
    assert choose_few_step_variant(generated, real, real).chosen == "ddim_leading"

    generated["distilled"] = _radius_statistics(np.arange(10) + 5)
    choice = choose_few_step_variant(generated, real, real, preferred="distilled")
    assert choice.chosen == "ddim_leading" and choice.beats_preferred["ddim_leading"] == 1.0 >= CLEARLY_BETTER
    assert choice.describe().endswith("distilled is replaced only by a sampler closer in 95% of 500 resamples of "
                                      "the patches: ddim_leading 100%")


def test_few_step_choice_resamples_each_patch_with_all_its_draws():
    """Two draws per patch, in a row: the student's second draw of patch 0 is 5 mm off, so it is further exactly in
    the resamples that hold patch 0 (65 %), as with one draw; resampling draws as if they were patches would mix
    one patch's draws with another's lesions and give another share."""
    from lesiongen.training.few_step_choice import choose_few_step_variant

    real = _radius_statistics(range(10))
    twice = _radius_statistics(np.repeat(np.arange(10), 2))
    student = _radius_statistics([0, 5, *np.repeat(np.arange(1, 10), 2)])
    choice = choose_few_step_variant({"ddim_leading": twice, "distilled": student}, twice, real, draws=2,
                                     preferred="distilled", resamples=2000)
    assert choice.chosen == "distilled"
    assert choice.beats_preferred["ddim_leading"] == pytest.approx(1 - 0.9 ** 10, abs=0.03)


def test_few_step_choice_ties_go_to_the_earlier_candidate():
    from lesiongen.training.few_step_choice import choose_few_step_variant

    real = _radius_statistics(range(6))
    choice = choose_few_step_variant({"ddim_leading": real, "ddim_trailing": real}, real, real)
    assert choice.chosen == "ddim_leading" and choice.worst_excess["ddim_trailing"] == 0.0
    assert choice.beats_preferred == {}


def test_mask_statistics_of_patches_picks_each_patch_lesions_in_order_repeats_included():
    from lesiongen.evaluation.mask_metrics import MaskStatistics

    stats = MaskStatistics(log_volume_mm3=[1.0, 2.0, 3.0], radius_mm=[1.0, 2.0, 3.0], sphericity=[0.5, 0.6, 0.7],
                           tissue_class=[1, 2, 3], lesions_per_patch=[2, 0, 1])  # patch 0: lesions 1, 2; patch 2: 3
    picked = stats.of_patches([2, 0, 2, 1])
    assert picked.radius_mm == [3.0, 1.0, 2.0, 3.0] and picked.tissue_class == [3, 1, 2, 3]
    assert picked.lesions_per_patch == [1, 2, 1, 0]
    assert stats.of_patches([]).lesions_per_patch == [] and stats.of_patches([1]).radius_mm == []


# ------------------------------------------------------------------------------------------------------ losses
def test_batch_soft_dice_by_hand():
    probabilities = torch.tensor([[[0.8, 0.2, 0.6, 0.0]], [[1.0, 0.5, 0.0, 0.0]]])  # (b=2, c=1, 4 voxels)
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]])
    intersection = 0.8 + 0.6 + 1.0 + 0.5
    total = (0.8 + 0.2 + 0.6 + 1.0 + 0.5) + 4.0
    assert float(batch_soft_dice_loss(probabilities, target, smooth=0.0)) == pytest.approx(1 - 2 * intersection / total)


def test_softmax_dice_ignores_background_and_sigmoid_dice_uses_every_channel():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]])  # (b=1, classes=2, 3 voxels)
    labels = torch.tensor([[0, 1, 1]])
    p1 = torch.softmax(logits, dim=1)[0, 1]
    expected = 1 - (2 * (p1[1] + p1[2]) + 1e-5) / (p1.sum() + 2 + 1e-5)
    assert float(softmax_dice_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    s = torch.sigmoid(logits[0])
    target = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])
    per_channel = [1 - (2 * float((s[c] * target[0, c]).sum()) + 1e-5) / (float(s[c].sum() + target[0, c].sum()) + 1e-5)
                   for c in range(2)]
    assert float(sigmoid_dice_loss(logits, target)) == pytest.approx(np.mean(per_channel), rel=1e-6)


def test_deep_supervision_weights_every_output():
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    outputs = [torch.full((1, 2, 4, 4, 4), 1.0), torch.full((1, 2, 2, 2, 2), 10.0), torch.full((1, 2, 1, 1, 1), 100.0)]
    target = torch.zeros((1, 1, 4, 4, 4))
    loss, parts = deep_supervision_loss(outputs, target, {"mean": lambda logits, t: logits.mean()})
    assert float(loss) == pytest.approx(2 / 3 * 1.0 + 1 / 3 * 10.0)  # weights 1, 1/2, 0 normalised
    assert parts["mean"] == pytest.approx(float(loss))


def test_seg_loss_is_cross_entropy_plus_dice_at_every_resolution():
    torch.manual_seed(0)
    full = torch.randn(2, 2, 4, 4, 4)
    half = torch.randn(2, 2, 2, 2, 2)
    labels = (torch.rand(2, 1, 4, 4, 4) > 0.7).long()
    loss, parts = deep_supervision_loss([full, half, torch.randn(2, 2, 1, 1, 1)], labels, SEG_LOSS_TERMS)

    def by_hand(logits, target):
        log_p = torch.log_softmax(logits, dim=1)
        ce = -log_p.gather(1, target).mean()
        p = torch.softmax(logits, dim=1)[:, 1]
        fg = (target[:, 0] == 1).float()
        dice = 1 - (2 * (p * fg).sum() + 1e-5) / (p.sum() + fg.sum() + 1e-5)
        return float(ce), float(dice)

    ce_full, dice_full = by_hand(full, labels)
    ce_half, dice_half = by_hand(half, labels[:, :, ::2, ::2, ::2])  # nearest downsampling takes even voxels
    expected = 2 / 3 * (ce_full + dice_full) + 1 / 3 * (ce_half + dice_half)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert parts["dice"] == pytest.approx(2 / 3 * dice_full + 1 / 3 * dice_half, rel=1e-5)
    assert parts["ce"] == pytest.approx(2 / 3 * ce_full + 1 / 3 * ce_half, rel=1e-5)


def test_diffmask_loss_weights_the_lesion_region():
    error = torch.zeros((1, 1, 2, 2, 2))
    error[0, 0, 0, 0, 0] = 4.0  # inside the region
    error[0, 0, 1, 1, 1] = 2.0  # outside
    region = torch.zeros_like(error)
    region[0, 0, 0, 0, :] = 1.0  # 2 voxels
    loss, parts = lesion_weighted_loss(error, region, lesion_weight=10.0)
    assert parts["mse"] == pytest.approx(6.0 / 8)
    assert parts["lesion"] == pytest.approx(4.0 / 2)
    assert float(loss) == pytest.approx(6.0 / 8 + 10.0 * 2.0)


def test_inpainting_loss_by_hand():
    error = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (b=1, z=1, y=2, x=2)
    region = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    lesions = {1: torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]), 2: torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])}
    loss, parts = inpainting_loss(error, region, lesions, outside_weight=0.1)
    # region mean 1.5, class means 1 and 2 (each / 2 classes), outside mean 3.5 x 0.1
    assert float(loss) == pytest.approx(1.5 + 1.0 / 2 + 2.0 / 2 + 0.35)
    assert parts == pytest.approx({"region": 1.5, "class_1": 1.0, "class_2": 2.0, "outside": 3.5})


# --------------------------------------------------------------------------------------------- condition dropout
class _Recorder(torch.nn.Module):
    def __init__(self, out_channels: int):
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.out_channels = out_channels

    def forward(self, x, t):
        self.inputs.append(x.detach().clone())
        return torch.zeros((x.shape[0], self.out_channels, *x.shape[2:]))


def test_realised_condition_dropout_rate_matches_the_setting(tiny_preprocessed):
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.inpaint import InpaintTrainer

    trainer = InpaintTrainer(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(batch_size=100))
    trainer.apply_settings({"condition_dropout": 0.3, "heal_probability": 0.0})
    trainer.initialize()
    trainer.load_training_data()
    recorder = _Recorder(trainer.model.n_channels)
    trainer.trained["denoiser"] = recorder
    for _ in range(8):
        trainer.training_loss()
    offsets = trainer.model.input_layout.offsets()
    x = torch.cat(recorder.inputs)
    flags = x[:, offsets["unconditioned"]].amax(dim=(1, 2, 3, 4))
    assert float(flags.mean()) == pytest.approx(0.3, abs=0.06)  # 800 draws: 4 standard errors
    condition = x[:, offsets["condition"]].abs().amax(dim=(1, 2, 3, 4))
    assert float(condition[flags == 1].max()) == 0.0  # dropped conditions are blanked ...
    assert float((condition[flags == 0] > 0).float().mean()) > 0.9  # ... kept ones carry the lesion's contrast


# ------------------------------------------------------------------------------------------- small pieces
def test_derive_seed_is_stable_distinct_and_in_range():
    from lesiongen.utilities.seeding import derive_seed

    seeds = {derive_seed(12345, "case", i) for i in range(200)}
    assert len(seeds) == 200 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(1, "a") == derive_seed(1, "a") != derive_seed(1, "b")
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(-1) != derive_seed(1)
    assert derive_seed(7, "synthetic", "sphere", 3) != derive_seed(7, "synthetic", "diffmask", 3)


def test_ema_warm_up_follows_diffusers():
    from lesiongen.training.base import ema_average

    average = ema_average(0.999)
    # step 0: decay (1 + 0) / (10 + 0) = 0.1; late steps: capped at 0.999
    assert float(average(torch.tensor(10.0), torch.tensor(0.0), torch.tensor(0))) == pytest.approx(1.0)
    assert float(average(torch.tensor(10.0), torch.tensor(0.0), torch.tensor(10**6))) == pytest.approx(9.99)


def test_fold_priors_count_only_the_folds_training_lesions(_tiny_preprocessed_template, plans):
    from lesiongen.fingerprint.fingerprint import load_fingerprint
    from lesiongen.planning.priors import fold_sphere_priors
    from lesiongen.utilities.errors import LesiongenError

    fingerprint = load_fingerprint(_tiny_preprocessed_template["preprocessed"] / TINY_NAME / "dataset_fingerprint.json")
    cases = [c.case_id for c in fingerprint.cases]
    for held_out in cases:
        train = [c for c in cases if c != held_out]
        expected = sum(len(c.lesions) for c in fingerprint.cases if c.case_id in train)
        assert fold_sphere_priors(fingerprint, train, plans)["1"].n_lesions_observed == expected
    with pytest.raises(LesiongenError, match="hold no lesion"):
        fold_sphere_priors(fingerprint, ["no_such_case"], plans)


def test_small_components_are_dropped_per_class():
    from lesiongen.models.conditioning import drop_small_components

    labels = np.zeros((8, 8, 8), np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[5, 5, 5] = 1  # 1 voxel
    labels[5:7, 0:2, 5] = 2  # 4 voxels of class 2
    out = drop_small_components(labels, {1: 2, 2: 5})
    assert int((out == 1).sum()) == 8 and not out[5, 5, 5] and not (out == 2).any()
    # a small class-1 lesion touching a large class-2 one is still its own component: dropped, the other kept
    touching = np.zeros((8, 8, 8), np.uint8)
    touching[2:4, 2:4, 2:4] = 2
    touching[4, 2, 2] = 1
    out = drop_small_components(touching, {1: 2, 2: 5})
    assert not (out == 1).any() and int((out == 2).sum()) == 8


def test_placement_follows_the_tissue_probabilities(plans):
    import dataclasses

    from lesiongen.inference.placement import placement_weights
    from lesiongen.planning.plans import Categorical

    brain = np.ones((4, 4, 4), bool)
    tissue = np.ones((4, 4, 4), np.uint8)
    tissue[:, :, 2:] = 2
    prior = dataclasses.replace(plans.sphere_priors["1"], location_histogram=[1 / 64] * 64, location_bins=4,
                                tissue_probability=Categorical({"1": 0.2, "2": 0.8}), neighbourhood=None)
    weights = placement_weights(brain, tissue, prior, (1.0, 1.0, 1.0)).reshape(4, 4, 4)
    assert float(weights[tissue == 2].sum()) == pytest.approx(0.8)
    only_1 = placement_weights(brain, tissue, prior, (1.0, 1.0, 1.0), [1]).reshape(4, 4, 4)
    assert float(only_1[tissue == 1].sum()) == pytest.approx(1.0)


def test_seg_variant_names_round_trip():
    from lesiongen.inference.strategies import SegVariant

    for variant in (SegVariant("none"), SegVariant("copy_paste"), SegVariant("copy_paste", 0.25, 3),
                    SegVariant("diffmask", 2.0), SegVariant("none", 1.0, 0)):
        assert SegVariant.parse(variant.name) == variant
    assert SegVariant("diffmask", 0.5, 1).name == "seg_diffmask_r0.5_s1" and SegVariant.parse("seg_magic") is None
    assert SegVariant("none", 2.0).name == "seg_none"  # real data only: the ratio means nothing


# ----------------------------------------------------------------------------------------- contrast calibration
def _calibration_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-channel noise image, a box lesion and a brain that cuts part of the volume off."""
    image = np.random.default_rng(0).normal(size=(2, 16, 16, 16)).astype(np.float32)
    lesion = np.zeros((16, 16, 16), bool)
    lesion[6:10, 6:10, 7:10] = True
    brain = np.ones_like(lesion)
    brain[:, :, :3] = False
    return image, lesion, brain


def test_contrast_calibration_hits_the_target_and_touches_only_the_lesion():
    from lesiongen.fingerprint.lesions import lesion_contrast
    from lesiongen.models.inpainter import calibrate_contrast

    image, lesion, brain = _calibration_case()
    target = np.array([2.5, -1.0])
    out = calibrate_contrast(image, lesion, brain, target)
    assert lesion_contrast(out, lesion, brain) == pytest.approx(target, abs=1e-4)
    np.testing.assert_array_equal(out[:, ~lesion], image[:, ~lesion])
    texture = out[:, lesion] - image[:, lesion]  # one shift per channel: the lesion's texture is kept
    assert np.ptp(texture, axis=1) == pytest.approx([0.0, 0.0], abs=1e-5)


def test_inserted_lesions_get_the_contrast_they_were_conditioned_on(plans):
    from lesiongen.fingerprint.lesions import lesion_contrast

    model = Inpainter(plans, InpainterConfig(), "cpu")  # calibration on, the default
    model.networks["denoiser"] = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start, model.n_channels)
    patch = model.patch_size
    images = np.random.default_rng(1).normal(size=(1, model.n_channels, *patch)).astype(np.float32)
    mask = np.zeros((1, *patch), np.uint8)
    mask[0, 5:10, 6:10, 6:11] = 1
    target = np.array([[[1.5, 3.0]]], np.float32)[:, :, :model.n_channels]
    out = model.inpaint(images, mask, "insert", contrast=target, seed=0, schedule=InpaintSchedule(guidance_scale=1.0))
    assert lesion_contrast(out[0], mask[0] > 0, np.ones(patch, bool)) == pytest.approx(target[0, 0], abs=1e-3)


def test_step_calibration_hits_the_target_step_and_touches_only_the_lesion():
    from lesiongen.models.inpainter import calibrate_step, class_step

    image, lesion, brain = _calibration_case()
    out = calibrate_step(image, lesion, brain, np.array([2.0, -0.5]))
    shell = (ndimage.distance_transform_edt(~lesion) <= 2) & ~lesion & brain  # by hand: the 2-voxel shell
    for c, target in enumerate([2.0, -0.5]):
        assert out[c][lesion].mean() - out[c][shell].mean() == pytest.approx(target, abs=1e-5)
    assert class_step(out, lesion, brain) == pytest.approx([2.0, -0.5], abs=1e-5)
    np.testing.assert_array_equal(out[:, ~lesion], image[:, ~lesion])


def _ring_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-channel image of 1.0 with a box lesion, its first ring (26-neighbour steps) at +0.3 / +0.6, its second at
    +0.1 / +0.2, the two rings beyond at 1.0 (the surroundings), 7.0 further out, and 100.0 outside the brain."""
    from lesiongen.models.inpainter import margin_rings

    lesion = np.zeros((20, 20, 20), bool)
    lesion[8:11, 8:12, 8:11] = True
    brain = np.ones_like(lesion)
    brain[:, :, :7] = False  # cuts through the rings and the surroundings
    image = np.full((2, 20, 20, 20), 7.0)
    (ring1, ring2), surroundings = margin_rings(lesion, brain, 2)
    image[:, surroundings] = 1.0
    image[:, ring1] = np.array([1.3, 1.6])[:, None]
    image[:, ring2] = np.array([1.1, 1.2])[:, None]
    image[:, lesion] = 4.0
    image[:, ~brain] = 100.0
    return image, lesion, brain


def test_margin_rings_and_edge_steps_by_hand():
    from lesiongen.models.inpainter import class_edges, margin_rings

    image, lesion, brain = _ring_case()
    (ring1, ring2), surroundings = margin_rings(lesion, brain, 2)
    distance = np.max(np.abs(np.indices(lesion.shape)[:, :, :, :, None] -
                             np.argwhere(lesion).T[:, None, None, None, :]), axis=0).min(axis=-1)  # chessboard
    np.testing.assert_array_equal(ring1, (distance == 1) & brain)
    np.testing.assert_array_equal(ring2, (distance == 2) & brain)
    np.testing.assert_array_equal(surroundings, ((distance == 3) | (distance == 4)) & brain)
    np.testing.assert_allclose(class_edges(image, lesion, brain, 2), [[0.3, 0.6], [0.1, 0.2]], atol=1e-12)
    other = np.zeros_like(lesion)
    other[8:11, 12, 9] = True  # another lesion inside the first ring: not part of it
    image[:, other] = 50.0
    np.testing.assert_allclose(class_edges(image, lesion, brain, 2, other), [[0.3, 0.6], [0.1, 0.2]], atol=1e-12)
    assert np.isnan(class_edges(image, lesion, np.zeros_like(brain), 2)).all()  # no surroundings: undefined


def test_euclidean_rings_cut_the_margin_by_distance_and_keep_its_voxels():
    """Around one voxel, a 2-voxel margin: the first Euclidean ring is its 6 face neighbours, the second the other
    118 voxels of the 5^3 cube; the chessboard rings are the 26 neighbours and the 98 beyond. Both cover the margin."""
    from lesiongen.models.inpainter import InpainterConfig, class_edges, margin_rings
    from lesiongen.utilities.errors import LesiongenError

    lesion = np.zeros((11, 11, 11), bool)
    lesion[5, 5, 5] = True
    brain = np.ones_like(lesion)
    (near, rest), surroundings = margin_rings(lesion, brain, 2, rings="euclidean")
    (ring1, ring2), same = margin_rings(lesion, brain, 2)
    offsets = np.argwhere(near) - 5
    assert near.sum() == 6 and (np.abs(offsets).sum(axis=1) == 1).all()
    assert (rest.sum(), ring1.sum(), ring2.sum()) == (118, 26, 98)
    np.testing.assert_array_equal(near | rest, ring1 | ring2)
    np.testing.assert_array_equal(surroundings, same)
    image = np.zeros((1, 11, 11, 11))
    image[0, near] = 0.6  # a halo on the face neighbours only
    np.testing.assert_allclose(class_edges(image, lesion, brain, 2, rings="euclidean")[:, 0], [0.6, 0.0])
    np.testing.assert_allclose(class_edges(image, lesion, brain, 2)[:, 0], [0.6 * 6 / 26, 0.0])  # averaged away
    with pytest.raises(LesiongenError, match="edge_rings 'manhattan'"):
        InpainterConfig(edge_rings="manhattan")


def test_edge_calibration_scales_the_painted_change_to_the_target_step():
    from lesiongen.models.inpainter import calibrate_edges, class_edges, margin_rings

    rng = np.random.default_rng(3)
    _, lesion, brain = _ring_case()
    before = rng.normal(size=(2, 20, 20, 20))
    (ring1, ring2), _ = margin_rings(lesion, brain, 2)
    painted = before.copy()
    painted[:, lesion] += 3.0
    painted[:, ring1] += 1.0 + rng.random((2, int(ring1.sum())))  # a spill, strongest where the noise is
    painted[:, ring2] += 0.2
    start = class_edges(painted, lesion, brain, 2)
    was = class_edges(before, lesion, brain, 2)
    target = np.array([[was[0, 0] + 0.25, np.nan], [start[1, 0] + 1.0, was[1, 1] - 5.0]])
    out = calibrate_edges(painted, before, lesion, brain, target)
    scale = 0.25 / (painted[0][ring1] - before[0][ring1]).mean()  # by hand: the ring's mean change to 0.25
    np.testing.assert_allclose(out[0][ring1] - before[0][ring1], scale * (painted[0][ring1] - before[0][ring1]))
    assert class_edges(out, lesion, brain, 2)[0, 0] == pytest.approx(target[0, 0], abs=1e-9)
    np.testing.assert_array_equal(out[1][ring1], painted[1][ring1])  # NaN target: as painted
    np.testing.assert_array_equal(out[0][ring2], painted[0][ring2])  # target past what was painted: as painted
    np.testing.assert_allclose(out[1][ring2], before[1][ring2])  # target below the tissue: back to it
    rest = ~(ring1 | ring2)
    np.testing.assert_array_equal(out[:, rest], painted[:, rest])  # lesion, surroundings, beyond: untouched


def test_edge_calibration_amplifies_a_ring_painted_short_up_to_its_max_gain():
    from lesiongen.models.inpainter import calibrate_edges, class_edges, margin_rings

    rng = np.random.default_rng(4)
    _, lesion, brain = _ring_case()
    before = rng.normal(size=(1, 20, 20, 20))
    (ring1, ring2), _ = margin_rings(lesion, brain, 2)
    painted = before.copy()
    painted[:, lesion] += 3.0
    painted[:, ring1] += 0.1 + 0.2 * rng.random((1, int(ring1.sum())))  # a halo painted short of the target
    change = painted[0][ring1] - before[0][ring1]
    was = class_edges(before, lesion, brain, 2)
    target = np.array([[was[0, 0] + 2.5 * change.mean()], [np.nan]])  # 2.5 times the painted ring
    exact = calibrate_edges(painted, before, lesion, brain, target, max_gain=3.0)
    np.testing.assert_allclose(exact[0][ring1] - before[0][ring1], 2.5 * change)  # its shape kept, scaled
    assert class_edges(exact, lesion, brain, 2)[0, 0] == pytest.approx(target[0, 0], abs=1e-9)
    capped = calibrate_edges(painted, before, lesion, brain, target, max_gain=1.5)
    np.testing.assert_allclose(capped[0][ring1] - before[0][ring1], 1.5 * change)
    np.testing.assert_array_equal(calibrate_edges(painted, before, lesion, brain, target), painted)  # default 1
    np.testing.assert_array_equal(exact[0][ring2], painted[0][ring2])  # NaN target
    with pytest.raises(LesiongenError, match="edge_max_gain must be >= 1"):
        InpainterConfig(edge_max_gain=0.5)


def test_insert_mode_amplifies_a_ring_painted_short_by_the_models_edge_max_gain(plans):
    """The model's ``edge_max_gain`` reaches the edge calibration: with a target far beyond what the network
    painted, the first ring's change is the painted one times the gain; the second ring (null target) as painted."""
    from lesiongen.models.inpainter import margin_rings

    n_channels = plans.num_channels
    banks = {"contrast_bank": {"1": [[1.0] * n_channels]}, "step_bank": {"1": [[1.5] * n_channels]},
             "edge_bank": {"1": [[[50.0] * n_channels, [None] * n_channels]]}}

    def inserted(gain: float) -> np.ndarray:
        model = Inpainter(plans, InpainterConfig(**banks, edge_max_gain=gain), "cpu")
        model.networks["denoiser"] = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start,
                                                  model.n_channels)
        return model.inpaint(images, mask, "insert", seed=[0, 1], schedule=InpaintSchedule(guidance_scale=1.0))

    patch = Inpainter(plans, InpainterConfig(), "cpu").patch_size
    images = (0.1 * np.random.default_rng(2).normal(size=(2, n_channels, *patch))).astype(np.float32)
    mask = np.zeros((2, *patch), np.uint8)
    mask[:, 5:10, 6:10, 6:11] = 1
    (ring1, ring2), _ = margin_rings(mask[0] > 0, np.ones(patch, bool), 2)
    painted, amplified = inserted(1.0), inserted(2.5)
    change = painted[:, :, ring1] - images[:, :, ring1]
    assert change.mean() > 0.1  # the flag network painted the ring, short of the target
    np.testing.assert_allclose(amplified[:, :, ring1] - images[:, :, ring1], 2.5 * change, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(amplified[:, :, ring2], painted[:, :, ring2])


def test_inserted_lesions_take_the_step_of_the_training_lesion_their_condition_came_from(plans):
    """Condition and calibration target are drawn as a pair: each inserted lesion gets the contrast condition of one
    training lesion and that same lesion's intensity step."""
    from lesiongen.models.inpainter import class_step

    bank = {"1": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}
    steps = {"1": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]}
    bank = {k: [v[:plans.num_channels] for v in rows] for k, rows in bank.items()}
    steps = {k: [v[:plans.num_channels] for v in rows] for k, rows in steps.items()}
    model = Inpainter(plans, InpainterConfig(contrast_bank=bank, step_bank=steps), "cpu")
    model.networks["denoiser"] = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start, model.n_channels)
    patch = model.patch_size
    images = np.random.default_rng(1).normal(size=(4, model.n_channels, *patch)).astype(np.float32)
    mask = np.zeros((4, *patch), np.uint8)
    mask[:, 5:10, 6:10, 6:11] = 1
    seeds = [3, 4, 5, 6]
    out = model.inpaint(images, mask, "insert", seed=seeds, schedule=InpaintSchedule(guidance_scale=1.0))
    for i, seed in enumerate(seeds):
        contrast, _, _ = model.draw_condition(mask[i:i + 1], np.random.default_rng(seed))
        j = [row[0] for row in bank["1"]].index(float(contrast[0, 0, 0]))
        assert class_step(out[i], mask[i] > 0, np.ones(patch, bool)) == pytest.approx(steps["1"][j], abs=1e-4)
    contrast_model = Inpainter(plans, InpainterConfig(contrast_bank=bank, step_bank=steps,
                                                      calibration_target="contrast"), "cpu")
    assert not contrast_model.calibrates_steps(False) and model.calibrates_steps(False)
    assert not model.calibrates_steps(True)  # contrasts set by the caller: their own target
    with pytest.raises(LesiongenError, match="calibration_target 'mean'"):
        InpainterConfig(calibration_target="mean")


@pytest.mark.parametrize("rings", ["chessboard", "euclidean"])
def test_inserted_lesions_take_the_edges_of_their_training_lesion_and_their_label_follows_the_mask(plans, rings):
    """A network that paints every voxel of the edit region bright spills past the mask; insert mode brings the
    margin's rings to the drawn training lesion's edge steps, so with sharp real edges the label that follows what
    was painted (what synthetic cases get) is the mask itself, where without the edges it grows."""
    from lesiongen.diffusion.inpainting import painted_lesion
    from lesiongen.models.inpainter import class_edges, class_step, margin_rings

    n_channels = plans.num_channels
    bank = {"1": [[1.0] * n_channels, [2.0] * n_channels]}
    steps = {"1": [[1.5] * n_channels, [2.5] * n_channels]}
    edges = {"1": [[[0.4] * n_channels, [0.2] * n_channels], [[0.0] * n_channels, [None] * n_channels]]}
    model = Inpainter(plans, InpainterConfig(contrast_bank=bank, step_bank=steps, edge_bank=edges, edge_rings=rings),
                      "cpu")
    model.networks["denoiser"] = _FlagNetwork(model.input_layout.offsets()["unconditioned"].start, model.n_channels)
    patch = model.patch_size
    images = (0.1 * np.random.default_rng(2).normal(size=(6, model.n_channels, *patch))).astype(np.float32)
    mask = np.zeros((6, *patch), np.uint8)
    mask[:, 5:10, 6:10, 6:11] = 1
    seeds = list(range(6))
    schedule = InpaintSchedule(guidance_scale=1.0)
    out = model.inpaint(images, mask, "insert", seed=seeds, schedule=schedule)
    as_painted = model.with_edge_calibration(False).inpaint(images, mask, "insert", seed=seeds, schedule=schedule)
    whole = np.ones(patch, bool)
    drawn = set()
    for i, seed in enumerate(seeds):
        contrast, _, _ = model.draw_condition(mask[i:i + 1], np.random.default_rng(seed))
        j = int(contrast[0, 0, 0]) - 1
        drawn.add(j)
        got = class_edges(out[i], mask[i] > 0, whole, model.margin_voxels, rings=rings)
        if j == 0:
            np.testing.assert_allclose(got, edges["1"][0], atol=1e-4)
        else:  # a sharp first ring (or the tissue's own edge where it is above 0); the second (null) as painted
            tissue = class_edges(images[i], mask[i] > 0, whole, model.margin_voxels, rings=rings)[0]
            np.testing.assert_allclose(got[0], np.maximum(tissue, 0.0), atol=1e-5)
            np.testing.assert_allclose(got[1], class_edges(as_painted[i], mask[i] > 0, whole, 2, rings=rings)[1],
                                       atol=1e-5)
            label = painted_lesion(images[i], out[i], mask[i], model.margin_voxels)
            if rings == "chessboard":
                np.testing.assert_array_equal(label, mask[i])
            else:  # the face neighbours are sharp; the rest of the margin (null target) keeps what was painted
                (near, _), _ = margin_rings(mask[i] > 0, whole, model.margin_voxels, rings=rings)
                assert (label[mask[i] > 0] == 1).all() and not (label[near] > 0).any()
            assert (painted_lesion(images[i], as_painted[i], mask[i], model.margin_voxels) > 0).sum() > \
                1.3 * (mask[i] > 0).sum()
        assert class_step(out[i], mask[i] > 0, whole) == pytest.approx(steps["1"][j], abs=1e-4)
    assert drawn == {0, 1}
    assert model.calibrates_edges and not model.with_edge_calibration(False).calibrates_edges


def test_settings_parse_in_the_type_of_the_setting():
    from lesiongen.training.base import parse_setting_value
    from lesiongen.utilities.errors import LesiongenError

    assert parse_setting_value("false", True, "mirror_validation") is False
    assert parse_setting_value("YES", False, "validate") is True
    assert parse_setting_value("4", 16, "sampling_steps") == 4 and isinstance(parse_setting_value("4", 16, "x"), int)
    assert parse_setting_value("5e-5", 1e-4, "learning_rate") == 5e-5
    with pytest.raises(LesiongenError, match="expected true or false"):
        parse_setting_value("maybe", True, "validate")


# ------------------------------------------------------------------------------------------- mask plausibility
def test_implausible_masks_are_named(plans):
    import dataclasses

    from lesiongen.inference.synthesis import implausible_mask

    base = plans.sphere_priors["1"]
    spacing = [1.0, 1.0, 1.0]

    def prior(min_volume=1.0, max_volume=1e9, max_radius=1e9):
        return dataclasses.replace(base, volume_mm3=dataclasses.replace(base.volume_mm3, minimum=min_volume,
                                                                        maximum=max_volume),
                                   radius_mm=dataclasses.replace(base.radius_mm, maximum=max_radius))

    patch = (16, 16, 16)
    blob = np.zeros(patch, np.uint8)
    blob[6:9, 6:9, 6:9] = 1  # 27 mm3, radius sqrt(3) mm
    assert implausible_mask(blob, prior(), spacing) is None
    assert implausible_mask(np.zeros(patch, np.uint8), prior(), spacing) == "empty"
    assert implausible_mask(blob, prior(max_volume=10.0), spacing) == "volume 27 mm3 outside 0-20 mm3"
    assert implausible_mask(blob, prior(min_volume=100.0), spacing) == "volume 27 mm3 outside 50-2000000000 mm3"
    assert implausible_mask(np.ones(patch, np.uint8), prior(), spacing) == "fills 100% of its patch"
    frame = np.zeros(patch, np.uint8)
    frame[0, :, 0] = frame[-1, :, -1] = frame[:, 0, 0] = frame[:, -1, -1] = 1  # thin, touching all six faces
    assert implausible_mask(frame, prior(), spacing) == "touches every face of its patch"
    far = np.zeros(patch, np.uint8)
    far[2, 8, 8] = far[13, 8, 8] = 1  # radius 5.5 mm
    assert implausible_mask(far, prior(max_radius=3.0), spacing) == "radius 5.5 mm above 4.5 mm"
    # at 2 mm voxels the same two voxels lie 22 mm apart: the radius is judged in mm
    assert implausible_mask(far, prior(max_radius=6.0), [2.0, 2.0, 2.0]) == "radius 11.0 mm above 9.0 mm"


TWO_STEPS = InpaintSchedule(num_inference_steps=2, n_jumps=0, guidance_scale=1.0)


def _flag_inpainter_and_scan(plans) -> tuple[Inpainter, np.ndarray, np.ndarray]:
    """An inpainter whose network is :class:`_FlagNetwork` (it paints the edit region), and a random model-space scan
    of two lesion patches a side, all brain."""
    inpainter = Inpainter(plans, InpainterConfig(calibrate_contrast=False), "cpu")
    inpainter.networks["denoiser"] = _FlagNetwork(inpainter.input_layout.offsets()["unconditioned"].start,
                                                   inpainter.n_channels)
    shape = [2 * s for s in plans.lesion_patch_size]
    images = np.random.default_rng(0).normal(size=(plans.num_channels, *shape)).astype(np.float32)
    return inpainter, images, np.ones(shape, bool)


@pytest.mark.parametrize("recorded", [True, False])
def test_inserted_lesions_and_their_margins_stay_off_tissue_real_lesions_avoid(plans, recorded):
    """Masks drawn across a ventricle (CSF stripes every fourth x column): with the lesions' tissue recorded (CSF
    under 1 % of their voxels), the label never covers CSF and the CSF voxels of the scan stay exactly as they were,
    margin included; plans without it paint and label over them as before."""
    import dataclasses

    from lesiongen.inference.synthesis import synthesize_model_space
    from lesiongen.models.mask_generators import MaskGeneratorConfig, SphereMaskGenerator
    from lesiongen.planning.plans import Categorical

    class BlockMasks(SphereMaskGenerator):
        def generate(self, spheres, conditioning, rng):
            mask = np.zeros((len(spheres), *self.patch_size), np.uint8)
            centre = np.asarray(self.patch_size) // 2
            mask[(slice(None), *(slice(c - 2, c + 3) for c in centre))] = 1  # 5 x 5 x 5 across a CSF stripe
            return mask

    prior = dataclasses.replace(plans.sphere_priors["1"], tissue_probability=Categorical({"2": 1.0}),
                                neighbourhood=None, lesion_tissue={"2": 0.995, "3": 0.005} if recorded else None)
    generator = BlockMasks(plans, MaskGeneratorConfig(priors={"1": prior}))
    inpainter, images, brain = _flag_inpainter_and_scan(plans)
    shape = list(brain.shape)
    tissue = np.full(shape, 2, np.uint8)
    tissue[:, :, ::4] = 3
    csf = tissue == 3
    edit = synthesize_model_space(images, brain, tissue, plans, inpainter, generator, n_lesions=2, seed=1,
                                  schedule=TWO_STEPS)
    assert edit.label.any() and edit.changed.any()
    if recorded:
        assert not (edit.label > 0)[csf].any()
        np.testing.assert_array_equal(edit.images[:, csf], images[:, csf])
    else:
        assert (edit.label > 0)[csf].any() and not np.array_equal(edit.images[:, csf], images[:, csf])
    # a given mask (realmask's real shapes) stays as given; with the priors passed, the margin keeps off CSF too
    given = generator.generate([None], None, None)[0]
    centre = np.asarray(shape) // 2
    edit = synthesize_model_space(images, brain, tissue, plans, inpainter, placements=[(1, centre, given)], seed=1,
                                  schedule=TWO_STEPS,
                                  lesion_priors={"1": prior})
    beside = csf & (edit.label == 0)
    assert (edit.label > 0).sum() == (given > 0).sum() and edit.changed[beside].any()
    assert np.array_equal(edit.images[:, beside], images[:, beside]) == recorded


def test_drawn_lesions_are_placed_where_the_placement_weights_are(plans):
    """Lesions of a class that lies only on tissue class 2 (the first half of x here): every drawn centre falls
    there, none on the other half's tissue 1."""
    import dataclasses

    from lesiongen.inference.synthesis import synthesize_model_space
    from lesiongen.models.mask_generators import MaskGeneratorConfig, SphereMaskGenerator
    from lesiongen.planning.plans import Categorical

    prior = dataclasses.replace(plans.sphere_priors["1"], tissue_probability=Categorical({"2": 1.0}),
                                neighbourhood=None, lesion_tissue=None)
    generator = SphereMaskGenerator(plans, MaskGeneratorConfig(priors={"1": prior}))
    inpainter, images, brain = _flag_inpainter_and_scan(plans)
    tissue = np.ones(brain.shape, np.uint8)
    tissue[:, :, : brain.shape[2] // 2] = 2
    edit = synthesize_model_space(images, brain, tissue, plans, inpainter, generator, n_lesions=6, seed=3,
                                  schedule=TWO_STEPS)
    centres = [record["centre_model_voxel"] for record in edit.lesions]
    assert len(centres) == 6 and all(tissue[tuple(c)] == 2 for c in centres)


def test_synthesis_replaces_implausible_masks_by_the_sphere_prior(plans):
    """A generator that always fills its patch: every lesion takes the sphere prior's ellipsoid, and says so."""
    from lesiongen.inference.synthesis import SPHERE_FALLBACK, synthesize_model_space
    from lesiongen.models.mask_generators import MaskGeneratorConfig, SphereMaskGenerator

    class PatchFiller(SphereMaskGenerator):
        def generate(self, spheres, conditioning, rng):
            return np.ones((len(spheres), *self.patch_size), np.uint8)

    generator = PatchFiller(plans, MaskGeneratorConfig(priors=plans.sphere_priors))
    inpainter, images, brain = _flag_inpainter_and_scan(plans)
    edit = synthesize_model_space(images, brain, None, plans, inpainter, generator, n_lesions=2, seed=1,
                                  schedule=TWO_STEPS)
    assert len(edit.lesions) == 2 and all(r["mask_source"] == SPHERE_FALLBACK for r in edit.lesions)
    assert all(len(r["rejected_masks"]) == 3 for r in edit.lesions)
    assert 0 < edit.label.sum() < 0.5 * edit.label.size


def test_patches_overlap_exactly_when_their_boxes_share_a_voxel():
    """16-voxel patches span centre - 8 .. centre + 7: centres 15 apart share a voxel, 16 apart do not."""
    from lesiongen.inference.synthesis import patches_overlap

    assert patches_overlap((0, 0, 0), (15, 0, 0), (16, 16, 16))
    assert patches_overlap((20, 5, 5), (5, 19, 20), (16, 16, 16))
    assert not patches_overlap((0, 0, 0), (16, 0, 0), (16, 16, 16))
    assert not patches_overlap((20, 5, 5), (5, 19, 21), (16, 16, 16))
