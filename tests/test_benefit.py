"""lesiongen_benefit end to end on the tiny dataset: trainings, held-out scoring, paired report, rerun, no leak."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import TINY, TINY_NAME, table_row
from lesiongen import benefit as benefit_module
from lesiongen.benefit import BenefitOptions, check_no_leak, failed_trainings, held_out_cases
from lesiongen.evaluation.benefit_report import answer, markdown
from lesiongen.cli import benefit as benefit_cli
from lesiongen.cli import train as train_cli
from lesiongen.demo.phantom import write_demo_dataset
from lesiongen.evaluation.segmentation_metrics import REPORTED_METRICS
from lesiongen.io.dataset import load_dataset
from lesiongen.io.images import read_image
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.storage import load_array
from lesiongen.utilities.errors import LesiongenError


@pytest.fixture(scope="module")
def benefit(tiny_preprocessed, tmp_path_factory):
    out = tmp_path_factory.mktemp("benefit")
    args = ["-d", str(TINY.dataset_id), "--strategies", "none", "copy_paste", "--seeds", "0", "--ratio", "0.33",
            "--sweep", "copy_paste", "--sweep_ratios", "0.33", "0.67", "--seg_steps", "2", "--disable_tta",
            "--schedule_check", "--data_check", "-device", "cpu", "-o", str(out)]
    assert benefit_cli.main(args) == 0
    return tiny_preprocessed, out, args


def test_report_compares_each_strategy_with_real_data_only(benefit):
    folders, out, _ = benefit
    report = json.loads((out / "benefit.json").read_text())
    assert [r["strategy"] for r in report["strategies"]] == ["none", "copy_paste"]
    assert report["test_cases"] == ["test_000"] and report["test_dataset"] == TINY_NAME
    paired = report["strategies"][1]["vs_none"]
    assert set(paired) == set(REPORTED_METRICS) and paired["dice"]["n_cases"] == 1 and paired["dice"]["n_seeds"] == 1
    dice = {name: cases["test_000"]["dice"] for name, cases in report["per_case"].items()}
    assert paired["dice"]["mean"] == pytest.approx(dice["seg_copy_paste_r0.33_s0"] - dice["seg_none_s0"], abs=1e-12)
    assert [r["ratio"] for r in report["sweep"]["rows"]] == [0.33, 0.67]
    # the scores are those of the written predictions against the raw test labels
    reference, _ = read_image(folders["raw"] / TINY_NAME / "labelsTs" / "test_000.nii.gz")
    prediction, _ = read_image(out / "predictions" / "seg_none_s0" / "test_000.nii.gz")
    total = (reference == 1).sum() + (prediction == 1).sum()
    expected = 1.0 if total == 0 else 2 * ((reference == 1) & (prediction == 1)).sum() / total
    assert dice["seg_none_s0"] == pytest.approx(expected)
    voxel_mm3 = float(np.prod(read_image(folders["raw"] / TINY_NAME / "labelsTs" / "test_000.nii.gz")[1].spacing_zyx))
    signed = report["per_case"]["seg_none_s0"]["test_000"]["volume_difference_mm3"]
    assert signed == pytest.approx(((prediction == 1).sum() - (reference == 1).sum()) * voxel_mm3)
    for name in ("md", "csv", "png"):
        assert (out / f"benefit.{name}").stat().st_size > 100
    assert "| copy_paste | 0.33 |" in (out / "benefit.md").read_text()
    # the seeds warning, then the two checks' lines
    assert report["answer"] == answer(report, 1) and report["answer"][-3].startswith("- One training seed")
    assert set(report["provenance"]["models"]) >= {"seg_none_s0", "seg_copy_paste_r0.33_s0", "seg_copy_paste_r0.67_s0"}


def test_report_counts_the_lesions_of_the_real_and_the_synthetic_training_cases(benefit):
    _, out, _ = benefit
    report = json.loads((out / "benefit.json").read_text())
    dataset = open_preprocessed(str(TINY.dataset_id))
    train_cases = dataset.case_ids()
    lesions = 0
    for case in train_cases:  # an independent count: 26-connected components of the preprocessed labels
        label = load_array(dataset.data_folder / "training" / f"{case}_seg.b2nd")
        lesions += sum(ndimage.label(label == v, structure=np.ones((3, 3, 3)))[1] for v in np.unique(label[label > 0]))
    real = report["lesion_census"]["real"]
    assert real["cases"] == len(train_cases) and real["lesions_per_case"] == pytest.approx(lesions / len(train_cases))
    synthetic = report["lesion_census"]["copy_paste"]
    assert synthetic["cases"] == math.ceil(0.33 * len(train_cases)) and synthetic["lesions_per_case"] > 0
    assert "| real | " in (out / "benefit.md").read_text()
    # what the lesions border, from each case's tissue map (a synthetic case's: its healthy source scan's)
    for census in (real, synthetic):
        assert list(census["borders"]) == sorted(dataset.plans.tissue_labels, key=dataset.plans.tissue_labels.get)
        assert sum(census["borders"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(census["contrast"]) == list(dataset.plans.channel_names.values())
    assert real["borders"]["WM"] > 0.5 and "mm shells" in (out / "benefit.md").read_text()
    assert real["contrast"]["FLAIR"] > 1 > real["contrast"]["T1"]  # the demo's lesions: bright on FLAIR, dark on T1


def test_no_test_case_reaches_any_training_set(benefit):
    folders, out, _ = benefit
    report = json.loads((out / "benefit.json").read_text())
    assert "schedule_check/seg_none_s0" in report["provenance"]["models"]
    for record in report["provenance"]["models"].values():
        summary = json.loads((Path(record["checkpoint"]).parent / "training_summary.json").read_text())
        assert "test_000" not in summary["train_cases"]
    raw, cases = held_out_cases(BenefitOptions(dataset=str(TINY.dataset_id)))
    with pytest.raises(LesiongenError, match="test case"):
        check_no_leak([{"variant": "seg_none", "train_cases": ["test_000"]}], raw, cases,
                      BenefitOptions(dataset=str(TINY.dataset_id)))


def test_the_schedule_check_trains_real_only_at_half_the_steps_in_a_results_tree_of_its_own(benefit):
    from lesiongen.models.checkpoint import FINAL, load_checkpoint
    from lesiongen.models.folder import trainer_folder
    from lesiongen.planning.plans import PLANS_NAME

    folders, out, _ = benefit
    report = json.loads((out / "benefit.json").read_text())
    half_name = "schedule_check/seg_none_s0"
    half = trainer_folder(TINY_NAME, "seg_none_s0", PLANS_NAME, root=folders["results"] / "schedule_check") / \
        "fold_all" / FINAL
    full = trainer_folder(TINY_NAME, "seg_none_s0", PLANS_NAME) / "fold_all" / FINAL
    assert load_checkpoint(half)["provenance"]["steps_trained"] == 1  # its own folder: the 2-step model is kept
    assert load_checkpoint(full)["provenance"]["steps_trained"] == 2
    check = report["schedule_check"]
    assert (check["steps"], check["half_steps"]) == (2, 1)
    dice = report["per_case"]
    assert check["dice"]["mean"] == pytest.approx(dice["seg_none_s0"]["test_000"]["dice"]
                                                  - dice[half_name]["test_000"]["dice"], abs=1e-12)
    assert report["provenance"]["models"][half_name]["steps_trained"] == 1
    text = (out / "benefit.md").read_text()
    assert "Seg models trained 2 steps each" in text  # the check's models are not among the compared ones
    assert "see the schedule check below" in text
    assert "**Schedule check**: real-only at 2 steps against 1 steps" in text
    with pytest.raises(LesiongenError, match="keep none among --strategies"):
        benefit_module.run_benefit(BenefitOptions(dataset=str(TINY.dataset_id), strategies=("copy_paste",),
                                                  schedule_check=True, output=out / "refused"))
    assert not (out / "refused").exists()


def test_the_data_check_trains_real_only_on_half_the_real_cases_in_a_results_tree_of_its_own(benefit):
    from lesiongen.models.checkpoint import FINAL, load_checkpoint
    from lesiongen.models.folder import trainer_folder
    from lesiongen.planning.plans import PLANS_NAME

    folders, out, _ = benefit
    report = json.loads((out / "benefit.json").read_text())
    half_name = "data_check/seg_none_s0"
    half = load_checkpoint(trainer_folder(TINY_NAME, "seg_none_s0", PLANS_NAME, root=folders["results"] /
                                          "data_check") / "fold_all" / FINAL)["provenance"]
    full = load_checkpoint(trainer_folder(TINY_NAME, "seg_none_s0", PLANS_NAME) / "fold_all" / FINAL)["provenance"]
    assert len(full["train_cases"]) == 4 and len(half["train_cases"]) == 2
    assert set(half["train_cases"]) < set(full["train_cases"])
    assert (half["settings"]["real_case_fraction"], full["settings"]["real_case_fraction"]) == (0.5, 1.0)
    assert half["steps_trained"] == full["steps_trained"] == 2  # the same schedule: only the cases differ
    check = report["data_check"]
    assert (check["cases"], check["half_cases"]) == (4, 2)
    dice = report["per_case"]
    assert check["dice"]["mean"] == pytest.approx(dice["seg_none_s0"]["test_000"]["dice"]
                                                  - dice[half_name]["test_000"]["dice"], abs=1e-12)
    assert check["dice_half_data"] == pytest.approx(dice[half_name]["test_000"]["dice"])
    text = (out / "benefit.md").read_text()
    assert "**Data check**: real-only with all 4 real training cases against 2 of them" in text
    with pytest.raises(LesiongenError, match="keep none among --strategies"):
        benefit_module.run_benefit(BenefitOptions(dataset=str(TINY.dataset_id), strategies=("copy_paste",),
                                                  data_check=True, output=out / "refused"))
    assert not (out / "refused").exists()


def _real_only_check_scores(check: str, cases: list[str], half: dict[str, float], gain: dict[str, float]) -> dict:
    """Per-case scores of real-only at two seeds and of a check's models: Dice ``half`` for the check's models,
    ``half + gain`` for the full ones, every other metric 0.5."""
    def case(dice: float) -> dict[str, float]:
        return {**{metric: 0.5 for metric in REPORTED_METRICS}, "dice": dice}
    return {**{f"seg_none_s{s}": {c: case(half[c] + gain[c]) for c in cases} for s in (0, 1)},
            **{f"{check}/seg_none_s{s}": {c: case(half[c]) for c in cases} for s in (0, 1)}}


CASES = [f"c{i}" for i in range(8)]
HALF_DICE = {c: 0.5 + 0.01 * i for i, c in enumerate(CASES)}
GAINS = {"improving": {c: 0.04 for c in CASES}, "worse": {c: -0.03 for c in CASES},
         "flat": {c: 0.02 * (-1) ** i for i, c in enumerate(CASES)}}


def test_the_schedule_check_says_whether_real_only_was_still_improving():
    from lesiongen.benefit import summarise
    from lesiongen.evaluation.benefit_report import schedule_line

    cases, half = CASES, HALF_DICE

    def scores(gain: dict[str, float]) -> dict:
        return _real_only_check_scores("schedule_check", cases, half, gain)

    options = BenefitOptions(dataset="D", strategies=("none",), seeds=(0, 1), sweep_strategy=None)
    gains = GAINS
    checks = {k: summarise(scores(g), options, cases, (1000, 500))["schedule_check"] for k, g in gains.items()}
    assert checks["improving"]["dice"]["mean"] == pytest.approx(0.04)
    assert checks["improving"]["dice_half_schedule"] == pytest.approx(np.mean(list(half.values())))
    assert (checks["improving"]["dice"]["cases_better"], checks["worse"]["dice"]["cases_worse"]) == (8, 8)
    assert "+4.0 Dice points" in schedule_line(checks["improving"])
    assert "still improving" in schedule_line(checks["improving"]) and "--seg_steps 2000" in \
        schedule_line(checks["improving"])
    assert "worse after the second half" in schedule_line(checks["worse"])
    assert "long enough" in schedule_line(checks["flat"])
    few = summarise(scores(gains["improving"]), options, cases[:3], (1000, 500))
    assert "Not judged: too few cases" in schedule_line(few["schedule_check"])


def test_the_data_check_says_whether_more_real_cases_raised_dice():
    from lesiongen.benefit import summarise
    from lesiongen.evaluation.benefit_report import data_line

    options = BenefitOptions(dataset="D", strategies=("none",), seeds=(0, 1), sweep_strategy=None)
    checks = {k: summarise(_real_only_check_scores("data_check", CASES, HALF_DICE, g), options, CASES,
                           data=(8, 4))["data_check"] for k, g in GAINS.items()}
    assert (checks["improving"]["cases"], checks["improving"]["half_cases"]) == (8, 4)
    assert checks["improving"]["dice"]["mean"] == pytest.approx(0.04)
    assert checks["worse"]["dice"]["mean"] == pytest.approx(-0.03)  # all minus half, not the other way round
    assert checks["improving"]["dice_half_data"] == pytest.approx(np.mean(list(HALF_DICE.values())))
    assert "all 8 real training cases against 4 of them" in data_line(checks["improving"])
    assert "+4.0 Dice points" in data_line(checks["improving"]) and "data-limited" in data_line(checks["improving"])
    assert "worse with all of its cases" in data_line(checks["worse"])
    assert "unlikely to raise it" in data_line(checks["flat"])
    few = summarise(_real_only_check_scores("data_check", CASES[:3], HALF_DICE, GAINS["improving"]), options,
                    CASES[:3], data=(8, 4))
    assert "Not judged: too few cases" in data_line(few["data_check"])
    assert "schedule_check" not in few and data_line(few["data_check"]) in answer(few, 2)


def test_the_synthetic_strategies_are_compared_with_each_other_paired():
    from lesiongen.benefit import summarise
    from lesiongen.inference.strategies import SegVariant

    # per case and seed: none at HALF_DICE, copy_paste +0.02, sphere +0.06 and diffmask +0.07 on every case but
    # alternating +/-0.02 around copy_paste's level for diffmask's second seed
    offsets = {"none": [0.0] * 8, "copy_paste": [0.02] * 8, "sphere": [0.06] * 8, "diffmask": [0.07] * 8}

    def dice(strategy: str, seed: int, i: int) -> float:
        if strategy == "diffmask" and seed == 1:
            return HALF_DICE[CASES[i]] + 0.02 + 0.02 * (-1) ** i
        return HALF_DICE[CASES[i]] + offsets[strategy][i]

    scores = {SegVariant.of(strategy, 1.0, seed).name:
              {c: {**{m: 0.5 for m in REPORTED_METRICS}, "dice": dice(strategy, seed, i)} for i, c in enumerate(CASES)}
              for strategy in offsets for seed in (0, 1)}
    options = BenefitOptions(dataset="D", strategies=tuple(offsets), seeds=(0, 1), sweep_strategy=None)
    pairs = summarise(scores, options, CASES)["between_strategies"]
    assert [(p["strategy"], p["against"]) for p in pairs] == [
        ("sphere", "copy_paste"), ("diffmask", "copy_paste"), ("diffmask", "sphere")]
    by_pair = {(p["strategy"], p["against"]): p["dice"] for p in pairs}
    assert by_pair["sphere", "copy_paste"]["mean"] == pytest.approx(0.04)
    assert by_pair["diffmask", "copy_paste"]["mean"] == pytest.approx((0.05 + 0.0) / 2)  # the seeds' mean
    assert by_pair["diffmask", "sphere"]["mean"] == pytest.approx((0.01 - 0.04) / 2)
    assert by_pair["diffmask", "sphere"]["cases_worse"] == 8 and by_pair["diffmask", "sphere"]["n_seeds"] == 2
    report = {"strategies": [], "between_strategies": pairs}
    lines = answer(report, n_seeds=2)
    assert lines[0].startswith("- **sphere against copy_paste**: better, +4.0 Dice points")
    # worse on all 8 scans, but the two seeds disagree (+1 and -4 points), and the interval resamples seeds too
    assert lines[2].startswith("- **diffmask against sphere**: no clear difference, -1.5 Dice points")
    assert "worse on 8 of 8 test scans (Wilcoxon p 0.008), but the interval" in lines[2]
    worse = dict(pairs[2], dice=dict(pairs[2]["dice"], ci_low=-0.03, ci_high=-0.01))
    assert answer({"strategies": [], "between_strategies": [worse]}, 2)[0].startswith(
        "- **diffmask against sphere**: worse, -1.5 Dice points (95 % CI -3.0 to -1.0)")
    # each seed's Dice: diffmask's second seed carries 2 of its 7 points over none
    summary = summarise(scores, options, CASES)
    per_seed = {row["strategy"]: row["dice"]["per_seed"] for row in summary["strategies"]}
    base = float(np.mean(list(HALF_DICE.values())))
    assert per_seed["none"] == pytest.approx([base, base])
    assert per_seed["diffmask"] == pytest.approx([base + 0.07, base + 0.02])
    text = markdown({**summary, "dataset": "D", "settings": {"seeds": [0, 1]}}, len(CASES), 2)
    rows = text.split("Dice per training seed")[1].splitlines()
    assert "| strategy | seed 0 | seed 1 |" in rows
    assert f"| diffmask | {base + 0.07:.3f} (+7.0) | {base + 0.02:.3f} (+2.0) |" in rows
    assert f"| none | {base:.3f} | {base:.3f} |" in rows


def test_a_rerun_trains_nothing_again_and_reuses_the_test_predictions(benefit, capsys):
    _, out, args = benefit
    first = json.loads((out / "benefit.json").read_text())
    capsys.readouterr()
    assert benefit_cli.main(args) == 0
    log = capsys.readouterr().err  # the command's own console logging (it replaces pytest's log capture)
    report = json.loads((out / "benefit.json").read_text())
    assert set(report["trainings"].values()) == {"up to date"}
    assert "trainings (" not in log  # nothing to train, no training progress
    # every test scan x every model (the checks' included) was segmented by the first run: all reused, none redone
    segmentations = len(report["test_cases"]) * len(report["per_case"])
    assert f"{segmentations} of {segmentations} test segmentations are in" in log
    assert "segmenting the test scans" not in log
    assert report["per_case"] == first["per_case"]


class _ThresholdSegmenter:
    """Stands in for a seg model: its checkpoint is a file, and it segments channel 0 above its threshold."""

    def __init__(self, checkpoint: Path, threshold: float):
        self.checkpoint, self.threshold = checkpoint, threshold


def test_a_test_prediction_is_reused_only_for_the_same_model_scan_mirroring_and_file(tmp_path, monkeypatch):
    from lesiongen.io.dataset import CaseFiles
    from lesiongen.io.images import ImageGeometry, write_image

    geometry = ImageGeometry.simple((6, 7, 8), (1.0, 1.0, 1.0))
    ramp = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8) / (6 * 7 * 8)
    cases = []
    for i in range(2):
        write_image(tmp_path / f"c{i}_0000.nii.gz", ramp + 0.1 * i, geometry)
        write_image(tmp_path / f"c{i}.nii.gz", (ramp > 0.5).astype(np.uint8), geometry)
        cases.append(CaseFiles(f"c{i}", [tmp_path / f"c{i}_0000.nii.gz"], tmp_path / f"c{i}.nii.gz"))
    for name in ("a", "b"):
        (tmp_path / f"{name}.pt").write_bytes(name.encode())
    models = {"a": _ThresholdSegmenter(tmp_path / "a.pt", 0.5), "b": _ThresholdSegmenter(tmp_path / "b.pt", 0.7)}
    calls = []

    def fake_segment(images, spacing, segmenters, mirror):
        calls.append((segmenters[0].checkpoint.stem, round(float(images[0].flat[0]), 3), mirror))
        return (images[0] > segmenters[0].threshold).astype(np.uint8), None, None

    monkeypatch.setattr(benefit_module, "segment", fake_segment)
    raw = dataclasses.make_dataclass("Raw", ["info"])(dataclasses.make_dataclass("Info", ["reader", "file_ending"])(
        None, ".nii.gz"))
    predictions = tmp_path / "predictions"

    def score(mirror=False):
        calls.clear()
        return benefit_module.score_test_set(models, raw, cases, [1], mirror, predictions)

    first = score()
    assert sorted(calls) == [("a", 0.0, False), ("a", 0.1, False), ("b", 0.0, False), ("b", 0.1, False)]
    assert first["a"]["c0"]["dice"] == pytest.approx(1.0) and first["b"]["c0"]["dice"] < 0.9
    assert score() == first and calls == []  # everything as recorded: nothing segmented again
    assert score(mirror=True) == first and len(calls) == 4  # another mirroring: every one again
    score()  # back to the records without mirroring
    code = benefit_module.code_version()
    monkeypatch.setattr(benefit_module, "code_version", lambda: {**code, "git_commit": "a commit of documentation"})
    assert score() == first and calls == []  # the same source: reused
    monkeypatch.setattr(benefit_module, "code_version", lambda: {**code, "source_sha256": "an edit, not committed"})
    assert score() == first and len(calls) == 4  # other code: every one again
    monkeypatch.setattr(benefit_module, "code_version", lambda: code)
    score()  # back to the records of the code as it is
    # the prediction file changed since its record: that one again
    target = predictions / "b" / "c1.nii.gz"
    write_image(target, np.zeros((6, 7, 8), np.uint8), geometry)
    assert score() == first and calls == [("b", 0.1, False)]
    (tmp_path / "a.pt").write_bytes(b"retrained")  # another checkpoint: its model's predictions again
    assert score() == first and sorted(calls) == [("a", 0.0, False), ("a", 0.1, False)]
    write_image(cases[0].images[0], ramp + 0.05, geometry)  # another test scan: both models segment it again
    score()
    assert sorted(calls) == [("a", 0.05, False), ("b", 0.05, False)]
    (predictions / "a" / "c1.json").write_text("{not json")  # an unreadable record: not trusted
    score()
    assert calls == [("a", 0.1, False)]
    assert benefit_module.score_test_set(models, raw, cases, [1], False, None)["a"]["c1"] == first["a"]["c1"]


def test_small_predicted_lesions_are_left_out_of_the_scores_only_with_min_lesion_volume(tmp_path, monkeypatch):
    from lesiongen.io.dataset import CaseFiles
    from lesiongen.io.images import ImageGeometry, read_image, write_image

    geometry = ImageGeometry.simple((8, 8, 8), (1.0, 1.0, 2.0))  # 2 mm3 voxels
    lesion = np.zeros((8, 8, 8), np.uint8)
    lesion[1:4, 1:4, 1:4] = 1
    write_image(tmp_path / "c0_0000.nii.gz", lesion.astype(np.float32), geometry)
    write_image(tmp_path / "c0.nii.gz", lesion, geometry)
    cases = [CaseFiles("c0", [tmp_path / "c0_0000.nii.gz"], tmp_path / "c0.nii.gz")]
    (tmp_path / "a.pt").write_bytes(b"a")
    calls = []

    def fake_segment(images, spacing, segmenters, mirror):
        calls.append(1)
        prediction = lesion.copy()
        prediction[6, 6, 6] = prediction[6, 6, 7] = 1  # a false lesion of 2 voxels, 4 mm3
        return prediction, None, None

    monkeypatch.setattr(benefit_module, "segment", fake_segment)
    raw = dataclasses.make_dataclass("Raw", ["info"])(dataclasses.make_dataclass("Info", ["reader", "file_ending"])(
        None, ".nii.gz"))
    models = {"a": _ThresholdSegmenter(tmp_path / "a.pt", 0.5)}

    def score(volume):
        return benefit_module.score_test_set(models, raw, cases, [1], False, tmp_path / "predictions", volume)["a"]

    whole = score(0.0)["c0"]
    assert whole["lesion_precision"] == pytest.approx(0.5) and whole["dice"] == pytest.approx(54 / 56)
    assert score(4.0)["c0"] == whole  # 4 mm3 is not below 4
    cleaned = score(4.5)["c0"]
    assert cleaned["lesion_precision"] == 1.0 and cleaned["dice"] == 1.0 and calls == [1]  # scored again, not segmented
    assert read_image(tmp_path / "predictions" / "a" / "c0.nii.gz")[0].sum() == 29  # stored as predicted


def test_the_trainings_log_how_many_of_those_to_train_are_done(monkeypatch, caplog):
    class FakeTrainer:
        def __init__(self, job):
            self.job = job

        def stale_reason(self):
            return None if self.job.strategy == "up to date" else "not trained yet"

        def run_training(self):
            pass

    monkeypatch.setattr(benefit_module, "open_preprocessed", lambda *args: None)
    monkeypatch.setattr(benefit_module, "_trainer", lambda job, dataset, device: FakeTrainer(job))
    jobs = [benefit_module.TrainingJob("seg", 2, seed, strategy)
            for seed, strategy in [(0, "none"), (0, "up to date"), (1, "none")]]
    caplog.set_level(logging.INFO, logger="lesiongen")
    outcome = benefit_module.run_trainings(jobs, BenefitOptions(dataset="1"), Path("logs"), "real only")
    assert sorted(outcome.values()) == ["trained", "trained", "up to date"]
    progress = [r.getMessage().split(",")[0] for r in caplog.records if r.getMessage().startswith("trainings (")]
    assert progress == ["trainings (real only): 1/2 done (50%)", "trainings (real only): 2/2 done (100%)"]


def test_a_fade_reaches_the_seg_models_with_synthetic_cases_only():
    from lesiongen.benefit import training_jobs
    from lesiongen.training.trainers.seg import SegTrainer

    first, second = training_jobs(BenefitOptions(dataset="501", strategies=("none", "copy_paste"), seeds=(0,),
                                                 ratio=2.0, sweep_strategy=None, synthetic_fade_start=0.5))
    none = next(job for job in first if job.trainer == "seg")
    assert "synthetic_fade_start" not in none.settings()  # nothing to fade: the real-only model stays as it is
    (copy_paste,) = second
    assert copy_paste.settings()["synthetic_fade_start"] == 0.5
    assert "synthetic_fade_start=0.5" in copy_paste.command(BenefitOptions(dataset="501"))
    _, (plain,) = training_jobs(BenefitOptions(dataset="501", strategies=("none", "copy_paste"), seeds=(0,),
                                               sweep_strategy=None))
    assert plain.settings()["synthetic_fade_start"] == SegTrainer.synthetic_fade_start  # none asked: seg's default
    report = {"dataset": "D", "strategies": [], "failed_trainings": []}
    assert "for the first 50% of its steps" in markdown({**report, "settings": {"synthetic_fade_start": 0.5}}, 3, 2)
    assert "fade" not in markdown({**report, "settings": {"synthetic_fade_start": 1.0}}, 3, 2)
    models = {"seg_none_s0": {"trainer": "seg", "steps_trained": 2000}, "inpaint": {"trainer": "inpaint",
                                                                                     "steps_trained": 400}}
    assert "Seg models trained 2000 steps each" in markdown({**report, "provenance": {"models": models}}, 3, 2)
    assert "--schedule_check tells" in markdown({**report, "provenance": {"models": models}}, 3, 2)


def test_a_trainer_setting_reaches_every_training_of_that_trainer_and_no_other(tiny_preprocessed, monkeypatch,
                                                                              capsys):
    from lesiongen.benefit import _trainer, data_check_jobs, schedule_check_jobs, training_jobs

    asked = []
    monkeypatch.setattr(benefit_module, "run_benefit", lambda options: asked.append(options) or pytest.skip())
    base = ["-d", str(TINY.dataset_id), "--strategies", "none", "diffmask", "--seeds", "0", "--sweep", "none"]
    with pytest.raises(pytest.skip.Exception):
        benefit_cli.main(base + ["--set", "inpaint", "edge_max_gain=3", "--set", "seg", "learning_rate=0.005",
                                 "--set", "inpaint", "euclidean_edge_rings=true"])
    (options,) = asked
    first, second = training_jobs(options)
    jobs = {job.name: job for job in first + second}
    assert jobs["inpaint"].settings() == {"edge_max_gain": "3", "euclidean_edge_rings": "true"}
    assert jobs["diffmask"].settings() == {}
    for job in [jobs["seg_none_s0"], jobs["seg_diffmask_s0"], *schedule_check_jobs(options, 10),
                *data_check_jobs(options, 4)]:
        assert job.settings()["learning_rate"] == "0.005"
    command = jobs["inpaint"].command(options)
    assert " ".join(command).endswith("--set edge_max_gain=3 --set euclidean_edge_rings=true")
    trainer = _trainer(jobs["inpaint"], open_preprocessed(TINY.dataset_id), "cpu")
    assert (trainer.model_config().edge_max_gain, trainer.model_config().edge_rings) == (3.0, "euclidean")
    with pytest.raises(LesiongenError, match="this run trains no inpaint; it trains seg$"):
        training_jobs(dataclasses.replace(options, strategies=("none", "copy_paste")))
    with pytest.raises(LesiongenError, match="lesiongen_benefit sets validate itself"):
        training_jobs(dataclasses.replace(options, trainer_settings=(("seg", "validate", "true"),)))
    capsys.readouterr()
    assert benefit_cli.main(base + ["--set", "inpaint", "edge_max_gain"]) == 1
    assert "--set inpaint edge_max_gain: expected NAME=VALUE" in capsys.readouterr().err
    assert len(asked) == 1
    report = {"dataset": "D", "strategies": [], "failed_trainings": [],
              "settings": {"trainer_settings": [list(s) for s in options.trainer_settings]}}
    assert "Trainer settings (--set): inpaint edge_max_gain=3, seg learning_rate=0.005, inpaint " \
        "euclidean_edge_rings=true; every other" in markdown(report, 3, 1)
    assert "Trainer settings" not in markdown({**report, "settings": {"trainer_settings": []}}, 3, 1)


def test_a_training_that_found_no_test_lesion_is_named_in_the_report():
    nan = float("nan")
    lesion_free = {"dice": 1.0, "lesion_recall": nan}  # no lesion, none predicted: Dice 1 by convention
    scores = {
        "seg_none_s0": {"a": {"dice": 0.0, "lesion_recall": 0.0}, "b": {"dice": 0.0, "lesion_recall": 0.0},
                        "c": lesion_free},
        "seg_none_s1": {"a": {"dice": 0.0, "lesion_recall": 0.0}, "b": {"dice": 0.1, "lesion_recall": 0.5},
                        "c": lesion_free},
        "seg_sphere_s0": {"a": {"dice": 0.0, "lesion_recall": 0.5}, "b": {"dice": 0.0, "lesion_recall": 0.0},
                          "c": lesion_free},
        "seg_sphere_s1": {"c": lesion_free},  # no test case with lesions: nothing to say
    }
    assert failed_trainings(scores) == ["seg_none_s0"]
    report = {"dataset": "D", "strategies": [], "failed_trainings": ["seg_none_s0"]}
    warning = markdown(report, 3, 2)
    assert "**Warning**: seg_none_s0 found no test lesion" in warning
    assert "--set seg balanced_ce_until=0.5" in warning  # the remedy measured on a short schedule
    assert "Warning" not in markdown({**report, "failed_trainings": []}, 3, 2)


def test_report_table_shows_the_signed_volume_difference_in_its_column():
    values = {"dice": 0.8, "lesion_f1": 0.7, "lesion_recall": 0.6, "lesion_precision": 0.9, "small_lesion_recall": 0.5,
              "hd95": 12.34, "abs_volume_difference_mm3": 345.0, "volume_difference_mm3": -55.0}
    report = {"dataset": "D", "strategies": [
        {"strategy": "none", "ratio": 1.0, **{m: {"mean": v, "std_over_seeds": 0.0} for m, v in values.items()}}]}
    header, _, row = markdown(report, 12, 3).splitlines()[4:7]
    columns = table_row(header, row)
    assert columns["vol diff mm3 (pred - ref)"] == "-55.0" and columns["abs vol diff mm3"] == "345.0"
    assert columns["HD95 mm"] == "12.3" and columns["Dice"] == "0.800"
    assert "Postprocessing" not in markdown(report, 12, 3)
    report["settings"] = {"min_lesion_volume_mm3": 4.5}  # a report scored without small lesions says so
    assert "predicted test lesions below 4.5 mm3 were removed before scoring" in markdown(report, 12, 3)


OTHER = dataclasses.replace(TINY, dataset_id=TINY.dataset_id + 1, dataset_name="TinyOther", n_test=0, seed=8)


def test_another_dataset_without_a_test_split_is_tested_on_all_its_scans(benefit):
    """--test_dataset: the out-of-domain check scores the trained models on the other dataset's scans (its training
    cases, which no model here saw) and reuses every training."""
    folders, out, args = benefit
    write_demo_dataset(folders["raw"], OTHER)
    other_out = out.parent / "benefit_other"
    assert benefit_cli.main([*args[:-1], str(other_out), "--test_dataset", str(OTHER.dataset_id)]) == 0
    report = json.loads((other_out / "benefit.json").read_text())
    other = load_dataset(str(OTHER.dataset_id))
    assert report["test_dataset"] == other.name != TINY_NAME
    assert report["test_cases"] == sorted(c.case_id for c in other.training) and not other.test
    assert set(report["trainings"].values()) == {"up to date"}
    # the other dataset's case ids may repeat this one's training ids: different scans, so no leak to refuse
    options = BenefitOptions(dataset=str(TINY.dataset_id), test_dataset=str(OTHER.dataset_id))
    raw, cases = held_out_cases(options)
    check_no_leak([{"variant": "seg_none", "train_cases": [c.case_id for c in cases]}], raw, cases, options)


def test_without_test_scans_it_says_so_and_compares_the_folds(benefit, monkeypatch, caplog):
    folders, out, _ = benefit
    raw = load_dataset(str(TINY.dataset_id))
    monkeypatch.setattr(benefit_module, "held_out_cases", lambda options: (raw, []))
    options = BenefitOptions(dataset=str(TINY.dataset_id), output=out.parent / "folds")
    with pytest.raises(LesiongenError, match="no finished seg folds"):  # benefit trains no folds itself
        benefit_module.run_benefit(options)
    assert "has no labelled test scans" in caplog.text and "lesiongen_compare" in caplog.text
    assert train_cli.main([str(TINY.dataset_id), "seg", "0", "--steps", "2", "-device", "cpu",
                           "--set", "mirror_validation=false"]) == 0
    result = benefit_module.run_benefit(options)
    assert result.fell_back_to_folds
    rows = json.loads(result.paths["json"].read_text())["rows"]
    assert [(row["strategy"], row["folds"]) for row in rows] == [("none", ["0"])]


def _paired(mean, low, high, p, better, worse):
    return {"dice": {"mean": mean, "ci_low": low, "ci_high": high, "p_value": p, "n_cases": 12, "n_seeds": 3,
                     "cases_better": better, "cases_worse": worse}}


def test_the_answer_follows_the_interval_and_names_a_significant_wilcoxon_inside_it():
    report = {"strategies": [
        {"strategy": "none", "ratio": 1.0},
        {"strategy": "copy_paste", "ratio": 2.0, "vs_none": _paired(0.021, -0.017, 0.070, 0.009, 11, 1)},
        {"strategy": "sphere", "ratio": 2.0, "vs_none": _paired(0.031, 0.004, 0.060, 0.02, 10, 2)},
        {"strategy": "diffmask", "ratio": 2.0, "vs_none": _paired(-0.041, -0.089, -0.004, 0.027, 2, 10)},
        {"strategy": "realmask", "ratio": 2.0, "vs_none": _paired(-0.010, -0.030, 0.010, 0.30, 5, 7)}]}
    lines = answer(report, n_seeds=3)
    assert len(lines) == 4
    assert lines[0].startswith("- **copy_paste** (ratio 2): no clear effect, +2.1 Dice points (95 % CI -1.7 to +7.0)")
    assert "better on 11 of 12 test scans (Wilcoxon p 0.009)" in lines[0]
    assert lines[1].startswith("- **sphere** (ratio 2): helps, +3.1") and "Wilcoxon" not in lines[1]
    assert lines[2].startswith("- **diffmask** (ratio 2): hurts, -4.1") and "Wilcoxon" not in lines[2]
    assert lines[3].startswith("- **realmask** (ratio 2): no clear effect, -1.0") and "Wilcoxon" not in lines[3]
    one_seed = answer(report, n_seeds=1)
    assert len(one_seed) == 5 and "One training seed" in one_seed[-1]
    metrics = {m: {"mean": 0.5, "std_over_seeds": 0.0} for m in REPORTED_METRICS}
    table = markdown({"dataset": "D", "strategies": [{**row, **metrics} for row in report["strategies"]]}, 12, 3)
    assert table.endswith("\n".join(lines) + "\n") and "Does it help?" in table


def test_two_runs_are_compared_model_by_model_on_the_same_cases():
    """benchmarks/compare_benefit_runs.py: NEW − OLD per case over the seeds both runs hold, Dice in points."""
    from conftest import load_benchmark

    runs = load_benchmark("compare_benefit_runs")
    old = {f"seg_{name}_s{seed}": {f"c{i}": {"dice": 0.5 + 0.01 * i} for i in range(8)}
           for name in ("none", "diffmask_r2") for seed in (0, 1)}
    new = {name: {case: {"dice": v["dice"] + (0.02 if "diffmask" in name else 0.0)} for case, v in cases.items()}
           for name, cases in old.items()}
    new["seg_sphere_r2_s0"] = old["seg_none_s0"]  # in one run only: not compared
    lines = runs.compare(new, old, ("dice",))
    assert len(lines) == 2
    diffmask, none = lines
    assert diffmask.startswith("diffmask r2") and "+2.000 (+2.000 to +2.000)" in diffmask
    assert "better / worse 8 / 0" in diffmask and "(2 seed(s), 8 cases)" in diffmask
    assert none.startswith("none") and "+0.000" in none

    # two doses: NEW's ratio-4 models against OLD's ratio-2 ones, seed by seed; real-only models are not paired
    new_dose = {name.replace("_r2_", "_r4_"): cases for name, cases in new.items()}
    new_dose["seg_diffmask_r2_s0"] = old["seg_none_s0"]  # NEW's own ratio 2: not in the pairing
    (dose,) = runs.compare(new_dose, old, ("dice",), ratios=(4.0, 2.0))
    assert dose.startswith("diffmask r2") and "+2.000 (+2.000 to +2.000)" in dose and "(2 seed(s), 8 cases)" in dose


def test_two_runs_compare_what_each_strategy_adds_over_real_only():
    """compare_benefit_runs --gains: (strategy − real-only of its seed) in NEW minus the same in OLD."""
    from conftest import load_benchmark

    runs = load_benchmark("compare_benefit_runs")
    base = {f"c{i}": 0.5 + 0.01 * i for i in range(8)}

    def run(none: float, diffmask: float, seeds=(0, 1)) -> dict:
        return {f"seg_{name}_s{seed}": {c: {"dice": v + shift + 0.001 * seed} for c, v in base.items()}
                for name, shift in (("none", none), ("diffmask_r2", diffmask)) for seed in seeds}

    old = run(none=0.0, diffmask=0.05)  # diffmask adds 5 points
    new = run(none=0.10, diffmask=0.12)  # both higher, diffmask adds 2 points
    (gain,) = runs.compare(new, old, ("dice",), gains=True)
    assert gain.startswith("diffmask r2") and "-3.000 (-3.000 to -3.000)" in gain
    assert "better / worse 0 / 8" in gain and "(2 seed(s), 8 cases)" in gain
    (plain, _none) = runs.compare(new, old, ("dice",))
    assert "+7.000" in plain  # without --gains: the models themselves
    del new["seg_none_s1"]  # seed 1 without its real-only model in NEW: its gain is not known
    (gain,) = runs.compare(new, old, ("dice",), gains=True)
    assert "-3.000" in gain and "(1 seed(s), 8 cases)" in gain
    # two doses: NEW's ratio-4 gains against OLD's ratio-2 ones
    dose = {name.replace("_r2_", "_r4_"): cases for name, cases in run(none=0.10, diffmask=0.11).items()}
    (gain,) = runs.compare(dose, old, ("dice",), ratios=(4.0, 2.0), gains=True)
    assert gain.startswith("diffmask r2") and "-4.000 (-4.000 to -4.000)" in gain


def test_report_table_shows_the_paired_dice_its_p_and_the_cases_better_before_worse():
    metrics = {m: {"mean": 0.5, "std_over_seeds": 0.0} for m in REPORTED_METRICS}
    report = {"dataset": "D", "strategies": [
        {"strategy": "sphere", "ratio": 2.0, **metrics, "vs_none": _paired(0.031, 0.004, 0.060, 0.02, 10, 2)}]}
    header, _, row = markdown(report, 12, 3).splitlines()[4:7]
    columns = table_row(header, row)
    assert columns["Dice vs none (95 % CI)"] == "+3.1 (+0.4 to +6.0)"
    assert (columns["p"], columns["cases better / worse"]) == ("0.020", "10 / 2")
    assert (columns["lesion F1 vs none (95 % CI)"], columns["p (F1)"]) == ("–", "–")  # not in this report
    report["strategies"][0]["vs_none"]["lesion_f1"] = {**_paired(0.14, 0.02, 0.25, 0.031, 6, 0)["dice"]}
    header, _, row = markdown(report, 12, 3).splitlines()[4:7]
    columns = table_row(header, row)
    assert (columns["lesion F1 vs none (95 % CI)"], columns["p (F1)"]) == ("+0.14 (+0.02 to +0.25)", "0.031")
    assert columns["Dice vs none (95 % CI)"] == "+3.1 (+0.4 to +6.0)"


def test_each_strategy_trains_the_models_it_paints_or_draws_with_and_no_other():
    from lesiongen.benefit import training_jobs

    def first_trainers(strategy: str) -> list[str]:
        first, _ = training_jobs(BenefitOptions(dataset="501", strategies=("none", strategy), seeds=(0,),
                                                sweep_strategy=None))
        return [job.trainer for job in first]

    assert first_trainers("sphere") == ["spheremask", "inpaint", "seg"]
    assert first_trainers("diffmask") == ["diffmask", "inpaint", "seg"]
    assert first_trainers("realmask") == ["inpaint", "seg"]
    assert first_trainers("copy_paste") == ["seg"]


def test_trainings_side_by_side_train_what_the_jobs_describe_a_cross_validation_fold_included(tiny_preprocessed,
                                                                                             tmp_path):
    """--parallel: each job's command line (a subprocess per training) makes the model its own in-process trainer
    would, so afterwards neither is stale; the cross-validation fold validates its held-out cases, unmirrored as
    asked, and its log has a file name of its own. (Seed 5: no other test of the module trains it.)"""
    from lesiongen.benefit import cv_fold_jobs, run_trainings
    from lesiongen.models.checkpoint import load_checkpoint
    from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits

    options = BenefitOptions(dataset=str(TINY.dataset_id), seeds=(5,), seg_steps=2, mirror=False, parallel=2,
                             cv_postprocessing=True, cv_folds=(1,))
    dataset = open_preprocessed(str(TINY.dataset_id), "lesiongenPlans")
    jobs = [benefit_module.TrainingJob("seg", 2, 5, "none"), *cv_fold_jobs(options, dataset)]
    outcome = run_trainings(jobs, options, tmp_path / "logs", "real only")
    assert outcome == {"seg_none_s5": "trained", "seg_none_s5/fold_1": "trained"}
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["seg_none_s5.log", "seg_none_s5_fold_1.log"]
    assert [benefit_module._trainer(job, dataset, "cpu").stale_reason() for job in jobs] == [None, None]
    folder = tiny_preprocessed["results"] / TINY_NAME / "seg_none_s5__lesiongenPlans"
    settings = load_checkpoint(folder / "fold_1" / "checkpoint_final.pt")["provenance"]["settings"]
    assert settings["validate"] is True and settings["mirror_validation"] is False
    _, validation_cases = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 1)
    assert sorted(p.name for p in (folder / "fold_1" / "validation").glob("*.nii.gz")) == \
        sorted(f"{case}.nii.gz" for case in validation_cases)
    assert not (folder / "fold_all" / "validation").exists() and not (folder / "fold_0").exists()

