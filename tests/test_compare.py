"""lesiongen_compare's statistics on constructed fold results: the paired difference over validation cases, its
interval and the answer in words (the end-to-end run on trained folds is in test_seg.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import table_row

from lesiongen.evaluation.compare import METRICS, answer, compare, write_comparison


def _case(dice: float, f1: float) -> dict[str, float]:
    return {m: math.nan for m in METRICS} | {"dice": dice, "lesion_f1": f1}


def _fold(cases: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: float(np.nanmean([c[m] for c in cases.values()])) if m in ("dice", "lesion_f1") else math.nan
            for m in METRICS}


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
