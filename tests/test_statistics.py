"""Paired statistics of the benefit report, on differences whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesiongen.evaluation.statistics import bootstrap_mean_ci, paired_difference, wilcoxon_p


def test_constant_differences_have_a_point_interval_and_the_exact_wilcoxon_p():
    baseline = np.zeros((3, 5))
    result = paired_difference(baseline + 0.04, baseline)
    assert (result.mean, result.ci_low, result.ci_high) == pytest.approx((0.04, 0.04, 0.04))
    assert result.p_value == pytest.approx(2 / 2**5)  # 5 positive ranks: exact two-sided p = 2 / 32
    assert (result.cases_better, result.cases_worse, result.n_cases, result.n_seeds) == (5, 0, 5, 3)


def test_the_bootstrap_resamples_seeds_as_well_as_cases():
    # two seeds agree, the third differs by 3 on every case: cases alone would give a point interval at the mean
    differences = np.array([[1.0] * 6, [1.0] * 6, [4.0] * 6])
    low, high = bootstrap_mean_ci(differences)
    # three seeds drawn from {1, 1, 4}: all "1" has probability 8/27, all "4" 1/27; both beyond the 2.5 % tails
    assert (low, high) == pytest.approx((1.0, 4.0))


def test_bootstrap_interval_of_a_large_sample_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    differences = rng.normal(0.1, 1.0, size=(1, 400))
    low, high = bootstrap_mean_ci(differences)
    mean, half_width = differences.mean(), 1.96 * differences.std(ddof=1) / math.sqrt(400)
    assert low == pytest.approx(mean - half_width, abs=0.015) and high == pytest.approx(mean + half_width, abs=0.015)


def test_nan_cases_are_left_out_not_counted_as_zero():
    strategy = np.array([[0.5, np.nan, 0.7]])
    baseline = np.array([[0.4, 0.3, 0.5]])
    result = paired_difference(strategy, baseline)
    assert result.mean == pytest.approx(0.15) and result.cases_better == 2


def test_wilcoxon_edge_cases():
    assert wilcoxon_p(np.zeros(6)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([0.3])))
    assert wilcoxon_p(np.array([-2.0, -1.0, 1.0, 2.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 2)))


def test_wilcoxon_drops_zero_differences_before_ranking():
    """Zeros are dropped, then the 7 others ranked 1..7: the one negative has rank 7, and of the 2**7 sign patterns
    19 have a negative rank sum <= 7, so the exact two-sided p is 2 * 19 / 128 (ranking the zeros first, Pratt's
    way, gives 0.156)."""
    assert wilcoxon_p(np.array([0.0, 0.0, 0.0, 1, 2, 3, 4, 5, 6, -7])) == pytest.approx(2 * 19 / 128)
