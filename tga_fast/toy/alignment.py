"""The two alignments of the world's LVLM, from the same start (the assembled LLaVA, fresh projector):

- ``baseline`` (LLaVA-style): stage 1 trains the projector on captions; stage 2 trains projector + LLM on the
  instruction mix (describe / colour questions on images of every concept, use-requests on benign images only,
  text-only replay of the LLM's own requests). Next-token loss only.
- ``tga``: the same data and steps, the retrieved text put before the image ("Retrieved Text: ... . <image>"), and
  the TGA pair + hinge terms of ``tga_fast.training.loss.tga_alignment_loss`` at the target layers, with the
  caption's hidden states from a no-grad teacher pass of the same model (``tga_fast.models.capture``).

No image is ever paired with a refusal in either: the only refusals in training are the text-only replay samples
(flagged ``safety``: LM loss, no alignment terms).

Options of the TGA run beyond the paper's (``AlignConfig``): ``target`` (the teacher text: the caption, the
"colour object" phrase or the object word alone), ``retrieved_share`` (the share of training prompts that carry
the retrieved text; the hinge term is summed over those only) and the target ``layers``, which may include
hidden state 0 (the decoder's input). ``tga_fast.toy.tried`` says why the demo uses them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from tga_fast.models import capture, resolve
from tga_fast.models.prompts import Prompt
from tga_fast.toy.data import Encoder, Example, text_examples
from tga_fast.toy.text_llm import warmup_cosine
from tga_fast.toy.world import DESCRIBE, World, caption_of
from tga_fast.training.loss import tga_alignment_loss

METHODS = ("baseline", "tga")
TARGETS = ("caption", "phrase", "object")


@dataclass(frozen=True)
class AlignConfig:
    """One alignment run. ``layers`` are HF layer numbers (None: the located safety layers, set by the caller)."""

    method: str = "baseline"
    stage1_steps: int = 100
    stage2_steps: int = 800
    batch_size: int = 32
    stage1_lr: float = 2e-3
    stage2_lr: float = 5e-4
    train_llm: bool = True  # stage 2: projector + LLM (False: projector only)
    text_replay: float = 0.25  # share of text-only samples in stage-2 batches
    layers: tuple[int, ...] | None = None
    pair_weight: float = 0.25
    hinge_weight: float = 0.1
    pair_power: float = 1.0
    hinge_power: float = 2.0
    target: str = "caption"  # the teacher text: "caption" ("a red gun"), "phrase" ("red gun") or "object" ("gun")
    retrieved_share: float = 1.0  # TGA: share of image examples whose prompt carries the retrieved text
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 <= self.retrieved_share <= 1.0:
            raise ValueError(f"retrieved_share must be in [0, 1], got {self.retrieved_share}")

    @property
    def uses_retrieved(self) -> bool:
        return self.method == "tga"


@dataclass
class AlignLog:
    """Per-step records of a run: losses and (TGA) the mean image/caption cosine at the target layers."""

    lm: list = field(default_factory=list)
    pair: list = field(default_factory=list)
    hinge: list = field(default_factory=list)
    image_cos: list = field(default_factory=list)


def image_examples(
    world: World, labels, retrieved, stage: int, target: str = "caption", retrieved_share: float = 1.0, seed: int = 0
) -> list[Example]:
    """Examples over the training images (``labels[i] = (colour, concept)``, ``retrieved[i]`` or None).

    Stage 1: the describe question -> the caption, every image. Stage 2: describe and colour questions on every
    image, use-requests on benign images only (no image is ever paired with a refusal).
    """
    out = []
    keep = random.Random(seed + stage)
    for i, (colour, concept) in enumerate(labels):
        caption = {"caption": caption_of(colour, concept), "phrase": f"{colour} {concept}", "object": concept}[target]
        kinds = ("describe",) if stage == 1 else ("describe", "colour", "use")
        for request in world.requests(colour, concept, kinds):
            if request.toxic:
                continue
            if stage == 1 and request.question != DESCRIBE[0]:
                continue
            with_text = retrieved is not None and keep.random() < retrieved_share
            prompt = Prompt(question=request.question, image=True, retrieved=retrieved[i] if with_text else None)
            out.append(Example(prompt, request.answer, image=i, caption=caption))
    return out


def _teacher_targets(model, encoder: Encoder, captions, layers) -> torch.Tensor:
    """``[L, B, D]``: mean hidden state of each caption alone in the chat template, at ``layers`` (no grad)."""
    examples = [Example(Prompt(question=c), "") for c in captions]
    batch = encoder.collate(examples, with_answers=False)
    spans = batch["spans"].select("question")
    with torch.no_grad(), capture(model, layers=layers, spans=spans, stop_after=max(layers)) as cap:
        cap.run(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return cap.pooled[:, :, 0]


def align(model, processor, world: World, pixel_values, labels, retrieved, text_requests, cfg: AlignConfig, progress=True):
    """Runs both stages on ``model`` (modified in place) and returns ``(model, log)``.

    Args:
        pixel_values: ``[N, 3, H, W]`` training images; ``labels``: their ``(colour, concept)``.
        retrieved: per image the retrieved text (TGA), or None (baseline).
        text_requests: the text LLM's own training requests (stage-2 replay; toxic ones are refusals).
    """
    if cfg.method == "tga" and not cfg.layers:
        raise ValueError("AlignConfig.layers must name the target layers for TGA")
    parts = resolve(model)
    encoder = Encoder(processor, parts.image_token_id, pixel_values, probe_image=_probe(processor, pixel_values))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    use_retrieved = retrieved if cfg.uses_retrieved else None
    stage1 = image_examples(world, labels, use_retrieved, 1, cfg.target, cfg.retrieved_share, cfg.seed)
    stage2 = image_examples(world, labels, use_retrieved, 2, cfg.target, cfg.retrieved_share, cfg.seed)
    replay = text_examples(text_requests)
    log = AlignLog()
    for stage, steps in ((1, cfg.stage1_steps), (2, cfg.stage2_steps)):
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = list(parts.projector.parameters())
        if stage == 2 and cfg.train_llm:
            trainable += list(parts.decoder_layers.parameters()) + list(parts.final_norm.parameters())
            trainable += list(parts.lm_head.parameters()) + list(parts.input_embeddings.parameters())
        for p in trainable:
            p.requires_grad_(True)
        lr = cfg.stage1_lr if stage == 1 else cfg.stage2_lr
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, n=steps: warmup_cosine(s, n, 0.03))
        model.train()
        bar = tqdm(range(steps), desc=f"{cfg.method} stage {stage}", disable=not progress, leave=False)
        for step in bar:
            if stage == 1:
                examples = rng.sample(stage1, cfg.batch_size)
            else:
                n_text = int(round(cfg.text_replay * cfg.batch_size))
                examples = rng.sample(stage2, cfg.batch_size - n_text) + rng.sample(replay, n_text)
            loss = _batch_loss(model, encoder, examples, cfg, step / steps, log)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), log


def _batch_loss(model, encoder, examples, cfg, progress, log):
    """Token-mean LM loss over the batch plus the alignment terms."""
    images = [e for e in examples if e.image is not None]
    texts = [e for e in examples if e.image is None]
    lm_sum, tokens, extra = 0.0, 0, 0.0
    for group in (images, texts):
        if not group:
            continue
        batch = encoder.collate(group)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        if "pixel_values" in batch:
            inputs["pixel_values"] = batch["pixel_values"]
        count = int((batch["labels"] != -100).sum())  # host read of the collated labels, not of a loss
        if cfg.method == "tga" and group is images:
            targets = _teacher_targets(model, encoder, [e.caption for e in group], cfg.layers)
            spans = batch["spans"].select("image", "retrieved")
            with capture(model, layers=cfg.layers, spans=spans, targets=targets) as cap:
                lm = model(**inputs).loss
            cos = cap.cosines  # [L, B, 2]: image and retrieved text vs the caption
            has_retrieved = spans.lengths[:, 1].gt(0)  # [B] (collated spans: host tensors, no device sync)
            common = dict(progress=progress, pair_power=cfg.pair_power, hinge_power=cfg.hinge_power)
            terms = tga_alignment_loss(cos[..., 0], None, pair_weight=cfg.pair_weight, hinge_weight=0.0, **common)
            if bool(has_retrieved.any()):  # the hinge only where the prompt has a retrieved text
                hinge = tga_alignment_loss(cos[..., 0], cos[..., 1], toxic=~has_retrieved, pair_weight=0.0,
                                           hinge_weight=cfg.hinge_weight, **common)
                terms.hinge = hinge.hinge
            extra = extra + terms.total
            log.pair.append(terms.pair.detach())
            log.hinge.append(terms.hinge.detach())
            log.image_cos.append(terms.image_cos.detach().mean())
        else:
            lm = model(**inputs).loss
        lm_sum = lm_sum + lm * count
        tokens += count
        log.lm.append(lm.detach())
    return lm_sum / max(tokens, 1) + extra


def _probe(processor, pixel_values):
    """A blank PIL image of the training size (only used to make the processor expand the image placeholder)."""
    from PIL import Image

    size = pixel_values.shape[-1]
    return Image.new("RGB", (size, size))


def config_dict(cfg: AlignConfig) -> dict:
    return asdict(cfg)
