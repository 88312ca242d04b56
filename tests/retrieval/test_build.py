"""The builder: retrieved text per record, the self-match rule, bad records, resume after an interruption."""

from __future__ import annotations

import json

import pytest

from tests.retrieval.conftest import save_images
from tga_fast.cli import main as cli_main
from tga_fast.retrieval import resumable
from tga_fast.retrieval.build import RetrieveConfig, retrieve

CAPTIONS = [
    "A dog runs across a grassy field.", "A man plays the guitar on stage.", "Two kids build a sandcastle.",
    "A cat sleeps on a windowsill.", "A red car parked on the street.", "A chef cooks pasta in a pot.",
    "Snow covers the pine trees.", "A plane takes off from the runway.",
]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def write_dataset(folder, records, name="data.jsonl"):
    path = folder / name
    if name.endswith(".json"):
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def conversation(i):
    return [{"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": "Answer."}]


@pytest.fixture()
def image_dataset(tmp_path):
    return make_image_dataset(tmp_path)


def make_image_dataset(tmp_path):
    """20 records: 17 with images, one text-only, one with a missing image, one unreadable image file."""
    (tmp_path / "images").mkdir()
    names = save_images(tmp_path / "images", 17)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    records = [{"id": f"s{i}", "image": n, "conversations": conversation(i), "caption": CAPTIONS[i % 8]}
               for i, n in enumerate(names)]
    records.insert(3, {"id": "text-only", "conversations": conversation(99)})
    records.insert(8, {"id": "missing", "image": "nope.png", "conversations": conversation(98)})
    records.insert(12, {"id": "broken", "image": "broken.png", "conversations": conversation(97)})
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(CAPTIONS + CAPTIONS[:2]) + "\n")  # with duplicates
    toxic = tmp_path / "toxic.jsonl"
    toxic.write_text(json.dumps({"id": 7, "text": "how to build a weapon"}) + "\n")
    return tmp_path, write_dataset(tmp_path, records), corpus, toxic


def config_for(tmp_path, data, corpus, clip, **overrides):
    options = dict(data=str(data), corpus=str(corpus), out=str(tmp_path / "out.jsonl"), image_encoder=clip,
                   image_folder=str(tmp_path / "images"), batch_size=4, encoder_batch_size=3, progress=False,
                   index_dir=str(tmp_path / "index"))
    options.update(overrides)
    return RetrieveConfig(**options)


def test_image_retrieval_keeps_every_record(image_dataset, tiny_clip):
    tmp_path, data, corpus, toxic = image_dataset
    counts = retrieve(config_for(tmp_path, data, corpus, tiny_clip, toxic_corpus=str(toxic), top_k=3))
    records, inputs = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(data)
    assert [r["id"] for r in records] == [r["id"] for r in inputs]
    assert counts["records"] == 20 and counts["retrieved"] == 17 and counts["errors"] == 2
    assert counts["no_query"] == 1
    corpus_texts = set(CAPTIONS) | {"how to build a weapon"}
    for record, original in zip(records, inputs):
        assert {k: record[k] for k in original} == original  # nothing of the input is changed
        if record["id"] == "text-only":
            assert record == original
        elif record["id"] in ("missing", "broken"):
            assert "retrieved" not in record and record["retrieval_error"].startswith(
                "image not found" if record["id"] == "missing" else "image unreadable")
        else:
            assert isinstance(record["retrieved"], str) and isinstance(record["retrieved_score"], float)
            assert len(record["retrieved_topk"]) == 3
            scores = [c["score"] for c in record["retrieved_topk"]]
            assert scores == sorted(scores, reverse=True)
            assert {c["text"] for c in record["retrieved_topk"]} <= corpus_texts
            assert len({c["text"] for c in record["retrieved_topk"]}) == 3  # duplicates were removed
            assert record["retrieved_toxic"] == record["retrieved_id"].startswith("toxic:")
    # A finished run returns at once; a changed option is refused instead of mixing outputs.
    assert retrieve(config_for(tmp_path, data, corpus, tiny_clip, toxic_corpus=str(toxic), top_k=3)) == counts
    with pytest.raises(ValueError, match="other inputs or options"):
        retrieve(config_for(tmp_path, data, corpus, tiny_clip, toxic_corpus=str(toxic), top_k=2))


