"""A tiny LLaVA-format TGA dataset for tests: records with ``caption``, ``retrieved``, ``toxic`` and 40x40 PNGs.

    path = write_llava_data(tmp_path)             # tmp_path/data.jsonl and tmp_path/images/*.png

Good records, by index i (toxic first, then text-only, else an image sample whose variant cycles through the
four below, by its rank j among the image samples):

    i % toxic_every == toxic_every - 1         toxic text-only safety request, refusal answer   (align False)
    i % text_only_every == text_only_every - 1 text-only question and answer                    (align False)
    j % 4 == 0  "<image>\\n" + question, one turn, retrieved text
    j % 4 == 1  retrieved == caption: the self-match rule halves it
    j % 4 == 2  no retrieved text
    j % 4 == 3  two turns, the placeholder after the question, retrieved text

``bad_records`` appends the records of :data:`BAD_IDS` (each skipped at load for the reason in the name) and, in
JSONL, one line that is not JSON (its line number is ``count + len(BAD_IDS) + 1``). ``corrupt_image`` appends
a record whose PNG does not decode (valid at load, dropped by ``__getitem__``): id :data:`CORRUPT_ID`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BAD_IDS", "CORRUPT_ID", "good_records", "write_llava_data"]

BAD_IDS = (
    "bad-missing-image",
    "bad-empty-conversation",
    "bad-conversations-type",
    "bad-toxic-type",
    "bad-no-caption",
    "bad-roles",
)
CORRUPT_ID = "corrupt-image"
QUESTIONS = ("what is in this image?", "describe the picture.", "how do i use this?", "what is on the table?")
CAPTIONS = (
    "a red knife on a wooden table",
    "a small dog and a blue cup",
    "a green bottle on a table",
    "a photo of a cat",
)


def _write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def _image_record(i: int, j: int) -> dict:
    caption = CAPTIONS[j % len(CAPTIONS)]
    question = QUESTIONS[j % len(QUESTIONS)]
    record = {"id": f"img-{i}", "image": f"images/{i}.png", "caption": caption, "toxic": False, "scene": "safe"}
    variant = j % 4
    first = f"<image>\n{question}" if variant != 3 else f"{question}\n<image>"
    answer = f"The image shows {caption}."
    record["conversations"] = [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]
    if variant == 0:
        record["retrieved"] = CAPTIONS[(j + 1) % len(CAPTIONS)]
    elif variant == 1:
        record["retrieved"] = caption.capitalize() + "."  # the same text: the self-match rule applies
    elif variant == 3:
        record["retrieved"] = CAPTIONS[(j + 2) % len(CAPTIONS)]
        record["conversations"] += [
            {"from": "human", "value": "and the colour?"},
            {"from": "gpt", "value": "Sure, it is red."},
        ]
    return record


def good_records(count: int = 8, *, toxic_every: int = 4, text_only_every: int = 5) -> list[dict]:
    """The ``count`` valid records :func:`write_llava_data` writes (image paths relative to its folder)."""
    records, j = [], 0
    for i in range(count):
        if i % toxic_every == toxic_every - 1:
            records.append({
                "id": f"toxic-{i}",
                "conversations": [
                    {"from": "human", "value": "how do i make a bomb at home?"},
                    {"from": "gpt", "value": "I'm sorry, I cannot help with that."},
                ],
                "toxic": True,
                "scene": "illegal",
            })
        elif i % text_only_every == text_only_every - 1:
            records.append({
                "id": f"text-{i}",
                "conversations": [
                    {"from": "human", "value": "what is 2 + 3?"},
                    {"from": "gpt", "value": "Sure, here is how: 5."},
                ],
            })
        else:
            records.append(_image_record(i, j))
            j += 1
    return records


def _bad_records() -> list[dict]:
    turn = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "a cat."}]
    return [
        {"id": BAD_IDS[0], "image": "images/missing.png", "conversations": turn, "caption": "a cat"},
        {"id": BAD_IDS[1], "image": "images/0.png", "conversations": [], "caption": "a cat"},
        {"id": BAD_IDS[2], "image": "images/0.png", "conversations": "what? a cat.", "caption": "a cat"},
        {"id": BAD_IDS[3], "image": "images/0.png", "conversations": turn, "caption": "a cat", "toxic": "yes"},
        {"id": BAD_IDS[4], "image": "images/0.png", "conversations": turn},
        {"id": BAD_IDS[5], "image": "images/0.png", "conversations": turn[::-1], "caption": "a cat"},
    ]


def write_llava_data(
    folder,
    count: int = 8,
    *,
    toxic_every: int = 4,
    text_only_every: int = 5,
    bad_records: bool = True,
    corrupt_image: bool = False,
    fmt: str = "jsonl",
) -> Path:
    """Writes ``folder/data.<fmt>`` (``"jsonl"`` or ``"json"``) and ``folder/images/``; returns the data path."""
    if fmt not in ("jsonl", "json"):
        raise ValueError(f"fmt must be 'jsonl' or 'json', got {fmt!r}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = good_records(count, toxic_every=toxic_every, text_only_every=text_only_every)
    for record in records:
        if "image" in record:
            _write_image(folder / record["image"], seed=int(record["id"].split("-")[1]))
    if bad_records:
        if not (folder / "images" / "0.png").exists():
            _write_image(folder / "images" / "0.png", seed=0)
        records += _bad_records()
    if corrupt_image:
        (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        records.append({
            "id": CORRUPT_ID,
            "image": "images/corrupt.png",
            "conversations": [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "a cat."}],
            "caption": "a cat",
        })
    path = folder / f"data.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(records, indent=1))
        return path
    lines = [json.dumps(r) for r in records]
    if bad_records:
        lines.insert(count + len(BAD_IDS), "{not json")
    path.write_text("\n".join(lines) + "\n")
    return path
