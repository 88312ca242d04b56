"""Safety activation layers by the logit lens, with benign controls (METHOD.md 3 A and "Controls").

At the last prompt position n and every HF layer k (0 = embeddings, N = the final norm's output),
p^k = softmax(lm_head(final_norm(h_n^k))), the final norm not applied twice at k = N; the refusal mass at k is
p^k summed over R, the refusal-start token ids. The analysis measures, in one condition (``"text"``, the paper's,
or ``"image"``) and on toxic and benign samples together:

1. **Behaviour.** Each prompt is answered (greedy) and judged (:func:`tga_fast.evaluation.dsr.evaluate_dsr`): the
   refusal rates of toxic and benign prompts (intervals clustered by ``cluster_by``) and a one-sided cluster
   bootstrap test that toxic prompts are refused more often.
2. **R.** By default the refusal starts that discriminate, derived from these answers
   (:mod:`tga_fast.analysis.refusal_tokens`: first tokens of toxic refusals, minus those that open benign answers
   at least as often); the preset :data:`~tga_fast.evaluation.judges.REFUSAL_STARTS` when nothing discriminates,
   when fewer than ``MIN_REFUSALS`` (5) toxic prompts were refused, or when asked (``refusal_source="preset"``,
   or a logit judge, which writes no answer).
3. **Contrast.** Per layer, toxic minus benign refusal mass with a stratified cluster-bootstrap interval and a
   one-sided p-value, Holm-adjusted over the N+1 layers; and the same for the per-layer *increments*
   (``rise``: layer k minus layer k-1, k = 1..N, Holm over the N increments; the p-value tests "the increment is
   at most ``min_rise``", 0 by default).

The rule (:func:`contrast_range`), at level ``alpha`` with Holm-adjusted p-values (significant: p < alpha)::

    no safety layers        if toxic prompts are not refused significantly more often than benign ones
    start = the first layer k >= 1 whose increment of the contrast is significantly above zero (above min_rise)
    end   = the first layer >= start where the contrast's mean reaches 90% of its largest value over the layers
    safety layers = [start, end]   if the contrast itself is significantly above zero at end; else none

It is the paper's onset rule applied to the toxic-minus-benign contrast: the layers where the separation of toxic
from benign prompts is *built*, from its first significant rise to its rise time (90% of the full separation). Not
the last layer at which the refusal token still ranks first (which, with the model's own refusal token in R, is
the last layer for every refused prompt), and not the last significant increment either: a consistent model's
contrast keeps growing by a hair at every later layer, and with many samples a hair is significant. (The 90% was
chosen after the first version of this rule, "the last significant increment", marked every layer of the demo's
text LLM; it is the usual 10-90% rise time, not fitted to a model.) ``min_rise`` (in refusal mass) asks each
counted increment to be significantly larger than that instead of above zero.

The paper's literal rule stays for comparison (``paper_range``; ``starts``/``ends`` per toxic sample), with the
paper's R (:data:`~tga_fast.evaluation.judges.PAPER_REFUSAL_STARTS`, "I" and "As" included)::

    start = the first k >= 1 such that a token of R is among the top-5 of p^k - p^{k-1}
    end   = the last k such that argmax p^k is in R
    paper_range = [min start, max end] over the toxic samples where each was found (-1: not found, counted apart)

    result = safety_layers(model, processor, load_eval_set("eval.jsonl").samples)   # toxic and benign samples
    result.verdict, result.safety_range, result.contrast["mean"], result.paper_range
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.analysis.controls import describe_runs
from tga_fast.analysis.options import JudgeOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std
from tga_fast.models.lens import logit_lens
from tga_fast.stats import ALPHA
from tga_fast.models.processors import tokenizer_of

__all__ = ["SafetyLayersOptions", "SafetyLayersResult", "contrast_range", "layer_contrast", "locate_safety_layers",
           "paper_rule_range", "safety_layers"]

REFUSAL_SOURCES = ("derived", "preset")
MIN_REFUSALS = 5  # refused toxic prompts needed before R is derived from the model's own refusals


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


def paper_rule_range(starts: Sequence[int], ends: Sequence[int]) -> tuple[list[int] | None, int, int]:
    """``(range, start_not_found, end_not_found)`` of the paper's rule: ``[min start, max end]`` over the samples
    where each was found (-1 = not found never enters the min or max); None when no start or no end was found."""
    found_starts = [s for s in starts if s >= 0]
    found_ends = [e for e in ends if e >= 0]
    found = [min(found_starts), max(found_ends)] if found_starts and found_ends else None
    return found, len(starts) - len(found_starts), len(ends) - len(found_ends)


def layer_contrast(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]], x_clusters: Sequence,
                   y_clusters: Sequence, layers: Sequence[int], *, cluster_field: str, resamples: int,
                   seed: int, margin: float = 0.0) -> dict:
    """Per layer, group x minus group y (rows ``[n_x, L]`` and ``[n_y, L]``, one column per entry of ``layers``)
    by :func:`tga_fast.stats.cluster_bootstrap_contrast`, with Holm-adjusted p-values over the L layers.

    ``margin``: the p-values test "the difference is at most ``margin``" (0: "not above zero"). The bootstrap
    draws of x shifted down by a constant are the unshifted draws minus it (same seed, same resamples), so the
    test is the contrast of the shifted rows, while the mean and interval stay those of the rows as given.

    Returns:
        The :class:`~tga_fast.stats.Contrast` as JSON (per-layer ``mean``, ``ci_low``, ``ci_high``, one-sided
        ``p_value``; ``n_x``, ``n_y``, ``clusters_x``, ``clusters_y``, ``method``, ``confidence``) plus ``layers``,
        ``p_holm`` and ``margin``.
    """
    from tga_fast.stats import cluster_bootstrap_contrast, holm

    options = dict(cluster_field=cluster_field, resamples=resamples, seed=seed)
    contrast = cluster_bootstrap_contrast(x, y, x_clusters, y_clusters, **options).to_json()
    if margin:
        shifted = [[v - margin for v in row] for row in x]
        contrast["p_value"] = cluster_bootstrap_contrast(shifted, y, x_clusters, y_clusters, **options).p_value
    return {"layers": list(layers), **contrast, "p_holm": holm(contrast["p_value"]), "margin": margin}


def _increments(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """``[n, L-1]``: each row's change from one layer to the next (column j = layer j+1 minus layer j)."""
    return [[b - a for a, b in zip(row[:-1], row[1:])] for row in rows]


