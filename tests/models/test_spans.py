"""Spans from the tokenization: image runs, text pieces that decode back, padding on either side."""

import pytest
import torch

from tests.models.conftest import SAMPLES, llm_batch, vlm_batch
from tga_fast.models import Spans, char_ranges_to_token_spans, image_token_spans, locate_pieces, resolve


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_vlm_spans_match_the_tokens(vlm, padding_side):
    model, processor = vlm
    batch, spans, texts, pieces = vlm_batch(processor, model, padding_side)
    assert spans.names == ("image", "retrieved", "question")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_id = resolve(model).image_token_id
    # The image span holds exactly the image tokens the processor inserted for the model.
    assert torch.equal(spans.lengths[:, 0], (ids == image_id).sum(1))
    for b, (question, retrieved) in enumerate(SAMPLES):
        start, end = spans["image"][b].tolist()
        assert (ids[b, start:end] == image_id).all()
        for name, piece in (("retrieved", retrieved), ("question", question)):
            s, e = spans[name][b].tolist()
            assert processor.tokenizer.decode(ids[b, s:e]).strip() == piece
            assert mask[b, s:e].all()  # padding is never inside a span


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_llm_spans_decode_back(llm, padding_side):
    _, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer, padding_side)
    for b, (question, retrieved) in enumerate(SAMPLES):
        for name, piece in (("retrieved", retrieved), ("question", question)):
            s, e = spans[name][b].tolist()
            assert tokenizer.decode(batch["input_ids"][b, s:e]).strip() == piece


def test_toxic_word_spans_from_character_ranges(llm):
    _, tokenizer = llm
    text = "USER: how do i use this knife? ASSISTANT:"
    start = text.index("knife")
    encoded = tokenizer([text], return_offsets_mapping=True, return_tensors="pt")
    spans = char_ranges_to_token_spans(encoded["offset_mapping"], torch.tensor([[[start, start + 5]]]))
    s, e = spans[0, 0].tolist()
    assert tokenizer.decode(encoded["input_ids"][0, s:e]).strip() == "knife"


def test_image_spans_reject_split_runs_and_allow_text_only():
    ids = torch.tensor([[1, 9, 9, 2, 0], [1, 2, 3, 4, 0]])
    assert image_token_spans(ids, 9).tolist() == [[[1, 3]], [[0, 0]]]
    with pytest.raises(ValueError, match="sample 0 .* more than one run"):
        image_token_spans(torch.tensor([[9, 1, 9]]), 9)


def test_locate_pieces_in_order_and_missing_piece():
    text = "a b a c"
    assert locate_pieces(text, [("x", "a"), ("y", "a")]) == {"x": (0, 1), "y": (4, 5)}
    with pytest.raises(ValueError, match="piece 'z'"):
        locate_pieces(text, [("z", "q")])


def test_spans_type_checks():
    spans = Spans(torch.tensor([[[0, 2], [2, 4]]]), ("a", "b"))
    assert spans["b"].tolist() == [[2, 4]] and spans.select("b").names == ("b",)
    assert spans.mask(5, "a").tolist() == [[True, True, False, False, False]]
    with pytest.raises(ValueError, match="covers padding at position 3"):
        spans.validate(5, torch.tensor([[1, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="sequence length 3"):
        spans.validate(3)
    with pytest.raises(KeyError, match="no span named 'c'"):
        spans["c"]
