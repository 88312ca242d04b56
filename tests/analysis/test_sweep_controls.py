"""The controls of the knockout and steering sweeps (3C, 3E) and their paired tests: the control tokens, the random
and mismatched vectors, steering at layer 0, McNemar + Holm per window and the verdicts, on a tiny random LLaVA
and on hand-built verdicts."""

import dataclasses

import pytest
import torch
from scipy.stats import binomtest

from tests.analysis.test_sweeps import masked_blocks
from tests.models.test_interventions import explicit_mask
from tga_fast.analysis import steering_sweep
from tga_fast.analysis.batching import encode
from tga_fast.analysis.knockout_sweep_3c import COMPARISONS as KNOCKOUT_COMPARISONS
from tga_fast.analysis.knockout_sweep_3c import _significant, knockout_verdict
from tga_fast.analysis.steering_sweep_3e import _text_states, control_vectors, steering_verdict
from tga_fast.analysis.sweep_controls import (
    compare_windows,
    control_token_mask,
    run_mismatch_partners,
    random_like,
    window_comparisons,
)
from tga_fast.evaluation.judges import LogitJudge
from tga_fast.models import knockout, resolve, steer
from tga_fast.models.spans import Spans

OPTIONS = {"with_retrieved": False, "system_prompt": None}


def toxic(samples):
    return [s for s in samples if s.toxic]


def text_batch(model, processor, batch):
    return encode(model, processor, [s.to_prompt("text") for s in batch])


# --- 3C: the control tokens ---------------------------------------------------------------------------------------


def test_control_tokens_match_the_toxic_count_avoid_toxic_and_last_and_are_seeded(llava, samples):
    model, processor = llava
    batch = toxic(samples)
    ids = [s.id for s in batch]
    encoded = text_batch(model, processor, batch)  # left-padded: rows of different lengths
    mask, positions = control_token_mask(encoded, ids, seed=0)
    seq_len = mask.shape[1]
    real = encoded.batch["attention_mask"].bool()
    assert (~real).any()  # the batch is padded, so batch invariance below means something
    user = encoded.spans.select("text", "question").mask(seq_len)
    rows = torch.arange(len(batch))
    assert torch.equal(mask.sum(1), encoded.marked.sum(1))  # exactly as many as the toxic tokens
    assert encoded.marked.sum(1).min() >= 1
    assert not (mask & encoded.marked).any()  # never a toxic token
    assert not mask[rows, encoded.last_positions].any()  # never the last prompt position
    assert not (mask & ~user).any()  # only text and question tokens
    first = real.int().argmax(1)
    rebuilt = torch.zeros_like(mask)
    for b, chosen in enumerate(positions):
        rebuilt[b, torch.tensor(chosen, dtype=torch.long) + first[b]] = True
    assert torch.equal(rebuilt, mask)  # positions are counted from the prompt's first token
    again, same = control_token_mask(encoded, ids, seed=0)
    assert torch.equal(again, mask) and same == positions  # deterministic
    for i, sample in enumerate(batch):  # alone (no padding) the sample gets the same tokens
        alone, alone_positions = control_token_mask(text_batch(model, processor, [sample]), [sample.id], seed=0)
        assert alone_positions == [positions[i]]
    reversed_ids = list(reversed(ids))  # the draw follows the id, not the row
    _, swapped = control_token_mask(text_batch(model, processor, batch[::-1]), reversed_ids, seed=0)
    assert swapped == positions[::-1]
    others = [control_token_mask(encoded, ids, seed=s)[1] for s in range(1, 6)]
    assert any(o != positions for o in others)  # the seed matters


def test_control_tokens_take_every_candidate_when_too_few(llava, samples):
    model, processor = llava
    sample = toxic(samples)[0]
    encoded = text_batch(model, processor, [sample])
    candidates = encoded.spans.select("text", "question").mask(encoded.marked.shape[1]) & ~encoded.marked
    candidates[0, encoded.last_positions[0]] = False
    marked = encoded.marked | candidates  # every candidate but one marked: more toxic tokens than candidates
    left = candidates[0].nonzero()[0, 0]
    marked[0, left] = False
    mask, positions = control_token_mask(dataclasses.replace(encoded, marked=marked), [sample.id], seed=0)
    assert mask.nonzero()[:, 1].tolist() == [left] and marked.sum() > 1
    # a question span that reaches the last prompt position (a template with nothing after the question): the last
    # position is never a candidate, so a question of that one token leaves none
    last = int(encoded.last_positions[0])
    names = encoded.spans.names
    spans = encoded.spans.tensor.clone()
    spans[0, names.index("text")] = torch.tensor([0, 0])
    spans[0, names.index("question")] = torch.tensor([last, last + 1])
    cut = dataclasses.replace(encoded, spans=Spans(spans, names))
    assert not control_token_mask(cut, [sample.id], seed=0)[0].any()


