"""The one result protocol of analyses and evaluations, and the environment every result records.

A result is a dataclass of plain Python values (lists, dicts, numbers, strings; never tensors) with:

- ``to_json() -> dict``: everything, JSON-ready (``{"kind": ..., <every field>}``); ``from_json(dict)`` gives an equal
  result back.
- ``figure() -> matplotlib.figure.Figure``: drawn with matplotlib's object API, so no backend is ever switched.
- ``save(out_dir, overwrite=False) -> Path``: ``result.json``, the per-sample rows as ``samples.jsonl`` (one JSON
  object a line, when the result has per-sample detail) and ``figure.png``, each written atomically; ``load(path)``
  reads them back. ``result.json`` is written last, so its presence means the set is complete, and an existing one
  is replaced only with ``overwrite=True``.
- ``environment``: library versions, threads and instruction set of the machine that computed it
  (:func:`environment`), captured when the result is made and kept through save/load.

A missing value is ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["RESULT_FILE", "SAMPLES_FILE", "FIGURE_FILE", "Result", "environment", "jsonable"]

RESULT_FILE, SAMPLES_FILE, FIGURE_FILE = "result.json", "samples.jsonl", "figure.png"


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready Python: tensors and numpy arrays to lists, dataclasses to dicts, tuples to lists,
    NaN/inf to None, other objects (a dtype, a callable) to their ``repr``."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict:
    import torch

    import tga_fast
    from tga_fast import diagnostics

    versions = diagnostics.package_versions()
    cpp = diagnostics.cpp_build_info()
    return {
        "tga_fast": tga_fast.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "numpy": versions.get("numpy"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA torch's CPU kernels use
        "cpp_isa": cpp.get("isa_active"),  # the ISA tga_fast's C++ kernels use (None: not built)
        "kernels": {device: status.name if status.available else "reference"
                    for device, status in diagnostics.STATUS.items()},
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def environment() -> dict:
    """What a number computed here depends on beyond the code and the seed: library versions, the instruction set
    of the CPU kernels (torch's and tga_fast's), which kernels serve each device, the GPU, and torch's thread
    counts (a sum over threads is not associative in floating point, so thread counts change the last bits)."""
    import torch

    from tga_fast._settings import SETTINGS

    return {
        **_static_environment(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "tga_fast_backend": SETTINGS.backend,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


@dataclasses.dataclass
class Result:
    """Base of every result dataclass (see the module docstring). Subclasses set ``kind`` (the name in JSON),
    ``samples_field`` (the field of per-sample rows written to ``samples.jsonl``, or None) and ``figure()``."""

    kind: ClassVar[str] = ""
    samples_field: ClassVar[str | None] = None

    environment: dict = dataclasses.field(default_factory=environment, kw_only=True)

    def to_json(self) -> dict:
        """A JSON-ready dict: ``{"kind": name, <every field>}``, the environment last."""
        names = [f.name for f in dataclasses.fields(self) if f.name != "environment"] + ["environment"]
        return {"kind": self.kind, **{name: jsonable(getattr(self, name)) for name in names}}

    @classmethod
    def from_json(cls, data: dict):
        """The result from ``to_json()``'s dict (see :meth:`load` for a saved folder)."""
        if not isinstance(data, dict):
            raise TypeError(f"from_json takes the dict of to_json(), got {type(data).__name__}; "
                            f"{cls.__name__}.load(path) reads a saved result")
        if data.get("kind") != cls.kind:
            raise ValueError(f"this is a {data.get('kind')!r} result, not {cls.kind!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data and n != "environment"]
        if missing:
            raise ValueError(f"{cls.kind} result is missing {missing}")
        return cls(**cls._fields_from_json({n: data[n] for n in names if n in data}))

    @classmethod
    def _fields_from_json(cls, fields: dict) -> dict:
        """Hook: turn JSON values back into field values (nested dataclasses); plain values by default."""
        return fields

    def figure(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes ``result.json``, ``samples.jsonl`` (when the result has per-sample rows) and ``figure.png`` into
        ``out_dir`` (created), each atomically; returns ``out_dir``.

        Raises:
            UserError: ``out_dir/result.json`` exists and ``overwrite`` is False (checked before anything is
                written; figure and rows of an unfinished earlier run, without its result.json, are replaced).
        """
        from tga_fast.files import atomic_write, write_json, write_text
        from tga_fast.files.atomic import check_writable

        out = Path(out_dir)
        check_writable(out / RESULT_FILE, overwrite=overwrite)
        data = self.to_json()
        if self.samples_field is not None:
            rows = data.pop(self.samples_field)
            text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
            write_text(out / SAMPLES_FILE, text)
            data[self.samples_field] = {"file": SAMPLES_FILE, "count": len(rows)}
        figure = self.figure()
        with atomic_write(out / FIGURE_FILE, "wb") as handle:
            figure.savefig(handle, format="png", dpi="figure", bbox_inches="tight")
        json.dumps(data, allow_nan=False)  # a NaN that slipped in fails here, before result.json is replaced
        write_json(out / RESULT_FILE, data, overwrite=overwrite, indent=1)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike):
        """The result saved in ``path`` (a folder written by :meth:`save`, or its ``result.json``)."""
        from tga_fast.files import read_jsonl

        path = Path(path)
        file = path / RESULT_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{file} is not a JSON result ({error})") from None
        rows = data.get(cls.samples_field) if cls.samples_field else None
        if isinstance(rows, dict) and "file" in rows:
            records = list(read_jsonl(file.parent / rows["file"]))
            bad = [f"{r.where}: {r.error}" for r in records if not r.ok]
            if bad or len(records) != rows.get("count", len(records)):
                raise ValueError(f"{file.parent / rows['file']} does not hold the {rows.get('count')} rows "
                                 f"{file} names ({len(records)} read; {'; '.join(bad[:3]) or 'no bad line'})")
            data[cls.samples_field] = [r.value for r in records]
        return cls.from_json(data)
