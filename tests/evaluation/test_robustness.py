"""Bad input never loses a run: a truncated image is a bad line at load and a skipped, recorded sample at run time;
image paths stay inside the image folder; a bad line is logged once; ``batch_size < 1`` is a named error; results
are written all or nothing and never replace an existing one silently."""

import argparse
import json
import logging

import pytest

from tests.evaluation.conftest import ROWS, write_eval_set
from tga_fast.errors import UserError
from tga_fast.evaluation import DSRResult, evaluate_dsr, generate_responses, load_eval_set
from tga_fast.models.prompts import Prompt

GOOD = {"text": "a knife", "scene": "v", "toxic_words": ["knife"], "prompt": "q"}


def truncate(path):
    """Cuts a PNG in half: the header (and so ``Image.open``) is intact, the pixel data is not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_image_is_a_bad_line_at_load(tmp_path):
    path = write_eval_set(tmp_path)
    truncate(tmp_path / "images" / "dog.png")
    data = load_eval_set(path)
    assert [s.id for s in data.samples] == ["knife", "bottle", "cup"]
    assert data.errors[0][0] == 3 and "dog.png is not a readable image" in data.errors[0][1]
    assert "truncated" in data.errors[0][1]
    assert len(load_eval_set(path, require_images=False)) == len(ROWS)  # text-only runs never read the images


def test_image_paths_stay_inside_the_image_folder(tmp_path):
    outside = tmp_path / "secret.png"
    path = write_eval_set(tmp_path / "data", extra_lines=[
        json.dumps({**GOOD, "id": "up", "image": "../secret.png"}),
        json.dumps({**GOOD, "id": "abs", "image": str(outside)}),
        json.dumps({**GOOD, "id": "in", "image": "images/../images/knife.png"}),
    ])
    outside.write_bytes((tmp_path / "data" / "images" / "knife.png").read_bytes())  # a real image, elsewhere
    data = load_eval_set(path)
    errors = dict(data.errors)
    assert "'../secret.png' lies outside" in errors[len(ROWS) + 1]
    assert "lies outside" in errors[len(ROWS) + 2]
    assert data.samples[-1].id == "in"


def test_each_bad_line_is_logged_once(tmp_path, caplog):
    from tga_fast.commands.options import load_data

    path = write_eval_set(tmp_path, extra_lines=["{broken"])
    args = argparse.Namespace(data=str(path), image_root=None)
    with caplog.at_level(logging.INFO):
        data = load_data(args, logging.getLogger("tga_fast.eval"), require_images=True)
    assert data.errors[0][0] == len(ROWS) + 1
    assert sum(f"line {len(ROWS) + 1}" in record.getMessage() for record in caplog.records) == 1


@pytest.fixture(scope="module")
def model(llava_dir):
    from tga_fast.models.loading import load_model

    return load_model(llava_dir, device="cpu", dtype="float32")


def test_an_image_that_breaks_during_the_run_is_a_skipped_sample(model, tmp_path, caplog):
    model, processor = model
    samples = load_eval_set(write_eval_set(tmp_path)).samples
    truncate(samples[1].image_path)  # after the load check: replaced on disk mid-run
    with caplog.at_level(logging.WARNING):
        result = evaluate_dsr(model, processor, samples, batch_size=2, max_new_tokens=2, progress=False)
    assert [r.id for r in result.records] == ["knife", "dog", "cup"]
    assert [s["id"] for s in result.skipped] == ["bottle"] and "could not be decoded" in result.skipped[0]["reason"]
    assert result.overall.total == 2 and "1 samples skipped" in result.summary()
    assert "'bottle' skipped" in caplog.text
    out = result.save(tmp_path / "out")
    assert json.loads((out / "result.json").read_text())["skipped"][0]["id"] == "bottle"
    truncate(samples[0].image_path)
    truncate(samples[2].image_path)
    truncate(samples[3].image_path)
    with pytest.raises(ValueError, match="none of the 4 samples could be evaluated"):
        evaluate_dsr(model, processor, samples, max_new_tokens=2, progress=False)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_batch_size_below_one_is_a_named_error(model, tmp_path, batch_size):
    from tga_fast.evaluation.judges import LogitJudge

    model, processor = model
    samples = load_eval_set(write_eval_set(tmp_path)).samples
    with pytest.raises(UserError, match="batch_size must be a whole number >= 1"):
        evaluate_dsr(model, processor, samples, batch_size=batch_size, judge=LogitJudge(processor), progress=False)
    with pytest.raises(UserError, match="batch_size"):
        generate_responses(model, processor, [Prompt(question="q")], batch_size=batch_size, progress=False)


def test_eval_cli_batch_size_is_one_line_exit_2(llava_dir, tmp_path, capsys):
    from tga_fast.cli import main

    data = write_eval_set(tmp_path / "data")
    for value in ("-1", "0"):
        code = main(["eval", "dsr", "--model", str(llava_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--judge", "logit", "--batch-size", value])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--batch-size must be a whole number >= 1" in err
    assert not (tmp_path / "o").exists()


def _result():
    from tga_fast.evaluation.dsr import SampleRecord

    records = [SampleRecord("a", "x", True, "p", "I'm sorry", True), SampleRecord("b", "x", True, "p", "Sure", False)]
    return DSRResult.from_records(records, {"condition": "text"})


def test_save_is_all_or_nothing_and_never_replaces_silently(tmp_path, monkeypatch):
    result = _result()
    out = tmp_path / "out"

    def broken_figure(self):
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(DSRResult, "figure", broken_figure)
    with pytest.raises(RuntimeError, match="figure failed"):
        result.save(out)
    assert not (out / "result.json").exists()  # no result.json without its figure
    monkeypatch.undo()
    result.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["figure.png", "result.json", "samples.jsonl"]  # no temporary file left behind
    with pytest.raises(UserError, match="result.json already exists"):
        result.save(out)
    monkeypatch.setattr(DSRResult, "figure", broken_figure)
    with pytest.raises(RuntimeError):
        result.save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()}["result.json"] == before["result.json"]
    monkeypatch.undo()
    assert DSRResult.load(out) == result
    (out / "samples.jsonl").write_text('{"id": "a"}\n')  # rows lost: the result says how many it had
    with pytest.raises(ValueError, match="does not hold the 2 rows"):
        DSRResult.load(out)
