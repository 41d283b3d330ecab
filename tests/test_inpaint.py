"""The inpaint trainer, its RePaint sampler and the exact paste, on CPU with a tiny dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_NAME, trained_model
from lesiongen.cli import evaluate_inpainting as evaluate_cli
from lesiongen.cli import train as train_cli
from lesiongen.diffusion.inpainting import InpaintSchedule, denoising_steps, edit_region, feather_blend, state_sequence
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.lesion_patches import load_lesion_patches
from lesiongen.training.trainers.inpaint import heal_shape


@pytest.fixture(scope="module")
def inpainter(tiny_preprocessed):
    assert train_cli.main([str(TINY.dataset_id), "inpaint", "0", "-device", "cpu", "--steps", "4"]) == 0
    dataset = open_preprocessed(TINY.dataset_id)
    model = trained_model("inpaint")
    patches = load_lesion_patches(dataset.lesion_patch_folder, model.provenance["val_cases"])
    return model, patches, tiny_preprocessed


def test_state_sequence_visits_every_state_and_counts_jumps():
    seq = state_sequence(16, 2, 3)
    assert seq[0] == 0 and seq[-1] == 16
    assert set(seq) == set(range(17))
    assert all(abs(b - a) == 1 for a, b in zip(seq, seq[1:]))
    forward = sum(1 for a, b in zip(seq, seq[1:]) if b == a + 1)
    assert forward == 16 + 3 * 2
    assert state_sequence(10, 2, 0) == list(range(11))


def test_fast_schedule_stays_within_50_evaluations_full_is_ddpm():
    fast = InpaintSchedule.fast()
    assert denoising_steps(fast) * (2 if fast.guidance_scale != 1 else 1) <= 50
    assert denoising_steps(InpaintSchedule.full()) >= 1000


def test_feather_blend_keeps_far_voxels_bit_identical():
    rng = np.random.default_rng(0)
    known = rng.normal(size=(2, 12, 12, 12)).astype(np.float32)
    generated = rng.normal(size=known.shape).astype(np.float32)
    mask = np.zeros((12, 12, 12), bool)
    mask[5:7, 5:7, 5:7] = True
    out = feather_blend(known, generated, mask, 2)
    far = ~edit_region(mask, 2)
    assert np.array_equal(out[:, far], known[:, far])
    np.testing.assert_array_equal(out[:, mask], generated[:, mask])
    ring = edit_region(mask, 1) & ~mask
    assert not np.array_equal(out[:, ring], known[:, ring])  # the ramp mixes generated content in


def test_training_wrote_contrast_bank_and_network_input_has_cfg_flag(inpainter):
    model, patches, _ = inpainter
    bank = model.config.contrast_bank["1"]
    assert len(bank) > 0 and len(bank[0]) == model.n_channels
    assert model.config.schedule.prediction_type == "sample"  # the schedule travels with the model
    n = 2
    noisy = torch.zeros((n, model.n_channels, *model.patch_size))
    known = np.zeros((n, model.n_channels, *model.patch_size), np.float32)
    lesion = np.zeros((n, *model.patch_size), np.uint8)
    contrast = np.ones((n, 1, model.n_channels), np.float32)
    x = model.network_input(noisy, known, lesion, np.zeros_like(lesion, bool), contrast, np.array([False, True]))
    assert x.shape[1] == model.stage_plan.networks["diffusion"].kwargs["in_channels"]
    assert float(x[0, -1].max()) == 0.0 and float(x[1, -1].min()) == 1.0  # the "no condition" flag
    assert float(x[1, -1 - model.n_channels:-1].abs().max()) == 0.0  # its condition values are blanked


@pytest.mark.parametrize("mode", ["insert", "remove"])
def test_inpaint_changes_only_near_the_mask_and_is_seeded(inpainter, mode):
    model, patches, _ = inpainter
    images, masks, brain = patches.images[:2], patches.masks[:2], patches.brain[:2]
    out = model.inpaint(images, masks, mode, seed=5, brain=brain)
    assert out.shape == images.shape and out.dtype == np.float32
    for i in range(2):
        far = ~edit_region(masks[i] > 0, model.margin_voxels)
        assert np.array_equal(out[i][:, far], images[i][:, far])
        assert not np.array_equal(out[i][:, masks[i] > 0], images[i][:, masks[i] > 0])
    np.testing.assert_array_equal(out, model.inpaint(images, masks, mode, seed=5, brain=brain))
    assert not np.array_equal(out, model.inpaint(images, masks, mode, seed=6, brain=brain))
    assert model.last_evaluations <= 50


def test_heal_shapes_land_on_lesion_free_brain(inpainter):
    model, patches, _ = inpainter
    rng = np.random.default_rng(0)
    moved_any = False
    for i in range(len(patches)):
        lesion = patches.masks[i] > 0
        moved = heal_shape(lesion, patches.brain[i], model.margin_voxels, rng)
        if moved is None:
            continue
        moved_any = True
        assert moved.sum() == lesion.sum()
        assert not (moved & edit_region(lesion, model.margin_voxels)).any()
        assert patches.brain[i][moved].all()
    assert moved_any


def test_evaluate_inpainting_report(inpainter, tmp_path):
    from lesiongen.utilities.provenance import sha256_file

    model, _, folders = inpainter
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--full_patches", "0", "--max_patches", "16",
                              "-device", "cpu", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "inpainting_evaluation.json").read_text())
    assert report["fast_schedule"]["network_evaluations_per_patch_insert"] == 2 * denoising_steps(model.config.sampling)
    assert report["validation_cases"] == model.provenance["val_cases"] and TINY_NAME == report["dataset"]
    assert report["provenance"]["models"]["inpainter"]["sha256"] == sha256_file(model.checkpoint)
    assert (tmp_path / "inpainting_evaluation.png").stat().st_size > 1000


def test_evaluate_inpainting_with_the_few_step_sampler(inpainter, tmp_path):
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--full_patches", "0", "--max_patches", "4",
                              "--sampling", "few_step", "-device", "cpu", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "inpainting_evaluation.json").read_text())
    assert report["sampling"]["name"] == "few_step"
    assert report["sampling"]["schedule"] == dataclasses.asdict(InpaintSchedule.few_step())
    for mode in ("remove_fake_masks", "insert"):
        assert report[mode]["speed"]["network_evaluations_per_patch"] == 4.0
    assert report["insert"]["ssim_outside"] == 1.0  # far voxels stay the input with the few-step sampler too


@pytest.mark.parametrize("painter", ["identity", "mask_only"])
def test_evaluate_inpainting_scores_known_inpainters_exactly(inpainter, tmp_path, monkeypatch, painter):
    """An inpainter that changes nothing, and one that paints exactly the mask: the report's values are known."""
    from lesiongen.models.inpainter import Inpainter

    def fake(self, images, lesion_masks, mode="insert", contrast=None, seed=0, schedule=None, brain=None,
             calibrate=None):
        out = np.array(images, dtype=np.float32, copy=True)
        if painter == "mask_only":
            out += 5.0 * (lesion_masks > 0)[:, None]  # the same change on every mask voxel
        self.last_evaluations = 0
        return out

    monkeypatch.setattr(Inpainter, "inpaint", fake)
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--full_patches", "0", "-device", "cpu",
                              "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "inpainting_evaluation.json").read_text())
    if painter == "identity":
        removed = report["remove_real_lesions"]
        assert removed["mean_abs_contrast_after"] == removed["mean_abs_contrast_before"] > 0  # nothing removed
        assert report["remove_fake_masks"]["mse"] == 0.0 and report["remove_fake_masks"]["ssim"] == pytest.approx(1.0)
        assert report["remove_fake_masks"]["std_ratio"] == 1.0  # the fill is the tissue itself
        assert report["insert"]["diff_map_iou"] == 0.0  # no change anywhere
        assert report["insert"]["contrast_inserted_mean"] != report["insert"]["contrast_real_mean"]
    else:
        assert report["insert"]["diff_map_iou"] == pytest.approx(1.0)  # the change is exactly the mask
        assert report["insert"]["ssim_outside"] == pytest.approx(1.0)
        assert report["remove_fake_masks"]["mse"] > 0 and report["remove_fake_masks"]["ssim"] < 1.0


