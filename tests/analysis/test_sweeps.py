"""knockout_sweep and steering_sweep on a tiny random LLaVA: windows, rates that match the stored verdicts, JSON
round trip, PNG; the interventions reach the generation (knockout over every block agrees with a slow greedy
decode under an explicit additive mask, skipping every block with decoding from the embeddings)."""

import pytest
import torch

from tga_fast.analysis import KnockoutSweepResult, SteeringSweepResult, knockout_sweep, layer_windows, steering_sweep
from tga_fast.analysis.steering_sweep import _text_states
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
    out = result.save(tmp_path / result.analysis)
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cls.from_json(out / "result.json") == cls.from_json(result.to_json())
    assert cls.from_json(out / "result.json").to_json() == result.to_json()


def test_layer_windows():
    assert layer_windows(12, 5) == [[1, 5], [6, 10], [11, 12]]
    assert layer_windows(4, 2) == [[1, 2], [3, 4]]
    assert layer_windows(32, 5)[-1] == [31, 32]
    with pytest.raises(ValueError, match="window"):
        layer_windows(4, 0)


def test_knockout_sweep_end_to_end(llava, samples, tmp_path):
    model, processor = llava
    result = knockout_sweep(model, processor, samples, batch_size=3, window=2, max_new_tokens=4, judge=judge,
                            progress=False)
    assert result.windows == [[1, 2], [3, 4]]
    assert len(result.knockout) == len(result.skip) == 2
    assert [s["id"] for s in result.samples] == ["knife", "pills", "dog", "blade"]
    assert result.skipped == [{"id": "cup", "reason": "benign control (toxic=false)"}]
    rows = result.samples
    assert all(r["baseline"]["verdict"] == judge([r["baseline"]["response"]])[0] for r in rows)
    assert_rate(result.baseline, [r["baseline"]["verdict"] for r in rows])
    for variant in ("knockout", "skip"):
        for i, rate in enumerate(getattr(result, variant)):
            assert_rate(rate, [r[variant][i]["verdict"] for r in rows])
        # the intervention reaches the generation: some answer changes in some window
        assert any(r[variant][i]["response"] != r["baseline"]["response"] for r in rows for i in range(2))
    assert set(result.scenes["baseline"]) == {"violence", "drugs"} and len(result.scenes["skip"]) == 2
    assert "USER:" in rows[0]["prompt"] and "red knife" in rows[0]["prompt"]
    assert_saved(result, tmp_path, KnockoutSweepResult)


def greedy(model, tokenizer, input_ids, steps, mask_for):
    """Greedy decoding without a cache; ``mask_for(length)`` gives the 4D additive mask (or None)."""
    ids = input_ids
    for _ in range(steps):
        mask = mask_for(ids.shape[1])
        kwargs = {"attention_mask": mask} if mask is not None else {}
        token = model(input_ids=ids, use_cache=False, **kwargs).logits[0, -1].argmax()
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def test_whole_model_windows_agree_with_a_slow_decode(llava, samples):
    model, processor = llava
    tokenizer = processor.tokenizer
    sample = samples[0]
    result = knockout_sweep(model, processor, [sample], batch_size=1, window=resolve(model).num_layers,
                            max_new_tokens=4, progress=False)
    encoded = encode_prompts(processor, [sample.to_prompt("text")])
    blocked = encoded.marked[0]

    def knockout_mask(length):  # causal, and no later query sees a blocked key
        positions = torch.arange(length)
        keys_blocked = torch.nn.functional.pad(blocked, (0, length - blocked.shape[0]))
        earlier = positions[None, :] < positions[:, None]  # [query, key]
        visible = (positions[None, :] <= positions[:, None]) & ~(keys_blocked[None, :] & earlier)
        return torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]

    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            expected_knockout = greedy(model, tokenizer, encoded.batch["input_ids"], 4, knockout_mask)
    finally:
        model.set_attn_implementation("sdpa")
    assert result.samples[0]["knockout"][0]["response"] == expected_knockout

    parts = resolve(model)  # every block skipped: the logits are lm_head(final_norm(embeddings))
    ids = encoded.batch["input_ids"]
    with torch.no_grad():
        for _ in range(4):
            token = parts.lm_head(parts.final_norm(parts.input_embeddings(ids)))[0, -1].argmax()
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    expected_skip = tokenizer.decode(ids[0, encoded.batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
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
    result = steering_sweep(model, processor, samples, batch_size=3, window=2, max_new_tokens=4, judge=judge,
                            progress=False)
    assert result.windows == [[1, 2], [3, 4]] and result.scale == 1.0
    rows = result.samples
    assert [r["id"] for r in rows] == ["knife", "pills", "dog", "blade"]
    assert_rate(result.baseline, [r["baseline"]["verdict"] for r in rows])
    for i, rate in enumerate(result.steered):
        assert_rate(rate, [r["steered"][i]["verdict"] for r in rows])
    assert any(r["steered"][i]["response"] != r["baseline"]["response"] for r in rows for i in range(2))
    assert "<image>" in rows[0]["prompt"]
    assert_saved(result, tmp_path, SteeringSweepResult)
    zero = steering_sweep(model, processor, samples[:2], batch_size=2, window=4, scale=0.0, max_new_tokens=4,
                          progress=False)  # adding nothing is the baseline
    assert all(r["steered"][0]["response"] == r["baseline"]["response"] for r in zero.samples)
