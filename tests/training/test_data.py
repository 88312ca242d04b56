"""TGA training data: validation at load (bad records skipped and named), the prompt layout of METHOD.md 4, the
self-match rule, labels that are exactly the answers, truncation that never cuts the image, failures in
``__getitem__`` that never stop an epoch."""

import json
import logging
import warnings

import pytest
import torch

from tests.training.make_data import BAD_IDS, CORRUPT_ID, good_records, write_llava_data
from tga_fast.models.tiny import tiny_vlm
from tga_fast.retrieval.self_match import first_half
from tga_fast.training.conversation import EncodedSample, Turn
from tga_fast.training.data import BadRecord, DroppedSample, TGADataset, parse_record


@pytest.fixture(scope="module")
def llava():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        return tiny_vlm("llava", "llama", layers=1)


@pytest.fixture(scope="module")
def processor(llava):
    return llava[1]


def _answer_runs(sample: EncodedSample) -> list[torch.Tensor]:
    """The labelled tokens as runs of consecutive positions."""
    positions = (sample.labels != -100).nonzero().flatten().tolist()
    runs, current = [], []
    for p in positions:
        if current and p != current[-1] + 1:
            runs.append(current)
            current = []
        current.append(p)
    if current:
        runs.append(current)
    return [sample.labels[r] for r in runs]


def test_bad_records_are_skipped_counted_and_named(tmp_path, processor, caplog):
    path = write_llava_data(tmp_path, count=8)
    with caplog.at_level(logging.WARNING, logger="tga_fast.training.data"):
        dataset = TGADataset(path, processor, progress=False)
    assert len(dataset) == 8
    assert [r.key for r in dataset.records] == [r["id"] for r in good_records(8)]
    keys = [key for key, _ in dataset.skipped]
    not_json_line = f"line {8 + len(BAD_IDS) + 1}"
    assert keys == [f"{bad} (line {9 + n})" for n, bad in enumerate(BAD_IDS)] + [not_json_line]
    reasons = dict(dataset.skipped)
    assert reasons[f"{BAD_IDS[0]} (line 9)"].startswith("image file not found")
    assert reasons[f"{BAD_IDS[1]} (line 10)"] == "empty conversation"
    assert "must be a list" in reasons[f"{BAD_IDS[2]} (line 11)"]
    assert "'toxic' must be true or false" in reasons[f"{BAD_IDS[3]} (line 12)"]
    assert "no 'caption'" in reasons[f"{BAD_IDS[4]} (line 13)"]
    assert "expected human then gpt" in reasons[f"{BAD_IDS[5]} (line 14)"]
    assert reasons[not_json_line].startswith("invalid JSON")
    summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summary) == 1 and "skipped 7 of 15 records" in summary[0]
    assert all(bad in summary[0] for bad in BAD_IDS) and not_json_line in summary[0]


def test_json_and_jsonl_load_the_same(tmp_path, processor):
    jsonl = TGADataset(write_llava_data(tmp_path, count=6), processor, progress=False)
    json_ = TGADataset(write_llava_data(tmp_path, count=6, fmt="json"), processor, progress=False)
    assert json_.records == jsonl.records
    assert [k for k, _ in json_.skipped] == [f"{bad} (item {7 + n})" for n, bad in enumerate(BAD_IDS)]
    for i in range(len(jsonl)):
        a, b = jsonl[i], json_[i]
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.student_spans, b.student_spans) and torch.equal(a.teacher_input_ids, b.teacher_input_ids)


def test_cached_encoding_is_the_encoding_done_once(tmp_path, processor, monkeypatch):
    """``cache_encoded``: each record is encoded once and later reads return that encoding; without the cache
    every read encodes again. The cached samples equal the uncached ones."""
    path = write_llava_data(tmp_path, count=4)
    plain = TGADataset(path, processor, progress=False)
    cached = TGADataset(path, processor, progress=False, cache_encoded=True)
    calls = []
    for dataset in (plain, cached):
        original = dataset._encode
        monkeypatch.setattr(dataset, "_encode", lambda record, f=original, d=dataset: calls.append(d) or f(record))
    for _ in range(2):
        for i in range(len(cached)):
            a, b = plain[i], cached[i]
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.student_spans, b.student_spans)
    assert calls.count(plain) == 2 * len(plain) and calls.count(cached) == len(cached)
    assert cached[0] is cached[0]


def test_self_match_rule(tmp_path, processor):
    dataset = TGADataset(write_llava_data(tmp_path, count=8, bad_records=False), processor, progress=False)
    record = next(r for r in dataset.records if r.key == "img-1")  # its retrieved text is its caption
    assert record.retrieved == first_half(record.caption.capitalize() + ".") == "A small dog"
    assert dataset.self_matched == 1
    others = [r for r in dataset.records if r.retrieved is not None and r.key != "img-1"]
    assert others and all(r.retrieved != first_half(r.retrieved) for r in others)  # untouched
    sample = dataset[dataset.records.index(record)]
    start, end = sample.student_spans[1].tolist()
    assert processor.tokenizer.decode(sample.input_ids[start:end]).strip() == "A small dog"


