"""The inpaint trainer, its RePaint sampler and the exact paste, on CPU with a tiny dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_NAME, count_inpaint_calls, trained_model
from lesiongen.cli import evaluate_inpainting as evaluate_cli
from lesiongen.cli import train as train_cli
from lesiongen.diffusion.inpainting import (InpaintSchedule, denoising_steps, edit_region, feather_blend,
                                           painted_lesion, state_sequence)
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.lesion_patches import load_lesion_patches, shifted
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


def test_training_wrote_the_edge_steps_of_its_training_lesions(inpainter):
    """Entry by entry with the contrast bank: each training patch's edge steps (class_edges), null where undefined."""
    from lesiongen.models.inpainter import class_edges

    model, _, _ = inpainter
    train = load_lesion_patches(open_preprocessed(TINY.dataset_id).lesion_patch_folder,
                                model.provenance["train_cases"])
    present = [i for i in range(len(train)) if (train.masks[i] == 1).any()]
    assert model.config.edge_rings == "chessboard"  # the trainer's default (euclidean_edge_rings off)
    expected = [class_edges(train.images[i], train.masks[i] == 1, train.brain[i], model.margin_voxels,
                            train.masks[i] > 1, rings="chessboard") for i in present]
    stored = np.array(model.config.edge_bank["1"], dtype=np.float64)  # null -> NaN
    assert stored.shape == (len(present), model.margin_voxels, model.n_channels) == np.shape(expected)
    np.testing.assert_allclose(stored, expected, atol=1e-6)
    assert len(model.config.contrast_bank["1"]) == len(present) and model.calibrates_edges


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


def test_fake_masks_lie_on_the_tissue_lesions_may_cover_and_the_rest_is_kept():
    """The held-out insertions follow synthesis's rule: a fake mask lies wholly on the tissue its class's lesions
    cover, and the other tissue of the patch is what an insertion leaves as it was."""
    from lesiongen.evaluation.evaluate_inpainting import moved_masks

    masks = np.zeros((6, 12, 12, 12), np.uint8)
    masks[:, 5:7, 5:7, 5:7] = 1
    brain = np.ones(masks.shape, bool)
    tissue = np.full(masks.shape, 2, np.uint8)
    tissue[:, :, :, ::3] = 3  # CSF stripes: a 2-voxel wide shape fits between two of them
    fake, ok, kept = moved_masks(masks, brain, 1, np.random.default_rng(0), tissue, {1: [1, 2]})
    assert ok.sum() >= 4
    for i in np.flatnonzero(ok):
        assert (fake[i] > 0).sum() == 8 and (tissue[i][fake[i] > 0] == 2).all()
        np.testing.assert_array_equal(kept[i], tissue[i] == 3)
    anywhere, ok_any, kept_any = moved_masks(masks, brain, 1, np.random.default_rng(0), tissue, {1: None})
    assert not kept_any.any() and any((tissue[i][anywhere[i] > 0] == 3).any() for i in np.flatnonzero(ok_any))


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
    # each inserted lesion is calibrated to one training lesion's step (the default), or its contrast (the comparison)
    def from_bank(values, bank) -> bool:
        distance = np.abs(np.asarray(values)[:, None, :] - np.asarray(bank)[None]).max(axis=2)
        return bool((distance.min(axis=1) < 1e-3).all())

    assert report["insert"]["calibration_target"] == "step"
    assert from_bank(report["insert"]["step_inserted"], model.config.step_bank["1"])
    assert from_bank(report["insert_contrast_calibrated"]["contrast_inserted"], model.config.contrast_bank["1"])
    assert not from_bank(report["insert_uncalibrated"]["step_inserted"], model.config.step_bank["1"])
    # the margin's calibration: on, compared with the margin as painted; the real lesions' own growth for reference
    assert report["insert"]["edges_calibrated"] is True
    # the step is calibrated after the margin, against a shell that lies in it: the same steps either way
    np.testing.assert_allclose(report["insert_edges_as_painted"]["step_inserted"], report["insert"]["step_inserted"],
                               atol=1e-4)
    assert report["remove_real_lesions"]["label_growth"] >= 1.0
    assert 2 in report["lesion_tissue_classes"]["1"] and 3 not in report["lesion_tissue_classes"]["1"]  # not CSF


