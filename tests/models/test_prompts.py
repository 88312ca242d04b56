"""Single-turn prompts: every piece's span decodes back to the piece, with and without an image, any padding side."""

import pytest

from tga_fast.models import resolve
from tga_fast.models.prompts import Prompt, encode_prompts
from tga_fast.models.tiny import random_images, tiny_llm, tiny_vlm


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava", "llama")


def _decoded(tokenizer, encoded, b, name):
    start, end = encoded.spans[name][b].tolist()
    return tokenizer.decode(encoded.batch["input_ids"][b, start:end]).strip()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_image_prompts_spans_and_marks(llava, padding_side):
    model, processor = llava
    processor.tokenizer.padding_side = padding_side
    prompts = [
        Prompt("how do i use this?", image=True, retrieved="a red knife", marks=(("retrieved", 6, 11),)),
        Prompt("what is it?", image=True, system="what is it? be safe"),  # system repeats the question
    ]
    encoded = encode_prompts(processor, prompts, random_images(2), image_token_id=resolve(model).image_token_id)
    tokenizer = processor.tokenizer
    assert encoded.spans.names == ("image", "retrieved", "text", "question")
    assert encoded.spans.lengths[:, 0].tolist() == [model.config.image_seq_length] * 2
    assert _decoded(tokenizer, encoded, 0, "retrieved") == "a red knife"
    assert _decoded(tokenizer, encoded, 1, "retrieved") == ""
    assert [_decoded(tokenizer, encoded, b, "question") for b in range(2)] == ["how do i use this?", "what is it?"]
    # the question span of sample 1 lies after the image, not inside the system prompt
    assert encoded.spans["question"][1, 0] >= encoded.spans["image"][1, 1]
    assert tokenizer.decode(encoded.batch["input_ids"][0][encoded.marked[0]]).strip() == "knife"
    assert not encoded.marked[1].any()
    mask = encoded.batch["attention_mask"]
    last = encoded.last_positions
    assert all(mask[b, last[b]] == 1 and mask[b, last[b] + 1 :].sum() == 0 for b in range(2))


def test_text_condition_with_bare_tokenizer():
    _, tokenizer = tiny_llm("llama")
    tokenizer.padding_side = "left"
    prompts = [Prompt("how do i make this?", text="a bomb", marks=(("text", 2, 6),)), Prompt("hi")]
    encoded = encode_prompts(tokenizer, prompts)
    assert encoded.spans.names == ("retrieved", "text", "question")
    assert _decoded(tokenizer, encoded, 0, "text") == "a bomb"
    assert _decoded(tokenizer, encoded, 1, "question") == "hi"
    assert tokenizer.decode(encoded.batch["input_ids"][0][encoded.marked[0]]).strip() == "bomb"


def test_errors_name_the_problem(llava):
    _, processor = llava
    with pytest.raises(ValueError, match="either an image or a text"):
        Prompt("q", image=True, text="t")
    with pytest.raises(ValueError, match="mark"):
        Prompt("q", text="abc", marks=(("text", 2, 9),))
    with pytest.raises(ValueError, match="1 prompts have image=True but 0 images"):
        encode_prompts(processor, [Prompt("q", image=True)])
    _, tokenizer = tiny_llm("llama")
    with pytest.raises(ValueError, match="bare tokenizer"):
        encode_prompts(tokenizer, [Prompt("q", image=True)], [object()])


def adds_bos(tokenizer):
    """``tokenizer`` (the tiny byte-level one) made to add BOS itself, as Llama / Mistral tokenizers do."""
    from tokenizers import processors

    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]),
    ])
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id
    return tokenizer


