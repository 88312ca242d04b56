"""What a seed of the real-LLM world reads from the shared stage: the safety-tuned LLM with the image token added,
its chat template, the text scores and analyses, and the world's part of the tuning data as stage 2's replay.

The shared stage (:func:`tga_fast.real_llm.safety_tuning.prepare_llm`) runs once, before the seeds, and writes
``<cache>/shared_llm.json``; a seed only loads it (seeds run in parallel processes and must not tune twice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tga_fast.errors import UserError

SHARED_FILE = "shared_llm{suffix}.json"


def shared_path(cache, quick: bool) -> Path:
    return Path(cache) / SHARED_FILE.format(suffix="_quick" if quick else "")


@dataclass
class SharedLLM:
    llm: object  # LlamaForCausalLM, embeddings grown by the image token
    tokenizer: object  # with ``<image>`` and the ChatML template extended to images
    chat_template: str
    key: dict  # what determines the tuned LLM (part of every LVLM's cache key)
    scores: dict  # text scores of the untuned and the tuned model
    analyses: dict  # 3A-3C of the tuned model (the layers of tga_paper come from its 3A)
    analysis_window: int

    @staticmethod
    def replay_records(world) -> list[dict]:
        from tga_fast.real_llm.safety_data import world_replay_records

        return world_replay_records(world)


def save_shared(cache, quick: bool, prepared: dict) -> Path:
    path = shared_path(cache, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prepared, indent=1))
    return path


def load_shared_llm(protocol, cache, quick: bool) -> SharedLLM:
    """The tuned LLM of ``cache`` (a UserError when the shared stage has not run there)."""
    from tga_fast.real_llm.chat import CHATML_TEMPLATE, grow_embeddings, with_image_token
    from tga_fast.real_llm.safety_tuning import load_text_llm

    path = shared_path(cache, quick)
    if not path.is_file():
        raise UserError(f"{path} is missing: the real-LLM world's shared stage (prepare_llm) runs before its seeds "
                        "(tga-fast demo --llm smollm2 does both)")
    prepared = json.loads(path.read_text())
    llm, tokenizer = load_text_llm(prepared["tuned"])
    tokenizer = with_image_token(tokenizer)
    grow_embeddings(llm, tokenizer)
    return SharedLLM(
        llm=llm, tokenizer=tokenizer, chat_template=CHATML_TEMPLATE,
        key={"tuned": prepared["tuned_key"]},
        scores=prepared["scores"], analyses=prepared["analyses"]["tuned"],
        analysis_window=prepared["config"]["analysis_window"],
    )