def test_control_knockout_blocks_exactly_the_control_keys(llava, samples):
    """The logits under ``knockout(model, blocks, control mask)`` equal eager attention under an explicit additive
    mask that hides those keys from every later query, and differ from the plain logits."""
    model, processor = llava
    batch = toxic(samples)[:3]
    encoded = text_batch(model, processor, batch)
    mask, _ = control_token_mask(encoded, [s.id for s in batch], seed=0)
    blocks = range(1, resolve(model).num_layers + 1)
    attention = encoded.batch["attention_mask"]
    inputs = {"input_ids": encoded.batch["input_ids"], "attention_mask": attention}
    with torch.no_grad():
        with knockout(model, blocks, mask):
            knocked = model(**inputs).logits
        with masked_blocks(model, blocks, lambda length: explicit_mask(attention, mask)):
            expected = model(**inputs).logits
        plain = model(**inputs).logits
    real = attention.bool()
    torch.testing.assert_close(knocked[real], expected[real], rtol=1e-4, atol=1e-5)
    assert (knocked[real] - plain[real]).abs().max() > 1e-3


# --- 3E: the random and mismatched vectors, layer 0 -------------------------------------------------------------


def test_random_vectors_keep_each_norm_along_one_seeded_direction_per_sample():
    states = torch.randn(5, 3, 16) * torch.arange(1, 6).view(5, 1, 1)  # [L, b, D], norms differ by layer
    ids = ["a", "b", "c"]
    random = random_like(states, ids, seed=0)
    assert random.shape == states.shape and random.dtype == states.dtype
    torch.testing.assert_close(random.norm(dim=-1), states.norm(dim=-1), rtol=1e-6, atol=0)
    unit = random / random.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(unit, unit[:1].expand_as(unit))  # one direction per sample over the layers
    assert (unit[0, 0] @ unit[0, 1]).abs() < 0.99  # but not one for all samples
    assert torch.equal(random_like(states, ids, seed=0), random)
    assert not torch.equal(random_like(states, ids, seed=1), random)
    flipped = random_like(states.flip(1), ids[::-1], seed=0)  # the direction follows the id, not the column
    torch.testing.assert_close(flipped.flip(1), random)
    assert (unit[:, :, None] @ (states / states.norm(dim=-1, keepdim=True))[..., None]).abs().max() < 0.99


def test_mismatch_partners_roll_to_another_cluster():
    assert run_mismatch_partners(["a", "a", "b", "c", "c"]) == [2, 2, 3, 0, 0]
    assert run_mismatch_partners(["a", "b"]) == [1, 0]
    assert run_mismatch_partners(["a", "b", "b", "a"]) == [1, 3, 3, 1]  # past the end it wraps around
    assert run_mismatch_partners(["a", "a", "a"]) == [1, 2, 0]  # no other label: another sample all the same
    assert run_mismatch_partners(["a"]) == [None]


def test_control_vectors_are_the_text_states_their_norms_and_another_texts_states(llava, samples):
    model, processor = llava
    batch = toxic(samples)[:2]
    partners = [toxic(samples)[2], batch[0]]
    layers = [0, 2, 4]
    vectors = control_vectors(model, processor, batch, partners, layers, OPTIONS, scale=2.0, seed=0)
    own = _text_states(model, processor, batch, layers, OPTIONS) * 2.0
    other = _text_states(model, processor, partners, layers, OPTIONS) * 2.0
    torch.testing.assert_close(vectors["steered"], own, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vectors["mismatched"], other, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vectors["random"].norm(dim=-1), vectors["steered"].norm(dim=-1), rtol=1e-6, atol=0)
    assert set(control_vectors(model, processor, batch, [], layers, OPTIONS, scale=1.0, seed=0)) == {"steered",
                                                                                                      "random"}


def test_steering_layer_0_is_the_language_models_input(llava, samples):
    """Steering HF layer 0 equals running the language model on input embeddings edited in the image rows: block 1
    reads it, so the answer's logits change."""
    model, processor = llava
    sample = toxic(samples)[0]
    encoded = encode(model, processor, [sample.to_prompt("image")], [sample.load_image()])
    image = encoded.spans.select("image")
    start, end = image.tensor[0, 0].tolist()
    vector = torch.randn(1, model.config.text_config.hidden_size)
    with torch.no_grad():
        plain = model(**encoded.batch, output_hidden_states=True)
        with steer(model, [0], image, vector):
            steered = model(**encoded.batch).logits
        embeddings = plain.hidden_states[0].clone()
        embeddings[0, start:end] += vector[0]
        hidden = model.model.language_model(inputs_embeds=embeddings,
                                            attention_mask=encoded.batch["attention_mask"]).last_hidden_state
        expected = model.lm_head(hidden)
    torch.testing.assert_close(steered, expected, rtol=1e-4, atol=1e-5)
    assert (steered[0, -1] - plain.logits[0, -1]).abs().max() > 1e-3


