"""Refusal rates with their 95% intervals: the one :class:`Rate` (Wilson for independent samples, or clustered:
:func:`tga_fast.stats.clustered_rate`), its JSON form (:func:`rate_dict`) and the per-scene count of verdicts.

Why clustered: an evaluation set asks several paraphrased questions about one image, or shows several images of one
concept; their verdicts move together, so ``n`` verdicts carry less information than ``n`` independent ones and
Wilson's interval at ``n`` is too narrow. A clustered rate says how it was made in ``method`` and, in short, in
:attr:`Rate.interval_note` (``"clustered by concept, 8 clusters"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

__all__ = ["Rate", "dsr_from_verdicts", "rate_dict", "wilson_interval"]

Z95 = 1.9599639845400536  # the standard normal's 97.5% quantile, statistics.NormalDist().inv_cdf(0.975)


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; ``(0.0, 1.0)`` when ``total`` is 0.

    center = (p + z^2/2n) / (1 + z^2/n),  half width = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    """
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got successes={successes}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p, n, z2 = successes / total, total, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 or 1 a bound is exactly 0 or 1; rounding would put it a hair inside and exclude p itself.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == total else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """``refused`` of ``total`` (``rate`` None when ``total`` is 0) with a 95% interval [low, high] made by
    ``method`` (``"wilson"``: independent samples; else :func:`tga_fast.stats.clustered_rate`'s description) over
    ``clusters`` clusters of ``cluster_field`` (None: not clustered)."""

    refused: int
    total: int
    rate: float | None
    low: float
    high: float
    method: str = "wilson"
    clusters: int | None = None
    cluster_field: str | None = None

    @classmethod
    def of(cls, refused: int, total: int) -> "Rate":
        """Wilson's interval: the samples are independent."""
        low, high = wilson_interval(refused, total)
        return cls(int(refused), int(total), refused / total if total else None, low, high)

    @classmethod
    def clustered(cls, verdicts: Sequence[bool], clusters: Sequence[Hashable], field: str = "concept") -> "Rate":
        """The rate of ``verdicts`` with an interval that respects ``clusters`` (one label per verdict, what
        ``field`` names): :func:`tga_fast.stats.clustered_rate`."""
        from tga_fast.stats import clustered_rate

        verdicts = [bool(v) for v in verdicts]
        if not verdicts:
            return cls(0, 0, None, 0.0, 1.0, f"clustered by {field}", 0, field)
        estimate = clustered_rate(verdicts, list(clusters), cluster_field=field)
        return cls(sum(verdicts), len(verdicts), estimate.value, estimate.low, estimate.high, estimate.method,
                   estimate.clusters, field)

    @property
    def interval_note(self) -> str:
        """How the interval was made, in a few words: ``"clustered by concept, 8 clusters"``, ``"Wilson, samples
        independent"``, or the full ``method`` when it is neither (a rate built by other means says its own)."""
        if self.cluster_field is not None:
            return f"clustered by {self.cluster_field}, {self.clusters} cluster" + ("" if self.clusters == 1 else "s")
        if self.method == "wilson":
            return "Wilson, samples independent"
        return self.method

    def __str__(self) -> str:
        """``0.417 [0.12, 0.77] (60/144; clustered by concept, 8 clusters)``."""
        if self.rate is None:
            return f"n/a (0 samples; {self.interval_note})"
        return f"{self.rate:.3f} [{self.low:.2f}, {self.high:.2f}] ({self.refused}/{self.total}; {self.interval_note})"


def rate_dict(rate: Rate, count: str = "refused") -> dict:
    """``rate`` as a JSON dict ``{"refused", "total", "rate", "low", "high", "method", "clusters",
    "cluster_field"}``; ``count`` renames the counted outcome ("correct" for an accuracy)."""
    data = {"refused": rate.refused, "total": rate.total, "rate": rate.rate, "low": rate.low, "high": rate.high,
            "method": rate.method, "clusters": rate.clusters, "cluster_field": rate.cluster_field}
    if count != "refused":
        data = {(count if key == "refused" else key): value for key, value in data.items()}
    return data


def dsr_from_verdicts(verdicts: Sequence[bool], scenes: Sequence[str], clusters: Sequence[Hashable] | None = None,
                      field: str = "concept") -> tuple[Rate, dict[str, Rate]]:
    """``(overall, per scene)`` refusal rates of aligned verdicts (True = refused) and scene names; scenes sorted.
    With ``clusters`` (one label per verdict, what ``field`` names) every interval is clustered
    (:meth:`Rate.clustered`); without, Wilson's."""
    if len(verdicts) != len(scenes):
        raise ValueError(f"{len(verdicts)} verdicts but {len(scenes)} scenes")
    if clusters is not None and len(clusters) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts but {len(clusters)} cluster labels")
    rows: dict[str, list[int]] = {}
    for i, scene in enumerate(scenes):
        rows.setdefault(scene, []).append(i)
    verdicts = [bool(v) for v in verdicts]

    def rate(indices: Sequence[int]) -> Rate:
        chosen = [verdicts[i] for i in indices]
        if clusters is None:
            return Rate.of(sum(chosen), len(chosen))
        return Rate.clustered(chosen, [clusters[i] for i in indices], field)

    overall = rate(range(len(verdicts)))
    return overall, {scene: rate(rows[scene]) for scene in sorted(rows)}
