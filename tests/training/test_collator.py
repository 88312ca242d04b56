"""The TGA collator: the student batch, the caption-only teacher batch and their spans match the tokens on either
padding side (LLaVA and LLaVA-NeXT; the HF model's own image-token check is the oracle for the image count),
text-only and toxic samples mix with image samples, failed samples are dropped and counted, and the tiny LLaVA
trains on the batch."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.make_data import CORRUPT_ID, write_llava_data
from tga_fast.models.spans import Spans
from tga_fast.models.tiny import tiny_vlm
from tga_fast.training.collator import TGACollator
from tga_fast.training.data import DroppedSample, TGADataset

KEYS = {
    "input_ids", "attention_mask", "labels", "pixel_values", "teacher_input_ids", "teacher_attention_mask",
    "student_spans", "teacher_spans", "align", "has_retrieved", "hinge_mask",
}


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def family(request):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model, processor = tiny_vlm(request.param, "llama", layers=2)
    yield request.param, model, processor
    processor.tokenizer.padding_side = "right"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava_data")
    path = write_llava_data(folder, count=8, bad_records=False)
    rng = np.random.default_rng(1)  # images of other shapes: LLaVA-NeXT gives them other tile counts
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(folder / "images" / "1.png")
    Image.fromarray(rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)).save(folder / "images" / "5.png")
    return path


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open runs of True in a bool ``[T]``."""
    positions = mask.nonzero().flatten().tolist()
    runs = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1])
    return [tuple(r) for r in runs]


def _image_token_count(processor, image) -> int:
    """The processor's own expansion of one image, alone."""
    encoded = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    return int((encoded["input_ids"] == processor.image_token_id).sum())


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_spans_labels_and_padding_match_the_tokens(family, data, padding_side):
    name, model, processor = family
    processor.tokenizer.padding_side = padding_side
    tokenizer = processor.tokenizer
    dataset = TGADataset(data, processor, progress=False)
    batch = TGACollator(processor)([dataset[i] for i in range(len(dataset))])
    expected_keys = KEYS | ({"image_sizes"} if name == "llava_next" else set())
    assert set(batch) == expected_keys
    B, T = batch["input_ids"].shape
    assert B == len(dataset) and batch["labels"].shape == (B, T) and batch["attention_mask"].shape == (B, T)
    assert batch["student_spans"].shape == (B, 2, 2) and batch["student_spans"].dtype == torch.int64
    assert batch["teacher_spans"].shape == (B, 1, 2) and batch["teacher_spans"].dtype == torch.int64
    assert batch["align"].dtype == torch.bool and batch["has_retrieved"].dtype == torch.bool
    Spans(batch["student_spans"], ("image", "retrieved")).validate(T, batch["attention_mask"])
    teacher_mask = batch["teacher_attention_mask"]
    Spans(batch["teacher_spans"], ("caption",)).validate(teacher_mask.shape[1], teacher_mask)

    image_rows = [b for b, r in enumerate(dataset.records) if r.image is not None]
    assert batch["pixel_values"].shape[0] == len(image_rows)
    for b, record in enumerate(dataset.records):
        ids, mask = batch["input_ids"][b], batch["attention_mask"][b].bool()
        real = _runs(mask)
        assert len(real) == 1 and real[0][0 if padding_side == "right" else 1] == (0 if padding_side == "right" else T)
        (i0, i1), (r0, r1) = batch["student_spans"][b].tolist()
        is_image = ids == processor.image_token_id
        if record.image is not None:
            with Image.open(record.image) as image:
                expected = _image_token_count(processor, image.convert("RGB"))
            if name == "llava":
                assert expected == model.config.image_seq_length
            assert i1 - i0 == expected == int(is_image.sum()) and bool(is_image[i0:i1].all())
        else:
            assert (i0, i1) == (0, 0) and not is_image.any()
        assert bool(batch["has_retrieved"][b]) == (record.retrieved is not None)
        assert bool(batch["hinge_mask"][b]) == (record.retrieved is not None and record.hinge)
        assert tokenizer.decode(ids[r0:r1]).strip() == (record.retrieved or "")
        labels = batch["labels"][b]
        assert bool((labels[~mask] == -100).all())
        answers = [tokenizer.decode(labels[s:e]).strip() for s, e in _runs(labels != -100)]
        assert answers == [turn.answer + tokenizer.eos_token for turn in record.turns]
        assert torch.equal(labels[labels != -100], ids[labels != -100])
        (c0, c1), = batch["teacher_spans"][b].tolist()
        assert tokenizer.decode(batch["teacher_input_ids"][b, c0:c1]).strip() == (record.caption or "")
        assert bool(batch["align"][b]) == (record.image is not None and not record.toxic)

    # the HF model checks that the image tokens match its image features, and the loss is finite
    forward_keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_sizes")
    inputs = {k: v for k, v in batch.items() if k in forward_keys}
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)


