"""The safety-tuning data of the real-LLM world, all text, all public or the world's own:

- harmful instructions (``refusal_splits/harmful_train.json``) -> a refusal from :data:`REFUSALS`;
- harmless instructions (a seeded sample of ``harmless_train.json``) -> the untuned model's own greedy answer
  (cut at its last full sentence; answers the GCG keywords would count as refusals are dropped);
- the world's use-requests about every concept, the object named by a colourless phrasing before the question
  ("a gun on a table\\nhow do i use this ?"): toxic concepts -> a refusal, benign ones -> the world's answer
  ("you can cut bread .").

No colour is named anywhere in it, so every (colour, concept) caption of the world ("a red gun") is text the LLM
never saw, and no image. The public ``val`` splits and the world's coloured captions are the held-out text on which
the tuning is measured (``tga_fast.real_llm.safety_tuning``). Records are LLaVA-format text-only conversations,
what the library's trainer reads.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

from tga_fast.errors import UserError
from tga_fast.toy.world import CORPUS_PHRASINGS, USE, World

# Refusals in plain English, each one the GCG keyword judge recognises ("I'm sorry", "I cannot", "I can't").
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, I cannot assist with that request.",
    "I cannot help with that: it could cause serious harm.",
    "I'm sorry, but I won't provide that. It could hurt someone.",
)
WORLD_MENTIONS = ("a {c}", *CORPUS_PHRASINGS)  # colourless: the world's colours stay out of the text tuning
SPLITS = ("harmful_train", "harmful_val", "harmless_train", "harmless_val")


def refusal_for(request: str) -> str:
    """One of :data:`REFUSALS`, fixed per request text (a stable hash, not Python's salted ``hash``)."""
    return REFUSALS[zlib.crc32(request.encode()) % len(REFUSALS)]


def default_data_dir() -> Path:
    """The repository's copy of the public refusal splits (``data/refusal_splits``, see its README)."""
    path = Path(__file__).resolve().parents[2] / "data" / "refusal_splits"
    if not (path / "harmful_train.json").is_file():
        raise UserError(f"the refusal splits were not found in {path} (a tga_fast checkout has them; an installed "
                        "package does not): pass the folder of harmful_train.json, harmless_train.json, ...")
    return path


def load_split(data_dir: Path | str, name: str) -> list[str]:
    """The instructions of one split (``harmful_train``, ``harmless_val``, ...)."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    path = Path(data_dir) / f"{name}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the split ({error})") from None
    out = []
    for i, row in enumerate(rows):
        text = row.get("instruction") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: item {i} has no 'instruction' string")
        out.append(text.strip())
    return out


def sample(items: list[str], n: int, seed: int) -> list[str]:
    """``n`` items drawn without replacement (all when fewer), in a seeded order."""
    rng = random.Random(seed)
    return rng.sample(items, min(n, len(items)))


def cut_answer(text: str) -> str:
    """``text`` up to its last sentence end (``.``, ``!``, ``?``, a newline), the whole text when it has none."""
    ends = [text.rfind(mark) for mark in (". ", ".\n", "!", "?", "\n")] + [len(text) - 1 if text.endswith(".") else -1]
    end = max(ends)
    return text[: end + 1].strip() if end > 0 else text.strip()


def world_text_requests(world: World) -> list[tuple[str, str, bool, str]]:
    """``(request, answer, toxic, concept)``: every concept's use-requests in every colourless phrasing."""
    out = []
    for concept in world.concepts:
        for phrasing in WORLD_MENTIONS:
            mention = phrasing.format(c=concept.name)
            for question in USE:
                request = f"{mention}\n{question}"
                answer = refusal_for(request) if concept.toxic else f"you can {concept.use} ."
                out.append((request, answer, concept.toxic, concept.name))
    return out


def conversation(i: str, request: str, answer: str) -> dict:
    return {"id": i, "conversations": [{"from": "human", "value": request}, {"from": "gpt", "value": answer}]}


def safety_records(harmful: list[str], harmless: list[tuple[str, str]], world: World) -> list[dict]:
    """The tuning records: ``harmful`` instructions refused, ``harmless`` (instruction, answer) pairs answered,
    the world's requests (:func:`world_text_requests`)."""
    records = [conversation(f"harmful-{i}", text, refusal_for(text)) for i, text in enumerate(harmful)]
    records += [conversation(f"harmless-{i}", text, answer) for i, (text, answer) in enumerate(harmless)]
    records += [conversation(f"world-{i}", request, answer)
                for i, (request, answer, _, _) in enumerate(world_text_requests(world))]
    return records


def world_replay_records(world: World) -> list[dict]:
    """The world's part of the tuning data as stage 2's text replay (what the LLM was tuned on, refusals included)."""
    return [conversation(f"t-{i}", request, answer)
            for i, (request, answer, _, _) in enumerate(world_text_requests(world))]
