"""The LVLM of the world: a real ``LlavaForConditionalGeneration`` and ``LlavaProcessor`` built from the trained
text LLM (its weights copied into the language model) and the trained vision encoder (its ``CLIPVisionModel``
weights copied into the vision tower), with a fresh projector. Every tga_fast analysis, intervention and trainer
runs on it unchanged.
"""

from __future__ import annotations

import warnings

import torch


def image_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_processor(tokenizer, vision_config, chat_template: str | None = None):
    """LLaVA's processor over ``tokenizer``; ``chat_template`` None: the world's "USER: ... ASSISTANT:" template."""
    from transformers import LlavaProcessor

    from tga_fast.models.tiny import CHAT_TEMPLATE

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return LlavaProcessor(
            image_processor=image_processor(vision_config.image_size),
            tokenizer=tokenizer,
            patch_size=vision_config.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=chat_template or CHAT_TEMPLATE,
        )


def assemble_llava(text_llm, vision_model, tokenizer, seed: int = 0, chat_template: str | None = None):
    """``(model, processor)``: LLaVA over copies of ``text_llm`` (a ``LlamaForCausalLM``) and ``vision_model``
    (a ``CLIPVisionModel``); the projector is initialised from ``seed``. Both inputs are left untouched.
    ``chat_template``: the processor's (None: the world's; a real LLM passes its own, extended to images)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision_config = vision_model.config
    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    tokens_per_image = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_llm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=tokens_per_image,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(text_llm.model.state_dict())
    model.lm_head.load_state_dict(text_llm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(vision_model.state_dict())
    model.set_attn_implementation("sdpa")
    return model.eval(), build_processor(tokenizer, vision_config, chat_template)


def pixel_table(processor, images) -> torch.Tensor:
    """``[N, 3, H, W]`` preprocessed pixels of PIL ``images`` (the processor's own normalisation)."""
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def save_lvlm(model, folder) -> None:
    """``save_pretrained`` (safetensors) plus the alignment's training log (``log.json``, set as ``model.toy_log``)."""
    import json
    from pathlib import Path

    model.save_pretrained(folder)
    (Path(folder) / "log.json").write_text(json.dumps(getattr(model, "toy_log", {})))


def load_lvlm(folder):
    import json
    from pathlib import Path

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    model.set_attn_implementation("sdpa")
    model.toy_log = json.loads((Path(folder) / "log.json").read_text())
    return model
