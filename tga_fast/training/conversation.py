"""Multi-turn LLaVA conversations rendered through the model's chat template and tokenized with their labels
and spans (METHOD.md section 4).

The first user turn carries the retrieved text and the image, then the question; later turns are as they are:

    user:      "Retrieved Text: " + retrieved + ". "  <image>  question_0
    assistant: answer_0 <end of turn>            <- labels
    user:      question_1
    assistant: answer_1 <end of turn>            <- labels

Every position is found by character range in the rendered text and mapped to tokens through the offset mapping
(:func:`tga_fast.models.spans.encode_with_spans`), so any chat template works and no token offset is assumed.
The labels are the answers' tokens plus the end-of-turn token the template puts right after each answer (``</s>``,
``<|eot_id|>``, ``<|im_end|>``...: the first non-blank token after the answer when it is a special token other
than bos / unk / pad / the image token; the EOS counts even when it doubles as the pad token).

Content order is required, not hoped for: a template that prints every image first (llava-hf's llava-1.5 and
LLaVA-NeXT templates do) would give ``<image>\nRetrieved Text: r. q``, where the image tokens cannot attend to the
retrieved text. :func:`check_content_order` renders a probe once (training calls it before the first step) and
:func:`render_conversation` checks every sample; both raise :class:`ContentOrderError`, which names the template
and the fix. :func:`set_chat_template` installs a replacement template (``--chat_template FILE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from tga_fast.errors import UserError
from tga_fast.models.processors import image_token_id_of
from tga_fast.models.processors import is_processor as _is_processor
from tga_fast.models.processors import tokenizer_of as _tokenizer
from tga_fast.models.prompts import RETRIEVED_PREFIX, Prompt, render_prompt, special_tokens_kwargs, user_content
from tga_fast.models.spans import encode_with_spans, locate_pieces

__all__ = [
    "ContentOrderError",
    "EncodedSample",
    "RenderedConversation",
    "Turn",
    "check_content_order",
    "encode_caption",
    "encode_conversation",
    "end_of_turn_ids",
    "image_token_id_of",
    "render_conversation",
    "set_chat_template",
]

IGNORE_INDEX = -100
# The ready-made fix for llava-1.5 checkpoints (their "USER: ... ASSISTANT:" format with content order kept).
CONTENT_ORDER_TEMPLATE_FILE = "configs/chat_templates/llava-1.5-content-order.jinja"


class ContentOrderError(UserError):
    """The chat template does not render a user turn's content in order (retrieved text, image, question)."""


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's ``question`` and the assistant's ``answer`` (both stripped)."""

    question: str
    answer: str


@dataclass(frozen=True)
class RenderedConversation:
    """``text``: the rendered conversation; ``ranges``: character ranges in it (unexpanded image placeholder) of
    ``retrieved`` ((0, 0) when absent) and ``answer0``, ``answer1``, ... one per turn."""

    text: str
    ranges: dict[str, tuple[int, int]]


@dataclass
class EncodedSample:
    """One training sample, tokenized, unpadded (the collator pads). A dataclass, not a dict, so that the
    Trainer's unused-column removal leaves it whole.

    Attributes:
        key: the record's id (or ``line N`` / ``item N``).
        input_ids, labels: int64 ``[T]``; labels are -100 off the answers.
        student_spans: int64 ``[2, 2]``, the (image, retrieved) token spans, (0, 0) when absent.
        teacher_input_ids: int64 ``[Tt]``, the caption-only prompt.
        teacher_spans: int64 ``[1, 2]``, the caption's token span in it, (0, 0) when there is no caption.
        align: the alignment terms apply (image, caption, not toxic).
        has_retrieved: a retrieved text is in the prompt.
        hinge: the record lets the hinge term apply (its ``"hinge": false`` opts out; it applies only with a
            retrieved text either way).
        image_inputs: the processor's per-image outputs (``pixel_values`` ``[1, ...]``, ``image_sizes`` ...); empty
            for a text-only sample.
        token_inputs: the processor's other per-token outputs (``token_type_ids`` ...), ``[T]`` each.
    """

    key: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    student_spans: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_spans: torch.Tensor
    align: bool
    has_retrieved: bool
    hinge: bool = True
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    token_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def end_of_turn_ids(processor) -> frozenset[int]:
    """Special tokens that may close an assistant turn: the EOS and every special added token except bos, unk,
    pad and the image token.

    The EOS stays even when it is also the pad token (Llama / Mistral tokenizers ship without one and are often
    given ``pad_token = eos_token``): dropping it would leave the answers unterminated in the labels and the
    model would never learn to stop.
    """
    tokenizer = _tokenizer(processor)
    eos = tokenizer.eos_token_id
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    image = image_token_id_of(processor)
    if image is None and getattr(tokenizer, "image_token", None):  # a bare tokenizer of a multimodal model
        image = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    excluded = {tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id, image} - {eos}
    return frozenset((special | ({eos} if eos is not None else set())) - excluded)


def _messages(processor, turns: Sequence[Turn], image: bool, retrieved: str | None, upto: int | None = None):
    """Chat messages of the first ``upto`` messages; each user turn's content comes from
    :func:`tga_fast.models.prompts.user_content` (the first carries the retrieved text and the image), so a
    training prompt is laid out exactly as an evaluation prompt."""
    as_list = _is_processor(processor)
    messages = []
    for i, turn in enumerate(turns):
        first = i == 0
        request = Prompt(question=turn.question, image=first and image, retrieved=retrieved if first else None)
        answer = [{"type": "text", "text": turn.answer}] if as_list else turn.answer
        messages += [
            {"role": "user", "content": user_content(processor, request)},
            {"role": "assistant", "content": answer},
        ]
    return messages if upto is None else messages[:upto]


def render_conversation(
    processor, turns: Sequence[Turn], *, image: bool, retrieved: str | None
) -> RenderedConversation:
    """Renders ``turns`` with the tokenizer's chat template and finds the retrieved text and every answer.

    An answer is searched after the rendering of the conversation up to its assistant header (the generation
    prompt), so a short answer ("A", "Yes") is not mistaken for a piece of the template; templates whose prefix
    renders differently fall back to searching after the previous piece.
    """
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    if image and not _is_processor(processor):
        raise ValueError("an image sample needs the model's processor, not a bare tokenizer")
    messages = _messages(processor, turns, image, retrieved)
    text = processor.apply_chat_template(messages, tokenize=False)
    ranges: dict[str, tuple[int, int]] = {"retrieved": (0, 0)}
    cursor = 0
    if retrieved is not None:
        # Without the trailing ". ": a template that trims content items must not make the search fail.
        prefixed = locate_pieces(text, [("prefixed", f"{RETRIEVED_PREFIX}{retrieved}")])["prefixed"]
        start = prefixed[0] + len(RETRIEVED_PREFIX)
        ranges["retrieved"] = (start, start + len(retrieved))
        cursor = ranges["retrieved"][1]
        _check_order(processor, text, prefixed[0], image)
    for i, turn in enumerate(turns):
        head = processor.apply_chat_template(
            messages[: 2 * i + 1], tokenize=False, add_generation_prompt=True
        )
        start = len(head) if text.startswith(head) else cursor
        ranges[f"answer{i}"] = locate_pieces(text, [("answer", turn.answer)], start=max(start, cursor))["answer"]
        cursor = ranges[f"answer{i}"][1]
    return RenderedConversation(text, ranges)


def _template_source(processor) -> str:
    """How to name the processor's chat template in a message: the folder it came from, when known."""
    return getattr(_tokenizer(processor), "name_or_path", "") or "this processor"


