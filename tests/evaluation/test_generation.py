"""Batched generation equals per-sample unbatched greedy generation (left padding only moves the prompt), on a
tiny LLaVA (processor, images) and a tiny LLM (bare tokenizer); interventions run per batch."""

import contextlib

import pytest
import torch

from tga_fast.evaluation.generation import generate_responses
from tga_fast.models import resolve, skip_layers
from tga_fast.models.prompts import Prompt, encode_prompts
from tga_fast.models.tiny import random_images

NEW_TOKENS = 6


def _unbatched(model, processor, prompts, images, context=contextlib.nullcontext):
    """The oracle: one prompt at a time (no padding), model.generate greedy, new tokens decoded."""
    tokenizer = getattr(processor, "tokenizer", processor)
    image_id = resolve(model).image_token_id
    out, cursor = [], 0
    for prompt in prompts:
        image = [images[cursor]] if prompt.image else None
        cursor += prompt.image
        batch = encode_prompts(processor, [prompt], image, image_token_id=image_id).batch
        with context(), torch.no_grad():
            sequences = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(sequences[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


IMAGE_PROMPTS = [
    Prompt("how do i use this?", image=True),
    Prompt("describe the picture.", image=True, retrieved="a red knife on a wooden table"),
    Prompt("what is it?", image=True, system="be safe"),
    Prompt("a small dog?", image=True),
]
TEXT_PROMPTS = [
    Prompt("how do i use this?", text="a red knife", marks=(("text", 2, 11),)),
    Prompt("hi"),
    Prompt("describe the picture.", retrieved="a blue cup and a green bottle"),
]


def test_llava_batched_equals_unbatched(llava):
    model, processor = llava
    images = random_images(len(IMAGE_PROMPTS))
    processor.tokenizer.padding_side = "right"
    batched = generate_responses(model, processor, IMAGE_PROMPTS, images, batch_size=3, max_new_tokens=NEW_TOKENS,
                                 progress=False)
    assert processor.tokenizer.padding_side == "right"  # restored
    assert batched == _unbatched(model, processor, IMAGE_PROMPTS, images)
    assert all(isinstance(r, str) and r and r == r.strip() for r in batched)  # non-empty: the slice is the new tokens


def test_llm_batched_equals_unbatched(llm):
    model, tokenizer = llm
    batched = generate_responses(model, tokenizer, TEXT_PROMPTS, batch_size=8, max_new_tokens=NEW_TOKENS,
                                 progress=False)
    assert batched == _unbatched(model, tokenizer, TEXT_PROMPTS, None)


def test_intervention_runs_per_batch(llava):
    model, processor = llava
    images = random_images(len(IMAGE_PROMPTS))
    seen = []

    def skip(encoded):
        seen.append((len(encoded.texts), encoded.batch["input_ids"].shape, encoded.spans.names))
        return skip_layers(model, [2, 3])

    steered = generate_responses(model, processor, IMAGE_PROMPTS, images, batch_size=3, max_new_tokens=NEW_TOKENS,
                                 intervention=skip, progress=False)
    assert [n for n, _, _ in seen] == [3, 1] and seen[0][2][0] == "image"
    plain = generate_responses(model, processor, IMAGE_PROMPTS, images, max_new_tokens=NEW_TOKENS, progress=False)
    assert steered != plain  # the intervention took effect
    assert steered == _unbatched(model, processor, IMAGE_PROMPTS, images, lambda: skip_layers(model, [2, 3]))
    with pytest.raises(ValueError, match="image=True but 1 images"):
        generate_responses(model, processor, IMAGE_PROMPTS, images[:1], progress=False)


def test_tokenizer_without_pad_token_pads_with_eos(llm):
    model, tokenizer = llm
    expected = generate_responses(model, tokenizer, TEXT_PROMPTS, max_new_tokens=NEW_TOKENS, progress=False)
    pad = tokenizer.pad_token
    tokenizer.pad_token = None  # as Llama / Mistral tokenizers ship
    try:
        # the pad id only fills masked positions, so the greedy outputs do not change
        assert generate_responses(model, tokenizer, TEXT_PROMPTS, max_new_tokens=NEW_TOKENS, progress=False) == expected
        assert tokenizer.pad_token is None  # restored
    finally:
        tokenizer.pad_token = pad


def test_llava_next_mixed_image_sizes_batched_equals_unbatched():
    from tga_fast.models.tiny import tiny_vlm

    model, processor = tiny_vlm("llava_next", "qwen2", layers=2)
    images = random_images(2, size=(40, 70)) + random_images(2, size=(40, 40), seed=1)  # different tile counts
    batched = generate_responses(model, processor, IMAGE_PROMPTS, images, batch_size=4, max_new_tokens=NEW_TOKENS,
                                 progress=False)
    assert batched == _unbatched(model, processor, IMAGE_PROMPTS, images)
