"""An append-only JSONL output that survives interruption: each batch of records is written, flushed and fsynced,
then a sidecar ``<out>.progress.json`` (replaced atomically) records how many input records and output bytes are
final. On restart the output is truncated to those bytes (dropping a batch cut in half) and the input resumes
after those records, so nothing is lost or written twice.

    writer = ResumableJsonl("out.jsonl", fingerprint={...})   # .done: input records already written
    writer.write_batch(records); ...; writer.finish(summary)
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResumableJsonl:
    """``path``: the JSONL being written; ``fingerprint``: what must match to resume (inputs and options)."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.progress_path = self.path.with_name(self.path.name + ".progress.json")
        self.fingerprint = fingerprint
        self.done, self.bytes, self.complete, self.counts = 0, 0, False, {}
        if overwrite:
            self.progress_path.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        if self.progress_path.exists():
            state = json.loads(self.progress_path.read_text())
            if state.get("fingerprint") != fingerprint:
                raise ValueError(f"{self.path} was started with other inputs or options ({self.progress_path}); "
                                 "pass overwrite=True (--overwrite) to start again, or choose another output")
            self.done, self.bytes = state["records"], state["bytes"]
            self.complete, self.counts = state.get("complete", False), state.get("counts", {})
        elif self.path.exists():
            raise FileExistsError(f"{self.path} exists without {self.progress_path.name}: not a resumable run of "
                                  "this builder; pass overwrite=True (--overwrite) or choose another output")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        if not self.complete:
            self._file = open(self.path, "ab")
            self._file.truncate(self.bytes)  # a batch written after the last progress update is redone
            self._file.seek(self.bytes)
            if self.done == 0:
                self._save_progress()

    def _save_progress(self) -> None:
        write_json_atomic(self.progress_path, {"fingerprint": self.fingerprint, "records": self.done,
                                               "bytes": self.bytes, "complete": self.complete, "counts": self.counts})

    def write_batch(self, records: list[dict], counts: dict | None = None) -> None:
        """Append ``records`` (one per input record, in input order) durably, then mark them done."""
        data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done += len(records)
        self.bytes += len(data)
        if counts is not None:
            self.counts = dict(counts)
        self._save_progress()

    def finish(self, counts: dict | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.complete = True
        if counts is not None:
            self.counts = dict(counts)
        self._save_progress()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
