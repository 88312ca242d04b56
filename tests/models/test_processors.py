"""The one processor helper module: image token ids of models, configs and processors; tokenizers; context length."""

import pytest

from tga_fast.models import context_length, image_token_id_of, is_processor, resolve, tokenizer_of
from tga_fast.models.tiny import tiny_llm, tiny_vlm


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava", "llama")


def test_image_token_id_of_a_model_its_config_and_its_processor_agree(llava):
    model, processor = llava
    expected = resolve(model).image_token_id
    assert expected is not None
    assert image_token_id_of(model) == image_token_id_of(model.config) == image_token_id_of(processor) == expected
    assert processor.tokenizer.convert_ids_to_tokens(expected) == processor.image_token


def test_text_llms_and_bare_tokenizers_have_no_image_token(llava):
    llm, tokenizer = tiny_llm("qwen2")
    assert image_token_id_of(llm) is None and image_token_id_of(llm.config) is None
    assert image_token_id_of(tokenizer) is None
    assert image_token_id_of(llava[1].tokenizer) is None  # a VLM's tokenizer alone is not its processor


def test_processor_or_tokenizer(llava):
    _, processor = llava
    _, tokenizer = tiny_llm("llama")
    assert is_processor(processor) and not is_processor(tokenizer) and not is_processor(processor.tokenizer)
    assert tokenizer_of(processor) is processor.tokenizer and tokenizer_of(tokenizer) is tokenizer


def test_context_length_prefers_the_config_and_ignores_the_no_limit_sentinel(llava):
    model, processor = llava
    tokenizer = processor.tokenizer
    saved = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = int(1e30)  # transformers' "no limit"
        assert context_length(processor=processor) is None
        tokenizer.model_max_length = 300
        assert context_length(processor=processor) == 300
        assert context_length(model, processor) == model.config.text_config.max_position_embeddings
        assert context_length(model.config) == model.config.text_config.max_position_embeddings
    finally:
        tokenizer.model_max_length = saved
