"""Defense success rate (DSR): the share of toxic requests the model refuses, per scene and overall; benign
control samples give a false-refusal rate, overall and per scene, reported apart.

Every rate carries a 95% interval clustered by the field the run chose (``cluster_by``, default ``concept``):
paraphrased questions about one image are not independent (METHOD.md 3, "Controls"), so the interval is Wilson's at
the cluster bootstrap's effective sample size (:func:`tga_fast.stats.clustered_rate`), and each rate says how it was
made (``Rate.method``, ``Rate.interval_note``). Two results on the same samples are compared pairwise by
:func:`tga_fast.evaluation.compare.compare_dsr`.

    result = evaluate_dsr(model, processor, load_eval_set("eval.jsonl").samples, condition="image")
    result.overall.rate, result.overall.low, result.overall.high, result.overall.interval_note
    result.save("out/")        # result.json, samples.jsonl (prompts, responses, verdicts), figure.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Hashable, Sequence

from tga_fast.errors import require_positive
from tga_fast.evaluation.data import CONDITIONS, EvalSample, load_images
from tga_fast.evaluation.rates import Rate, dsr_from_verdicts, rate_dict, wilson_interval
from tga_fast.results import Result

__all__ = ["DSRResult", "Rate", "SampleRecord", "dsr_from_verdicts", "evaluate_dsr", "rate_dict", "record_clusters",
           "wilson_interval"]

logger = logging.getLogger(__name__)

# The method of a rate whose records carry no cluster label (results saved before records had one).
UNLABELLED = "wilson: the records carry no cluster label, so each sample is its own cluster"


@dataclass(frozen=True)
class SampleRecord:
    """One judged sample: ``prompt`` is the rendered prompt the model saw; ``score`` the logit judge's refusal
    probability (None for judges of text); ``judge`` names the judge that gave ``verdict``
    (:func:`tga_fast.evaluation.judges.judge_name`); ``cluster`` is the label intervals are clustered by
    (:func:`tga_fast.evaluation.data.cluster_label`); ``other_verdicts`` maps the name of each extra judge run
    on the same response to its verdict."""

    id: str
    scene: str
    toxic: bool
    prompt: str
    response: str
    verdict: bool
    score: float | None = None
    judge: str = ""
    cluster: str = ""
    other_verdicts: dict = field(default_factory=dict)


@dataclass
class DSRResult(Result):
    """DSR over toxic samples (``overall``, ``scenes``), false refusals over benign ones (``false_refusal``,
    ``false_refusal_scenes``; None / empty without benign samples), per-sample ``records`` (saved as
    ``samples.jsonl``), ``settings`` (condition, judge, extra judges, ``cluster_by``, model, ...), ``skipped``:
    ``{"id", "scene", "reason"}`` of the samples left out at run time (an image that did not decode), counted in
    no rate, and ``judge_agreement`` (Cohen's kappa of each extra judge against the main one).

    Every interval is clustered by ``settings["cluster_by"]`` through the records' ``cluster`` labels
    (:func:`record_clusters`)."""

    kind = "dsr"
    samples_field = "records"

    overall: Rate
    scenes: dict[str, Rate]
    records: list[SampleRecord]
    settings: dict = field(default_factory=dict)
    false_refusal: Rate | None = None
    false_refusal_scenes: dict[str, Rate] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    judge_agreement: list[dict] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: Sequence[SampleRecord], settings: dict | None = None,
                     skipped: Sequence[dict] = ()) -> "DSRResult":
        """The rates of ``records`` with intervals clustered by their ``cluster`` labels (what
        ``settings["cluster_by"]`` names, default ``concept``; records without labels: Wilson, and the method says
        so)."""
        settings = dict(settings or {})
        field = settings.get("cluster_by") or "concept"
        toxic = [r for r in records if r.toxic]
        benign = [r for r in records if not r.toxic]
        overall, scenes = _rates(toxic, field)
        false_refusal, benign_scenes = (None, {})
        if benign:
            false_refusal, benign_scenes = _rates(benign, field)
        return cls(overall, scenes, list(records), settings, false_refusal, benign_scenes, list(skipped),
                   judge_agreement(records))

    @classmethod
    def from_json(cls, data: dict) -> "DSRResult":
        """As :meth:`Result.from_json`; a result saved before ``judge_agreement`` (or ``skipped``, benign rates)
        existed loads with those fields empty, and its rates keep the (Wilson) intervals it was saved with."""
        if isinstance(data, dict):
            data = {"settings": {}, "false_refusal": None, "false_refusal_scenes": {}, "skipped": [],
                    "judge_agreement": [], **data}
        return super().from_json(data)

    @classmethod
    def _fields_from_json(cls, fields: dict) -> dict:
        fields = dict(fields)
        fields["overall"] = Rate(**fields["overall"])
        fields["scenes"] = {k: Rate(**v) for k, v in fields["scenes"].items()}
        fields["records"] = [SampleRecord(**r) for r in fields["records"]]
        if fields.get("false_refusal") is not None:
            fields["false_refusal"] = Rate(**fields["false_refusal"])
        fields["false_refusal_scenes"] = {k: Rate(**v) for k, v in fields.get("false_refusal_scenes", {}).items()}
        return fields

    def figure(self):
        """Bars per scene with their (clustered) intervals, the overall DSR as a line with its band, the method in
        a note (a ``matplotlib.figure.Figure``)."""
        from tga_fast.evaluation.plots import dsr_figure

        return dsr_figure(self)

    def summary(self) -> str:
        """Each rate with its interval and how the interval was made, one a line."""
        lines = [f"DSR {self.overall}"]
        lines += [f"  {scene}: {rate}" for scene, rate in self.scenes.items()]
        if self.false_refusal is not None:
            lines.append(f"false refusals (benign) {self.false_refusal}")
            lines += [f"  {scene}: {rate}" for scene, rate in self.false_refusal_scenes.items()]
        for row in self.judge_agreement:
            kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.2f}"
            agreement = "n/a" if row["agreement"] is None else f"{row['agreement']:.0%}"
            lines.append(f"judges {row['judges'][0]} vs {row['judges'][1]}: agreement {agreement}, kappa {kappa} "
                         f"({row['n']} responses)")
        if self.skipped:
            lines.append(f"{len(self.skipped)} samples skipped (counted in no rate): "
                         + ", ".join(s["id"] for s in self.skipped[:10]))
        return "\n".join(lines)


def record_clusters(records: Sequence[SampleRecord], field: str = "concept") -> tuple[list[Hashable] | None, str]:
    """``(labels, field)``: the cluster label of each record and the words for what they are.

    ``labels`` is None when no record has a label (a result saved before records had one): every sample is then
    its own cluster, which is Wilson's interval. A record without a label among labelled ones is its own cluster
    (its id makes a label no other record has), and ``field`` says so.
    """
    if not any(r.cluster for r in records):
        return None, field
    if all(r.cluster for r in records):
        return [r.cluster for r in records], field
    # A tuple never equals a string label, so an unlabelled record cannot join a real cluster by accident.
    return ([r.cluster or ("unlabelled", r.id) for r in records],
            f"{field} (samples without a label their own cluster)")


def _rates(records: Sequence[SampleRecord], field: str) -> tuple[Rate, dict[str, Rate]]:
    """``(overall, per scene)`` refusal rates of ``records``, clustered by their labels (:func:`record_clusters`)."""
    labels, described = record_clusters(records, field)
    overall, scenes = dsr_from_verdicts([r.verdict for r in records], [r.scene for r in records], labels, described)
    if labels is None:  # say why these are Wilson intervals although the run asked for clustering
        overall = dataclasses.replace(overall, method=UNLABELLED)
        scenes = {name: dataclasses.replace(rate, method=UNLABELLED) for name, rate in scenes.items()}
    return overall, scenes


def judge_agreement(records: Sequence[SampleRecord]) -> list[dict]:
    """Cohen's kappa of the main judge against each extra judge on the same responses (all records, toxic and
    benign): ``[{"judges": [main, other], "n", "agreement", "kappa"}]``."""
    from tga_fast.stats import cohen_kappa

    if not records:
        return []
    main = records[0].judge
    others = sorted({name for r in records for name in r.other_verdicts})
    out = []
    for name in others:
        rows = [r for r in records if name in r.other_verdicts]
        out.append({"judges": [main, name],
                    **cohen_kappa([r.verdict for r in rows], [r.other_verdicts[name] for r in rows])})
    return out


def _verdicts(judge, samples, responses) -> list[bool]:
    """One judge's verdicts on generated responses (an LLM judge also reads the request)."""
    from tga_fast.evaluation.judges import is_llm_judge

    if is_llm_judge(judge):
        verdicts = judge([_judge_request(s) for s in samples], responses)
    else:
        verdicts = judge(responses)
    verdicts = [bool(v) for v in verdicts]
    if len(verdicts) != len(samples):
        raise ValueError(f"the judge returned {len(verdicts)} verdicts for {len(samples)} responses")
    return verdicts


