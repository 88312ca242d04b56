"""``retrieve --shard k/n`` + ``tga-fast merge``: the parts join into the bytes one process writes; a missing part,
a repeated one, parts of another ``n`` or other options, and unfinished parts are refused with one line."""

from __future__ import annotations

import json

import pytest

from tests.retrieval.test_build import config_for, make_image_dataset
from tga_fast.cli import main as cli_main
from tga_fast.errors import UserError
from tga_fast.retrieval.build import merge_retrieved, retrieve


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_clip):
    """One process's output and the two parts of the same run, on the builder tests' data (20 records, bad ones
    among them) with a line that is not JSON added. Tests change only copies of what it wrote."""
    tmp_path, data, corpus, toxic = make_image_dataset(tmp_path_factory.mktemp("shards"))
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:5] + ["{not json\n"] + lines[5:]))
    # One record per batch: a batch of other size changes the last bits of the scores (BLAS blocking), in one
    # process as much as across shards, and the claim here is byte equality.
    common = dict(toxic_corpus=str(toxic), top_k=2, batch_size=1, encoder_batch_size=1)
    whole = retrieve(config_for(tmp_path, data, corpus, tiny_clip, out=str(tmp_path / "one.jsonl"), **common))
    parts = [retrieve(config_for(tmp_path, data, corpus, tiny_clip, shard=f"{k}/2", **common)) for k in range(2)]
    return tmp_path, whole, parts, (data, corpus, tiny_clip, common)


def test_two_shards_merge_into_the_bytes_of_one_process(sharded):
    tmp_path, whole, parts, _ = sharded
    names = [tmp_path / "out.part-0-of-2.jsonl", tmp_path / "out.part-1-of-2.jsonl"]
    assert [p["records"] for p in parts] == [11, 10] and all(p["input_records"] == 21 for p in parts)
    counts = merge_retrieved(names[::-1], tmp_path / "merged.jsonl")  # any order of the parts
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert counts == whole
    # A .json out is the JSON list one process writes for a .json out.
    merge_retrieved(names, tmp_path / "merged.json")
    assert json.loads((tmp_path / "merged.json").read_text()) == [
        json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]


def test_merge_refuses_missing_repeated_and_foreign_parts(sharded, capsys):
    tmp_path, _, _, (data, corpus, clip, common) = sharded
    part0, part1 = tmp_path / "out.part-0-of-2.jsonl", tmp_path / "out.part-1-of-2.jsonl"
    with pytest.raises(UserError, match=r"shard 1/2 missing"):
        merge_retrieved([part0], tmp_path / "m.jsonl")
    copy = tmp_path / "copy.part-0-of-2.jsonl"
    copy.write_bytes(part0.read_bytes())
    (tmp_path / "copy.part-0-of-2.jsonl.progress.json").write_bytes(
        (tmp_path / "out.part-0-of-2.jsonl.progress.json").read_bytes())
    with pytest.raises(UserError, match=r"shard 0/2 is given twice"):
        merge_retrieved([part0, copy, part1], tmp_path / "m.jsonl")
    retrieve(config_for(tmp_path, data, corpus, clip, shard="0/3", **common))
    with pytest.raises(UserError, match=r"different n .*is 0/3"):
        merge_retrieved([tmp_path / "out.part-0-of-3.jsonl", part1], tmp_path / "m.jsonl")
    retrieve(config_for(tmp_path, data, corpus, clip, out=str(tmp_path / "k1.jsonl"), shard="1/2",
                        **{**common, "toxic_corpus": None}))
    with pytest.raises(UserError, match=r"other inputs or options .*differs in: toxic_corpus"):
        merge_retrieved([part0, tmp_path / "k1.part-1-of-2.jsonl"], tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="unsharded run"):
        merge_retrieved([tmp_path / "one.jsonl", part1], tmp_path / "m.jsonl")
    cut = tmp_path / "cut.part-1-of-2.jsonl"
    cut.write_bytes(part1.read_bytes()[:-10])
    (tmp_path / "cut.part-1-of-2.jsonl.progress.json").write_bytes(
        (tmp_path / "out.part-1-of-2.jsonl.progress.json").read_bytes())
    with pytest.raises(UserError, match="changed since"):
        merge_retrieved([part0, cut], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()
    # Through the CLI: one line on stderr, exit 2; an existing output is never replaced silently.
    capsys.readouterr()
    assert cli_main(["merge", str(part0), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == "tga-fast merge: error: shard 1/2 missing: 1 of 2 parts given (run " \
        "the missing shards, or pass every part)"
    assert cli_main(["merge", str(part0), str(part0), "--out", str(tmp_path / "one.jsonl")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_shard_is_one_line(sharded, capsys):
    tmp_path, _, _, (data, corpus, tiny_clip, _) = sharded
    capsys.readouterr()
    for shard in ("2/2", "1-2", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            config_for(tmp_path, data, corpus, tiny_clip, shard=shard)
    assert cli_main(["retrieve", "--data", str(data), "--corpus", str(corpus), "--out", str(tmp_path / "x.jsonl"),
                     "--image-encoder", tiny_clip, "--shard", "8/8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "k is 0-based and must be in 0..7" in err


def test_an_interrupted_shard_resumes(sharded, monkeypatch):
    from tga_fast.retrieval import resumable

    tmp_path, _, _, (data, corpus, clip, common) = sharded
    clean = (tmp_path / "out.part-1-of-2.jsonl").read_bytes()
    original, calls = resumable.ResumableJsonl.write_batch, []

    def crash_in_fourth_batch(self, records, counts=None):
        calls.append(len(records))
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, records, counts)

    monkeypatch.setattr(resumable.ResumableJsonl, "write_batch", crash_in_fourth_batch)
    config = config_for(tmp_path, data, corpus, clip, out=str(tmp_path / "again.jsonl"), shard="1/2", **common)
    with pytest.raises(KeyboardInterrupt):
        retrieve(config)
    monkeypatch.setattr(resumable.ResumableJsonl, "write_batch", original)
    counts = retrieve(config)
    assert (tmp_path / "again.part-1-of-2.jsonl").read_bytes() == clean
    assert counts["records"] == 10 and counts["input_records"] == 21
