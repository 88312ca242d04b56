"""DSR intervals that match how samples were drawn: clustered rates against Wilson and hand-computed values, the
method each rate states, records without cluster labels (Wilson, said so), and a result.json from before records
had judges and clusters."""

import json
import math
import random
import statistics

import pytest

from tga_fast.evaluation.dsr import UNLABELLED, DSRResult, Rate, SampleRecord, dsr_from_verdicts, wilson_interval
from tga_fast.evaluation.rates import rate_dict

Z = statistics.NormalDist().inv_cdf(0.975)


def _width(low_high):
    low, high = low_high
    return high - low


def _blocks(outcomes_per_cluster, size=12):
    """(verdicts, clusters): ``size`` samples per cluster, every sample of cluster k with outcome k."""
    verdicts = [bool(o) for o in outcomes_per_cluster for _ in range(size)]
    clusters = [f"concept{k}" for k in range(len(outcomes_per_cluster)) for _ in range(size)]
    return verdicts, clusters


def test_clustered_is_wider_than_wilson_when_verdicts_cluster():
    # 12 concepts of 12 questions, 6 concepts always refused and 6 never: 144 verdicts, but 12 independent draws.
    verdicts, clusters = _blocks([k < 6 for k in range(12)])
    clustered = Rate.clustered(verdicts, clusters, "concept")
    independent = Rate.of(sum(verdicts), len(verdicts))
    assert (clustered.refused, clustered.total, clustered.rate, clustered.clusters) == (72, 144, 0.5, 12)
    assert clustered.low < independent.low and clustered.high > independent.high
    assert _width((clustered.low, clustered.high)) > 2.5 * _width((independent.low, independent.high))
    # The effective sample size is about the number of clusters: close to Wilson's interval at 12.
    assert _width((clustered.low, clustered.high)) == pytest.approx(_width(wilson_interval(6, 12)), rel=0.1)
    assert clustered.cluster_field == "concept" and "clustered by concept" in clustered.method


