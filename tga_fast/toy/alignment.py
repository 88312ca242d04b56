"""The world's alignments, run by the library's own trainer: the world writes its training data as LLaVA-format
records (PNG images, ``conversations``, ``caption``, ``retrieved``, ``hinge``) and each stage is one call of
:func:`tga_fast.training.train.train` (``TGATrainer`` + ``TGACollator`` + ``TGADataset`` + text replay), as a user's
run on a 7B model would be. Fixes to the trainer reach the world's numbers.

- stage 1 (shared by every recipe, as LLaVA's pretraining is): the projector alone learns "what is this ?" ->
  the caption on every alignment image; LM loss only.
- stage 2 (per recipe, from the same stage-1 model): projector + LLM on describe / colour questions about every
  alignment image and use-requests about benign ones, with the text LLM's own requests replayed as text-only steps
  (toxic ones refused: the only refusals in training). A TGA recipe adds the alignment terms at its layers, with its
  teacher text (``caption`` "a red gun" or ``object`` "gun") as the record's ``caption`` and the retrieved text in
  ``retrieved_share`` of the image prompts (``hinge: false`` on the others).

No image is ever paired with a refusal, and no image, caption or retrieved text of a held-out concept or colour
combination is in any record.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
from pathlib import Path

from tga_fast.toy.protocol import Recipe
from tga_fast.toy.world import DESCRIBE, World, caption_of

logger = logging.getLogger(__name__)


def write_images(folder: Path, images) -> list[str]:
    """Saves PIL ``images`` as ``folder/<i>.png``; returns the names relative to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{i:05d}.png"
        image.save(folder / name)
        names.append(name)
    return names


def _turns(question: str, answer: str, image: bool) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


def stage1_records(world: World, labels, names) -> list[dict]:
    """"what is this ?" -> the caption, one record per alignment image (``labels[i]`` = (colour, concept))."""
    return [
        {"id": f"s1-{i}", "image": names[i], "conversations": _turns(DESCRIBE[0], caption_of(*label) + " .", True),
         "caption": caption_of(*label)}
        for i, label in enumerate(labels)
    ]


def stage2_records(world: World, labels, names, retrieved, recipe: Recipe, seed: int) -> list[dict]:
    """The stage-2 image records of one recipe: describe (both forms), colour and, on benign images, use-requests.

    ``retrieved[i]``: the training retrieval result of image i. The record's ``caption`` is the recipe's teacher
    text. ``retrieved_share`` of the records (drawn with ``seed``) carry the retrieved text; the others carry none
    and opt out of the hinge term."""
    keep = random.Random(f"{seed}-{recipe.name}")
    out = []
    for i, (colour, concept) in enumerate(labels):
        target = caption_of(colour, concept) if recipe.target == "caption" else concept
        for r in world.requests(colour, concept):
            if r.toxic:
                continue  # no image is paired with a refusal
            record = {"id": f"s2-{i}-{len(out)}", "image": names[i], "conversations": _turns(r.question, r.answer, True),
                      "caption": target}
            if keep.random() < recipe.retrieved_share:
                record["retrieved"] = retrieved[i]
            else:
                record["hinge"] = False
            out.append(record)
    return out


def replay_records(world: World) -> list[dict]:
    """The text LLM's own training requests, each object mention in each phrasing, as text-only records."""
    out = []
    for r in world.all_requests("train"):
        for mention in world.mentions(r.colour, r.concept):
            out.append({"id": f"t-{len(out)}", "conversations": _turns(f"{mention}\n{r.question}", r.answer, False)})
    return out


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_stage(model_dir, data_path, image_folder, out_dir, *, stage: int, settings: dict, seed: int,
              recipe: Recipe | None = None, layers=(), replay_path=None, replay_ratio: float = 0.0,
              progress: bool = False, lora: dict | None = None) -> dict:
    """One training stage through :func:`tga_fast.training.train.train`; the trained model is saved in ``out_dir``.

    ``settings``: the protocol's ``steps``, ``batch_size``, ``lr`` (and ``warmup_ratio``) of this stage.
    ``recipe`` None (stage 1) or without ``align``: LM loss only. ``lora`` (``{"r", "alpha"}``, stage 2 only): the
    LLM trains through LoRA adapters, merged into ``out_dir/merged`` (the folder to load). ``image_folder`` None:
    text-only records (a text LLM's own tuning). Returns the trainer's metrics."""
    from tga_fast.training.config import DataConfig, ModelConfig, TGAConfig, TrainConfig
    from tga_fast.training.train import train

    align = recipe is not None and recipe.align
    lora = lora or {}
    model = ModelConfig(model_name_or_path=str(model_dir), train_llm=stage == 2, dtype="float32",
                        attn_implementation="sdpa", lora_r=int(lora.get("r", 0)), lora_alpha=lora.get("alpha"))
    data = DataConfig(data_path=str(data_path), image_folder=None if image_folder is None else str(image_folder),
                      max_length=256,
                      use_retrieved=align or bool(recipe and recipe.retrieved_share),
                      text_replay_path=str(replay_path) if replay_path else None,
                      text_replay_ratio=replay_ratio if replay_path else None,
                      cache_encoded=True)  # a few thousand small samples, seen about three times each
    tga = TGAConfig(align=align, target_layers=list(layers) if align else [1],
                    pair_weight=recipe.pair_weight if align else 0.0, hinge_weight=recipe.hinge_weight if align else 0.0)
    args = TrainConfig(
        output_dir=str(out_dir), overwrite_output_dir=True, max_steps=int(settings["steps"]),
        per_device_train_batch_size=int(settings["batch_size"]), learning_rate=float(settings["lr"]),
        lr_scheduler_type="cosine", warmup_steps=float(settings.get("warmup_ratio", 0.03)), weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=max(1, int(settings["steps"]) // 20), save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, disable_tqdm=not progress, dataloader_num_workers=0, use_cpu=True,
        export_projector=False, save_full_model=True, merge_lora=bool(lora),
    )
    quiet = logging.getLogger("tga_fast.training")
    level = quiet.level
    if not progress:  # the trainer's warnings (e.g. layer 0 is an input-level alignment) are in the protocol
        quiet.setLevel(max(logging.ERROR, quiet.getEffectiveLevel()))
    try:
        if progress:
            return train(model, data, tga, args)
        # Without progress bars the Trainer prints every log line; the same lines are in log_history.json.
        with contextlib.redirect_stdout(io.StringIO()):
            return train(model, data, tga, args)
    finally:
        quiet.setLevel(level)
