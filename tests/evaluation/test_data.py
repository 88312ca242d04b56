"""The JSONL evaluation loader: every line validated, bad lines reported with their numbers and skipped."""

import json

import pytest
from PIL import Image

from tests.evaluation.conftest import ROWS, write_eval_set
from tga_fast.evaluation.data import load_eval_set

GOOD = {"image": "images/knife.png", "text": "a knife", "scene": "v", "toxic_words": ["knife"], "prompt": "q"}


def _line(drop=(), **changes):
    return json.dumps({**{k: v for k, v in GOOD.items() if k not in drop}, **changes})


BAD = [
    "{not json",
    _line(drop=("prompt",)),
    _line(toxic_words=["gun"]),  # not in the text
    _line(drop=("toxic_words",), toxic_ranges=[[2, 40]]),
    _line(image="images/missing.png"),
    _line(toxic="yes"),
    _line(id="knife"),  # repeats the first id
    json.dumps([1, 2]),
]


def test_good_and_bad_lines(tmp_path, caplog):
    good_extra = _line(drop=("toxic_words",), text="a knife, a knife", toxic_ranges=[[2, 7]])
    path = write_eval_set(tmp_path, extra_lines=[*BAD, "", good_extra])
    with caplog.at_level("WARNING"):
        data = load_eval_set(path)
    first_bad = len(ROWS) + 1
    assert [n for n, _ in data.errors] == list(range(first_bad, first_bad + len(BAD)))
    messages = dict(data.errors)
    assert "invalid JSON" in messages[first_bad]
    assert "'prompt' is missing" in messages[first_bad + 1]
    assert "'gun' does not occur" in messages[first_bad + 2]
    assert "outside text" in messages[first_bad + 3]
    assert "missing.png does not exist" in messages[first_bad + 4]
    assert "'toxic'" in messages[first_bad + 5]
    assert "repeats line 1" in messages[first_bad + 6]
    assert "JSON object" in messages[first_bad + 7]
    assert f"line {first_bad}" in caplog.text
    assert [s.id for s in data.samples] == [r[0] for r in ROWS] + [str(first_bad + len(BAD) + 1)]  # default id
    knife, bottle = data.samples[0], data.samples[1]
    assert knife.text[slice(*knife.toxic_ranges[0])] == "red knife" and bottle.toxic_ranges == ((18, 23),)
    assert data.samples[3].toxic is False and data.samples[3].toxic_ranges == ()
    assert data.samples[-1].toxic_ranges == ((2, 7),)
    assert data.scenes == ["benign", "drugs", "v", "violence"]


def test_every_occurrence_marked_and_prompts(tmp_path):
    rows = [("a", "s", "pills and more pills", ["pills"], "what?", "retrieved pills", True)]
    sample = load_eval_set(write_eval_set(tmp_path, rows)).samples[0]
    assert sample.toxic_ranges == ((0, 5), (15, 20))
    text = sample.to_prompt("text", with_retrieved=True, system_prompt="be safe")
    assert (text.text, text.question, text.image, text.retrieved, text.system) == (
        "pills and more pills", "what?", False, "retrieved pills", "be safe")
    assert text.marks == (("text", 0, 5), ("text", 15, 20))
    image = sample.to_prompt("image")
    assert image.image and image.text is None and image.retrieved is None and image.marks == ()
    with pytest.raises(ValueError, match="condition"):
        sample.to_prompt("audio")


def test_images_and_roots(tmp_path):
    path = write_eval_set(tmp_path / "data")
    Image.new("L", (8, 8)).save(tmp_path / "data" / "images" / "knife.png")  # grayscale on disk
    data = load_eval_set(path)
    image = data.samples[0].load_image()
    assert image.mode == "RGB" and image.size == (8, 8)
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text(path.read_text())
    with pytest.raises(ValueError, match="no valid line"):
        load_eval_set(moved)  # images are relative to the file's folder
    assert len(load_eval_set(moved, image_root=tmp_path / "data")) == len(ROWS)
    assert len(load_eval_set(moved, require_images=False)) == len(ROWS)


def test_no_valid_line_and_missing_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n[]\n")
    with pytest.raises(ValueError, match=r"no valid line \(2 bad\): line 1: invalid JSON.*line 2"):
        load_eval_set(path)
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_eval_set(tmp_path / "nothing.jsonl")


def test_encoding_faults_blank_optional_fields(tmp_path):
    """A byte-order mark is fine, a line that is not UTF-8 is one bad line (not a failed load), a blank
    ``retrieved`` means none (no "Retrieved Text: . " in the prompt), an empty id and an image PIL cannot read are
    bad lines."""
    path = write_eval_set(tmp_path)
    lines = path.read_bytes().splitlines()
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    lines.append(_line(id="latin", text="caf\xe9 knife").encode("latin-1").replace(b"\\u00e9", b"\xe9"))
    lines.append(_line(id="blank", retrieved="  ").encode())
    lines.append(_line(id="").encode())
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    lines.append(_line(id="broken", image="images/broken.png").encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = load_eval_set(path)
    assert [s.id for s in data.samples] == [r[0] for r in ROWS] + ["blank"]
    assert data.samples[-1].retrieved is None
    assert data.samples[-1].to_prompt("text", with_retrieved=True).retrieved is None
    assert [n for n, _ in data.errors] == [len(ROWS) + 1, len(ROWS) + 3, len(ROWS) + 4]
    assert "broken.png is not a readable image" in dict(data.errors)[len(ROWS) + 4]
    assert dict(data.errors)[len(ROWS) + 1].startswith("not UTF-8")
    assert dict(data.errors)[len(ROWS) + 3] == "field 'id' is empty"
