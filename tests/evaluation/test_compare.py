"""Paired comparison of two DSR results (compare_dsr, tga-fast eval compare) on hand-built results: McNemar against
scipy's binomial test on the discordant counts, Holm over scenes, the sign of the difference, ids in one result
only, warnings on judges / conditions / cluster labels, re-clustering, and the CLI end to end."""

import json

import pytest
from scipy.stats import binomtest

from tga_fast.evaluation import DSRComparison, DSRResult, SampleRecord, compare_dsr
from tga_fast.stats import holm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 24 toxic samples s0..s23: both refuse s0-s5, neither s6-s12, only B s13-s22, only A s23.
# Scene: even ids "violence", odd "drugs"; concept c0..c5 (i % 6, so concepts nest in scenes).
REFUSED_A = set(range(0, 6)) | {23}
REFUSED_B = set(range(0, 6)) | set(range(13, 23))


def _record(i, refused, *, cluster=None, toxic=True, judge="keyword", sample_id=None, scene=None):
    return SampleRecord(sample_id or f"s{i}", scene or ("violence" if i % 2 == 0 else "drugs"), toxic, "p", "r",
                        refused, judge=judge, cluster=f"c{i % 6}" if cluster is None else cluster)


def _result(refused, *, extra=(), settings=None, n=24, **record_options):
    records = [_record(i, i in refused, **record_options) for i in range(n)] + list(extra)
    return DSRResult.from_records(records, {"cluster_by": "concept", "judge": "keyword", "condition": "image",
                                            **(settings or {})})


def _discordant(ids):
    """(A only, B only) refusals among sample numbers ``ids``."""
    return len([i for i in ids if i in REFUSED_A - REFUSED_B]), len([i for i in ids if i in REFUSED_B - REFUSED_A])


def test_mcnemar_is_the_binomial_test_on_the_discordant_pairs():
    comparison = compare_dsr(_result(REFUSED_A), _result(REFUSED_B))
    row = comparison.overall
    assert row["mcnemar"] == {"n": 24, "both": 6, "a_only": 1, "b_only": 10, "neither": 7,
                              "p_value": pytest.approx(binomtest(1, 11, 0.5).pvalue, abs=1e-12)}
    assert (row["a"]["value"], row["b"]["value"]) == (7 / 24, 16 / 24)
    # The stats module's order: difference = A - B; the verdict speaks of B - A.
    assert row["difference"]["value"] == pytest.approx(-9 / 24)
    assert row["difference"]["clusters"] == 6 and "6 clusters by concept" in row["difference"]["method"]
    assert row["difference"]["high"] < 0 and row["significant"]
    assert comparison.verdict.startswith("B refuses more toxic requests than A: 67% vs 29% (B - A = +38 points [")
    assert "clustered by concept, 6 clusters; McNemar p = 0.012, 24 shared samples)" in comparison.verdict
    assert comparison.n_shared == 24 and comparison.only_a == comparison.only_b == [] and comparison.warnings == []

    swapped = compare_dsr(_result(REFUSED_B), _result(REFUSED_A))
    assert swapped.overall["difference"]["value"] == pytest.approx(9 / 24)
    assert swapped.verdict.startswith("B refuses fewer toxic requests than A: 29% vs 67% (B - A = -38 points [")
    assert swapped.overall["mcnemar"]["p_value"] == row["mcnemar"]["p_value"]

    same = compare_dsr(_result(REFUSED_A), _result(REFUSED_A))
    assert same.verdict.startswith("no significant difference between B and A in refusing toxic requests: 29% vs "
                                   "29% (B - A = +0 points [+0, +0]")
    assert same.overall["mcnemar"]["p_value"] == 1.0 and not same.overall["significant"]


def test_scenes_are_compared_and_holm_adjusted():
    comparison = compare_dsr(_result(REFUSED_A), _result(REFUSED_B))
    assert list(comparison.scenes) == ["drugs", "violence"]
    raw = []
    for scene, parity in (("drugs", 1), ("violence", 0)):
        a_only, b_only = _discordant([i for i in range(24) if i % 2 == parity])
        row = comparison.scenes[scene]
        assert (row["mcnemar"]["a_only"], row["mcnemar"]["b_only"]) == (a_only, b_only)
        assert row["mcnemar"]["p_value"] == pytest.approx(binomtest(a_only, a_only + b_only, 0.5).pvalue, abs=1e-12)
        assert row["difference"]["clusters"] == 3 and row["difference"]["n"] == 12
        raw.append(row["mcnemar"]["p_value"])
    # Holm by hand for two p-values: the smaller times 2, the larger no lower than that.
    low, high = sorted(raw)
    expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    assert [row["p_holm"] for row in comparison.scenes.values()] == [pytest.approx(expected[p]) for p in raw]
    assert [row["p_holm"] for row in comparison.scenes.values()] == pytest.approx(holm(raw))
    assert all(row["p_holm"] >= row["mcnemar"]["p_value"] for row in comparison.scenes.values())
    assert all(row["significant"] == (row["p_holm"] < 0.05 and row["difference"]["high"] < 0)
               for row in comparison.scenes.values())
    assert "Holm p" in comparison.summary()


