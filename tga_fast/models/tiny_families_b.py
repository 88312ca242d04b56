"""Tiny random LLaVA-OneVision, Mistral 3 and Idefics3 models with offline processors, built from configs.

For the family test matrix (issue 15): nothing is downloaded. Each builder takes the offline byte-level BPE of
``tga_fast.models.tiny`` with the family's own special tokens added, transformers' PIL image processor of the
family (torchvision is not needed) and the family's processor class where it can be built without torchvision:

- ``llava_onevision``: SigLIP tower (32x32 tiles, 8x8 patches) + Qwen2; anyres tiles with unpadding and a newline
  feature per row, all placed on ``<image>`` tokens (one run per image). ``LlavaOnevisionProcessor`` cannot be
  built without torchvision (2026-12, transformers 5.24: its required video processor's base class is not
  importable then), so the processor is ``LlavaNextProcessor`` over ``LlavaOnevisionImageProcessorPil``: it
  counts the same ``base + unpadded + newline`` features as long as no image exceeds OneVision's
  ``anyres_max_9`` budget, which a 32x32-tile model with at most 2 tiles never does (the model's forward
  raises on any mismatch). Saved, it reloads as a ``LlavaNextProcessor`` everywhere.
- ``mistral3``: Pixtral tower (8x8 patches, 2x2 patch merging) + Mistral; an image becomes rows of ``[IMG]``
  separated by ``[IMG_BREAK]`` and closed by ``[IMG_END]`` (several runs per image). ``PixtralProcessor`` needs
  torchvision (its module imports it); without it a small ``ProcessorMixin`` writes the same layout (see
  :func:`_pixtral_rows_processor_class`).
- ``idefics3``: Idefics3 (SigLIP-like) tower with a pixel shuffle (scale 2: 4 tokens per 32x32 tile) + Llama;
  ``Idefics3Processor`` splits an image into tiles, each ``<fake_token_around_image><row_i_col_j>`` + ``<image>``
  x 4, then the global image (several runs per image).

    model, processor = TINY_FAMILIES_B["mistral3"](seed=0)

Every builder returns ``(model, processor)`` with the model in eval mode, sdpa attention, in ``dtype``.
"""

from __future__ import annotations

import warnings

import torch

from tga_fast.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, _bpe_tokenizer, _text_config

__all__ = ["TINY_FAMILIES_B", "family_chat_template", "tiny_idefics3", "tiny_llava_onevision", "tiny_mistral3"]

# Tower sizes shared by the three families: 2 layers, width 32, 32x32 tiles of 8x8 patches.
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_TILE, _PATCH = 32, 8


def family_chat_template(placeholder: str) -> str:
    """The tiny LLaVA-1.5-like template of ``tga_fast.models.tiny`` with ``placeholder`` for an image item: it
    keeps content order (retrieved text, image, question)."""
    return CHAT_TEMPLATE.replace("<image>", placeholder)


def _tokenizer(extra_special: list[str], image_token: str):
    """The offline BPE with ``<pad> <s> </s>`` plus ``extra_special`` (the family's tokens), ``image_token`` named."""
    from transformers import PreTrainedTokenizerFast

    base = [t for t in SPECIAL_TOKENS if t != "<image>"]  # the family names its own image token
    specials = base + [t for t in extra_special if t not in base]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(specials, 384 + len(specials)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": image_token},
    )
    tokenizer.chat_template = family_chat_template(image_token)
    return tokenizer


def _finish(model_class, config, seed: int, dtype):
    torch.manual_seed(seed)
    model = model_class(config)
    model.set_attn_implementation("sdpa")
    return model.to(dtype).eval()


def tiny_llava_onevision(seed: int = 0, dtype=torch.float32, layers: int = 4, hidden: int = 64):
    """``(LlavaOnevisionForConditionalGeneration, LlavaNextProcessor)`` (see the module docstring for why this
    processor). A 40x70 image gives 2 tiles: 16 base + 4x8 unpadded-grid features + 4 newlines = 52 tokens."""
    from transformers import (
        LlavaNextProcessor,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = _tokenizer(["<image>"], "<image>")
    pinpoints = [[_TILE, _TILE], [_TILE, 2 * _TILE], [2 * _TILE, _TILE]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_VISION, image_size=_TILE, patch_size=_PATCH, vision_use_head=False),
        text_config=_text_config("qwen2", len(tokenizer), tokenizer.pad_token_id, layers, hidden),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",  # SigLIP has no class token to drop
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": _TILE, "width": _TILE}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=tokenizer.chat_template,
    )
    return _finish(LlavaOnevisionForConditionalGeneration, config, seed, dtype), processor


