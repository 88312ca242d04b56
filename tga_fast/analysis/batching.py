"""Samples in, model-ready batches out: the one place the analyses choose samples, batch them, encode prompts and
write down how the run was made. Every analysis follows one skeleton::

    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True)   # checks, resolve, select
    batches = Batches(kept, batch_size, desc="...", progress=progress, images=...)
    for batch_samples, images in batches:        # a tqdm bar; undecodable images skipped and listed
        ... one forward, per-sample rows ...
    skipped += batches.failed
    settings = run_settings(model, batch_size, ...)

Every analysis renders its prompts with :meth:`EvalSample.to_prompt` (so "the text condition" means what the DSR
evaluation means by it) and encodes them as the evaluation does (:func:`tga_fast.models.prompts.encode_prompts`:
spans and marks from the tokenization, never from offsets).
"""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

from tga_fast.errors import require_positive
from tga_fast.models.prompts import EncodedPrompts, Prompt

__all__ = ["Batches", "chunks", "encode", "prepare", "run_settings", "select_samples"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    require_positive(size, "batch_size")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def prepare(model, samples: Sequence, batch_size: int, **selection):
    """``(parts, kept, skipped)``: checks ``batch_size`` (a :class:`~tga_fast.errors.UserError` before any work),
    resolves the model's parts (:func:`tga_fast.models.resolve`) and selects the samples (:func:`select_samples`
    with ``selection``)."""
    from tga_fast.models import resolve

    require_positive(batch_size, "batch_size")
    parts = resolve(model)
    kept, skipped = select_samples(samples, **selection)
    return parts, kept, skipped


class Batches:
    """Iterates ``(batch samples, their RGB images or None)`` over consecutive batches of ``samples`` under one
    tqdm bar. With ``images=True`` each image is decoded first; a sample whose image does not decode is left out
    of its batch, logged, and listed in ``failed`` (``{"id", "scene", "reason"}``), never the end of the run.
    When no sample is left at all, the iteration raises a ValueError with the first reasons."""

    def __init__(self, samples: Sequence, batch_size: int, *, desc: str, progress: bool = True,
                 images: bool = False, unit: str = "sample"):
        self.samples, self.batch_size = list(samples), require_positive(batch_size, "batch_size")
        self.desc, self.progress, self.images, self.unit = desc, progress, images, unit
        self.failed: list[dict] = []

    def __iter__(self) -> Iterator[tuple[list, list | None]]:
        from tqdm.auto import tqdm

        from tga_fast.evaluation.data import load_images

        used = 0
        with tqdm(total=len(self.samples), desc=self.desc, unit=self.unit, disable=not self.progress) as bar:
            for batch in chunks(self.samples, self.batch_size):
                size, images = len(batch), None
                if self.images:
                    batch, images, failed = load_images(batch)
                    self.failed += failed
                if batch:
                    used += len(batch)
                    yield batch, images
                bar.update(size)
        if not used and self.samples:
            reasons = "; ".join(f"{f['id']}: {f['reason']}" for f in self.failed[:3])
            raise ValueError(f"none of the {len(self.samples)} samples could be run: {reasons}")


def run_settings(model, batch_size: int, **settings) -> dict:
    """How a run was made, as its result's ``settings``: the analysis' own ``settings``, then ``batch_size`` and the
    model's ``model_type`` (the CLI adds the model path and data file)."""
    return {**settings, "batch_size": batch_size, "model_type": getattr(model.config, "model_type", None)}


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
