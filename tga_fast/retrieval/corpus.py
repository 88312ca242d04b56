"""Reading text corpora for the index: ``.txt`` (one text per line), ``.jsonl`` or ``.json`` (strings, or objects
with a text field and an optional id field), and removing duplicate texts (they waste index rows and top-k slots).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator


def _items(path: Path) -> Iterator[tuple[int, object]]:
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8") as f:
        if suffix == ".json":
            data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json corpus must be a list of strings or objects")
            yield from enumerate(data, start=1)
            return
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            yield line_no, (json.loads(line) if suffix == ".jsonl" else line)


def read_corpus(path: str | os.PathLike, *, text_field: str = "text", id_field: str = "id",
                prefix: str | None = None) -> tuple[list[str], list[str]]:
    """``(texts, ids)`` of a corpus file. ids are ``"<prefix>:<id>"`` (default prefix: the file's stem; default id:
    the line or item number). Objects without ``text_field`` fall back to ``"caption"``."""
    path = Path(path)
    prefix = path.stem if prefix is None else prefix
    texts, ids = [], []
    for number, item in _items(path):
        if isinstance(item, dict):
            text = item.get(text_field, item.get("caption"))
            key = item.get(id_field, number)
        else:
            text, key = item, number
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}, item {number}: no text (expected a string or an object with {text_field!r})")
        texts.append(text.strip())
        ids.append(f"{prefix}:{key}")
    if not texts:
        raise ValueError(f"{path} holds no texts")
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
