"""The one record reader: bad lines are records with a reason and a line number, never an exception."""

from __future__ import annotations

import json

import pytest

from tga_fast.files import read_json_records, read_jsonl


def test_bad_lines_are_records_and_good_ones_survive(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\n{"id": 2\n{"id": "\xff"}\n   \n[3]\n')
    lines = list(read_jsonl(path))
    assert [line.number for line in lines] == [1, 3, 4, 6]  # blank lines are skipped, numbers are the file's
    assert lines[0].ok and lines[0].value == {"id": 1}  # the byte-order mark is not part of record 1
    assert not lines[1].ok and "invalid JSON" in lines[1].error and lines[1].where == "line 3"
    assert not lines[2].ok and "not UTF-8" in lines[2].error
    assert lines[3].ok and lines[3].value == [3]  # what a record must look like is the caller's rule


def test_a_json_list_is_read_whole_or_refused(tmp_path):
    good = tmp_path / "data.json"
    good.write_text(json.dumps([{"id": 1}, {"id": 2}]), encoding="utf-8-sig")
    assert [(r.where, r.value) for r in read_json_records(good)] == [("item 1", {"id": 1}), ("item 2", {"id": 2})]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1},\n {"id": }]')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON: .* line 2"):
        list(read_json_records(broken))
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"id": 1}')
    with pytest.raises(ValueError, match="must be a list"):
        list(read_json_records(not_a_list))


def test_other_suffixes_read_as_jsonl_and_missing_files_are_named(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text('{"a": 1}\n')
    assert [r.value for r in read_json_records(path)] == [{"a": 1}]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
