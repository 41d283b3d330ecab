"""benchmarks/measure.py records the code a benchmark started with, not the code found when it ends."""

from __future__ import annotations

from conftest import load_benchmark


def load_measure():
    return load_benchmark("measure")


def test_a_commit_made_during_the_run_is_not_recorded_as_what_ran(monkeypatch):
    measure = load_measure()
    started_with = dict(measure._CODE_AT_START)
    monkeypatch.setattr(measure, "_PACKAGE_AT_START", "tree-a+0")
    monkeypatch.setattr(measure, "_package_state", lambda: "tree-b+0")
    record = measure.benchmark_provenance()
    assert record["git_commit"] == started_with["git_commit"]
    assert record["code_changed_during_run"] is True


def test_unchanged_code_is_recorded_as_unchanged():
    measure = load_measure()
    record = measure.benchmark_provenance()
    assert record["code_changed_during_run"] is (False if measure._PACKAGE_AT_START else None)
    assert record["started"] <= record["date"]
