"""3A with its controls: the rule on hand-built contrasts (and rules it must not be), R derived from the model's own
answers, no safety layers in a random model, and safety layers in the toy world's text LLM, which has a real
refusal mechanism."""

import dataclasses

import pytest

from tga_fast.analysis import SafetyLayersOptions, SafetyLayersResult, safety_layers
from tga_fast.analysis.options import JudgeOptions
from tga_fast.analysis.refusal_tokens import derive_refusal_starts, first_response_token
from tga_fast.analysis.safety_layers_3a import contrast_range, layer_contrast
from tga_fast.stats import holm

ALPHA = 0.05
SMALL, LARGE = 0.001, 0.6  # raw one-sided p-values: clearly significant, clearly not


def curves(contrast_p: list[float], rise_p: list[float], mean: list[float] | None = None) -> tuple[dict, dict]:
    """A contrast over layers 0..N (``mean``, default 0 where ``contrast_p`` is not SMALL, else a plateau at 0.9
    reached by steps) and its increments over 1..N with the given raw p-values, Holm-adjusted as
    :func:`layer_contrast` adjusts them (so a rule that reads ``p_value`` instead of ``p_holm`` shows)."""
    assert len(rise_p) == len(contrast_p) - 1
    if mean is None:
        mean = [0.0] * len(contrast_p)
        for k in range(1, len(contrast_p)):  # each significant increment adds 0.45, up to the plateau of 0.9
            mean[k] = min(0.9, mean[k - 1] + (0.45 if rise_p[k - 1] == SMALL else 0.0))
    contrast = {"layers": list(range(len(contrast_p))), "mean": mean, "p_value": contrast_p,
                "p_holm": holm(contrast_p)}
    rise = {"layers": list(range(1, len(contrast_p))), "p_value": rise_p, "p_holm": holm(rise_p)}
    return contrast, rise


# The contrast rises at layers 2-3, then plateaus (still far above zero up to N = 6, increments zero).
PLATEAU = curves([1.0, 1.0, SMALL, SMALL, SMALL, SMALL, SMALL], [1.0, SMALL, SMALL, 1.0, 1.0, 1.0])
# As PLATEAU, plus a raw p = 0.02 increment at layer 5 that Holm over six increments (0.02 x 4 = 0.08) rejects.
NOT_AFTER_HOLM = curves([1.0, 1.0, SMALL, SMALL, SMALL, SMALL, SMALL], [1.0, SMALL, SMALL, 1.0, 0.02, 1.0])


def test_the_rule_finds_where_the_contrast_rises_not_where_it_stays_high():
    assert contrast_range(*PLATEAU, ALPHA) == ([2, 3], "toxic-minus-benign refusal mass rises significantly from "
                                                       "layer 2 and reaches 90% of its largest value (0.90) at layer 3")
    assert contrast_range(*NOT_AFTER_HOLM, ALPHA)[0] == [2, 3]
    single = curves([1.0, SMALL, SMALL], [SMALL, 1.0])
    assert contrast_range(*single, ALPHA) == ([1, 1], "toxic-minus-benign refusal mass rises significantly at "
                                                      "layer 1 to 90% of its largest value (0.45)")
    # A consistent model: a big rise at layer 1, then significant increments of a hair up to N. The last
    # significant increment would put the end at N; the rise time puts it where the separation is built.
    creeping = curves([1.0] + [SMALL] * 6, [SMALL] * 6, mean=[0.0, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0])
    assert contrast_range(*creeping, ALPHA)[0] == [1, 1]


def test_no_range_without_a_significant_rise_or_contrast():
    flat = curves([1.0, LARGE, LARGE, LARGE], [LARGE, LARGE, LARGE])
    assert contrast_range(*flat, ALPHA) == (None, "toxic and benign prompts differ at no layer")
    # Already apart at the embeddings, never rising: a difference of the prompts, not a mechanism.
    apart = curves([SMALL, SMALL, SMALL, SMALL], [LARGE, LARGE, LARGE])
    found, reason = contrast_range(*apart, ALPHA)
    assert found is None and reason.endswith("above zero at layers 0-3 but rises significantly at no layer")
    # Rises at layer 1, but is not significantly above zero there: no range.
    shaky = curves([1.0, LARGE, LARGE, LARGE], [SMALL, LARGE, LARGE])
    found, reason = contrast_range(*shaky, ALPHA)
    assert found is None and "not significantly above zero at layer 1" in reason


