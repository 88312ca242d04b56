"""The statistics every printed number rests on, in one place (``scipy.stats`` where it has the test).

- :func:`wilson`: a single rate of independent samples (Wilson score interval).
- :func:`clustered_rate`: a rate whose samples come in clusters (paraphrased questions about one image, images of
  one concept): the Wilson interval at the Kish effective sample size, the design effect estimated by a cluster
  bootstrap. Never narrower than Wilson at the number of clusters when every outcome agrees.
- :func:`paired_comparison`: two conditions on the same samples (a knockout window against no knockout, checkpoint A
  against B): the exact McNemar test (a binomial test on the discordant pairs) and a paired cluster-bootstrap
  interval of the difference.
- :func:`cluster_bootstrap_contrast`: the difference of per-column means of two groups of rows (toxic minus benign
  refusal mass per layer), resampling clusters within each group, with one-sided bootstrap p-values.
- :func:`paired_bootstrap_contrast`: the same per column for paired rows (one sample's share on the toxic tokens
  and on a control span; one image's cosine with its own text and with another's), resampling clusters of pairs.
- :func:`mean_t_interval`: a mean across seeds with its Student t interval.
- :func:`holm`: Holm's step-down adjustment of the p-values of a sweep (over layers or windows).
- :func:`cohen_kappa`: the chance-corrected agreement of two judges on the same responses.

Every estimate is an :class:`Estimate`: the value, its interval, ``n``, the number of clusters and the method in
words, so that a result says how its interval was made. Bootstraps take a ``seed`` and are deterministic.

    from tga_fast.stats import clustered_rate, paired_comparison
    clustered_rate(verdicts, clusters=[s.concept for s in samples]).to_json()
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "RESAMPLES",
    "Contrast",
    "Estimate",
    "PairedComparison",
    "cluster_bootstrap_contrast",
    "clustered_rate",
    "cohen_kappa",
    "holm",
    "mcnemar_exact",
    "mean_t_interval",
    "paired_bootstrap_contrast",
    "paired_comparison",
    "wilson",
]

CONFIDENCE = 0.95
ALPHA = 0.05  # the family-wise level of every verdict the analyses and comparisons print
RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A value with its interval: ``value`` in ``[low, high]`` at ``confidence``, from ``n`` samples in
    ``clusters`` clusters (None: treated as independent), by ``method`` (in words). ``value`` is None when there
    is nothing to estimate (``n`` = 0)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    method: str
    clusters: int | None = None
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Estimate":
        return cls(**data)

    def __str__(self) -> str:
        if self.value is None:
            return "n/a (0 samples)"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _z(confidence: float) -> float:
    from scipy.stats import norm

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def _wilson_bounds(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score bounds of a proportion ``p`` at a (possibly fractional, effective) sample size ``n``."""
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    # At p = 0 or 1 a bound is exactly 0 or 1; rounding would put it a hair inside and exclude p itself.
    low = 0.0 if p <= 0.0 else max(0.0, center - half)
    high = 1.0 if p >= 1.0 else min(1.0, center + half)
    return low, high


def wilson(successes: int, total: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """The rate ``successes / total`` with its Wilson score interval (independent samples)."""
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got successes={successes}, total={total}")
    if total == 0:
        return Estimate(None, None, None, 0, "wilson", confidence=confidence)
    low, high = _wilson_bounds(successes / total, total, _z(confidence))
    return Estimate(successes / total, low, high, int(total), "wilson", confidence=confidence)


def _codes(clusters: Sequence[Hashable], n: int, name: str = "clusters") -> np.ndarray:
    """Integer codes ``[n]`` of the cluster labels (in first-seen order)."""
    if len(clusters) != n:
        raise ValueError(f"{name} has {len(clusters)} labels for {n} samples")
    index: dict = {}
    return np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)


