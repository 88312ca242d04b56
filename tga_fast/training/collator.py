"""Pads :class:`~tga_fast.training.conversation.EncodedSample` s into the student batch, the teacher (caption-only)
batch and their spans; drops and counts the samples that failed in the dataset.

Output of ``TGACollator(processor)(items)`` (tensors only, so ``Trainer._prepare_inputs`` moves them), B samples::

    input_ids, attention_mask, labels   int64 [B, T]     labels -100 off the answers and on padding
    pixel_values                        [N, ...]         the N samples with an image, in batch order (absent if N = 0)
    image_sizes (LLaVA-NeXT) ...        [N, ...]         any other per-image processor output
    teacher_input_ids,
    teacher_attention_mask              int64 [B, Tt]    one caption prompt per sample (an empty one without caption)
    student_spans                       int64 [B, 2, 2]  (image, retrieved) half-open token spans, (0, 0) if absent
    teacher_spans                       int64 [B, 1, 2]  the caption span
    align                               bool [B]         image, caption and not toxic: the alignment terms apply
    has_retrieved                       bool [B]
    hinge_mask                          bool [B]         has_retrieved and the record did not opt out ("hinge": false)

Padding goes on the tokenizer's ``padding_side``; spans are shifted with the tokens they point at.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from tga_fast.models.processors import tokenizer_of
from tga_fast.training.conversation import IGNORE_INDEX, EncodedSample
from tga_fast.training.data import DroppedSample

__all__ = ["TGACollator"]

logger = logging.getLogger(__name__)


class TGACollator:
    """Collates a list of dataset items into the TGA batch (see the module docstring for the keys and shapes).

    Args:
        processor: the model's processor (or tokenizer): its tokenizer's ``padding_side`` and pad token are used.
        pad_to_multiple_of: round T and Tt up to a multiple of this (tensor-core friendly shapes).

    Attributes:
        dropped: ``[(key, reason)]`` of the items this collator dropped (``None`` items have key ``"?"``), in this
            process (each DataLoader worker has its own copy).
    """

    def __init__(self, processor, *, pad_to_multiple_of: int | None = None):
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer_of(processor)
        self.pad_to_multiple_of = pad_to_multiple_of
        pad = self.tokenizer.pad_token_id
        if pad is None:  # the value under a zero attention mask never matters; LLaMA tokenizers have no pad
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self.dropped: list[tuple[str, str]] = []

    @property
    def padding_side(self) -> str:
        side = self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"tokenizer.padding_side must be 'left' or 'right', got {side!r}")
        return side

    def __call__(self, items: Sequence[EncodedSample | DroppedSample | None]) -> dict[str, torch.Tensor]:
        samples = []
        for item in items:
            if isinstance(item, EncodedSample):
                samples.append(item)
                continue
            if isinstance(item, DroppedSample):
                key, reason = item.key, item.reason
            else:
                key, reason = "?", "the dataset returned None"
            self.dropped.append((key, reason))
            logger.warning("collator dropped sample %s (%d dropped so far): %s", key, len(self.dropped), reason)
        if not samples:
            raise ValueError(
                f"every one of the {len(items)} samples of this batch failed (see the log); use "
                "TGADataset(..., replace_failed=True) to replace failed samples"
            )
        side = self.padding_side
        input_ids, attention_mask, shifts = self._pad([s.input_ids for s in samples], self.pad_token_id, side)
        labels, _, _ = self._pad([s.labels for s in samples], IGNORE_INDEX, side)
        teacher = [s.teacher_input_ids for s in samples]
        teacher_ids, teacher_mask, teacher_shifts = self._pad(teacher, self.pad_token_id, side)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key in samples[0].token_inputs:
            batch[key], _, _ = self._pad([s.token_inputs[key] for s in samples], 0, side)
        batch.update(_stack_image_inputs([s.image_inputs for s in samples if s.image_inputs]))
        batch["teacher_input_ids"] = teacher_ids
        batch["teacher_attention_mask"] = teacher_mask
        batch["student_spans"] = _shift(torch.stack([s.student_spans for s in samples]), shifts)
        batch["teacher_spans"] = _shift(torch.stack([s.teacher_spans for s in samples]), teacher_shifts)
        batch["align"] = torch.tensor([s.align for s in samples], dtype=torch.bool)
        batch["has_retrieved"] = torch.tensor([s.has_retrieved for s in samples], dtype=torch.bool)
        batch["hinge_mask"] = torch.tensor([s.has_retrieved and s.hinge for s in samples], dtype=torch.bool)
        return batch

    def _pad(self, rows: list[torch.Tensor], value: int, side: str):
        """``(padded [B, T], attention_mask [B, T], shifts [B])``; shifts are the left padding of each row."""
        width = max(r.shape[0] for r in rows)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = torch.full((len(rows), width), value, dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        shifts = torch.zeros(len(rows), dtype=torch.int64)
        for b, row in enumerate(rows):
            start = width - row.shape[0] if side == "left" else 0
            padded[b, start : start + row.shape[0]] = row
            mask[b, start : start + row.shape[0]] = 1
            shifts[b] = start
        return padded, mask, shifts


def _shift(spans: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``spans`` int64 ``[B, S, 2]`` moved right by ``shifts`` ``[B]``; empty spans stay (0, 0)."""
    present = (spans[..., 1] > spans[..., 0])[..., None]
    return torch.where(present, spans + shifts[:, None, None], torch.zeros_like(spans))


def _stack_image_inputs(per_sample: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenates per-image processor outputs (``[1, ...]`` each) along dim 0, zero-padding the other dims to
    the largest (LLaVA-NeXT images with different numbers of tiles; its ``image_sizes`` tells the model which
    tiles are real, as with the processor's own batching)."""
    if not per_sample:
        return {}
    out = {}
    for key in per_sample[0]:
        tensors = [d[key] for d in per_sample]
        shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
        padded = []
        for t in tensors:
            pad = []
            for d in reversed(range(1, t.dim())):
                pad += [0, shape[d] - t.shape[d]]
            padded.append(F.pad(t, pad) if any(pad) else t)
        out[key] = torch.cat(padded, dim=0)
    return out