SETTLE = 0.9  # the end of the range: where the contrast reaches this share of its largest value (a "rise time")


def contrast_range(contrast: dict, rise: dict, alpha: float, settle: float = SETTLE) -> tuple[list[int] | None, str]:
    """The safety layers from the toxic-minus-benign contrast (the module's rule): from the first layer whose
    increment of the contrast is significantly above zero (``rise["p_holm"] < alpha``) to the first layer from there
    at which the contrast's mean reaches ``settle`` of its largest value over the layers, kept only when the
    contrast itself is significantly above zero at that end (``contrast["p_holm"] < alpha``).

    The end is a rise time, not "the last significant increment": once a model has separated toxic from benign
    prompts, the separation can keep growing by a hair at every later layer, and with consistent answers a hair is
    significant, which would stretch every range to N.

    Args:
        contrast: per layer (``contrast["layers"]``, 0..N) ``mean`` and ``p_holm``, as :func:`layer_contrast`
            gives it.
        rise: per increment (``rise["layers"]``: k = 1..N, layer k minus layer k-1) ``p_holm``, of the test
            "increment at most ``rise["margin"]``" (absent or 0: "not above zero").
        settle: the share of the largest contrast that ends the range (0.9).

    Returns:
        ``(range, reason)``: the range or None, and why, in words.
    """
    if not 0.0 < settle <= 1.0:
        raise ValueError(f"settle must be in (0, 1], got {settle}")
    layers = list(contrast["layers"])
    significant = dict(zip(layers, (p < alpha for p in contrast["p_holm"])))
    rising = [k for k, p in zip(rise["layers"], rise["p_holm"]) if p < alpha]
    by = f" by more than {rise['margin']:g}" if rise.get("margin") else ""
    above = [k for k, yes in significant.items() if yes]
    if not rising and not above:
        return None, "toxic and benign prompts differ at no layer"
    if not rising:
        return None, (f"toxic-minus-benign refusal mass is above zero at layers {describe_runs(above)} but rises "
                      f"significantly{by} at no layer")
    start = rising[0]
    mean = dict(zip(layers, contrast["mean"]))
    peak = max(mean.values())
    end = next((k for k in layers if k >= start and mean[k] >= settle * peak), layers[-1])
    span = f"layer {start}" if start == end else f"layers {start}-{end}"
    if not significant[end]:
        return None, (f"toxic-minus-benign refusal mass rises{by} at {span} but is not significantly above zero "
                      f"at layer {end}")
    share = f"{settle:.0%} of its largest value ({peak:.2f})"
    if start == end:
        return [start, end], f"toxic-minus-benign refusal mass rises significantly{by} at layer {start} to {share}"
    return [start, end], (f"toxic-minus-benign refusal mass rises significantly{by} from layer {start} and reaches "
                          f"{share} at layer {end}")


