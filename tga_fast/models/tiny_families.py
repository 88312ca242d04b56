"""Tiny random VLMs of the families beyond LLaVA, built offline from configs (nothing is downloaded).

One registry, ``TINY_FAMILIES``: ``model_type -> TinyFamily`` (a builder of ``(model, processor)``), so the test
matrices and any example run over every family by one loop: ``tests/models/test_families.py`` over Qwen2-VL,
Qwen2.5-VL, Gemma 3 and PaliGemma, ``tests/models/test_families_b.py`` over LLaVA-OneVision, Mistral 3 and
Idefics3 (several image runs, images of two shapes). Adding a family is one entry here
plus one adapter entry in ``tga_fast/models/adapters.py``.

Each processor is transformers' own processor class over the offline byte-level BPE of ``tiny.py`` (with the
family's special tokens added) and the family's PIL ("slow") image processor: torchvision is not needed. Where
transformers 5.24 builds a family's processor only with torchvision, a stand-in does the same for text and images:
Qwen2-VL and Qwen2.5-VL use :class:`~tga_fast.models.qwen_vl_processor.ImageOnlyQwenVLProcessor`,
LLaVA-OneVision ``LlavaNextProcessor`` (see :func:`_llava_onevision`), Mistral 3 a Pixtral-layout processor
(:func:`_pixtral_rows_processor_class`; ``PixtralProcessor`` itself where torchvision is installed).

    model, processor = tiny_family("qwen2_vl")
    model, processor = TINY_FAMILIES["gemma3"].build(attn_implementation="eager")
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from tga_fast.models.qwen_vl_processor import ImageOnlyQwenVLProcessor
from tga_fast.models.tiny import _bpe_tokenizer, _text_config

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


def _tokenizer(special_tokens: tuple[str, ...], named: dict[str, str], image_text: str, vocab_size: int = 384):
    """An offline BPE ``PreTrainedTokenizerFast`` with ``<pad> <s> </s>`` plus ``special_tokens``; ``named`` gives
    the tokenizer's named multimodal tokens (``image_token``, ``boi_token``...) as transformers' processors read
    them. ``vocab_size`` counts the special tokens: what is left are the BPE's bytes and merges."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(("<pad>", "<s>", "</s>", *special_tokens), vocab_size),
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


# ---- qwen2_vl, qwen2_5_vl -------------------------------------------------------------------------------------
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


# ---- gemma3 ---------------------------------------------------------------------------------------------------
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


# ---- paligemma ------------------------------------------------------------------------------------------------
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


# ---- llava_onevision, mistral3, idefics3 ----------------------------------------------------------------------
# Towers of 2 layers, width 32, on 32x32 tiles of 8x8 patches; the text model is tiny.py's (4 blocks, hidden 64).
# The placeholder is followed by a newline, as in tiny.py's LLaVA template. These families are tested on images of
# two shapes, 40x70 and 70x40 (other tile grids, other rows), by tests/models/test_families_b.py. Their BPE keeps
# 384 bytes and merges beside the special tokens (Idefics3 has 40): the text tokenizes alike in the three.
_B_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_TILE, _PATCH = 32, 8


def _b_vocab(family_tokens: int) -> int:
    """The vocabulary size of a tiled family's tokenizer with ``family_tokens`` special tokens of its own."""
    return 384 + 3 + family_tokens  # 3: <pad> <s> </s>


def _llava_onevision(attn_implementation: str = "sdpa", seed: int = 0):
    """SigLIP + Qwen2; anyres tiles with unpadding and a newline feature per row, all on ``<image>`` tokens (one
    run). A 40x70 image gives 2 tiles: 16 base + 4x8 unpadded-grid features + 4 newlines = 52 tokens.

    ``LlavaOnevisionProcessor`` cannot be built without torchvision (2026-12, transformers 5.24: its required video
    processor's base class is not importable then), so the processor is ``LlavaNextProcessor`` over
    ``LlavaOnevisionImageProcessorPil``: it counts the same ``base + unpadded + newline`` features as long as no
    image exceeds OneVision's ``anyres_max_9`` budget, which a 32x32-tile model with at most 2 tiles never does
    (the model's forward raises on any mismatch). Saved, it reloads as a ``LlavaNextProcessor``."""
    import transformers as tf
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = _tokenizer(("<image>",), {"image_token": "<image>"}, "<image>\n", _b_vocab(1))
    pinpoints = [[_TILE, _TILE], [_TILE, 2 * _TILE], [2 * _TILE, _TILE]]
    config = tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(**_B_VISION, image_size=_TILE, patch_size=_PATCH, vision_use_head=False),
        text_config=_text_config("qwen2", len(tokenizer), tokenizer.pad_token_id, LAYERS, HIDDEN),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",  # SigLIP has no class token to drop
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": _TILE, "width": _TILE},
                                                      image_grid_pinpoints=pinpoints)
    processor = tf.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=_PATCH, vision_feature_select_strategy="full",
        num_additional_image_tokens=0, chat_template=tokenizer.chat_template,
    )
    torch.manual_seed(seed)
    return _finish(tf.LlavaOnevisionForConditionalGeneration(config), attn_implementation), processor