def test_the_hand_built_cases_catch_the_rules_it_replaces():
    """Rules a careless version could implement give other answers on the cases above, so the tests would fail."""

    def raw_p(contrast, rise, alpha):  # ignores Holm
        rising = [k for k, p in zip(rise["layers"], rise["p_value"]) if p < alpha]
        return [rising[0], rising[-1]]

    def last_rise(contrast, rise, alpha):  # the first version of the rule: the last significant increment
        rising = [k for k, p in zip(rise["layers"], rise["p_holm"]) if p < alpha]
        return [rising[0], rising[-1]]

    def end_rule(contrast, rise, alpha):  # the paper's end: the last layer where the contrast is significant
        rising = [k for k, p in zip(rise["layers"], rise["p_holm"]) if p < alpha]
        above = [k for k, p in zip(contrast["layers"], contrast["p_holm"]) if p < alpha]
        return [rising[0], above[-1]]

    expected = contrast_range(*NOT_AFTER_HOLM, ALPHA)[0]
    assert raw_p(*NOT_AFTER_HOLM, ALPHA) == [2, 5] != expected
    assert end_rule(*PLATEAU, ALPHA) == [2, 6] != contrast_range(*PLATEAU, ALPHA)[0]
    creeping = curves([1.0] + [SMALL] * 4, [SMALL] * 4, mean=[0.0, 0.95, 0.97, 0.98, 1.0])
    assert last_rise(*creeping, ALPHA) == [1, 4] != contrast_range(*creeping, ALPHA)[0]
    assert expected[1] < len(NOT_AFTER_HOLM[0]["layers"]) - 1  # the range stops before N


def test_layer_contrast_tests_a_margin_on_the_same_draws():
    x = [[0.0, 0.30], [0.0, 0.32], [0.0, 0.34], [0.0, 0.36]]
    y = [[0.0, 0.0], [0.0, 0.02], [0.0, 0.01]]
    plain = layer_contrast(x, y, None, None, [0, 1], cluster_field="sample", resamples=500, seed=0)
    margin = layer_contrast(x, y, None, None, [0, 1], cluster_field="sample", resamples=500, seed=0, margin=0.5)
    assert plain["mean"] == margin["mean"] and plain["ci_low"] == margin["ci_low"]  # the estimate is unchanged
    # 4 rows all above 3 rows: no bootstrap draw crosses zero; the p-value is the permutation floor 1 / C(7, 3).
    assert plain["p_value"][1] == pytest.approx(1 / 35) and margin["p_value"][1] == 1.0  # 0.32 > 0 but < 0.5
    assert plain["p_value"][0] == 1.0 and plain["p_holm"] == holm(plain["p_value"]) and margin["margin"] == 0.5


def toy_tokenizer():
    from tga_fast.toy.tokenizer import build_tokenizer
    from tga_fast.toy.world import World, WorldConfig

    return build_tokenizer(World(WorldConfig.quick()).vocabulary())


def test_derived_refusal_starts_keep_what_discriminates():
    from tga_fast.evaluation.judges import first_token_ids

    tokenizer = toy_tokenizer()
    refusals = ["sorry , i cannot help with that .", "sorry , i cannot .", "i cannot help with that .", ""]
    benign = ["i can help .", "you can help .", "it is red ."]
    ids, table = derive_refusal_starts(tokenizer, refusals, benign)
    assert ids == first_token_ids(tokenizer, ["sorry"])
    assert table == [  # shares of all responses, the empty one included
        {"token": "sorry", "refusal_share": 0.5, "benign_share": 0.0, "kept": True},
        {"token": "i", "refusal_share": 0.25, "benign_share": 1 / 3, "kept": False},
    ]
    assert derive_refusal_starts(tokenizer, [], benign) == ([], [])  # refuses nothing: nothing derived
    assert first_response_token(tokenizer, "  ") is None
    assert first_response_token(tokenizer, "you can") == (tokenizer.convert_tokens_to_ids("you"), "you")