def test_evaluate_inpainting_with_the_full_schedule_reference(inpainter, tmp_path, monkeypatch):
    """The default run (--full_patches 2) scores a few patches with the full schedule too; here a 4-step stand-in
    for it keeps the test fast (the full DDPM chain is 1,000 steps plus jumps)."""
    few = InpaintSchedule.few_step()
    monkeypatch.setattr(InpaintSchedule, "full", classmethod(lambda cls: few))
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "--full_patches", "1", "--max_patches", "4",
                              "-device", "cpu", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "inpainting_evaluation.json").read_text())
    full = report["full_schedule"]
    assert full["patches"] == 1 and full["network_evaluations_per_patch_insert"] == denoising_steps(few)
    assert set(full["insert"]) >= {"ssim_outside", "diff_map_iou", "label_growth", "speed"}


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


# -------------------------------------------------------------------------------------- lesions batched per scan
QUICK = InpaintSchedule(num_inference_steps=3, jump_length=1, n_jumps=1)  # every sampler path, few evaluations

@pytest.mark.parametrize("mode", ["insert", "remove"])
def test_per_patch_seeds_give_each_patch_what_it_gets_alone(inpainter, mode):
    model, patches, _ = inpainter
    images, masks, brain = patches.images[:3], patches.masks[:3], patches.brain[:3]
    together = model.inpaint(images, masks, mode, seed=[11, 12, 13], brain=brain, schedule=QUICK)
    for i, seed in enumerate((11, 12, 13)):
        alone = model.inpaint(images[i:i + 1], masks[i:i + 1], mode, seed=seed, brain=brain[i:i + 1],
                              schedule=QUICK)[0]
        np.testing.assert_allclose(together[i], alone, rtol=0, atol=1e-5)
    other_seed = model.inpaint(images[:1], masks[:1], mode, seed=12, brain=brain[:1], schedule=QUICK)[0]
    assert not np.allclose(together[0], other_seed)


def _preprocessed_healthy(dataset, case: str = "healthy_000"):
    from lesiongen.preprocessing.storage import load_array

    stem = dataset.data_folder / "healthy" / case
    return load_array(f"{stem}.b2nd"), load_array(f"{stem}_seg.b2nd") >= 0, load_array(f"{stem}_tissue.b2nd")


