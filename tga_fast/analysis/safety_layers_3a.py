"""Safety activation layers by the logit lens (METHOD.md 3 A).

For a toxic request given as text, at the last prompt position n and every HF layer k (0 = embeddings, N = the
final norm's output), p^k = softmax(lm_head(final_norm(h_n^k))), the final norm not applied twice at k = N. With R
the refusal-start token ids of the tokenizer:

    start = the first k >= 1 such that a token of R is among the top-5 of p^k - p^{k-1}
    end   = the last k such that argmax p^k is in R

Not found is -1, counted apart and never averaged in. The "safety layers" are [min start, max end] over samples.
``condition="image"`` runs the same lens on the toxic images, to compare.

    result = safety_layers(model, processor, load_eval_set("eval.jsonl").samples)
    result.safety_range, result.start_not_found_rate
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.analysis.options import AnalysisOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std
from tga_fast.models.lens import logit_lens
from tga_fast.models.processors import tokenizer_of

__all__ = ["SafetyLayersOptions", "SafetyLayersResult", "locate_safety_layers", "safety_layers",
           "summarize_safety_layers"]


def locate_safety_layers(
    lens: torch.Tensor, refusal_ids: Sequence[int], top_k: int = 5, *, from_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The start and end rules of METHOD.md 3 A over a logit lens.

    Args:
        lens: ``[K+1, B, V]`` logits (``from_logits=True``) or probabilities (``from_logits=False``) at HF layers
            0..K, in order.
        refusal_ids: the refusal-start token ids R.
        top_k: how many of the largest increases ``p^k - p^{k-1}`` the start rule looks at.

    Returns:
        ``(start, end)``: int64 ``[B]`` HF layer numbers, -1 where the rule finds no layer.
    """
    if lens.dim() != 3 or lens.shape[0] < 2:
        raise ValueError(f"lens must be [K+1, B, V] with K >= 1, got {tuple(lens.shape)}")
    vocab = lens.shape[-1]
    ids = torch.as_tensor(list(refusal_ids), dtype=torch.int64)
    if ids.numel() == 0:
        raise ValueError("refusal_ids is empty")
    if bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"refusal_ids {ids.tolist()} fall outside the vocabulary of size {vocab}")
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in 1..{vocab}, got {top_k}")
    probs = lens.float().softmax(dim=-1) if from_logits else lens.float()
    is_refusal = torch.zeros(vocab, dtype=torch.bool, device=lens.device)
    is_refusal[ids.to(lens.device)] = True

    increase = probs[1:] - probs[:-1]  # [K, B, V]; row k-1 is layer k
    rising = is_refusal[increase.topk(top_k, dim=-1).indices].any(dim=-1)  # [K, B]
    start = torch.where(rising.any(dim=0), rising.int().argmax(dim=0) + 1, -1)

    on_top = is_refusal[probs.argmax(dim=-1)]  # [K+1, B]
    last = on_top.shape[0] - 1 - on_top.flip(0).int().argmax(dim=0)
    end = torch.where(on_top.any(dim=0), last, -1)
    return start.to(torch.int64), end.to(torch.int64)


@dataclass
class SafetyLayersResult(AnalysisResult):
    """Per-layer refusal mass and per-sample start/end layers (HF numbering: 0 = embeddings, N = final norm).

    Attributes:
        layers: ``[0, 1, ..., N]``.
        refusal_mass_mean, refusal_mass_std: per layer, the probability the lens gives the refusal tokens at the
            last prompt position (over samples).
        safety_range: ``[min start, max end]`` over the samples where each was found; None if either never was.
        start_not_found, end_not_found: how many samples have no start (no end) layer; ``*_rate`` the share.
        refusal_ids, refusal_tokens: R and how each id decodes.
        samples: per sample ``id``, ``scene``, ``start``, ``end`` (-1: not found), ``refusal_mass`` per layer and
            ``top_tokens`` (the lens' argmax per layer, decoded).
        skipped: samples left out, with the reason.
        settings: how the run was made.
    """

    kind = "safety_layers"

    layers: list
    refusal_mass_mean: list
    refusal_mass_std: list
    safety_range: list | None
    start_not_found: int
    end_not_found: int
    start_not_found_rate: float
    end_not_found_rate: float
    refusal_ids: list
    refusal_tokens: list
    samples: list
    skipped: list
    settings: dict

    def figure(self):
        from tga_fast.analysis.plots import plot_safety_layers

        return plot_safety_layers(self)

    @property
    def starts(self) -> list[int]:
        return [s["start"] for s in self.samples]

    @property
    def ends(self) -> list[int]:
        return [s["end"] for s in self.samples]


