"""The options of an analysis as a frozen dataclass: each field is one keyword argument of the analysis function
and, through its metadata (:func:`option`), one flag of ``tga-fast analyze <name>`` (``window`` -> ``--window``).
The options every analysis takes (``batch_size``, ``progress``, ``with_retrieved``, ``system_prompt``) are not
repeated here: the runner passes them to all."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["AnalysisOptions", "make_judge", "option"]

JUDGES = ("keyword", "logit")


def option(default: Any, help: str, *, choices: tuple | None = None, positive: bool = False, many: bool = False):
    """A dataclass field with what the CLI needs: ``help``, ``choices``, ``positive`` (a whole number >= 1) and
    ``many`` (a tuple of choices, given as several values)."""
    metadata = {"help": help, "choices": choices, "positive": positive, "many": many}
    return dataclasses.field(default=default, metadata=metadata)


def make_judge(judge, processor):
    """A refusal judge from its CLI name: ``"keyword"`` (the GCG refusal phrases in the generated answer) or
    ``"logit"`` (the refusal-token mass at the first answer position, no generation); a judge object is returned
    as it is."""
    if not isinstance(judge, str):
        return judge
    from tga_fast.evaluation.judges import KeywordJudge, LogitJudge

    if judge == "keyword":
        return KeywordJudge()
    if judge == "logit":
        return LogitJudge(processor)
    raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Base of the options dataclasses (an analysis without own options uses it as it is)."""

    def arguments(self, processor) -> dict:
        """The keyword arguments of the analysis function: the fields, a judge's name made a judge."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "judge" in kwargs:
            kwargs["judge"] = make_judge(kwargs["judge"], processor)
        return kwargs

    def needs_images(self) -> bool:
        """Whether the run reads the samples' images (the data loader then checks every image)."""
        return False
