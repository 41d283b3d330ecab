"""The seg trainer with every synthetic strategy, leakage guards and the strategy comparison, on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY, TINY_NAME
from lesiongen.cli import compare as compare_cli
from lesiongen.cli import train as train_cli
from lesiongen.io.images import read_image
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import DEFAULT_SEED, plans_sha256
from lesiongen.training.synthetic import make_synthetic_cases, synthetic_folder
from lesiongen.utilities.errors import LesiongenError

STRATEGIES = ("none", "sphere", "unetmask", "diffmask", "copy_paste")


def train(*args: str) -> int:
    return train_cli.main([str(TINY.dataset_id), *args, "-device", "cpu"])


@pytest.fixture(scope="module")
def seg_runs(tiny_preprocessed):
    """Generators and inpainter briefly trained on fold 0, then a 2-step seg fold per strategy."""
    for name in ("spheremask", "unetmask", "diffmask", "inpaint"):
        assert train(name, "0", "--steps", "2") == 0
    for strategy in STRATEGIES:
        # the learned generators, trained 2 steps, may give no lesion at all: allowed here, an error by default
        allow = ["--set", "max_empty_synthetic_fraction=1"] if strategy in ("unetmask", "diffmask") else []
        assert train("seg", "0", "--steps", "2", "--synthetic", strategy, "--synthetic_ratio", "0.33", *allow) == 0
    return tiny_preprocessed


def fold_folder(folders, strategy: str):
    return folders["results"] / TINY_NAME / f"seg_{strategy}__lesiongenPlans" / "fold_0"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seg_fold_writes_validation_at_original_geometry_and_summary(seg_runs, strategy):
    folder = fold_folder(seg_runs, strategy)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["strategy"] == strategy
    dataset = open_preprocessed(TINY.dataset_id)
    training = json.loads((folder / "training_summary.json").read_text())
    assert set(summary["per_case"]) == set(training["val_cases"])
    for case in training["val_cases"]:
        prediction, geometry = read_image(folder / "validation" / f"{case}.nii.gz")
        _, reference_geometry = read_image(seg_runs["raw"] / TINY_NAME / "labelsTr" / f"{case}.nii.gz")
        assert geometry.matches(reference_geometry) is None
        assert set(np.unique(prediction)) <= {0, *dataset.plans.lesion_labels}
    assert 0 <= summary["mean"]["1"]["mean"]["dice"] <= 1
    assert training["synthetic_cases"] == (0 if strategy == "none" else 1)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
def test_synthetic_cases_are_cached_with_lesions_inside_the_brain(seg_runs, strategy):
    dataset = open_preprocessed(TINY.dataset_id)
    folder = synthetic_folder(dataset, strategy, 0)
    record = json.loads((folder / "syn_000.json").read_text())
    assert record["key"]["fold"] == "0" and record["key"]["strategy"] == strategy
    assert record["lesions"] == len(record["lesion_records"]) and record["lesion_voxels"] == int((load_array(
        folder / "syn_000_seg.b2nd") > 0).sum())
    seg = load_array(folder / "syn_000_seg.b2nd")
    images = load_array(folder / "syn_000.b2nd")
    healthy = load_array(dataset.data_folder / "healthy" / f"{record['key']['source_healthy_case']}.b2nd")
    assert images.shape == healthy.shape
    if strategy in ("sphere", "copy_paste"):  # untrained learned generators may well give no lesion yet
        assert (seg > 0).any()
        assert not np.array_equal(images, healthy)
    assert np.array_equal(images != healthy, (images != healthy) & (seg >= 0)[None])  # changes only in the brain
    before = (folder / "syn_000.b2nd").stat().st_mtime_ns
    train_cases = json.loads((fold_folder(seg_runs, strategy) / "training_summary.json").read_text())["train_cases"]
    sha = plans_sha256(dataset.plans)
    made = make_synthetic_cases(dataset, 0, strategy, 1, train_cases, sha, seed=DEFAULT_SEED, max_empty_fraction=1)
    assert made.made == 0 and (folder / "syn_000.b2nd").stat().st_mtime_ns == before  # cached, not remade
    if strategy != "copy_paste":
        assert set(made.models_used) == {"mask_generator", "inpainter"}
        assert all(len(m["sha256"]) == 64 for m in made.models_used.values())


def test_generators_of_another_split_are_refused(seg_runs):
    dataset = open_preprocessed(TINY.dataset_id)
    with pytest.raises(LesiongenError, match="other cases than this fold's training split"):
        make_synthetic_cases(dataset, 0, "diffmask", 5, ["demo_000"], plans_sha256(dataset.plans))


def test_no_validation_case_reaches_a_generator(seg_runs):
    seg_training = json.loads((fold_folder(seg_runs, "diffmask") / "training_summary.json").read_text())
    for name in ("spheremask", "unetmask", "diffmask", "inpaint"):
        summary = json.loads((seg_runs["results"] / TINY_NAME / f"{name}__lesiongenPlans" / "fold_0" /
                              "training_summary.json").read_text())
        assert not set(summary["train_cases"]) & set(seg_training["val_cases"])


def test_unknown_strategy_is_a_one_line_error(seg_runs, capsys):
    assert train("seg", "0", "--steps", "1", "--synthetic", "magic") == 1
    assert "unknown synthetic strategy 'magic'" in capsys.readouterr().err


def test_compare_lists_every_strategy_with_paired_difference(seg_runs, tmp_path):
    assert compare_cli.main(["-d", str(TINY.dataset_id), "-o", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    assert rows[0]["dice_vs_none"] == [None, None]
    assert rows[1]["dice_vs_none"][0] is not None
    table = (tmp_path / "comparison.md").read_text()
    assert all(f"| {s} |" in table for s in STRATEGIES)
    assert (tmp_path / "comparison.csv").read_text().count("\n") == len(STRATEGIES) + 1