def safety_layers(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    top_k: int = 5,
    refusal_ids: Sequence[int] | None = None,
    refusal_starts: Sequence[str] | None = None,
    condition: str = "text",
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
) -> SafetyLayersResult:
    """Runs the logit lens on every toxic sample (as text by default: ``to_prompt("text")``) and applies the layer
    rules.

    One forward per batch: ``capture`` keeps the last prompt position's state at each of the N+1 layers (no
    hidden-state sequence is kept), then one LM-head matmul gives the lens of every layer.

    Args:
        samples: ``EvalSample`` s; benign controls (``toxic=False``) are skipped.
        refusal_ids: R; default ``refusal_token_ids(tokenizer, refusal_starts or REFUSAL_STARTS)``.
        top_k: the start rule's top-k (5 in the paper).
        condition: ``"text"`` (the paper's setting) or ``"image"``, to see whether the same layers fire when the
            toxic content comes as an image.
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.evaluation.judges import REFUSAL_STARTS, refusal_token_ids
    from tga_fast.models import capture

    if condition not in ("text", "image"):
        raise ValueError(f"condition must be 'text' or 'image', got {condition!r}")
    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_image=condition == "image")
    tokenizer = tokenizer_of(processor)
    if refusal_ids is None:
        refusal_ids = refusal_token_ids(tokenizer, tuple(refusal_starts or REFUSAL_STARTS))
    refusal_ids = sorted({int(i) for i in refusal_ids})
    if not refusal_ids:
        raise ValueError("refusal_ids is empty")
    layers = list(range(parts.num_layers + 1))
    ids = torch.tensor(refusal_ids)
    per_sample = []
    batches = Batches(kept, batch_size, desc="safety layers", progress=progress, images=condition == "image")
    for batch_samples, images in batches:
        prompts = [s.to_prompt(condition, with_retrieved=with_retrieved, system_prompt=system_prompt)
                   for s in batch_samples]
        encoded = encode(model, processor, prompts, images)
        last = encoded.last_positions
        last_token = torch.stack([last, last + 1], dim=-1)[:, None, :]  # [b, 1, 2]: the last prompt position
        with torch.no_grad():
            with capture(model, layers, last_token) as cap:
                model(**encoded.batch, use_cache=False, logits_to_keep=1)
            probs = logit_lens(parts, cap.pooled[:, :, 0], layers).softmax(dim=-1)  # [N+1, b, V]
        start, end = locate_safety_layers(probs, refusal_ids, top_k, from_logits=False)
        # One device-to-host copy per batch, not one per sample and layer.
        mass = probs[..., ids.to(probs.device)].sum(dim=-1).T.tolist()  # [b][N+1]
        top = probs.argmax(dim=-1).T.tolist()  # [b][N+1]
        start, end = start.tolist(), end.tolist()
        for i, sample in enumerate(batch_samples):
            per_sample.append({
                "id": str(sample.id),
                "scene": sample.scene,
                "start": start[i],
                "end": end[i],
                "refusal_mass": mass[i],
                "top_tokens": [tokenizer.decode([t]) for t in top[i]],
            })
    return summarize_safety_layers(
        per_sample, layers, refusal_ids, [tokenizer.decode([i]) for i in refusal_ids], skipped + batches.failed,
        settings=run_settings(model, batch_size, top_k=top_k, condition=condition, with_retrieved=with_retrieved,
                              system_prompt=system_prompt),
    )


def summarize_safety_layers(per_sample: list[dict], layers: list[int], refusal_ids: list[int],
                            refusal_tokens: list[str], skipped: list[dict], settings: dict) -> SafetyLayersResult:
    """The result from per-sample rows: the range over found layers and the not-found counts kept apart."""
    starts = [s["start"] for s in per_sample]
    ends = [s["end"] for s in per_sample]
    found_starts = [s for s in starts if s >= 0]
    found_ends = [e for e in ends if e >= 0]
    safety_range = [min(found_starts), max(found_ends)] if found_starts and found_ends else None
    mean, std = mean_std([s["refusal_mass"] for s in per_sample])
    count = len(per_sample)
    return SafetyLayersResult(
        layers=list(layers),
        refusal_mass_mean=mean,
        refusal_mass_std=std,
        safety_range=safety_range,
        start_not_found=count - len(found_starts),
        end_not_found=count - len(found_ends),
        start_not_found_rate=(count - len(found_starts)) / count,
        end_not_found_rate=(count - len(found_ends)) / count,
        refusal_ids=list(refusal_ids),
        refusal_tokens=list(refusal_tokens),
        samples=per_sample,
        skipped=skipped,
        settings=settings,
    )


@dataclass(frozen=True)
class SafetyLayersOptions(AnalysisOptions):
    """The options of :func:`safety_layers` beyond the common ones."""

    condition: str = option("text", "the toxic content as text (the paper's setting) or as the image",
                            choices=("text", "image"))
    top_k: int = option(5, "how many of the largest per-layer increases the start rule looks at", positive=True)

    def needs_images(self) -> bool:
        return self.condition == "image"


register("safety_layers", safety_layers, SafetyLayersResult, SafetyLayersOptions,
         "3A: safety layers by the logit lens: where refusal tokens start to rise and stop ranking first")
