"""Hidden-state steering in windows of layers (METHOD.md 3 E).

For each toxic image: the same request as text (the image's text in its place, no image) is run once, and its
text tokens' mean hidden state at every HF layer l is kept (``capture``). Then, for each window of layers
([1, 5], [6, 10], ... in HF numbering: layer k is ``hidden_states[k]``, what block k+1 reads), that text state of
layer l (times ``scale``) is added to every image token's hidden state at each layer l of the window while the
model answers the image request (:func:`tga_fast.models.steer`), and the DSR is measured. The paper's claim:
DSR on toxic images rises when the window covers the safety layers. (Layer N, the final norm's output, feeds
no later block: steering there changes only the image positions' logits, never the answer.)

    result = steering_sweep(model, processor, samples, window=5)
    result.steered[i]["rate"], result.baseline["rate"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.analysis.options import JudgeOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, layer_windows, record_row
from tga_fast.evaluation.rates import rate_dict

__all__ = ["SteeringSweepOptions", "SteeringSweepResult", "steering_sweep"]


@dataclass
class SteeringSweepResult(AnalysisResult):
    """DSR on toxic images per window of steered layers, and unsteered.

    Attributes:
        windows: ``[[first, last], ...]`` HF layers (inclusive).
        baseline: the DSR without steering, ``{"refused", "total", "rate", "low", "high"}`` (Wilson 95%).
        steered: one such dict per window.
        scenes: ``{"baseline": {scene: rate}, "steered": [{scene: rate} per window]}``.
        scale: the factor on the added text states.
        samples: per sample ``id``, ``scene``, ``prompt`` (rendered), ``baseline`` and ``steered`` (per window)
            outcomes ``{"response", "verdict", "score"}``.
        skipped: samples left out, with the reason.
        settings: how the run was made.
    """

    kind = "steering_sweep"

    windows: list
    baseline: dict
    steered: list
    scenes: dict
    scale: float
    samples: list
    skipped: list
    settings: dict

    def figure(self):
        from tga_fast.analysis.plots import plot_steering_sweep

        return plot_steering_sweep(self)


def _text_states(model, processor, batch_samples, layers, options) -> torch.Tensor:
    """``[L, b, D]``: the mean hidden state of each sample's text tokens (text prompt, no image) at ``layers``."""
    from tga_fast.analysis.batching import encode
    from tga_fast.models import capture

    encoded = encode(model, processor, [s.to_prompt("text", **options) for s in batch_samples])
    with torch.no_grad(), capture(model, layers, encoded.spans.select("text")) as cap:
        model(**encoded.batch, use_cache=False, logits_to_keep=1)
    return cap.pooled[:, :, 0]


def steering_sweep(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    window: int = 5,
    scale: float = 1.0,
    judge=None,
    max_new_tokens: int = 64,
    generation_kwargs: dict | None = None,
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
) -> SteeringSweepResult:
    """DSR of the toxic image requests when the text's pooled states are added to the image tokens in each
    window of layers.

    Args:
        samples: ``EvalSample`` s with images; benign controls are skipped.
        window: HF layers per window (windows cover 1..N).
        scale: factor on the added text state.
        judge, max_new_tokens, generation_kwargs: as in :func:`tga_fast.evaluation.dsr.evaluate_dsr`.

    Each batch runs one text forward (the steering vectors) and ``1 + len(windows)`` evaluations.
    """
    from tga_fast.analysis.batching import Batches, prepare, run_settings
    from tga_fast.errors import require_positive
    from tga_fast.evaluation.dsr import dsr_from_verdicts, evaluate_dsr
    from tga_fast.evaluation.judges import KeywordJudge
    from tga_fast.models import steer

    require_positive(max_new_tokens, "max_new_tokens")
    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_image=True)
    if parts.image_token_id is None:
        raise ValueError(f"{parts.model_type} has no image token: steering_sweep needs a vision-language model")
    windows = layer_windows(parts.num_layers, window)
    layers = list(range(1, parts.num_layers + 1))
    judge = KeywordJudge() if judge is None else judge
    options = dict(with_retrieved=with_retrieved, system_prompt=system_prompt)
    common = dict(condition="image", judge=judge, max_new_tokens=max_new_tokens,
                  generation_kwargs=generation_kwargs, progress=False, **options)

    def steering(window_layers: list[int], vectors: torch.Tensor):
        return lambda encoded: steer(model, window_layers, encoded.spans.select("image"), vectors, mode="add")

    def records(dsr, batch_samples):
        """The records of one batch's DSR, in the batch's order (evaluate_dsr decodes the images again)."""
        if [r.id for r in dsr.records] != [str(s.id) for s in batch_samples]:
            raise RuntimeError(f"images of {[s['id'] for s in dsr.skipped]} stopped decoding during the sweep")
        return dsr.records

    per_sample = []
    batches = Batches(kept, batch_size, desc="steering sweep", progress=progress, images=True)
    for batch_samples, _ in batches:
        states = _text_states(model, processor, batch_samples, layers, options) * scale  # [N, b, D]
        plain = evaluate_dsr(model, processor, batch_samples, batch_size=len(batch_samples), **common)
        rows = [{"id": str(s.id), "scene": s.scene, "prompt": r.prompt,
                 "baseline": record_row(r),
                 "steered": []} for s, r in zip(batch_samples, records(plain, batch_samples))]
        for first, last in windows:
            window_layers = list(range(first, last + 1))
            vectors = states[[k - 1 for k in window_layers]]  # [w, b, D]
            dsr = evaluate_dsr(model, processor, batch_samples, batch_size=len(batch_samples),
                               intervention=steering(window_layers, vectors), **common)
            for row, r in zip(rows, records(dsr, batch_samples)):
                row["steered"].append(record_row(r))
        per_sample.extend(rows)

    sample_scenes = [row["scene"] for row in per_sample]
    baseline, baseline_scenes = dsr_from_verdicts([row["baseline"]["verdict"] for row in per_sample], sample_scenes)
    steered, steered_scenes = [], []
    for i in range(len(windows)):
        overall, by_scene = dsr_from_verdicts([row["steered"][i]["verdict"] for row in per_sample], sample_scenes)
        steered.append(rate_dict(overall))
        steered_scenes.append({scene: rate_dict(rate) for scene, rate in by_scene.items()})
    return SteeringSweepResult(
        windows=windows,
        baseline=rate_dict(baseline),
        steered=steered,
        scenes={"baseline": {scene: rate_dict(rate) for scene, rate in baseline_scenes.items()},
                "steered": steered_scenes},
        scale=float(scale),
        samples=per_sample,
        skipped=skipped + batches.failed,
        settings=run_settings(model, batch_size, window=window, judge=repr(judge), condition="image",
                              with_retrieved=with_retrieved, system_prompt=system_prompt,
                              max_new_tokens=max_new_tokens, generation_kwargs=dict(generation_kwargs or {})),
    )


@dataclass(frozen=True)
class SteeringSweepOptions(JudgeOptions):
    """The options of :func:`steering_sweep` beyond the common ones."""

    window: int = option(5, "HF layers per window", positive=True)
    scale: float = option(1.0, "factor on the added text states")
    max_new_tokens: int = option(64, "generation length", positive=True)

    def needs_images(self) -> bool:
        return True


register("steering_sweep", steering_sweep, SteeringSweepResult, SteeringSweepOptions,
         "3E: DSR on toxic images when the text's states are added to the image tokens, window by window")
