"""The controls of analyses 3B and 3D (METHOD.md 3, "Controls"), and the paired contrast both report.

- :func:`control_positions`: 3B's control span, as many non-toxic tokens of the user's content as there are toxic
  ones, seeded per sample id (a contiguous run when one exists, else a random set).
- :func:`batch_mismatch_partners`: 3D's mismatched pairs inside one batch, a seeded derangement that pairs an image with
  the text of another concept wherever the batch allows it (texts of the previous batch, carried, fill in).
- :func:`paired_contrast`: the per-column paired cluster-bootstrap contrast of :mod:`tga_fast.stats` with Holm's
  adjustment over the sweep, as the JSON dict the results store; :func:`columns_above` and :func:`describe_runs`
  turn it into the verdict's numbers and words.

Everything here works on host values (lists, CPU tensors): the analyses copy one batch's masks to the host once and
choose there, so there is no per-sample device sync.

    positions = control_positions(candidates[i], size=7, key=sample.id, seed=0)   # list of 7 ints, or None
    partners = batch_mismatch_partners(["cat", "dog", "dog"], ["cow"], key="a/b/c")  # [1, 3, 0]: no own text, a cow for a dog
"""

from __future__ import annotations

import random
from typing import Hashable, Sequence

import torch

from tga_fast.stats import ALPHA, holm, paired_bootstrap_contrast

__all__ = ["ALPHA", "batch_mismatch_partners", "columns_above", "control_positions", "describe_runs", "paired_contrast",
           "power_note"]



def _rng(seed: int, key: str) -> random.Random:
    # A string seed goes through SHA-512 in random.Random: the same (seed, key) draws the same on every machine and
    # Python process (hash() of a str is salted per process, so it cannot be the seed).
    return random.Random(f"{int(seed)}/{key}")


def control_positions(candidates: torch.Tensor, size: int, *, key: str, seed: int = 0) -> list[int] | None:
    """Sorted positions of ``size`` tokens chosen among ``candidates`` (bool ``[T]``, on the host), or None when
    fewer than ``size`` are candidates (or ``size`` < 1).

    A contiguous run of ``size`` candidate positions is preferred (a control that, like a toxic phrase, is one
    stretch of words); the run's start is drawn uniformly among all runs that fit. Without any run, a uniform random
    set of ``size`` candidates. The draw depends on ``(seed, key)`` only (pass the sample id), so a sample gets the
    same control whatever batch or padding it is run with, when ``candidates`` is indexed from its first token.
    """
    if candidates.dim() != 1 or candidates.dtype != torch.bool:
        raise ValueError(f"candidates must be bool [T], got {candidates.dtype} {tuple(candidates.shape)}")
    available = int(candidates.sum())
    if size < 1 or available < size:
        return None
    rng = _rng(seed, key)
    counts = torch.nn.functional.pad(candidates.to(torch.int64).cumsum(0), (1, 0))  # [T+1], counts[t] = # before t
    run_starts = ((counts[size:] - counts[:-size]) == size).nonzero()[:, 0].tolist()  # windows all candidates
    if run_starts:
        start = rng.choice(run_starts)
        return list(range(start, start + size))
    return sorted(rng.sample(candidates.nonzero()[:, 0].tolist(), size))


def batch_mismatch_partners(labels: Sequence[Hashable], carried_labels: Sequence[Hashable] = (), *, key: str,
                      seed: int = 0) -> list[int | None]:
    """For each image of a batch, the text it is mismatched with: an index into the pool
    ``[the batch's texts 0..b-1, then the carried texts b..b+m-1]`` (the previous batch's, say), or None.

    Args:
        labels: the cluster label (concept) of each of the batch's ``b`` samples; text ``i`` is image ``i``'s own.
        carried_labels: the labels of ``m`` texts of other samples that may be used too.
        key: what makes the draw of this batch its own (its sample ids joined); with ``seed`` it fixes the draw.

    With ``b >= 2`` the batch's texts are first dealt by a derangement (no image gets its own text, each text goes
    to one image): the samples are grouped by label (groups and members in a seeded random order) and each takes
    the text ``s`` places further round the circle, ``s`` the largest group's size (1 when the whole batch is one
    group). This gives every image a text of another label whenever no label holds more than half the batch, and
    otherwise the fewest same-label pairs possible. Images left with a same-label text then take, where there is
    one, an unused carried text of another label. With ``b == 1`` the image takes a carried text (another label
    preferred); with nothing carried it gets None.
    """
    b, m = len(labels), len(carried_labels)
    rng = _rng(seed, key)
    partners: list[int | None] = [None] * b
    if b >= 2:
        groups: dict = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        members = list(groups.values())
        rng.shuffle(members)
        for group in members:
            rng.shuffle(group)
        order = [i for group in members for i in group]  # one label's samples side by side round the circle
        largest = max(len(group) for group in members)
        shift = largest if largest < b else 1
        for p, i in enumerate(order):
            partners[i] = order[(p + shift) % b]
    unused = list(range(m))
    rng.shuffle(unused)
    for i in range(b):
        if partners[i] is not None and labels[partners[i]] != labels[i]:
            continue
        other = [c for c in unused if carried_labels[c] != labels[i]]
        if other:
            chosen = other[0]
        elif partners[i] is None and unused:
            chosen = unused[0]  # one image alone in its batch: a same-label text of another sample beats none
        else:
            continue
        unused.remove(chosen)
        partners[i] = b + chosen
    return partners


def paired_contrast(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]], clusters: Sequence[Hashable], *,
                    cluster_field: str, seed: int = 0) -> dict:
    """Per column, ``x - y`` of paired rows (``[n, C]`` each) by :func:`tga_fast.stats.paired_bootstrap_contrast`
    (clusters of pairs resampled together; its p-values never below the sign test's ``2 ** -K`` for K clusters), as
    ``Contrast.to_json()`` plus ``p_holm``: Holm's adjustment over the ``C`` columns."""
    contrast = paired_bootstrap_contrast(x, y, clusters, cluster_field=cluster_field, seed=seed).to_json()
    contrast["p_holm"] = holm(contrast["p_value"])
    return contrast


def columns_above(contrast: dict | None, columns: Sequence[int], alpha: float = ALPHA) -> list[int]:
    """The ``columns`` (layers or blocks) where the contrast's Holm-adjusted p-value is below ``alpha``."""
    if contrast is None:
        return []
    return [c for c, p in zip(columns, contrast["p_holm"]) if p < alpha]


def power_note(contrast: dict, alpha: float = ALPHA) -> str:
    """``""``, or why no column could be significant at all: with K clusters a one-sided p-value is never below
    ``p_floor`` (:class:`tga_fast.stats.Contrast`), and Holm multiplies the smallest by the number of columns."""
    columns = len(contrast["p_value"])
    if columns * contrast.get("p_floor", 0.0) < alpha:
        return ""
    return (f"; with {contrast['clusters_x']} clusters no test can reach it: the smallest possible p is "
            f"{contrast['p_floor']:.2g}, times {columns} under Holm")


def describe_runs(values: Sequence[int]) -> str:
    """Integers as runs in words: ``[0, 1, 2, 4, 6, 7] -> "0-2, 4 and 6-7"``; ``[] -> ""``."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    words = [f"{a}-{b}" if a != b else f"{a}" for a, b in runs]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
