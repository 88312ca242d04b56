"""Defense success rate (DSR): the share of toxic requests the model refuses, per scene and overall, with Wilson
95% intervals; benign control samples give a false-refusal rate reported apart.

    result = evaluate_dsr(model, processor, load_eval_set("eval.jsonl").samples, condition="image")
    result.overall.rate, result.overall.low, result.overall.high
    result.save("out/")        # result.json (per-sample prompts, responses, verdicts) + figure.png
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from tga_fast.evaluation.data import CONDITIONS, EvalSample

__all__ = ["DSRResult", "Rate", "SampleRecord", "dsr_from_verdicts", "evaluate_dsr", "wilson_interval"]

logger = logging.getLogger(__name__)
Z95 = 1.9599639845400536  # the standard normal's 97.5% quantile, statistics.NormalDist().inv_cdf(0.975)


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; ``(0.0, 1.0)`` when ``total`` is 0.

    center = (p + z^2/2n) / (1 + z^2/n),  half width = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    """
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got successes={successes}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p, n, z2 = successes / total, total, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 or 1 a bound is exactly 0 or 1; rounding would put it a hair inside and exclude p itself.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == total else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """``refused`` of ``total`` (``rate`` None when ``total`` is 0) with the Wilson 95% interval [low, high]."""

    refused: int
    total: int
    rate: float | None
    low: float
    high: float

    @classmethod
    def of(cls, refused: int, total: int) -> "Rate":
        low, high = wilson_interval(refused, total)
        return cls(int(refused), int(total), refused / total if total else None, low, high)

    def __str__(self) -> str:
        if self.rate is None:
            return "n/a (0 samples)"
        return f"{self.rate:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.refused}/{self.total})"


def dsr_from_verdicts(verdicts: Sequence[bool], scenes: Sequence[str]) -> tuple[Rate, dict[str, Rate]]:
    """``(overall, per scene)`` refusal rates of aligned verdicts (True = refused) and scene names; scenes sorted."""
    if len(verdicts) != len(scenes):
        raise ValueError(f"{len(verdicts)} verdicts but {len(scenes)} scenes")
    counts: dict[str, list[int]] = {}
    for verdict, scene in zip(verdicts, scenes):
        count = counts.setdefault(scene, [0, 0])
        count[0] += bool(verdict)
        count[1] += 1
    overall = Rate.of(sum(bool(v) for v in verdicts), len(verdicts))
    return overall, {scene: Rate.of(*counts[scene]) for scene in sorted(counts)}


@dataclass(frozen=True)
class SampleRecord:
    """One judged sample: ``prompt`` is the rendered prompt the model saw; ``score`` the logit judge's refusal
    probability (None for judges of text)."""

    id: str
    scene: str
    toxic: bool
    prompt: str
    response: str
    verdict: bool
    score: float | None = None


