"""Trained models of the world, cached by a hash of everything that determines them (their configuration, the
world's configuration and the hashes of what they were built from), under ``<cache>/<kind>-<hash>/``, saved with
``save_pretrained`` (safetensors) plus a ``key.json`` that says what the hash covers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ModelCache:
    """``cached(kind, key, build, save, load)``: loads ``<root>/<kind>-<hash(key)>`` when it is complete, else runs
    ``build()``, saves it with ``save(obj, folder)`` and marks it complete (a run killed mid-save is rebuilt); the
    build's wall time is kept beside it (``cold_seconds``)."""

    def __init__(self, root):
        self.root = Path(root)

    def folder(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{key_hash(key)}"

    def cold_seconds(self, kind: str, key: dict) -> float | None:
        """Seconds the cached object took to build and save when it was made (None: not recorded)."""
        path = self.folder(kind, key) / "seconds.json"
        return json.loads(path.read_text())["build_and_save"] if path.is_file() else None

    def cached(self, kind: str, key: dict, build: Callable, save: Callable, load: Callable):
        folder = self.folder(kind, key)
        if (folder / "key.json").exists():
            return load(folder), True
        start = time.perf_counter()
        obj = build()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save(obj, partial)
        # what the cold run cost, for reports of later (cached) runs
        (partial / "seconds.json").write_text(json.dumps({"build_and_save": time.perf_counter() - start}))
        (partial / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return obj, False
