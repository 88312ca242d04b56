"""Tiny random VLMs of the families beyond LLaVA, built offline from configs (nothing is downloaded).

One registry, ``TINY_FAMILIES``: ``model_type -> TinyFamily`` (a builder of ``(model, processor)``), so the test
matrix (``tests/models/test_families.py``) and any example runs over every family by one loop. Adding a family is
one entry here plus one adapter entry in ``tga_fast/models/adapters.py``.

Each processor is transformers' own processor class over the offline byte-level BPE of ``tiny.py`` (with the
family's special tokens added) and the family's PIL ("slow") image processor: torchvision is not needed. Qwen2-VL
and Qwen2.5-VL use :class:`~tga_fast.models.qwen_vl_processor.ImageOnlyQwenVLProcessor` (transformers 5.24 builds
their processors only with torchvision).

    model, processor = tiny_family("qwen2_vl")
    model, processor = TINY_FAMILIES["gemma3"].build(attn_implementation="eager")
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from tga_fast.models.qwen_vl_processor import ImageOnlyQwenVLProcessor
from tga_fast.models.tiny import _bpe_tokenizer

__all__ = ["TINY_FAMILIES", "TinyFamily", "family_chat_template", "tiny_family"]

# Text sizes shared by every family: 4 decoder blocks, hidden 64, 4 query heads over 2 KV heads (head_dim 16).
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 4, 64, 4, 2, 16


def family_chat_template(image_text: str) -> str:
    """tiny.py's LLaVA-1.5-like template ("USER: <content> ASSISTANT:") with an image item rendered as
    ``image_text`` (the family's own placeholder string), so every family shares one prompt layout."""
    return (
        "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image_text + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


def _tokenizer(special_tokens: tuple[str, ...], named: dict[str, str], image_text: str):
    """An offline BPE ``PreTrainedTokenizerFast`` with ``<pad> <s> </s>`` plus ``special_tokens``; ``named`` gives
    the tokenizer's named multimodal tokens (``image_token``, ``boi_token``...) as transformers' processors read
    them."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(("<pad>", "<s>", "</s>", *special_tokens), 384),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=named,
    )
    tokenizer.chat_template = family_chat_template(image_text)
    return tokenizer


def _finish(model, attn_implementation: str):
    model.set_attn_implementation(attn_implementation)
    return model.eval()


# ---- qwen2_vl, qwen2_5_vl (part A) -------------------------------------------------------------------------------
# 32x32 images in 8x8 patches (temporal patch 2: a still image is repeated) merged 2x2: 4x4 patches -> 4 image
# tokens per image, between <|vision_start|> and <|vision_end|>. mrope_section sums to head_dim / 2 = 8.

_QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_vl(family: str, attn_implementation: str = "sdpa", seed: int = 0):
    import transformers as tf

    tokenizer = _tokenizer(
        _QWEN_TOKENS,
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        "<|vision_start|><|image_pad|><|vision_end|>",
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_TOKENS}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        tie_word_embeddings=False,
    )
    vision = dict(depth=2, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2, hidden_size=HIDDEN)
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = tf.Qwen2VLImageProcessorPil(
        patch_size=8, temporal_patch_size=2, merge_size=2, min_pixels=32 * 32, max_pixels=32 * 32
    )
    if family == "qwen2_vl":
        config = tf.Qwen2VLConfig(
            text_config=tf.Qwen2VLTextConfig(**text),
            vision_config=tf.Qwen2VLVisionConfig(embed_dim=32, mlp_ratio=2, **vision),
            **tokens,
        )
        model_class = tf.Qwen2VLForConditionalGeneration
    else:
        config = tf.Qwen2_5_VLConfig(
            text_config=tf.Qwen2_5_VLTextConfig(**text),
            vision_config=tf.Qwen2_5_VLVisionConfig(
                intermediate_size=64, out_hidden_size=HIDDEN, window_size=16, fullatt_block_indexes=[1],
                **{**vision, "hidden_size": 32},
            ),
            **tokens,
        )
        model_class = tf.Qwen2_5_VLForConditionalGeneration
    processor = ImageOnlyQwenVLProcessor(image_processor, tokenizer)
    torch.manual_seed(seed)
    return _finish(model_class(config), attn_implementation), processor


# ---- gemma3 (part A) ---------------------------------------------------------------------------------------------
# SigLIP on 32x32 images in 8x8 patches (16 patches) average-pooled to mm_tokens_per_image = 4 soft tokens,
# rendered by the processor as "\n\n<start_of_image>" + 4 x <image_soft_token> + "<end_of_image>\n\n".

_GEMMA3_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


def _gemma3(attn_implementation: str = "sdpa", seed: int = 0):
    import transformers as tf

    tokenizer = _tokenizer(
        _GEMMA3_TOKENS,
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        "<start_of_image>",
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _GEMMA3_TOKENS}
    text = tf.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
        max_position_embeddings=512, sliding_window=512,  # longer than any test prompt: the window never cuts
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = tf.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
    )
    image_processor = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                   chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    model = tf.Gemma3ForConditionalGeneration(config)
    # Gemma 3 initialises its image projection to zeros (every image token would embed to 0 and no gradient would
    # reach the norm before it); a trained checkpoint's is not.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=HIDDEN**-0.5)
    return _finish(model, attn_implementation), processor


# ---- paligemma (part A) ------------------------------------------------------------------------------------------
# SigLIP on 32x32 images in 8x8 patches: 16 image tokens, put first by the processor ("<image>" x 16 + BOS +
# prompt + "\n"); a Gemma text model. The processor adds <image> and its 1152 <loc>/<seg> tokens to the tokenizer.


def _paligemma(attn_implementation: str = "sdpa", seed: int = 0):
    import transformers as tf

    tokenizer = _tokenizer(("<image>",), {"image_token": "<image>"}, "<image>")
    image_processor = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # what PaliGemmaProcessor reads (a real checkpoint's config has it)
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      chat_template=tokenizer.chat_template)
    text = tf.GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=HIDDEN,
    )
    config = tf.PaliGemmaConfig(
        text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=HIDDEN, hidden_size=HIDDEN, vocab_size=len(tokenizer), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _finish(tf.PaliGemmaForConditionalGeneration(config), attn_implementation), processor


@dataclass(frozen=True)
class TinyFamily:
    """One family of the test matrix.

    Attributes:
        model_type: ``config.model_type`` of the model built.
        build: ``build(attn_implementation="sdpa", seed=0) -> (model, processor)``, the model in eval mode.
        image_size: ``(height, width)`` of the test images.
    """

    model_type: str
    build: Callable
    image_size: tuple[int, int] = (32, 32)


TINY_FAMILIES: dict[str, TinyFamily] = {
    # ---- part A ----
    "qwen2_vl": TinyFamily("qwen2_vl", lambda **kw: _qwen_vl("qwen2_vl", **kw)),
    "qwen2_5_vl": TinyFamily("qwen2_5_vl", lambda **kw: _qwen_vl("qwen2_5_vl", **kw)),
    "gemma3": TinyFamily("gemma3", _gemma3),
    "paligemma": TinyFamily("paligemma", _paligemma),
    # ---- part B ----
}


def tiny_family(model_type: str, attn_implementation: str = "sdpa", seed: int = 0):
    """``(model, processor)`` of a registered tiny family (see ``TINY_FAMILIES``), in eval mode."""
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"no tiny model of {model_type!r}; registered: {sorted(TINY_FAMILIES)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return TINY_FAMILIES[model_type].build(attn_implementation=attn_implementation, seed=seed)
