"""End to end through the installed command on a tiny generated dataset; reruns, interruption, patches."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import TINY, TINY_NAME

from lesiongen.cli.plan_and_preprocess import main_plan_and_preprocess
from lesiongen.fingerprint.fingerprint import load_fingerprint
from lesiongen.io.dataset import CaseFiles
from lesiongen.io.images import read_image, write_image
from lesiongen.planning.plans import load_plans
from lesiongen.preprocessing import preprocessor
from lesiongen.preprocessing.patches import extract_lesion_patches
from lesiongen.preprocessing.resampling import new_shape, resample_images, resample_labels
from lesiongen.preprocessing.storage import load_array
from lesiongen.utilities.cropping import bbox_slices, brain_region, extract_patch, mask_bbox
from lesiongen.workflow import open_dataset

COMMAND = Path(sys.executable).parent / "lesiongen_plan_and_preprocess"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600)


def test_end_to_end(tiny_dataset, lesiongen_folders):
    result = _cli("-d", "501", "-np", "2", "--verify_dataset_integrity")
    assert result.returncode == 0, result.stderr
    out = lesiongen_folders["preprocessed"] / tiny_dataset.name

    fingerprint = load_fingerprint(out / "dataset_fingerprint.json")
    assert len(fingerprint.cases) == 4
    lesions = [l for c in fingerprint.cases for l in c.lesions]
    assert lesions and all(l.bounding_radius_mm >= 0 and l.volume_mm3 > 0 for l in lesions)
    assert fingerprint.has_tissue_maps

    plans = load_plans(out / "lesiongenPlans.json")
    assert plans.target_spacing == pytest.approx([3.0, 3.0, 3.0])
    assert set(plans.stages) == {"segmentation", "mask_generation", "inpainting"}
    assert plans.sphere_priors["1"].n_lesions_observed == len(lesions)

    data = out / "lesiongenPlans"
    for split, n in (("training", 4), ("healthy", 2)):
        properties = sorted((data / split).glob("*.json"))
        assert len(properties) == n
        for p in properties:
            case = json.loads(p.read_text())["case_id"]
            images = load_array(data / split / f"{case}.b2nd")
            seg = load_array(data / split / f"{case}_seg.b2nd")
            assert images.shape[0] == 2 and images.shape[1:] == seg.shape
            assert np.isfinite(images).all()
            assert set(np.unique(seg)) <= {-1, 0, 1}
            brain = seg >= 0
            # z-scored inside the brain: mean 0, std 1 per channel
            assert abs(images[0][brain].mean()) < 0.05 and abs(images[0][brain].std() - 1) < 0.05
            assert (images[:, ~brain] == 0).all()
            if split == "healthy":
                assert not (seg > 0).any()

    patch_info = [json.loads(p.read_text()) for p in (data / "lesion_patches").glob("*_patches.json")]
    n_patches = sum(p["n_patches"] for p in patch_info)
    assert n_patches + sum(p["skipped_too_large"] for p in patch_info) >= 1
    first = next(p for p in patch_info if p["n_patches"])
    masks = load_array(data / "lesion_patches" / f"{first['case_id']}_masks.b2nd")
    images = load_array(data / "lesion_patches" / f"{first['case_id']}_images.b2nd")
    assert masks.shape == (first["n_patches"], *plans.lesion_patch_size)
    assert images.shape == (first["n_patches"], 2, *plans.lesion_patch_size)
    centre = tuple(s // 2 for s in plans.lesion_patch_size)
    assert all(m[centre] > 0 or (m > 0).any() for m in masks)

    # a rerun skips everything; touching one input redoes exactly that case
    again = _cli("-d", "501", "-np", "1")
    assert again.returncode == 0 and "skipped 6 up-to-date" in again.stderr and "preprocessed 0 case" in again.stderr
    label = tiny_dataset / "labelsTr" / "demo_002.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    third = _cli("-d", "501", "-np", "1")
    assert third.returncode == 0 and "preprocessed 1 case" in third.stderr, third.stderr
    assert "extracting the fingerprint" in third.stderr  # training data changed -> fingerprint redone


def test_interrupted_run_leaves_no_partial_file_and_resumes(tiny_dataset, lesiongen_folders, monkeypatch, capsys):
    calls = {"n": 0}
    real_save = preprocessor.save_array

    def failing_save(path, array):
        calls["n"] += 1
        if calls["n"] == 8:  # second case (six arrays per lesion case)
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of a case
        real_save(path, array)

    monkeypatch.setattr(preprocessor, "save_array", failing_save)
    assert main_plan_and_preprocess(["-d", "501", "-np", "1"]) == 130
    out = lesiongen_folders["preprocessed"] / tiny_dataset.name
    assert not [p for p in out.rglob("*") if "partial" in p.name]
    done = list((out / "lesiongenPlans" / "training").glob("*.json"))
    assert len(done) == 1  # the first case finished, the interrupted one has no properties file

    monkeypatch.setattr(preprocessor, "save_array", real_save)
    assert main_plan_and_preprocess(["-d", "501", "-np", "1"]) == 0
    assert "skipped 1 up-to-date" in capsys.readouterr().err

    # the resumed output equals a clean run's
    resumed = {p.name: load_array(p) for p in (out / "lesiongenPlans" / "training").glob("*.b2nd")}
    shutil.rmtree(out)
    assert main_plan_and_preprocess(["-d", "501", "-np", "1"]) == 0
    for name, array in resumed.items():
        np.testing.assert_array_equal(load_array(out / "lesiongenPlans" / "training" / name), array)


def test_lesion_patches_zero_cut_lesions_and_skip_oversized():
    seg = np.zeros((40, 40, 40), dtype=np.int8)
    seg[18:22, 18:22, 18:22] = 1  # centre lesion, fits a 16^3 patch
    seg[24:30, 19:21, 19:21] = 1  # next to it, crossing the patch border of the first
    seg[0:2, 0:2, 0:2] = 1  # tiny lesion at the image corner: its patch is padded
    images = np.random.default_rng(0).random((2, 40, 40, 40)).astype(np.float32)
    result = extract_lesion_patches(images, seg, None, [16, 16, 16], [1])
    index = next(i for i, p in enumerate(result.patches) if p.lesion_voxels == 4**3)
    first = result.patches[index]
    assert first.cut_lesions_zeroed == 1 and first.lesions_in_patch == 1
    assert (result.masks[index] == 1).sum() == 4**3  # only the whole centre lesion remains
    corner = next(i for i, p in enumerate(result.patches) if p.lesion_voxels == 8)
    assert (result.masks[corner] == -1).any()  # padding outside the image is marked outside-brain
    assert result.images.shape == (len(result.patches), 2, 16, 16, 16)

    big = np.zeros((40, 40, 40), dtype=np.int8)
    big[5:35, 5:35, 5:35] = 1
    oversized = extract_lesion_patches(images, big, None, [16, 16, 16], [1])
    assert oversized.skipped_too_large == 1 and not oversized.patches


def test_resampling_changes_shape_and_keeps_labels():
    images = np.random.default_rng(0).random((2, 10, 40, 40)).astype(np.float32)
    resampled = resample_images(images, [4.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert resampled.shape == (2, 20, 20, 20)
    labels = np.zeros((10, 40, 40), dtype=np.int8)
    labels[4:6, 10:30, 10:30] = 1
    labels[:, :2] = -1
    out = resample_labels(labels, [4.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert out.shape == (20, 20, 20)
    assert set(np.unique(out)) == {-1, 0, 1}
    volume_before = (labels == 1).sum() * 4.0
    volume_after = (out == 1).sum() * 8.0
    assert abs(volume_after - volume_before) / volume_before < 0.15


def test_resampling_copies_slices_along_an_axis_over_three_times_coarser_and_splines_the_rest():
    """nnU-Net's rule: a scan whose coarsest axis is more than 3x the others is resampled in plane with third-order
    splines and across its slices by nearest neighbour, so (6, 1, 1) mm to (3, 1, 1) mm gives every slice twice,
    unchanged; a (2, 1, 1) mm scan is splined along every axis. Sizes round to the nearest voxel."""
    images = np.random.default_rng(0).random((1, 3, 8, 8)).astype(np.float32)
    coarse = resample_images(images, [6.0, 1.0, 1.0], [3.0, 1.0, 1.0])
    assert coarse.shape == (1, 6, 8, 8)
    assert np.allclose(coarse[0], np.repeat(images[0], 2, axis=0), atol=1e-5)
    fine = resample_images(images, [2.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    spline = ndimage.zoom(images[0], (2, 1, 1), order=3, mode="nearest", grid_mode=True)
    assert np.allclose(fine[0], spline, atol=1e-5) and not np.allclose(spline, np.repeat(images[0], 2, axis=0))
    assert new_shape((10, 10, 10), [1.0, 1.0, 1.0], [0.6, 0.6, 0.6]) == [17, 17, 17]  # 16.7 voxels


def test_cpu_preset_plans_share_the_preprocessed_data(tiny_preprocessed):
    from lesiongen.cli.plan_and_preprocess import main_plan
    from lesiongen.preprocessing.dataset import open_preprocessed

    assert main_plan(["-d", "501", "--preset", "cpu"]) == 0
    default, cpu = open_preprocessed(501), open_preprocessed(501, "lesiongenPlansCPU")
    assert cpu.plans.plans_name == "lesiongenPlansCPU" and cpu.data_folder == default.data_folder
    assert cpu.case_ids() == default.case_ids()
    seg = cpu.plans.stages["segmentation"]
    assert seg.networks["unet"].kwargs["features_per_stage"][0] == 8 and seg.total_steps == 2000
    assert cpu.plans.stages["inpainting"].batch_size <= 8
    assert cpu.plans.target_spacing == default.plans.target_spacing
    assert cpu.plans.sphere_priors == default.plans.sphere_priors


def test_plan_takes_a_lesion_margin_and_says_it_was_given(tiny_preprocessed):
    from lesiongen.cli.plan_and_preprocess import main_plan
    from lesiongen.preprocessing.dataset import open_preprocessed

    planned = open_preprocessed(501).plans
    try:
        assert main_plan(["-d", "501", "--lesion_margin_mm", "30"]) == 0
        wide = open_preprocessed(501).plans
        assert wide.lesion_patch_margin_mm == 30.0 and planned.lesion_patch_margin_mm < 30.0
        assert min(wide.lesion_patch_size) > max(planned.lesion_patch_size)  # grown to hold the wider margin
        assert any("30.0 mm given" in note for note in wide.notes)
        with pytest.raises(SystemExit):  # argparse refuses it
            main_plan(["-d", "501", "--lesion_margin_mm", "0"])
    finally:
        assert main_plan(["-d", "501"]) == 0
    assert open_preprocessed(501).plans.lesion_patch_size == planned.lesion_patch_size


def test_a_lesion_patch_is_centred_on_the_nearest_voxel_and_keeps_only_whole_lesions_of_every_class():
    """A 65-voxel lesion (centroid 19.54 / 19.49 / 19.49) gets the patch centred at (20, 19, 19); in its 16^3 patch
    a lesion of its class cut by the x border and one of class 2 cut by the y border are zeroed, a whole class-2 lesion
    inside is kept."""
    seg = np.zeros((40, 40, 40), dtype=np.int8)
    seg[18:22, 18:22, 18:22] = 1
    seg[22, 19, 19] = 1
    seg[19:21, 19:21, 25:30] = 1  # crosses the patch's far x border (the patch spans x 11..26)
    seg[19:21, 25:30, 12:14] = 2  # crosses its far y border
    seg[13:15, 13:15, 13:15] = 2  # whole, inside
    images = np.zeros((1, 40, 40, 40), np.float32)
    result = extract_lesion_patches(images, seg, None, [16, 16, 16], [1, 2])
    index = next(i for i, p in enumerate(result.patches) if p.lesion_voxels == 65)
    record, mask = result.patches[index], result.masks[index]
    assert record.centre == [20, 19, 19]
    assert (record.cut_lesions_zeroed, record.lesions_in_patch) == (2, 2)
    whole = seg.copy()
    whole[19:21, 19:21, 25:30] = whole[19:21, 25:30, 12:14] = 0
    expected = extract_patch(whole, np.array([20, 19, 19]), [16, 16, 16], fill=-1)
    np.testing.assert_array_equal(mask, expected)


def _first_training_case(folders: dict) -> tuple:
    """(raw dataset, default plans, its first training case) of the preprocessed tiny dataset."""
    dataset = open_dataset(TINY.dataset_id)
    plans = load_plans(folders["preprocessed"] / TINY_NAME / "lesiongenPlans.json")
    return dataset, plans, dataset.split("training")[0]


def test_a_lesion_voxel_outside_the_brain_mask_but_inside_its_box_stays_a_lesion(tiny_preprocessed, tmp_path):
    """Only background outside the brain becomes -1; a lesion voxel there (a tight brain mask at a cortical lesion)
    is kept, so the preprocessed label holds every lesion voxel of the (unresampled, 3 mm) raw label."""
    dataset, plans, case = _first_training_case(tiny_preprocessed)
    label, geometry = read_image(case.label)
    images = np.stack([read_image(path)[0] for path in case.images])
    brain = brain_region(images, read_image(case.brain_mask)[0] if case.brain_mask else None)
    outside = np.zeros_like(brain)
    outside[bbox_slices(mask_bbox(brain))] = True
    outside &= ~brain
    label[tuple(np.argwhere(outside)[0])] = 1
    write_image(tmp_path / "label.nii.gz", label, geometry)
    edited = dataclasses.replace(case, label=tmp_path / "label.nii.gz")
    problems, _ = preprocessor.preprocess_case(edited, "training", dataset.info, plans, tmp_path / "out",
                                               preprocessor.plans_signature(plans))
    assert not [p for p in problems if not p.is_warning]
    seg = load_array(tmp_path / "out" / "training" / f"{case.case_id}_seg.b2nd")
    assert (seg == 1).sum() == (label == 1).sum()


def test_the_plans_signature_follows_what_changes_preprocessed_files_and_nothing_else(tiny_plans):
    signature = preprocessor.plans_signature(tiny_plans)
    patch = [s + 8 for s in tiny_plans.lesion_patch_size]
    spacing = [s * 2 for s in tiny_plans.target_spacing]
    for changed in (dataclasses.replace(tiny_plans, lesion_patch_size=patch),
                    dataclasses.replace(tiny_plans, target_spacing=spacing)):
        assert preprocessor.plans_signature(changed) != signature
    assert preprocessor.plans_signature(dataclasses.replace(tiny_plans, plans_name="other")) == signature


def test_a_large_lesion_class_keeps_a_seeded_sample_of_its_voxels_from_all_of_it():
    """Over 10,000 voxels of a class: 10,000 distinct ones of that class, drawn from every slice (not the first
    10,000 in storage order), the same for the same seed."""
    seg = np.zeros((40, 20, 20), np.int8)
    seg[:, :, :15] = 1  # 12,000 voxels
    first = preprocessor._class_locations(seg, [1], np.random.default_rng(0))["class_1"]
    assert first.shape == (preprocessor.LOCATIONS_PER_CLASS, 3) and len(np.unique(first, axis=0)) == len(first)
    assert (seg[tuple(first.T)] == 1).all()
    assert set(first[:, 0]) == set(range(40))
    again = preprocessor._class_locations(seg, [1], np.random.default_rng(0))["class_1"]
    np.testing.assert_array_equal(first, again)


def test_an_edited_brain_mask_makes_its_case_stale(tmp_path):
    """The brain mask decides the crop, the normalisation and the -1 voxels: editing it must redo the case."""
    files = {name: tmp_path / f"{name}.nii.gz" for name in ("image", "label", "brain")}
    for path in files.values():
        path.write_bytes(b"0")
    case = CaseFiles("c", [files["image"]], label=files["label"], brain_mask=files["brain"])
    before = preprocessor._case_signature(case, "plans")
    files["brain"].write_bytes(b"01")
    assert preprocessor._case_signature(case, "plans") != before


def test_a_resampled_case_records_its_cropped_shape_before_resampling_and_keeps_float32_values(tiny_preprocessed,
                                                                                                 tmp_path):
    """Validation maps predictions back through the crop shape: it is the shape before resampling (here 3 mm to
    6 mm), not the stored one; the stored intensities are float32, not rounded to a coarser type."""
    dataset, plans, case = _first_training_case(tiny_preprocessed)
    coarse = dataclasses.replace(plans, target_spacing=[6.0, 6.0, 6.0])
    preprocessor.preprocess_case(case, "training", dataset.info, coarse, tmp_path, preprocessor.plans_signature(coarse))
    properties = json.loads((tmp_path / "training" / f"{case.case_id}.json").read_text())
    cropped = [stop - start for start, stop in properties["crop_bbox"]]
    images = load_array(tmp_path / "training" / f"{case.case_id}.b2nd")
    assert properties["shape_after_crop"] == cropped
    assert list(images.shape[1:]) == new_shape(cropped, [3.0, 3.0, 3.0], [6.0, 6.0, 6.0]) != cropped
    assert images.dtype == np.float32 and not np.array_equal(images, images.astype(np.float16).astype(np.float32))
