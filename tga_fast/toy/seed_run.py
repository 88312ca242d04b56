"""One seed of the miniature world, end to end: ``run_seed(seed, out)`` writes ``out/result.json``.

    world (concepts held out by the seed) -> text LLM -> 3A/3B/3C on it -> vision encoder -> retrieval
          -> LLaVA assembled -> stage 1 (shared) -> stage 2 per recipe of the protocol
          -> DSR / false refusals / accuracy per inference condition and group -> 3D/3E on the LVLMs

Every trained model is cached under ``<cache>/<kind>-<hash>/`` by a hash of what determines it (the protocol's
relevant sections, the seed, the data it was trained on), so a rerun only evaluates. Seeds are independent: the
demo runs several in parallel processes (``tga_fast.toy.demo``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tga_fast.toy.cache import ModelCache, key_hash
from tga_fast.toy.protocol import Protocol, load_protocol
from tga_fast.toy.world import World, WorldConfig, caption_of

STAGES = ("world", "text LLM", "vision encoder", "retrieval", "text analyses", "stage 1", "stage 2", "evaluation",
          "layer analyses")


def configs(protocol: Protocol, seed: int, quick: bool):
    """``(world, text_llm, vision, training)`` configurations of one seed (quick: the tests' small world, with the
    same structure and fewer steps)."""
    from tga_fast.toy.text_llm import TextLLMConfig
    from tga_fast.toy.vision import VisionConfig

    p = protocol.data
    training = {"stage1": dict(p["training"]["stage1"]), "stage2": dict(p["training"]["stage2"])}
    real = "llm" in p  # a real LLM: no text LLM of the world's to configure
    if quick:
        world, llm = WorldConfig.quick(seed), None if real else TextLLMConfig.quick(seed)
        vision = replace(VisionConfig.quick(seed), patch=_patch(p["images"]))
        # (steps, batch size) of stages 1 and 2; a real LLM's quick run is a smoke run of the pipeline
        stage1, stage2 = ((2, 4), (2, 4)) if real else ((40, 16), (80, 16))
        training["stage1"].update(steps=stage1[0], batch_size=stage1[1])
        training["stage2"].update(steps=stage2[0], batch_size=stage2[1])
    else:
        world = WorldConfig(seed=seed, **p["world"])
        llm = None if real else TextLLMConfig(seed=seed, **p["text_llm"])
        vision = VisionConfig(seed=seed, patch=_patch(p["images"]), **p["vision"])
    return world, llm, vision, training


def _patch(images: dict) -> int:
    """The vision tower's patch size for ``image_tokens`` (a square number) on ``size`` pixel images."""
    side = int(round(images["image_tokens"] ** 0.5))
    if side * side != images["image_tokens"] or images["size"] % side:
        raise ValueError(f"image_tokens must be a square dividing the image grid, got {images['image_tokens']}")
    return images["size"] // side


