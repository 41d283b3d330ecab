"""Which 4-step sampler a diffmask model runs for ``--sampling few_step``, chosen after training on training patches
(documentation/few_step_sampling.md, "The 4-step sampler chosen per model").

Each candidate's masks and the 20-step default sampler's are compared with the real lesions of the same patches;
a candidate's *worst excess* is the largest amount by which one of its mask statistics is further from the real
lesions than the default's, in units of that statistic's real spread. The smallest worst excess wins.

A distilled student, when the model has one, is *preferred*: it was trained to reproduce the default sampler, and
on held-out lesions it was never further from the real ones than the sampler a choice on a dozen patches took
instead (the documentation has the runs). So it is replaced only when another candidate has the smaller worst
excess in at least :data:`CLEARLY_BETTER` of bootstrap resamples of the choice patches: the choice drops a
distillation that failed, not one that lost on a few patches by chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesiongen.evaluation.mask_metrics import METRICS, MaskStatistics, wasserstein_distances

BOOTSTRAP_RESAMPLES = 500
CLEARLY_BETTER = 0.95  # share of resamples in which a candidate must beat the preferred one to replace it


@dataclass(frozen=True)
class FewStepChoice:
    chosen: str
    worst_excess: dict[str, float]  # per candidate, on all choice patches
    distances: dict[str, dict[str, float]]  # per candidate, Wasserstein distance per statistic
    reference_distances: dict[str, float]  # the default sampler's
    preferred: str | None = None
    # per other candidate: the share of resamples in which its worst excess is below the preferred one's
    beats_preferred: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """Every candidate's worst excess and, with a preferred candidate, how often each other one beat it."""
        text = "worst excess over the default sampler's distances to the real lesions, in real spreads: " + ", ".join(
            f"{name} {value:+.3f}" for name, value in self.worst_excess.items())
        if self.beats_preferred:
            text += (f"; {self.preferred} is replaced only by a sampler closer in {CLEARLY_BETTER:.0%} of "
                     f"{BOOTSTRAP_RESAMPLES} resamples of the patches: "
                     + ", ".join(f"{name} {share:.0%}" for name, share in self.beats_preferred.items()))
        return text


def worst_excesses(distances: dict[str, dict[str, float]], reference: dict[str, float],
                   spread: dict[str, float]) -> dict[str, float]:
    """Per candidate, the largest excess of a statistic's distance over ``reference`` (the default sampler's), in
    units of ``spread`` (the real statistic's standard deviation), so the five statistics weigh alike; statistics
    without spread among the real lesions (a single lesion, no tissue map) are left out. A candidate whose masks had
    no lesion (NaN distances) gets infinity."""
    used = [metric for metric in METRICS if spread[metric] > 0]
    worst = {}
    for name, values in distances.items():
        excess = [(values[m] - (reference[m] if np.isfinite(reference[m]) else 0.0)) / spread[m] for m in used]
        worst[name] = float("inf") if not np.all(np.isfinite(excess)) else max(excess, default=0.0)
    return worst


def choose_few_step_variant(generated: dict[str, MaskStatistics], reference: MaskStatistics, real: MaskStatistics,
                            draws: int = 1, preferred: str | None = None, seed: int = 0,
                            resamples: int = BOOTSTRAP_RESAMPLES) -> FewStepChoice:
    """The candidate of ``generated`` (statistics of its masks, ``draws`` in a row per choice patch) with the
    smallest worst excess over ``reference`` (the default sampler's masks, drawn alike) against ``real`` (the choice
    patches' real lesions, one entry per patch); ties go to the earlier candidate. ``preferred`` (a name in
    ``generated``) is kept unless another candidate's worst excess is the smaller one in at least
    :data:`CLEARLY_BETTER` of ``resamples`` bootstrap resamples of the choice patches (seeded by ``seed``)."""
    spread = {metric: float(np.std(real.values(metric))) for metric in METRICS}
    reference_distances = wasserstein_distances(real, reference)
    distances = {name: wasserstein_distances(real, stats) for name, stats in generated.items()}
    worst = worst_excesses(distances, reference_distances, spread)
    best = min(worst, key=worst.get)
    if preferred is None or preferred == best:
        return FewStepChoice(best, worst, distances, reference_distances, preferred)
    beats = _shares_beating(generated, reference, real, draws, preferred, spread, seed, resamples)
    chosen = best if max(beats.values()) >= CLEARLY_BETTER else preferred
    return FewStepChoice(chosen, worst, distances, reference_distances, preferred, beats)


def _shares_beating(generated: dict[str, MaskStatistics], reference: MaskStatistics, real: MaskStatistics,
                    draws: int, preferred: str, spread: dict[str, float], seed: int, resamples: int
                    ) -> dict[str, float]:
    """Per candidate other than ``preferred``, the share of bootstrap resamples of the choice patches (each draw
    resampled with its patch, the same patches for the real lesions and every sampler) in which its worst excess is
    below the preferred one's."""
    rng = np.random.default_rng(seed)
    n_patches = len(real.lesions_per_patch)
    wins = dict.fromkeys((name for name in generated if name != preferred), 0)
    for _ in range(resamples):
        patches = rng.integers(0, n_patches, n_patches)
        drawn = (patches[:, None] * draws + np.arange(draws)).ravel()
        real_sample = real.of_patches(patches)
        worst = worst_excesses({name: wasserstein_distances(real_sample, stats.of_patches(drawn))
                                for name, stats in generated.items()},
                               wasserstein_distances(real_sample, reference.of_patches(drawn)), spread)
        for name in wins:
            wins[name] += worst[name] < worst[preferred]
    return {name: count / resamples for name, count in wins.items()}
