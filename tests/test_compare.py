"""lesiongen_compare's statistics on constructed fold results: the paired difference over validation cases, its
interval and the answer in words (the end-to-end run on trained folds is in test_seg.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import table_row

from lesiongen.evaluation.compare import (answer, compare, found_no_lesion, run_comparison,
                                         write_comparison)
from lesiongen.evaluation.segmentation_metrics import REPORTED_METRICS
from lesiongen.utilities.files import write_json


def _case(dice: float, f1: float) -> dict[str, float]:
    return {m: math.nan for m in REPORTED_METRICS} | {"dice": dice, "lesion_f1": f1}


def _fold(cases: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: float(np.nanmean([c[m] for c in cases.values()])) if m in ("dice", "lesion_f1") else math.nan
            for m in REPORTED_METRICS}


def _results(per_strategy: dict[str, dict[str, dict[str, dict[str, float]]]]):
    """strategy -> fold -> case -> metrics, as (fold results, case results) for compare()."""
    folds = {s: {f: _fold(cases) for f, cases in by_fold.items()} for s, by_fold in per_strategy.items()}
    cases = {s: {c: v for by_case in by_fold.values() for c, v in by_case.items()}
             for s, by_fold in per_strategy.items()}
    return folds, cases


def test_paired_difference_over_validation_cases_and_the_answer():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, 12)
    split = {"0": range(0, 6), "1": range(6, 12)}  # two folds, six validation cases each
    none = {f: {f"c{i}": _case(base[i], 0.7) for i in idx} for f, idx in split.items()}
    better = {f: {f"c{i}": _case(base[i] + 0.05, 0.7) for i in idx} for f, idx in split.items()}
    mixed = {f: {f"c{i}": _case(base[i] + (0.04 if i % 2 else -0.04), 0.7) for i in idx} for f, idx in split.items()}
    partial = {"0": {f"c{i}": _case(base[i] - 0.10, 0.6) for i in split["0"]}}  # one fold only
    folds, cases = _results({"none": none, "sphere": better, "diffmask": mixed, "copy_paste": partial})
    rows = {row["strategy"]: row for row in compare(folds, cases)}
    assert "paired_vs_none" not in rows["none"]
    helps = rows["sphere"]["paired_vs_none"]["dice"]
    assert helps["mean"] == pytest.approx(0.05) and helps["ci_low"] == pytest.approx(0.05)  # every case +0.05
    assert helps["n_cases"] == 12 and helps["cases_better"] == 12 and helps["p_value"] < 0.001
    assert rows["sphere"]["paired_vs_none"]["lesion_f1"]["mean"] == pytest.approx(0.0)
    level = rows["diffmask"]["paired_vs_none"]["dice"]
    assert level["mean"] == pytest.approx(0.0, abs=1e-12) and level["ci_low"] < 0 < level["ci_high"]
    assert (level["cases_better"], level["cases_worse"]) == (6, 6)
    hurts = rows["copy_paste"]["paired_vs_none"]["dice"]  # only the cases of the fold both have
    assert hurts["n_cases"] == 6 and hurts["mean"] == pytest.approx(-0.10) and hurts["ci_high"] < 0
    lines = answer(list(rows.values()))  # in the strategies' table order
    assert lines[0].startswith("- **sphere**: helps, +5.0 Dice points (95 % CI +5.0 to +5.0, Wilcoxon p < 0.001; "
                               "better on 12, worse on 0 of 12 validation cases of folds 0,1)")
    assert lines[1].startswith("- **diffmask**: no clear effect, +0.0 Dice points")
    assert lines[2].startswith("- **copy_paste**: hurts, -10.0 Dice points (95 % CI -10.0 to -10.0")
    assert lines[2].endswith("of 6 validation cases of folds 0)")
    assert "not the training run" in lines[-1] and len(lines) == 4


def test_without_per_case_scores_the_fold_table_stays_and_there_is_no_answer():
    folds, _ = _results({"none": {"0": {"a": _case(0.5, 0.5)}}, "sphere": {"0": {"a": _case(0.6, 0.5)}}})
    rows = compare(folds)
    assert rows[1]["dice_vs_none"][0] == pytest.approx(0.1)
    assert "paired_vs_none" not in rows[1] and answer(rows) == []


def test_too_few_validation_cases_get_no_verdict():
    """Three cases all better by 0.05: the bootstrap interval excludes 0, but three cases cannot show it."""
    none = {"0": {f"c{i}": _case(0.5 + 0.1 * i, 0.5) for i in range(3)}}
    better = {"0": {f"c{i}": _case(0.55 + 0.1 * i, 0.5) for i in range(3)}}
    rows = compare(*_results({"none": none, "sphere": better}))
    assert rows[1]["paired_vs_none"]["dice"]["ci_low"] > 0
    assert answer(rows)[0].startswith("- **sphere**: too few cases to judge (3 < 6), +5.0 Dice points")


def test_the_comparison_table_shows_the_paired_difference_in_its_vs_none_column(tmp_path):
    folds, _ = _results({"none": {"0": {"a": _case(0.5, 0.5)}, "1": {"b": _case(0.7, 0.5)}},
                         "sphere": {"0": {"a": _case(0.6, 0.5)}, "1": {"b": _case(0.9, 0.5)}}})
    paths = write_comparison(compare(folds), tmp_path)
    header, _, _, sphere = paths["markdown"].read_text().split("\n\n")[2].splitlines()[:4]
    columns = table_row(header, sphere)
    assert columns["Dice"] == "0.75 ± 0.15" and columns["Dice vs none"] == "0.15 ± 0.05"


def _summary(dice_recall: dict[str, tuple[float, float]]) -> dict:
    """A fold's summary.json as the seg trainer writes it (label "1"; None where JSON holds NaN)."""
    per_case = {case: {"1": {m: None for m in REPORTED_METRICS} | {"dice": dice, "lesion_recall": recall}}
                for case, (dice, recall) in dice_recall.items()}
    mean = {m: None for m in REPORTED_METRICS} | {"dice": float(np.mean([d for d, _ in dice_recall.values()]))}
    return {"per_case": per_case, "mean": {"1": {"mean": mean}}}