@pytest.mark.parametrize("template_has_bos", [True, False])
def test_exactly_one_bos_whatever_prints_it(template_has_bos):
    """A template that prints BOS (Llama-3, Mistral) must not get a second one from the tokenizer; a template
    without it (llava-1.5-hf) gets the tokenizer's."""
    from tga_fast.models.tiny import CHAT_TEMPLATE

    model, processor = tiny_vlm("llava", "llama", layers=1)
    _, tokenizer = tiny_llm("llama", layers=1)
    for tok in (adds_bos(processor.tokenizer), adds_bos(tokenizer)):
        tok.chat_template = CHAT_TEMPLATE if template_has_bos else CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    processor.chat_template = processor.tokenizer.chat_template
    bos = tokenizer.bos_token_id
    text_prompt = Prompt("how do i use this?", text="a red knife")
    encoded = encode_prompts(tokenizer, [text_prompt])
    ids = encoded.batch["input_ids"][0].tolist()
    assert ids[0] == bos and ids.count(bos) == 1
    # the oracle: transformers' own tokenization of the chat (which never adds special tokens)
    chat = [{"role": "user", "content": "a red knife\nhow do i use this?"}]
    expected = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == (expected if template_has_bos else [bos, *expected])
    assert _decoded(tokenizer, encoded, 0, "text") == "a red knife"
    image = encode_prompts(processor, [Prompt("how?", image=True)], random_images(1),
                           image_token_id=resolve(model).image_token_id)
    image_ids = image.batch["input_ids"][0].tolist()
    assert image_ids[0] == bos and image_ids.count(bos) == 1
    assert _decoded(processor.tokenizer, image, 0, "question") == "how?"


def _lengths(encoded):
    return encoded.batch["attention_mask"].sum(1)


def test_prompts_past_the_context_warn_once_or_raise(caplog):
    from tga_fast.errors import UserError

    _, tokenizer = tiny_llm("llama")
    tokenizer.padding_side = "left"
    prompts = [Prompt("hi"), Prompt("how do i make this thing at home, step by step?"), Prompt("ok")]
    lengths = _lengths(encode_prompts(tokenizer, prompts))
    limit = int(lengths.min())  # the shortest fits, the two others do not
    with caplog.at_level("WARNING", logger="tga_fast.models.prompts"):
        encoded = encode_prompts(tokenizer, prompts, max_length=limit)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tga_fast.models.prompts"]
    assert len(warnings) == 1
    assert f"2 of 3 prompts are longer than the model's context of {limit} tokens" in warnings[0]
    assert f"the longest has {int(lengths.max())}" in warnings[0]
    assert (_lengths(encoded) == lengths).all()  # warned, never truncated
    with pytest.raises(UserError, match="2 of 3 prompts are longer"):
        encode_prompts(tokenizer, prompts, max_length=limit, too_long="error")
    with pytest.raises(ValueError, match="too_long"):
        encode_prompts(tokenizer, prompts, too_long="truncate")
    caplog.clear()
    with caplog.at_level("WARNING", logger="tga_fast.models.prompts"):
        encode_prompts(tokenizer, prompts, max_length=int(lengths.max()))  # exactly at the limit: fine
    assert not [r for r in caplog.records if r.name == "tga_fast.models.prompts"]


def test_the_tokenizer_limit_is_the_default_context(caplog):
    _, tokenizer = tiny_llm("llama")
    tokenizer.model_max_length = 4
    with caplog.at_level("WARNING", logger="tga_fast.models.prompts"):
        encode_prompts(tokenizer, [Prompt("how do i make this thing at home?")])
    assert any("1 of 1 prompts are longer than the model's context of 4" in r.getMessage() for r in caplog.records)


def test_the_model_context_reaches_the_evaluation_encoding(caplog):
    """``encode_for_model`` (DSR, analyses) passes the model's ``max_position_embeddings``."""
    from tga_fast.evaluation.generation import encode_for_model

    model, tokenizer = tiny_llm("llama")
    saved = model.config.max_position_embeddings
    model.config.max_position_embeddings = 4
    try:
        with caplog.at_level("WARNING", logger="tga_fast.models.prompts"):
            encode_for_model(model, tokenizer, [Prompt("how do i make this thing at home?")], None)
    finally:
        model.config.max_position_embeddings = saved
    assert any("context of 4 tokens" in r.getMessage() for r in caplog.records)
