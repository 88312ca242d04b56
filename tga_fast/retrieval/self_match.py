"""The self-match rule (METHOD.md section 4): a retrieved text equal to the sample's own caption would hand the
model its alignment target, so it is cut to its first half (``"half"``, the paper's rule) or replaced by the next
candidate that differs from the caption (``"next"``); ``"keep"`` leaves it.

Texts are compared after case folding, whitespace collapsing and dropping trailing punctuation, so
"A dog runs." matches "a dog  runs". The first half is taken in words (at least one), not characters, so no word
is cut in two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

RULES = ("half", "next", "keep")


def normalise(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(" .!?;:,")


def is_self_match(retrieved: str, caption: str | None) -> bool:
    return caption is not None and normalise(retrieved) == normalise(caption)


def first_half(text: str) -> str:
    words = text.split()
    return " ".join(words[: max(1, len(words) // 2)])


@dataclass(frozen=True)
class Choice:
    text: str
    score: float
    rank: int  # position of the chosen candidate in the ranked list
    applied: str | None  # "half" or "next" when the rule changed the top candidate, else None


def choose(candidates: Sequence[tuple[str, float]], caption: str | None, rule: str = "half") -> Choice:
    """Pick the retrieved text from ranked ``(text, score)`` candidates (best first) under ``rule``.

    ``"next"`` takes the first candidate that is not the caption; when every candidate is the caption (a corpus
    holding it many times), it falls back to ``"half"`` of the first.
    """
    if rule not in RULES:
        raise ValueError(f"self-match rule must be one of {RULES}, got {rule!r}")
    if not candidates:
        raise ValueError("no candidates to choose from")
    text, score = candidates[0]
    if rule == "keep" or not is_self_match(text, caption):
        return Choice(text, score, 0, None)
    if rule == "next":
        for rank, (other, other_score) in enumerate(candidates[1:], start=1):
            if not is_self_match(other, caption):
                return Choice(other, other_score, rank, "next")
    return Choice(first_half(text), score, 0, "half")
