"""Refusal-start tokens that discriminate, derived from the model's own answers (the R of METHOD.md 3 A, "Controls").

A token belongs to R when it begins the model's refusals of toxic requests more often than it begins its answers to
benign ones: "Sorry" stays, while " I" (which starts "I cannot help" and "I see a cup" alike) goes when the model
opens benign answers with it at least as often. A start is keyed by the first visible token's text, stripped, so a
response decoded with or without its leading space counts as the same start; R then holds that word's first token
bare and after a space (:func:`tga_fast.evaluation.judges.first_token_ids`), the two forms the lens can rank at the
first answer position.

    ids, table = derive_refusal_starts(tokenizer, refused_toxic_responses, benign_responses)
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from tga_fast.models.processors import tokenizer_of

__all__ = ["derive_refusal_starts", "first_response_token"]


def first_response_token(tokenizer, response: str) -> tuple[int, str] | None:
    """``(id, text)`` of the first token of ``response`` (tokenized as it is, no special tokens) that decodes to
    something other than whitespace, its text stripped; None for an empty or all-whitespace response.

    SentencePiece tokenizers write " Sorry" as ``▁`` + ``Sorry`` in some contexts: the bare ``▁`` is not the start.
    """
    tokenizer = tokenizer_of(tokenizer)
    for token in tokenizer.encode(response, add_special_tokens=False):
        text = tokenizer.decode([token]).strip()
        if text:
            return int(token), text
    return None


def derive_refusal_starts(tokenizer, refusals: Sequence[str], benign: Sequence[str]) -> tuple[list[int], list[dict]]:
    """R from the model's responses: the starts of ``refusals`` (its responses to toxic requests that the judge
    calls refusals) whose share among them is above their share among ``benign`` (its responses to benign
    requests, refused or not).

    Returns:
        ``(ids, table)``: ``ids`` sorted unique token ids (empty when no start discriminates, e.g. the model
        refuses nothing); ``table`` one row per start seen in ``refusals``, most frequent first:
        ``{"token", "refusal_share", "benign_share", "kept"}`` (shares of all responses of each group, so an
        empty response counts in the denominator).
    """
    from tga_fast.evaluation.judges import first_token_ids

    tokenizer = tokenizer_of(tokenizer)
    refusal_starts = [first_response_token(tokenizer, r) for r in refusals]
    benign_starts = Counter(start[1] for start in (first_response_token(tokenizer, r) for r in benign) if start)
    counts = Counter(start[1] for start in refusal_starts if start)
    observed: dict[str, set[int]] = {}
    for start in refusal_starts:
        if start:
            observed.setdefault(start[1], set()).add(start[0])
    table, ids = [], set()
    for text, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        refusal_share = count / len(refusals)
        benign_share = benign_starts[text] / len(benign) if benign else 0.0
        kept = refusal_share > benign_share
        table.append({"token": text, "refusal_share": refusal_share, "benign_share": benign_share, "kept": kept})
        if kept:
            # The id the responses began with, and the word's first token bare and after a space: the lens reads
            # the first answer position, where either form may be the one the model writes.
            ids |= observed[text] | set(first_token_ids(tokenizer, [text]))
    ids.discard(tokenizer.unk_token_id)  # an unknown word's <unk> would count every unknown word as a refusal
    return sorted(ids), table
