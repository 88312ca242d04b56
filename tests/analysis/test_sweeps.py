"""knockout_sweep and steering_sweep on a tiny random LLaVA: windows, rates that match the stored verdicts, JSON
round trip, PNG; the interventions reach the generation (knockout over every block agrees with a slow greedy
decode under an explicit additive mask, skipping every block with decoding from the embeddings)."""

import contextlib
import dataclasses
import json

import pytest
import torch

from tga_fast.analysis import (
    KnockoutSweepResult,
    SteeringSweepResult,
    block_windows,
    knockout_sweep,
    layer_windows,
    steering_sweep,
)
from tga_fast.analysis.knockout_sweep_3c import COMPARISONS
from tga_fast.analysis.steering_sweep_3e import _text_states
from tga_fast.analysis.sweep_controls import control_token_mask
from tga_fast.analysis.batching import encode
from tga_fast.models import resolve
from tga_fast.models.prompts import encode_prompts


def judge(responses):
    """A deterministic stand-in for a refusal judge on random-model output (so that rates are not all 0)."""
    return [len(r) % 2 == 0 for r in responses]


def assert_rate(rate, verdicts):
    assert rate["total"] == len(verdicts) and rate["refused"] == sum(verdicts)
    assert rate["rate"] == pytest.approx(sum(verdicts) / len(verdicts))
    assert 0.0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1.0


def assert_saved(result, tmp_path, cls):
    out = result.save(tmp_path / result.kind)
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(row)["id"] for row in rows] == [row["id"] for row in result.samples]
    again = cls.load(out)
    assert again.to_json() == result.to_json()
    assert again == cls.from_json(result.to_json()) == result


def test_layer_windows():
    assert layer_windows(12, 5) == [[1, 5], [6, 10], [11, 12]]
    assert layer_windows(4, 2) == [[1, 2], [3, 4]]
    assert layer_windows(32, 5)[-1] == [31, 32]
    with pytest.raises(ValueError, match="window"):
        layer_windows(4, 0)
    assert layer_windows(4, 2, first=0) == [[0, 1], [2, 3], [4, 4]]  # HF layers may start at the embeddings


def test_block_windows_cover_the_decoder_blocks():
    assert block_windows(12, 5) == [[1, 5], [6, 10], [11, 12]]
    assert block_windows(4, 4) == [[1, 4]]
    with pytest.raises(ValueError, match="window"):
        block_windows(4, 0)


def test_knockout_sweep_end_to_end(llava, samples, tmp_path):
    model, processor = llava
    result = knockout_sweep(model, processor, samples, batch_size=3, window=2, max_new_tokens=4, judge=judge,
                            progress=False)
    assert result.windows == [[1, 2], [3, 4]]
    assert len(result.knockout) == len(result.control) == len(result.skip) == 2
    assert [s["id"] for s in result.samples] == ["knife", "pills", "dog", "blade"]
    assert result.skipped == [{"id": "cup", "reason": "benign control (toxic=false)"}]
    rows = result.samples
    assert all(r["baseline"]["verdict"] == judge([r["baseline"]["response"]])[0] for r in rows)
    assert_rate(result.baseline, [r["baseline"]["verdict"] for r in rows])
    for variant in ("knockout", "control", "skip"):
        for i, rate in enumerate(getattr(result, variant)):
            assert_rate(rate, [r[variant][i]["verdict"] for r in rows])
        # the intervention reaches the generation: some answer changes in some window
        assert any(r[variant][i]["response"] != r["baseline"]["response"] for r in rows for i in range(2))
    assert all(len(r["control_positions"]) == r["toxic_tokens"] >= 1 for r in rows)
    assert [r["cluster"] for r in rows] == [s.text for s in samples if s.toxic]  # concept: else the text
    assert "clustered by concept" in result.baseline["method"] and result.baseline["clusters"] == 4
    assert set(result.scenes["baseline"]) == {"violence", "drugs"} and len(result.scenes["control"]) == 2
    assert "USER:" in rows[0]["prompt"] and "red knife" in rows[0]["prompt"]
    assert [set(c) for c in result.comparisons] == [{name for name, _, _ in COMPARISONS}] * 2
    for window, comparison in zip(range(2), result.comparisons):  # control - knockout, on the stored verdicts
        difference = comparison["knockout_vs_control"]["difference"]["value"]
        assert difference == pytest.approx(result.control[window]["rate"] - result.knockout[window]["rate"])
    assert result.significant_windows == [] and "in no window" in result.verdict  # 4 samples prove nothing
    assert result.settings["seed"] == 0 and result.settings["cluster_by"] == "concept"
    assert_saved(result, tmp_path, KnockoutSweepResult)
    marked = dataclasses.replace(result, significant_windows=[[3, 4]], verdict="made up")  # the shading draws
    assert_saved(marked, tmp_path / "marked", KnockoutSweepResult)


