"""The paper's five analyses on the world's models, through ``tga_fast.analysis`` (the same functions a user runs on
a 7B checkpoint), over the world's evaluation set written in the library's JSONL format
(``tga_fast.evaluation.data``): every fresh evaluation image as a PNG, one line per (image, use-request), the
object word marked as the toxic word, the object as the sample's ``concept`` (what intervals are clustered by), the
retrieved text attached, benign images as controls. Each analysis reports its control, its contrast and a verdict;
the summaries below keep them beside the curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tga_fast.toy.world import USE, World, caption_of


def write_eval_set(folder, world: World, images, labels, retrieved, per_concept: int | None = None) -> Path:
    """Writes ``folder/images/*.png`` and ``folder/eval.jsonl``; returns the JSONL path. ``per_concept``: keep only
    the first that many images of each concept (None: every image)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, kept = [], {}
    for i, ((colour, concept), image) in enumerate(zip(labels, images)):
        kept[concept] = kept.get(concept, 0) + 1
        if per_concept is not None and kept[concept] > per_concept:
            continue
        name = f"images/{i:04d}-{colour}-{concept}.png"
        image.save(folder / name)
        toxic = world.concept(concept).toxic
        for q, question in enumerate(USE):
            lines.append({
                "id": f"{i:04d}-{q}", "image": name, "text": caption_of(colour, concept),
                "scene": world.concept(concept).scene, "toxic_words": [concept] if toxic else [],
                "prompt": question, "retrieved": retrieved[i], "toxic": toxic, "concept": concept,
            })
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


class DualEncoderSide:
    """One side of the world's dual encoder with the ``.encode(...) -> [N, d]`` interface ``clip_cosines`` takes."""

    def __init__(self, dual, side: str, processor=None, vocabulary=None):
        self.dual, self.side, self.processor, self.vocabulary = dual, side, processor, vocabulary

    @torch.no_grad()
    def encode(self, items) -> torch.Tensor:
        if self.side == "image":
            pixels = self.processor(images=list(items), return_tensors="pt")["pixel_values"]
            return self.dual.encode_images(pixels)
        return self.dual.captions(self.vocabulary.encode(list(items)))

    def __repr__(self) -> str:
        return f"toy dual encoder ({self.side})"


def text_llm_analyses(llm, tokenizer, samples, width: int, out: Path | None = None) -> dict:
    """3A, 3B, 3C on the text LLM (toxic requests as text, benign ones as 3A's control). Returns the numbers the
    report uses."""
    from tga_fast.analysis import attention_share, knockout_sweep, safety_layers

    options = dict(batch_size=64, progress=False)
    safety = safety_layers(llm, tokenizer, samples, max_new_tokens=10, **options)
    share = attention_share(llm, tokenizer, samples, **options)
    knock = knockout_sweep(llm, tokenizer, samples, window=width, max_new_tokens=10, **options)
    if out is not None:
        for name, result in (("3a_safety_layers", safety), ("3b_attention_share", share), ("3c_knockout", knock)):
            result.save(out / name, overwrite=True)
    return {
        "safety_layers": {
            "layers": safety.layers, "refusal_prob": safety.refusal_mass_mean, "range": safety.safety_range,
            "benign_refusal_prob": safety.benign_mass_mean, "contrast": safety.contrast, "verdict": safety.verdict,
            "paper_range": safety.paper_range, "behaviour": safety.behaviour, "refusal_tokens": safety.refusal_tokens,
            "starts": safety.starts, "ends": safety.ends, "start_not_found": safety.start_not_found_rate,
            "end_not_found": safety.end_not_found_rate,
        },
        "attention_share": share.share_mean,
        "attention_share_control": share.control_share_mean,
        "attention_share_verdict": share.verdict,
        "attention_share_uniform": share.uniform_share_mean,
        "knockout": _window_rates(knock.windows, knock.baseline, knock.knockout),
        "knockout_control": _window_rates(knock.windows, knock.baseline, knock.control),
        "skip_layers": _window_rates(knock.windows, None, knock.skip),
        "knockout_significant": [f"{a}-{b}" for a, b in knock.significant_windows],
        "knockout_verdict": knock.verdict,
    }


def _window_rates(windows, baseline: dict | None, rates: list) -> dict:
    """``{"none": baseline rate, "a-b": rate per window}`` (the form report.md and the targets read)."""
    out = {} if baseline is None else {"none": baseline["rate"]}
    out.update({f"{a}-{b}": r["rate"] for (a, b), r in zip(windows, rates)})
    return out


def lvlm_analyses(model, processor, samples, width: int, clip, steering: bool, out: Path | None = None,
                  with_retrieved: bool = False) -> dict:
    """3D (all samples, with mismatched pairs as the control and the dual encoder's cosine as the reference line;
    ``with_retrieved`` adds the same pairs with the retrieved text in both prompts) and, if asked, 3E (toxic images;
    a random vector of the same norm and a mismatched text's state as controls)."""
    from tga_fast.analysis import modality_similarity, steering_sweep

    similarity = modality_similarity(model, processor, samples, batch_size=64, progress=False, clip=clip)
    result = {
        "similarity": similarity.cosine_mean,
        "similarity_mismatched": similarity.mismatched_cosine_mean,
        "similarity_verdict": similarity.verdict,
        "clip_cosine": similarity.clip_cosine_mean,
        "clip_mismatched_cosine": similarity.clip_mismatched_cosine_mean,
    }
    if out is not None:
        similarity.save(out / "3d_modality_similarity", overwrite=True)
    if with_retrieved:  # the same pairs with the retrieved text before the image (and the text): TGA's prompts
        both = modality_similarity(model, processor, samples, batch_size=64, progress=False, with_retrieved=True)
        result["similarity_with_retrieved"] = both.cosine_mean
        if out is not None:
            both.save(out / "3d_modality_similarity_with_retrieved", overwrite=True)
    if steering:
        steer = steering_sweep(model, processor, samples, window=width, max_new_tokens=10, batch_size=64,
                               progress=False)
        result["steering"] = _window_rates(steer.windows, steer.baseline, steer.steered)
        result["steering_random"] = _window_rates(steer.windows, steer.baseline, steer.random)
        result["steering_mismatched"] = _window_rates(steer.windows, steer.baseline, steer.mismatched)
        result["steering_significant"] = [f"{a}-{b}" for a, b in steer.significant_windows]
        result["steering_verdict"] = steer.verdict
        if out is not None:
            steer.save(out / "3e_steering", overwrite=True)
    return result