def behaviour_test(toxic_refused: Sequence[bool], benign_refused: Sequence[bool], toxic_clusters: Sequence,
                   benign_clusters: Sequence, *, judge: str, cluster_field: str, alpha: float, resamples: int,
                   seed: int) -> dict:
    """Whether the model refuses toxic prompts more often than benign ones: both refusal rates
    (:func:`tga_fast.stats.clustered_rate`) and their difference with a one-sided cluster-bootstrap p-value (the 0/1
    verdicts as one column of :func:`tga_fast.stats.cluster_bootstrap_contrast`). Plain JSON: ``judge``,
    ``toxic``, ``benign`` (Estimates), ``difference`` (``value``, ``ci_low``, ``ci_high``, ``p_value``,
    ``method``), ``alpha`` and ``toxic_refused_more`` (difference > 0 and p < alpha)."""
    from tga_fast.stats import cluster_bootstrap_contrast, clustered_rate

    options = dict(cluster_field=cluster_field, resamples=resamples, seed=seed)
    toxic = clustered_rate(toxic_refused, toxic_clusters, **options)
    benign = clustered_rate(benign_refused, benign_clusters, **options)
    test = cluster_bootstrap_contrast([[float(v)] for v in toxic_refused], [[float(v)] for v in benign_refused],
                                      toxic_clusters, benign_clusters, **options)
    difference = {"value": test.mean[0], "ci_low": test.ci_low[0], "ci_high": test.ci_high[0],
                  "p_value": test.p_value[0], "method": test.method}
    return {"judge": judge, "toxic": toxic.to_json(), "benign": benign.to_json(), "difference": difference,
            "alpha": alpha, "toxic_refused_more": difference["value"] > 0 and difference["p_value"] < alpha}


def _verdict(behaviour: dict, found: list[int] | None, reason: str, alpha: float) -> str:
    """One quotable sentence: the safety layers or why there are none, with the refusal rates it rests on."""
    rates = f"refusal {behaviour['toxic']['value']:.0%} vs {behaviour['benign']['value']:.0%}"
    if not behaviour["toxic_refused_more"]:
        return (f"no safety layers: toxic prompts are not refused more often than benign ones ({rates}, "
                f"p = {behaviour['difference']['p_value']:.2g})")
    if found is None:
        return f"no safety layers: {reason} (Holm, alpha {alpha:g}; {rates})"
    start, end = found
    name = f"safety layer {start}" if start == end else f"safety layers {start}-{end}"
    return f"{name}: {reason} (Holm, alpha {alpha:g}; {rates})"


