"""Token spans of a padded batch, found from the tokenization: never from hard-coded offsets or token ids.

A span is a half-open ``[start, end)`` range of token positions of one sample; ``Spans`` holds S named spans
per sample as an int64 ``[B, S, 2]`` tensor, the input of ``segment_pool``/``segment_cosine`` and ``capture``.

    prompt text:   "USER: Retrieved Text: a dog. <image>\\nwhat is this? ASSISTANT:"
                                     ^^^^^^ piece "retrieved" (char range)
    after the processor expands <image> into N tokens and tokenizes with offsets:
    tokens:        <s> USER : Retrieved Text : ␣a ␣dog . <image> x N  \\n what ...  <pad> <pad>
    spans:                                   [---------) retrieved    [--- image ---)

Text pieces are located by character range in the rendered prompt, shifted past each expanded image
placeholder, and mapped to tokens through the tokenizer's offset mapping (a token belongs to a piece when their
character ranges overlap). The image span is the run of the model's image token in ``input_ids`` (the
processor's own expansion). Padding and special tokens with empty offsets are never inside a span.

Families whose image is several runs of image tokens (row-break or tile tokens between them; the adapter's
``image_runs="hull"``) get one image span per sample from the first to one past the last image token, the
tokens in between included: pooling over it averages the break/tile tokens with the patches. LLaVA-style
families (``image_runs="one"``) keep one contiguous run, and a split run there raises (a bug, not a layout).

When the processor reports where it expanded each placeholder (transformers 5.x processors:
``return_text_replacement_offsets``), character ranges are shifted by exactly those replacements (Gemma 3's
``"\n\n<start_of_image>...<end_of_image>\n\n"``, Mistral 3's rows with ``[IMG_BREAK]`` / ``[IMG_END]`` and
Idefics3's tile tags are not N copies of a placeholder); otherwise by "placeholder repeated N times" as LLaVA
expands it. That record also says how many images each sample holds: two in one sample are refused, whatever the
runs rule (a hull would pool both as one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from tga_fast.models.processors import tokenizer_of

__all__ = [
    "Spans",
    "char_ranges_to_token_spans",
    "encode_with_spans",
    "image_token_spans",
    "locate_pieces",
]


@dataclass(frozen=True)
class Spans:
    """S named token spans per sample: ``tensor`` int64 ``[B, S, 2]`` (half-open), ``names`` of length S."""

    tensor: torch.Tensor
    names: tuple[str, ...]

    def __post_init__(self):
        if self.tensor.dtype != torch.int64 or self.tensor.dim() != 3 or self.tensor.shape[-1] != 2:
            raise ValueError(f"Spans.tensor must be int64 [B, S, 2], got {self.tensor.dtype} {tuple(self.tensor.shape)}")
        if len(self.names) != self.tensor.shape[1] or len(set(self.names)) != len(self.names):
            raise ValueError(f"Spans.names {self.names} must be {self.tensor.shape[1]} distinct names")

    @classmethod
    def stack(cls, spans: Mapping[str, torch.Tensor]) -> "Spans":
        """From ``{name: [B, 2] or [B, 1, 2]}`` in the mapping's order."""
        columns = [t.reshape(t.shape[0], 1, 2) for t in spans.values()]
        return cls(torch.cat(columns, dim=1).to(torch.int64), tuple(spans))

    def __getitem__(self, name: str) -> torch.Tensor:
        """``[B, 2]`` span of ``name``."""
        return self.tensor[:, self._index(name)]

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no span named {name!r}; spans are {list(self.names)}")
        return self.names.index(name)

    def select(self, *names: str) -> "Spans":
        return Spans(self.tensor[:, [self._index(n) for n in names]].contiguous(), tuple(names))

    def to(self, device) -> "Spans":
        return Spans(self.tensor.to(device), self.names)

    @property
    def lengths(self) -> torch.Tensor:
        """``[B, S]`` token counts."""
        return self.tensor[..., 1] - self.tensor[..., 0]

    def mask(self, seq_len: int, *names: str) -> torch.Tensor:
        """bool ``[B, T]``: positions inside any of ``names`` (default: all spans)."""
        chosen = self.select(*names).tensor if names else self.tensor
        positions = torch.arange(seq_len, device=chosen.device)
        inside = (positions >= chosen[..., :1]) & (positions < chosen[..., 1:])  # [B, S, T]
        return inside.any(dim=1)

    def validate(self, seq_len: int, attention_mask: torch.Tensor | None = None) -> "Spans":
        """Raises naming the sample and span if a span is reversed, out of ``[0, seq_len]`` or covers padding."""
        starts, ends = self.tensor[..., 0], self.tensor[..., 1]
        bad = (starts > ends) | (starts < 0) | (ends > seq_len)
        if bool(bad.any()):
            b, s = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"span {self.names[s]!r} of sample {b} is {self.tensor[b, s].tolist()} (sequence length {seq_len})")
        if attention_mask is not None:
            padded = (attention_mask == 0)[:, None, :] & _inside(self.tensor, seq_len)
            if bool(padded.any()):
                b, s, t = (int(i) for i in padded.nonzero()[0])
                raise ValueError(f"span {self.names[s]!r} of sample {b} covers padding at position {t}")
        return self


