"""Tiny random-initialised HF models with offline tokenizers and processors, built from configs.

For tests, benchmarks and examples: nothing is downloaded. The tokenizer is a byte-level BPE trained in a
few milliseconds on a fixed corpus (so any text tokenizes, with character offsets), wrapped in
``PreTrainedTokenizerFast`` with a chat template; the processors are transformers' own LLaVA / LLaVA-NeXT
processors over it.

    model, processor = tiny_vlm("llava", text_backbone="qwen2")
    model, tokenizer = tiny_llm("mistral")
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["CHAT_TEMPLATE", "TEXT_BACKBONES", "tiny_llm", "tiny_tokenizer", "tiny_vlm", "random_images"]

TEXT_BACKBONES = ("llama", "mistral", "qwen2")
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]
# A LLaVA-1.5-like template: "USER: <content> ASSISTANT: <answer></s>"; an image item renders as "<image>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_CORPUS = (
    "USER: ASSISTANT: Retrieved Text: what is in this image? describe the picture. how do i use this? "
    "a photo of a red knife, a blue cup, a green bottle and a small dog on a wooden table. "
    "I'm sorry, I cannot help with that. Sure, here is how. The image shows a cat. 0123456789"
)


def tiny_tokenizer(vocab_size: int = 384):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad> <s> </s> <image>`` and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _text_config(backbone: str, vocab_size: int, pad_token_id: int, layers: int, hidden: int):
    from transformers import AutoConfig

    if backbone not in TEXT_BACKBONES:
        raise ValueError(f"text_backbone must be one of {TEXT_BACKBONES}, got {backbone!r}")
    return AutoConfig.for_model(
        backbone,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Mistral / Qwen2 / Llama-3
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def tiny_llm(backbone: str = "llama", layers: int = 4, hidden: int = 64, seed: int = 0, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: a random ``*ForCausalLM`` of the given text family, in eval mode."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _text_config(backbone, len(tokenizer), tokenizer.pad_token_id, layers, hidden)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval(), tokenizer


def tiny_vlm(
    family: str = "llava",
    text_backbone: str = "llama",
    layers: int = 4,
    hidden: int = 64,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random LLaVA or LLaVA-NeXT with a 2-layer CLIP vision tower on 32x32 images
    (8x8 patches: 16 image tokens per image for LLaVA, more for LLaVA-NeXT's tiles), in eval mode."""
    from transformers import CLIPVisionConfig

    tokenizer = tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = _text_config(text_backbone, len(tokenizer), tokenizer.pad_token_id, layers, hidden)
    common = dict(vision_config=vision, text_config=text, image_token_index=image_token_id, vision_feature_layer=-2)
    # 8-pixel patches of a 32x32 image (4 x 4 = 16 per tile) plus the class token, which "default" drops.
    processor_options = dict(
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires torchvision.*")
        if family == "llava":
            from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

            config = LlavaConfig(**common, image_seq_length=16)
            image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            processor = LlavaProcessor(image_processor=image_processor, **processor_options)
            model_class = LlavaForConditionalGeneration
        elif family == "llava_next":
            from transformers import (
                LlavaNextConfig,
                LlavaNextForConditionalGeneration,
                LlavaNextImageProcessor,
                LlavaNextProcessor,
            )

            pinpoints = [[32, 32], [32, 64], [64, 32]]
            config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints, image_seq_length=16)
            image_processor = LlavaNextImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
            )
            processor = LlavaNextProcessor(image_processor=image_processor, **processor_options)
            model_class = LlavaNextForConditionalGeneration
        else:
            raise ValueError(f"family must be 'llava' or 'llava_next', got {family!r}")
    torch.manual_seed(seed)
    model = model_class(config)
    model.set_attn_implementation(attn_implementation)
    return model.eval(), processor


def random_images(count: int, size: tuple[int, int] = (40, 40), seed: int = 0):
    """``count`` random RGB PIL images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]
