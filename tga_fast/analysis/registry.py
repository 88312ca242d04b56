"""The analyses by name: each one registers its function, its result class and its options dataclass, and one
runner calls any of them (the CLI builds ``tga-fast analyze <name>`` from this table, without a branch per name).

    from tga_fast.analysis.registry import ANALYSES, run_analysis
    result = run_analysis("knockout_sweep", model, processor, samples, KnockoutSweepOptions(window=2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["ANALYSES", "Analysis", "register", "run_analysis"]


@dataclass(frozen=True)
class Analysis:
    """One registered analysis: ``function(model, processor, samples, **options.arguments(processor), **common)``
    returns a ``result`` (an :class:`~tga_fast.analysis.results.AnalysisResult`); ``options`` is its options
    dataclass (:class:`~tga_fast.analysis.options.AnalysisOptions`); ``summary`` one line for ``--help``."""

    name: str
    function: Callable
    result: type
    options: type
    summary: str


ANALYSES: dict[str, Analysis] = {}


def register(name: str, function: Callable, result: type, options: type, summary: str) -> Analysis:
    """Adds an analysis (a second registration of the same name is a mistake and raises)."""
    if name in ANALYSES:
        raise ValueError(f"analysis {name!r} is registered twice")
    if getattr(result, "kind", None) != name:
        raise ValueError(f"{result.__name__}.kind is {getattr(result, 'kind', None)!r}, not {name!r}")
    ANALYSES[name] = entry = Analysis(name, function, result, options, summary)
    return entry


def run_analysis(name: str, model, processor, samples: Sequence, options=None, *, batch_size: int = 8,
                 progress: bool = True, with_retrieved: bool = False, system_prompt: str | None = None,
                 cluster_by: str = "concept"):
    """Runs the analysis ``name`` with ``options`` (its options dataclass; default: its defaults) and the options
    every analysis takes (``cluster_by``: the sample field its intervals are clustered by,
    :data:`tga_fast.evaluation.data.CLUSTER_FIELDS`); returns its result."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; registered: {sorted(ANALYSES)}")
    entry = ANALYSES[name]
    options = entry.options() if options is None else options
    if type(options) is not entry.options:  # a subclass could carry options the function does not take
        raise TypeError(f"{name} takes {entry.options.__name__}, got {type(options).__name__}")
    return entry.function(model, processor, samples, **options.arguments(processor), batch_size=batch_size,
                          progress=progress, with_retrieved=with_retrieved, system_prompt=system_prompt,
                          cluster_by=cluster_by)
