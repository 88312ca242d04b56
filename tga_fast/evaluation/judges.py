"""Refusal judges: did the model defend? One module per judge; this one gathers their public names. Every judge
has a stable ``name`` that each per-sample record carries (:func:`judge_name`).

- :class:`KeywordJudge` (``keyword_judge.py``, ``keyword:gcg``) matches refusal phrases (presets are data files in
  ``keywords/``) against the generated responses. The default is the literature's GCG rule (the GCG phrases
  anywhere in the response, no exclusions); the variant ``gcg+benign`` ignores near misses such as "Sorry to hear
  that, here is how" (``keywords/benign.json``). Measures refusal wording.
- :class:`LogitJudge` (``logit_judge.py``, ``logit:<threshold>``) needs no generation: the softmax probability
  mass of the refusal-start tokens (:func:`refusal_token_ids`, from the tokenizer; no generic starts such as "I")
  at the first answer position.
- :class:`HFClassifierJudge` (``hf_judges.py``, ``hf:<template>:<model>``): a published safety classifier (Llama
  Guard 3, WildGuard, the HarmBench classifier) prompted in its own format (:data:`JUDGE_TEMPLATES`) and loaded
  with :func:`load_hf_judge`. Llama Guard 3, HarmBench and ``wildguard-harmful`` measure harmfulness (a safe
  compliant answer counts as defended); ``wildguard`` measures refusal.
- :class:`LLMJudge` (``llm_judge.py``) is the protocol of a judge that reads the request too; :class:`HFModelJudge`
  (``hf:yesno:<model>``) fills it with any local HF causal LM asked a yes/no question. Any callable
  ``(prompts, responses) -> list[bool]`` works as well.
"""

from tga_fast.evaluation.hf_judges import TEMPLATES as JUDGE_TEMPLATES
from tga_fast.evaluation.hf_judges import HFClassifierJudge, load_hf_judge
from tga_fast.evaluation.keyword_judge import (
    DEFAULT_EXCLUDE,
    PRESETS,
    VARIANTS,
    KeywordJudge,
    load_phrases,
    normalize,
)
from tga_fast.evaluation.llm_judge import DEFAULT_JUDGE_TEMPLATE, HFModelJudge, LLMJudge, is_llm_judge
from tga_fast.evaluation.logit_judge import (
    MIN_PIECE_CHARS,
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
    "HFClassifierJudge",
    "HFModelJudge",
    "JUDGE_TEMPLATES",
    "KeywordJudge",
    "LLMJudge",
    "LogitJudge",
    "MIN_PIECE_CHARS",
    "PAPER_REFUSAL_STARTS",
    "PRESETS",
    "REFUSAL_STARTS",
    "VARIANTS",
    "first_token_ids",
    "is_llm_judge",
    "judge_name",
    "last_position_logits",
    "load_hf_judge",
    "load_phrases",
    "normalize",
    "refusal_token_ids",
]