def _inside(spans: torch.Tensor, seq_len: int) -> torch.Tensor:
    positions = torch.arange(seq_len, device=spans.device)
    return (positions >= spans[..., :1]) & (positions < spans[..., 1:])


def _first_last(inside: torch.Tensor) -> torch.Tensor:
    """``inside`` bool ``[..., T]`` -> ``[..., 2]`` span from the first to one past the last True; (0, 0) if none."""
    seq_len = inside.shape[-1]
    any_inside = inside.any(dim=-1)
    first = inside.int().argmax(dim=-1)
    last = seq_len - inside.flip(-1).int().argmax(dim=-1)
    spans = torch.stack([first, last], dim=-1)
    return torch.where(any_inside[..., None], spans, torch.zeros_like(spans)).to(torch.int64)


IMAGE_RUNS = ("one", "hull")


def image_token_spans(input_ids: torch.Tensor, image_token_id: int, image_runs: str = "one") -> torch.Tensor:
    """The image span of each sample: input_ids ``[B, T]`` -> int64 ``[B, 1, 2]``.

    A sample without image tokens (text-only) gets the empty span (0, 0). ``image_runs="one"`` (LLaVA,
    LLaVA-OneVision, Qwen, Gemma 3): the run must be contiguous (one image per sample); a sample with two runs
    raises, naming it. ``"hull"`` (Mistral 3's rows between ``[IMG_BREAK]``, Idefics3's tiles between
    ``<fake_token_around_image><row_i_col_j>``): from the first to one past the last image token, what lies
    between included. The caller guarantees one image per sample there (:func:`encode_with_spans` checks it on
    the processor's record of its replacements).
    """
    if image_runs not in IMAGE_RUNS:
        raise ValueError(f"image_runs must be one of {IMAGE_RUNS}, got {image_runs!r}")
    is_image = input_ids == image_token_id
    spans = _first_last(is_image)  # [B, 2]
    if image_runs == "hull":
        return spans[:, None, :]
    count = is_image.sum(dim=-1)
    split = count != (spans[:, 1] - spans[:, 0])
    if bool(split.any()):
        b = int(split.nonzero()[0])
        raise ValueError(f"sample {b} has its {int(count[b])} image tokens in more than one run (one image per sample)")
    return spans[:, None, :]


