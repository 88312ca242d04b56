"""The builder's inputs: bad lines and bad image values are counted bad records (the output stays aligned with
the input, one output line per input record), a BOM is ignored, image paths stay inside the image folder, options
are checked, and every user error of ``tga-fast retrieve`` is one line on stderr with exit code 2."""

from __future__ import annotations

import json

import pytest

from tests.retrieval.conftest import save_images
from tga_fast.cli import main as cli_main
from tga_fast.errors import UserError
from tga_fast.retrieval.build import RetrieveConfig, retrieve

CAPTIONS = ["a dog in the park", "a cat on the beach", "a man with a guitar", "a red car in the street"]


def read_lines(path):
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CAPTIONS) + "\n")
    return path


def caption_config(tmp_path, data, corpus, encoder, **overrides):
    options = dict(data=str(data), corpus=str(corpus), out=str(tmp_path / "out.jsonl"), query="caption",
                   text_encoder=encoder, batch_size=2, progress=False, backend="torch",
                   index_dir=str(tmp_path / "index"))
    options.update(overrides)
    return RetrieveConfig(**options)


def test_a_non_utf8_line_is_a_bad_record_on_every_run(tmp_path, corpus, tiny_clip, caplog):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"id": "a", "caption": "a dog"}\n{"id": "b", "caption": "caf\xe9"}\n'
                     b'{"id": "c", "caption": "a cat"}\n{not json\n')
    counts = retrieve(caption_config(tmp_path, data, corpus, tiny_clip))
    records = read_lines(tmp_path / "out.jsonl")
    assert len(records) == 4 and counts["records"] == 4 and counts["errors"] == 2 and counts["retrieved"] == 2
    assert [r.get("id") for r in records] == ["a", None, "c", None]  # aligned with the input lines
    assert "line 2" in records[1]["retrieval_error"] and "UTF-8" in records[1]["retrieval_error"]
    assert "line 4" in records[3]["retrieval_error"] and "invalid JSON" in records[3]["retrieval_error"]
    assert caplog.text.count("line 2") == 1  # logged once
    assert retrieve(caption_config(tmp_path, data, corpus, tiny_clip)) == counts  # the rerun does not die


def test_a_byte_order_mark_is_ignored(tmp_path, corpus, tiny_clip):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "caption": "a dog"}\n{"id": "b", "caption": "a cat"}\n')
    counts = retrieve(caption_config(tmp_path, data, corpus, tiny_clip))
    records = read_lines(tmp_path / "out.jsonl")
    assert counts["retrieved"] == 2 and counts["errors"] == 0
    assert records[0]["id"] == "a" and "raw" not in records[0]


def test_bad_image_values_and_escaping_paths_are_bad_records(tmp_path, corpus, tiny_clip):
    folder = tmp_path / "images"
    folder.mkdir()
    names = save_images(folder, 2)
    (tmp_path / "outside.png").write_bytes((folder / names[0]).read_bytes())
    records = [{"id": "ok", "image": names[0]}, {"id": "int", "image": 5}, {"id": "dict", "image": {"a": 1}},
               {"id": "list-int", "image": [5]}, {"id": "escape", "image": "../outside.png"},
               {"id": "absolute", "image": str(tmp_path / "outside.png")}, {"id": "list", "image": [names[1]]},
               {"id": "text-only"}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = retrieve(RetrieveConfig(data=str(data), corpus=str(corpus), out=str(tmp_path / "out.jsonl"),
                                     image_encoder=tiny_clip, image_folder=str(folder), batch_size=3,
                                     progress=False, backend="torch"))
    out = {r["id"]: r for r in read_lines(tmp_path / "out.jsonl")}
    assert list(out) == [r["id"] for r in records]
    assert counts == {**counts, "records": 8, "retrieved": 2, "errors": 5, "no_query": 1}
    for key in ("int", "dict", "list-int"):
        assert "retrieved" not in out[key] and "image must be" in out[key]["retrieval_error"]
    for key in ("escape", "absolute"):
        assert "retrieved" not in out[key] and "outside" in out[key]["retrieval_error"]
    assert "retrieved" in out["ok"] and "retrieved" in out["list"]


@pytest.mark.parametrize("option, flag", [("batch_size", "--batch-size"), ("encoder_batch_size",
                                          "--encoder-batch-size"), ("top_k", "--top-k"), ("workers", "--workers")])
@pytest.mark.parametrize("value", [0, -1])
def test_counts_must_be_positive(option, flag, value):
    with pytest.raises(UserError, match=flag):
        RetrieveConfig(data="d.jsonl", corpus="c.txt", out="o.jsonl", image_encoder="clip", **{option: value})


def cli(capsys, *argv):
    capsys.readouterr()
    code = cli_main(["retrieve", "--no-progress", "--backend", "torch", *map(str, argv)])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert str(word) in err, err


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, corpus, tiny_clip, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "caption": "a dog"}) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--query", "caption", "--out", out, "--index-dir", tmp_path / "index"]
    missing = tmp_path / "missing.jsonl"
    assert_one_line_error(*cli(capsys, "--data", missing, "--corpus", corpus, "--text-encoder", tiny_clip, *common),
                          missing, "--data")
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", missing, "--text-encoder", tiny_clip, *common),
                          missing, "--corpus")
    no_folder = tmp_path / "no-such-encoder"
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", no_folder, *common),
                          no_folder)
    not_a_folder = tmp_path / "file-encoder"
    not_a_folder.write_text("{}")
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", not_a_folder,
                               *common), not_a_folder)
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", tiny_clip,
                               "--batch-size", 0, *common), "--batch-size")
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--image-encoder", tiny_clip,
                               "--image-folder", tmp_path / "no-images", "--out", out), "no-images",
                          "--image-folder")
    # a finished run, then the same output with other options, then an output that is not this builder's
    assert cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", tiny_clip, *common)[0] == 0
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", tiny_clip,
                               "--top-k", 2, *common), out, "--overwrite")
    other = tmp_path / "other.json"
    other.write_text("[]")
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", tiny_clip,
                               "--query", "caption", "--out", other), other, "--overwrite")
    assert other.read_text() == "[]"


def test_cli_bad_corpus_line_names_the_file_and_line(tmp_path, tiny_clip, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "caption": "a dog"}) + "\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"text": "a dog"}\n{"text": "caf\xe9"}\n')
    assert_one_line_error(*cli(capsys, "--data", data, "--corpus", corpus, "--text-encoder", tiny_clip,
                               "--query", "caption", "--out", tmp_path / "o.jsonl"), corpus, "line 2")
