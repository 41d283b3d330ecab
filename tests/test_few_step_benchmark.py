"""The few-step benchmark's paired comparison over evaluation seeds (benchmarks/few_step_sampling.py)."""

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def few_step():
    return load_benchmark("few_step_sampling")


def test_a_constant_shift_on_every_seed_has_a_point_interval_and_counts_every_seed_above(few_step):
    paired = few_step.paired_over_seeds(arm=[1.0, 2.0, 3.0, 4.0], default=[0.5, 1.5, 2.5, 3.5])
    assert paired["mean"] == pytest.approx(0.5)
    assert paired["per_seed"] == pytest.approx([0.5] * 4)
    assert paired["ci95"] == pytest.approx([0.5, 0.5])
    assert (paired["seeds_above"], paired["seeds_below"]) == (4, 0)
    assert paired["wilcoxon_p"] == pytest.approx(0.125)  # exact two-sided p of 4 of 4 signs alike: 2 / 2**4


def test_differences_of_both_signs_give_an_interval_across_zero(few_step):
    paired = few_step.paired_over_seeds(arm=[2.0, 0.0, 2.0, 0.0, 3.0], default=[1.0, 1.0, 1.0, 1.0, 1.0])
    assert paired["mean"] == pytest.approx(0.4)
    assert paired["ci95"][0] < 0 < paired["ci95"][1]
    assert paired["ci95"][0] >= -1 and paired["ci95"][1] <= 2  # within the smallest and largest difference
    assert (paired["seeds_above"], paired["seeds_below"]) == (3, 2)