@dataclass
class SafetyLayersResult(AnalysisResult):
    """Refusal mass per layer for toxic and benign prompts, their contrast, and the safety layers (HF numbering:
    0 = embeddings, N = final norm).

    Attributes:
        layers: ``[0, 1, ..., N]``.
        verdict: one quotable sentence ("safety layers 1-2: ..." or "no safety layers: ...").
        safety_range: ``[start, end]`` by the module's rule, None when there are none (``reason`` says why).
        reason: why the range is what it is, in words.
        behaviour: the judged answers (:func:`behaviour_test`): refusal rates of toxic and benign prompts and the
            one-sided test of their difference.
        refusal_mass_mean, refusal_mass_std: per layer, the toxic prompts' mass on R (mean, population std).
        toxic_mass_mean: the same mean (named for its group); benign_mass_mean, benign_mass_std: the benign
            prompts'.
        contrast: per layer toxic minus benign mass (:func:`layer_contrast`: ``mean``, ``ci_low``, ``ci_high``,
            ``p_value``, ``p_holm``, ...).
        rise: the same for the per-layer increments, ``layers`` 1..N (increment k = layer k minus layer k-1);
            its p-values test "increment at most ``rise["margin"]``" (``min_rise``).
        alpha: the level of every test.
        refusal_source: where R came from (``derived``, ``preset``, ``explicit``, or ``preset`` with the reason of
            the fallback); refusal_ids, refusal_tokens: R and how each id decodes; refusal_derivation: the starts
            of the toxic refusals with their shares among refusals and benign answers (empty unless derived).
        paper_range: the paper's literal rule over the toxic samples, with the paper's R (``paper_refusal_ids``,
            ``paper_refusal_tokens``); paper_range_benign: the same rule over the benign samples, its control.
        start_not_found, end_not_found: toxic samples where the paper's rule finds no start (no end);
            ``*_rate`` the share.
        samples: per sample ``id``, ``scene``, ``toxic``, ``cluster``, ``response`` (None with a logit judge),
            ``refused``, ``score`` (the logit judge's), ``start``/``end`` (paper's rule, -1 not found),
            ``refusal_mass`` per layer (with R) and ``top_tokens`` (the lens' argmax per layer, decoded).
        skipped: samples left out, with the reason.
        settings: how the run was made.
    """

    kind = "safety_layers"

    layers: list
    verdict: str
    safety_range: list | None
    reason: str
    behaviour: dict
    refusal_mass_mean: list
    refusal_mass_std: list
    toxic_mass_mean: list
    benign_mass_mean: list
    benign_mass_std: list
    contrast: dict
    rise: dict
    alpha: float
    refusal_source: str
    refusal_ids: list
    refusal_tokens: list
    refusal_derivation: list
    paper_range: list | None
    paper_range_benign: list | None
    paper_refusal_ids: list
    paper_refusal_tokens: list
    start_not_found: int
    end_not_found: int
    start_not_found_rate: float
    end_not_found_rate: float
    samples: list
    skipped: list
    settings: dict

    def figure(self):
        from tga_fast.analysis.plots import plot_safety_layers

        return plot_safety_layers(self)

    @property
    def starts(self) -> list[int]:
        """The paper rule's start layer of each toxic sample (-1: not found)."""
        return [s["start"] for s in self.samples if s["toxic"]]

    @property
    def ends(self) -> list[int]:
        """The paper rule's end layer of each toxic sample (-1: not found)."""
        return [s["end"] for s in self.samples if s["toxic"]]