def test_prompt_layout_labels_and_spans(tmp_path, llava):
    """METHOD.md 4: "Retrieved Text: " + retrieved + ". " + <image> + "\\n" + question, then the answers;
    labels are each answer and its end-of-turn token, nothing else."""
    model, processor = llava
    tokenizer = processor.tokenizer
    image_tokens = model.config.image_seq_length
    dataset = TGADataset(write_llava_data(tmp_path, count=8, bad_records=False), processor, progress=False)
    for index, record in enumerate(dataset.records):
        sample = dataset[index]
        text = tokenizer.decode(sample.input_ids)
        question = record.turns[0].question
        if record.image is not None:
            prefix = f"Retrieved Text: {record.retrieved}. " if record.retrieved else ""
            assert f"USER: {prefix}" + "<image>" * image_tokens + f"\n{question} ASSISTANT:" in text
            (i0, i1), (r0, r1) = sample.student_spans.tolist()
            assert i1 - i0 == image_tokens and (sample.input_ids[i0:i1] == dataset.image_token_id).all()
            assert int((sample.input_ids == dataset.image_token_id).sum()) == image_tokens
            assert sample.has_retrieved == (record.retrieved is not None)
            if record.retrieved:
                assert tokenizer.decode(sample.input_ids[r0:r1]).strip() == record.retrieved
        else:
            assert sample.student_spans.tolist() == [[0, 0], [0, 0]] and "<image>" not in text
        runs = _answer_runs(sample)
        assert [tokenizer.decode(run).strip() for run in runs] == [t.answer + tokenizer.eos_token for t in record.turns]
        assert sample.align == (record.image is not None and not record.toxic)
        t0, t1 = sample.teacher_spans[0].tolist()
        assert tokenizer.decode(sample.teacher_input_ids[t0:t1]).strip() == (record.caption or "")
        if record.caption:
            assert tokenizer.decode(sample.teacher_input_ids) == f"<s>USER: {record.caption} ASSISTANT:"


def test_without_retrieved_text(tmp_path, processor):
    dataset = TGADataset(write_llava_data(tmp_path, bad_records=False), processor, use_retrieved=False, progress=False)
    assert all(r.retrieved is None for r in dataset.records) and dataset.self_matched == 0
    for i in range(len(dataset)):
        sample = dataset[i]
        assert not sample.has_retrieved and sample.student_spans[1].tolist() == [0, 0]
        assert "Retrieved Text" not in processor.tokenizer.decode(sample.input_ids)


def test_short_answer_is_found_after_the_template(tmp_path, processor):
    """The answer "A" also occurs in "ASSISTANT": the label must be the answer's own token."""
    (tmp_path / "d.jsonl").write_text(
        '{"id": "mc", "conversations": [{"from": "human", "value": "A or B?"}, {"from": "gpt", "value": "A"}]}\n'
    )
    dataset = TGADataset(tmp_path / "d.jsonl", processor, progress=False)
    sample = dataset[0]
    labelled = (sample.labels != -100).nonzero().flatten()
    tokenizer = processor.tokenizer
    assert tokenizer.decode(sample.labels[labelled]).strip() == "A</s>"
    assert tokenizer.decode(sample.input_ids[: labelled[0]]).rstrip().endswith("ASSISTANT:")


def test_truncation_keeps_the_image_or_drops(tmp_path, processor):
    path = write_llava_data(tmp_path, count=8, bad_records=False)
    full = TGADataset(path, processor, progress=False)
    two_turns = next(i for i, r in enumerate(full.records) if len(r.turns) == 2)
    whole = full[two_turns]
    first_answer_end = int((whole.labels != -100).nonzero()[0]) + 3
    cut = TGADataset(path, processor, max_length=first_answer_end, replace_failed=False, progress=False)
    sample = cut[two_turns]
    assert sample.input_ids.shape[0] == first_answer_end
    assert torch.equal(sample.input_ids, whole.input_ids[:first_answer_end])
    assert torch.equal(sample.labels, whole.labels[:first_answer_end])
    image_end = int(whole.student_spans[0, 1])
    tight = TGADataset(path, processor, max_length=image_end - 1, replace_failed=False, progress=False)
    dropped = tight[two_turns]
    assert isinstance(dropped, DroppedSample) and "image or retrieved" in dropped.reason
    assert tight.dropped == [(dropped.key, dropped.reason)]