def greedy(model, tokenizer, input_ids, steps, mask_for=None):
    """Greedy decoding without a cache; ``mask_for(length)`` gives a 4D additive mask for the model (or None)."""
    ids = input_ids
    for _ in range(steps):
        mask = None if mask_for is None else mask_for(ids.shape[1])
        kwargs = {"attention_mask": mask} if mask is not None else {}
        token = model(input_ids=ids, use_cache=False, **kwargs).logits[0, -1].argmax()
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


@contextlib.contextmanager
def masked_blocks(model, blocks, mask_for):
    """Eager attention, and decoder blocks ``blocks`` (1-based) attend under ``mask_for(T)`` (a 4D additive mask)
    instead of the model's causal mask: the oracle of a knockout in exactly those blocks, without the op."""
    parts = resolve(model)

    def swap_mask(module, args, kwargs):
        length = (args[0] if args else kwargs["hidden_states"]).shape[1]
        return args, {**kwargs, "attention_mask": mask_for(length)}

    handles = [parts.decoder_layers[k - 1].register_forward_pre_hook(swap_mask, with_kwargs=True) for k in blocks]
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def without_blocks(model, blocks):
    """The LLaVA-Llama model with decoder blocks ``blocks`` (1-based) taken out of its layer list."""
    language_model = model.model.language_model
    layers = language_model.layers
    language_model.layers = torch.nn.ModuleList([m for k, m in enumerate(layers, start=1) if k not in blocks])
    try:
        yield
    finally:
        language_model.layers = layers


def test_windows_agree_with_a_slow_decode(llava, samples):
    """Every window of the three variants against an oracle that touches exactly the window's blocks (and, for the
    control, exactly the control tokens): window [1, 2] and [3, 4] of the 4-block model (an off-by-one between
    windows and blocks changes the answers)."""
    model, processor = llava
    tokenizer = processor.tokenizer
    sample = samples[0]
    result = knockout_sweep(model, processor, [sample], batch_size=1, window=2, max_new_tokens=4, progress=False)
    assert result.windows == [[1, 2], [3, 4]]
    encoded = encode_prompts(processor, [sample.to_prompt("text")])
    ids, blocked = encoded.batch["input_ids"], encoded.marked[0]
    assert blocked.any()
    control = control_token_mask(encode(model, processor, [sample.to_prompt("text")]), [sample.id], seed=0)[0][0]
    assert result.samples[0]["control_positions"] == control.nonzero()[:, 0].tolist()

    def knockout_mask_of(keys):
        def mask_for(length):  # causal, and no later query sees a key in ``keys``
            positions = torch.arange(length)
            keys_blocked = torch.nn.functional.pad(keys, (0, length - keys.shape[0]))
            earlier = positions[None, :] < positions[:, None]  # [query, key]
            visible = (positions[None, :] <= positions[:, None]) & ~(keys_blocked[None, :] & earlier)
            return torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]

        return mask_for

    responses = {}
    with torch.no_grad():
        for first, last in result.windows:
            blocks = range(first, last + 1)
            with masked_blocks(model, blocks, knockout_mask_of(blocked)):
                responses["knockout", first] = greedy(model, tokenizer, ids, 4)
            with masked_blocks(model, blocks, knockout_mask_of(control)):
                responses["control", first] = greedy(model, tokenizer, ids, 4)
            with without_blocks(model, blocks):
                responses["skip", first] = greedy(model, tokenizer, ids, 4)
    for i, (first, _) in enumerate(result.windows):
        assert result.samples[0]["knockout"][i]["response"] == responses["knockout", first]
        assert result.samples[0]["skip"][i]["response"] == responses["skip", first]
        assert result.samples[0]["control"][i]["response"] == responses["control", first]
    # the oracle itself tells the windows apart, so the comparison above can fail on a shifted window, and the
    # control from the knockout, so it can fail on the wrong tokens
    assert responses["skip", 1] != responses["skip", 3]
    assert any(responses["control", w] != responses["knockout", w] for w in (1, 3))


