"""An append-only JSONL output that survives interruption: each batch of records is written, flushed and fsynced,
then a sidecar ``<out>.progress.json`` (replaced atomically) records how many input records and output bytes are
final. On restart the output is truncated to those bytes (dropping a batch cut in half) and the input resumes
after those records, so nothing is lost or written twice.

The sidecar only describes the output it sits beside: an output that is gone, shorter than the recorded bytes, or
whose recorded part no longer ends a record is refused (naming both files and ``--overwrite``) instead of being
extended with zeros or continued with records missing.

    writer = ResumableJsonl("out.jsonl", fingerprint={...})   # .done: input records already written
    writer.write_batch(records); ...; writer.finish(summary)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tga_fast.errors import UserError
from tga_fast.files import write_json

__all__ = ["ResumableJsonl", "read_finished"]


class ResumableJsonl:
    """``path``: the JSONL being written; ``fingerprint``: what must match to resume (inputs and options);
    ``target``: the file the run ends in when it is not ``path`` itself (a ``.json`` list converted from ``path``
    at the end; it may exist only as a finished run's result, or be replaced with ``overwrite``).

    Raises:
        UserError: the sidecar belongs to another run (fingerprint), is unreadable, or its output is missing or
            damaged; or an output exists that no sidecar describes. Every message names the files and
            ``--overwrite``.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict, *, overwrite: bool = False,
                 target: str | os.PathLike | None = None):
        self.path = Path(path)
        self.target = Path(target) if target is not None else self.path
        self.progress_path = self.path.with_name(self.path.name + ".progress.json")
        self.fingerprint = fingerprint
        self.done, self.bytes, self.complete, self.counts = 0, 0, False, {}
        if overwrite:  # a separate target (.json) keeps the old result until the new one replaces it atomically
            self.progress_path.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        if self.progress_path.exists():
            self._read_progress()
        elif not overwrite and (self.path.exists() or self.target.exists()):
            existing = self.target if self.target.exists() else self.path
            raise UserError(f"{existing} already exists and no {self.progress_path.name} says it is a run of this "
                            "builder: choose another output or pass --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        if self.complete:
            self._check_finished_output()
            return
        self._check_recorded_prefix()
        self._file = open(self.path, "r+b" if self.path.exists() else "wb")
        self._file.truncate(self.bytes)  # a batch written after the last progress update is redone
        self._file.seek(self.bytes)
        if self.done == 0:
            self._save_progress()

    def _read_progress(self) -> None:
        try:
            state = json.loads(self.progress_path.read_text(encoding="utf-8"))
            records, size = int(state["records"]), int(state["bytes"])
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{self.progress_path} is unreadable ({type(error).__name__}: {error}): pass "
                            f"--overwrite to build {self.target} again") from None
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"{self.target} was started with other inputs or options ({self.progress_path}): pass "
                            "--overwrite to start again, or choose another output")
        self.done, self.bytes = records, size
        self.complete, self.counts = bool(state.get("complete", False)), state.get("counts", {})

    def _damaged(self, what: str) -> UserError:
        return UserError(f"{self.progress_path} records {self.done} records ({self.bytes} bytes) of {self.path}, "
                         f"but {what}: pass --overwrite to build {self.target} again (or restore the file)")

    def _check_recorded_prefix(self) -> None:
        """The part of ``path`` the sidecar vouches for must still be there: at least ``bytes`` long, and (when
        something was written) ending a record with a newline."""
        if self.bytes == 0:
            return
        if not self.path.exists():
            raise self._damaged(f"{self.path.name} is missing")
        size = self.path.stat().st_size
        if size < self.bytes:
            raise self._damaged(f"{self.path.name} is shorter than that ({size} bytes)")
        with open(self.path, "rb") as handle:
            handle.seek(self.bytes - 1)
            if handle.read(1) != b"\n":
                raise self._damaged(f"{self.path.name} was changed (byte {self.bytes} does not end a record)")

    def _check_finished_output(self) -> None:
        """A finished run is only finished while its output exists: the target, or ``path`` not converted yet."""
        if self.target != self.path and self.target.exists():
            return
        if not self.path.exists():
            raise UserError(f"{self.progress_path} records a finished run, but its output {self.target} is "
                            "missing: pass --overwrite to build it again (or restore the file)")
        self._check_recorded_prefix()

    def _save_progress(self) -> None:
        write_json(self.progress_path, {"fingerprint": self.fingerprint, "records": self.done, "bytes": self.bytes,
                                        "complete": self.complete, "counts": self.counts})

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


def read_finished(path: str | os.PathLike) -> dict:
    """The sidecar state (``fingerprint``, ``records``, ``bytes``, ``counts``) of a finished output ``path``, after
    checking that the run finished and that ``path`` is still exactly what it wrote.

    Raises:
        UserError: no sidecar, an unfinished run, or an output changed since (naming the file and the fix).
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".progress.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    if not sidecar.is_file():
        raise UserError(f"{path} has no {sidecar.name}: it is not an output of `tga-fast retrieve`")
    try:
        state = json.loads(sidecar.read_text(encoding="utf-8"))
        size = int(state["bytes"])
        state.setdefault("counts", {})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{sidecar} is unreadable ({type(error).__name__}: {error})") from None
    if not state.get("complete"):
        raise UserError(f"{path} is not finished ({state.get('records')} records so far): rerun its command to "
                        "resume it")
    if path.stat().st_size != size:
        raise UserError(f"{path} has {path.stat().st_size} bytes but its run wrote {size}: it was changed since "
                        "(rerun its command with --overwrite)")
    return state
