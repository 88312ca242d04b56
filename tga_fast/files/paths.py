"""Relative paths from data files (``"image": "coco/1.png"``) resolved inside their folder, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_inside"]


def resolve_inside(folder: str | os.PathLike, relative: str | os.PathLike, *, what: str = "path") -> Path:
    """``folder / relative`` resolved (symlinks and ``..`` followed); a ``ValueError`` naming ``what`` when the
    result lies outside ``folder`` (``../../etc/passwd``, an absolute path elsewhere).

    A data file names files relative to its image folder; one that escapes it is a bad record, not a file to read.
    """
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{what} {str(relative)!r} lies outside {root}")
    return target
