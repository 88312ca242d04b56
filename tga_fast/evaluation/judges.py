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
    REFUSAL_STARTS,
    LogitJudge,
    first_token_ids,
    last_position_logits,
    refusal_token_ids,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_JUDGE_TEMPLATE",
    "HFModelJudge",
    "KeywordJudge",
    "LLMJudge",
    "LogitJudge",
    "PRESETS",
    "REFUSAL_STARTS",
    "first_token_ids",
    "is_llm_judge",
    "last_position_logits",
    "load_phrases",
    "normalize",
    "refusal_token_ids",
]