def test_options_take_a_judge_and_the_source_of_r():
    assert issubclass(SafetyLayersOptions, JudgeOptions)
    names = {f.name for f in dataclasses.fields(SafetyLayersOptions)}
    assert {"judge", "judge_model", "judge_template", "refusal_source", "max_new_tokens", "condition",
            "top_k", "min_rise"} <= names
    arguments = SafetyLayersOptions(refusal_source="preset").arguments(None)
    assert arguments["refusal_source"] == "preset" and callable(arguments["judge"])


def test_controls_are_required(llava, samples):
    model, processor = llava
    toxic = [s for s in samples if s.toxic]
    benign = [s for s in samples if not s.toxic]
    with pytest.raises(ValueError, match="needs controls.*no benign sample"):
        safety_layers(model, processor, toxic, progress=False)
    with pytest.raises(ValueError, match="needs controls.*no toxic sample"):
        safety_layers(model, processor, benign, progress=False)
    with pytest.raises(ValueError, match="refusal_ids must be"):
        safety_layers(model, processor, samples, refusal_ids=[10**9], progress=False)
    with pytest.raises(ValueError, match="resamples=50"):  # Holm over 5 layers could never reach 0.05
        safety_layers(model, processor, samples, resamples=50, progress=False)


def test_a_random_model_has_no_safety_layers(llava, samples, tmp_path):
    from tga_fast.evaluation.judges import KeywordJudge, judge_name

    model, processor = llava
    result = safety_layers(model, processor, samples, batch_size=3, max_new_tokens=8, progress=False)
    behaviour = result.behaviour
    assert behaviour["judge"] == judge_name(KeywordJudge()) == result.settings["judge"]
    assert behaviour["toxic"]["n"] == 4 and behaviour["benign"]["n"] == 1
    assert not behaviour["toxic_refused_more"] and behaviour["difference"]["p_value"] >= ALPHA
    assert result.safety_range is None
    assert result.verdict.startswith("no safety layers: toxic prompts are not refused more often than benign ones")
    assert "the lens alone" in result.reason
    assert [s["refused"] for s in result.samples] == [False] * 5  # it refuses nothing, so R cannot be derived
    assert result.refusal_source.startswith("preset") and result.refusal_derivation == []
    assert all(isinstance(s["response"], str) for s in result.samples)
    assert len(result.contrast["mean"]) == len(result.layers) and len(result.rise["mean"]) == len(result.layers) - 1
    assert result.contrast["n_x"] == 4 and result.contrast["n_y"] == 1
    out = result.save(tmp_path / "3a")
    assert SafetyLayersResult.load(out) == result == SafetyLayersResult.from_json(result.to_json())


def test_a_logit_judge_reads_no_answer(llava, samples):
    from tga_fast.evaluation.judges import LogitJudge, refusal_token_ids

    model, processor = llava
    result = safety_layers(model, processor, samples, judge=LogitJudge(processor), progress=False)
    assert result.refusal_source.startswith("preset (a logit judge")
    assert result.refusal_ids == refusal_token_ids(processor.tokenizer)
    assert all(s["response"] is None and 0.0 <= s["score"] <= 1.0 for s in result.samples)
    assert result.safety_range is None


# ---------------------------------------------------------------------------------------------- the toy's text LLM


@pytest.fixture(scope="module")
def toy_llm():
    """The toy world's text LLM (quick config; trains in about 30 s on one CPU thread) and its use-requests as
    text samples: toxic concepts (refused) and benign ones (answered), clustered by concept."""
    from tga_fast.evaluation.data import EvalSample
    from tga_fast.toy.text_llm import TextLLMConfig, train_text_llm
    from tga_fast.toy.world import World, WorldConfig

    world = World(WorldConfig.quick())
    tokenizer = toy_tokenizer()
    llm = train_text_llm(world, tokenizer, TextLLMConfig.quick(), progress=False)
    samples = []
    for i, request in enumerate(world.all_requests("all", kinds=("use",))):
        at = request.caption.index(request.concept)
        samples.append(EvalSample(
            id=f"{i:03d}", image_path=None, text=request.caption, scene=request.scene, prompt=request.question,
            toxic_ranges=((at, at + len(request.concept)),) if request.toxic else (), toxic=request.toxic,
            concept=request.concept,
        ))
    return llm, tokenizer, samples


