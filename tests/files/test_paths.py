"""Paths from data files stay inside their folder; symlinks the user placed inside it are kept."""

from __future__ import annotations

import pytest

from tga_fast.files import resolve_inside


def test_paths_inside_resolve_and_escapes_are_refused(tmp_path):
    assert resolve_inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert resolve_inside(tmp_path, "a/../b.png") == tmp_path / "b.png"
    for escape in ("../x.png", "a/../../x.png", "/etc/passwd"):
        with pytest.raises(ValueError, match="image .* lies outside"):
            resolve_inside(tmp_path, escape, what="image")
    assert resolve_inside(tmp_path, tmp_path / "c.png") == tmp_path / "c.png"  # absolute but inside


def test_a_symlinked_subfolder_is_inside(tmp_path):
    elsewhere = tmp_path / "disk" / "images"
    elsewhere.mkdir(parents=True)
    (elsewhere / "x.png").write_bytes(b"png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(elsewhere)
    path = resolve_inside(data, "images/x.png")
    assert path == data / "images" / "x.png" and path.read_bytes() == b"png"