def test_whole_model_skip_decodes_from_the_embeddings(llava, samples):
    """Every block skipped: the logits are lm_head(final_norm(embeddings))."""
    model, processor = llava
    tokenizer = processor.tokenizer
    sample = samples[0]
    result = knockout_sweep(model, processor, [sample], batch_size=1, window=resolve(model).num_layers,
                            variants=("skip",), max_new_tokens=4, progress=False)
    assert result.knockout == result.control == [] and all(row["knockout"] == [] for row in result.samples)
    assert result.comparisons == [{"skip_vs_baseline": result.comparisons[0]["skip_vs_baseline"]}]
    assert "not knocked out" in result.verdict
    parts = resolve(model)
    ids = prompt_ids = encode_prompts(processor, [sample.to_prompt("text")]).batch["input_ids"]
    with torch.no_grad():
        for _ in range(4):
            token = parts.lm_head(parts.final_norm(parts.input_embeddings(ids)))[0, -1].argmax()
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    expected_skip = tokenizer.decode(ids[0, prompt_ids.shape[1]:], skip_special_tokens=True).strip()
    assert result.samples[0]["skip"][0]["response"] == expected_skip


def test_steering_vectors_are_pooled_text_states(llava, samples):
    model, processor = llava
    batch = samples[:2]
    states = _text_states(model, processor, batch, [1, 3], {"with_retrieved": False, "system_prompt": None})
    for i, sample in enumerate(batch):
        encoded = encode_prompts(processor, [sample.to_prompt("text")])
        start, end = encoded.spans["text"][0].tolist()
        with torch.no_grad():
            hidden = model(**encoded.batch, output_hidden_states=True).hidden_states
        expected = torch.stack([hidden[k][0, start:end].mean(0) for k in (1, 3)])
        torch.testing.assert_close(states[:, i], expected, rtol=1e-4, atol=1e-5)


def test_steering_sweep_end_to_end(llava, samples, tmp_path):
    model, processor = llava
    result = steering_sweep(model, processor, samples, batch_size=3, window=3, max_new_tokens=4, judge=judge,
                            progress=False)
    assert result.windows == [[0, 2], [3, 4]] and result.scale == 1.0
    rows = result.samples
    assert [r["id"] for r in rows] == ["knife", "pills", "dog", "blade"]
    assert_rate(result.baseline, [r["baseline"]["verdict"] for r in rows])
    for condition in ("steered", "random", "mismatched"):
        assert len(getattr(result, condition)) == 2
        for i, rate in enumerate(getattr(result, condition)):
            assert_rate(rate, [r[condition][i]["verdict"] for r in rows])
        assert any(r[condition][0]["response"] != r["baseline"]["response"] for r in rows)
    # every text is its own concept: the next sample in the run is the partner, across batches too
    assert [r["mismatched_with"] for r in rows] == ["pills", "dog", "blade", "knife"]
    assert "clustered by concept" in result.steered[0]["method"]
    for window, comparison in enumerate(result.comparisons):  # steered - control, on the stored verdicts
        for control in ("random", "mismatched"):
            difference = comparison[f"steered_vs_{control}"]["difference"]["value"]
            assert difference == pytest.approx(result.steered[window]["rate"] - getattr(result, control)[window]["rate"])
    assert result.significant_windows == [] and "in no window" in result.verdict
    assert "<image>" in rows[0]["prompt"]
    assert_saved(result, tmp_path, SteeringSweepResult)
    marked = dataclasses.replace(result, significant_windows=[[0, 2]], verdict="made up")  # the shading draws
    assert_saved(marked, tmp_path / "marked", SteeringSweepResult)
    zero = steering_sweep(model, processor, samples[:2], batch_size=1, window=5, scale=0.0, max_new_tokens=2,
                          progress=False)  # adding nothing (and a random vector of norm 0) is the baseline
    assert zero.windows == [[0, 4]]
    assert all(r[c][0]["response"] == r["baseline"]["response"] for r in zero.samples for c in ("steered", "random",
                                                                                                 "mismatched"))
    assert [r["mismatched_with"] for r in zero.samples] == ["pills", "knife"]  # a batch of one has a partner too


def test_steering_reaches_only_later_blocks(llava, samples):
    """Layer N (the final norm's output) feeds no block: steering there leaves every answer as it was, while a
    window below it changes some; a window shifted by one layer would break one of the two."""
    model, processor = llava
    result = steering_sweep(model, processor, samples[:3], batch_size=3, window=4, max_new_tokens=4, progress=False,
                            controls=())
    assert result.windows == [[0, 3], [4, 4]]
    rows = result.samples
    assert all(r["steered"][1]["response"] == r["baseline"]["response"] for r in rows)
    assert any(r["steered"][0]["response"] != r["baseline"]["response"] for r in rows)