def test_ids_in_one_result_only_are_counted_and_listed():
    only_a = [_record(30, True, sample_id="extra-a")]
    only_b = [_record(31, False, sample_id="extra-b1"), _record(32, True, sample_id="extra-b2", toxic=False)]
    comparison = compare_dsr(_result(REFUSED_A, extra=only_a), _result(REFUSED_B, extra=only_b))
    assert comparison.only_a == ["extra-a"] and comparison.only_b == ["extra-b1", "extra-b2"]
    assert comparison.n_shared == 24 and len(comparison.samples) == 24
    assert comparison.false_refusal is None  # B's benign sample is not in A
    assert any("1 only in A (extra-a), 2 only in B (extra-b1, extra-b2)" in w for w in comparison.warnings)
    assert "1 only in A and 2 only in B, not compared" in comparison.verdict
    assert comparison.a["toxic"] == 25 and comparison.b["benign"] == 1


def test_different_judges_conditions_and_cluster_labels_are_warned():
    relabelled = [_record(i, i in REFUSED_B, cluster="other" if i == 0 else None, judge="llm") for i in range(24)]
    b = DSRResult.from_records(relabelled, {"cluster_by": "concept", "judge": "llm", "condition": "text"})
    comparison = compare_dsr(_result(REFUSED_A), b)
    warnings = " | ".join(comparison.warnings)
    assert "different judges ('keyword' vs 'llm')" in warnings and "different conditions ('image' vs 'text')" in warnings
    assert "1 shared samples have different cluster labels in A and B; A's are used: s0" in warnings
    assert comparison.samples[0] == {"id": "s0", "scene": "violence", "toxic": True, "cluster": "c0",
                                     "verdict_a": True, "verdict_b": True}
    assert comparison.overall["difference"]["clusters"] == 6  # A's labels: "other" is no cluster
    assert comparison.a["settings"]["judge"] == "keyword" and comparison.b["settings"]["condition"] == "text"

    by_scene = DSRResult.from_records([_record(i, i in REFUSED_B, cluster="violence" if i % 2 == 0 else "drugs")
                                       for i in range(24)], {"cluster_by": "scene"})
    mixed = compare_dsr(_result(REFUSED_A), by_scene)
    assert any("different cluster fields ('concept' vs 'scene')" in w for w in mixed.warnings)
    assert mixed.cluster_by == "concept" and mixed.overall["difference"]["clusters"] == 6


def test_cluster_by_reclusters_from_the_records_or_says_why_not():
    a, b = _result(REFUSED_A), _result(REFUSED_B)
    by_id = compare_dsr(a, b, cluster_by="id")
    assert by_id.cluster_by == "id" and by_id.overall["difference"]["clusters"] == 24
    assert by_id.overall["mcnemar"] == compare_dsr(a, b).overall["mcnemar"]  # McNemar ignores clusters
    assert compare_dsr(a, b, cluster_by="scene").overall["difference"]["clusters"] == 2
    assert compare_dsr(a, b, cluster_by="concept").overall == compare_dsr(a, b).overall
    with pytest.raises(ValueError, match="no cluster labels by it .*only 'scene' or 'id'"):
        compare_dsr(a, b, cluster_by="text")
    with pytest.raises(ValueError, match="cluster_by must be one of"):
        compare_dsr(a, b, cluster_by="colour")

    # Results saved before records had labels: every sample its own cluster, and the field says so.
    old_a, old_b = _result(REFUSED_A, cluster=""), _result(REFUSED_B, cluster="")
    old = compare_dsr(old_a, old_b)
    assert old.cluster_by == "sample (the records carry no cluster label)"
    assert old.overall["difference"]["clusters"] == 24 and all(row["cluster"] == "" for row in old.samples)
    half = compare_dsr(old_a, b)  # B's labels where A has none
    assert half.overall["difference"]["clusters"] == 6 and half.samples[0]["cluster"] == "c0"