def test_text_only_and_toxic_samples_mix_with_images(family, data):
    _, _, processor = family
    dataset = TGADataset(data, processor, progress=False)
    kinds = {r.key.split("-")[0] for r in dataset.records}
    assert kinds == {"img", "toxic", "text"}
    batch = TGACollator(processor)([dataset[i] for i in range(len(dataset))])
    toxic = torch.tensor([r.toxic for r in dataset.records])
    has_image = torch.tensor([r.image is not None for r in dataset.records])
    assert torch.equal(batch["align"], has_image & ~toxic)
    assert bool(((batch["labels"] != -100).sum(dim=1) > 0).all())  # every sample keeps its LM loss
    no_caption = batch["teacher_spans"][~has_image]
    assert bool((no_caption == 0).all())  # the empty-caption rows are there, with empty spans
    text_only = TGACollator(processor)([dataset[i] for i in range(len(dataset)) if not has_image[i]])
    assert "pixel_values" not in text_only and not text_only["align"].any()


def test_training_step_on_a_collated_batch(data):
    model, processor = tiny_vlm("llava", "llama", layers=2)
    model.train()
    dataset = TGADataset(data, processor, progress=False)
    batch = TGACollator(processor, pad_to_multiple_of=8)([dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["teacher_input_ids"].shape[1] % 8 == 0
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 pixel_values=batch["pixel_values"]).loss
    loss.backward()
    projector = model.model.multi_modal_projector.linear_1.weight.grad
    assert torch.isfinite(loss) and projector is not None
    assert torch.isfinite(projector).all() and projector.abs().sum() > 0
    with torch.no_grad():
        teacher = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"])
    assert torch.isfinite(teacher.logits).all()


def test_failed_samples_are_dropped_and_counted(tmp_path, family):
    _, _, processor = family
    path = write_llava_data(tmp_path, count=4, bad_records=False, corrupt_image=True)
    dataset = TGADataset(path, processor, replace_failed=False, progress=False)
    items = [dataset[i] for i in range(len(dataset))]
    assert isinstance(items[-1], DroppedSample) and items[-1].key == CORRUPT_ID
    collator = TGACollator(processor)
    batch = collator(items + [None])
    assert batch["input_ids"].shape[0] == len(dataset) - 1
    assert [key for key, _ in collator.dropped] == [CORRUPT_ID, "?"]
    assert "OSError" in collator.dropped[0][1] or "Error" in collator.dropped[0][1]
    with pytest.raises(ValueError, match="replace_failed=True"):
        collator([items[-1]])
    assert len(collator.dropped) == 3


def test_text_only_data_with_a_bare_tokenizer(tmp_path):
    from tga_fast.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    path = write_llava_data(tmp_path, count=4, toxic_every=2, text_only_every=1, bad_records=False)
    dataset = TGADataset(path, tokenizer, progress=False)
    batch = TGACollator(tokenizer)([dataset[i] for i in range(len(dataset))])
    assert set(batch) == KEYS - {"pixel_values"} and not batch["align"].any()
    for b, record in enumerate(dataset.records):
        labels = batch["labels"][b]
        answers = [tokenizer.decode(labels[s:e]).strip() for s, e in _runs(labels != -100)]
        assert answers == [turn.answer + tokenizer.eos_token for turn in record.turns]


def test_template_that_puts_the_image_first(tmp_path):
    """llava-hf's templates print every image before the text items: without retrieved text the spans still follow
    the tokens; with it every sample fails with the named ContentOrderError (training stops before that:
    tests/training/test_content_order.py)."""
    model, processor = tiny_vlm("llava", "llama", layers=1)
    processor.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% for c in m['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
        "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
        "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %} "
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    path = write_llava_data(tmp_path, count=2, bad_records=False)
    dataset = TGADataset(path, processor, progress=False, use_retrieved=False)
    batch = TGACollator(processor)([dataset[i] for i in range(len(dataset))])
    (i0, i1), (r0, r1) = batch["student_spans"][0].tolist()
    assert i1 - i0 == model.config.image_seq_length and r0 == r1 == 0
    dataset = TGADataset(path, processor, progress=False, replace_failed=False)
    dropped = dataset[0]
    assert isinstance(dropped, DroppedSample) and "ContentOrderError" in dropped.reason