def char_ranges_to_token_spans(
    offsets: torch.Tensor, char_ranges: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token spans of character ranges through a tokenizer's offset mapping.

    Args:
        offsets: int ``[B, T, 2]``, each token's character range in its sample's text (``return_offsets_mapping``).
        char_ranges: int ``[B, S, 2]``, half-open character ranges of S pieces per sample; an empty range gives the
            empty span (0, 0).
        attention_mask: ``[B, T]``; padding positions are never inside a span.

    Returns:
        int64 ``[B, S, 2]``: from the first to one past the last token whose characters overlap the range.
    """
    token_start, token_end = offsets[..., 0][:, None, :], offsets[..., 1][:, None, :]  # [B, 1, T]
    piece_start, piece_end = char_ranges[..., 0:1], char_ranges[..., 1:2]  # [B, S, 1]
    real = token_end > token_start  # special tokens and padding have empty offsets
    if attention_mask is not None:
        real = real & attention_mask.bool()[:, None, :]
    inside = real & (token_start < piece_end) & (token_end > piece_start)
    return _first_last(inside)


def locate_pieces(text: str, pieces: Sequence[tuple[str, str]], start: int = 0) -> dict[str, tuple[int, int]]:
    """Character ranges of ``(name, piece_text)`` pieces that appear in ``text`` in the given order.

    Each piece is searched from the end of the previous one, so a piece repeated earlier in the template (a
    system prompt, say) is not mistaken for it. Raises naming the piece if it is not there.
    """
    ranges, cursor = {}, start
    for name, piece in pieces:
        if not piece:
            ranges[name] = (cursor, cursor)
            continue
        found = text.find(piece, cursor)
        if found < 0:
            raise ValueError(f"piece {name!r} ({piece[:40]!r}) not found in the prompt after position {cursor}")
        ranges[name] = (found, found + len(piece))
        cursor = found + len(piece)
    return ranges


def _expand_placeholders(text: str, ranges: dict[str, tuple[int, int]], placeholder: str, tokens_per_image: int):
    """Shifts character ranges of the unexpanded text past each ``placeholder`` that the processor repeats
    ``tokens_per_image`` times."""
    if tokens_per_image <= 1 or not placeholder:
        return ranges
    shift_per = (tokens_per_image - 1) * len(placeholder)
    places = []
    at = text.find(placeholder)
    while at >= 0:
        places.append(at)
        at = text.find(placeholder, at + len(placeholder))

    def shift(position: int) -> int:
        return position + shift_per * sum(1 for p in places if p < position)

    return {name: (shift(s), shift(e)) for name, (s, e) in ranges.items()}


def _apply_replacements(ranges: dict[str, tuple[int, int]], replacements) -> dict[str, tuple[int, int]]:
    """Shifts character ranges of the unexpanded text by the processor's replacement offsets (a list of
    ``{"span": (start, end), "new_span": (new_start, new_end)}``, in text order): a position at or after a
    placeholder's end moves by how much that placeholder grew."""

    def shift(position: int) -> int:
        return position + sum(
            (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0])
            for r in replacements
            if r["span"][1] <= position
        )

    return {name: (shift(s), shift(e)) for name, (s, e) in ranges.items()}


def _reports_replacements(processor) -> bool:
    """Whether the processor's call takes ``return_text_replacement_offsets``: transformers' ``ProcessingKwargs``
    declares it (5.24), or the call names it (tga_fast's ``ImageOnlyQwenVLProcessor``). A processor of an older or
    a custom kind may do neither, and then gets no unknown option."""
    import inspect

    kwargs_type = getattr(type(processor), "valid_processor_kwargs", None)
    if "return_text_replacement_offsets" in getattr(kwargs_type, "__annotations__", {}):
        return True
    try:
        return "return_text_replacement_offsets" in inspect.signature(processor.__call__).parameters
    except (TypeError, ValueError):  # a callable without a signature to read
        return False


def _encode_text_only(processor, texts: Sequence[str], call_kwargs: dict):
    """A batch without images: through the processor, or through its tokenizer where the processor's input check
    refuses text alone (PaliGemma's ``validate_inputs`` raises "images are expected"); the tokenizer then also
    gives the ``token_type_ids`` the processor would (all 0: the whole prompt is PaliGemma's prefix)."""
    tokenizer = tokenizer_of(processor)
    validate = getattr(processor, "validate_inputs", None)
    placeholder = getattr(processor, "image_token", None)
    if tokenizer is processor or validate is None or (placeholder and any(placeholder in t for t in texts)):
        return processor(text=list(texts), **call_kwargs)  # (a placeholder without an image: the processor says so)
    try:
        validate(images=None, text=list(texts))
    except ValueError:
        pass  # only the input check: any error of the encoding itself is raised below
    else:
        return processor(text=list(texts), **call_kwargs)
    wants_types = "token_type_ids" in getattr(processor, "model_input_names", ())
    return tokenizer(list(texts), return_token_type_ids=wants_types, **call_kwargs)


def _laid_out_texts(processor, texts: Sequence[str], images: list[list]) -> list[str]:
    """The prompts as the processor expands them: after its ``prepare_inputs_layout`` (transformers 5.x
    ProcessorMixin; the texts unchanged for a processor without one). ``images``: one list per sample."""
    layout = getattr(processor, "prepare_inputs_layout", None)
    if layout is None:
        return list(texts)
    laid = layout(images=images, text=list(texts))[1]
    return [laid] if isinstance(laid, str) else list(laid)


