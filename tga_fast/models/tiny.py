"""Tiny random-initialised HF models with offline tokenizers and processors, built from configs.

For tests, benchmarks and examples: nothing is downloaded. The tokenizer is a byte-level BPE trained in a
few milliseconds on a fixed corpus (so any text tokenizes, with character offsets), wrapped in
``PreTrainedTokenizerFast`` with a chat template; the processors are transformers' own LLaVA / LLaVA-NeXT
processors over it.

    model, processor = tiny_vlm("llava", text_backbone="qwen2")
    model, tokenizer = tiny_llm("mistral")
    save_tiny_base_llm("llm/", "qwen2")         # a base LLM folder in its family's chat format, no image token
    save_tiny_vision("clip/", "clip")           # a CLIP (or SigLIP) tower folder with its image processor
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "CHAT_TEMPLATE",
    "TEXT_BACKBONES",
    "VISION_TOWERS",
    "random_images",
    "save_tiny_base_llm",
    "save_tiny_vision",
    "tiny_llm",
    "tiny_tokenizer",
    "tiny_vlm",
]

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


def _bpe_tokenizer(special_tokens, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on the fixed corpus, with ``special_tokens`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


def tiny_tokenizer(vocab_size: int = 384):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad> <s> </s> <image>`` and a chat template."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(SPECIAL_TOKENS, vocab_size),
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


# Base LLMs as their families ship them: the family's own chat format (string contents only, as the real
# templates are written), no image token, and no pad token where the real tokenizer has none.
BASE_CHAT_FORMATS = {
    "llama": dict(  # Llama-3's header format
        special_tokens=(
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
        ),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None,
        chat_template=(
            "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
    ),
    "mistral": dict(  # Mistral-Instruct's [INST] format
        special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos_token="<s>", eos_token="</s>", pad_token=None,
        chat_template=(
            "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
            "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        ),
    ),
    "qwen2": dict(  # ChatML with Qwen2's default system prompt
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=(
            "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    ),
}
VISION_TOWERS = ("clip", "siglip")


def save_tiny_base_llm(folder, backbone: str = "llama", *, layers: int = 2, hidden: int = 64,
                       tie_word_embeddings: bool = False, seed: int = 0):
    """Saves a random ``*ForCausalLM`` and its tokenizer to ``folder`` as a base LLM of ``backbone`` ships (see
    ``BASE_CHAT_FORMATS``: the family's chat format, no image token); returns the folder as a ``Path``."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if backbone not in BASE_CHAT_FORMATS:
        raise ValueError(f"backbone must be one of {sorted(BASE_CHAT_FORMATS)}, got {backbone!r}")
    style = BASE_CHAT_FORMATS[backbone]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(style["special_tokens"], 384),
        **{k: style[k] for k in ("bos_token", "eos_token", "pad_token") if style[k] is not None},
    )
    tokenizer.chat_template = style["chat_template"]
    config = _text_config(backbone, len(tokenizer), tokenizer.pad_token_id, layers, hidden)
    config.tie_word_embeddings = tie_word_embeddings
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_vision(folder, kind: str = "clip", *, whole_model: bool = False, image_size: int = 32,
                     patch_size: int = 8, seed: int = 0):
    """Saves a random 2-layer CLIP or SigLIP vision tower (``CLIPVisionModel`` / ``SiglipVisionModel``, or with
    ``whole_model`` the dual encoder ``CLIPModel`` / ``SiglipModel`` as CLIP checkpoints ship) and its image
    processor to ``folder``; returns the folder as a ``Path``. 32x32 images in 8x8 patches: 16 patches."""
    from pathlib import Path

    import transformers as tf

    if kind not in VISION_TOWERS:
        raise ValueError(f"kind must be one of {VISION_TOWERS}, got {kind!r}")
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text_sizes = dict(sizes, vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2)
    if kind == "clip":
        vision = tf.CLIPVisionConfig(**sizes, image_size=image_size, patch_size=patch_size)
        image_processor = tf.CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        if whole_model:
            config = tf.CLIPConfig(text_config=tf.CLIPTextConfig(**text_sizes).to_dict(),
                                   vision_config=vision.to_dict(), projection_dim=16)
            model_class = tf.CLIPModel
        else:
            config, model_class = vision, tf.CLIPVisionModel
    else:
        vision = tf.SiglipVisionConfig(**sizes, image_size=image_size, patch_size=patch_size)
        image_processor = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
        if whole_model:
            config = tf.SiglipConfig(text_config=tf.SiglipTextConfig(**text_sizes).to_dict(),
                                     vision_config=vision.to_dict())
            model_class = tf.SiglipModel
        else:
            config, model_class = vision, tf.SiglipVisionModel
    torch.manual_seed(seed)
    model = model_class(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def random_images(count: int, size: tuple[int, int] = (40, 40), seed: int = 0):
    """``count`` random RGB PIL images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]
