"""The builder's output files: whatever is deleted or cut between runs, a rerun never writes NUL bytes or a file
with records missing; an existing output is replaced only with ``overwrite``; the final file is written whole."""

from __future__ import annotations

import json

import pytest

from tga_fast.cli import main as cli_main
from tga_fast.errors import UserError
from tga_fast.retrieval import resumable
from tga_fast.retrieval.build import RetrieveConfig, retrieve
from tga_fast.retrieval.resumable import ResumableJsonl

CAPTIONS = ["a dog in the park", "a cat on the beach", "a man with a guitar", "a red car in the street",
            "a small child with a ball", "a woman running in the park", "the blue car", "a big dog and a cat"]


@pytest.fixture()
def caption_run(tmp_path, tiny_clip):
    """Ten caption-query records and an eight-caption corpus; ``config(**overrides)`` builds a RetrieveConfig
    (batches of 3 records, so a run writes 4 batches)."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "caption": CAPTIONS[i % 8]}) + "\n" for i in range(10)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS) + "\n")

    def config(**overrides) -> RetrieveConfig:
        options = dict(data=str(data), corpus=str(corpus), out=str(tmp_path / "out.jsonl"), query="caption",
                       text_encoder=tiny_clip, batch_size=3, progress=False, backend="torch",
                       index_dir=str(tmp_path / "index"))
        options.update(overrides)
        return RetrieveConfig(**options)

    return tmp_path, config


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make the ``batches + 1``-th durable write die before it writes anything."""
    original, calls = ResumableJsonl.write_batch, []

    def write_batch(self, records, counts=None):
        calls.append(1)
        if len(calls) > batches:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, records, counts)

    monkeypatch.setattr(resumable.ResumableJsonl, "write_batch", write_batch)


def lines(path):
    data = path.read_bytes()
    assert b"\x00" not in data
    return [json.loads(line) for line in data.splitlines()]


def test_interrupted_run_with_its_output_deleted_is_an_error_not_a_nul_file(caption_run, monkeypatch):
    tmp_path, config = caption_run
    retrieve(config(out=str(tmp_path / "clean.jsonl")))
    clean = lines(tmp_path / "clean.jsonl")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            retrieve(config())
    out = tmp_path / "out.jsonl"
    out.unlink()
    with pytest.raises(UserError, match="--overwrite") as error:
        retrieve(config())
    assert str(out) in str(error.value) and "out.jsonl.progress.json" in str(error.value)
    assert not out.exists()  # nothing written, in particular no file of NUL bytes
    retrieve(config(overwrite=True))
    assert lines(out) == clean


def test_interrupted_run_with_its_output_cut_short_is_an_error(caption_run, monkeypatch):
    tmp_path, config = caption_run
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            retrieve(config())
    out = tmp_path / "out.jsonl"
    out.write_bytes(out.read_bytes()[:-10])  # the last recorded record lost its end
    with pytest.raises(UserError, match="shorter than"):
        retrieve(config())
    out.write_bytes(b"")
    with pytest.raises(UserError, match="--overwrite"):
        retrieve(config())


def test_interrupted_run_whose_recorded_prefix_was_replaced_is_an_error(caption_run, monkeypatch):
    tmp_path, config = caption_run
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            retrieve(config())
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"x" * (out.stat().st_size + 5))  # as long as before, but not what the run wrote
    with pytest.raises(UserError, match="--overwrite"):
        retrieve(config())


@pytest.mark.parametrize("name", ["out.jsonl", "out.json"])
def test_finished_run_with_its_output_deleted_is_an_error(caption_run, name):
    tmp_path, config = caption_run
    counts = retrieve(config(out=str(tmp_path / name)))
    out = tmp_path / name
    out.unlink()
    with pytest.raises(UserError, match="--overwrite") as error:
        retrieve(config(out=str(out)))
    assert str(out) in str(error.value)
    assert retrieve(config(out=str(out), overwrite=True)) == counts
    assert out.exists()


def test_resume_after_interruption_is_exact(caption_run, monkeypatch):
    tmp_path, config = caption_run
    retrieve(config(out=str(tmp_path / "clean.jsonl")))
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            retrieve(config())
    counts = retrieve(config())
    assert lines(tmp_path / "out.jsonl") == lines(tmp_path / "clean.jsonl") and counts["records"] == 10


@pytest.mark.parametrize("name", ["out.jsonl", "out.json"])
def test_an_existing_output_is_not_replaced_without_overwrite(caption_run, name):
    tmp_path, config = caption_run
    out = tmp_path / name
    out.write_text("precious\n")
    with pytest.raises(UserError, match="--overwrite"):
        retrieve(config(out=str(out)))
    assert out.read_text() == "precious\n"
    retrieve(config(out=str(out), overwrite=True))
    records = json.loads(out.read_text()) if name.endswith(".json") else lines(out)
    assert len(records) == 10
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}")) == []  # no temp file left


def test_cli_output_deleted_after_interruption_is_exit_2_and_one_line(caption_run, monkeypatch, capsys, tiny_clip):
    tmp_path, config = caption_run
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            retrieve(config())
    (tmp_path / "out.jsonl").unlink()
    capsys.readouterr()
    code = cli_main(["retrieve", "--data", str(tmp_path / "data.jsonl"), "--corpus", str(tmp_path / "corpus.txt"),
                     "--out", str(tmp_path / "out.jsonl"), "--query", "caption", "--text-encoder", tiny_clip,
                     "--batch-size", "3", "--backend", "torch", "--index-dir", str(tmp_path / "index"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "out.jsonl.progress.json" in err and "--overwrite" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_resumable_jsonl_refuses_a_missing_file_it_recorded(tmp_path):
    path = tmp_path / "o.jsonl"
    with ResumableJsonl(path, {"a": 1}) as writer:
        writer.write_batch([{"x": 1}, {"x": 2}])
    path.unlink()
    with pytest.raises(UserError, match="o.jsonl.progress.json"):
        ResumableJsonl(path, {"a": 1})
    assert not path.exists()
    with ResumableJsonl(path, {"a": 1}, overwrite=True) as writer:  # a clean start
        writer.write_batch([{"x": 3}])
    assert lines(path) == [{"x": 3}]
