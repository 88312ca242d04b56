"""The options of an analysis as a frozen dataclass: each field is one keyword argument of the analysis function
and, through its metadata (:func:`option`), one flag of ``tga-fast analyze <name>`` (``window`` -> ``--window``).
The options every analysis takes (``batch_size``, ``progress``, ``with_retrieved``, ``system_prompt``) are not
repeated here: the runner passes them to all."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["AnalysisOptions", "JudgeOptions", "make_judge", "option"]

JUDGES = ("keyword", "logit", "hf")


def option(default: Any, help: str, *, choices: tuple | None = None, positive: bool = False, many: bool = False):
    """A dataclass field with what the CLI needs: ``help``, ``choices``, ``positive`` (a whole number >= 1) and
    ``many`` (a tuple of choices, given as several values)."""
    metadata = {"help": help, "choices": choices, "positive": positive, "many": many}
    return dataclasses.field(default=default, metadata=metadata)


def make_judge(judge, processor, judge_model: str | None = None, judge_template: str | None = None):
    """A refusal judge from its CLI name: ``"keyword"`` (the GCG refusal phrases in the generated answer),
    ``"logit"`` (the refusal-token mass at the first answer position, no generation) or ``"hf"`` (a local
    classifier model at ``judge_model`` prompted with ``judge_template``:
    :func:`tga_fast.evaluation.hf_judges.load_hf_judge`); a judge object is returned as it is."""
    if not isinstance(judge, str):
        return judge
    from tga_fast.evaluation.judges import KeywordJudge, LogitJudge

    if judge != "hf" and (judge_model is not None or judge_template is not None):
        raise ValueError(f"--judge-model and --judge-template go with --judge hf, not --judge {judge}")
    if judge == "keyword":
        return KeywordJudge()
    if judge == "logit":
        return LogitJudge(processor)
    if judge == "hf":
        from tga_fast.evaluation.hf_judges import TEMPLATES, load_hf_judge

        if not judge_model:
            raise ValueError("--judge hf needs --judge-model: the local folder of the classifier checkpoint")
        if not judge_template:
            raise ValueError(f"--judge hf needs --judge-template: one of {list(TEMPLATES)} or a template .json file")
        return load_hf_judge(judge_model, judge_template)
    raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Base of the options dataclasses (an analysis without own options uses it as it is)."""

    def arguments(self, processor) -> dict:
        """The keyword arguments of the analysis function: the fields, a judge's name made a judge."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "judge" in kwargs:
            kwargs["judge"] = make_judge(kwargs["judge"], processor, kwargs.pop("judge_model", None),
                                         kwargs.pop("judge_template", None))
        return kwargs

    def needs_images(self) -> bool:
        """Whether the run reads the samples' images (the data loader then checks every image)."""
        return False


@dataclasses.dataclass(frozen=True)
class JudgeOptions(AnalysisOptions):
    """Options of an analysis that judges refusals (``--judge``, ``--judge-model``, ``--judge-template``): the
    function receives one ``judge`` object (:func:`make_judge`)."""

    judge: str = option("keyword", "keyword = GCG refusal phrases in the generated answer; logit = refusal-token "
                        "probability mass at the first answer position (no generation); hf = a local classifier "
                        "model (--judge-model, --judge-template)", choices=JUDGES)
    judge_model: str | None = option(None, "with --judge hf: the local classifier checkpoint folder")
    judge_template: str | None = option(None, "with --judge hf: llamaguard3, wildguard, wildguard-harmful, "
                                        "harmbench or a template file (.json); llamaguard3, harmbench and "
                                        "wildguard-harmful judge harmfulness, wildguard refusal")
