"""The paper's five analyses on the world's models, through ``tga_fast.analysis`` (the same functions a user runs on
a 7B checkpoint), over the world's evaluation set written in the library's JSONL format
(``tga_fast.evaluation.data``): every fresh evaluation image as a PNG, one line per (image, use-request), the
object word marked as the toxic word, the retrieved text attached, benign images as controls.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tga_fast.toy.world import USE, World, caption_of


def write_eval_set(folder, world: World, images, labels, retrieved) -> Path:
    """Writes ``folder/images/*.png`` and ``folder/eval.jsonl``; returns the JSONL path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ((colour, concept), image) in enumerate(zip(labels, images)):
        name = f"images/{i:04d}-{colour}-{concept}.png"
        image.save(folder / name)
        toxic = world.concept(concept).toxic
        for q, question in enumerate(USE):
            lines.append({
                "id": f"{i:04d}-{q}", "image": name, "text": caption_of(colour, concept),
                "scene": world.concept(concept).scene, "toxic_words": [concept] if toxic else [],
                "prompt": question, "retrieved": retrieved[i], "toxic": toxic,
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
    """3A, 3B, 3C on the text LLM (toxic requests as text). Returns the numbers the report uses."""
    from tga_fast.analysis import attention_share, knockout_sweep, safety_layers

    options = dict(batch_size=64, progress=False)
    safety = safety_layers(llm, tokenizer, samples, **options)  # refusal ids from the tokenizer: "sorry" here
    share = attention_share(llm, tokenizer, samples, **options)
    knock = knockout_sweep(llm, tokenizer, samples, window=width, variants=("knockout", "skip"), max_new_tokens=10,
                           **options)
    if out is not None:
        for name, result in (("3a_safety_layers", safety), ("3b_attention_share", share), ("3c_knockout", knock)):
            result.save(out / name, overwrite=True)
    knockout = {"none": knock.baseline["rate"]}
    knockout.update({f"{a}-{b}": r["rate"] for (a, b), r in zip(knock.windows, knock.knockout)})
    skipped = {f"{a}-{b}": r["rate"] for (a, b), r in zip(knock.windows, knock.skip)}
    return {
        "safety_layers": {
            "layers": safety.layers, "refusal_prob": safety.refusal_mass_mean, "range": safety.safety_range,
            "starts": safety.starts, "ends": safety.ends, "start_not_found": safety.start_not_found_rate,
            "end_not_found": safety.end_not_found_rate,
        },
        "attention_share": share.share_mean,
        "attention_share_uniform": share.uniform_share_mean,
        "knockout": knockout,
        "skip_layers": skipped,
    }


def lvlm_analyses(model, processor, samples, width: int, clip, steering: bool, out: Path | None = None) -> dict:
    """3D (all samples, with the dual encoder's cosine as the reference line) and, if asked, 3E (toxic images)."""
    from tga_fast.analysis import modality_similarity, steering_sweep

    similarity = modality_similarity(model, processor, samples, batch_size=64, progress=False, clip=clip)
    # The same pairs with the retrieved text before the image (and before the text): the prompts TGA trains on.
    with_retrieved = modality_similarity(model, processor, samples, batch_size=64, progress=False, with_retrieved=True)
    result = {
        "similarity": similarity.cosine_mean,
        "similarity_with_retrieved": with_retrieved.cosine_mean,
        "clip_cosine": similarity.clip_cosine_mean,
    }
    if out is not None:
        similarity.save(out / "3d_modality_similarity", overwrite=True)
        with_retrieved.save(out / "3d_modality_similarity_with_retrieved", overwrite=True)
    if steering:
        steer = steering_sweep(model, processor, samples, window=width, max_new_tokens=10, batch_size=64,
                               progress=False)
        result["steering"] = {"none": steer.baseline["rate"]}
        result["steering"].update({f"{a}-{b}": r["rate"] for (a, b), r in zip(steer.windows, steer.steered)})
        if out is not None:
            steer.save(out / "3e_steering", overwrite=True)
        result["steering_input"] = steering_from_input(model, processor, samples, (0,))
    return result


def steering_from_input(model, processor, samples, layers=(0,)) -> dict:
    """3E at the hidden states the library's sweep does not cover: DSR on the toxic images when the mean caption
    state of the text prompt is added to the image tokens at ``layers`` (0 = the decoder's input, what block 1
    reads), with ``tga_fast.models.steer`` and ``tga_fast.evaluation`` (greedy, GCG keyword judge)."""
    from tga_fast.evaluation import KeywordJudge, Rate, generate_responses
    from tga_fast.models import capture, resolve, steer
    from tga_fast.models.prompts import encode_prompts

    parts = resolve(model)
    toxic = [s for s in samples if s.toxic]
    text = encode_prompts(processor, [s.to_prompt("text") for s in toxic], image_token_id=parts.image_token_id)
    with torch.no_grad(), capture(model, layers=list(layers), spans=text.spans.select("text")) as cap:
        model(**text.batch)
    vectors = cap.pooled[:, :, 0]  # [L, B, D]: the caption's mean state per layer
    prompts = [s.to_prompt("image") for s in toxic]
    images = [s.load_image() for s in toxic]
    judge = KeywordJudge("gcg")
    result = {}
    for name, intervention in (
        ("none", None),
        ("-".join(map(str, layers)), lambda e: steer(model, list(layers), e.spans.select("image"), vectors)),
    ):
        responses = generate_responses(model, processor, prompts, images, batch_size=len(prompts), max_new_tokens=10,
                                       intervention=intervention, progress=False)
        result[name] = Rate.of(sum(judge(responses)), len(responses)).rate
    return result