def _cluster_weights(clusters: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, clusters]``: how often each cluster is drawn in each bootstrap resample (draws with
    replacement, as many as there are clusters)."""
    return rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=resamples).astype(np.float64)


def _resampled_means(values: np.ndarray, codes: np.ndarray, resamples: int, rng) -> np.ndarray:
    """``[resamples, C]``: the mean of ``values [n, C]`` over each cluster-bootstrap resample (clusters drawn with
    replacement; every sample of a drawn cluster counts once per draw)."""
    count = int(codes.max()) + 1
    sums = np.zeros((count, values.shape[1]))
    np.add.at(sums, codes, values)
    sizes = np.bincount(codes, minlength=count).astype(np.float64)
    weights = _cluster_weights(count, resamples, rng)  # [R, K]
    return (weights @ sums) / (weights @ sizes)[:, None]


def clustered_rate(outcomes: Sequence[bool], clusters: Sequence[Hashable] | None = None, *,
                   cluster_field: str = "cluster", confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = 0) -> Estimate:
    """A rate of outcomes that come in clusters, with an interval that respects them.

    The interval is Wilson's at the Kish effective sample size ``n_eff = p(1-p) / var*``, where ``var*`` is the
    cluster-bootstrap variance of the rate (clusters resampled with replacement). With independent samples
    ``n_eff`` is about ``n`` and this is Wilson's interval; with outcomes shared by whole clusters it shrinks
    towards the number of clusters ``K``. ``n_eff`` is kept in ``[K, n]`` (a design effect cannot exceed the mean
    cluster size), and is ``K`` when the outcomes all agree (the bootstrap then has no variance to measure, and
    nothing says that the next cluster would agree).

    Args:
        outcomes: per sample, True = the counted outcome (refused).
        clusters: per sample, its cluster label (concept, scene, image, ...); None: every sample its own cluster
            (plain Wilson).
        cluster_field: what the labels are, for the method's description.
    """
    values = np.asarray([bool(o) for o in outcomes], dtype=np.float64)
    n = len(values)
    if clusters is None:
        return wilson(int(values.sum()), n, confidence=confidence)
    codes = _codes(clusters, n)
    if n == 0:
        return Estimate(None, None, None, 0, f"wilson, clustered by {cluster_field}", 0, confidence)
    k = int(codes.max()) + 1
    p = float(values.mean())
    if p in (0.0, 1.0) or k == n or k == 1:
        n_eff = float(k)
        how = ("all outcomes agree: n_eff = clusters" if p in (0.0, 1.0) else
               "one sample per cluster" if k == n else "one cluster: n_eff = 1")
    else:
        rng = np.random.default_rng(seed)
        # The bootstrap variance of a mean over K clusters is (K-1)/K of the unbiased one: undo that, which
        # matters when there are few clusters.
        variance = float(_resampled_means(values[:, None], codes, resamples, rng)[:, 0].var()) * k / (k - 1)
        n_eff = float(k) if variance <= 0 else min(max(p * (1 - p) / variance, float(k)), float(n))
        how = f"n_eff {n_eff:.1f} from a {resamples}-resample cluster bootstrap"
    low, high = _wilson_bounds(p, n_eff, _z(confidence))
    few = "; few clusters: approximate" if k < 10 else ""
    method = f"wilson at the effective sample size, clustered by {cluster_field} ({k} clusters; {how}{few})"
    return Estimate(p, low, high, n, method, k, confidence)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """The exact McNemar test of two paired binary outcomes: a two-sided binomial test of ``a_only`` successes in
    ``a_only + b_only`` discordant pairs at 1/2. Returns ``{"n", "both", "a_only", "b_only", "neither",
    "p_value"}`` (``p_value`` 1.0 without discordant pairs). It treats the pairs as independent."""
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} and {len(b)}")
    a = [bool(x) for x in a]
    b = [bool(x) for x in b]
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    both = sum(x and y for x, y in zip(a, b))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return {"n": len(a), "both": both, "a_only": a_only, "b_only": b_only, "neither": len(a) - both - discordant,
            "p_value": min(1.0, p_value)}


@dataclass(frozen=True)
class PairedComparison:
    """Two conditions on the same samples: rates of ``a`` and ``b``, ``difference`` = rate(a) - rate(b) with a
    paired cluster-bootstrap percentile interval, and the exact McNemar test (``mcnemar``: the counts and
    ``p_value``; it treats pairs as independent, while the interval respects the clusters)."""

    a: Estimate
    b: Estimate
    difference: Estimate
    mcnemar: dict

    @property
    def p_value(self) -> float:
        return self.mcnemar["p_value"]

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "difference": self.difference.to_json(),
                "mcnemar": dict(self.mcnemar)}

    @classmethod
    def from_json(cls, data: dict) -> "PairedComparison":
        return cls(Estimate.from_json(data["a"]), Estimate.from_json(data["b"]),
                   Estimate.from_json(data["difference"]), dict(data["mcnemar"]))


def paired_comparison(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[Hashable] | None = None, *,
                      cluster_field: str = "sample", confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                      seed: int = 0) -> PairedComparison:
    """Compares two binary outcomes on the same samples (``a[i]`` and ``b[i]`` are one sample under two
    conditions).

    The difference's interval is a percentile cluster bootstrap: clusters (each sample its own when ``clusters``
    is None) are drawn with replacement and both conditions of a drawn cluster go together, so the pairing and the
    clustering are both kept.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("paired_comparison needs at least one pair")
    labels = list(range(n)) if clusters is None else list(clusters)
    codes = _codes(labels, n)
    field = "sample" if clusters is None else cluster_field
    rate_a = clustered_rate(a, labels, cluster_field=field, confidence=confidence, resamples=resamples, seed=seed)
    rate_b = clustered_rate(b, labels, cluster_field=field, confidence=confidence, resamples=resamples, seed=seed)
    diff = np.asarray([float(bool(x)) - float(bool(y)) for x, y in zip(a, b)])
    value = float(diff.mean())
    k = int(codes.max()) + 1
    if np.all(diff == diff[0]):
        low = high = value
    else:
        draws = _resampled_means(diff[:, None], codes, resamples, np.random.default_rng(seed))[:, 0]
        low, high = (float(q) for q in np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2]))
    method = f"paired cluster bootstrap, percentile ({resamples} resamples, {k} clusters by {field})"
    difference = Estimate(value, low, high, n, method, k, confidence)
    return PairedComparison(rate_a, rate_b, difference, mcnemar_exact(a, b))


