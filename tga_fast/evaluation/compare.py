"""Paired comparison of two DSR results on the same samples (two conditions, two checkpoints): ``compare_dsr``.

Two results that share sample ids share the samples' difficulty, so their verdicts are compared pair by pair: the
exact McNemar test on the discordant pairs and a paired cluster-bootstrap interval of the difference
(:func:`tga_fast.stats.paired_comparison`), overall and per scene with Holm's adjustment over scenes, and the same
for false refusals when both results have benign samples. Samples are matched by id; an id in one result only is
counted and listed, never dropped silently.

Sign convention: ``overall``, ``scenes`` and ``false_refusal`` hold :class:`tga_fast.stats.PairedComparison` dicts,
whose ``a`` and ``b`` are the rates of A and B and whose ``difference`` is A minus B (the stats module's order),
plus ``b_minus_a`` (``value``, ``low``, ``high``): the change from A to B, which the verdict and the figure print
as ``B - A``.

    comparison = compare_dsr(DSRResult.load("out/baseline"), DSRResult.load("out/tga"), names=("baseline", "tga"))
    print(comparison.verdict)
    comparison.save("out/baseline-vs-tga")   # result.json, samples.jsonl (paired verdicts), figure.png
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Hashable, Sequence

from tga_fast.evaluation.dsr import DSRResult, SampleRecord
from tga_fast.evaluation.rates import rate_dict
from tga_fast.results import Result
from tga_fast.stats import ALPHA  # the level a difference must reach (McNemar, Holm per scene) to be significant

__all__ = ["ALPHA", "DSRComparison", "compare_dsr"]

logger = logging.getLogger(__name__)

# Settings whose difference between A and B changes what a difference of rates means.
_COMPARED_SETTINGS = (("judge", "judges"), ("condition", "conditions"), ("with_retrieved", "with_retrieved settings"),
                      ("cluster_by", "cluster fields"))


@dataclass
class DSRComparison(Result):
    """A paired comparison of DSR results A and B (see the module docstring for the sign convention).

    Fields:
        a, b: ``{"name", "settings", "toxic", "benign", "dsr"}`` of each result (``dsr``: its own overall rate).
        cluster_by: what the cluster labels of the intervals are (a sample field, with a note when some samples
            are their own cluster).
        n_shared: toxic samples in both results (the DSR pairs).
        only_a, only_b: ids in one result only (toxic or benign), in no comparison.
        excluded: ``{"id", "reason"}`` of shared ids left out of every comparison (toxic in one result, benign in
            the other).
        overall: the :class:`~tga_fast.stats.PairedComparison` dict of the shared toxic samples, plus
            ``significant`` (McNemar p below :data:`ALPHA` and the clustered interval excludes 0).
        scenes: per scene (A's scene names) the same, with ``p_holm`` (McNemar p adjusted over scenes) deciding
            ``significant``.
        false_refusal: the same of the shared benign samples, or None when they share none.
        warnings: what makes the comparison less clean (different judges, conditions or cluster fields; labels
            or scenes that disagree; unshared ids).
        samples: per shared sample ``{"id", "scene", "toxic", "cluster", "verdict_a", "verdict_b"}`` (saved as
            ``samples.jsonl``; ``cluster`` "" when the sample is its own cluster).
        verdict: one sentence on the DSR.
    """

    kind = "dsr_comparison"
    samples_field = "samples"

    a: dict
    b: dict
    cluster_by: str
    n_shared: int
    only_a: list[str]
    only_b: list[str]
    overall: dict
    scenes: dict[str, dict]
    false_refusal: dict | None
    warnings: list[str]
    samples: list[dict]
    verdict: str
    excluded: list[dict] = field(default_factory=list)

    def figure(self):
        """Paired bars of A and B per scene and overall with their clustered intervals, and the difference B - A
        with its interval (a ``matplotlib.figure.Figure``)."""
        from tga_fast.evaluation.plots import comparison_figure

        return comparison_figure(self)

    def summary(self) -> str:
        """The verdict, then each scene and the false refusals, and the warnings, one a line."""
        name_a, name_b = self.a["name"], self.b["name"]
        lines = [f"A = {name_a}", f"B = {name_b}", self.verdict]
        for scene, row in self.scenes.items():
            lines.append(f"  {scene}: {_pair_line(row)}, Holm {_p(row['p_holm'])}")
        if self.false_refusal is not None:
            lines.append(f"false refusals (benign): {_pair_line(self.false_refusal)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def compare_dsr(a: DSRResult, b: DSRResult, *, cluster_by: str | None = None,
                names: Sequence[str] = ("A", "B"), seed: int = 0) -> DSRComparison:
    """Compares the verdicts of ``a`` and ``b`` on the samples they share (matched by id).

    Args:
        a, b: two DSR results, typically of one evaluation set under two conditions or checkpoints.
        cluster_by: what the intervals are clustered by. None: the records' own ``cluster`` labels (the field the
            runs chose; A's label wins where A and B disagree, with a warning). ``"scene"`` or ``"id"`` (no
            clustering) re-cluster from the records; the field the records were labelled by is accepted too.
        names: how A and B are called in the result (their folders, say).
        seed: of the cluster bootstraps.

    Raises:
        ValueError: a result repeats an id, ``cluster_by`` cannot be made from the records, or A and B share no
            toxic sample.
    """
    from tga_fast.stats import holm, paired_comparison

    name_a, name_b = (str(n) for n in names)
    by_id_a, by_id_b = _by_id(a.records, name_a), _by_id(b.records, name_b)
    only_a = [i for i in by_id_a if i not in by_id_b]
    only_b = [i for i in by_id_b if i not in by_id_a]
    warnings = _setting_warnings(a.settings, b.settings)
    pairs, excluded = [], []
    for sample_id, left in by_id_a.items():
        right = by_id_b.get(sample_id)
        if right is None:
            continue
        if left.toxic != right.toxic:
            excluded.append({"id": sample_id, "reason": f"toxic in {'A' if left.toxic else 'B'} only"})
            continue
        pairs.append((left, right))
    if excluded:
        warnings.append(f"{len(excluded)} shared ids are toxic in one result and benign in the other, in no "
                        f"comparison: {_ids(e['id'] for e in excluded)}")
    if only_a or only_b:
        listed = [f"{len(ids)} only in {side}" + (f" ({_ids(ids)})" if ids else "")
                  for side, ids in (("A", only_a), ("B", only_b))]
        warnings.append(f"samples in one result only are in no comparison: {listed[0]}, {listed[1]}")
    scene_mismatch = [left.id for left, right in pairs if left.scene != right.scene]
    if scene_mismatch:
        warnings.append(f"{len(scene_mismatch)} shared samples have different scenes in A and B; A's are used: "
                        f"{_ids(scene_mismatch)}")
    labels, cluster_field, label_warning = _pair_clusters(pairs, a.settings, b.settings, cluster_by)
    if label_warning:
        warnings.append(label_warning)
    for warning in warnings:
        logger.warning("compare %s with %s: %s", name_a, name_b, warning)

    toxic = [i for i, (left, _) in enumerate(pairs) if left.toxic]
    benign = [i for i, (left, _) in enumerate(pairs) if not left.toxic]
    if not toxic:
        raise ValueError(f"{name_a} and {name_b} share no toxic sample id: nothing to compare "
                         f"({len(by_id_a)} and {len(by_id_b)} samples)")

    def compare(indices: Sequence[int]) -> dict:
        row = paired_comparison([pairs[i][0].verdict for i in indices], [pairs[i][1].verdict for i in indices],
                                [labels[i] for i in indices], cluster_field=cluster_field, seed=seed).to_json()
        # The change from A to B, as the verdict and the figure print it (``difference`` is A - B).
        difference = row["difference"]
        row["b_minus_a"] = {"value": -difference["value"], "low": -difference["high"], "high": -difference["low"]}
        return row

    overall = compare(toxic)
    overall["significant"] = _significant(overall, overall["mcnemar"]["p_value"])
    by_scene: dict[str, list[int]] = {}
    for i in toxic:
        by_scene.setdefault(pairs[i][0].scene, []).append(i)
    scenes = {scene: compare(by_scene[scene]) for scene in sorted(by_scene)}
    # Holm over scenes: "some scene changed" is read off the sweep, so its family-wise error is what is controlled.
    for row, adjusted in zip(scenes.values(), holm([row["mcnemar"]["p_value"] for row in scenes.values()])):
        row["p_holm"] = adjusted
        row["significant"] = _significant(row, adjusted)
    false_refusal = compare(benign) if benign else None
    if false_refusal is not None:
        false_refusal["significant"] = _significant(false_refusal, false_refusal["mcnemar"]["p_value"])
    samples = [{"id": left.id, "scene": left.scene, "toxic": left.toxic,
                "cluster": label if isinstance(label, str) else "", "verdict_a": left.verdict,
                "verdict_b": right.verdict} for (left, right), label in zip(pairs, labels)]
    comparison = DSRComparison(
        a=_describe(a, name_a), b=_describe(b, name_b), cluster_by=cluster_field, n_shared=len(toxic),
        only_a=only_a, only_b=only_b, overall=overall, scenes=scenes,
        false_refusal=false_refusal, warnings=warnings, samples=samples, verdict="",
        excluded=excluded,
    )
    comparison.verdict = _verdict(comparison)
    return comparison


def _by_id(records: Sequence[SampleRecord], name: str) -> dict[str, SampleRecord]:
    """The records by id, in their order; a repeated id makes the pairing ambiguous (ValueError)."""
    out: dict[str, SampleRecord] = {}
    for record in records:
        if record.id in out:
            raise ValueError(f"{name} has sample id {record.id!r} twice: samples cannot be paired by id")
        out[record.id] = record
    return out


def _setting_warnings(a: dict, b: dict) -> list[str]:
    """A warning per setting that differs between A and B (a missing setting is unknown, not different)."""
    out = []
    for key, words in _COMPARED_SETTINGS:
        left, right = a.get(key), b.get(key)
        if left is not None and right is not None and left != right:
            out.append(f"A and B used different {words} ({left!r} vs {right!r}): the difference is partly theirs")
    return out


def _pair_clusters(pairs, settings_a: dict, settings_b: dict,
                   cluster_by: str | None) -> tuple[list[Hashable], str, str | None]:
    """``(labels, field, warning)``: one cluster label per pair, what they are, and a warning when A's and B's
    labels disagree.

    The labels come from the records of the side(s) labelled by the wanted field (``cluster_by``, else A's field):
    A's where both have one, B's where only B has one; a sample with neither is its own cluster (a tuple label,
    never equal to a string one). A result without ``cluster_by`` in its settings counts as labelled by any field.
    """
    from tga_fast.evaluation.data import CLUSTER_FIELDS

    if cluster_by is not None and cluster_by not in CLUSTER_FIELDS:
        raise ValueError(f"cluster_by must be one of {CLUSTER_FIELDS}, got {cluster_by!r}")
    if cluster_by == "id":  # every sample its own cluster: McNemar's and Wilson's assumption
        return [left.id for left, _ in pairs], "id", None
    if cluster_by == "scene":  # the records keep their scene, so this needs no label
        return [left.scene for left, _ in pairs], "scene", None
    field_a, field_b = settings_a.get("cluster_by"), settings_b.get("cluster_by")
    wanted = cluster_by or field_a or field_b or "concept"
    use_a, use_b = field_a in (None, wanted), field_b in (None, wanted)
    labels: list[Hashable] = []
    disagree = []
    unlabelled = 0
    for left, right in pairs:
        label_a, label_b = left.cluster if use_a else "", right.cluster if use_b else ""
        if label_a and label_b and label_a != label_b:
            disagree.append(left.id)
        label = label_a or label_b
        unlabelled += not label
        labels.append(label or ("own cluster", left.id))
    if cluster_by is not None and unlabelled == len(pairs):
        labelled = ", ".join(sorted({f for f in (field_a, field_b) if f})) or "nothing"
        raise ValueError(f"cluster_by {cluster_by!r}: the records carry no cluster labels by it (they are labelled "
                         f"by {labelled}); only 'scene' or 'id' can be made from the records, or evaluate again "
                         f"with --cluster-by {cluster_by}")
    field_name = wanted
    if unlabelled == len(pairs):
        field_name = "sample (the records carry no cluster label)"
    elif unlabelled:
        field_name = f"{wanted} ({unlabelled} samples without a label their own cluster)"
    warning = None
    if disagree:
        warning = (f"{len(disagree)} shared samples have different cluster labels in A and B; A's are used: "
                   f"{_ids(disagree)}")
    return labels, field_name, warning


def _describe(result: DSRResult, name: str) -> dict:
    """What the comparison keeps of one side: its name, settings, counts and its own overall DSR."""
    return {"name": name, "settings": dict(result.settings), "toxic": sum(r.toxic for r in result.records),
            "benign": sum(not r.toxic for r in result.records), "dsr": rate_dict(result.overall)}


def _significant(row: dict, p_value: float) -> bool:
    """Both tests agree: McNemar (pairs independent) below :data:`ALPHA` and the clustered interval excludes 0
    (McNemar alone overstates the evidence when verdicts cluster)."""
    difference = row["difference"]
    return p_value < ALPHA and (difference["low"] > 0 or difference["high"] < 0)


def _verdict(comparison: DSRComparison) -> str:
    """One sentence: who refuses more toxic requests, by how much (B - A, clustered interval), the test and the
    number of pairs, and what is in no comparison."""
    row = comparison.overall
    rate_a, rate_b = row["a"]["value"], row["b"]["value"]
    difference = row["difference"]
    change = _points(-difference["value"], -difference["high"], -difference["low"])  # B - A from A - B
    tail = (f"B - A = {change}, clustered by {comparison.cluster_by}, {_plural(difference['clusters'], 'cluster')}; "
            f"McNemar {_p(row['mcnemar']['p_value'])}, {comparison.n_shared} shared samples")
    if comparison.only_a or comparison.only_b:
        tail += f"; {len(comparison.only_a)} only in A and {len(comparison.only_b)} only in B, not compared"
    rates = f"{rate_b:.0%} vs {rate_a:.0%} ({tail})"
    if row["significant"]:
        return f"B refuses {'fewer' if difference['value'] > 0 else 'more'} toxic requests than A: {rates}"
    return f"no significant difference between B and A in refusing toxic requests: {rates}"


def _pair_line(row: dict) -> str:
    """``B 61% vs A 42%, B - A +19 points [+5, +33], McNemar p = 0.002`` of one comparison dict."""
    difference = row["difference"]
    return (f"B {row['b']['value']:.0%} vs A {row['a']['value']:.0%}, B - A "
            f"{_points(-difference['value'], -difference['high'], -difference['low'])}, "
            f"McNemar {_p(row['mcnemar']['p_value'])} ({_plural(difference['n'], 'pair')})")


def _points(value: float, low: float, high: float) -> str:
    """A difference of rates in percentage points: ``+19 points [+5, +33]`` (a rounded zero is ``+0``, never
    ``-0``)."""
    value, low, high = (round(100 * x) for x in (value, low, high))
    return f"{value:+d} points [{low:+d}, {high:+d}]"


def _p(p_value: float) -> str:
    """``p = 0.0021``, ``p = 0.51`` (two significant digits) or ``p < 0.001``."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _ids(ids, limit: int = 10) -> str:
    ids = list(ids)
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")