def _order_problem(processor, text: str, retrieved_start: int, question_start: int | None) -> str | None:
    """Why ``text`` (a rendered prompt with an image, the retrieved text at ``retrieved_start``) is out of order,
    or None. The placeholder is the processor's unexpanded image token."""
    placeholder = getattr(processor, "image_token", None)
    if not placeholder:
        return None
    image = text.find(placeholder)
    if image < 0:
        return f"renders no image placeholder {placeholder!r}"
    if image < retrieved_start:
        return "renders the image before the retrieved text"
    if question_start is not None and question_start < image:
        return "renders the image after the question"
    return None  # retrieved < image < question: the question cannot then precede the retrieved text


def _order_error(processor, problem: str, text: str, source: str | None) -> ContentOrderError:
    excerpt = text if len(text) <= 160 else text[:157] + "..."
    return ContentOrderError(
        f"the chat template of {source or _template_source(processor)} {problem} ({excerpt!r}): the student prompt "
        f"must be 'Retrieved Text: <retrieved>. <image>\\n<question>' (METHOD.md 4), else the image tokens cannot "
        f"attend to the retrieved text. Fix: --chat_template FILE with a template that keeps content order "
        f"({CONTENT_ORDER_TEMPLATE_FILE} for llava-1.5 checkpoints), or a model from `tga-fast build-lvlm`, whose "
        f"template keeps it (--use_retrieved false trains without the retrieved text instead)"
    )


def _check_order(processor, text: str, retrieved_start: int, image: bool) -> None:
    """Raises :class:`ContentOrderError` when a rendered sample with an image and a retrieved text is out of order."""
    problem = _order_problem(processor, text, retrieved_start, None) if image else None
    if problem:
        raise _order_error(processor, problem, text, None)