def _pixtral_rows_processor_class():
    """A processor laying out an image as Pixtral does, for machines without torchvision.

    transformers 5.24's ``PixtralProcessor`` lives in a module that imports torchvision at import time, so it does
    not exist without it (2026-12, transformers 5.24). This stand-in is a plain ``ProcessorMixin`` (transformers'
    own ``__call__``, kwargs merging, replacement offsets and save / load of its parts) over
    ``PixtralImageProcessorPil``; it writes the layout of the Pixtral tokenizer format: per row of merged patches
    ``[IMG]`` x width then ``[IMG_BREAK]``, the last ``[IMG_BREAK]`` turned into ``[IMG_END]``. The model's own
    ``get_image_features`` checks its token count (the forward raises on any mismatch).
    """
    from transformers import ProcessorMixin

    class PixtralRowsProcessor(ProcessorMixin):
        def __init__(self, image_processor=None, tokenizer=None, merged_patch_size: int = 16, chat_template=None,
                     image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.merged_patch_size = merged_patch_size
            self.image_token, self.image_break_token = image_token, image_break_token
            self.image_end_token = image_end_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
            row = self.image_token * (width // self.merged_patch_size) + self.image_break_token
            rows = row * (height // self.merged_patch_size)
            return rows[: -len(self.image_break_token)] + self.image_end_token

    return PixtralRowsProcessor


def _mistral3(attn_implementation: str = "sdpa", seed: int = 0):
    """Pixtral tower (8x8 patches, 2x2 patch merging) + Mistral; ``PixtralProcessor`` where torchvision is
    installed, else the stand-in of :func:`_pixtral_rows_processor_class`. Images are resized to a longest edge of
    32 in 16-pixel merged patches: a 40x70 image gives 1 row of 2 ``[IMG]`` + ``[IMG_END]``, a 70x40 one 2 rows of
    1 ``[IMG]`` (``[IMG] [IMG_BREAK] [IMG] [IMG_END]``: two runs)."""
    import transformers as tf
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tokenizer = _tokenizer(("[IMG]", "[IMG_BREAK]", "[IMG_END]"), {"image_token": "[IMG]"}, "[IMG]\n", _b_vocab(3))
    text = _text_config("mistral", len(tokenizer), tokenizer.pad_token_id, LAYERS, HIDDEN)
    text.sliding_window = None  # knockout does not apply a sliding window; the tiny model needs none
    merge = 2
    config = tf.Mistral3Config(
        vision_config=tf.PixtralVisionConfig(**_B_VISION, head_dim=16, image_size=_TILE, patch_size=_PATCH),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    merged = _PATCH * merge  # images resized to whole merged patches, as PixtralProcessor asks its image processor
    image_processor = PixtralImageProcessorPil(size={"longest_edge": _TILE},
                                               patch_size={"height": merged, "width": merged})
    try:
        from transformers import PixtralProcessor

        processor = PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=_PATCH,
                                     spatial_merge_size=merge, chat_template=tokenizer.chat_template)
    except ImportError:  # no torchvision: see _pixtral_rows_processor_class
        processor = _pixtral_rows_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                                    merged_patch_size=merged, chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    return _finish(tf.Mistral3ForConditionalGeneration(config), attn_implementation), processor


_IDEFICS3_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)


def _idefics3(attn_implementation: str = "sdpa", seed: int = 0):
    """Idefics3 (SigLIP-like) tower with a pixel shuffle (scale 2: 4 tokens per 32x32 tile) + Llama;
    ``Idefics3Processor`` resizes to a longest edge of 64 and splits into 32x32 tiles, each
    ``<fake_token_around_image><row_i_col_j>`` + 4 ``<image>``, then the global image: a 40x70 image gives 2 tiles
    + the global one = 12 image tokens in 3 runs."""
    import transformers as tf
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # The processor adds <fake_token_around_image>, <image> and <end_of_utterance> itself; having them (and the
    # tile tags) in the vocabulary first keeps its vocabulary equal to the model's embedding table.
    tokenizer = _tokenizer(_IDEFICS3_TOKENS, {"image_token": "<image>"}, "<image>\n", _b_vocab(len(_IDEFICS3_TOKENS)))
    config = tf.Idefics3Config(
        vision_config=tf.Idefics3VisionConfig(**_B_VISION, image_size=_TILE, patch_size=_PATCH),
        text_config=_text_config("llama", len(tokenizer), tokenizer.pad_token_id, LAYERS, HIDDEN),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * _TILE}, max_image_size={"longest_edge": _TILE}, do_image_splitting=True
    )
    processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                     image_seq_len=(_TILE // _PATCH) ** 2 // 4, chat_template=tokenizer.chat_template)
    if len(tokenizer) != config.text_config.vocab_size:
        raise AssertionError("Idefics3Processor grew the vocabulary past the model's embedding table")
    torch.manual_seed(seed)
    return _finish(tf.Idefics3ForConditionalGeneration(config), attn_implementation), processor


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
    "qwen2_vl": TinyFamily("qwen2_vl", lambda **kw: _qwen_vl("qwen2_vl", **kw)),
    "qwen2_5_vl": TinyFamily("qwen2_5_vl", lambda **kw: _qwen_vl("qwen2_5_vl", **kw)),
    "gemma3": TinyFamily("gemma3", _gemma3),
    "paligemma": TinyFamily("paligemma", _paligemma),
    # tiled families: images of two shapes
    "llava_onevision": TinyFamily("llava_onevision", _llava_onevision, (40, 70)),
    "mistral3": TinyFamily("mistral3", _mistral3, (40, 70)),
    "idefics3": TinyFamily("idefics3", _idefics3, (40, 70)),
}


def tiny_family(model_type: str, attn_implementation: str = "sdpa", seed: int = 0):
    """``(model, processor)`` of a registered tiny family (see ``TINY_FAMILIES``), in eval mode."""
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"no tiny model of {model_type!r}; registered: {sorted(TINY_FAMILIES)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return TINY_FAMILIES[model_type].build(attn_implementation=attn_implementation, seed=seed)