@dataclass
class DSRResult:
    """DSR over toxic samples (``overall``, ``scenes``), false refusals over benign ones (``false_refusal``,
    ``false_refusal_scenes``; None / empty without benign samples), per-sample ``records`` and ``settings``."""

    overall: Rate
    scenes: dict[str, Rate]
    records: list[SampleRecord]
    settings: dict = field(default_factory=dict)
    false_refusal: Rate | None = None
    false_refusal_scenes: dict[str, Rate] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Sequence[SampleRecord], settings: dict | None = None) -> "DSRResult":
        toxic = [r for r in records if r.toxic]
        benign = [r for r in records if not r.toxic]
        overall, scenes = dsr_from_verdicts([r.verdict for r in toxic], [r.scene for r in toxic])
        false_refusal, benign_scenes = (None, {})
        if benign:
            false_refusal, benign_scenes = dsr_from_verdicts([r.verdict for r in benign], [r.scene for r in benign])
        return cls(overall, scenes, list(records), dict(settings or {}), false_refusal, benign_scenes)

    def to_dict(self) -> dict:
        return {
            "overall": asdict(self.overall),
            "scenes": {k: asdict(v) for k, v in self.scenes.items()},
            "false_refusal": asdict(self.false_refusal) if self.false_refusal else None,
            "false_refusal_scenes": {k: asdict(v) for k, v in self.false_refusal_scenes.items()},
            "settings": self.settings,
            "records": [asdict(r) for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DSRResult":
        return cls(
            overall=Rate(**data["overall"]),
            scenes={k: Rate(**v) for k, v in data["scenes"].items()},
            records=[SampleRecord(**r) for r in data["records"]],
            settings=data.get("settings", {}),
            false_refusal=Rate(**data["false_refusal"]) if data.get("false_refusal") else None,
            false_refusal_scenes={k: Rate(**v) for k, v in data.get("false_refusal_scenes", {}).items()},
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | dict) -> "DSRResult":
        return cls.from_dict(json.loads(text) if isinstance(text, str) else text)

    @classmethod
    def load(cls, path) -> "DSRResult":
        """From a ``result.json`` or the folder holding it."""
        path = Path(path)
        return cls.from_json((path / "result.json" if path.is_dir() else path).read_text(encoding="utf-8"))

    def save(self, out_dir) -> dict[str, Path]:
        """Writes ``result.json`` and ``figure.png`` into ``out_dir`` (created); returns their paths."""
        from tga_fast.evaluation.plots import plot_dsr

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"result": out / "result.json", "figure": out / "figure.png"}
        paths["result"].write_text(self.to_json() + "\n", encoding="utf-8")
        plot_dsr(self, paths["figure"])
        return paths

    def summary(self) -> str:
        lines = [f"DSR {self.overall}"]
        lines += [f"  {scene}: {rate}" for scene, rate in self.scenes.items()]
        if self.false_refusal is not None:
            lines.append(f"false refusals (benign) {self.false_refusal}")
        return "\n".join(lines)


class _LazyImages(Sequence):
    """The images of ``samples``, opened only when a batch asks for them."""

    def __init__(self, samples: Sequence[EvalSample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [s.load_image() for s in self.samples[index]]
        return self.samples[index].load_image()


def _judge_request(sample: EvalSample) -> str:
    """What an LLM judge is shown as the request: it cannot see the image, so it gets the image's text."""
    return f"{sample.text}\n{sample.prompt}"


def _logit_scores(model, processor, prompts, images, judge, *, batch_size, intervention, progress) -> list[float]:
    from tqdm.auto import tqdm

    from tga_fast.evaluation.generation import prompt_batches, encode_for_model, padded_left

    scores: list[float] = []
    with padded_left(processor), tqdm(total=len(prompts), desc="logit judge", disable=not progress,
                                      unit="prompt") as bar:
        for chunk, chunk_images in prompt_batches(prompts, images, batch_size):
            encoded = encode_for_model(model, processor, chunk, chunk_images)
            context = intervention(encoded) if intervention is not None else contextlib.nullcontext()
            with context:
                scores.extend(judge.scores(model, encoded).tolist())
            bar.update(len(chunk))
    return scores


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
    """
    from tga_fast.evaluation.generation import generate_responses
    from tga_fast.evaluation.judges import KeywordJudge, LogitJudge, is_llm_judge
    from tga_fast.models.prompts import render_prompt

    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    samples = list(samples)
    if not samples:
        raise ValueError("samples is empty")
    if condition == "image":  # fail before any generation, not at the batch that reaches the sample
        missing = [s.id for s in samples if s.image_path is None]
        if missing:
            raise ValueError(f"condition 'image' but {len(missing)} samples have no image: {missing[:10]}")
    judge = KeywordJudge() if judge is None else judge
    prompts = [s.to_prompt(condition, with_retrieved=with_retrieved, system_prompt=system_prompt) for s in samples]
    images = _LazyImages(samples) if condition == "image" else None
    rendered = [render_prompt(processor, p)[0] for p in prompts]
    scores: list[float | None] = [None] * len(samples)
    if isinstance(judge, LogitJudge):
        scores = _logit_scores(model, processor, prompts, images, judge, batch_size=batch_size,
                               intervention=intervention, progress=progress)
        responses = [""] * len(samples)
        verdicts = [s >= judge.threshold for s in scores]
    else:
        responses = generate_responses(
            model, processor, prompts, images, batch_size=batch_size, max_new_tokens=max_new_tokens,
            generation_kwargs=generation_kwargs, intervention=intervention, progress=progress, desc="DSR",
        )
        if is_llm_judge(judge):
            verdicts = judge([_judge_request(s) for s in samples], responses)
        else:
            verdicts = judge(responses)
        verdicts = [bool(v) for v in verdicts]
        if len(verdicts) != len(samples):
            raise ValueError(f"the judge returned {len(verdicts)} verdicts for {len(samples)} responses")
    # A non-finite score (fp16 overflow in the logits, say) is kept as None: result.json stays valid JSON.
    not_finite = [s.id for s, score in zip(samples, scores) if score is not None and not math.isfinite(score)]
    if not_finite:
        logger.warning("%d samples have a non-finite refusal score (recorded as null, verdict False): %s",
                       len(not_finite), ", ".join(not_finite[:20]))
    records = [
        SampleRecord(id=s.id, scene=s.scene, toxic=s.toxic, prompt=text, response=response, verdict=bool(verdict),
                     score=None if score is None or not math.isfinite(score) else float(score))
        for s, text, response, verdict, score in zip(samples, rendered, responses, verdicts, scores)
    ]
    run_settings = {
        "condition": condition,
        "with_retrieved": with_retrieved,
        "system_prompt": system_prompt,
        "judge": repr(judge),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "generation_kwargs": {k: v for k, v in (generation_kwargs or {}).items() if _is_json(v)},
        "intervention": None if intervention is None else getattr(intervention, "__name__", repr(intervention)),
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        **(settings or {}),
    }
    return DSRResult.from_records(records, run_settings)


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
