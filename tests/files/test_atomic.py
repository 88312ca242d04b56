"""Atomic writes: all or nothing, and an existing output is replaced only when asked."""

from __future__ import annotations

import json

import pytest

from tga_fast.errors import UserError, require_positive
from tga_fast.files import atomic_write, write_json, write_text


def test_an_error_inside_the_block_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_text(tmp_path / "result.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = write_json(tmp_path / "out" / "result.json", {"a": 1})  # the folder is created
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        write_json(path, {"a": 2}, overwrite=False)
    assert json.loads(path.read_text()) == {"a": 1}
    write_json(path, {"a": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}


def test_binary_mode_and_bad_mode(tmp_path):
    with atomic_write(tmp_path / "x.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "y", "a"):
            pass


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_require_positive_names_the_argument(value):
    with pytest.raises(UserError, match="--batch-size must be a whole number >= 1"):
        require_positive(value, "--batch-size")
    assert require_positive(3, "--batch-size") == 3