def _choose_refusal_ids(tokenizer, refusal_ids, refusal_starts, refusal_source, logit_judge, records):
    """``(ids, source, derivation)``: R as the arguments ask (see :func:`safety_layers`)."""
    from tga_fast.analysis.refusal_tokens import derive_refusal_starts
    from tga_fast.evaluation.judges import REFUSAL_STARTS, refusal_token_ids

    if refusal_ids is not None:
        return sorted({int(i) for i in refusal_ids}), "explicit", []
    preset = refusal_token_ids(tokenizer, tuple(refusal_starts or REFUSAL_STARTS))
    if refusal_source == "preset":
        return preset, "preset", []
    if logit_judge:
        return preset, "preset (a logit judge writes no answer to derive R from)", []
    refusals = [r.response for r in records if r.toxic and r.verdict]
    benign = [r.response for r in records if not r.toxic]
    if len(refusals) < MIN_REFUSALS:
        # One or two refusals cannot tell a refusal start from a generic one (a single "I ..." would make R = "I").
        return preset, (f"preset (the model refused {len(refusals)} toxic prompts; R is derived from at least "
                        f"{MIN_REFUSALS})"), []
    ids, derivation = derive_refusal_starts(tokenizer, refusals, benign)
    if not ids:
        return preset, "preset (no refusal start of the model's own answers discriminates)", derivation
    return ids, "derived", derivation


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
    refusal_source: str = "derived",
    condition: str = "text",
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
    judge=None,
    max_new_tokens: int = 32,
    alpha: float = ALPHA,
    min_rise: float = 0.0,
    resamples: int = 2000,
    seed: int = 0,
) -> SafetyLayersResult:
    """Judges the model's answers, then runs the logit lens on toxic and benign prompts and applies the module's
    rule (and the paper's, for comparison).

    One forward per lens batch: ``capture`` keeps the last prompt position's state at each of the N+1 layers (no
    hidden-state sequence is kept), one LM-head matmul gives the lens of every layer, and one device-to-host copy
    per batch brings back the masses, argmax tokens and the paper rule's layers.

    Args:
        samples: ``EvalSample`` s, toxic and benign (``toxic=False``) together: benign prompts are the control,
            and without them (or without toxic ones) this raises ValueError.
        refusal_ids: R, used as given (wins over ``refusal_source``).
        refusal_starts: the preset's words (default :data:`~tga_fast.evaluation.judges.REFUSAL_STARTS`), for
            ``refusal_source="preset"`` and the derived R's fallback.
        refusal_source: ``"derived"`` (the refusal starts of the model's own answers that discriminate; the
            preset when none does) or ``"preset"``.
        top_k: the paper's start rule's top-k (5 in the paper).
        condition: ``"text"`` (the paper's setting) or ``"image"``, to see whether the same layers fire when the
            content comes as an image.
        cluster_by: the sample field the bootstrap resamples by (:func:`tga_fast.evaluation.data.cluster_label`).
        judge: the refusal judge of the answers (default the keyword judge; a judge's CLI name works too; a
            ``LogitJudge`` judges without generating, and R is then the preset).
        max_new_tokens: the length of each generated answer.
        alpha: the level of the behaviour test and of every Holm-adjusted layer test.
        min_rise: how much (refusal mass) an increment of the contrast must significantly exceed to count; 0: the
            increment must be significantly above zero.
        resamples, seed: the cluster bootstrap's.
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.analysis.options import make_judge
    from tga_fast.evaluation.data import CLUSTER_FIELDS
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.evaluation.judges import PAPER_REFUSAL_STARTS, KeywordJudge, LogitJudge, judge_name
    from tga_fast.evaluation.judges import refusal_token_ids
    from tga_fast.models import capture

    if condition not in ("text", "image"):
        raise ValueError(f"condition must be 'text' or 'image', got {condition!r}")
    if refusal_source not in REFUSAL_SOURCES:
        raise ValueError(f"refusal_source must be one of {REFUSAL_SOURCES}, got {refusal_source!r}")
    if cluster_by not in CLUSTER_FIELDS:
        raise ValueError(f"cluster_by must be one of {CLUSTER_FIELDS}, got {cluster_by!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= min_rise < 1.0:
        raise ValueError(f"min_rise must be in [0, 1), got {min_rise}")
    parts, kept, skipped = prepare(model, samples, batch_size, need_image=condition == "image")
    _require_controls(kept)
    # Holm multiplies the smallest p-value by the number of layers, and a bootstrap p-value is at least
    # 1 / (resamples + 1): with too few resamples no layer could ever be significant, whatever the model does.
    if (parts.num_layers + 1) / (resamples + 1) >= alpha:
        raise ValueError(f"resamples={resamples} cannot give a Holm-adjusted p-value below alpha={alpha} over "
                         f"{parts.num_layers + 1} layers; use at least {int((parts.num_layers + 1) / alpha)}")
    if refusal_ids is not None:  # a wrong id fails now, not after the generation
        _check_ids(refusal_ids, parts)
    tokenizer = tokenizer_of(processor)
    judge = KeywordJudge() if judge is None else make_judge(judge, processor)

    # 1. Behaviour: what the model does with these prompts, before any lens.
    dsr = evaluate_dsr(model, processor, kept, condition=condition, with_retrieved=with_retrieved,
                       system_prompt=system_prompt, judge=judge, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       progress=progress, cluster_by=cluster_by)
    record_of = _records_by_sample(kept, dsr.records)
    skipped += dsr.skipped
    measured = [s for s in kept if id(s) in record_of]
    _require_controls(measured)

    # 2. R, and the paper's R for its literal rule.
    logit_judge = isinstance(judge, LogitJudge)
    refusal_ids, source, derivation = _choose_refusal_ids(tokenizer, refusal_ids, refusal_starts, refusal_source,
                                                          logit_judge, dsr.records)
    _check_ids(refusal_ids, parts)
    paper_ids = refusal_token_ids(tokenizer, PAPER_REFUSAL_STARTS)

    # 3. The lens on every measured prompt, toxic and benign.
    layers = list(range(parts.num_layers + 1))
    ids = torch.tensor(refusal_ids)
    rows = []
    batches = Batches(measured, batch_size, desc="safety layers", progress=progress, images=condition == "image")
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
        start, end = locate_safety_layers(probs, paper_ids, top_k, from_logits=False)  # [b] each
        mass = probs[..., ids.to(probs.device)].sum(dim=-1)  # [N+1, b]
        top = probs.argmax(dim=-1)  # [N+1, b]
        # One device-to-host copy per batch: masses, argmax ids (exact in float64) and the paper's layers together.
        packed = torch.cat([mass.T.double(), top.T.double(), start[:, None].double(), end[:, None].double()], dim=1)
        width = len(layers)
        for sample, row in zip(batch_samples, packed.cpu().tolist()):
            record = record_of[id(sample)]
            rows.append({
                "id": str(sample.id),
                "scene": sample.scene,
                "toxic": bool(sample.toxic),
                "cluster": record.cluster,
                "response": None if logit_judge else record.response,
                "refused": bool(record.verdict),
                "score": record.score,
                "start": int(row[2 * width]),
                "end": int(row[2 * width + 1]),
                "refusal_mass": row[:width],
                "top_tokens": [tokenizer.decode([int(t)]) for t in row[width : 2 * width]],
            })
    skipped += batches.failed
    toxic = [r for r in rows if r["toxic"]]
    benign = [r for r in rows if not r["toxic"]]
    _require_controls(rows)

    # 4. Behaviour test, contrast per layer and per increment, the rule, the verdict.
    stats = dict(cluster_field=cluster_by, resamples=resamples, seed=seed)
    behaviour = behaviour_test([r["refused"] for r in toxic], [r["refused"] for r in benign],
                               [r["cluster"] for r in toxic], [r["cluster"] for r in benign],
                               judge=judge_name(judge), alpha=alpha, **stats)
    toxic_mass, benign_mass = [r["refusal_mass"] for r in toxic], [r["refusal_mass"] for r in benign]
    clusters = ([r["cluster"] for r in toxic], [r["cluster"] for r in benign])
    contrast = layer_contrast(toxic_mass, benign_mass, *clusters, layers, **stats)
    rise = layer_contrast(_increments(toxic_mass), _increments(benign_mass), *clusters, layers[1:], **stats,
                          margin=min_rise)
    found, reason = contrast_range(contrast, rise, alpha)
    if not behaviour["toxic_refused_more"]:  # the lens alone is kept in words: it is what the paper's rule reads
        found, reason = None, f"toxic prompts are not refused more often than benign ones (the lens alone: {reason})"
    toxic_mean, toxic_std = mean_std(toxic_mass)
    benign_mean, benign_std = mean_std(benign_mass)
    paper, start_missing, end_missing = paper_rule_range([r["start"] for r in toxic], [r["end"] for r in toxic])
    paper_benign = paper_rule_range([r["start"] for r in benign], [r["end"] for r in benign])[0]
    return SafetyLayersResult(
        layers=layers,
        verdict=_verdict(behaviour, found, reason, alpha),
        safety_range=found,
        reason=reason,
        behaviour=behaviour,
        refusal_mass_mean=toxic_mean,
        refusal_mass_std=toxic_std,
        toxic_mass_mean=list(toxic_mean),
        benign_mass_mean=benign_mean,
        benign_mass_std=benign_std,
        contrast=contrast,
        rise=rise,
        alpha=alpha,
        refusal_source=source,
        refusal_ids=list(refusal_ids),
        refusal_tokens=[tokenizer.decode([i]) for i in refusal_ids],
        refusal_derivation=derivation,
        paper_range=paper,
        paper_range_benign=paper_benign,
        paper_refusal_ids=list(paper_ids),
        paper_refusal_tokens=[tokenizer.decode([i]) for i in paper_ids],
        start_not_found=start_missing,
        end_not_found=end_missing,
        start_not_found_rate=start_missing / len(toxic),
        end_not_found_rate=end_missing / len(toxic),
        samples=rows,
        skipped=skipped,
        settings=run_settings(model, batch_size, top_k=top_k, condition=condition, with_retrieved=with_retrieved,
                              system_prompt=system_prompt, cluster_by=cluster_by, judge=judge_name(judge),
                              refusal_source=refusal_source, max_new_tokens=max_new_tokens, alpha=alpha,
                              min_rise=min_rise, resamples=resamples, seed=seed),
    )


def _check_ids(refusal_ids: Sequence[int], parts) -> None:
    """Raises ValueError unless ``refusal_ids`` are some ids of the LM head's vocabulary."""
    vocab = parts.lm_head.weight.shape[0]
    ids = list(refusal_ids)
    if not ids or not all(0 <= int(i) < vocab for i in ids):
        raise ValueError(f"refusal_ids must be non-empty ids of the vocabulary of size {vocab}, got {ids}")