def check_content_order(processor, *, source: str | None = None) -> str | None:
    """Renders a probe first turn (retrieved text, image, question, answer) with ``processor``'s chat template and
    raises :class:`ContentOrderError` unless the three stand in that order; returns the rendered probe (None for a
    bare tokenizer: a text LLM has no image to misplace).

    ``source`` names the template in the message (a folder or file; default: the folder the processor came from).
    """
    if not _is_processor(processor):
        return None
    retrieved, question = "a probe retrieved text", "a probe question?"
    messages = _messages(processor, [Turn(question=question, answer="a probe answer.")], True, retrieved)
    text = processor.apply_chat_template(messages, tokenize=False)
    found = locate_pieces(text, [("retrieved", f"{RETRIEVED_PREFIX}{retrieved}")])
    question_at = text.find(question)
    problem = _order_problem(processor, text, found["retrieved"][0], question_at if question_at >= 0 else None)
    if problem:
        raise _order_error(processor, problem, text, source)
    return text


def set_chat_template(processor, path) -> str:
    """Replaces the chat template of ``processor`` (and of its tokenizer, so both render alike and both are saved
    with the trained model) with the Jinja text of the file ``path``; returns the template.

    Raises:
        UserError: naming ``DataConfig.chat_template`` when the file cannot be read or holds no template.
    """
    from pathlib import Path

    try:
        template = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"DataConfig.chat_template {path} cannot be read: {error}") from None
    if "{{" not in template and "{%" not in template:
        raise UserError(f"DataConfig.chat_template {path} holds no Jinja template")
    if _is_processor(processor):
        processor.chat_template = template
    _tokenizer(processor).chat_template = template
    return template


def encode_caption(processor, caption: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher prompt: the caption alone as the user turn (no image, no answer) in the same chat template.

    Returns ``(input_ids [Tt], span [1, 2])``; without a caption the prompt holds an empty user turn and the span
    is (0, 0).
    """
    tokenizer = _tokenizer(processor)
    # Rendered by the processor when there is one: its chat template is the student's (a llava-hf tokenizer may
    # have none of its own); tokenized by the tokenizer, as there is no image.
    text, ranges = render_prompt(processor, Prompt(question=caption or ""))
    pieces = [{"caption": ranges["question"]}]
    batch, spans = encode_with_spans(tokenizer, [text], pieces, **special_tokens_kwargs(tokenizer, [text]))
    return batch["input_ids"][0], spans.tensor[0]


def encode_conversation(
    processor,
    rendered: RenderedConversation,
    image=None,
    *,
    image_token_id: int | None,
    end_of_turn: frozenset[int],
    image_runs: str = "one",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, dict]:
    """Tokenizes a rendered conversation (with its image, a PIL image or None); ``image_runs`` is the model
    family's (:func:`tga_fast.models.processors.image_runs_of`): Mistral 3's and Idefics3's image span is the hull
    of its runs.

    Returns ``(input_ids [T], labels [T], student_spans [2, 2], image_inputs, token_inputs)``: labels hold the
    answers' tokens and their end-of-turn token, -100 elsewhere; the spans are (image, retrieved).
    """
    tokenizer = _tokenizer(processor)
    names = list(rendered.ranges)
    batch, spans = encode_with_spans(
        processor,
        [rendered.text],
        [rendered.ranges],
        images=[image] if image is not None else None,
        image_token_id=image_token_id,
        image_runs=image_runs,
        **special_tokens_kwargs(tokenizer, [rendered.text]),
    )
    input_ids = batch.pop("input_ids")[0]
    batch.pop("attention_mask", None)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    length = input_ids.shape[0]
    for name in names:
        if not name.startswith("answer"):
            continue
        start, end = spans[name][0].tolist()
        if end == start:
            continue
        labels[start:end] = input_ids[start:end]
        after = end
        while after < length and not tokenizer.decode(input_ids[after : after + 1]).strip():
            after += 1  # blank tokens between the answer and the end-of-turn token
        if after < length and int(input_ids[after]) in end_of_turn:
            labels[end : after + 1] = input_ids[end : after + 1]
    image_span = spans["image"][0] if "image" in spans.names else torch.zeros(2, dtype=torch.int64)
    student_spans = torch.stack([image_span, spans["retrieved"][0]])
    # The image processor's outputs are per image whatever their shape (Qwen2-VL's pixel_values are [patches, C]
    # and could be as wide as the prompt is long); the rest, [1, T], is per token (token_type_ids...).
    per_image = {"pixel_values", "image_sizes", *getattr(getattr(processor, "image_processor", None),
                                                         "model_input_names", ())}
    token_inputs = {k: v[0] for k, v in batch.items()
                    if k not in per_image and v.dim() == 2 and v.shape[1] == length}
    image_inputs = {k: v for k, v in batch.items() if k not in token_inputs}
    return input_ids, labels, student_spans, image_inputs, token_inputs
