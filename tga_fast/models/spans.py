"""Token spans of a padded batch, found from the tokenization: never from hard-coded offsets or token ids.

A span is a half-open ``[start, end)`` range of token positions of one sample; ``Spans`` holds S named spans
per sample as an int64 ``[B, S, 2]`` tensor, the input of ``segment_pool``/``segment_cosine`` and ``capture``.

    prompt text:   "USER: Retrieved Text: a dog. <image>\\nwhat is this? ASSISTANT:"
                                     ^^^^^^ piece "retrieved" (char range)
    after the processor expands <image> into N tokens and tokenizes with offsets:
    tokens:        <s> USER : Retrieved Text : ␣a ␣dog . <image> x N  \\n what ...  <pad> <pad>
    spans:                                   [---------) retrieved    [--- image ---)

Text pieces are located by character range in the rendered prompt, shifted past each expanded image
placeholder (by the processor's own record of its replacements where it gives one), and mapped to tokens through
the tokenizer's offset mapping (a token belongs to a piece when their character ranges overlap). The image span
is found from the model's image token in ``input_ids`` (the processor's own expansion): its one run, or, for
families that break an image into several runs (rows, tiles), the hull from the first to one past the last image
token (:func:`image_token_spans`). Padding and special tokens with empty offsets are never inside a span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from tga_fast.models.processors import tokenizer_of

__all__ = [
    "IMAGE_RUNS",
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


def image_token_spans(input_ids: torch.Tensor, image_token_id: int, runs: str = "one") -> torch.Tensor:
    """The image span of each sample: input_ids ``[B, T]`` -> int64 ``[B, 1, 2]``.

    ``runs`` says how a family lays out one image's tokens (``Architecture.image_runs``):

    - ``"one"``: one contiguous run (LLaVA, LLaVA-NeXT, LLaVA-OneVision); a sample with two runs raises, naming it
      (two images, or a prompt the processor did not expand).
    - ``"hull"``: several runs per image (Mistral 3's rows between ``[IMG_BREAK]``, Idefics3's tiles between
      ``<fake_token_around_image><row_i_col_j>``): the span goes from the first image token to one past the
      last, so the break / tile tokens between the runs are pooled with the image. The caller guarantees one
      image per sample (``encode_with_spans`` checks it on the processor's record of its replacements).

    A sample without image tokens (text-only) gets the empty span (0, 0).
    """
    if runs not in IMAGE_RUNS:
        raise ValueError(f"runs must be one of {IMAGE_RUNS}, got {runs!r}")
    is_image = input_ids == image_token_id
    spans = _first_last(is_image)  # [B, 2]
    if runs == "one":
        count = is_image.sum(dim=-1)
        split = count != (spans[:, 1] - spans[:, 0])
        if bool(split.any()):
            b = int(split.nonzero()[0])
            raise ValueError(
                f"sample {b} has its {int(count[b])} image tokens in more than one run (one image per sample)"
            )
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
    ``tokens_per_image`` times (processors that do not report their replacements; see :func:`_apply_replacements`)."""
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


def _apply_replacements(ranges: dict[str, tuple[int, int]], replacements: Sequence[Mapping]):
    """Shifts character ranges of the unexpanded text past each placeholder the processor replaced, from its
    ``text_replacement_offsets`` (per replacement: the placeholder's ``span`` in the unexpanded text and the
    ``new_span`` of its replacement in the expanded one). Exact whatever the replacement holds: Mistral 3's
    ``[IMG_BREAK]`` / ``[IMG_END]``, Idefics3's tile tags and newlines are not repetitions of the placeholder."""

    def shift(position: int) -> int:
        moved = 0
        for item in replacements:
            (start, end), (new_start, new_end) = item["span"], item["new_span"]
            if end <= position:
                moved += (new_end - new_start) - (end - start)
        return position + moved

    return {name: (shift(s), shift(e)) for name, (s, e) in ranges.items()}


def _reports_replacements(processor) -> bool:
    """Whether the processor's call takes ``return_text_replacement_offsets`` (transformers' ``ProcessingKwargs``
    declares it in 5.24; a processor of an older or a custom kind may not, and then gets no unknown option)."""
    kwargs_type = getattr(type(processor), "valid_processor_kwargs", None)
    return "return_text_replacement_offsets" in getattr(kwargs_type, "__annotations__", {})


def encode_with_spans(
    processor,
    texts: Sequence[str],
    pieces: Sequence[Mapping[str, tuple[int, int]]],
    images=None,
    image_token_id: int | None = None,
    image_runs: str | None = None,
    **encode_kwargs,
):
    """Tokenizes a batch with a processor (or a bare tokenizer) and finds the spans of its named pieces.

    Args:
        processor: an HF processor with ``.tokenizer`` (LLaVA, LLaVA-NeXT...) or a fast tokenizer.
        texts: the rendered prompts (chat template applied), one per sample.
        pieces: per sample, ``{name: (char_start, char_end)}`` in the unexpanded text (see :func:`locate_pieces`);
            every sample names the same pieces.
        images: passed to the processor with the texts (one image per sample, or None for text-only batches).
        image_token_id: the model's image token; when given, an ``"image"`` span comes first.
        image_runs: how the image span is found (:func:`image_token_spans`). None: ``"hull"`` when the processor
            reports its placeholder replacements (``return_text_replacement_offsets``, transformers 5.x; each
            sample's replacements are then checked to be one image, so the hull is that image's tokens), else
            ``"one"``.

    Returns:
        ``(batch, spans)``: the processor's ``BatchEncoding`` (tensors, padded; no offset mapping) and ``Spans``
        validated against the attention mask.
    """
    names = tuple(pieces[0]) if pieces else ()
    if any(tuple(p) != names for p in pieces):
        raise ValueError(f"every sample must name the same pieces, got {[tuple(p) for p in pieces]}")
    call_kwargs = dict(return_offsets_mapping=True, padding=True, return_tensors="pt", **encode_kwargs)
    if images is not None:
        if _reports_replacements(processor):
            # The processor's own record of where each placeholder went: exact for any expansion (see
            # _apply_replacements).
            call_kwargs.setdefault("return_text_replacement_offsets", True)
        batch = processor(text=list(texts), images=images, **call_kwargs)
    else:
        batch = processor(text=list(texts), **call_kwargs)
    offsets = batch.pop("offset_mapping")
    replacements = batch.pop("text_replacement_offsets", None)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    tokenizer = tokenizer_of(processor)
    placeholder = getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None)
    if image_runs is None:
        image_runs = "hull" if replacements is not None else "one"

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
