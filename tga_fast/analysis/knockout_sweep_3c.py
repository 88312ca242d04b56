"""Information-flow knockout in windows of layers (METHOD.md 3 C).

For windows of ``window`` decoder blocks ([1, 5], [6, 10], ... in 1-based block numbers: block k produces
``hidden_states[k]``), generate answers to the toxic requests as text while, inside the window, every later
position's attention to the toxic tokens' keys is knocked out (:func:`tga_fast.models.knockout`; the toxic tokens
still see themselves and what precedes them), and measure the DSR. The paper's claim: DSR falls sharply only
when the window covers the safety layers. The released code only skipped whole layers; that variant runs too
(:func:`tga_fast.models.skip_layers`), and the DSR without any intervention is the baseline.

    result = knockout_sweep(model, processor, samples, window=5)
    result.knockout[i]["rate"], result.skip[i]["rate"], result.baseline["rate"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tga_fast.analysis.options import JudgeOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, block_windows, outcome_rows

__all__ = ["KnockoutSweepOptions", "KnockoutSweepResult", "knockout_sweep"]

VARIANTS = ("knockout", "skip")


@dataclass
class KnockoutSweepResult(AnalysisResult):
    """DSR per window of decoder blocks for both variants, and without intervention.

    Attributes:
        windows: ``[[first, last], ...]`` decoder blocks (1-based, inclusive).
        baseline: the DSR without intervention, ``{"refused", "total", "rate", "low", "high"}`` (Wilson 95%).
        knockout, skip: one such dict per window (empty when the variant was not run).
        scenes: ``{"baseline": {scene: rate}, "knockout": [{scene: rate} per window], "skip": [...]}``.
        samples: per sample ``id``, ``scene``, ``prompt`` (rendered), and ``baseline`` / ``knockout`` / ``skip``
            outcomes ``{"response", "verdict", "score"}`` (lists per window for the variants).
        skipped: samples left out, with the reason.
        settings: how the run was made (judge, generation length, ...).
    """

    kind = "knockout_sweep"

    windows: list
    baseline: dict
    knockout: list
    skip: list
    scenes: dict
    samples: list
    skipped: list
    settings: dict

    def figure(self):
        from tga_fast.analysis.plots import plot_knockout_sweep

        return plot_knockout_sweep(self)


def knockout_sweep(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    window: int = 5,
    variants: Sequence[str] = VARIANTS,
    judge=None,
    max_new_tokens: int = 64,
    generation_kwargs: dict | None = None,
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
) -> KnockoutSweepResult:
    """DSR of the toxic text requests per window of knocked-out (or skipped) decoder blocks.

    Args:
        samples: ``EvalSample`` s; benign controls and samples that mark no toxic word are skipped.
        window: decoder blocks per window.
        variants: ``"knockout"`` (attention to the toxic tokens blocked), ``"skip"`` (whole blocks skipped).
        judge: as in :func:`tga_fast.evaluation.dsr.evaluate_dsr` (default: the GCG keyword judge; a
            ``LogitJudge`` gives the generation-free variant).
        max_new_tokens, generation_kwargs: generation settings (greedy by default).

    Runs ``1 + len(variants) * len(windows)`` evaluations of every sample.
    """
    from tqdm.auto import tqdm

    from tga_fast.analysis.batching import prepare, run_settings
    from tga_fast.errors import require_positive
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.evaluation.judges import KeywordJudge
    from tga_fast.models import knockout, skip_layers

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {list(variants)}")
    require_positive(max_new_tokens, "max_new_tokens")
    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_marks=True)
    windows = block_windows(parts.num_layers, window)
    judge = KeywordJudge() if judge is None else judge
    common = dict(condition="text", with_retrieved=with_retrieved, system_prompt=system_prompt, judge=judge,
                  batch_size=batch_size, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs,
                  progress=progress)

    def intervention(variant: str, blocks: tuple[int, ...]):
        if variant == "knockout":
            return lambda encoded: knockout(model, blocks, encoded.marked)
        return lambda encoded: skip_layers(model, blocks)

    runs = [("baseline", None)] + [(v, w) for v in VARIANTS if v in variants for w in windows]
    outcomes: dict[str, list] = {v: [] for v in VARIANTS}
    scenes: dict = {v: [] for v in VARIANTS}
    per_sample = [{"id": str(s.id), "scene": s.scene, **{v: [] for v in VARIANTS}} for s in kept]
    baseline = None
    with tqdm(total=len(runs), desc="knockout sweep", unit="run", disable=not progress) as bar:
        for variant, bounds in runs:
            if bounds is None:
                dsr = evaluate_dsr(model, processor, kept, **common)
            else:
                blocks = tuple(range(bounds[0], bounds[1] + 1))
                dsr = evaluate_dsr(model, processor, kept, intervention=intervention(variant, blocks), **common)
            overall, by_scene, records = outcome_rows(dsr)
            if bounds is None:
                baseline, scenes["baseline"] = overall, by_scene
                for row, record, raw in zip(per_sample, records, dsr.records):
                    row["prompt"], row["baseline"] = raw.prompt, record
            else:
                outcomes[variant].append(overall)
                scenes[variant].append(by_scene)
                for row, record in zip(per_sample, records):
                    row[variant].append(record)
            bar.set_postfix_str(f"{variant} {bounds or ''} DSR {overall['rate']:.2f}")
            bar.update()
    return KnockoutSweepResult(
        windows=windows,
        baseline=baseline,
        knockout=outcomes["knockout"],
        skip=outcomes["skip"],
        scenes=scenes,
        samples=per_sample,
        skipped=skipped,
        settings=run_settings(model, batch_size, window=window, variants=list(variants), judge=repr(judge),
                              condition="text", with_retrieved=with_retrieved, system_prompt=system_prompt,
                              max_new_tokens=max_new_tokens, generation_kwargs=dict(generation_kwargs or {})),
    )


@dataclass(frozen=True)
class KnockoutSweepOptions(JudgeOptions):
    """The options of :func:`knockout_sweep` beyond the common ones."""

    window: int = option(5, "decoder blocks per window", positive=True)
    variants: tuple = option(VARIANTS, "knockout = attention to the toxic tokens blocked; skip = whole blocks "
                             "skipped", choices=VARIANTS, many=True)
    max_new_tokens: int = option(64, "generation length", positive=True)


register("knockout_sweep", knockout_sweep, KnockoutSweepResult, KnockoutSweepOptions,
         "3C: DSR on toxic text when attention to the toxic words (or whole blocks) is cut, window by window")
