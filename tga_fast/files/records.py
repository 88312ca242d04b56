"""The one reader of record files (JSONL, or a JSON list): bytes in, one :class:`LineRecord` per record out.

A line that is not UTF-8 or not JSON is a record with ``error`` set, never an exception: one bad line is one bad
record, and the caller decides whether to skip it (with its line number) or stop. A UTF-8 byte-order mark at the
start of the file is ignored (editors on Windows write one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["LineRecord", "read_json_records", "read_jsonl"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class LineRecord:
    """One record of a file. ``where`` is ``"line N"`` (JSONL, 1-based) or ``"item N"`` (JSON list); ``value`` is
    the parsed JSON (None when ``error`` is set); ``error`` says why the line could not be read."""

    number: int
    where: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _decode(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 (byte {error.start + 1} of the line)"
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at column {error.colno})"


def read_jsonl(path: str | os.PathLike) -> Iterator[LineRecord]:
    """One :class:`LineRecord` per non-blank line of a JSONL file, in file order (read as bytes, decoded per line).

    Raises:
        FileNotFoundError: the file does not exist (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw.strip():
                continue
            value, error = _decode(raw)
            yield LineRecord(number, f"line {number}", value, error)


def read_json_records(path: str | os.PathLike) -> Iterator[LineRecord]:
    """Records of a ``.json`` file (a list: one :class:`LineRecord` per item) or of any other file read as JSONL.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a ``.json`` file that is not UTF-8, not JSON or not a list (naming the file, line and column):
            a JSON list has no lines to skip, so it is read whole or not at all.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        yield from read_jsonl(path)
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    raw = path.read_bytes()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 (byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json data file must be a list of records, got {type(data).__name__}")
    for number, value in enumerate(data, start=1):
        yield LineRecord(number, f"item {number}", value, None)
