"""Training examples of the world as token tensors: a prompt (through ``tga_fast.models.encode_prompts``, so the
spans come from the tokenization), the answer after it, labels on the answer only, right padding.

    Example(Prompt(question="how do i use this ?", image=True), "sorry , i cannot help with that .", image=17)
    batch = Encoder(processor, image_token_id, pixel_values).collate(examples)
    batch["input_ids"] [B, T], batch["labels"] [B, T] (-100 on the prompt and padding), batch["spans"] Spans
    (image, retrieved, text, question; prompts start at position 0, so the spans hold after the answer is appended)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from tga_fast.models.processors import tokenizer_of
from tga_fast.models.prompts import Prompt, encode_prompts

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """``image``: index into the encoder's pixel table (None for text-only). ``caption``: the alignment target
    (None for text-only samples). ``safety``: a text-only safety sample (LM loss only, no alignment terms)."""

    prompt: Prompt
    answer: str
    image: int | None = None
    caption: str | None = None
    safety: bool = False


class Encoder:
    """Tokenizes prompts once (cached per distinct prompt) and collates examples into padded batches.

    Args:
        processor: the LLaVA processor (or a bare tokenizer for a text-only model).
        image_token_id: the model's image token id (None for a text-only model).
        pixel_values: ``[N, 3, H, W]``, the preprocessed image table that ``Example.image`` indexes.
        probe_image: one PIL image, given to the processor when encoding an image prompt (its pixels are unused:
            they come from ``pixel_values``; the processor only expands the image placeholder).
    """

    def __init__(self, processor, image_token_id=None, pixel_values=None, probe_image=None):
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.image_token_id = image_token_id
        self.pixel_values = pixel_values
        self.probe_image = probe_image
        self._prompts: dict[Prompt, tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]] = {}
        self._answers: dict[str, torch.Tensor] = {}
        self._empty = torch.zeros(0, dtype=torch.int64)

    def prompt(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        """``(ids [T], spans [S, 2], names)`` of one prompt."""
        if prompt not in self._prompts:
            images = [self.probe_image] if prompt.image else None
            encoded = encode_prompts(self.processor, [prompt], images, image_token_id=self.image_token_id)
            ids = encoded.batch["input_ids"][0][encoded.batch["attention_mask"][0].bool()]
            self._prompts[prompt] = (ids, encoded.spans.tensor[0], encoded.spans.names)
        return self._prompts[prompt]

    def answer(self, text: str) -> torch.Tensor:
        """int64 ``[A]``: the answer's ids and EOS."""
        if text not in self._answers:
            ids = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            self._answers[text] = torch.tensor([*ids, self.tokenizer.eos_token_id], dtype=torch.int64)
        return self._answers[text]

    def collate(self, examples: list[Example], with_answers: bool = True) -> dict:
        """Right-padded ``input_ids``/``attention_mask``/``labels`` ``[B, T]``, ``spans`` (Spans), ``pixel_values``
        ``[B_img, 3, H, W]`` for the image examples (in order), ``safety`` bool ``[B]``."""
        from tga_fast.models.spans import Spans

        rows, label_rows, span_rows, names = [], [], [], None
        for ex in examples:
            ids, spans, names_here = self.prompt(ex.prompt)
            if names is None:
                names = names_here
            elif names != names_here:
                raise ValueError(f"examples mix span layouts {names} and {names_here} (image and text prompts?)")
            answer = self.answer(ex.answer) if with_answers else self._empty
            rows.append(torch.cat([ids, answer]))
            label_rows.append(torch.cat([torch.full_like(ids, IGNORE), answer]))
            span_rows.append(spans)
        pad = self.tokenizer.pad_token_id
        input_ids = pad_sequence(rows, batch_first=True, padding_value=pad)
        labels = pad_sequence(label_rows, batch_first=True, padding_value=IGNORE)
        mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0)
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "spans": Spans(torch.stack(span_rows), names),
            "safety": torch.tensor([ex.safety for ex in examples]),
        }
        image_rows = [ex.image for ex in examples if ex.image is not None]
        if image_rows:
            batch["pixel_values"] = self.pixel_values[torch.tensor(image_rows)]
        return batch
