"""Information-flow knockout in windows of layers (METHOD.md 3 C), with its control and paired tests.

For windows of ``window`` decoder blocks ([1, 5], [6, 10], ... in 1-based block numbers: block k produces
``hidden_states[k]``), generate answers to the toxic requests as text while, inside the window, every later
position's attention to the toxic tokens' keys is knocked out (:func:`tga_fast.models.knockout`; the toxic tokens
still see themselves and what precedes them), and measure the DSR. The paper's claim: DSR falls sharply only
when the window covers the safety layers.

Variants, each run on the same samples in every window:

- ``knockout``: attention to the toxic tokens' keys blocked.
- ``control``: as many other tokens blocked in the same window by the same machinery: drawn at random (seeded per
  sample id) among the prompt's text and question tokens, never a toxic token, never the last prompt position
  (:func:`~tga_fast.analysis.sweep_controls.control_token_mask`). A knockout that lowers the DSR only as much as
  the control says that cutting any few tokens does it, not cutting the toxic ones.
- ``skip``: whole blocks skipped (:func:`tga_fast.models.skip_layers`), what the released code did.

The DSR without any intervention is the baseline. Per window, the knockout is compared with the control and with
the baseline on the same samples (exact McNemar, Holm over the windows; paired cluster-bootstrap intervals of the
differences); every rate's interval is clustered by ``cluster_by``.

    result = knockout_sweep(model, processor, samples, window=5)
    result.knockout[i]["rate"], result.control[i]["rate"], result.baseline["rate"], result.verdict
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tga_fast.analysis.options import JudgeOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, block_windows, record_row

__all__ = ["KnockoutSweepOptions", "KnockoutSweepResult", "knockout_sweep"]

VARIANTS = ("knockout", "control", "skip")
# Each comparison as (name, higher, lower): DSR(higher) - DSR(lower) > 0 is the claimed effect (the knockout
# lowers the DSR more than the control does; an intervention lowers it below no intervention).
COMPARISONS = (
    ("knockout_vs_control", "control", "knockout"),
    ("knockout_vs_baseline", "baseline", "knockout"),
    ("control_vs_baseline", "baseline", "control"),
    ("skip_vs_baseline", "baseline", "skip"),
)


@dataclass
class KnockoutSweepResult(AnalysisResult):
    """DSR per window of decoder blocks for each variant and without intervention, the paired tests, a verdict.

    Attributes:
        windows: ``[[first, last], ...]`` decoder blocks (1-based, inclusive).
        baseline: the DSR without intervention, ``{"refused", "total", "rate", "low", "high", "method",
            "clusters"}`` (95% interval clustered by ``settings["cluster_by"]``).
        knockout, control, skip: one such dict per window (empty when the variant was not run).
        comparisons: per window ``{name: {"difference_is", "difference", "mcnemar", "p_holm", "significant"}}`` for
            the names of :data:`COMPARISONS` whose variants ran: ``knockout_vs_control`` (difference = DSR(control) -
            DSR(knockout)), ``knockout_vs_baseline`` / ``control_vs_baseline`` / ``skip_vs_baseline`` (DSR(baseline)
            - DSR(variant)). Positive = the intervention lowers the DSR (more than the control). McNemar is exact and
            two-sided, Holm-adjusted over the windows within each name.
        significant_windows: the windows where the knockout lowers the DSR significantly below the control (when it
            ran) and below the baseline (Holm-adjusted p <= 0.05 in both, in that direction).
        verdict: one sentence saying where (or that nowhere) the knockout lowers the DSR beyond the control.
        scenes: ``{"baseline": {scene: rate}, "knockout" / "control" / "skip": [{scene: rate} per window]}``.
        samples: per sample ``id``, ``scene``, ``cluster``, ``prompt`` (rendered), ``toxic_tokens`` (how many),
            ``control_positions`` (the control tokens, counted from the prompt's first token), and ``baseline`` /
            ``knockout`` / ``control`` / ``skip`` outcomes ``{"response", "verdict", "score"}`` (lists per window
            for the variants).
        skipped: samples left out, with the reason.
        settings: how the run was made (judge, generation length, seed, cluster_by, ...).
    """

    kind = "knockout_sweep"

    windows: list
    baseline: dict
    knockout: list
    control: list
    skip: list
    comparisons: list
    significant_windows: list
    verdict: str
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
    seed: int = 0,
) -> KnockoutSweepResult:
    """DSR of the toxic text requests per window of knocked-out (or skipped) decoder blocks, beside the control.

    Args:
        samples: ``EvalSample`` s; benign controls and samples that mark no toxic word are skipped.
        window: decoder blocks per window.
        variants: a non-empty subset of ``"knockout"`` (attention to the toxic tokens blocked), ``"control"`` (to as
            many random non-toxic user tokens), ``"skip"`` (whole blocks skipped).
        judge: as in :func:`tga_fast.evaluation.dsr.evaluate_dsr` (default: the GCG keyword judge; a
            ``LogitJudge`` gives the generation-free variant).
        max_new_tokens, generation_kwargs: generation settings (greedy by default).
        cluster_by: the sample field every interval is clustered by (:func:`tga_fast.evaluation.data.cluster_label`).
        seed: seeds the control tokens' draw (with each sample's id) and the bootstraps.

    Runs ``1 + len(variants) * len(windows)`` evaluations of every sample, batch by batch.
    """
    from tqdm.auto import tqdm

    from tga_fast.analysis.batching import chunks, encode, prepare, run_settings
    from tga_fast.analysis.sweep_controls import control_token_mask, window_comparisons, window_rates
    from tga_fast.errors import require_positive
    from tga_fast.evaluation.data import cluster_label
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.evaluation.judges import KeywordJudge
    from tga_fast.models import knockout, skip_layers

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {list(variants)}")
    require_positive(max_new_tokens, "max_new_tokens")
    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_marks=True)
    windows = block_windows(parts.num_layers, window)
    clusters = [cluster_label(s, cluster_by) for s in kept]
    judge = KeywordJudge() if judge is None else judge
    options = dict(with_retrieved=with_retrieved, system_prompt=system_prompt)
    common = dict(condition="text", judge=judge, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs,
                  progress=False, cluster_by=cluster_by, **options)
    runs = [(v, w) for v in VARIANTS if v in variants for w in windows]

    def intervention(variant: str, blocks: tuple[int, ...], ids: list[str], positions: list[list[int]]):
        if variant == "knockout":
            return lambda encoded: knockout(model, blocks, encoded.marked)
        if variant == "control":

            def control(encoded):
                mask, found = control_token_mask(encoded, ids, seed)
                if found != positions:  # the generation's encoding must be the one the rows record
                    raise RuntimeError(f"control tokens of {ids} differ between two encodings of the same prompts")
                return knockout(model, blocks, mask)

            return control
        return lambda encoded: skip_layers(model, blocks)

    rows = []
    batches = list(chunks(kept, batch_size))
    with tqdm(total=len(batches) * (1 + len(runs)), desc="knockout sweep", unit="run", disable=not progress) as bar:
        for batch in batches:
            ids = [str(s.id) for s in batch]
            encoded = encode(model, processor, [s.to_prompt("text", **options) for s in batch])
            _, positions = control_token_mask(encoded, ids, seed)
            plain = evaluate_dsr(model, processor, batch, batch_size=len(batch), **common)
            batch_rows = [{"id": sample_id, "scene": s.scene, "cluster": r.cluster, "prompt": r.prompt,
                           "toxic_tokens": int(marked.sum()), "control_positions": chosen, "baseline": record_row(r),
                           **{v: [] for v in VARIANTS}}
                          for sample_id, s, r, marked, chosen in zip(ids, batch, plain.records, encoded.marked,
                                                                     positions)]
            bar.update()
            for variant, (first, last) in runs:
                blocks = tuple(range(first, last + 1))
                dsr = evaluate_dsr(model, processor, batch, batch_size=len(batch),
                                   intervention=intervention(variant, blocks, ids, positions), **common)
                for row, record in zip(batch_rows, dsr.records):
                    row[variant].append(record_row(record))
                bar.set_postfix_str(f"{variant} {first}-{last}")
                bar.update()
            rows.extend(batch_rows)

    rates, scenes = window_rates(rows, VARIANTS, len(windows), clusters, cluster_by)
    verdicts = {v: [[row[v][i]["verdict"] for row in rows] for i in range(len(windows))] for v in variants}
    verdicts["baseline"] = [row["baseline"]["verdict"] for row in rows]
    comparisons = window_comparisons(verdicts, COMPARISONS, len(windows), clusters, cluster_by, seed)
    significant = _significant(comparisons, variants)
    return KnockoutSweepResult(
        windows=windows,
        baseline=rates["baseline"],
        knockout=rates["knockout"],
        control=rates["control"],
        skip=rates["skip"],
        comparisons=comparisons,
        significant_windows=[windows[i] for i in significant],
        verdict=knockout_verdict(windows, significant, rates, variants),
        scenes=scenes,
        samples=rows,
        skipped=skipped,
        settings=run_settings(model, batch_size, window=window, variants=list(variants), judge=repr(judge),
                              condition="text", with_retrieved=with_retrieved, system_prompt=system_prompt,
                              max_new_tokens=max_new_tokens, generation_kwargs=dict(generation_kwargs or {}),
                              cluster_by=cluster_by, seed=seed),
    )


def _significant(comparisons: list[dict], variants: Sequence[str]) -> list[int]:
    """Indices of the windows where the knockout lowers the DSR significantly below the baseline and, when the
    control ran, below the control (the claim needs both: a control that itself raised the DSR could make a
    knockout that changes nothing look like an effect)."""
    if "knockout" not in variants:
        return []
    needed = ["knockout_vs_baseline"] + (["knockout_vs_control"] if "control" in variants else [])
    return [i for i, window in enumerate(comparisons) if all(window[name]["significant"] for name in needed)]


def knockout_verdict(windows: list, significant: list[int], rates: dict, variants: Sequence[str]) -> str:
    """One sentence: the windows where knocking out the toxic tokens lowers the DSR beyond the control (or below
    no intervention, without the control), with the DSRs, or "in no window"."""
    from tga_fast.analysis.sweep_controls import ALPHA, window_verdict

    if "knockout" not in variants:
        return f"the toxic tokens were not knocked out (variants {list(variants)}): no verdict on them"
    controlled = "control" in variants
    claim = ("knocking out the toxic tokens lowers DSR beyond the control (as many other tokens knocked out)"
             if controlled else "knocking out the toxic tokens lowers DSR below no intervention")
    tests = (f"exact McNemar, Holm over {len(windows)} windows, p <= {ALPHA:g}, clustered interval above 0"
             + (", against the control and the baseline" if controlled else ""))
    return window_verdict(claim, tests, windows, significant, rates, "knockout", ["control"] if controlled else [],
                          unit="block", where="only in", without="intervention")


@dataclass(frozen=True)
class KnockoutSweepOptions(JudgeOptions):
    """The options of :func:`knockout_sweep` beyond the common ones."""

    window: int = option(5, "decoder blocks per window", positive=True)
    variants: tuple = option(VARIANTS, "knockout = attention to the toxic tokens blocked; control = to as many "
                             "random non-toxic user tokens; skip = whole blocks skipped", choices=VARIANTS, many=True)
    max_new_tokens: int = option(64, "generation length", positive=True)
    seed: int = option(0, "seed of the control tokens' draw (with each sample's id) and of the bootstraps")


register("knockout_sweep", knockout_sweep, KnockoutSweepResult, KnockoutSweepOptions,
         "3C: DSR on toxic text when attention to the toxic words (or whole blocks) is cut, window by window, "
         "beside as many random other words cut")
