"""The 2d segmentation configuration end to end on a tiny thick-slice demo dataset: planned next to 3d, trained
with ``lesiongen_train ... seg 0 -c 2d``, predicted by ``lesiongen_predict -m seg`` from the model folder alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import write_plans_variant
from lesiongen.cli import plan_and_preprocess
from lesiongen.cli import predict as predict_cli
from lesiongen.cli import train as train_cli
from lesiongen.demo.phantom import ANISOTROPIC, DemoConfig, write_demo_dataset
from lesiongen.io.images import read_image
from lesiongen.models.checkpoint import load_checkpoint
from lesiongen.planning.planner import target_spacing
from lesiongen.preprocessing.dataset import open_preprocessed

# 5 mm slices, 1.5 mm in-plane, few voxels: the thick-slice demo in miniature
THICK = DemoConfig(dataset_id=502, dataset_name="DemoStroke", n_lesion_cases=4, n_healthy=0, n_test=1,
                   shape=(16, 72, 64), spacing=(5.0, 1.5, 1.5), lesions_per_case=(1, 2), lesion_radius_mm=(4.0, 7.0),
                   seed=3)
THICK_NAME = THICK.folder_name
MODEL = "seg_none_2d__lesiongenPlans"


def train(*args: str) -> int:
    return train_cli.main([str(THICK.dataset_id), *args, "-device", "cpu"])


@pytest.fixture(scope="module")
def thick(tmp_path_factory):
    """The tiny thick-slice dataset planned and preprocessed, with test-sized seg networks; env set."""
    root = tmp_path_factory.mktemp("thick")
    folders = {name: root / name for name in ("raw", "preprocessed", "results")}
    for folder in folders.values():
        folder.mkdir()
    write_demo_dataset(folders["raw"], THICK)
    with pytest.MonkeyPatch.context() as patch:
        for name, folder in folders.items():
            patch.setenv(f"lesiongen_{name}", str(folder))
        assert plan_and_preprocess.main_plan_and_preprocess(["-d", str(THICK.dataset_id), "-np", "1"]) == 0
        plans_file = folders["preprocessed"] / THICK_NAME / "lesiongenPlans.json"
        plans = json.loads(plans_file.read_text())
        for stage in ("segmentation", "segmentation_2d"):
            kwargs = plans["stages"][stage]["networks"]["unet"]["kwargs"]
            kwargs["features_per_stage"] = [4 * 2 ** min(s, 2) for s in range(kwargs["n_stages"])]
        plans["stages"]["segmentation_2d"]["batch_size"] = 4
        plans_file.write_text(json.dumps(plans))
        yield folders


def test_the_anisotropic_demo_preset_is_anisotropic_to_the_planner():
    # the full-size --anisotropic dataset: brain-cropped to about 80 % of the field of view per axis
    cropped = [int(0.8 * s) for s in ANISOTROPIC["shape"]]
    _, anisotropic, _ = target_spacing([list(ANISOTROPIC["spacing"])] * 12, [cropped] * 12)
    assert anisotropic


def test_planning_thick_slices_adds_2d_next_to_3d(thick):
    plans = open_preprocessed(THICK.dataset_id).plans
    assert plans.anisotropic and {"segmentation", "segmentation_2d"} <= set(plans.stages)
    two = plans.stages["segmentation_2d"]
    assert two.slice_axis == 0 and two.networks["unet"].kwargs["conv_op"] == "Conv2d"
    # the in-plane patch covers the median in-plane shape (nnU-Net's 2d: whole slices when they fit)
    assert all(p >= m for p, m in zip(two.patch_size, plans.median_shape_at_target_spacing[1:]))


def test_seg_2d_trains_and_predicts_from_its_model_folder(thick, tmp_path):
    assert train("seg", "0", "-c", "2d", "--steps", "2", "--set", "mirror_validation=false") == 0
    folder = thick["results"] / THICK_NAME / MODEL
    state = load_checkpoint(folder / "fold_0" / "checkpoint_final.pt")
    assert state["model"]["config"]["configuration"] == "2d"
    assert state["networks"]["unet"]["encoder.stages.0.0.convs.0.conv.weight"].ndim == 4  # (out, in, kh, kw)
    summary = json.loads((folder / "fold_0" / "summary.json").read_text())
    assert summary["per_case"]  # the validation cases were predicted slice-wise and scored

    # the model folder alone: copied away from the results, preprocessed and raw data
    elsewhere = tmp_path / "installed" / MODEL
    shutil.copytree(folder, elsewhere)
    images = thick["raw"] / THICK_NAME / "imagesTs"
    out = tmp_path / "out"
    assert predict_cli.main(["-model", str(elsewhere), "-device", "cpu", "-i", str(images), "-o", str(out),
                             "-m", "seg", "--disable_tta"]) == 0
    label, geometry = read_image(out / "test_000.nii.gz")
    _, scan_geometry = read_image(images / "test_000_0000.nii.gz")
    assert geometry.matches(scan_geometry) is None and label.shape == scan_geometry.shape == THICK.shape
    assert set(np.unique(label)) <= {0, 1}

    # by dataset and -c, the same model and the same answer
    again = tmp_path / "again"
    assert predict_cli.main(["-d", str(THICK.dataset_id), "-c", "2d", "-device", "cpu", "-i", str(images),
                             "-o", str(again), "-m", "seg", "--disable_tta"]) == 0
    np.testing.assert_array_equal(read_image(again / "test_000.nii.gz")[0], label)


def test_predict_refuses_another_configuration_than_the_model_folders(thick, tmp_path, capsys):
    folder = thick["results"] / THICK_NAME / MODEL
    if not folder.is_dir():
        assert train("seg", "0", "-c", "2d", "--steps", "1", "--set", "validate=false") == 0
    images = thick["raw"] / THICK_NAME / "imagesTs"
    assert predict_cli.main(["-model", str(folder), "-c", "3d", "-device", "cpu", "-i", str(images),
                             "-o", str(tmp_path), "-m", "seg"]) == 1
    assert "a 2d segmentation model folder, not 3d" in capsys.readouterr().err


def test_2d_of_plans_without_it_is_one_line(thick, capsys):
    write_plans_variant(thick["preprocessed"] / THICK_NAME, "lesiongenPlansNo2d",
                        lambda plans: plans["stages"].pop("segmentation_2d"))
    assert train("seg", "0", "-c", "2d", "-p", "lesiongenPlansNo2d", "--steps", "1") == 1
    err = capsys.readouterr().err
    assert "have no 2d segmentation configuration" in err and len(err.strip().splitlines()) == 1
    assert train("seg", "0", "-c", "4d", "--steps", "1") == 1
    assert "unknown segmentation configuration '4d'" in capsys.readouterr().err
    assert train("spheremask", "0", "-c", "2d") == 1
    assert "apply to the seg trainer only" in capsys.readouterr().err


def test_weighted_loss_and_pretrained_weights_through_the_cli(thick, tmp_path, monkeypatch, capsys):
    """A 2d model initialised from a 1-channel, 3-class 2d checkpoint of "another dataset", trained with the
    weighted loss: what did not fit is recorded, the loss round-trips through the training summary."""
    from lesiongen.models.checkpoint import FORMAT_VERSION, save_checkpoint
    from lesiongen.models.networks import build_network

    plan = open_preprocessed(THICK.dataset_id).plans.stages["segmentation_2d"].networks["unet"]
    plan.kwargs.update(input_channels=1, num_classes=3)
    torch.manual_seed(0)
    source = build_network(plan)
    pretrained = tmp_path / "other_dataset.pt"
    save_checkpoint({"format": FORMAT_VERSION, "networks": {"unet": source.state_dict()}}, pretrained)
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "results"))
    assert train("seg", "0", "-c", "2d", "--steps", "1", "--loss", "weighted", "-pretrained_weights",
                 str(pretrained), "--set", "validate=false") == 0
    fold = tmp_path / "results" / THICK_NAME / MODEL / "fold_0"
    summary = json.loads((fold / "training_summary.json").read_text())
    assert summary["settings"]["loss"] == "weighted"
    skipped = summary["pretrained_weights"]["skipped"]["unet"]
    assert "encoder.stages.0.0.convs.0.conv.weight" in skipped and "decoder.seg_layers.0.weight" in skipped
    assert "encoder.stages.1.0.convs.0.conv.weight" not in skipped
    assert summary["provenance"]["models_used"]["pretrained_weights"]["checkpoint"] == str(pretrained)
    log = (fold / "training_log.txt").read_text()
    assert "skipped" in log and "decoder.seg_layers.0.weight" in log
    assert "balanced_ce" in log and "generalized_dice" in log  # the weighted terms were what was trained
    assert train("seg", "0", "-c", "2d", "--steps", "1", "--loss", "magic") == 1
    assert "--loss magic: unknown segmentation loss; choose one of dice_ce, weighted" in capsys.readouterr().err


def test_2d_batches_are_slices_and_keep_the_foreground_oversampling(thick):
    from lesiongen.training.seg_data import FOREGROUND_OVERSAMPLING, SegCase, SegPatchLoader, augmentation

    dataset = open_preprocessed(THICK.dataset_id)
    stage = dataset.plans.stages["segmentation_2d"]
    cases = [SegCase(c, dataset.data_folder / "training" / c) for c in dataset.case_ids()]
    loader = SegPatchLoader(cases, [], stage.patch_size, 6, 0.0, seed=1, slice_axis=stage.slice_axis)
    forced = range(round(6 * (1 - FOREGROUND_OVERSAMPLING)), 6)
    for _ in range(3):
        batch = loader.generate_train_batch()
        assert batch["data"].shape == (6, 2, *stage.patch_size) and batch["seg"].shape == (6, 1, *stage.patch_size)
        centre = tuple(p // 2 for p in stage.patch_size)
        for k in forced:  # centred on a lesion voxel of the slice
            assert batch["seg"][k, 0][centre] == 1
    augmented = augmentation(stage.patch_size, True)(**batch)
    assert augmented["data"].shape == batch["data"].shape
