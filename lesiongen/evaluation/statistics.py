"""Paired statistics for "does synthetic data help?": differences to the real-only baseline on the same test cases.

A strategy and the baseline are trained with the same seeds and scored on the same test cases, so each difference
is paired by (seed, case). The confidence interval of the mean difference comes from a paired bootstrap that
resamples test cases *and* seeds (two sources of variation: which scans happen to be in the test set, and how a
training run happens to go); the p-value from a two-sided Wilcoxon signed-rank test on the per-case differences
averaged over seeds (cases are the independent units; seeds are averaged first so one case does not count thrice).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95


def nanmean(values: np.ndarray, axis=None):
    """Mean without NaNs; NaN (silently) where a slice holds nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


@dataclass(frozen=True)
class PairedDifference:
    mean: float  # mean difference over seeds and cases
    ci_low: float
    ci_high: float
    p_value: float  # two-sided Wilcoxon signed-rank on per-case means; NaN with fewer than 2 cases
    n_cases: int
    n_seeds: int
    cases_better: int  # cases whose mean difference is > 0
    cases_worse: int


def bootstrap_mean_ci(differences: np.ndarray, n_samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of a (seeds, cases) difference matrix, resampling cases and seeds.

    NaN entries (a metric undefined for a case) are left out of each resampled mean.
    """
    values = np.atleast_2d(np.asarray(differences, dtype=float))
    n_seeds, n_cases = values.shape
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n_cases, size=(n_samples, n_cases))
    seeds = rng.integers(0, n_seeds, size=(n_samples, n_seeds))
    # every sample: the chosen seeds' rows at the chosen cases' columns
    resampled = values[seeds[:, :, None], cases[:, None, :]]  # (n_samples, n_seeds, n_cases)
    means = nanmean(resampled.reshape(n_samples, -1), axis=1)
    means = means[np.isfinite(means)]
    if not means.size:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(per_case: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-case differences (zeros dropped, as Wilcoxon did); 1 when every
    difference is zero, NaN with fewer than two cases."""
    values = np.asarray(per_case, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan
    if not np.any(values != 0):
        return 1.0
    return float(stats.wilcoxon(values, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_difference(strategy: np.ndarray, baseline: np.ndarray, seed: int = 0) -> PairedDifference:
    """Mean, bootstrap CI and Wilcoxon p of ``strategy - baseline``, both (seeds, cases) with matching rows/columns."""
    strategy, baseline = np.atleast_2d(strategy).astype(float), np.atleast_2d(baseline).astype(float)
    if strategy.shape != baseline.shape:
        raise ValueError(f"paired scores need the same (seeds, cases) shape, got {strategy.shape} and {baseline.shape}")
    differences = strategy - baseline
    per_case = nanmean(differences, axis=0)
    mean = float(nanmean(differences))
    low, high = bootstrap_mean_ci(differences, seed=seed)
    finite = per_case[np.isfinite(per_case)]
    return PairedDifference(mean, low, high, wilcoxon_p(per_case), differences.shape[1], differences.shape[0],
                            int((finite > 0).sum()), int((finite < 0).sum()))


# Below this many cases no verdict: even with every case on one side the two-sided Wilcoxon p is >= 2 / 2**5, and a
# bootstrap over 3 cases has 10 distinct means, so its interval is far narrower than the uncertainty.
MIN_CASES_TO_JUDGE = 6


def verdict(ci_low: float, ci_high: float, n_cases: int) -> str:
    """What a paired difference's 95 % interval says: "helps" above 0, "hurts" below 0, else "no clear effect";
    with fewer than :data:`MIN_CASES_TO_JUDGE` cases, that there are too few to judge."""
    if n_cases < MIN_CASES_TO_JUDGE:
        return f"too few cases to judge ({n_cases} < {MIN_CASES_TO_JUDGE})"
    return "helps" if ci_low > 0 else "hurts" if ci_high < 0 else "no clear effect"
