"""Tiny random VLMs of the families beyond LLaVA, built offline from configs (nothing is downloaded).

One registry, ``TINY_FAMILIES``: ``model_type -> TinyFamily`` (a builder of ``(model, processor)``), so the test
matrix (``tests/models/test_families.py``) and any example runs over every family by one loop. Adding a family is
one entry here plus one adapter entry in ``tga_fast/models/adapters.py``.

Each processor is transformers' own processor class over the offline byte-level BPE of ``tiny.py`` (with the
family's special tokens added) and the family's PIL ("slow") image processor: torchvision is not needed.

    model, processor = tiny_family("qwen2_vl")
    model, processor = TINY_FAMILIES["gemma3"].build(attn_implementation="eager")
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

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


def _finish(model, attn_implementation: str, seed: int):
    model.set_attn_implementation(attn_implementation)
    return model.eval()


# ---- qwen2_vl, qwen2_5_vl (part A) -------------------------------------------------------------------------------
# 32x32 images in 8x8 patches (temporal patch 2: a still image is repeated) merged 2x2: 4x4 patches -> 4 image
# tokens per image, between <|vision_start|> and <|vision_end|>. mrope_section sums to head_dim / 2 = 8.

_QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


class OfflineQwenVLProcessor:
    """Qwen2-VL's processor for images, without its video processor.

    transformers 5.24's ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` cannot be built without torchvision (their
    video processor class is looked up at construction, 2026-12, transformers 5.24), which this machine lacks. This
    class does what they do for text and images: each ``image_token`` of the text becomes
    ``prod(image_grid_thw) // merge_size**2`` copies (the merged patches the model scatters in), the tokenizer
    runs on the expanded text, and ``mm_token_type_ids`` marks the image tokens (1) for the 3-D positions. It
    returns the replacement offsets as the ProcessorMixin does (``return_text_replacement_offsets=True``).
    """

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None):
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.image_token = tokenizer.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.chat_template = chat_template or tokenizer.chat_template

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def __call__(self, text=None, images=None, return_text_replacement_offsets: bool = False, **kwargs):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        image_inputs, counts = {}, []
        if images is not None:
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            image_inputs = dict(self.image_processor(flat, return_tensors="pt"))
            merge = self.image_processor.merge_size ** 2
            counts = (image_inputs["image_grid_thw"].prod(dim=-1) // merge).tolist()
        placed = sum(t.count(self.image_token) for t in texts)
        if placed != len(counts):
            raise ValueError(f"{placed} {self.image_token} in the texts but {len(counts)} images")
        expanded, offsets, remaining = [], [], iter(counts)
        for sample in texts:
            pieces, sample_offsets, cursor, shift = [], [], 0, 0
            at = sample.find(self.image_token)
            while at >= 0:
                replacement = self.image_token * next(remaining)
                pieces += [sample[cursor:at], replacement]
                end = at + len(self.image_token)
                sample_offsets.append({"type": "image", "span": (at, end),
                                       "new_span": (at + shift, at + shift + len(replacement))})
                shift += len(replacement) - len(self.image_token)
                cursor = end
                at = sample.find(self.image_token, cursor)
            pieces.append(sample[cursor:])
            expanded.append("".join(pieces))
            offsets.append(sample_offsets)
        encoded = self.tokenizer(expanded, **kwargs)
        ids = encoded["input_ids"]
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        encoded["mm_token_type_ids"] = (ids == self.image_token_id).to(ids.dtype)
        data = {**encoded, **image_inputs}
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = offsets
        return BatchFeature(data, skip_tensor_conversion=["text_replacement_offsets"])


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
    processor = OfflineQwenVLProcessor(image_processor, tokenizer)
    torch.manual_seed(seed)
    return _finish(model_class(config), attn_implementation, seed), processor


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
    return _finish(tf.Gemma3ForConditionalGeneration(config), attn_implementation, seed), processor


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
    # ---- part B ----
}


def tiny_family(model_type: str, attn_implementation: str = "sdpa", seed: int = 0):
    """``(model, processor)`` of a registered tiny family (see ``TINY_FAMILIES``), in eval mode."""
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"no tiny model of {model_type!r}; registered: {sorted(TINY_FAMILIES)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return TINY_FAMILIES[model_type].build(attn_implementation=attn_implementation, seed=seed)