def test_lesions_with_separate_patches_share_a_batch_and_give_the_one_at_a_time_scan(inpainter, monkeypatch):
    """Lesions A and B lie a patch apart, C overlaps A: batches [A, B] then [C] (C must see A), and the scan, labels
    and records are those of inpainting one lesion at a time."""
    from lesiongen.inference.synthesis import patches_overlap, synthesize_model_space

    model, _, _ = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    images, brain, tissue = _preprocessed_healthy(dataset)
    patch = dataset.plans.lesion_patch_size
    coords = np.argwhere(brain)
    axis = int(np.argmax(coords.max(axis=0) - coords.min(axis=0)))  # the brain's longest axis
    a, b = coords[np.argmin(coords[:, axis])].copy(), coords[np.argmax(coords[:, axis])].copy()
    a[axis] += 2
    b[axis] -= 2
    c = a.copy()
    c[axis] += 3
    assert not patches_overlap(a, b, patch) and patches_overlap(a, c, patch)
    cube = np.zeros(patch, np.uint8)
    cube[tuple(slice(p // 2 - 1, p // 2 + 2) for p in patch)] = 1
    placements = [(1, a, cube), (1, b, cube), (1, c, cube)]
    calls = count_inpaint_calls(monkeypatch)
    batched = synthesize_model_space(images, brain, tissue, dataset.plans, model, placements=placements, seed=3,
                                     schedule=QUICK)
    assert calls == [2, 1]
    calls.clear()
    alone = synthesize_model_space(images, brain, tissue, dataset.plans, model, placements=placements, seed=3,
                                   schedule=QUICK, batch_lesions=False)
    assert calls == [1, 1, 1]
    np.testing.assert_allclose(batched.images, alone.images, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batched.label, alone.label)
    np.testing.assert_array_equal(batched.changed, alone.changed)
    assert batched.lesions == alone.lesions
    assert not np.allclose(batched.images, synthesize_model_space(images, brain, tissue, dataset.plans, model,
                                                                  placements=placements, seed=4,
                                                                  schedule=QUICK).images)


def test_generated_lesions_batched_equal_one_at_a_time(inpainter, monkeypatch):
    """With masks drawn by a generator the random stream is the same whether lesions are batched or not."""
    from lesiongen.inference.synthesis import synthesize_model_space

    model, _, _ = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    generator = _spheremask(dataset)
    images, brain, tissue = _preprocessed_healthy(dataset, "healthy_001")
    calls = count_inpaint_calls(monkeypatch)
    batched = synthesize_model_space(images, brain, tissue, dataset.plans, model, generator, n_lesions=4, seed=8,
                                     schedule=QUICK)
    batched_calls, calls[:] = list(calls), []
    alone = synthesize_model_space(images, brain, tissue, dataset.plans, model, generator, n_lesions=4, seed=8,
                                   schedule=QUICK, batch_lesions=False)
    assert calls == [1] * len(alone.lesions) and sum(batched_calls) == len(alone.lesions)
    np.testing.assert_allclose(batched.images, alone.images, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batched.label, alone.label)
    assert batched.lesions == alone.lesions


def test_jobs_of_several_scans_share_the_network_and_give_each_scan_alone(inpainter, monkeypatch):
    """Two scans' syntheses and a removal run as jobs together: every inpainter call holds lesions of each job still
    waiting (so fewer calls than the jobs alone), the two scans' masks are drawn in shared calls too, and each job's
    result is the one it gives alone."""
    from lesiongen.inference.synthesis import model_space_synthesis_job, removal_job, run_jobs

    model, _, folders = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    generator = _spheremask(dataset)
    scans = [_preprocessed_healthy(dataset, case) for case in ("healthy_000", "healthy_001")]
    images, geometry, _, brain = _healthy_scan(folders)
    label = np.zeros(brain.shape, np.uint8)
    centre = np.argwhere(brain).mean(axis=0).astype(int)
    label[tuple(slice(c - 1, c + 2) for c in centre)] = 1
    spacing = list(geometry.spacing_zyx)

    def jobs(batch_lesions: bool = True):
        return [*(model_space_synthesis_job(*scan, dataset.plans, model, generator, n_lesions=3, seed=5 + i,
                                            schedule=QUICK, batch_lesions=batch_lesions)
                  for i, scan in enumerate(scans)),
                removal_job(images, spacing, label, dataset.plans, model, seed=2, brain_mask=brain, schedule=QUICK)]

    mask_calls: list[int] = []
    draw = generator.sample_masks
    monkeypatch.setattr(generator, "sample_masks", lambda n, *args, **kwargs: mask_calls.append(n) or
                        draw(n, *args, **kwargs))
    alone_calls, alone_masks = [], []
    calls = count_inpaint_calls(monkeypatch)
    alone = []
    for job in jobs():
        alone += run_jobs([job])
        alone_calls.append(list(calls))
        alone_masks.append(list(mask_calls))
        calls.clear()
        mask_calls.clear()
    together = run_jobs(jobs())
    assert alone_masks[0] == alone_masks[1] == [1, 1, 1] and mask_calls[0] == 2 and sum(mask_calls) == 6
    # the syntheses' batches share calls (the removal, another mode, never joins them): fewer calls, as many patches
    assert sum(calls) == sum(map(sum, alone_calls)) and len(calls) < sum(map(len, alone_calls)), (calls, alone_calls)
    assert max(calls) > max(map(max, alone_calls))
    for mine, theirs in zip(together[:2], alone[:2]):
        np.testing.assert_allclose(mine.images, theirs.images, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(mine.label, theirs.label)
        assert mine.lesions == theirs.lesions
    np.testing.assert_allclose(together[2], alone[2], rtol=1e-5, atol=1e-5)
    assert len(together[0].lesions) == len(together[1].lesions) == 3


def test_removing_lesions_batched_equals_one_at_a_time(inpainter, monkeypatch):
    from lesiongen.inference.synthesis import remove_lesions

    model, _, folders = inpainter
    dataset = open_preprocessed(TINY.dataset_id)
    images, geometry, _, brain = _healthy_scan(folders)
    coords = np.argwhere(brain)
    axis = int(np.argmax(coords.max(axis=0) - coords.min(axis=0)))
    label = np.zeros(brain.shape, np.uint8)
    for index, inward in ((np.argmin(coords[:, axis]), 2), (np.argmax(coords[:, axis]), -2)):
        centre = coords[index].copy()
        centre[axis] += inward
        label[tuple(slice(c - 1, c + 2) for c in centre)] = 1
    spacing = list(geometry.spacing_zyx)
    calls = count_inpaint_calls(monkeypatch)
    batched = remove_lesions(images, spacing, label, dataset.plans, model, seed=2, brain_mask=brain, schedule=QUICK)
    assert calls == [2]
    calls.clear()
    alone = remove_lesions(images, spacing, label, dataset.plans, model, seed=2, brain_mask=brain, schedule=QUICK,
                           batch_lesions=False)
    assert calls == [1, 1]
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)  # back in the scan's intensity units


def test_edit_region_is_the_26_neighbourhood_dilation_repeated_margin_times():
    from scipy import ndimage

    corner = np.zeros((6, 7, 8), bool)
    corner[0, 0, 0] = True
    assert np.array_equal(np.argwhere(edit_region(corner, 2)).max(axis=0), [2, 2, 2])  # a 5-cube cut by the border
    assert edit_region(corner, 2).sum() == 27 and edit_region(corner, 0).sum() == 1
    rng = np.random.default_rng(0)
    masks = rng.random((4, 9, 11, 10)) > 0.97
    masks[1] = False
    masks[2, -1, -1, -1] = True  # on the far border
    for margin in (1, 2, 3):
        expected = np.stack([ndimage.binary_dilation(m, structure=np.ones((3, 3, 3), bool), iterations=margin)
                             for m in masks])
        assert np.array_equal(edit_region(masks, margin), expected)  # a stack: no mask grows into its neighbour
        assert np.array_equal(edit_region(masks[0], margin), expected[0])
    assert not edit_region(masks, 3)[1].any()


def test_shifted_moves_whole_voxels_and_fills_with_zero():
    from scipy import ndimage

    small = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    assert shifted(small, np.array([1, -1])).tolist() == [[0, 0, 0], [2, 3, 0]]
    rng = np.random.default_rng(1)
    shape = rng.random((8, 9, 10)) > 0.7
    for shift in ([0, 0, 0], [3, -2, 5], [-7, 8, -9], [8, 0, 0], [-20, 1, 1]):
        expected = ndimage.shift(shape.astype(np.uint8), shift, order=0, mode="constant", cval=0).astype(bool)
        assert np.array_equal(shifted(shape, np.array(shift)), expected), shift


def test_painted_lesion_labels_the_margin_voxels_painted_like_the_lesion():
    """A lesion painted +2 in FLAIR (-1 in T1) with a +1.5 rim one voxel out and +0.5 two voxels out: the rim joins
    the label (at least half of +2), the outer shell does not, nor a bright blob apart from the lesion, nor a rim
    voxel outside the brain or changed the other way."""
    shape = (15, 15, 15)
    z, y, x = np.indices(shape)
    distance = np.sqrt((z - 7) ** 2 + (y - 7) ** 2 + (x - 7) ** 2)
    mask = np.where(distance <= 2.5, 2, 0).astype(np.uint8)  # class 2
    rim = edit_region(mask > 0, 1) & ~(mask > 0)
    outer = edit_region(mask > 0, 2) & ~edit_region(mask > 0, 1)
    before = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32) * 0.01
    after = before.copy()
    after[1][mask > 0] += 2.0
    after[0][mask > 0] -= 1.0
    after[1][rim] += 1.5
    after[1][outer] += 0.5
    after[1][1, 1, 1] += 3.0  # bright, but not touching the lesion
    brain = np.ones(shape, bool)
    outside_brain = tuple(np.argwhere(rim)[0])
    brain[outside_brain] = False
    other_way = tuple(np.argwhere(rim)[-1])
    after[1][other_way] = before[1][other_way] - 1.5
    label = painted_lesion(before, after, mask, margin_voxels=3, brain=brain)
    expected = (mask > 0) | rim
    expected[outside_brain] = expected[other_way] = False
    assert np.array_equal(label > 0, expected)
    assert set(np.unique(label[label > 0])) == {2}  # the rim takes the lesion's class
    assert np.array_equal(painted_lesion(before, after, mask, margin_voxels=0), mask)
    plain = before.copy()
    plain[1][mask > 0] += 2.0  # painted exactly inside its mask: the label is the mask
    assert np.array_equal(painted_lesion(before, plain, mask, margin_voxels=3), mask)


def test_generated_lesions_are_labelled_as_painted_and_given_masks_as_given(inpainter, monkeypatch):
    """An inpainter that paints each mask +5 and a one-voxel rim around it +3: a generated lesion's label takes the
    rim (inside the brain), a given mask stays the label asked for."""
    from lesiongen.inference.synthesis import GIVEN_MASK, synthesize_model_space
    from lesiongen.models.inpainter import Inpainter

    def rim_painter(self, images, lesion_masks, mode="insert", contrast=None, seed=0, schedule=None, brain=None,
                    calibrate=None):
        inside = lesion_masks > 0
        rim = edit_region(inside, 1) & ~inside
        self.last_evaluations = 0
        return np.asarray(images, np.float32) + (5.0 * inside + 3.0 * rim)[:, None]

    model, _, _ = inpainter
    monkeypatch.setattr(Inpainter, "inpaint", rim_painter)
    dataset = open_preprocessed(TINY.dataset_id)
    images, brain, tissue = _preprocessed_healthy(dataset, "healthy_001")
    generated = synthesize_model_space(images, brain, tissue, dataset.plans, model, _spheremask(dataset),
                                       n_lesions=2, seed=3)
    assert generated.lesions and all(r["mask_source"] != GIVEN_MASK for r in generated.lesions)
    drawn = sum(r["voxels_model"] for r in generated.lesions)
    assert sum(r["voxels_labelled"] for r in generated.lesions) == (generated.label > 0).sum() > drawn
    painted = np.abs(generated.images - images).max(axis=0) > 2.0  # the masks and their rims
    np.testing.assert_array_equal(generated.label > 0, painted & brain)
    centre = np.argwhere(brain).mean(axis=0).astype(int)
    mask = np.zeros(model.patch_size, np.uint8)
    mask[tuple(slice(p // 2 - 1, p // 2 + 2) for p in model.patch_size)] = 1
    given = synthesize_model_space(images, brain, tissue, dataset.plans, model, placements=[(1, centre, mask)])
    assert [r["voxels_labelled"] for r in given.lesions] == [27] and (given.label > 0).sum() == 27
