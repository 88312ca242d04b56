"""Single-turn requests rendered through the model's own chat template, with token spans of every piece.

One place builds the prompts of the analyses, the DSR evaluation and the toy world, so that "the same prompt with
the text in place of the image" means the same thing everywhere. The layout follows METHOD.md section 4:

    [system]  user: ["Retrieved Text: " + retrieved + ". "] [<image> | text + "\\n"] question   assistant:

Spans are found by character ranges in the rendered prompt (never by token offsets), so any chat template works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tga_fast.errors import UserError
from tga_fast.models.processors import context_length, is_processor, tokenizer_of
from tga_fast.models.spans import Spans, encode_with_spans, locate_pieces

__all__ = ["EncodedPrompts", "Prompt", "encode_prompts", "render_prompt", "special_tokens_kwargs", "user_content"]

logger = logging.getLogger(__name__)

RETRIEVED_PREFIX = "Retrieved Text: "
PIECES = ("retrieved", "text", "question")  # span names, in prompt order; absent pieces get the empty span


@dataclass(frozen=True)
class Prompt:
    """One user request.

    Attributes:
        question: the request, e.g. "How do I use this?".
        image: True when an image stands before the question (its pixels go to :func:`encode_prompts`).
        text: text standing where the image would be (the text condition of METHOD.md 3D), or None.
        retrieved: retrieved text put first as ``"Retrieved Text: <retrieved>. "``, or None.
        system: a system prompt (a safety prompt, say), or None.
        marks: character ranges ``(field, start, end)`` inside ``text``, ``question`` or ``retrieved`` (toxic
            words, say); they become the ``marked`` token mask of :func:`encode_prompts`.
    """

    question: str
    image: bool = False
    text: str | None = None
    retrieved: str | None = None
    system: str | None = None
    marks: tuple[tuple[str, int, int], ...] = field(default=())

    def __post_init__(self):
        if self.image and self.text is not None:
            raise ValueError("a Prompt has either an image or a text in its place, not both")
        for mark in self.marks:
            name, start, end = mark
            value = getattr(self, name, None) if name in PIECES else None
            if not isinstance(value, str) or not 0 <= start <= end <= len(value):
                raise ValueError(f"mark {mark} is not a character range of the prompt's {name!r} field")


def user_content(processor, prompt: Prompt):
    """The user message's content for ``prompt`` (its system prompt aside): a content list of text and image items
    (as LLaVA templates expect) for a processor, a plain string for a bare tokenizer (then an image is an error).

    The one place that lays out ``["Retrieved Text: " + retrieved + ". "] [<image> | text + "\\n"] question``: the
    training conversation's first turn uses it too.
    """
    items: list[tuple[str, str | None]] = []  # (kind, text); kind "text" or "image"
    if prompt.retrieved is not None:
        items.append(("text", f"{RETRIEVED_PREFIX}{prompt.retrieved}. "))
    if prompt.image:
        items.append(("image", None))
    if prompt.text is not None:
        items.append(("text", prompt.text + "\n"))
    items.append(("text", prompt.question))
    if is_processor(processor):
        return [{"type": "image"} if kind == "image" else {"type": "text", "text": text} for kind, text in items]
    if prompt.image:
        raise ValueError("Prompt.image is set but a bare tokenizer was given (pass the model's processor)")
    return "".join(text for _, text in items)


def special_tokens_kwargs(processor, texts: Sequence[str]) -> dict:
    """``{"add_special_tokens": bool}`` for tokenizing chat-template renderings ``texts``.

    False when every text already starts with the tokenizer's BOS (a template that prints it, as Llama-3's and
    Mistral's do; a second BOS from the tokenizer would shift every position and change what the model sees),
    True otherwise (a template without BOS, as llava-1.5-hf's, leaves it to the tokenizer).
    """
    bos = getattr(tokenizer_of(processor), "bos_token", None)
    return {"add_special_tokens": not (bos and texts and all(text.startswith(bos) for text in texts))}


def render_prompt(processor, prompt: Prompt) -> tuple[str, dict[str, tuple[int, int]]]:
    """``(text, ranges)``: the rendered prompt (generation prompt added) and the character range of each piece
    of :data:`PIECES` plus ``mark<i>`` per mark (``(0, 0)`` when absent), in the unexpanded text.

    A processor renders a content list (text and image items, as LLaVA templates expect); a bare tokenizer gets a
    plain string, and then an image is an error.
    """
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": user_content(processor, prompt)})
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    start = 0
    if prompt.system:  # the system prompt may repeat words of the request: search after it
        start = locate_pieces(rendered, [("system", prompt.system)])["system"][1]
    present = [(name, getattr(prompt, name)) for name in PIECES if getattr(prompt, name) is not None]
    found = locate_pieces(rendered, present, start=start)
    ranges = {name: found.get(name, (0, 0)) for name in PIECES}
    for i, (name, mark_start, mark_end) in enumerate(prompt.marks):
        offset = ranges[name][0]
        ranges[f"mark{i}"] = (offset + mark_start, offset + mark_end) if mark_end > mark_start else (0, 0)
    return rendered, ranges


@dataclass
class EncodedPrompts:
    """A tokenized batch of prompts.

    Attributes:
        batch: the processor's ``BatchEncoding`` (``input_ids``/``attention_mask`` ``[B, T]``, ``pixel_values``
            when images were given), padded on the tokenizer's ``padding_side``.
        spans: ``Spans`` ``[B, S, 2]`` named ``image`` (when the model has an image token), ``retrieved``,
            ``text``, ``question``; an absent piece is the empty span ``(0, 0)``.
        marked: bool ``[B, T]``, the tokens overlapping any of the prompt's marks.
        texts: the rendered prompts.
    """

    batch: dict
    spans: Spans
    marked: torch.Tensor
    texts: list[str]

    @property
    def last_positions(self) -> torch.Tensor:
        """int64 ``[B]``: the last non-padding position of each sample (where the answer starts)."""
        mask = self.batch["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        return torch.where(mask.bool(), positions, -1).amax(dim=1)


def encode_prompts(
    processor,
    prompts: Sequence[Prompt],
    images: Sequence | None = None,
    *,
    image_token_id: int | None = None,
    image_runs: str = "one",
    max_length: int | None = None,
    too_long: str = "warn",
    **encode_kwargs,
) -> EncodedPrompts:
    """Renders and tokenizes ``prompts`` (one image per prompt with ``image=True``, in order, in ``images``).

    A batch mixes image and text-only prompts only if the processor allows it; ``image_token_id`` (from
    ``tga_fast.models.resolve(model).image_token_id``) adds the ``image`` span; ``image_runs`` is the adapter's (see
    :func:`tga_fast.models.spans.image_token_spans`). ``encode_kwargs`` go to the
    processor; ``add_special_tokens`` defaults to :func:`special_tokens_kwargs` (no second BOS).

    Prompts are never truncated (a cut prompt would lose the question at its end). One longer than the model's
    context (``max_length``: pass :func:`tga_fast.models.processors.context_length` of the model; default the
    tokenizer's ``model_max_length`` when it is a real limit), image tokens included, still runs, as the model
    allows it, but past the positions it was trained on: ``too_long="warn"`` (the default) logs one warning per
    call naming how many prompts and the longest length, ``"error"`` raises a ``UserError`` instead.
    """
    if too_long not in ("warn", "error"):
        raise ValueError(f"too_long must be 'warn' or 'error', got {too_long!r}")
    if not prompts:
        raise ValueError("prompts is empty")
    needed = sum(p.image for p in prompts)
    given = 0 if images is None else len(images)
    if needed != given:
        raise ValueError(f"{needed} prompts have image=True but {given} images were given")
    rendered = [render_prompt(processor, p) for p in prompts]
    most_marks = max(len(p.marks) for p in prompts)
    texts, pieces = [], []
    for text, ranges in rendered:
        for i in range(most_marks):
            ranges.setdefault(f"mark{i}", (0, 0))
        texts.append(text)
        pieces.append(ranges)
    encode_kwargs = {**special_tokens_kwargs(processor, texts), **encode_kwargs}
    batch, spans = encode_with_spans(
        processor, texts, pieces, images=list(images) if needed else None, image_token_id=image_token_id,
        image_runs=image_runs, **encode_kwargs,
    )
    _check_length(batch["attention_mask"], context_length(processor=processor) if max_length is None else max_length,
                  too_long)
    mark_names = [f"mark{i}" for i in range(most_marks)]
    seq_len = batch["input_ids"].shape[1]
    if mark_names:
        marked = spans.mask(seq_len, *mark_names)
    else:
        marked = torch.zeros(len(prompts), seq_len, dtype=torch.bool)
    keep = [n for n in spans.names if n not in mark_names]
    return EncodedPrompts(batch=batch, spans=spans.select(*keep), marked=marked, texts=texts)


def _check_length(attention_mask: torch.Tensor, limit: int | None, too_long: str) -> None:
    """Warns (or raises, ``too_long="error"``) when a prompt's real length (``attention_mask`` ``[B, T]``, padding
    excluded) exceeds ``limit``."""
    if limit is None:
        return
    lengths = attention_mask.sum(dim=1)
    over = int((lengths > limit).sum())
    if not over:
        return
    message = (
        f"{over} of {len(lengths)} prompts are longer than the model's context of {limit} tokens (the longest has "
        f"{int(lengths.max())}); the model reads positions it was not trained on"
    )
    if too_long == "error":
        raise UserError(message)
    logger.warning(message)
