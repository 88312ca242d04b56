"""Batched greedy generation of responses to :class:`~tga_fast.models.prompts.Prompt` s, optionally inside an
intervention (knockout, steering) applied per batch."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch

from tga_fast.errors import require_positive
from tga_fast.models.processors import context_length, image_runs_of, image_token_id_of, tokenizer_of
from tga_fast.models.prompts import EncodedPrompts, Prompt, encode_prompts

__all__ = [
    "batch_to_model",
    "encode_for_model",
    "generate_responses",
    "image_token_id_of",
    "model_device",
    "model_dtype",
    "padded_left",
    "prompt_batches",
]


def model_device(model) -> torch.device:
    """Where the inputs go: the input embeddings' device (the first shard under a ``device_map``)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    """The floating dtype image pixels must have: the vision tower's (when any), else the first floating parameter's."""
    tower = None
    try:
        from tga_fast.models import resolve

        tower = resolve(model).vision_tower
    except ValueError:
        pass
    for module in (tower, model):
        if module is None:
            continue
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return torch.float32


def batch_to_model(batch, model) -> dict:
    """The processor's batch on the model's device, floating tensors (``pixel_values``) in the model's dtype."""
    device, dtype = model_device(model), model_dtype(model)
    moved = {}
    for key, value in dict(batch).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


@contextlib.contextmanager
def padded_left(processor):
    """The tokenizer pads on the left (generation appends at the right end of every row) and has a pad token
    (its EOS when it has none, as Llama / Mistral tokenizers); both are restored on exit."""
    tokenizer = tokenizer_of(processor)
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def prompt_batches(prompts: Sequence[Prompt], images: Sequence | None, batch_size: int):
    """Yields ``(prompt chunk, its images or None)``; ``images[i]`` belongs to the i-th prompt with ``image=True``."""
    cursor = 0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        needed = sum(p.image for p in chunk)
        chunk_images = list(images[cursor : cursor + needed]) if needed else None
        cursor += needed
        yield chunk, chunk_images


def encode_for_model(model, processor, prompts: Sequence[Prompt], images: Sequence | None) -> EncodedPrompts:
    """``encode_prompts`` with the model's image token, its batch moved to the model (device, dtype) and its
    spans and marks on the same device."""
    encoded = encode_prompts(processor, prompts, images, image_token_id=image_token_id_of(model),
                             image_runs=image_runs_of(model), max_length=context_length(model, processor))
    device = model_device(model)
    return EncodedPrompts(
        batch=batch_to_model(encoded.batch, model),
        spans=encoded.spans.to(device),
        marked=encoded.marked.to(device),
        texts=encoded.texts,
    )


def generate_responses(
    model,
    processor,
    prompts: Sequence[Prompt],
    images: Sequence | None = None,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    generation_kwargs: dict | None = None,
    intervention: Callable[[EncodedPrompts], ContextManager] | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Responses of ``model`` to ``prompts``, in order: the decoded new tokens, special tokens skipped, stripped.

    Args:
        model: an HF LLaVA-style model or causal LM (eval mode).
        processor: its processor (images) or tokenizer (text only).
        prompts: the requests; ``images[i]`` is the image of the i-th prompt with ``image=True``.
        batch_size: prompts per ``generate`` call, left-padded (the tokenizer's padding side and pad token are
            restored after; a tokenizer without a pad token pads with EOS).
        max_new_tokens: generation length.
        generation_kwargs: extra ``generate`` arguments; greedy (``do_sample=False``) unless they say otherwise.
        intervention: called with each batch's :class:`EncodedPrompts` (on the model's device); generation runs
            inside the context manager it returns, e.g. ``lambda e: knockout(model, blocks, e.marked)``.
        progress: a tqdm bar over the prompts.
    """
    require_positive(batch_size, "batch_size")
    require_positive(max_new_tokens, "max_new_tokens")
    prompts = list(prompts)
    if not prompts:
        return []
    needed = sum(p.image for p in prompts)
    given = 0 if images is None else len(images)
    if needed != given:
        raise ValueError(f"{needed} prompts have image=True but {given} images were given")
    from tqdm.auto import tqdm

    responses: list[str] = []
    with padded_left(processor) as tokenizer:
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        kwargs.update(generation_kwargs or {})
        with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
            for chunk, chunk_images in prompt_batches(prompts, images, batch_size):
                encoded = encode_for_model(model, processor, chunk, chunk_images)
                context = intervention(encoded) if intervention is not None else contextlib.nullcontext()
                with context, torch.no_grad():
                    output = model.generate(**encoded.batch, **kwargs)
                sequences = output.sequences if hasattr(output, "sequences") else output  # [b, T + new]
                if sequences.shape[0] != len(chunk):  # num_return_sequences > 1 would misalign the responses
                    raise ValueError(f"generate returned {sequences.shape[0]} sequences for {len(chunk)} prompts; "
                                     "generation_kwargs must not ask for several sequences per prompt")
                new_tokens = sequences[:, encoded.batch["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                responses.extend(t.strip() for t in texts)
                bar.update(len(chunk))
    return responses