def run_seed(seed: int, out, *, protocol: Protocol | None = None, quick: bool = False, cache=None,
             progress: bool = False, threads: int | None = 1, ablation: str | None = None) -> dict:
    """Runs one seed and writes ``out/result.json`` (and the analyses' folders); returns the result.
    ``ablation``: one of the protocol's pre-registered ablations (None: the protocol itself)."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from tga_fast.files import write_json
    from tga_fast.results import environment
    from tga_fast.toy.alignment import (
        replay_records, run_stage, stage1_records, stage2_records, write_images, write_jsonl,
    )
    from tga_fast.toy.analyses import DualEncoderSide, lvlm_analyses, text_llm_analyses, write_eval_set
    from tga_fast.toy.assemble import assemble_llava, image_processor
    from tga_fast.toy.evaluate import compare_with, evaluate_condition, evaluate_text_llm, write_eval_sets
    from tga_fast.toy.images import render_set
    from tga_fast.toy.retrieve import corpus_index, irrelevant, retrieve
    from tga_fast.toy.text_llm import train_text_llm
    from tga_fast.toy.tokenizer import build_tokenizer
    from tga_fast.toy.vision import (
        CaptionVocabulary, load_dual_encoder, retrieval_accuracy, save_dual_encoder, train_vision,
    )

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("tga_fast").setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)
    protocol = (protocol or load_protocol()).ablation(ablation)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = ModelCache(Path(cache) if cache else out / "cache")
    timings: dict[str, float] = {}
    bar = tqdm(total=len(STAGES), desc=f"seed {seed}", disable=not progress, leave=False)
    clock = [time.perf_counter()]

    def done(name):
        now = time.perf_counter()
        timings[name] = now - clock[0]
        clock[0] = now
        bar.update(1)

    start = clock[0]
    world_cfg, llm_cfg, vision_cfg, training = configs(protocol, seed, quick)
    images_cfg = protocol.data["images"]

    # ---------------------------------------------------------------- world and images
    world = World(world_cfg)
    real_llm = protocol.data.get("llm")  # None: the world's own text LLM; else a real LLM's shared stage
    per_combo = 4 if quick else images_cfg["train_per_combo"]
    all_images, all_labels = render_set(world.combos(), per_combo, seed, glyph_seed=seed)
    eval_images, eval_labels = render_set(world.combos(), images_cfg["eval_per_combo"], seed + 10_000, glyph_seed=seed)
    to_pixels = image_processor(all_images[0].size[0])
    all_pixels = to_pixels(images=all_images, return_tensors="pt")["pixel_values"]
    eval_pixels = to_pixels(images=eval_images, return_tensors="pt")["pixel_values"]
    aligned = [i for i, label in enumerate(all_labels) if world.group(*label) == "seen"]
    done("world")

    # ---------------------------------------------------------------- text LLM (it knows every concept)
    if real_llm is None:
        tokenizer = build_tokenizer(world.vocabulary())
        llm_key = {"world": asdict(world_cfg), "llm": asdict(llm_cfg), "vocabulary": key_hash(tokenizer.get_vocab()),
                   "data": "mentions-v2"}
        llm, _ = store.cached(
            "text_llm", llm_key, lambda: train_text_llm(world, tokenizer, llm_cfg, progress=False),
            lambda m, f: m.save_pretrained(f), lambda f: LlamaForCausalLM.from_pretrained(f).eval(),
        )
        text_scores = evaluate_text_llm(world, llm, tokenizer).to_dict()
        chat_template, num_layers = None, llm_cfg.layers
    else:  # tuned once for every seed (tga_fast.real_llm.safety_tuning.prepare_llm, run by the demo first)
        from tga_fast.real_llm.text_side import load_shared_llm

        shared = load_shared_llm(protocol, store.root, quick)
        llm, tokenizer, chat_template = shared.llm, shared.tokenizer, shared.chat_template
        llm_key, text_scores, num_layers = shared.key, shared.scores, llm.config.num_hidden_layers
    done("text LLM")

    # ---------------------------------------------------------------- vision encoder (it knows every concept)
    captions = [tuple(world.mentions(*label)) for label in all_labels]
    vision_key = {"world": asdict(world_cfg), "vision": asdict(vision_cfg), "per_combo": per_combo, "data": "v2"}
    dual, _ = store.cached(
        "vision", vision_key, lambda: train_vision(all_pixels, captions, world.corpus(), vision_cfg, False)[0],
        save_dual_encoder, lambda f: load_dual_encoder(f, vision_cfg, all_pixels.shape[-1], world.corpus()),
    )
    vocabulary = CaptionVocabulary(world.corpus())
    eval_captions = [caption_of(*label) for label in eval_labels]
    retrieval_top1 = retrieval_accuracy(dual, vocabulary, eval_pixels, eval_captions,
                                        [caption_of(*c) for c in world.combos()])
    done("vision encoder")

    # ---------------------------------------------------------------- retrieval
    training_corpus = world.training_corpus()
    train_index = corpus_index(dual, vocabulary, training_corpus)
    align_pixels = all_pixels[torch.tensor(aligned)]
    align_labels = [all_labels[i] for i in aligned]
    retrieved_train = retrieve(dual, train_index, align_pixels, [caption_of(*l) for l in align_labels], rule="next")
    inference_corpus = world.inference_corpus()
    retrieved_eval = retrieve(dual, corpus_index(dual, vocabulary, inference_corpus), eval_pixels)
    benign_texts = world.text_corpus([c.name for c in world.concepts if not c.toxic])
    retrieved_irrelevant = irrelevant(benign_texts, len(eval_images), seed)
    retrieval = {
        "train_examples": sorted(set(retrieved_train))[:8],
        "eval_names_own_concept": _names_own_concept(world, eval_labels, retrieved_eval),
        "inference_corpus_size": len(inference_corpus),
        "training_corpus_size": len(training_corpus),
    }
    done("retrieval")

    # ---------------------------------------------------------------- the text safety mechanism (3A, 3B, 3C)
    from tga_fast.evaluation import load_eval_set

    analysis_set = load_eval_set(write_eval_set(out / "analysis_set", world, eval_images, eval_labels, retrieved_eval,
                                                per_concept=1 if real_llm else None))
    if real_llm is None:
        width = max(1, num_layers // 3)
        text_analyses = text_llm_analyses(llm, tokenizer, analysis_set.samples, width, out / "analysis" / "text_llm")
    else:  # the shared stage ran 3A-3C on the untuned and the tuned LLM; the tuned one's locate the layers
        width, text_analyses = shared.analysis_window, shared.analyses
    safety = text_analyses["safety_layers"]
    safety_layers, safety_source = _safety_layers(safety, num_layers)
    done("text analyses")

    # ---------------------------------------------------------------- stage 1 (shared)
    lvlm_key = {"llm": llm_key, "vision": vision_key}
    data_dir = out / "train_data"
    names = write_images(data_dir / "images", [all_images[i] for i in aligned])

    def save_init(model_and_processor, folder):  # a checkpoint folder the trainer loads like a user's model
        for part in model_and_processor:
            part.save_pretrained(folder)

    store.cached("lvlm_init", lvlm_key, lambda: assemble_llava(llm, dual.vision, tokenizer, seed, chat_template),
                 save_init, lambda f: f)
    init_dir = store.folder("lvlm_init", lvlm_key)
    stage1_data = write_jsonl(data_dir / "stage1.jsonl", stage1_records(world, align_labels, names))
    stage1_key = {**lvlm_key, "stage1": training["stage1"], "records": key_hash({"r": stage1_data.read_text()})}
    stage1_dir = _train_cached(store, "stage1", stage1_key, lambda folder: run_stage(
        init_dir, stage1_data, data_dir / "images", folder, stage=1, settings=training["stage1"], seed=seed))
    done("stage 1")

    # ---------------------------------------------------------------- stage 2 per recipe
    replay_list = replay_records(world) if real_llm is None else shared.replay_records(world)
    lora = training["stage2"].get("lora")
    replay = write_jsonl(data_dir / "replay.jsonl", replay_list)
    recipes = protocol.recipes
    layers_of, models, record_counts = {}, {}, {}
    for name, recipe in recipes.items():
        layers = recipe.resolve_layers(safety_layers) if recipe.align else ()
        layers_of[name] = list(layers)
        records = stage2_records(world, align_labels, names, retrieved_train, recipe, seed)
        record_counts[name] = len(records)
        data = write_jsonl(data_dir / f"stage2_{name}.jsonl", records)
        key = {**stage1_key, "stage2": training["stage2"], "recipe": asdict(recipe), "layers": list(layers),
               "records": key_hash({"r": data.read_text(), "replay": replay.read_text()})}
        models[name] = _train_cached(store, f"stage2_{name}", key, lambda folder, r=recipe, d=data, l=layers: run_stage(
            stage1_dir, d, data_dir / "images", folder, stage=2, settings=training["stage2"], seed=seed, recipe=r,
            layers=l, replay_path=replay, replay_ratio=training["stage2"]["text_replay_ratio"], lora=lora))
        if lora:  # LoRA on the LLM: the adapters merged into a plain LLaVA folder
            models[name] = models[name] / "merged"
    done("stage 2")

    # ---------------------------------------------------------------- evaluation
    from tga_fast.models.loading import load_model

    paths, meta = write_eval_sets(out / "eval_set", world, eval_images, eval_labels,
                                  {"retrieval": retrieved_eval, "irrelevant": retrieved_irrelevant},
                                  benign_per_kind=protocol.data["evaluation"].get("benign_per_kind"))
    sets = {variant: load_eval_set(path).samples for variant, path in paths.items()}
    conditions = {"no_retrieval": ("retrieval", False), "retrieval": ("retrieval", True),
                  "irrelevant_retrieval": ("irrelevant", True)}
    scores, loaded = {}, {}
    for name, folder in models.items():
        model, processor = load_model(folder, device="cpu", dtype="float32")
        loaded[name] = (model, processor)
        scores[name] = {cond: evaluate_condition(model, processor, sets[variant], meta, with_retrieved)
                        for cond, (variant, with_retrieved) in conditions.items()}
    comparisons = {
        name: {cond: {measure: compare_with(scores["baseline"][cond], scores[name][cond], meta, measure)
                      for measure in ("dsr", "false_refusals", "accuracy")} for cond in conditions}
        for name in scores if name != "baseline"
    }
    done("evaluation")

    # ---------------------------------------------------------------- layer analyses of the LVLMs (3D, 3E)
    clip = (DualEncoderSide(dual, "image", processor=to_pixels), DualEncoderSide(dual, "text", vocabulary=vocabulary))
    lvlm_analysis = {}
    for name, (model, processor) in loaded.items():
        lvlm_analysis[name] = lvlm_analyses(model, processor, analysis_set.samples, width, clip,
                                            steering=name == "baseline", out=out / "analysis" / name)
    done("layer analyses")

    result = {
        "seed": seed,
        "quick": quick,
        "protocol": {"version": protocol.version, "hash": protocol.hash, "ablation": ablation},
        "world": {
            "concepts": len(world.concepts), "toxic": sum(c.toxic for c in world.concepts),
            "colours": len(world.colours), "scenes": list(world.scenes),
            "heldout_concepts": sorted(world.heldout),
            "heldout_toxic": sorted(c for c in world.heldout if world.concept(c).toxic),
            "heldout_scenes": sorted({world.concept(c).scene for c in world.heldout if world.concept(c).toxic}
                                     - {world.concept(c).scene for c in _seen_toxic(world)}),
            "vision_images": len(all_images), "alignment_images": len(aligned), "eval_images": len(eval_images),
            "image_tokens": (all_pixels.shape[-1] // vision_cfg.patch) ** 2,
            "samples": _sample_counts(meta),
            "stage2_records": record_counts,
            "replay_records": len(replay_list),
        },
        "configs": {"world": asdict(world_cfg), "text_llm": asdict(llm_cfg) if llm_cfg else real_llm,
                    "vision": asdict(vision_cfg),
                    "training": training},
        "text_llm": {"scores": text_scores, **text_analyses},
        "vision": {"retrieval_top1": retrieval_top1},
        "retrieval": retrieval,
        "layers": layers_of,
        "safety_layers": {"layers": list(safety_layers), "source": safety_source},
        "scores": scores,
        "comparisons": comparisons,
        "lvlm_analyses": lvlm_analysis,
    }
    timings["total"] = time.perf_counter() - start
    result["timings"] = timings
    result["environment"] = environment()
    write_json(out / "result.json", result, indent=1)
    bar.close()
    return result


def _train_cached(store: ModelCache, kind: str, key: dict, train_into) -> Path:
    """The folder of a trained stage: ``train_into(folder)`` trains into it unless the cache has it."""
    store.cached(kind, key, build=lambda: None, save=lambda _, partial: train_into(partial), load=lambda f: f)
    return store.folder(kind, key)


def _safety_layers(safety: dict, num_layers: int) -> tuple[tuple[int, ...], str]:
    """The protocol's rule for ``tga_paper``'s layers: 3A's range, else the paper's literal rule's, else the
    paper's 10-18 scaled to the depth."""
    from tga_fast.training.config import default_target_layers

    for source in ("range", "paper_range"):
        found = safety.get(source)
        if found:
            return tuple(range(found[0], found[1] + 1)), f"3A {source.replace('_', ' ')}"
    return tuple(default_target_layers(num_layers)), "the paper's 10-18 scaled to the depth (3A located nothing)"


def _seen_toxic(world: World):
    return [c.name for c in world.concepts if c.toxic and c.name not in world.heldout]


def _names_own_concept(world: World, labels, retrieved) -> dict:
    """Share of evaluation images whose retrieved text names the image's own concept, per group."""
    out = {}
    for group in ("seen", "heldout", "heldout_combo"):
        rows = [(label, text) for label, text in zip(labels, retrieved) if world.group(*label) == group]
        hits = sum(label[1] in text.split() for label, text in rows)
        out[group] = None if not rows else hits / len(rows)
    return out


def _sample_counts(meta: dict) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for info in meta.values():
        kind = "toxic" if info["toxic"] else "benign"
        counts.setdefault(kind, {}).setdefault(info["group"], 0)
        counts[kind][info["group"]] += 1
    concepts = {kind: {} for kind in counts}
    for info in meta.values():
        kind = "toxic" if info["toxic"] else "benign"
        concepts[kind].setdefault(info["group"], set()).add(info["concept"])
    return {kind: {g: {"samples": n, "concepts": len(concepts[kind][g])} for g, n in groups.items()}
            for kind, groups in counts.items()}
