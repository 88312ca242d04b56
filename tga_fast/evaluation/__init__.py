"""Evaluation: refusal judges, batched generation, the JSONL evaluation format, the defense success rate with
clustered intervals, and paired comparisons of two DSR results.

    data = load_eval_set("eval.jsonl")                       # format: tga_fast.evaluation.data
    result = evaluate_dsr(model, processor, data.samples, condition="image", judge=KeywordJudge("gcg"))
    result.save("out/")                           # result.json + samples.jsonl + figure.png
    compare_dsr(DSRResult.load("out/base"), result).verdict   # paired: McNemar + clustered interval of B - A
"""

from tga_fast.evaluation.data import EvalSample, EvalSet, load_eval_set
from tga_fast.evaluation.compare import DSRComparison, compare_dsr
from tga_fast.evaluation.dsr import DSRResult, SampleRecord, evaluate_dsr
from tga_fast.evaluation.generation import generate_responses
from tga_fast.evaluation.rates import Rate, dsr_from_verdicts, rate_dict, wilson_interval
from tga_fast.evaluation.judges import (
    REFUSAL_STARTS,
    HFModelJudge,
    KeywordJudge,
    LLMJudge,
    LogitJudge,
    refusal_token_ids,
)

__all__ = [
    "REFUSAL_STARTS",
    "DSRComparison",
    "DSRResult",
    "EvalSample",
    "EvalSet",
    "HFModelJudge",
    "KeywordJudge",
    "LLMJudge",
    "LogitJudge",
    "Rate",
    "SampleRecord",
    "compare_dsr",
    "dsr_from_verdicts",
    "evaluate_dsr",
    "generate_responses",
    "load_eval_set",
    "rate_dict",
    "refusal_token_ids",
    "wilson_interval",
]