def test_false_refusals_toxic_mismatches_and_bad_inputs():
    benign_a = [_record(40 + i, i < 1, toxic=False, sample_id=f"b{i}", scene="benign") for i in range(4)]
    benign_b = [_record(40 + i, i < 3, toxic=False, sample_id=f"b{i}", scene="benign") for i in range(4)]
    comparison = compare_dsr(_result(REFUSED_A, extra=benign_a), _result(REFUSED_B, extra=benign_b))
    fr = comparison.false_refusal
    assert (fr["a"]["value"], fr["b"]["value"], fr["mcnemar"]["b_only"]) == (0.25, 0.75, 2)
    assert fr["mcnemar"]["p_value"] == pytest.approx(binomtest(0, 2, 0.5).pvalue) and not fr["significant"]
    assert "false refusals (benign): B 75% vs A 25%" in comparison.summary()
    assert len(comparison.samples) == 28 and comparison.samples[-1]["toxic"] is False

    flipped = [_record(i, i in REFUSED_B, toxic=i != 3) for i in range(24)]
    mismatch = compare_dsr(_result(REFUSED_A), DSRResult.from_records(flipped, {"cluster_by": "concept"}))
    assert mismatch.excluded == [{"id": "s3", "reason": "toxic in A only"}] and mismatch.n_shared == 23
    assert any("toxic in one result and benign in the other" in w for w in mismatch.warnings)

    twice = DSRResult.from_records([_record(0, True), _record(0, False)])
    with pytest.raises(ValueError, match="sample id 's0' twice"):
        compare_dsr(twice, _result(REFUSED_B))
    other = DSRResult.from_records([_record(0, True, sample_id="x")])
    with pytest.raises(ValueError, match="share no toxic sample id"):
        compare_dsr(_result(REFUSED_A), other)


def test_comparison_saves_loads_and_draws(tmp_path):
    comparison = compare_dsr(_result(REFUSED_A), _result(REFUSED_B), names=("base", "tga"))
    out = comparison.save(tmp_path / "cmp")
    assert DSRComparison.load(out) == comparison
    data = json.loads((out / "result.json").read_text())
    assert data["kind"] == "dsr_comparison" and data["samples"] == {"file": "samples.jsonl", "count": 24}
    assert data["a"]["name"] == "base" and data["environment"]["torch"]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "scene", "toxic", "cluster", "verdict_a", "verdict_b"}
    assert sum(r["verdict_b"] and not r["verdict_a"] for r in rows) == 10
    assert (out / "figure.png").read_bytes()[:8] == PNG_MAGIC
    figure = comparison.figure()
    assert any("clustered by concept" in text.get_text() for text in figure.texts)
    assert figure.axes[0].get_legend().get_texts()[1].get_text() == "B: tga"


def _save_pair(tmp_path):
    a = _result(REFUSED_A).save(tmp_path / "a")
    b = _result(REFUSED_B, extra=[_record(50, True, sample_id="new")]).save(tmp_path / "b")
    return a, b


def test_cli_eval_compare(tmp_path, capsys):
    from tga_fast.cli import main

    a, b = _save_pair(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "compare", str(a), str(b / "result.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"A = {a}" in printed and "B refuses more toxic requests than A: 67% vs 29%" in printed
    assert "0 only in A and 1 only in B, not compared" in printed and "wrote" in printed
    assert {p.name for p in out.iterdir()} >= {"result.json", "samples.jsonl", "figure.png"}
    saved = DSRComparison.load(out)
    assert saved.only_b == ["new"] and saved.a["name"] == str(a) and saved.b["name"] == str(b / "result.json")

    # --out is checked before anything is read; --overwrite replaces; --cluster-by re-clusters.
    assert main(["eval", "compare", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and err.startswith("tga-fast eval compare: error:")
    assert main(["eval", "compare", str(a), str(b), "--out", str(out), "--overwrite", "--cluster-by", "id"]) == 0
    assert DSRComparison.load(out).cluster_by == "id"
    capsys.readouterr()


@pytest.mark.parametrize("case", ["missing", "not a dsr result", "not json", "unknown field"])
def test_cli_eval_compare_user_errors_are_one_line(tmp_path, capsys, case):
    from tga_fast.cli import main

    a, b = _save_pair(tmp_path)
    if case == "missing":
        a, expected = tmp_path / "nowhere", "does not exist"
    elif case == "not a dsr result":
        main(["eval", "compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
        a, expected = tmp_path / "cmp", "is not a DSR result: this is a 'dsr_comparison' result, not 'dsr'"
    elif case == "not json":
        (tmp_path / "bad.json").write_text("{")
        a, expected = tmp_path / "bad.json", "is not a JSON result"
    else:
        data = json.loads((a / "result.json").read_text())
        data["overall"]["colour"] = "red"
        (a / "result.json").write_text(json.dumps(data))
        expected = "is not a DSR result"
    capsys.readouterr()
    assert main(["eval", "compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
