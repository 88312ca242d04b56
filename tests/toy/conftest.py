"""The quick world, trained once per test session (the demo's own cache, in a session temp folder)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``(out_folder, result)`` of ``run_demo(quick=True)`` (one seed, one process) with a fresh cache."""
    from tga_fast.toy.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out, quick=True, cache=out / "cache", jobs=1, progress=False)
    return out, result