def _pixtral_rows_processor_class():
    """A processor laying out an image as Pixtral does, for machines without torchvision.

    transformers 5.24's ``PixtralProcessor`` lives in a module that imports torchvision at import time, so it does
    not exist without it (2026-12, transformers 5.24). This stand-in is a plain ``ProcessorMixin`` (transformers'
    own ``__call__``, kwargs merging and save / load of its parts) over ``PixtralImageProcessorPil``; it writes
    the layout of the Pixtral tokenizer format: per row of merged patches ``[IMG]`` x width then ``[IMG_BREAK]``,
    the last ``[IMG_BREAK]`` turned into ``[IMG_END]``. The tests compare its token count with what the model's
    own ``get_image_features`` returns (the forward raises on any mismatch).
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


def tiny_mistral3(seed: int = 0, dtype=torch.float32, layers: int = 4, hidden: int = 64):
    """``(Mistral3ForConditionalGeneration, processor)``: ``PixtralProcessor`` where torchvision is installed, else
    the stand-in of :func:`_pixtral_rows_processor_class`. Images are resized to a longest edge of 32 in 16-pixel
    merged patches (8-pixel patches, 2x2 merging): a 40x70 image gives 1 row of 2 ``[IMG]`` + ``[IMG_END]``, a
    70x40 one 2 rows of 1 ``[IMG]`` (``[IMG] [IMG_BREAK] [IMG] [IMG_END]``)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tokenizer = _tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"], "[IMG]")
    text = _text_config("mistral", len(tokenizer), tokenizer.pad_token_id, layers, hidden)
    text.sliding_window = None  # knockout does not apply a sliding window; the tiny model needs none
    merge = 2
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(**_VISION, head_dim=16, image_size=_TILE, patch_size=_PATCH),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    # Resized to whole merged patches, as PixtralProcessor asks its image processor to.
    merged = _PATCH * merge
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": _TILE}, patch_size={"height": merged, "width": merged}
    )
    try:
        from transformers import PixtralProcessor

        processor = PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=_PATCH,
                                     spatial_merge_size=merge, chat_template=tokenizer.chat_template)
    except ImportError:  # no torchvision: see _pixtral_rows_processor_class
        processor = _pixtral_rows_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                                    merged_patch_size=merged, chat_template=tokenizer.chat_template)
    return _finish(Mistral3ForConditionalGeneration, config, seed, dtype), processor


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def tiny_idefics3(seed: int = 0, dtype=torch.float32, layers: int = 4, hidden: int = 64):
    """``(Idefics3ForConditionalGeneration, Idefics3Processor)``. Images are resized to a longest edge of 64 and
    split into 32x32 tiles plus the global image; each tile gives 4 ``<image>`` tokens (16 patches, pixel shuffle
    by 2): a 40x70 image gives 2 tiles + the global one = 12 image tokens in 3 runs."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # The processor adds <fake_token_around_image>, <image> and <end_of_utterance> itself; having them (and the
    # tile tags) in the vocabulary first keeps its vocabulary equal to the model's embedding table.
    tokenizer = _tokenizer(IDEFICS3_TOKENS, "<image>")
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_VISION, image_size=_TILE, patch_size=_PATCH),
        text_config=_text_config("llama", len(tokenizer), tokenizer.pad_token_id, layers, hidden),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * _TILE}, max_image_size={"longest_edge": _TILE}, do_image_splitting=True
    )
    tokens_per_tile = (_TILE // _PATCH) ** 2 // 4
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
        chat_template=tokenizer.chat_template,
    )
    if len(tokenizer) != config.text_config.vocab_size:
        raise AssertionError("Idefics3Processor grew the vocabulary past the model's embedding table")
    return _finish(Idefics3ForConditionalGeneration, config, seed, dtype), processor


def _quiet(builder):
    def build(seed: int = 0, dtype=torch.float32, **sizes):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torchvision.*")
            return builder(seed=seed, dtype=dtype, **sizes)

    build.__name__, build.__doc__ = builder.__name__, builder.__doc__
    return build


TINY_FAMILIES_B = {
    "llava_onevision": _quiet(tiny_llava_onevision),
    "mistral3": _quiet(tiny_mistral3),
    "idefics3": _quiet(tiny_idefics3),
}