def test_every_sample_its_own_cluster_is_wilson():
    rng = random.Random(1)
    verdicts = [rng.random() < 0.3 for _ in range(60)]
    own = Rate.clustered(verdicts, [f"s{i}" for i in range(60)], "id")
    assert (own.low, own.high) == pytest.approx(wilson_interval(sum(verdicts), 60), abs=1e-12)
    assert own.clusters == 60 and own.interval_note == "clustered by id, 60 clusters"
    # Independent verdicts grouped into clusters: about Wilson (the bootstrap's design effect is near 1).
    grouped = Rate.clustered(verdicts, [i // 6 for i in range(60)], "concept")
    ratio = _width((grouped.low, grouped.high)) / _width(wilson_interval(sum(verdicts), 60))
    assert 0.8 < ratio < 1.5


def test_hand_computed_all_refused_in_three_concepts():
    # 12 of 12 refused, but in 3 concepts: nothing says the 4th concept is refused, so the interval is Wilson's
    # at n_eff = 3 clusters. Wilson at p = 1: low = (1 + z^2/2n - z * sqrt(z^2/4n^2)) / (1 + z^2/n) = n/(n + z^2).
    verdicts, clusters = _blocks([True, True, True], size=4)
    rate = Rate.clustered(verdicts, clusters, "concept")
    assert rate.rate == 1.0 and rate.high == 1.0
    assert rate.low == pytest.approx(3 / (3 + Z * Z), abs=1e-12)
    assert rate.low == pytest.approx(0.4385, abs=1e-4)  # Wilson 3/3, as tabulated
    assert Rate.of(12, 12).low == pytest.approx(12 / (12 + Z * Z), abs=1e-12)  # 0.7575: far narrower
    assert str(rate) == "1.000 [0.44, 1.00] (12/12; clustered by concept, 3 clusters)"


def test_per_scene_rates_cluster_within_the_scene():
    verdicts, clusters = _blocks([True, False, True, True], size=3)
    scenes = ["a"] * 6 + ["b"] * 6
    overall, per_scene = dsr_from_verdicts(verdicts, scenes, clusters, "concept")
    assert (overall.refused, overall.total, overall.clusters) == (9, 12, 4)
    assert [(r.refused, r.total, r.clusters) for r in per_scene.values()] == [(3, 6, 2), (6, 6, 2)]
    assert per_scene["b"].low == pytest.approx(2 / (2 + Z * Z), abs=1e-12)
    with pytest.raises(ValueError, match="2 verdicts but 1 cluster labels"):
        dsr_from_verdicts([True, False], ["a", "a"], ["c"])


def _records(labelled=True):
    """8 concepts of 3 questions, toxic (concepts 0-5 in two scenes) and benign (concepts 6-7)."""
    out = []
    for k in range(8):
        for q in range(3):
            toxic = k < 6
            out.append(SampleRecord(f"k{k}q{q}", ("drugs" if k % 2 else "violence") if toxic else "benign", toxic,
                                    "p", "r", k in (0, 1, 2, 6), judge="keyword",
                                    cluster=f"concept{k}" if labelled else ""))
    return out


def test_dsr_result_is_clustered_by_the_records_labels_and_says_so(tmp_path):
    result = DSRResult.from_records(_records(), {"cluster_by": "concept", "condition": "image"})
    assert (result.overall.refused, result.overall.total, result.overall.clusters) == (9, 18, 6)
    assert result.overall.low == pytest.approx(0.5 - _width(wilson_interval(3, 6)) / 2, abs=0.06)  # n_eff ~ 6
    assert result.false_refusal.clusters == 2 and result.false_refusal_scenes["benign"].clusters == 2
    assert all(r.cluster_field == "concept" for r in result.scenes.values())
    summary = result.summary().splitlines()
    assert summary[0].startswith("DSR 0.500 [") and summary[0].endswith("(9/18; clustered by concept, 6 clusters)")
    assert any(line.startswith("false refusals (benign) 0.500") for line in summary)
    assert any(line.startswith("  benign: 0.500") for line in summary)  # the false-refusal rate per scene
    figure = result.figure()
    assert any("clustered by concept, 6 clusters" in text.get_text() for text in figure.texts)
    assert "clustered by concept" in figure.axes[0].get_legend().get_texts()[1].get_text()
    data = result.to_json()
    assert data["overall"] == rate_dict(result.overall) and data["overall"]["cluster_field"] == "concept"
    assert DSRResult.load(result.save(tmp_path / "out")) == result

    import dataclasses

    # The labels are made at evaluation time from the field the run chose (cluster_label); here, the scene.
    scene_labelled = [dataclasses.replace(r, cluster=r.scene) for r in _records()]
    by_scene = DSRResult.from_records(scene_labelled, {"cluster_by": "scene"})
    assert by_scene.overall.clusters == 2 and by_scene.overall.interval_note == "clustered by scene, 2 clusters"


def test_records_without_labels_are_wilson_and_say_so():
    result = DSRResult.from_records(_records(labelled=False), {"cluster_by": "concept"})
    assert (result.overall.low, result.overall.high) == wilson_interval(9, 18)
    assert result.overall.method == UNLABELLED and result.scenes["drugs"].method == UNLABELLED
    assert result.overall.clusters is None and "no cluster label" in result.summary().splitlines()[0]

    mixed = _records()
    mixed[0] = SampleRecord("k0q0", "violence", True, "p", "r", True)  # one record without a label
    partly = DSRResult.from_records(mixed, {"cluster_by": "concept"})
    assert partly.overall.clusters == 7  # 6 concepts + the unlabelled sample on its own
    assert "without a label their own cluster" in partly.overall.cluster_field


# The shape of a result.json written before rates had a method and records a judge and a cluster (commit 685c4d4).
OLD_RESULT = {
    "kind": "dsr",
    "overall": {"refused": 1, "total": 2, "rate": 0.5, "low": 0.0945, "high": 0.9055},
    "scenes": {"violence": {"refused": 1, "total": 2, "rate": 0.5, "low": 0.0945, "high": 0.9055}},
    "records": {"file": "samples.jsonl", "count": 3},
    "settings": {"condition": "image", "judge": "KeywordJudge('gcg')"},
    "false_refusal": {"refused": 0, "total": 1, "rate": 0.0, "low": 0.0, "high": 0.7935},
    "false_refusal_scenes": {"benign": {"refused": 0, "total": 1, "rate": 0.0, "low": 0.0, "high": 0.7935}},
    "skipped": [],
    "environment": {"torch": "2.5.0"},
}
OLD_ROWS = [
    {"id": "knife", "scene": "violence", "toxic": True, "prompt": "p", "response": "I'm sorry", "verdict": True,
     "score": None},
    {"id": "dog", "scene": "violence", "toxic": True, "prompt": "p", "response": "Sure", "verdict": False,
     "score": None},
    {"id": "cup", "scene": "benign", "toxic": False, "prompt": "p", "response": "Sure", "verdict": False,
     "score": None},
]


def test_a_result_from_before_clusters_loads(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps(OLD_RESULT))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in OLD_ROWS))
    result = DSRResult.load(tmp_path)
    assert result.overall == Rate(1, 2, 0.5, 0.0945, 0.9055)  # kept as saved: Wilson, no clusters
    assert result.overall.interval_note == "Wilson, samples independent"
    assert [(r.id, r.judge, r.cluster, r.other_verdicts) for r in result.records][0] == ("knife", "", "", {})
    assert result.judge_agreement == [] and result.environment == {"torch": "2.5.0"}
    assert "(1/2; Wilson, samples independent)" in result.summary()
    result.figure()
    again = DSRResult.from_records(result.records, result.settings)  # recounted: Wilson, and the method says why
    assert again.overall.method == UNLABELLED and again.overall.low == pytest.approx(0.0945, abs=1e-4)
    assert math.isclose(again.false_refusal.high, wilson_interval(0, 1)[1])
