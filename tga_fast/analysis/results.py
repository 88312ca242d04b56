"""What every analysis result shares: JSON in and out, ``save(out_dir)`` (result.json + figure.png), windows of
layers or blocks.

Results hold plain Python values (lists of floats and ints, dicts, strings), never tensors, so that ``to_json()``
is exact and ``from_json(to_json())`` gives an equal result. A missing value is ``None`` (JSON ``null``), never
NaN and never a sentinel averaged in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

__all__ = ["AnalysisResult", "block_windows", "jsonable", "layer_windows", "rate_dict"]


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready Python: tensors and numpy arrays to lists, tuples to lists, NaN/inf to None, other
    objects to their ``repr``."""
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
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
    return repr(value)  # a setting that JSON cannot hold (a callable, a dtype): its description


def rate_dict(rate) -> dict:
    """A ``tga_fast.evaluation.dsr.Rate`` (refused, total, rate, low, high) as a plain dict."""
    return {name: jsonable(getattr(rate, name)) for name in ("refused", "total", "rate", "low", "high")}


def layer_windows(num_layers: int, window: int, first: int = 1) -> list[list[int]]:
    """Consecutive windows of ``window`` HF layers (``hidden_states[k]``, what ``steer`` takes) covering
    ``first..num_layers`` (inclusive ends): ``layer_windows(12, 5) == [[1, 5], [6, 10], [11, 12]]`` (the last
    window may be shorter)."""
    return _windows(first, num_layers, window, "num_layers")


def block_windows(num_blocks: int, window: int) -> list[list[int]]:
    """Consecutive windows of ``window`` decoder blocks (1..N, block k produces ``hidden_states[k]``; what
    ``knockout`` and ``skip_layers`` take) covering every block (inclusive ends):
    ``block_windows(12, 5) == [[1, 5], [6, 10], [11, 12]]`` (the last window may be shorter)."""
    return _windows(1, num_blocks, window, "num_blocks")


def _windows(first: int, last: int, window: int, name: str) -> list[list[int]]:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if last < first:
        raise ValueError(f"{name}={last} leaves nothing from {first}")
    return [[start, min(start + window - 1, last)] for start in range(first, last + 1, window)]


class AnalysisResult:
    """Mixin for the result dataclasses: ``to_json``/``from_json``/``save``; subclasses set ``analysis`` and
    implement ``figure()`` (a matplotlib Figure like the paper's)."""

    analysis: ClassVar[str] = ""

    def to_json(self) -> dict:
        """A JSON-ready dict: ``{"analysis": name, <every field>}``."""
        data = {"analysis": self.analysis}
        for f in dataclasses.fields(self):
            data[f.name] = jsonable(getattr(self, f.name))
        return data

    @classmethod
    def from_json(cls, data: dict | str | Path):
        """The result from ``to_json()``'s dict, a JSON string, or a path to a result.json."""
        if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
            data = json.loads(Path(data).read_text())
        elif isinstance(data, str):
            data = json.loads(data)
        if data.get("analysis") != cls.analysis:
            raise ValueError(f"this is a {data.get('analysis')!r} result, not {cls.analysis!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{cls.analysis} result is missing {missing}")
        return cls(**{n: data[n] for n in names})

    def figure(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def save(self, out_dir: str | Path) -> Path:
        """Writes ``out_dir/result.json`` and ``out_dir/figure.png``; returns ``out_dir``."""
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")
        fig = self.figure()
        try:
            fig.savefig(out / "figure.png", dpi=150, bbox_inches="tight")
        finally:
            plt.close(fig)
        return out


def mean_std(rows: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Per-column mean and (population) standard deviation of equal-length rows."""
    values = torch.tensor(rows, dtype=torch.float64)
    if values.dim() != 2 or values.shape[0] == 0:
        raise ValueError("mean_std needs at least one row")
    return values.mean(0).tolist(), values.std(0, unbiased=False).tolist()


def outcome_rows(dsr) -> tuple[dict, dict, list[dict]]:
    """``(overall, scenes, per-sample)`` of a ``tga_fast.evaluation.dsr.DSRResult`` as plain dicts: the rate, the
    rate per scene, and ``{"response", "verdict", "score"}`` per record, in the records' order."""
    overall = rate_dict(dsr.overall)
    scenes = {scene: rate_dict(rate) for scene, rate in dsr.scenes.items()}
    return overall, scenes, [record_row(r) for r in dsr.records]


def record_row(record) -> dict:
    """One ``tga_fast.evaluation.dsr.SampleRecord`` as the sweeps store it: ``{"response", "verdict", "score"}``."""
    return {"response": record.response, "verdict": bool(record.verdict), "score": record.score}
