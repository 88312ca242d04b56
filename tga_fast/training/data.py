"""TGA training data: LLaVA-format records with ``caption``, ``retrieved`` and ``toxic``, validated at load, and a
``torch.utils.data.Dataset`` that renders and tokenizes them lazily (METHOD.md section 4).

A record (one item of a .json list or one line of a .jsonl file)::

    {"id": "0001", "image": "coco/0001.png",                     # "image" absent: a text-only sample
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A dog."}],
     "caption": "a dog on a sofa", "retrieved": "a small dog", "toxic": false, "scene": "...",  # scene: ignored
     "hinge": true}                                               # optional: false leaves out the hinge term

Files are read by :func:`tga_fast.files.read_json_records` (bytes, per-line decoding, a UTF-8 BOM ignored). Bad
records (wrong types, empty or malformed conversation, missing image file, an image path that leaves the image
folder, missing caption on a non-toxic image sample, a toxic sample with an image, unreadable JSON line) are
skipped at load: ``dataset.skipped`` lists ``(id or "line N", reason)`` and the log says how many and which.

Toxic samples are text-only safety samples (METHOD.md 4): the LM loss on a toxic *image* would be visual safety
tuning, which TGA must not use, so a toxic record with an image is rejected by default
(``toxic_images="reject"``). ``toxic_images="zero"`` reproduces the released code instead: its LLaVA fork gives
such a sample a zero image and no image tokens, i.e. trains it text-only; here the record is kept without its
image (no image tokens, no alignment terms) and the log says how many. A sample that fails later (an image that does not decode, a prompt longer
than ``max_length`` that would cut the image) makes ``__getitem__`` return a :class:`DroppedSample`, which the
collator drops and counts: one record never stops an epoch.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tga_fast.errors import UserError
from tga_fast.files import LineRecord, read_json_records, resolve_inside
from tga_fast.models.processors import image_runs_of
from tga_fast.retrieval.self_match import first_half, is_self_match
from tga_fast.training.conversation import (
    EncodedSample,
    Turn,
    encode_caption,
    encode_conversation,
    end_of_turn_ids,
    image_token_id_of,
    render_conversation,
)

__all__ = ["BadRecord", "DroppedSample", "Record", "TGADataset", "parse_record"]

logger = logging.getLogger(__name__)
IMAGE_PLACEHOLDER = "<image>"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
_LOGGED_IDS = 20  # skipped ids named in the summary line (all of them are in dataset.skipped)
TOXIC_IMAGES = ("reject", "zero")  # what to do with a toxic record that has an image (see the module docstring)
TOXIC_IMAGE_REASON = ("toxic record with an image: the LM loss on a toxic image is visual safety tuning, which TGA "
                      "does not use (toxic samples are text-only; --toxic_images zero trains it without its image, "
                      "as the released code does)")


class BadRecord(ValueError):
    """A record that cannot be trained on; the message is the reason."""


@dataclass(frozen=True)
class Record:
    """A validated record. ``image`` is an absolute path inside the image folder or None (text-only); ``retrieved``
    is None when absent (after the self-match rule); ``caption`` is None when absent; ``hinge`` False opts the
    sample out of the hinge term (the record's ``"hinge": false``; METHOD.md 4 applies it to every aligned sample
    with a retrieved text, which stays the default)."""

    key: str
    image: Path | None
    turns: tuple[Turn, ...]
    caption: str | None
    retrieved: str | None
    toxic: bool
    hinge: bool = True


@dataclass(frozen=True)
class DroppedSample:
    """What ``TGADataset.__getitem__`` returns for a sample that failed at load time of its image or tokens."""

    key: str
    reason: str


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{what} must be a string, got {type(value).__name__}")
    return value


def _turns(conversations, has_image: bool) -> tuple[Turn, ...]:
    if not isinstance(conversations, list):
        raise BadRecord(f"'conversations' must be a list, got {type(conversations).__name__}")
    if not conversations:
        raise BadRecord("empty conversation")
    if len(conversations) % 2:
        raise BadRecord(f"conversation has {len(conversations)} messages; it must alternate human/gpt and end with gpt")
    turns = []
    for i in range(0, len(conversations), 2):
        pair = conversations[i : i + 2]
        if not all(isinstance(m, dict) for m in pair):
            raise BadRecord(f"message {i} or {i + 1} is not an object with 'from' and 'value'")
        roles = [m.get("from") for m in pair]
        if roles[0] not in USER_ROLES or roles[1] not in ASSISTANT_ROLES:
            raise BadRecord(f"messages {i}, {i + 1} have roles {roles}; expected human then gpt")
        question = _text(pair[0].get("value"), f"message {i} 'value'")
        answer = _text(pair[1].get("value"), f"message {i + 1} 'value'")
        if IMAGE_PLACEHOLDER in answer or (i > 0 and IMAGE_PLACEHOLDER in question):
            raise BadRecord(f"{IMAGE_PLACEHOLDER} outside the first human message (one image per sample)")
        if IMAGE_PLACEHOLDER in question and not has_image:
            raise BadRecord(f"{IMAGE_PLACEHOLDER} in a record without an image")
        # The image is placed by the prompt builder, so the placeholder and its newline go.
        question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        if not answer.strip():
            raise BadRecord(f"message {i + 1} (gpt) is empty")
        turns.append(Turn(question, answer.strip()))
    return tuple(turns)


def parse_record(
    raw: Any,
    where: str,
    image_folder: Path,
    *,
    retrieved_field: str = "retrieved",
    caption_field: str = "caption",
    toxic_field: str = "toxic",
    use_retrieved: bool = True,
    toxic_images: str = "reject",
) -> tuple[Record, bool]:
    """Validates one raw record; returns ``(record, self_matched)`` or raises :class:`BadRecord`.

    A toxic record with an image is a :class:`BadRecord` with ``toxic_images="reject"``; with ``"zero"`` it is
    returned without its image (a text-only record: the image is neither read nor checked).

    The key is the record's ``id`` when it has one, else ``where``. The image path resolves inside
    ``image_folder`` (``../x`` or an absolute path elsewhere is a bad record) and the file must exist (checked with
    a stat; decoding waits for ``__getitem__``). ``raw`` may be a :class:`~tga_fast.files.LineRecord` whose line
    could not be read (a bad record) or a readable one.
    """
    if isinstance(raw, LineRecord):
        if not raw.ok:
            raise BadRecord(raw.error)
        raw = raw.value
    if isinstance(raw, BadRecord):
        raise raw
    if not isinstance(raw, dict):
        raise BadRecord(f"a record must be an object, got {type(raw).__name__}")
    image = raw.get("image")
    if isinstance(image, list):
        if len(image) > 1:
            raise BadRecord(f"{len(image)} images; one image per sample is supported")
        image = image[0] if image else None
    if image is not None and not isinstance(image, str):
        raise BadRecord(f"'image' must be a string path, got {type(image).__name__}")
    toxic = raw.get(toxic_field, False)
    if toxic is None:
        toxic = False
    if not isinstance(toxic, bool):
        raise BadRecord(f"{toxic_field!r} must be true or false, got {toxic!r}")
    had_image = bool(image)
    if toxic and had_image:
        if toxic_images not in TOXIC_IMAGES:
            raise ValueError(f"toxic_images must be one of {TOXIC_IMAGES}, got {toxic_images!r}")
        if toxic_images == "reject":
            raise BadRecord(TOXIC_IMAGE_REASON)
        image = None
    image_path = None
    if image:
        try:
            image_path = resolve_inside(image_folder, image, what="image path")
        except ValueError as error:
            raise BadRecord(str(error)) from None
        if not image_path.is_file():
            raise BadRecord(f"image file not found: {image_path}")
    # A record whose image was dropped keeps its <image> placeholder valid (the placeholder goes in any case).
    turns = _turns(raw.get("conversations"), image_path is not None or had_image)
    caption = raw.get(caption_field)
    if caption is not None:
        caption = _text(caption, repr(caption_field)).strip() or None
    if image_path is not None and not toxic and caption is None:
        raise BadRecord(f"no {caption_field!r} on a non-toxic image sample (the alignment target)")
    retrieved = raw.get(retrieved_field)
    if retrieved is not None:
        retrieved = _text(retrieved, repr(retrieved_field)).strip() or None
    # The retrieved text is the image's neighbour in text: a text-only sample has no place for it.
    if not use_retrieved or image_path is None:
        retrieved = None
    self_matched = retrieved is not None and is_self_match(retrieved, caption)
    if self_matched:  # METHOD.md 4: a retrieved text equal to the caption becomes its first half
        retrieved = first_half(retrieved)
    hinge = raw.get("hinge", True)
    if not isinstance(hinge, bool):
        raise BadRecord(f"'hinge' must be true or false, got {hinge!r}")
    key = raw.get("id")
    key = str(key) if isinstance(key, (str, int)) and str(key) else where
    return Record(key, image_path, turns, caption, retrieved, toxic, hinge), self_matched


def _image_dropped(line: LineRecord, record: Record) -> bool:
    """Whether ``record`` lost the image its raw line had (a toxic record under ``toxic_images="zero"``)."""
    raw = line.value if isinstance(line, LineRecord) else line
    return record.toxic and record.image is None and isinstance(raw, dict) and bool(raw.get("image"))


class TGADataset(torch.utils.data.Dataset):
    """LLaVA-format TGA data, tokenized lazily with the model's processor and chat template.

    Args:
        path: a .json (list of records) or .jsonl file.
        processor: the model's HF processor (LLaVA, LLaVA-NeXT); a bare tokenizer serves text-only data.
        image_folder: where relative ``image`` paths live; default the data file's folder.
        max_length: the most tokens of a student prompt; a longer sample keeps its first ``max_length`` tokens
            when the image and retrieved spans and at least one answer token fit, and is dropped otherwise.
        retrieved_field, caption_field, toxic_field: the record fields to read.
        use_retrieved: put the retrieved text in the prompt (False: the plain LLaVA prompt).
        toxic_images: a toxic record with an image: ``"reject"`` (skipped with the reason, the default) or
            ``"zero"`` (the released code's behaviour: kept and trained text-only, without its image).
        replace_failed: when a sample fails in ``__getitem__``, return the next sample of the same modality that
            works (up to 15 tries, the failure still logged and kept in ``dropped``) instead of a :class:`DroppedSample` for the
            collator to drop. The default keeps every batch full, which one sample per device needs (a batch with
            nothing left cannot step) and ZeRO-3 prefers (every rank runs the same forward).
        progress: show a progress bar while validating.
        image_runs: how one image's tokens lie in the prompt (the adapter's ``image_runs``: "hull" for Mistral 3
            and Idefics3, whose image is several runs); None: the processor's family's
            (:func:`tga_fast.models.processors.image_runs_of`). Training passes the model's.
        cache_encoded: keep each record's encoding in memory after its first use, so later epochs skip the image
            decoding, the chat template and the tokenization (the encoding is a pure function of the record:
            identical records share it). For data that fits in memory (the miniature world); a DataLoader worker
            keeps its own cache. A failed encoding is never cached.

    Attributes:
        records: the valid :class:`Record` s; ``skipped``: ``[(key, reason)]`` of the records rejected at load;
        ``dropped``: ``[(key, reason)]`` of samples that failed in ``__getitem__`` in this process (a DataLoader
        worker keeps its own); ``self_matched``: how many retrieved texts the self-match rule halved;
        ``toxic_images_dropped``: how many toxic records were kept without their image (``toxic_images="zero"``).

    ``__getitem__`` returns an :class:`~tga_fast.training.conversation.EncodedSample` or a :class:`DroppedSample`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        processor,
        *,
        image_folder: str | os.PathLike | None = None,
        max_length: int | None = None,
        retrieved_field: str = "retrieved",
        caption_field: str = "caption",
        toxic_field: str = "toxic",
        use_retrieved: bool = True,
        replace_failed: bool = True,
        progress: bool = True,
        toxic_images: str = "reject",
        image_runs: str | None = None,
        cache_encoded: bool = False,
    ):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"data path {path} is not a file")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 or None, got {max_length}")
        if toxic_images not in TOXIC_IMAGES:
            raise ValueError(f"toxic_images must be one of {TOXIC_IMAGES}, got {toxic_images!r}")
        self.path = path
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else path.parent
        self.max_length = max_length
        self.use_retrieved = use_retrieved
        self.replace_failed = replace_failed
        self.image_token_id = image_token_id_of(processor)
        self.image_runs = image_runs_of(processor) if image_runs is None else image_runs
        self.end_of_turn = end_of_turn_ids(processor)
        self.records: list[Record] = []
        self.skipped: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []
        self.self_matched = 0
        self.toxic_images_dropped = 0
        self._encoded: dict[Record, EncodedSample] | None = {} if cache_encoded else None
        fields = dict(
            retrieved_field=retrieved_field, caption_field=caption_field, toxic_field=toxic_field,
            use_retrieved=use_retrieved, toxic_images=toxic_images,
        )
        lines = read_json_records(path)
        for line in tqdm(lines, desc=f"reading {path.name}", unit=" records", disable=not progress):
            try:
                record, self_matched = parse_record(line, line.where, self.image_folder, **fields)
            except BadRecord as error:
                raw = line.value
                key = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), (str, int)) else None
                self.skipped.append((f"{key} ({line.where})" if key is not None else line.where, str(error)))
                logger.debug("skipping record %s: %s", self.skipped[-1][0], error)  # the summary names it once
                continue
            self.records.append(record)
            self.self_matched += self_matched
            self.toxic_images_dropped += _image_dropped(line, record)
        self._log_summary()
        if self.toxic_images_dropped:
            logger.warning("%s: %d toxic records trained text-only, without their image (toxic_images='zero', the "
                           "released code's behaviour)", path, self.toxic_images_dropped)
        if self.image_token_id is None and any(r.image is not None for r in self.records):
            count = sum(r.image is not None for r in self.records)
            raise UserError(f"{path}: {count} records have an image but `processor` is not a multimodal processor "
                            "(a text LLM's tokenizer): a text-only LLM trains on records without 'image'")

    def _log_summary(self) -> None:
        if not self.skipped:
            return
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        names = ", ".join(key for key, _ in self.skipped[:_LOGGED_IDS])
        more = f" and {len(self.skipped) - _LOGGED_IDS} more" if len(self.skipped) > _LOGGED_IDS else ""
        logger.warning(
            "%s: skipped %d of %d records (%s): %s%s",
            self.path, len(self.skipped), len(self.skipped) + len(self.records),
            "; ".join(f"{n} x {r}" for r, n in reasons.most_common()), names, more,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EncodedSample | DroppedSample:
        record = self.records[index]
        sample = self.encode(record)
        if isinstance(sample, EncodedSample) or not self.replace_failed:
            return sample
        # The replacement has the failed sample's modality: the sampler made this step all-image or all-text on
        # every process (ZeRO/DDP need it), and a text sample in an image step would break that.
        tries = 0
        for step in range(1, len(self.records)):
            candidate = self.records[(index + step) % len(self.records)]
            if (candidate.image is None) != (record.image is None):
                continue
            replacement = self.encode(candidate)
            if isinstance(replacement, EncodedSample):
                return replacement
            tries += 1
            if tries == 15:
                break
        return sample

    def encode(self, record: Record) -> EncodedSample | DroppedSample:
        """Loads the image and tokenizes ``record``; a failure is logged, kept in ``dropped`` and returned as a
        :class:`DroppedSample`. With ``cache_encoded`` a record is encoded once."""
        if self._encoded is not None and record in self._encoded:
            return self._encoded[record]
        try:
            sample = self._encode(record)
            if self._encoded is not None:
                self._encoded[record] = sample
            return sample
        except Exception as error:  # any failure is this sample's problem, never the epoch's
            reason = f"{type(error).__name__}: {error}"
            self.dropped.append((record.key, reason))
            logger.warning("dropping sample %s: %s", record.key, reason)
            return DroppedSample(record.key, reason)

    def _encode(self, record: Record) -> EncodedSample:
        image = None
        if record.image is not None:
            from PIL import Image

            with Image.open(record.image) as opened:
                image = opened.convert("RGB")
        rendered = render_conversation(
            self.processor, record.turns, image=image is not None, retrieved=record.retrieved
        )
        input_ids, labels, spans, image_inputs, token_inputs = encode_conversation(
            self.processor, rendered, image, image_token_id=self.image_token_id, end_of_turn=self.end_of_turn,
            image_runs=self.image_runs,
        )
        if image is not None and spans[0, 1] == spans[0, 0]:
            raise ValueError("the processor put no image token in the prompt")
        if self.max_length is not None and input_ids.shape[0] > self.max_length:
            input_ids, labels, token_inputs = self._truncate(input_ids, labels, spans, token_inputs)
        teacher_ids, teacher_span = encode_caption(self.processor, record.caption)
        return EncodedSample(
            key=record.key,
            input_ids=input_ids,
            labels=labels,
            student_spans=spans,
            teacher_input_ids=teacher_ids,
            teacher_spans=teacher_span,
            align=image is not None and record.caption is not None and not record.toxic,
            has_retrieved=bool(spans[1, 1] > spans[1, 0]),
            hinge=record.hinge,
            image_inputs=image_inputs,
            token_inputs=token_inputs,
        )

    def _truncate(self, input_ids, labels, spans, token_inputs):
        """Keeps the first ``max_length`` tokens: never cuts the image or the retrieved text, keeps an answer."""
        limit = self.max_length
        if int(spans[:, 1].max()) > limit:
            raise ValueError(
                f"{input_ids.shape[0]} tokens > max_length {limit} and the cut would fall in the image or retrieved text"
            )
        if not bool((labels[:limit] != -100).any()):
            raise ValueError(f"{input_ids.shape[0]} tokens > max_length {limit} and no answer token is left before it")
        return input_ids[:limit], labels[:limit], {k: v[:limit] for k, v in token_inputs.items()}
