"""``tga-fast demo`` rejects bad options in one line with exit code 2, before any training."""

from __future__ import annotations

import pytest

from tga_fast.cli import main


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--threads", "-2"), ("--jobs", "0"), ("--seeds", "-1"),
                                           ("--seeds", "a,b")])
def test_bad_demo_options_are_one_line_exit_2(tmp_path, capsys, option, value):
    code = main(["demo", "--quick", "--out", str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("tga-fast demo: error:") and option in err[0]
    assert not (tmp_path / "out").exists()
