"""Tiny random HF models (built from configs, nothing downloaded) and batches with spans."""

from __future__ import annotations

import warnings

import pytest
import torch

from tga_fast.models import encode_with_spans, locate_pieces, resolve
from tga_fast.models.tiny import random_images, tiny_llm, tiny_vlm

VLM_FAMILIES = [("llava", "llama"), ("llava", "mistral"), ("llava", "qwen2"), ("llava_next", "llama")]
LLM_FAMILIES = ["llama", "mistral", "qwen2"]
SAMPLES = [
    ("what is in this image?", "a red knife."),
    ("describe the picture.", "a small dog on a wooden table."),
    ("how do i use this?", "a green bottle"),
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        yield


def vlm_batch(processor, model, padding_side="right", samples=SAMPLES):
    """A padded multimodal batch with spans (image, retrieved, question) and the rendered texts/pieces."""
    processor.tokenizer.padding_side = padding_side
    texts, pieces = [], []
    for question, retrieved in samples:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Retrieved Text: {retrieved} "},
                    {"type": "image"},
                    {"type": "text", "text": question},
                ],
            }
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        texts.append(text)
        pieces.append(locate_pieces(text, [("retrieved", retrieved), ("question", question)]))
    size = (40, 40) if model.config.model_type == "llava" else (40, 70)
    batch, spans = encode_with_spans(
        processor, texts, pieces, images=random_images(len(texts), size=size), image_token_id=resolve(model).image_token_id
    )
    return batch, spans, texts, pieces


def llm_batch(tokenizer, padding_side="left", samples=SAMPLES):
    tokenizer.padding_side = padding_side
    texts, pieces = [], []
    for question, retrieved in samples:
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"{retrieved} {question}"}], tokenize=False, add_generation_prompt=True)
        texts.append(text)
        pieces.append(locate_pieces(text, [("retrieved", retrieved), ("question", question)]))
    batch, spans = encode_with_spans(tokenizer, texts, pieces)
    return batch, spans, texts, pieces


@pytest.fixture(scope="module", params=VLM_FAMILIES, ids=lambda p: f"{p[0]}-{p[1]}")
def vlm(request):
    family, backbone = request.param
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return tiny_vlm(family, backbone)


@pytest.fixture(scope="module", params=LLM_FAMILIES)
def llm(request):
    return tiny_llm(request.param)