def test_resume_after_an_interruption(image_dataset, tiny_clip, monkeypatch):
    tmp_path, data, corpus, _ = image_dataset
    retrieve(config_for(tmp_path, data, corpus, tiny_clip, out=str(tmp_path / "clean.jsonl")))
    clean = read_jsonl(tmp_path / "clean.jsonl")

    original = resumable.ResumableJsonl.write_batch
    calls = []

    def crash_in_third_batch(self, records, counts=None):
        calls.append(len(records))
        if len(calls) == 3:  # half a batch reaches the disk, then the process dies
            line = json.dumps(records[0]).encode()
            self._file.write(line + b"\n" + line[: len(line) // 2])
            self._file.flush()
            raise KeyboardInterrupt("simulated interruption")
        return original(self, records, counts)

    monkeypatch.setattr(resumable.ResumableJsonl, "write_batch", crash_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        retrieve(config_for(tmp_path, data, corpus, tiny_clip))
    progress = json.loads((tmp_path / "out.jsonl.progress.json").read_text())
    assert progress["records"] == 8 and not progress["complete"]
    monkeypatch.setattr(resumable.ResumableJsonl, "write_batch", original)
    counts = retrieve(config_for(tmp_path, data, corpus, tiny_clip))
    assert read_jsonl(tmp_path / "out.jsonl") == clean
    assert counts["records"] == 20 and counts["retrieved"] == 17


def test_self_match_rules_on_caption_queries(tmp_path, minilm):
    records = [{"id": f"c{i}", "conversations": conversation(i), "caption": c} for i, c in enumerate(CAPTIONS)]
    data = write_dataset(tmp_path, records, "data.json")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": c}) + "\n" for i, c in enumerate(CAPTIONS)))
    common = dict(data=str(data), corpus=str(corpus), query="caption", text_encoder=minilm, progress=False,
                  index_dir=str(tmp_path / "index"))
    half = retrieve(RetrieveConfig(out=str(tmp_path / "half.json"), self_match="half", **common))
    out = json.loads((tmp_path / "half.json").read_text())  # a .json output is a JSON list
    assert half["self_match_half"] == 8
    for record in out:
        words = record["caption"].split()
        assert record["retrieved"] == " ".join(words[: len(words) // 2])
        assert record["retrieved_self_match"] == "half" and record["retrieved_score"] > 0.99
    assert not (tmp_path / "half.json.partial.jsonl").exists()

    nxt = retrieve(RetrieveConfig(out=str(tmp_path / "next.jsonl"), self_match="next", **common))
    assert nxt["self_match_next"] == 8
    for record in read_jsonl(tmp_path / "next.jsonl"):
        assert record["retrieved"] in CAPTIONS and record["retrieved"] != record["caption"]
        assert record["retrieved_score"] < 0.99

    keep = retrieve(RetrieveConfig(out=str(tmp_path / "keep.jsonl"), self_match="keep", **common))
    assert keep["retrieved"] == 8 and keep["self_match_half"] == keep["self_match_next"] == 0
    assert all(r["retrieved"] == r["caption"] for r in read_jsonl(tmp_path / "keep.jsonl"))


def test_bad_jsonl_lines_are_kept_and_reported(tmp_path, minilm, caplog):
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "caption": "A cat sleeps on a windowsill."}\n{not json\n[1, 2]\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS))
    counts = retrieve(RetrieveConfig(data=str(data), corpus=str(corpus), out=str(tmp_path / "o.jsonl"),
                                     query="caption", text_encoder=minilm, progress=False))
    records = read_jsonl(tmp_path / "o.jsonl")
    assert len(records) == 3 and counts["errors"] == 2 and counts["retrieved"] == 1
    assert records[1] == {"retrieval_error": records[1]["retrieval_error"]}  # a placeholder keeps the alignment
    assert records[1]["retrieval_error"].startswith("line 2: invalid JSON")
    assert records[2]["raw"] == [1, 2] and "JSON object" in records[2]["retrieval_error"]
    assert "line 2" in caplog.text


def test_cli_retrieve(image_dataset, tiny_clip, capsys):
    tmp_path, data, corpus, _ = image_dataset
    code = cli_main(["retrieve", "--data", str(data), "--corpus", str(corpus), "--out", str(tmp_path / "cli.jsonl"),
                     "--image-encoder", tiny_clip, "--image-folder", str(tmp_path / "images"), "--top-k", "2",
                     "--self-match", "next", "--backend", "torch", "--no-progress", "--batch-size", "8"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["records"] == 20
    assert len(read_jsonl(tmp_path / "cli.jsonl")) == 20
    assert (tmp_path / "cli.jsonl.index" / "index.json").exists()
