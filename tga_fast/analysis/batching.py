"""Samples in, model-ready batches out: the one place the analyses choose samples, encode prompts and move them.

Every analysis renders its prompts with :meth:`EvalSample.to_prompt` (so "the text condition" means what the DSR
evaluation means by it) and encodes them as the evaluation does (:func:`tga_fast.models.prompts.encode_prompts`:
spans and marks from the tokenization, never from offsets).
"""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

from tga_fast.models.prompts import EncodedPrompts, Prompt

__all__ = ["chunks", "encode", "select_samples"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def encode(model, processor, prompts: Sequence[Prompt], images: Sequence | None = None) -> EncodedPrompts:
    """The prompts tokenized with their spans (``image`` when the model has an image token, ``retrieved``,
    ``text``, ``question``) and marks, batch on the model's device (pixels in its dtype): ``input_ids`` /
    ``attention_mask`` ``[B, T]``, spans ``[B, S, 2]``, marked ``[B, T]``.

    The same encoding the DSR evaluation generates from (:func:`tga_fast.evaluation.generation.encode_for_model`
    under ``padded_left``): padded on the left, with the EOS as pad token when the tokenizer has none (Llama-3 and
    Mistral tokenizers have none, and a batch could not be padded at all); the tokenizer is restored after. The
    analyses read ``last_positions`` and the spans, never a fixed column, and RoPE attention depends on relative
    positions only, so the padding leaves every state as an unpadded forward gives it.
    """
    from tga_fast.evaluation.generation import encode_for_model, padded_left

    with padded_left(processor):
        return encode_for_model(model, processor, prompts, images)


def select_samples(samples: Sequence, *, toxic_only: bool = False, need_marks: bool = False, need_image: bool = False):
    """``(kept, skipped)``: the samples an analysis can use, and ``{"id", "reason"}`` for each one it leaves out
    (benign controls where only toxic requests count, no toxic word marked, no image path). Raises when none is
    left, saying why."""
    samples = list(samples)
    if not samples:
        raise ValueError("samples is empty")
    kept, skipped = [], []
    for sample in samples:
        reason = None
        if toxic_only and not getattr(sample, "toxic", True):
            reason = "benign control (toxic=false)"
        elif need_marks and not getattr(sample, "toxic_ranges", ()):
            reason = "no toxic word marked in its text"
        elif need_image and getattr(sample, "image_path", None) is None:
            reason = "no image"
        if reason is None:
            kept.append(sample)
        else:
            skipped.append({"id": str(sample.id), "reason": reason})
    if not kept:
        reasons = sorted({s["reason"] for s in skipped})
        raise ValueError(f"none of the {len(samples)} samples can be used: {reasons}")
    return kept, skipped