def test_found_no_lesion_needs_zero_dice_and_recall_on_every_case_with_lesions():
    free = {"dice": 1.0, "lesion_recall": math.nan}  # no reference lesion, none predicted
    assert found_no_lesion([{"dice": 0.0, "lesion_recall": 0.0}, free, {"dice": 0.0, "lesion_recall": 0.0}])
    assert not found_no_lesion([{"dice": 0.0, "lesion_recall": 0.0}, {"dice": 0.0, "lesion_recall": 0.5}])
    assert not found_no_lesion([{"dice": 0.0, "lesion_recall": 0.0}, {"dice": 0.2, "lesion_recall": 0.0}])
    assert not found_no_lesion([free, free])  # no case with a lesion: nothing to judge


def test_a_fold_that_found_no_validation_lesion_is_named_in_the_comparison(lesiongen_folders, tmp_path):
    root = lesiongen_folders["results"] / "Dataset501_D"
    folds = {("none", "0"): {"a": (0.0, 0.0), "b": (0.0, 0.0), "c": (1.0, None)},  # learnt nothing
             ("none", "1"): {"d": (0.6, 1.0), "e": (0.0, 0.0)},
             ("sphere", "0"): {"a": (0.5, 1.0), "b": (0.0, 0.0), "c": (1.0, None)}}
    for (strategy, fold), cases in folds.items():
        folder = root / f"seg_{strategy}__lesiongenPlans" / f"fold_{fold}"
        folder.mkdir(parents=True)
        write_json(folder / "summary.json", _summary(cases))
        (folder / "checkpoint_final.pt").write_bytes(b"weights")
    rows, paths = run_comparison("Dataset501_D", "lesiongenPlans", output=tmp_path / "out")
    assert {row["strategy"]: row["folds_without_lesions"] for row in rows} == {"none": ["0"], "sphere": []}
    table = paths["markdown"].read_text()
    assert "**Warning**: none fold 0 found no validation lesion at all" in table
    assert "--set balanced_ce_until=0.5" in table
    write_comparison([{**row, "folds_without_lesions": []} for row in rows], tmp_path / "clean")
    assert "Warning" not in (tmp_path / "clean" / "comparison.md").read_text()