def _follow_layout(text: str, laid: str, ranges: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Character ranges of ``text`` moved into ``laid``, the same text with insertions only: each non-empty piece
    is found again at or after its old start (insertions only move text right)."""
    if laid == text:
        return dict(ranges)
    moved = {}
    for name, (start, end) in ranges.items():
        if end <= start:
            moved[name] = (start, end)
            continue
        found = laid.find(text[start:end], start)
        if found < 0:
            raise ValueError(f"the processor rewrote the prompt and piece {name!r} is no longer in it")
        moved[name] = (found, found + end - start)
    return moved


def encode_with_spans(
    processor,
    texts: Sequence[str],
    pieces: Sequence[Mapping[str, tuple[int, int]]],
    images=None,
    image_token_id: int | None = None,
    image_runs: str = "one",
    **encode_kwargs,
):
    """Tokenizes a batch with a processor (or a bare tokenizer) and finds the spans of its named pieces.

    Args:
        processor: an HF processor with ``.tokenizer`` (LLaVA, LLaVA-NeXT...) or a fast tokenizer.
        texts: the rendered prompts (chat template applied), one per sample.
        pieces: per sample, ``{name: (char_start, char_end)}`` in the unexpanded text (see :func:`locate_pieces`);
            every sample names the same pieces.
        images: passed to the processor with the texts (one image per sample, or None for text-only batches; a
            sample given a list of several images is refused where the processor reports its replacements).
        image_token_id: the model's image token; when given, an ``"image"`` span comes first.
        image_runs: the adapter's ``image_runs`` (see :func:`image_token_spans`).

    Returns:
        ``(batch, spans)``: the processor's ``BatchEncoding`` (tensors, padded; no offset mapping) and ``Spans``
        validated against the attention mask.
    """
    names = tuple(pieces[0]) if pieces else ()
    if any(tuple(p) != names for p in pieces):
        raise ValueError(f"every sample must name the same pieces, got {[tuple(p) for p in pieces]}")
    # One text needs no padding, and a tokenizer without a pad token (Llama's, SmolLM2's) refuses padding=True
    # even then: a text LLM's training samples are encoded one at a time.
    padding = len(texts) > 1 or tokenizer_of(processor).pad_token is not None
    call_kwargs = dict(return_offsets_mapping=True, padding=padding, return_tensors="pt", **encode_kwargs)
    if images is not None:
        # One list per sample: processors that group images by prompt (Gemma 3) need it, the others flatten it.
        images = [list(image) if isinstance(image, (list, tuple)) else [image] for image in images]
        if _reports_replacements(processor):
            # Where each placeholder went (ProcessorMixin.__call__ of transformers 5.x): see _apply_replacements.
            call_kwargs.setdefault("return_text_replacement_offsets", True)
        batch = processor(text=list(texts), images=images, **call_kwargs)
    else:
        batch = _encode_text_only(processor, texts, call_kwargs)
    offsets = batch.pop("offset_mapping")
    replacements = batch.pop("text_replacement_offsets", None)
    batch.pop("labels", None)  # PaliGemma's processor adds all-ignored labels: a prompt has none
    if images is not None:
        # Where the processor rewrote a prompt before expanding it (PaliGemma adds BOS after the image and a
        # newline at the end), the pieces move with the inserted text.
        pieces = [_follow_layout(text, laid, sample) for text, laid, sample in
                  zip(texts, _laid_out_texts(processor, texts, images), pieces)]
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    tokenizer = tokenizer_of(processor)
    placeholder = getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None)

    char_ranges = []
    for b, (text, sample_pieces) in enumerate(zip(texts, pieces)):
        if replacements is not None:
            images_here = [r for r in replacements[b] if r.get("type", "image") == "image"]
            if len(images_here) > 1:  # tga_fast pools one image per sample, whatever the runs rule
                raise ValueError(f"sample {b} has {len(images_here)} images (one image per sample)")
            expanded = _apply_replacements(dict(sample_pieces), replacements[b])
        else:
            per_image = 1
            if image_token_id is not None and placeholder and text.count(placeholder):
                per_image = int((input_ids[b] == image_token_id).sum()) // text.count(placeholder)
            expanded = _expand_placeholders(text, dict(sample_pieces), placeholder or "", per_image)
        char_ranges.append([expanded[n] for n in names])
    columns = {}
    if image_token_id is not None:
        columns["image"] = image_token_spans(input_ids, image_token_id, image_runs)
    if names:
        token_spans = char_ranges_to_token_spans(offsets, torch.tensor(char_ranges, dtype=torch.int64), attention_mask)
        columns.update({name: token_spans[:, i] for i, name in enumerate(names)})
    spans = Spans.stack(columns) if columns else Spans(torch.zeros(len(texts), 0, 2, dtype=torch.int64), ())
    return batch, spans.validate(input_ids.shape[1], attention_mask)
