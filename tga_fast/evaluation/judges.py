"""Refusal judges: is a response a refusal? One module per judge; this one gathers their public names.

- :class:`KeywordJudge` (``keyword_judge.py``) matches refusal phrases (presets are data files in ``keywords/``:
  ``gcg``, the GCG list METHOD.md section 3 quotes, and ``extended``; near misses such as "Sorry to hear that,
  here is how" are excluded by ``keywords/benign.json``) against the generated responses.
- :class:`LogitJudge` (``logit_judge.py``) needs no generation: the softmax probability mass of the refusal-start
  tokens (:func:`refusal_token_ids`, from the tokenizer) at the first answer position.
- :class:`LLMJudge` (``llm_judge.py``) is the protocol of a judge that reads the request too; :class:`HFModelJudge`
  fills it with any local HF causal LM asked a yes/no question. Any callable ``(prompts, responses) -> list[bool]``
  works as well.
"""

from tga_fast.evaluation.keyword_judge import DEFAULT_EXCLUDE, PRESETS, KeywordJudge, load_phrases, normalize
from tga_fast.evaluation.llm_judge import DEFAULT_JUDGE_TEMPLATE, HFModelJudge, LLMJudge, is_llm_judge
from tga_fast.evaluation.logit_judge import (
    PAPER_REFUSAL_STARTS,
    REFUSAL_STARTS,
    LogitJudge,
    first_token_ids,
    last_position_logits,
    refusal_token_ids,
)


def judge_name(judge) -> str:
    """The name a judge is recorded under in every per-sample record and result (``judge.name`` when it has one,
    e.g. ``keyword:gcg``; else its ``repr``)."""
    name = getattr(judge, "name", None)
    return name if isinstance(name, str) and name else repr(judge)


__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_JUDGE_TEMPLATE",
    "HFModelJudge",
    "KeywordJudge",
    "LLMJudge",
    "LogitJudge",
    "PAPER_REFUSAL_STARTS",
    "PRESETS",
    "REFUSAL_STARTS",
    "first_token_ids",
    "is_llm_judge",
    "judge_name",
    "last_position_logits",
    "load_phrases",
    "normalize",
    "refusal_token_ids",
]