@pytest.mark.slow  # trains the toy's text LLM
def test_the_toy_text_llm_has_safety_layers(toy_llm, tmp_path):
    llm, tokenizer, samples = toy_llm
    result = safety_layers(llm, tokenizer, samples, batch_size=64, max_new_tokens=10, progress=False)
    behaviour = result.behaviour
    assert (behaviour["toxic"]["value"], behaviour["benign"]["value"]) == (1.0, 0.0)
    toxic_concepts = {s.concept for s in samples if s.toxic}
    assert behaviour["toxic_refused_more"] and behaviour["toxic"]["clusters"] == len(toxic_concepts) >= 4
    assert result.refusal_source == "derived" and result.refusal_tokens == ["sorry"]
    assert result.safety_range is not None and result.safety_range[0] >= 1
    assert result.verdict.startswith(f"safety layers {result.safety_range[0]}")
    assert "refusal 100% vs 0%" in result.verdict
    assert result.contrast["mean"][0] == pytest.approx(0.0, abs=1e-6)  # the same last token at the embeddings
    assert max(result.contrast["mean"]) > 0.9
    # The contrast keeps growing by a hair up to N (every increment significant); the range ends where the
    # separation is built, before N, while the paper's literal rule reaches N.
    assert result.safety_range[1] < result.layers[-1] == result.paper_range[1]
    strict = safety_layers(llm, tokenizer, samples, batch_size=64, max_new_tokens=10, min_rise=0.05, progress=False)
    assert strict.safety_range is not None and strict.safety_range[0] == result.safety_range[0]
    assert SafetyLayersResult.load(result.save(tmp_path / "3a")) == result


def test_records_pair_with_samples_in_order_even_with_shared_ids():
    from types import SimpleNamespace

    from tga_fast.analysis.safety_layers_3a import _records_by_sample

    samples = [SimpleNamespace(id=i) for i in ("a", "b", "a", "c")]
    records = [SimpleNamespace(id="a", n=0), SimpleNamespace(id="a", n=2), SimpleNamespace(id="c", n=3)]  # b skipped
    paired = _records_by_sample(samples, records)
    assert [paired[id(s)].n if id(s) in paired else None for s in samples] == [0, None, 2, 3]
    with pytest.raises(RuntimeError, match="matches no sample"):
        _records_by_sample(samples[:1], records)


def test_r_is_not_derived_from_a_handful_of_refusals():
    """A model that refused one toxic prompt with "i ..." would otherwise get R = {"i"}: a generic start."""
    from types import SimpleNamespace

    from tga_fast.analysis.safety_layers_3a import MIN_REFUSALS, _choose_refusal_ids
    from tga_fast.evaluation.judges import REFUSAL_STARTS, refusal_token_ids

    tokenizer = toy_tokenizer()

    def records(refused: int):
        toxic = [SimpleNamespace(toxic=True, verdict=i < refused, response="i cannot ." if i < refused else "you can")
                 for i in range(10)]
        return toxic + [SimpleNamespace(toxic=False, verdict=False, response="it is red .") for _ in range(10)]

    ids, source, _ = _choose_refusal_ids(tokenizer, None, None, "derived", False, records(MIN_REFUSALS - 1))
    assert ids == refusal_token_ids(tokenizer, REFUSAL_STARTS) and source.startswith("preset (the model refused 4")
    ids, source, _ = _choose_refusal_ids(tokenizer, None, None, "derived", False, records(MIN_REFUSALS))
    assert source == "derived" and [tokenizer.decode([i]) for i in ids] == ["i"]
