"""Relative paths from data files (``"image": "coco/1.png"``) resolved inside their folder, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_inside"]


def resolve_inside(folder: str | os.PathLike, relative: str | os.PathLike, *, what: str = "path") -> Path:
    """``folder / relative`` as an absolute path; a ``ValueError`` naming ``what`` when it lies outside ``folder``
    (``../../etc/passwd``, an absolute path elsewhere).

    The check is on the path as written (``..`` folded, symlinks not followed): a data file names files relative to
    its image folder, and one that climbs out of it is a bad record, while a symlink the user placed inside the
    folder (``images -> /mnt/disk/images``, common for large data sets) is theirs to make and is kept.
    """
    root = Path(os.path.abspath(folder))
    target = Path(os.path.normpath(root / relative))  # an absolute ``relative`` replaces root here
    if target != root and root not in target.parents:
        raise ValueError(f"{what} {str(relative)!r} lies outside {root}")
    return target
