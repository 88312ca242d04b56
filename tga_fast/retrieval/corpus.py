"""Reading text corpora for the index: ``.txt`` (one text per line), ``.jsonl`` or ``.json`` (strings, or objects
with a text field and an optional id field), and removing duplicate texts (they waste index rows and top-k slots).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from tga_fast.errors import UserError
from tga_fast.files import read_json_records

_BOM = b"\xef\xbb\xbf"


def _items(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, item)`` per text of the corpus: JSON through the one record reader, other files as UTF-8 lines.
    A line that cannot be read is a :class:`UserError` naming the file and line: a corpus is curated input, and
    a text silently missing from it would change what every record retrieves."""
    if path.suffix.lower() in (".json", ".jsonl"):
        for record in read_json_records(path):
            if not record.ok:
                raise UserError(f"{path}, {record.where}: {record.error}: fix or remove it")
            yield record.where, record.value
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise UserError(f"{path}, line {number}: not UTF-8 (byte {error.start + 1} of the line): fix or "
                                "remove it") from None
            if line.strip():
                yield f"line {number}", line


def read_corpus(path: str | os.PathLike, *, text_field: str = "text", id_field: str = "id",
                prefix: str | None = None) -> tuple[list[str], list[str]]:
    """``(texts, ids)`` of a corpus file. ids are ``"<prefix>:<id>"`` (default prefix: the file's stem; default id:
    the line or item number). Objects without ``text_field`` fall back to ``"caption"``."""
    path = Path(path)
    prefix = path.stem if prefix is None else prefix
    texts, ids = [], []
    for where, item in _items(path):
        number = where.split()[-1]
        if isinstance(item, dict):
            text = item.get(text_field, item.get("caption"))
            key = item.get(id_field, number)
        else:
            text, key = item, number
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}, {where}: no text (expected a string or an object with {text_field!r})")
        texts.append(text.strip())
        ids.append(f"{prefix}:{key}")
    if not texts:
        raise UserError(f"{path} holds no texts")
    return texts, ids


def dedupe(texts: list[str], ids: list[str]) -> tuple[list[str], list[str]]:
    """Keep the first occurrence of each exact text."""
    seen: set[str] = set()
    kept_texts, kept_ids = [], []
    for text, key in zip(texts, ids):
        if text not in seen:
            seen.add(text)
            kept_texts.append(text)
            kept_ids.append(key)
    return kept_texts, kept_ids


def fingerprint(path: str | os.PathLike) -> dict:
    """What identifies a file's version cheaply: absolute path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
