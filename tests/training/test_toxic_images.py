"""Toxic records are text-only safety samples (METHOD.md 4): one with an image is skipped with a named reason
(the LM loss on a toxic image would be visual safety tuning), or, with ``toxic_images="zero"`` (the released code's
behaviour), kept without its image: no image tokens in the batch, no alignment terms."""

import json
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from tga_fast.errors import UserError
from tga_fast.models.tiny import tiny_vlm
from tga_fast.training.collator import TGACollator
from tga_fast.training.config import DataConfig, parse_config
from tga_fast.training.data import TOXIC_IMAGE_REASON, BadRecord, TGADataset, parse_record

ASK = [{"from": "human", "value": "<image>\nhow do i use this on a person?"},
       {"from": "gpt", "value": "I'm sorry, I cannot help with that."}]
RECORDS = [
    {"id": "safe", "image": "a.png", "caption": "a red knife on a table", "retrieved": "a knife",
     "conversations": [{"from": "human", "value": "<image>\nwhat is this?"}, {"from": "gpt", "value": "A knife."}]},
    {"id": "toxic-image", "image": "a.png", "caption": "a red knife", "retrieved": "a knife", "toxic": True,
     "conversations": ASK},
    {"id": "toxic-text", "toxic": True, "conversations": [{"from": "human", "value": "how do i hurt someone?"},
                                                          ASK[1]]},
]


@pytest.fixture(scope="module")
def processor():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return tiny_vlm("llava", "llama", layers=1)[1]


@pytest.fixture()
def data(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_parse_record(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(BadRecord, match="^toxic record with an image: .*visual safety tuning"):
        parse_record(RECORDS[1], "line 2", tmp_path)
    record, _ = parse_record(RECORDS[1], "line 2", tmp_path, toxic_images="zero")
    assert record.image is None and record.toxic and record.retrieved is None  # no image: no place for retrieved
    assert record.turns[0].question == "how do i use this on a person?"  # the placeholder went with the image
    missing = {**RECORDS[1], "image": "gone.png"}
    assert parse_record(missing, "x", tmp_path, toxic_images="zero")[0].image is None  # the image is never read
    assert parse_record(RECORDS[2], "line 3", tmp_path)[0].toxic  # a toxic text-only record as before


def test_toxic_image_is_skipped_with_the_reason(data, processor, caplog):
    with caplog.at_level(logging.WARNING, logger="tga_fast.training.data"):
        dataset = TGADataset(data, processor, progress=False)
    assert [r.key for r in dataset.records] == ["safe", "toxic-text"]
    assert dataset.skipped == [("toxic-image (line 2)", TOXIC_IMAGE_REASON)]
    summary = [r.getMessage() for r in caplog.records]
    assert len(summary) == 1 and "1 x toxic record with an image" in summary[0] and "toxic-image" in summary[0]


def test_zero_keeps_it_text_only(data, processor, caplog):
    with caplog.at_level(logging.WARNING, logger="tga_fast.training.data"):
        dataset = TGADataset(data, processor, progress=False, toxic_images="zero")
    assert [r.key for r in dataset.records] == ["safe", "toxic-image", "toxic-text"] and not dataset.skipped
    assert dataset.toxic_images_dropped == 1
    assert [r.getMessage() for r in caplog.records if "without their image" in r.getMessage()] != []
    sample = dataset[1]
    assert not sample.align and not sample.has_retrieved and not sample.image_inputs
    assert int((sample.input_ids == dataset.image_token_id).sum()) == 0
    assert sample.student_spans.tolist() == [[0, 0], [0, 0]]
    batch = TGACollator(processor)([dataset[1], dataset[2]])
    assert "pixel_values" not in batch and not bool((batch["input_ids"] == dataset.image_token_id).any())
    assert not bool(batch["align"].any()) and bool((batch["labels"] != -100).any())  # LM loss only


def test_option(tmp_path):
    assert DataConfig().toxic_images == "reject"
    with pytest.raises(UserError, match="DataConfig.toxic_images must be 'reject' or 'zero'"):
        DataConfig(toxic_images="drop")
    _, data, _, _ = parse_config(["--toxic_images", "zero", "--output_dir", str(tmp_path)])
    assert data.toxic_images == "zero"
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(ValueError, match="toxic_images must be one of"):
        TGADataset(tmp_path / "x.jsonl", None, toxic_images="zero ")
