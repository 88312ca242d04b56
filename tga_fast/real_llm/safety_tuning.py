"""The real LLM's text safety mechanism: SmolLM2-135M-Instruct safety-tuned with LoRA through the library's own
trainer, measured on held-out text before and after, and the paper's text analyses (3A-3C) on both.

    smollm2_folder (GGUF -> HF, cached)  ->  own answers to harmless instructions (untuned model, cached)
        ->  LoRA tuning (tga_fast.training.train, text only, merged)  ->  text DSR / false refusals / accuracy
        ->  3A (benign controls), 3B, 3C on the untuned and the tuned model

:func:`prepare_llm` runs it once per cache (the seeds of the world share the tuned LLM, as every LVLM of a
paper shares its LLM) and returns what the seeds and the report read.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from tga_fast.evaluation import KeywordJudge, Rate, generate_responses, rate_dict
from tga_fast.evaluation.data import EvalSample
from tga_fast.models.prompts import Prompt
from tga_fast.real_llm.safety_data import (
    load_split, safety_records, sample, world_text_requests,
)
from tga_fast.toy.cache import ModelCache, key_hash
from tga_fast.toy.world import USE, World, WorldConfig, caption_of

logger = logging.getLogger(__name__)

BATCH = 32


def load_text_llm(folder):
    """``(model, tokenizer)`` of a text LLM folder, fp32, eval mode, SDPA attention."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    return model, tokenizer


def own_answers(model, tokenizer, instructions: list[str], max_new_tokens: int) -> list[tuple[str, str]]:
    """``(instruction, answer)`` pairs: the model's greedy answers cut at their last full sentence; answers the GCG
    keywords count as refusals, and empty ones, are dropped (the harmless targets must not teach refusing)."""
    from tga_fast.real_llm.safety_data import cut_answer

    responses = generate_responses(model, tokenizer, [Prompt(question=q) for q in instructions], batch_size=BATCH,
                                   max_new_tokens=max_new_tokens, progress=False)
    answers = [cut_answer(r) for r in responses]
    refused = KeywordJudge("gcg")(answers)
    return [(q, a) for q, a, r in zip(instructions, answers, refused) if a and not r]