def _records_by_sample(samples: Sequence, records: Sequence) -> dict:
    """``{id(sample): record}``: the DSR records are the samples in order, less those it skipped (an image that
    did not decode), so one pass pairs them even when two samples share an id."""
    paired, remaining = {}, iter(records)
    record = next(remaining, None)
    for sample in samples:
        if record is not None and record.id == sample.id:
            paired[id(sample)] = record
            record = next(remaining, None)
    if record is not None:
        raise RuntimeError(f"the DSR record of {record.id!r} matches no sample in order")
    return paired


def _require_controls(samples: Sequence, key: str = "toxic") -> None:
    """Raises ValueError unless ``samples`` (objects or row dicts) hold both toxic and benign ones."""
    flags = [bool(s[key] if isinstance(s, dict) else getattr(s, key, True)) for s in samples]
    if all(flags) or not any(flags):
        missing = "benign" if all(flags) else "toxic"
        raise ValueError(f"safety_layers needs controls: toxic samples and benign samples (\"toxic\": false) "
                         f"together; got no {missing} sample among {len(flags)} usable ones")


@dataclass(frozen=True)
class SafetyLayersOptions(JudgeOptions):
    """The options of :func:`safety_layers` beyond the common ones (the judge's come from
    :class:`~tga_fast.analysis.options.JudgeOptions`)."""

    condition: str = option("text", "the content as text (the paper's setting) or as the image",
                            choices=("text", "image"))
    top_k: int = option(5, "how many of the largest per-layer increases the paper's start rule looks at",
                        positive=True)
    refusal_source: str = option("derived", "derived = the refusal starts of the model's own answers that begin its "
                                 "toxic refusals more often than its benign answers (the preset when none does); "
                                 "preset = the refusal words without generic tokens", choices=REFUSAL_SOURCES)
    max_new_tokens: int = option(32, "the length of each judged answer", positive=True)
    min_rise: float = option(0.0, "how much (refusal mass) a layer's increase of the toxic-minus-benign contrast must "
                             "significantly exceed to count as a safety layer (0: above zero)")

    def needs_images(self) -> bool:
        return self.condition == "image"


register("safety_layers", safety_layers, SafetyLayersResult, SafetyLayersOptions,
         "3A: safety layers by the logit lens: where toxic-minus-benign refusal mass rises, with its control")