# ------------------------------------------------------------------------------------------ whole-scan synthesis
def _healthy_scan(folders, case: str = "healthy_000"):
    from lesiongen.io.images import read_channels, read_image

    raw = folders["raw"] / TINY_NAME
    files = sorted((raw / "imagesHealthy").glob(f"{case}_*"))
    images, geometry = read_channels(files)
    tissue, _ = read_image(raw / "tissueHealthy" / f"{case}.nii.gz")
    brain, _ = read_image(raw / "brainmasksHealthy" / f"{case}.nii.gz")
    return images, geometry, tissue.astype(np.uint8), brain.astype(bool)


def test_synthesize_keeps_geometry_and_far_voxels_and_is_seeded(inpainter, tmp_path):
    from scipy import ndimage

    from lesiongen.inference.synthesis import synthesize
    from lesiongen.io.images import read_channels, write_image

    model, _, folders = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    generator = _spheremask(dataset)
    images, geometry, tissue, brain = _healthy_scan(folders)
    spacing = list(geometry.spacing_zyx)
    result = synthesize(images, spacing, dataset.plans, model, generator, n_lesions=3, seed=4, tissue=tissue,
                        brain_mask=brain)
    assert result.images.shape == images.shape and result.images.dtype == images.dtype
    assert result.label.shape == images.shape[1:] and result.label.any()
    assert not result.label[~brain].any()
    near = ndimage.binary_dilation(result.label > 0, iterations=model.margin_voxels + 2)
    assert np.array_equal(result.images[:, ~near], images[:, ~near])
    assert (result.images[:, result.label > 0] != images[:, result.label > 0]).any()
    again = synthesize(images, spacing, dataset.plans, model, generator, n_lesions=3, seed=4, tissue=tissue,
                       brain_mask=brain)
    np.testing.assert_array_equal(again.images, result.images)
    np.testing.assert_array_equal(again.label, result.label)
    write_image(tmp_path / "out_0000.nii.gz", result.images[0], geometry)
    _, written = read_channels([tmp_path / "out_0000.nii.gz"])
    assert written.matches(geometry) is None


def test_synthesize_with_given_masks_and_remove_them_again(inpainter):
    from scipy import ndimage

    from lesiongen.inference.synthesis import remove_lesions, synthesize

    model, _, folders = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    images, geometry, tissue, brain = _healthy_scan(folders, "healthy_001")
    spacing = list(geometry.spacing_zyx)
    masks = np.zeros(images.shape[1:], np.uint8)
    centre = [int(c) for c in np.argwhere(brain).mean(axis=0)]
    masks[tuple(slice(c - 1, c + 2) for c in centre)] = 1
    result = synthesize(images, spacing, dataset.plans, model, masks=masks, seed=0, brain_mask=brain)
    np.testing.assert_array_equal(result.label, masks)
    healed = remove_lesions(result.images, spacing, result.label, dataset.plans, model, seed=0, brain_mask=brain)
    near = ndimage.binary_dilation(masks > 0, iterations=model.margin_voxels + 2)
    assert np.array_equal(healed[:, ~near], result.images[:, ~near])
    assert (healed[:, masks > 0] != result.images[:, masks > 0]).any()


def _spheremask(dataset):
    assert train_cli.main([str(TINY.dataset_id), "spheremask", "0", "-device", "cpu"]) == 0
    return trained_model("spheremask")