def text_scores(model, tokenizer, world: World, harmful_val: list[str], harmless_val: list[str],
                max_new_tokens: int) -> dict:
    """Held-out text: public harmful (DSR) and harmless (false refusals) instructions, independent samples (Wilson);
    the world's use-requests with coloured captions, which no tuning record names (DSR on toxic concepts; false
    refusals and exact answers on benign ones; clustered by concept)."""
    from tga_fast.toy.evaluate import exact_match

    judge = KeywordJudge("gcg")
    public = generate_responses(model, tokenizer, [Prompt(question=q) for q in harmful_val + harmless_val],
                                batch_size=BATCH, max_new_tokens=max_new_tokens, progress=False)
    refused = judge(public)
    n = len(harmful_val)
    requests = [r for c in world.concepts for colour in world.colours
                for r in world.requests(colour, c.name, ("use",))]
    responses = generate_responses(model, tokenizer, [Prompt(question=r.question, text=r.caption) for r in requests],
                                   batch_size=BATCH, max_new_tokens=max_new_tokens, progress=False)
    world_refused = judge(responses)
    toxic = [(f, r.concept) for f, r in zip(world_refused, requests) if r.toxic]
    benign = [(f, s, r) for f, s, r in zip(world_refused, responses, requests) if not r.toxic]
    return {
        "public_dsr": rate_dict(Rate.of(sum(refused[:n]), n)),
        "public_false_refusals": rate_dict(Rate.of(sum(refused[n:]), len(harmless_val))),
        "world_dsr": rate_dict(Rate.clustered([f for f, _ in toxic], [c for _, c in toxic])),
        "world_false_refusals": rate_dict(Rate.clustered([f for f, _, _ in benign], [r.concept for _, _, r in benign])),
        "world_accuracy": rate_dict(Rate.clustered(
            [exact_match(s, r.answer) for _, s, r in benign], [r.concept for _, _, r in benign]), "correct"),
        "examples": {
            "harmful": list(zip(harmful_val[:3], public[:3])),
            "harmless": list(zip(harmless_val[:3], public[n:n + 3])),
            "world": [(f"{r.caption} / {r.question}", s)
                      for r, s in list(zip(requests, responses))[::max(1, len(requests) // 6)]][:6],
        },
    }


def analysis_samples(world: World) -> list[EvalSample]:
    """The world's use-requests as text for 3A-3C: one colour per concept (cycled over the colours), the caption in
    the image's place with the object word marked; benign concepts are 3A's controls."""
    out = []
    for i, concept in enumerate(world.concepts):
        colour = world.colours[i % len(world.colours)]
        text = caption_of(colour, concept.name)
        start = text.rindex(concept.name)
        for q, question in enumerate(USE):
            out.append(EvalSample(
                id=f"{concept.name}-{q}", image_path=None, text=text, scene=concept.scene, prompt=question,
                toxic_ranges=((start, start + len(concept.name)),) if concept.toxic else (), toxic=concept.toxic,
                concept=concept.name))
    return out


def _cached_json(store: ModelCache, kind: str, key: dict, build):
    value, _ = store.cached(kind, key, build, lambda v, f: (f / "value.json").write_text(json.dumps(v, indent=1)),
                            lambda f: json.loads((f / "value.json").read_text()))
    return value


def prepare_llm(protocol, cache, out, data_dir=None, quick: bool = False) -> dict:
    """The shared stage of the real-LLM world (cached in ``cache``; reports in ``out``): returns ``{"base",
    "tuned"}`` folders, ``scores`` and ``analyses`` of the untuned and tuned models, the tuning data's counts and the
    wall time of each step (``timings``; a cached step takes the time to load it)."""
    from tga_fast.real_llm.safety_data import default_data_dir
    from tga_fast.real_llm.smollm2 import smollm2_folder
    from tga_fast.toy.alignment import run_stage, write_jsonl
    from tga_fast.toy.analyses import text_llm_analyses

    cfg = dict(protocol.data["safety_tuning"])
    if quick:
        cfg.update(cfg.get("quick", {}))
    cache, out = Path(cache), Path(out)
    store = ModelCache(cache)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    # The world's concepts (the same for every seed; the seeds only differ in what they hold out of the alignments)
    world = World(WorldConfig.quick(0) if quick else WorldConfig(seed=0, **protocol.data["world"]))
    timings, cold, clock = {}, {}, [time.perf_counter()]

    def done(name, kind=None, key=None):
        now = time.perf_counter()
        timings[name] = now - clock[0]
        clock[0] = now
        if kind is not None:  # what the step cost when it was built (this run's time when it was cached)
            cold[name] = store.cold_seconds(kind, key)

    base = smollm2_folder(cache / "smollm2_hf", progress=True)
    source = json.loads((base / "source.json").read_text())
    done("convert")
    harmful = load_split(data_dir, "harmful_train")[: cfg["harmful"]]
    harmless_pool = sample(load_split(data_dir, "harmless_train"), cfg["harmless"], cfg["seed"])
    harmful_val = load_split(data_dir, "harmful_val")
    harmless_val = sample(load_split(data_dir, "harmless_val"), cfg["harmless_val"], cfg["seed"])
    model, tokenizer = load_text_llm(base)
    answers_key = {"gguf": source["sha256"], "instructions": key_hash({"i": harmless_pool}),
                   "max_new_tokens": cfg["answer_tokens"]}
    harmless = [tuple(pair) for pair in _cached_json(
        store, "smollm2_answers", answers_key, lambda: own_answers(model, tokenizer, harmless_pool,
                                                                   cfg["answer_tokens"]))]
    done("own answers", "smollm2_answers", answers_key)
    untuned_key = {"model": source["sha256"], "cfg": cfg, "v": 1}
    untuned_scores = _cached_json(store, "smollm2_scores", untuned_key,
                                  lambda: text_scores(model, tokenizer, world, harmful_val, harmless_val,
                                                      cfg["eval_tokens"]))
    done("evaluate untuned", "smollm2_scores", untuned_key)
    samples = analysis_samples(world)
    width = cfg["analysis_window"]
    analyses_key = {"model": source["sha256"], "width": width, "n": len(samples), "v": 1}
    untuned_analyses = _cached_json(
        store, "smollm2_analyses", analyses_key,
        lambda: text_llm_analyses(model, tokenizer, samples, width, out / "analysis" / "untuned"))
    done("analyses untuned", "smollm2_analyses", analyses_key)

    records = safety_records(harmful, harmless, world)
    data = write_jsonl(out / "safety_tuning.jsonl", records)
    tune_key = {"gguf": source["sha256"], "cfg": {k: v for k, v in cfg.items() if k != "quick"},
                "records": key_hash({"r": data.read_text()})}
    settings = {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
                "warmup_ratio": cfg.get("warmup_ratio", 0.03)}
    store.cached("smollm2_tuned", tune_key, build=lambda: None, load=lambda f: f,
                 save=lambda _, folder: run_stage(base, data, None, folder, stage=2, settings=settings,
                                                  seed=cfg["seed"], lora=cfg["lora"]))
    tuned = store.folder("smollm2_tuned", tune_key) / "merged"
    done("tuning", "smollm2_tuned", tune_key)
    model, tokenizer = load_text_llm(tuned)
    tuned_key = {"model": tune_key, "cfg": cfg, "v": 1}
    tuned_scores = _cached_json(store, "smollm2_scores", tuned_key,
                                lambda: text_scores(model, tokenizer, world, harmful_val, harmless_val,
                                                    cfg["eval_tokens"]))
    done("evaluate tuned", "smollm2_scores", tuned_key)
    tuned_analyses_key = {"model": tune_key, "width": width, "n": len(samples), "v": 1}
    tuned_analyses = _cached_json(
        store, "smollm2_analyses", tuned_analyses_key,
        lambda: text_llm_analyses(model, tokenizer, samples, width, out / "analysis" / "tuned"))
    done("analyses tuned", "smollm2_analyses", tuned_analyses_key)
    log = json.loads((store.folder("smollm2_tuned", tune_key) / "log_history.json").read_text())
    return {
        "base": str(base), "tuned": str(tuned), "tuned_key": tune_key, "gguf": source,
        "data": {"harmful": len(harmful), "harmless": len(harmless), "harmless_drawn": len(harmless_pool),
                 "world": len(world_text_requests(world)), "records": len(records),
                 "harmful_val": len(harmful_val), "harmless_val": len(harmless_val)},
        "config": cfg,
        "scores": {"untuned": untuned_scores, "tuned": tuned_scores},
        "analyses": {"untuned": untuned_analyses, "tuned": tuned_analyses},
        "tuning_loss": [row["loss"] for row in log if "loss" in row],
        "timings": timings,
        "cold_timings": cold,
    }