def test_undecodable_image_is_dropped_or_replaced(tmp_path, processor):
    path = write_llava_data(tmp_path, count=4, bad_records=False, corrupt_image=True)
    dataset = TGADataset(path, processor, replace_failed=False, progress=False)
    last = len(dataset) - 1
    assert dataset.records[last].key == CORRUPT_ID  # valid at load: only a stat
    dropped = dataset[last]
    assert isinstance(dropped, DroppedSample) and dropped.key == CORRUPT_ID
    replacing = TGADataset(path, processor, progress=False)
    replaced = replacing[last]
    assert isinstance(replaced, EncodedSample) and replaced.key == dataset.records[0].key
    assert [key for key, _ in replacing.dropped] == [CORRUPT_ID]


def test_parse_record_rules(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    turn = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    raw = {"image": "a.png", "conversations": turn, "caption": "c", "retrieved": "r"}
    record, matched = parse_record(raw, "line 3", tmp_path)
    assert record.key == "line 3" and record.turns == (Turn("q", "a"),) and not matched and record.retrieved == "r"
    with pytest.raises(BadRecord, match="toxic record with an image"):  # toxic samples are text-only
        parse_record({"image": "a.png", "conversations": turn, "toxic": True}, "line 4", tmp_path)
    toxic, _ = parse_record({"image": "a.png", "conversations": turn, "toxic": True}, "line 4", tmp_path,
                            toxic_images="zero")
    assert toxic.caption is None and toxic.toxic and toxic.image is None  # kept text-only; needs no caption
    raw = {"id": 7, "conversations": [{"from": "human", "value": "q"}, turn[1]], "retrieved": "r"}
    text_only, _ = parse_record(raw, "x", tmp_path)
    assert text_only.key == "7" and text_only.retrieved is None  # no image: no place for a retrieved text
    with pytest.raises(BadRecord, match="<image> in a record without an image"):
        parse_record({"conversations": turn}, "x", tmp_path)
    with pytest.raises(BadRecord, match="one image per sample"):
        parse_record({"image": ["a.png", "a.png"], "conversations": turn, "caption": "c"}, "x", tmp_path)
    with pytest.raises(BadRecord, match="end with gpt"):
        parse_record({"image": "a.png", "conversations": turn[:1], "caption": "c"}, "x", tmp_path)
    with pytest.raises(BadRecord, match="'caption' must be a string"):
        parse_record({"image": "a.png", "conversations": turn, "caption": 3}, "x", tmp_path)
    with pytest.raises(BadRecord, match="is empty"):
        parse_record({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]}, "x", tmp_path)


def test_image_data_needs_a_processor(tmp_path):
    from tga_fast.models.tiny import tiny_tokenizer

    with pytest.raises(ValueError, match="not a multimodal processor"):
        TGADataset(write_llava_data(tmp_path, bad_records=False), tiny_tokenizer(), progress=False)


def test_llama_like_tokenizer_one_bos_and_eos_labelled_when_pad_is_eos(tmp_path):
    """Llama / Mistral tokenizers add BOS themselves and ship without a pad token (set to EOS): the prompt keeps
    one BOS, and the EOS closing each answer stays in the labels (else the model never learns to stop)."""
    from tests.models.test_prompts import adds_bos

    _, processor = tiny_vlm("llava", "llama", layers=1)
    tokenizer = adds_bos(processor.tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    dataset = TGADataset(write_llava_data(tmp_path, count=8, bad_records=False), processor, progress=False)
    assert tokenizer.eos_token_id in dataset.end_of_turn
    for index, record in enumerate(dataset.records):
        sample = dataset[index]
        for ids in (sample.input_ids, sample.teacher_input_ids):
            assert int(ids[0]) == tokenizer.bos_token_id and int((ids == tokenizer.bos_token_id).sum()) == 1
        runs = _answer_runs(sample)
        assert [tokenizer.decode(run).strip() for run in runs] == [t.answer + tokenizer.eos_token for t in record.turns]


def test_encoding_faults_are_bad_records_or_clear_errors(tmp_path, processor):
    turn = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    good = json.dumps({"id": "ok", "conversations": turn}).encode()
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"id": "x\xff"}\n' + good.replace(b"ok", b"ok2"))
    dataset = TGADataset(tmp_path / "d.jsonl", processor, progress=False)  # a BOM, then a line that is not UTF-8
    assert [r.key for r in dataset.records] == ["ok", "ok2"]
    assert dataset.skipped == [("line 2", "not UTF-8 (byte 10 of the line)")]
    (tmp_path / "d.json").write_text('[{"id": "a"},\n {"id": }]')
    with pytest.raises(ValueError, match=r"d\.json: invalid JSON: .* line 2, column"):
        TGADataset(tmp_path / "d.json", processor, progress=False)