def test_the_sweep_steers_layer_0(llava, samples):
    """Windows of one layer from 0: the window [0, 0] moves every refusal score, the window [N, N] none (a sweep
    that skipped layer 0, or shifted the windows by one, fails one of the two)."""
    model, processor = llava
    result = steering_sweep(model, processor, toxic(samples)[:2], batch_size=2, window=1, controls=(),
                            judge=LogitJudge(processor), progress=False)
    last = resolve(model).num_layers
    assert result.windows == [[k, k] for k in range(last + 1)]
    assert result.random == result.mismatched == [] and all(r["mismatched_with"] is None for r in result.samples)
    for row in result.samples:
        assert row["steered"][0]["score"] != pytest.approx(row["baseline"]["score"], rel=1e-4, abs=1e-7)
        assert row["steered"][last]["score"] == pytest.approx(row["baseline"]["score"], rel=1e-5, abs=1e-7)


# --- the paired tests per window ----------------------------------------------------------------------------------


def test_compare_windows_is_mcnemar_with_holm_and_positive_for_the_claimed_effect():
    n = 12
    clusters = [i // 2 for i in range(n)]  # pairs of samples share a cluster
    higher = [[True] * n, [True] * 6 + [False] * 6, [True] * 7 + [False] * 5]
    lower = [[False] * n, [True] * 6 + [False] * 6, [False] * 2 + [True] * 5 + [False] * 5]
    compared = compare_windows(higher, lower, clusters, cluster_field="concept", difference_is="control - knockout")
    raw = [binomtest(12, 12, 0.5).pvalue, 1.0, binomtest(2, 2, 0.5).pvalue]
    assert [c["mcnemar"]["p_value"] for c in compared] == pytest.approx(raw)
    assert [c["mcnemar"]["a_only"] for c in compared] == [12, 0, 2]
    # Holm by hand: sorted p0 < p2 < p1, multipliers 3, 2, 1, running maximum
    holm = [3 * raw[0], max(3 * raw[0], 2 * raw[2], 1 * raw[1]), max(3 * raw[0], 2 * raw[2])]
    assert [c["p_holm"] for c in compared] == pytest.approx([min(1.0, p) for p in holm])
    assert [c["difference"]["value"] for c in compared] == pytest.approx([1.0, 0.0, 2 / 12])
    assert [c["significant"] for c in compared] == [True, False, False]
    assert compared[0]["difference"]["clusters"] == 6 and "concept" in compared[0]["difference"]["method"]
    assert all(c["difference_is"] == "control - knockout" for c in compared)
    flipped = compare_windows(lower, higher, clusters, cluster_field="concept", difference_is="knockout - control")
    assert flipped[0]["difference"]["value"] == -1.0 and not flipped[0]["significant"]  # same p, wrong direction
    assert flipped[0]["p_holm"] == pytest.approx(compared[0]["p_holm"])
    baseline = [True] * n  # one list: the same baseline in every window
    against = compare_windows(baseline, lower, clusters, cluster_field="concept", difference_is="baseline - knockout")
    assert len(against) == 3 and against[1]["difference"]["value"] == pytest.approx(0.5)


def test_a_knockout_window_needs_the_control_and_the_baseline():
    n = 12
    clusters = list(range(n))
    verdicts = {"baseline": [True] * n,
                "knockout": [[False] * n, [False] * n, [True] * n],
                "control": [[True] * n, [False] * n, [True] * n]}
    comparisons = window_comparisons(verdicts, KNOCKOUT_COMPARISONS, 3, clusters, "id")
    assert set(comparisons[0]) == {"knockout_vs_control", "knockout_vs_baseline", "control_vs_baseline"}
    assert comparisons[0]["knockout_vs_control"]["difference_is"] == "control - knockout"
    assert comparisons[0]["knockout_vs_baseline"]["difference_is"] == "baseline - knockout"
    # window 1: below the baseline but no lower than the control; window 2: no change
    assert _significant(comparisons, ("knockout", "control")) == [0]
    assert _significant(comparisons, ("knockout",)) == [0, 1]
    assert _significant(comparisons, ("control", "skip")) == []


def rate(value):
    return {"rate": value}


def test_verdicts_name_the_windows_and_the_rates_or_say_none():
    windows = [[1, 2], [3, 4]]
    rates = {"baseline": rate(1.0), "knockout": [rate(0.1), rate(0.9)], "control": [rate(0.95), rate(1.0)]}
    found = knockout_verdict(windows, [0], rates, ("knockout", "control", "skip"))
    assert found.startswith("knocking out the toxic tokens lowers DSR beyond the control")
    assert "only in blocks 1-2 (DSR 100% → 10% vs control 95%)" in found and "McNemar, Holm" in found
    assert "in no window" in knockout_verdict(windows, [], rates, ("knockout", "control"))
    assert "beyond the control" not in knockout_verdict(windows, [], rates, ("knockout",))
    steering = {"baseline": rate(0.1), "steered": [rate(0.8), rate(0.1)], "random": [rate(0.15), rate(0.1)],
                "mismatched": [rate(0.2), rate(0.1)]}
    found = steering_verdict([[0, 1], [2, 2]], [0], steering, ("random", "mismatched"))
    assert found.startswith("adding the text's state to the image tokens raises DSR beyond a random vector of the "
                            "same norm and a mismatched text's state only at layers 0-1 (DSR 10% → 80% vs random "
                            "15%, mismatched 20%)")
    assert "in no window" in steering_verdict([[0, 1], [2, 2]], [], steering, ("random",))