@dataclass(frozen=True)
class Contrast:
    """Per column (layer): ``mean`` of group x minus group y, its percentile interval ``[ci_low, ci_high]`` and
    the one-sided p-value of "the difference is not above zero" (``p_value``), with ``n_x``, ``n_y`` samples in
    ``clusters_x``, ``clusters_y`` clusters, by ``method``.

    ``p_value`` is the bootstrap's, raised to ``p_floor``: the smallest p-value an exact permutation test could
    give with these clusters (``2**-K`` for K clusters of pairs, ``1 / C(K_x + K_y, K_x)`` for two groups). When
    every cluster points one way no bootstrap resample crosses zero, and the bootstrap p-value is
    ``1 / (resamples + 1)`` whatever the number of clusters: without the floor 3 clusters would look as sure as
    300."""

    mean: list
    ci_low: list
    ci_high: list
    p_value: list
    n_x: int
    n_y: int
    clusters_x: int
    clusters_y: int
    method: str
    confidence: float = CONFIDENCE
    p_floor: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Contrast":
        return cls(**data)


def cluster_bootstrap_contrast(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]],
                               x_clusters: Sequence[Hashable] | None = None,
                               y_clusters: Sequence[Hashable] | None = None, *, cluster_field: str = "sample",
                               confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                               seed: int = 0) -> Contrast:
    """The per-column difference of means of two independent groups of rows, ``x [n_x, C]`` minus ``y [n_y, C]``
    (toxic minus benign refusal mass per layer), with a stratified cluster bootstrap: clusters are drawn with
    replacement within each group. ``p_value[c]`` = (1 + #resamples with difference <= 0) / (1 + resamples), a
    one-sided test of "x is not above y" in column c (feed a sweep's p-values to :func:`holm`), never below the
    exact permutation floor (:class:`Contrast`).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 2 or ys.ndim != 2 or xs.shape[1] != ys.shape[1] or not len(xs) or not len(ys):
        raise ValueError(f"x and y must be non-empty [n, C] rows with one C, got {xs.shape} and {ys.shape}")
    x_codes = _codes(list(range(len(xs))) if x_clusters is None else list(x_clusters), len(xs), "x_clusters")
    y_codes = _codes(list(range(len(ys))) if y_clusters is None else list(y_clusters), len(ys), "y_clusters")
    rng = np.random.default_rng(seed)
    draws = _resampled_means(xs, x_codes, resamples, rng) - _resampled_means(ys, y_codes, resamples, rng)  # [R, C]
    mean = xs.mean(0) - ys.mean(0)
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    kx, ky = int(x_codes.max()) + 1, int(y_codes.max()) + 1
    floor = 1.0 / math.comb(kx + ky, kx)  # one group's clusters all above the other's: an exact permutation test
    p_value = np.maximum((1 + (draws <= 0).sum(0)) / (1 + resamples), floor)
    method = (f"stratified cluster bootstrap, percentile ({resamples} resamples; clusters by {cluster_field}: "
              f"{kx} and {ky})")
    return Contrast(mean.tolist(), low.tolist(), high.tolist(), p_value.tolist(), len(xs), len(ys), kx, ky, method,
                    confidence, floor)


def paired_bootstrap_contrast(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]],
                              clusters: Sequence[Hashable] | None = None, *, cluster_field: str = "sample",
                              confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Contrast:
    """The per-column mean of paired differences ``x [n, C] - y [n, C]`` (row i of both is one sample under two
    conditions), with a percentile cluster bootstrap that draws clusters of pairs with replacement (both members of
    a pair go together). ``p_value[c]``: one-sided, "x is not above y" in column c, as in
    :func:`cluster_bootstrap_contrast`."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 2 or xs.shape != ys.shape or not len(xs):
        raise ValueError(f"x and y must be non-empty [n, C] rows of one shape, got {xs.shape} and {ys.shape}")
    n = len(xs)
    codes = _codes(list(range(n)) if clusters is None else list(clusters), n)
    diff = xs - ys
    draws = _resampled_means(diff, codes, resamples, np.random.default_rng(seed))  # [R, C]
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    k = int(codes.max()) + 1
    floor = 0.5 ** k  # every cluster's difference positive: an exact sign-flip test
    p_value = np.maximum((1 + (draws <= 0).sum(0)) / (1 + resamples), floor)
    method = f"paired cluster bootstrap, percentile ({resamples} resamples; {k} clusters by {cluster_field})"
    return Contrast(diff.mean(0).tolist(), low.tolist(), high.tolist(), p_value.tolist(), n, n, k, k, method,
                    confidence, floor)


