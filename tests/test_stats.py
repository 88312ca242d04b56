"""tga_fast.stats against scipy and hand computations, and the two claims its intervals rest on, checked by
simulation: a clustered rate's interval covers the true rate when outcomes cluster (where Wilson's does not), and
the bootstrap contrast's one-sided p-values reject a true null at about their level. Simulations use fixed seeds
(numpy's PCG64 stream is the same on every platform), so the counts below are reproducible; the bounds around
them are binomial, not the counts one machine gave."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tga_fast.evaluation.rates import wilson_interval
from tga_fast.stats import (
    Contrast,
    Estimate,
    cluster_bootstrap_contrast,
    clustered_rate,
    cohen_kappa,
    holm,
    mcnemar_exact,
    mean_t_interval,
    paired_bootstrap_contrast,
    paired_comparison,
    wilson,
)


def test_wilson_matches_the_rate_module_and_a_hand_value():
    assert wilson(3, 10).low == pytest.approx(wilson_interval(3, 10)[0], abs=1e-12)
    assert wilson(3, 10).high == pytest.approx(wilson_interval(3, 10)[1], abs=1e-12)
    # p = 0.5, n = 100, z = 1.96: center 0.5, half = 1.96/(1 + 0.0384) * sqrt(0.0025 + 0.0000960) = 0.0962
    estimate = wilson(50, 100)
    assert (estimate.low, estimate.high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(0, 0).value is None
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_clustered_rate_reduces_to_wilson_without_clusters_and_widens_with_them():
    outcomes = [True] * 12 * 4 + [False] * 12 * 4  # 8 concepts, 12 questions each, all-or-nothing per concept
    concepts = [i // 12 for i in range(96)]
    plain = wilson(48, 96)
    assert clustered_rate(outcomes).to_json() == plain.to_json()
    independent = clustered_rate(outcomes, list(range(96)))
    assert (independent.low, independent.high) == pytest.approx((plain.low, plain.high), abs=1e-12)
    clustered = clustered_rate(outcomes, concepts, cluster_field="concept")
    assert clustered.clusters == 8 and "concept" in clustered.method
    # Whole clusters agree: the effective sample size is about the 8 concepts, not 96 answers.
    eight = wilson(4, 8)
    assert clustered.high - clustered.low > 2 * (plain.high - plain.low)
    assert clustered.high - clustered.low == pytest.approx(eight.high - eight.low, rel=0.25)


def test_clustered_rate_when_every_outcome_agrees_uses_the_number_of_clusters():
    estimate = clustered_rate([False] * 144, [i // 18 for i in range(144)])
    assert estimate.value == 0.0 and estimate.low == 0.0
    assert estimate.high == pytest.approx(wilson(0, 8).high, abs=1e-12)  # not Wilson's 0.026 at n = 144
    assert estimate.high > 0.3


def test_clustered_interval_covers_where_wilson_does_not():
    """200 data sets of 10 clusters x 12 answers whose refusal probability varies by cluster (Beta(1, 1)): the
    clustered 95% interval covers the true mean (0.5) in most of them, Wilson's at n = 120 in far fewer. With
    intra-cluster correlation 1/3 the design effect is 1 + 11/3 = 4.7, so Wilson's interval is sqrt(4.7) = 2.2 times
    too narrow: expected coverage about 64% (128 of 200, sd 7); the clustered one about 92% (184, sd 4). The bounds
    are 3+ sd from both; a clustered rate that ignored its clusters would fail the first."""
    rng = np.random.default_rng(0)
    covered = {"clustered": 0, "wilson": 0}
    sets = 200
    for _ in range(sets):
        probabilities = rng.beta(1.0, 1.0, size=10)
        outcomes = (rng.random((10, 12)) < probabilities[:, None]).reshape(-1)
        labels = np.repeat(np.arange(10), 12)
        ours = clustered_rate(outcomes.tolist(), labels.tolist(), resamples=300)
        plain = wilson(int(outcomes.sum()), len(outcomes))
        covered["clustered"] += ours.low <= 0.5 <= ours.high
        covered["wilson"] += plain.low <= 0.5 <= plain.high
    assert covered["clustered"] >= 0.85 * sets
    assert covered["wilson"] <= 0.75 * sets


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    a = [True] * 10 + [False] * 3 + [True] * 5 + [False] * 20
    b = [False] * 10 + [True] * 3 + [True] * 5 + [False] * 20
    test = mcnemar_exact(a, b)
    assert (test["a_only"], test["b_only"], test["both"], test["neither"]) == (10, 3, 5, 20)
    assert test["p_value"] == pytest.approx(scipy_stats.binomtest(10, 13, 0.5).pvalue, rel=1e-12)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    assert mcnemar_exact([True] * 10, [False] * 10)["p_value"] == pytest.approx(2 * 0.5 ** 10)


def test_paired_comparison_difference_and_its_interval():
    a = [True] * 20 + [False] * 20
    b = [False] * 40
    clusters = [i // 5 for i in range(40)]
    comparison = paired_comparison(a, b, clusters, cluster_field="concept")
    assert comparison.difference.value == pytest.approx(0.5)
    assert comparison.difference.low <= 0.5 <= comparison.difference.high
    assert comparison.difference.clusters == 8
    assert comparison.a.value == 0.5 and comparison.b.value == 0.0
    again = type(comparison).from_json(comparison.to_json())
    assert again == comparison
    same = paired_comparison(a, a, clusters)
    assert (same.difference.low, same.difference.high, same.p_value) == (0.0, 0.0, 1.0)


def test_contrast_p_values_reject_a_true_null_at_about_their_level():
    """200 data sets where both groups come from one distribution: the one-sided p-value is below 0.05 in about
    5% of them (binomial 99.9% bounds for 200 draws at 0.05: 2 to 22). A p-value computed with the wrong tail
    (x >= y) or without the +1 rejects in 100% or 0% of them."""
    rng = np.random.default_rng(1)
    rejected = 0
    for _ in range(200):
        x = rng.normal(size=(30, 1))
        y = rng.normal(size=(25, 1))
        rejected += cluster_bootstrap_contrast(x, y, resamples=400, seed=int(rng.integers(1 << 30))).p_value[0] < 0.05
    assert 2 <= rejected <= 22


def test_contrast_finds_a_shift_and_keeps_its_shape():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3)) + np.array([1.0, 0.0, -1.0])
    y = rng.normal(size=(40, 3))
    contrast = cluster_bootstrap_contrast(x, y, [i // 4 for i in range(40)], [i // 4 for i in range(40)],
                                          cluster_field="concept")
    assert contrast.p_value[0] < 0.01 and contrast.p_value[2] > 0.9
    assert all(lo <= m <= hi for lo, m, hi in zip(contrast.ci_low, contrast.mean, contrast.ci_high))
    assert (contrast.clusters_x, contrast.clusters_y) == (10, 10)
    assert Contrast.from_json(contrast.to_json()) == contrast
    with pytest.raises(ValueError):
        cluster_bootstrap_contrast(x, y[:, :2])


def test_paired_contrast_is_the_mean_paired_difference():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(20, 2))
    x = y + np.array([0.5, 0.0])  # a constant shift in column 0, none in column 1
    contrast = paired_bootstrap_contrast(x, y)
    assert contrast.mean == pytest.approx([0.5, 0.0], abs=1e-12)
    assert (contrast.ci_low[0], contrast.ci_high[0]) == pytest.approx((0.5, 0.5), abs=1e-12)
    # 20 pairs, each its own cluster, all shifted one way: the bootstrap says 1/2001, the sign test's floor 2^-20.
    assert contrast.p_value[0] == pytest.approx(1 / 2001) and contrast.p_value[1] == 1.0
    few = paired_bootstrap_contrast(x[:3], y[:3])
    assert few.p_floor == 0.125 and few.p_value[0] == 0.125  # three clusters cannot say more than 1/8


def test_two_group_contrast_floor_is_the_exact_permutation_minimum():
    """Two toxic concepts all above three benign ones: no test on 5 clusters can give less than 1 / C(5, 2)."""
    contrast = cluster_bootstrap_contrast([[1.0]] * 4, [[0.0]] * 6, ["a", "a", "b", "b"], ["c", "c", "d", "d", "e", "e"])
    assert contrast.p_floor == pytest.approx(0.1) and contrast.p_value == [pytest.approx(0.1)]


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        holm([1.5])


def test_mean_t_interval_matches_scipy():
    values = [0.61, 0.55, 0.70, 0.66, 0.58]
    estimate = mean_t_interval(values)
    low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-12)
    single = mean_t_interval([0.4])
    assert single.value == 0.4 and single.low is None and "one value" in single.method


def test_cohen_kappa_by_hand():
    # observed 0.75; both say yes 3/4 and 2/4: expected 0.75 * 0.5 + 0.25 * 0.5 = 0.5; kappa = 0.25 / 0.5
    assert cohen_kappa([1, 0, 1, 1], [1, 0, 0, 1]) == {"n": 4, "agreement": 0.75, "kappa": 0.5}
    assert cohen_kappa([True] * 3, [True] * 3)["kappa"] is None
    assert cohen_kappa([True, False], [False, True])["kappa"] == pytest.approx(-1.0)


def test_estimate_round_trip():
    estimate = clustered_rate([True, False, True], ["a", "a", "b"])
    assert Estimate.from_json(estimate.to_json()) == estimate
    assert math.isfinite(estimate.low) and str(estimate).startswith("0.667")
