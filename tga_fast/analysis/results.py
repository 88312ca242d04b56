"""What every analysis result shares: the result protocol of :mod:`tga_fast.results` (``to_json``/``from_json``,
``save``/``load``, ``figure``, the environment), per-sample rows in ``samples``, and windows of layers or
blocks.

Results hold plain Python values (lists of floats and ints, dicts, strings), never tensors, so that ``to_json()``
is exact and ``from_json(to_json())`` gives an equal result. A missing value is ``None`` (JSON ``null``), never
NaN and never a sentinel averaged in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tga_fast.evaluation.rates import rate_dict
from tga_fast.results import Result

__all__ = ["AnalysisResult", "block_windows", "layer_windows"]


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


class AnalysisResult(Result):
    """Base of the analysis result dataclasses: per-sample rows in ``samples`` (saved as ``samples.jsonl``);
    subclasses set ``kind`` (the analysis' name) and implement ``figure()`` (a matplotlib Figure like the
    paper's)."""

    samples_field = "samples"


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