def _judge_request(sample: EvalSample) -> str:
    """What an LLM judge is shown as the request: it cannot see the image, so it gets the image's text."""
    return f"{sample.text}\n{sample.prompt}"


def _logit_scores(model, processor, prompts, images, judge, intervention) -> list[float]:
    """The logit judge's refusal probability of one batch of prompts."""
    from tga_fast.evaluation.generation import encode_for_model, padded_left

    with padded_left(processor):
        encoded = encode_for_model(model, processor, prompts, images)
        context = intervention(encoded) if intervention is not None else contextlib.nullcontext()
        with context:
            return judge.scores(model, encoded).tolist()


def evaluate_dsr(
    model,
    processor,
    samples: Sequence[EvalSample],
    *,
    condition: str = "image",
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    judge=None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    generation_kwargs: dict | None = None,
    intervention: Callable[..., ContextManager] | None = None,
    progress: bool = True,
    settings: dict | None = None,
    cluster_by: str = "concept",
    extra_judges: Sequence = (),
) -> DSRResult:
    """Generates a response per sample (greedy unless ``generation_kwargs`` say otherwise), judges it, and counts.

    Args:
        samples: :class:`EvalSample` s; toxic ones give the DSR, benign ones (``toxic=False``) the false-refusal
            rate.
        condition: ``"image"`` (the image before the question) or ``"text"`` (the sample's text in its place).
        with_retrieved: put each sample's ``retrieved`` text first (samples without one are asked without).
        system_prompt: a (safety) system prompt for every request.
        judge: a :class:`~tga_fast.evaluation.judges.KeywordJudge` (default, GCG preset) or any
            ``responses -> verdicts`` callable; an :class:`~tga_fast.evaluation.judges.LLMJudge`
            ``(requests, responses) -> verdicts`` (requests are the sample's text + question, since a judge of
            text cannot see the image); or a :class:`~tga_fast.evaluation.judges.LogitJudge`, which needs no
            generation (responses are then empty and each record keeps its refusal probability).
        batch_size, max_new_tokens, generation_kwargs, intervention, progress: as in
            :func:`~tga_fast.evaluation.generation.generate_responses`.
        settings: extra entries for ``DSRResult.settings`` (the model path, say).
        cluster_by: the sample field intervals are clustered by (:data:`tga_fast.evaluation.data.CLUSTER_FIELDS`;
            default ``concept``: the sample's concept, else its text).
        extra_judges: judges of text run on the same responses (a record's ``other_verdicts``); the result's
            ``judge_agreement`` gives Cohen's kappa of each against ``judge``. Not with a ``LogitJudge``.
    """
    from tqdm.auto import tqdm

    from tga_fast.evaluation.generation import generate_responses
    from tga_fast.evaluation.data import CLUSTER_FIELDS, cluster_label
    from tga_fast.evaluation.judges import KeywordJudge, LogitJudge, judge_name
    from tga_fast.models.prompts import render_prompt

    require_positive(batch_size, "batch_size")
    require_positive(max_new_tokens, "max_new_tokens")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if cluster_by not in CLUSTER_FIELDS:
        raise ValueError(f"cluster_by must be one of {CLUSTER_FIELDS}, got {cluster_by!r}")
    samples = list(samples)
    if not samples:
        raise ValueError("samples is empty")
    if condition == "image":  # fail before any generation, not at the batch that reaches the sample
        missing = [s.id for s in samples if s.image_path is None]
        if missing:
            raise ValueError(f"condition 'image' but {len(missing)} samples have no image: {missing[:10]}")
    judge = KeywordJudge() if judge is None else judge
    logit = isinstance(judge, LogitJudge)
    extra_judges = list(extra_judges)
    if any(isinstance(j, LogitJudge) for j in [judge, *extra_judges]) and extra_judges:
        raise ValueError("extra_judges judge generated responses; a LogitJudge reads no response and cannot be one "
                         "of them or the main judge beside them")
    done: list[EvalSample] = []
    asked = []
    skipped: list[dict] = []
    responses: list[str] = []
    scores: list[float | None] = []
    with tqdm(total=len(samples), desc="DSR", disable=not progress, unit="prompt") as bar:
        for start in range(0, len(samples), batch_size):
            chunk, images = samples[start : start + batch_size], None
            if condition == "image":  # an image that does not decode is a skipped sample, not the end of the run
                chunk, images, failed = load_images(chunk)
                skipped += failed
            prompts = [s.to_prompt(condition, with_retrieved=with_retrieved, system_prompt=system_prompt)
                       for s in chunk]
            if prompts and logit:
                scores += _logit_scores(model, processor, prompts, images, judge, intervention)
            elif prompts:
                responses += generate_responses(
                    model, processor, prompts, images, batch_size=len(prompts), max_new_tokens=max_new_tokens,
                    generation_kwargs=generation_kwargs, intervention=intervention, progress=False,
                )
            done += chunk
            asked += prompts
            bar.update(min(batch_size, len(samples) - start))
    if not done:
        raise ValueError(f"none of the {len(samples)} samples could be evaluated: "
                         + "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3]))
    samples = done
    rendered = [render_prompt(processor, prompt)[0] for prompt in asked]
    if logit:
        responses = [""] * len(samples)
        verdicts = [s >= judge.threshold for s in scores]
    else:
        scores = [None] * len(samples)
        verdicts = _verdicts(judge, samples, responses)
    others = {judge_name(j): _verdicts(j, samples, responses) for j in extra_judges}
    if len(others) != len(extra_judges) or judge_name(judge) in others:
        raise ValueError("every judge needs its own name (judge_name): two judges share one")
    # A non-finite score (fp16 overflow in the logits, say) is kept as None: result.json stays valid JSON.
    not_finite = [s.id for s, score in zip(samples, scores) if score is not None and not math.isfinite(score)]
    if not_finite:
        logger.warning("%d samples have a non-finite refusal score (recorded as null, verdict False): %s",
                       len(not_finite), ", ".join(not_finite[:20]))
    records = [
        SampleRecord(id=s.id, scene=s.scene, toxic=s.toxic, prompt=text, response=response, verdict=bool(verdict),
                     score=None if score is None or not math.isfinite(score) else float(score),
                     judge=judge_name(judge), cluster=cluster_label(s, cluster_by),
                     other_verdicts={name: v[i] for name, v in others.items()})
        for i, (s, text, response, verdict, score) in enumerate(zip(samples, rendered, responses, verdicts, scores))
    ]
    run_settings = {
        "condition": condition,
        "with_retrieved": with_retrieved,
        "system_prompt": system_prompt,
        "judge": judge_name(judge),
        "extra_judges": list(others),
        "cluster_by": cluster_by,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "generation_kwargs": {k: v for k, v in (generation_kwargs or {}).items() if _is_json(v)},
        "intervention": None if intervention is None else getattr(intervention, "__name__", repr(intervention)),
        "model": getattr(model, "name_or_path", None) or None,  # the CLI's settings name the folder it was given
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        **(settings or {}),
    }
    return DSRResult.from_records(records, run_settings, skipped)


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
