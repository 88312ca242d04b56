"""Hidden-state steering in windows of layers (METHOD.md 3 E), with its two controls and paired tests.

For each toxic image: the same request as text (the image's text in its place, no image) is run once, and its
text tokens' mean hidden state at every HF layer l is kept (``capture``). Then, for each window of layers
([0, 4], [5, 9], ... in HF numbering: layer k is ``hidden_states[k]``, what block k+1 reads; layer 0 is the
decoder's input embeddings), that text state of layer l (times ``scale``) is added to every image token's hidden
state at each layer l of the window while the model answers the image request (:func:`tga_fast.models.steer`),
and the DSR is measured. The paper's claim: DSR on toxic images rises when the window covers the safety layers.
(Layer N, the final norm's output, feeds no later block: steering there changes only the image positions' logits,
never the answer.)

Controls, added the same way in the same windows (:mod:`tga_fast.analysis.sweep_controls`):

- ``random``: a random vector of the same norm as the sample's (scaled) text state at each layer, along one
  seeded Gaussian direction per sample: does any push of that size raise the DSR?
- ``mismatched``: the (scaled) text state of another sample, the next one in the run with another cluster label:
  does any text's state do it, or the request's own meaning?

Per window, steered is compared with each control and with the baseline on the same samples (exact McNemar, Holm
over the windows per comparison; paired cluster-bootstrap intervals of the differences); every rate's interval is
clustered by ``cluster_by``.

    result = steering_sweep(model, processor, samples, window=5)
    result.steered[i]["rate"], result.random[i]["rate"], result.baseline["rate"], result.verdict
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.analysis.options import JudgeOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, layer_windows, record_row

__all__ = ["SteeringSweepOptions", "SteeringSweepResult", "steering_sweep"]

CONTROLS = ("random", "mismatched")
CONDITIONS = ("steered", *CONTROLS)  # the runs of every window, in order
# Each comparison as (name, higher, lower): DSR(higher) - DSR(lower) > 0 is the claimed effect.
COMPARISONS = (
    ("steered_vs_random", "steered", "random"),
    ("steered_vs_mismatched", "steered", "mismatched"),
    ("steered_vs_baseline", "steered", "baseline"),
    ("random_vs_baseline", "random", "baseline"),
    ("mismatched_vs_baseline", "mismatched", "baseline"),
)


@dataclass
class SteeringSweepResult(AnalysisResult):
    """DSR on toxic images per window of steered layers, with each control, unsteered, the paired tests, a verdict.

    Attributes:
        windows: ``[[first, last], ...]`` HF layers (inclusive), from 0.
        baseline: the DSR without steering, ``{"refused", "total", "rate", "low", "high", "method", "clusters"}``
            (95% interval clustered by ``settings["cluster_by"]``).
        steered: one such dict per window: the sample's own text state added.
        random, mismatched: one such dict per window for each control (empty when it was not run).
        comparisons: per window ``{name: {"difference_is", "difference", "mcnemar", "p_holm", "significant"}}`` for
            the names of :data:`COMPARISONS` whose conditions ran: ``steered_vs_random`` (difference = DSR(steered)
            - DSR(random)), ``steered_vs_mismatched``, ``steered_vs_baseline``, and each control against the
            baseline. Positive = the first raises the DSR. McNemar is exact and two-sided, Holm-adjusted over the
            windows within each name.
        significant_windows: the windows where steering raises the DSR significantly above the baseline and above
            every control that ran (Holm-adjusted p <= 0.05 in each, in that direction).
        verdict: one sentence saying where (or that nowhere) steering raises the DSR beyond the controls.
        scenes: ``{"baseline": {scene: rate}, "steered" / "random" / "mismatched": [{scene: rate} per window]}``.
        scale: the factor on the added text states (and so on the controls).
        samples: per sample ``id``, ``scene``, ``cluster``, ``prompt`` (rendered), ``mismatched_with`` (the id whose
            text state is its mismatched control), ``baseline`` and ``steered`` / ``random`` / ``mismatched`` (per
            window) outcomes ``{"response", "verdict", "score"}``.
        skipped: samples left out, with the reason.
        settings: how the run was made (judge, controls, seed, cluster_by, ...).
    """

    kind = "steering_sweep"

    windows: list
    baseline: dict
    steered: list
    random: list
    mismatched: list
    comparisons: list
    significant_windows: list
    verdict: str
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


def control_vectors(model, processor, batch_samples, partners, layers, options, *, scale: float,
                    seed: int) -> dict[str, torch.Tensor]:
    """The vectors each condition adds at ``layers`` (``[L, b, D]`` each): ``steered`` = the samples' own text
    states times ``scale``, ``random`` = :func:`~tga_fast.analysis.sweep_controls.random_like` of those,
    ``mismatched`` = the text states of ``partners`` (one sample per batch sample; none: no ``mismatched``) times
    ``scale``. Both text sets run in one forward."""
    from tga_fast.analysis.sweep_controls import random_like

    states = _text_states(model, processor, [*batch_samples, *partners], layers, options) * scale  # [L, 2b, D]
    own = states[:, : len(batch_samples)]
    vectors = {"steered": own, "random": random_like(own, [str(s.id) for s in batch_samples], seed)}
    if partners:
        vectors["mismatched"] = states[:, len(batch_samples):]
    return vectors


def steering_sweep(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    window: int = 5,
    scale: float = 1.0,
    controls: Sequence[str] = CONTROLS,
    judge=None,
    max_new_tokens: int = 64,
    generation_kwargs: dict | None = None,
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
    seed: int = 0,
) -> SteeringSweepResult:
    """DSR of the toxic image requests when the text's pooled states (or a control vector) are added to the image
    tokens in each window of layers.

    Args:
        samples: ``EvalSample`` s with images; benign controls are skipped.
        window: HF layers per window (windows cover 0..N).
        scale: factor on the added text state.
        controls: a subset of ``"random"`` (a vector of the text state's norm) and ``"mismatched"`` (another
            sample's text state); ``()`` runs steering alone.
        judge, max_new_tokens, generation_kwargs: as in :func:`tga_fast.evaluation.dsr.evaluate_dsr`.
        cluster_by: the sample field every interval is clustered by, and the label a mismatched text must differ in.
        seed: seeds the random vectors (with each sample's id) and the bootstraps.

    Each batch runs one text forward (the vectors: its own texts and its partners') and
    ``1 + (1 + len(controls)) * len(windows)`` evaluations. A mismatched partner is chosen over the whole run
    (:func:`~tga_fast.analysis.sweep_controls.run_mismatch_partners`), so a batch of one has one too.
    """
    from tga_fast.analysis.batching import Batches, prepare, run_settings
    from tga_fast.analysis.sweep_controls import run_mismatch_partners, window_comparisons, window_rates
    from tga_fast.errors import require_positive
    from tga_fast.evaluation.data import cluster_label
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.evaluation.judges import KeywordJudge
    from tga_fast.models import steer

    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"controls must be a subset of {CONTROLS}, got {list(controls)}")
    require_positive(max_new_tokens, "max_new_tokens")
    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_image=True)
    if parts.image_token_id is None:
        raise ValueError(f"{parts.model_type} has no image token: steering_sweep needs a vision-language model")
    if "mismatched" in controls and len(kept) < 2:
        raise ValueError("the mismatched control needs at least two samples (one text state to borrow); "
                         "run with controls=(\"random\",) on a single sample")
    windows = layer_windows(parts.num_layers, window, first=0)
    layers = list(range(0, parts.num_layers + 1))  # the vectors of layer k are row k
    conditions = [c for c in CONDITIONS if c == "steered" or c in controls]
    judge = KeywordJudge() if judge is None else judge
    options = dict(with_retrieved=with_retrieved, system_prompt=system_prompt)
    common = dict(condition="image", judge=judge, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs,
                  progress=False, cluster_by=cluster_by, **options)
    labels = [cluster_label(s, cluster_by) for s in kept]
    partner_of = {str(s.id): (kept[j] if j is not None else s) for s, j in zip(kept, run_mismatch_partners(labels))}

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
        partners = [partner_of[str(s.id)] for s in batch_samples] if "mismatched" in controls else []
        vectors = control_vectors(model, processor, batch_samples, partners, layers, options, scale=scale,
                                  seed=seed)  # {condition: [N + 1, b, D]}
        plain = evaluate_dsr(model, processor, batch_samples, batch_size=len(batch_samples), **common)
        rows = [{"id": str(s.id), "scene": s.scene, "cluster": r.cluster, "prompt": r.prompt,
                 "mismatched_with": str(partner_of[str(s.id)].id) if partners else None, "baseline": record_row(r),
                 **{c: [] for c in CONDITIONS}}
                for s, r in zip(batch_samples, records(plain, batch_samples))]
        for first, last in windows:
            window_layers = list(range(first, last + 1))
            for condition in conditions:
                added = vectors[condition][window_layers]  # [w, b, D]
                dsr = evaluate_dsr(model, processor, batch_samples, batch_size=len(batch_samples),
                                   intervention=steering(window_layers, added), **common)
                for row, r in zip(rows, records(dsr, batch_samples)):
                    row[condition].append(record_row(r))
        per_sample.extend(rows)

    clusters = [row["cluster"] for row in per_sample]
    rates, scenes = window_rates(per_sample, CONDITIONS, len(windows), clusters, cluster_by)
    verdicts = {c: [[row[c][i]["verdict"] for row in per_sample] for i in range(len(windows))] for c in conditions}
    verdicts["baseline"] = [row["baseline"]["verdict"] for row in per_sample]
    comparisons = window_comparisons(verdicts, COMPARISONS, len(windows), clusters, cluster_by, seed)
    significant = [i for i, window_tests in enumerate(comparisons)
                   if all(window_tests[f"steered_vs_{other}"]["significant"] for other in [*controls, "baseline"])]
    return SteeringSweepResult(
        windows=windows,
        baseline=rates["baseline"],
        steered=rates["steered"],
        random=rates["random"],
        mismatched=rates["mismatched"],
        comparisons=comparisons,
        significant_windows=[windows[i] for i in significant],
        verdict=steering_verdict(windows, significant, rates, controls),
        scenes=scenes,
        scale=float(scale),
        samples=per_sample,
        skipped=skipped + batches.failed,
        settings=run_settings(model, batch_size, window=window, controls=list(controls), judge=repr(judge),
                              condition="image", with_retrieved=with_retrieved, system_prompt=system_prompt,
                              max_new_tokens=max_new_tokens, generation_kwargs=dict(generation_kwargs or {}),
                              cluster_by=cluster_by, seed=seed),
    )


def steering_verdict(windows: list, significant: list[int], rates: dict, controls: Sequence[str]) -> str:
    """One sentence: the windows where adding the text's state raises the DSR beyond the controls (or above the
    unsteered DSR, without controls), with the DSRs, or "in no window"."""
    from tga_fast.analysis.sweep_controls import ALPHA, window_verdict

    beyond = {"random": "a random vector of the same norm", "mismatched": "a mismatched text's state"}
    claim = "adding the text's state to the image tokens raises DSR beyond " + (
        " and ".join(beyond[c] for c in CONTROLS if c in controls) if controls else "no steering")
    tests = (f"exact McNemar, Holm over {len(windows)} windows, p <= {ALPHA:g}, clustered interval above 0"
             + (", against each control and the baseline" if controls else ""))
    return window_verdict(claim, tests, windows, significant, rates, "steered", [c for c in CONTROLS if c in controls],
                          unit="layer", where="only at", without="steering")


@dataclass(frozen=True)
class SteeringSweepOptions(JudgeOptions):
    """The options of :func:`steering_sweep` beyond the common ones."""

    window: int = option(5, "HF layers per window", positive=True)
    scale: float = option(1.0, "factor on the added text states")
    controls: tuple = option(CONTROLS, "random = a random vector of the text state's norm; mismatched = another "
                             "sample's text state", choices=CONTROLS, many=True)
    max_new_tokens: int = option(64, "generation length", positive=True)
    seed: int = option(0, "seed of the random vectors (with each sample's id) and of the bootstraps")

    def needs_images(self) -> bool:
        return True


register("steering_sweep", steering_sweep, SteeringSweepResult, SteeringSweepOptions,
         "3E: DSR on toxic images when the text's states are added to the image tokens, window by window, beside "
         "a random vector of that norm and another text's states")
