"""Adapters: every supported family resolves; unknown families fail with the supported list."""

import pytest
from torch import nn

from tga_fast.models import resolve, supported_model_types


def test_vlm_parts(vlm):
    model, _ = vlm
    parts = resolve(model)
    assert parts.num_layers == model.config.text_config.num_hidden_layers
    assert parts.decoder_layers is model.model.language_model.layers
    assert parts.final_norm is model.model.language_model.norm
    assert parts.lm_head is model.lm_head
    assert parts.vision_tower is model.model.vision_tower and parts.projector is model.model.multi_modal_projector
    assert parts.image_token_id == model.config.image_token_id


def test_llm_parts(llm):
    model, _ = llm
    parts = resolve(model)
    assert parts.decoder_layers is model.model.layers and parts.final_norm is model.model.norm
    assert parts.vision_tower is None and parts.image_token_id is None


def test_unknown_family_lists_the_supported_ones():
    module = nn.Linear(2, 2)
    module.config = type("Config", (), {"model_type": "gpt2"})()
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'.*llava"):
        resolve(module)
    assert supported_model_types() == sorted(supported_model_types())
    assert {"llama", "llava", "llava_next", "mistral", "qwen2", "qwen2_vl", "qwen2_5_vl", "gemma3", "paligemma",
            "llava_onevision", "mistral3", "idefics3"} <= set(supported_model_types())


def test_layer_numbers_are_checked(llm):
    parts = resolve(llm[0])
    assert parts.check_layers(range(parts.num_layers + 1)) == tuple(range(parts.num_layers + 1))
    with pytest.raises(ValueError, match="out of range"):
        parts.check_layers([parts.num_layers + 1])