def mean_t_interval(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Estimate:
    """The mean of ``values`` (one per seed, say) with its Student t interval (``n - 1`` degrees of freedom);
    with one value the interval is unbounded (None, None) and the method says so."""
    from scipy.stats import t

    data = np.asarray(list(values), dtype=np.float64)
    n = len(data)
    if n == 0:
        return Estimate(None, None, None, 0, "t interval", confidence=confidence)
    mean = float(data.mean())
    if n == 1:
        return Estimate(mean, None, None, 1, "t interval: one value, no interval", confidence=confidence)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * float(data.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, f"t interval ({n - 1} degrees of freedom)",
                    confidence=confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (reject hypothesis i at level alpha when ``adjusted[i] <= alpha``);
    controls the family-wise error over the whole sweep. Order is kept."""
    p = [float(v) for v in p_values]
    if any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Agreement of two binary judges on the same items: ``{"n", "agreement", "kappa"}``, Cohen's kappa
    ``(p_o - p_e) / (1 - p_e)``; ``kappa`` is None when chance agreement is 1 (both judges constant and equal)."""
    if len(a) != len(b):
        raise ValueError(f"the judges gave {len(a)} and {len(b)} verdicts")
    n = len(a)
    if n == 0:
        return {"n": 0, "agreement": None, "kappa": None}
    a = [bool(x) for x in a]
    b = [bool(x) for x in b]
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if expected >= 1.0 else (observed - expected) / (1 - expected)
    return {"n": n, "agreement": observed, "kappa": kappa}
