"""Writes that are all or nothing: the data goes to a temporary file beside the target, is flushed to disk, then
renamed over it, so an interrupted run leaves the old file or the new one, never half of one. An existing target is
replaced only when the caller says so (``overwrite=True``): a result is never lost silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from tga_fast.errors import UserError

__all__ = ["atomic_write", "check_writable", "write_json", "write_text"]


def check_writable(path: str | os.PathLike, *, overwrite: bool, flag: str = "--overwrite") -> Path:
    """``path`` as a Path if it may be written: absent, or present with ``overwrite``; else a :class:`UserError`
    naming the file and ``flag``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists: choose another output or pass {flag} to replace it")
    return path


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = True) -> Iterator[IO[Any]]:
    """Context manager yielding a file handle whose content replaces ``path`` when the block ends without error.

    Args:
        path: the target; its folder is created.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
        overwrite: False makes an existing ``path`` a :class:`UserError` (checked before and at the rename).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not overwrite and path.exists():  # another process wrote it meanwhile
            raise UserError(f"{path} appeared while it was being written; nothing was replaced")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w", overwrite=overwrite) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, *, overwrite: bool = True, indent: int | None = 2) -> Path:
    """Writes ``data`` as JSON (UTF-8, non-ASCII kept) to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n", overwrite=overwrite)
