"""Trained models of the world, cached by a hash of everything that determines them (their configuration, the
world's configuration and the hashes of what they were built from), under ``<cache>/<kind>-<hash>/``, saved with
``save_pretrained`` (safetensors) plus a ``key.json`` that says what the hash covers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ModelCache:
    """``cached(kind, key, build, save, load)``: loads ``<root>/<kind>-<hash(key)>`` when it is complete, else runs
    ``build()``, saves it with ``save(obj, folder)`` and marks it complete (a run killed mid-save is rebuilt)."""

    def __init__(self, root):
        self.root = Path(root)

    def folder(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{key_hash(key)}"

    def cached(self, kind: str, key: dict, build: Callable, save: Callable, load: Callable):
        folder = self.folder(kind, key)
        if (folder / "key.json").exists():
            return load(folder), True
        obj = build()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save(obj, partial)
        (partial / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return obj, False
