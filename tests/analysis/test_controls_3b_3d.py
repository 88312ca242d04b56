"""The controls of 3B (a span of as many non-toxic tokens) and 3D (mismatched image-text pairs): the choices
themselves (exact checks on masks and pairs), their measurements against slow eager / output_hidden_states
computations on one unpadded sample at a time, and the paired contrasts and verdicts built on them."""

import copy
import dataclasses
import random

import pytest
import torch

from tests.analysis.test_forward_analyses import assert_saved, eager, one_by_one
from tga_fast.analysis import AttentionShareResult, ModalitySimilarityResult, attention_share, modality_similarity
from tga_fast.analysis.controls import (
    columns_above,
    control_positions,
    describe_runs,
    batch_mismatch_partners,
    paired_contrast,
)
from tga_fast.models import resolve
from tga_fast.stats import holm

FP32_FLOOR = 8 * torch.finfo(torch.float32).eps  # see test_control_share_agrees_with_eager_attention


# ---- 3B: the control span -------------------------------------------------------------------------------------


def test_control_positions_prefer_a_run_else_scatter_and_are_seeded():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        candidates = torch.rand(24, generator=generator) < 0.6
        size = int(torch.randint(1, 8, (1,), generator=generator))
        chosen = control_positions(candidates, size, key=f"s{trial}", seed=3)
        if int(candidates.sum()) < size:
            assert chosen is None
            continue
        assert len(chosen) == len(set(chosen)) == size and chosen == sorted(chosen)
        assert candidates[chosen].all()
        has_run = any(bool(candidates[s : s + size].all()) for s in range(len(candidates) - size + 1))
        assert (chosen == list(range(chosen[0], chosen[0] + size))) == has_run  # a run whenever one fits
        assert control_positions(candidates, size, key=f"s{trial}", seed=3) == chosen  # deterministic
    candidates = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)  # no run of 3: scattered
    picks = {tuple(control_positions(candidates, 3, key="x", seed=s)) for s in range(20)}
    assert all(set(p) <= {0, 2, 4, 6, 8} for p in picks) and len(picks) > 1  # the seed matters
    assert control_positions(candidates, 6, key="x") is None and control_positions(candidates, 0, key="x") is None
    with pytest.raises(ValueError, match="bool"):
        control_positions(candidates.long(), 2, key="x")


def test_control_span_is_as_long_as_the_toxic_set_and_avoids_it(llava, samples):
    """Exact checks of every control span against the unpadded encoding of its prompt; the same spans whatever
    the batching (padding), other spans under other seeds."""
    model, processor = llava
    result = attention_share(model, processor, samples, batch_size=3, progress=False)
    toxic = [s for s in samples if s.toxic and s.toxic_ranges]
    assert [row["id"] for row in result.samples] == [s.id for s in toxic] and not result.no_control
    for sample, row, encoded in zip(toxic, result.samples, one_by_one(processor, model,
                                                                       [s.to_prompt("text") for s in toxic])):
        marked = encoded.marked[0]
        seq_len = marked.shape[0]
        control = torch.zeros(seq_len, dtype=torch.bool)
        control[row["control_positions"]] = True
        content = encoded.spans.mask(seq_len, "text", "question")[0]
        assert int(control.sum()) == len(row["control_positions"]) == int(marked.sum()) == row["toxic_tokens"]
        assert not (control & marked).any() and not control[seq_len - 1]
        assert (control & ~content).sum() == 0  # only the request's own words
        candidates = content & ~marked
        candidates[seq_len - 1] = False
        # the draw is a function of the prompt's own candidates, the sample id and the seed only
        assert row["control_positions"] == control_positions(candidates, int(marked.sum()), key=sample.id, seed=0)
        assert row["cluster"] == sample.text  # concept absent: the text is the cluster
    one_at_a_time = attention_share(model, processor, samples, batch_size=1, progress=False)
    assert [r["control_positions"] for r in one_at_a_time.samples] == [r["control_positions"] for r in result.samples]
    reseeded = [attention_share(model, processor, samples, batch_size=4, progress=False, seed=seed)
                for seed in range(1, 5)]
    dog = [r for run in reseeded for r in run.samples if r["id"] == "dog"]  # one toxic token: many choices
    assert len({tuple(r["control_positions"]) for r in dog}) > 1
    assert all(run.settings["seed"] == seed for seed, run in enumerate(reseeded, 1))


def test_control_share_agrees_with_eager_attention(llava, samples):
    """The control share (second probe, padded batch) against eager ``output_attentions`` on each unpadded prompt.

    Error budget: the fp32 probe's error against a float64 eager forward is at most twice the fp32 eager forward's
    own error plus a floor of 8 fp32 ulps at 1.0 (the share is a sum of at most 1.0 over a softmax row; SDPA, the
    op and the padded batch accumulate it in other orders over 4 blocks). The toxic share is held to the same budget.
    """
    model, processor = llava
    result = attention_share(model, processor, samples, batch_size=3, progress=False)
    toxic = [s for s in samples if s.toxic and s.toxic_ranges]
    double = copy.deepcopy(model).double()
    for sample, row, encoded in zip(toxic, result.samples,
                                    one_by_one(processor, model, [s.to_prompt("text") for s in toxic])):
        control = torch.tensor(row["control_positions"])
        marked = encoded.marked[0]
        shares = []
        for reference in (model, double):
            with torch.no_grad(), eager(reference):
                attentions = reference(**encoded.batch, output_attentions=True).attentions  # N x [1, H, T, T]
            shares.append(torch.stack([torch.stack([a[0, :, -1, control].sum(-1).mean(),
                                                    a[0, :, -1, marked].sum(-1).mean()]) for a in attentions]))
        fp32, fp64 = shares[0].double(), shares[1]  # [N, 2]: control, toxic
        got = torch.tensor([row["control_share"], row["share"]], dtype=torch.float64).T
        budget = 2 * (fp32 - fp64).abs() + FP32_FLOOR
        assert ((got - fp64).abs() <= budget).all(), (sample.id, (got - fp64).abs().max())


def test_a_prompt_without_enough_other_words_has_no_control(llava, samples):
    """Toxic words covering the whole text and a one-word question: fewer non-toxic candidates than |C|."""
    model, processor = llava
    knife = next(s for s in samples if s.id == "knife")
    covered = dataclasses.replace(knife, id="covered", toxic_ranges=((0, len(knife.text)),), prompt="why?")
    result = attention_share(model, processor, [covered, *samples], batch_size=2, progress=False)
    row = result.samples[0]
    assert row["id"] == "covered" and row["control_positions"] is None and row["control_share"] is None
    assert [n["id"] for n in result.no_control] == ["covered"] and "fewer than" in result.no_control[0]["reason"]
    assert result.contrast["n_x"] == len(result.samples) - 1  # the contrast pairs only the others
    alone = attention_share(model, processor, [covered], progress=False)
    assert alone.contrast is None and alone.control_share_mean is None and alone.blocks_above_control == []
    assert alone.verdict.startswith("no verdict")
    assert all(v is not None for v in alone.share_mean)


def test_attention_share_contrast_is_toxic_minus_control(llava, samples, tmp_path):
    model, processor = llava
    result = attention_share(model, processor, samples, batch_size=2, progress=False)
    share = torch.tensor([r["share"] for r in result.samples], dtype=torch.float64)
    control = torch.tensor([r["control_share"] for r in result.samples], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(result.contrast["mean"], dtype=torch.float64), (share - control).mean(0))
    torch.testing.assert_close(torch.tensor(result.control_share_mean, dtype=torch.float64), control.mean(0))
    assert result.contrast["p_holm"] == holm(result.contrast["p_value"])
    assert min(result.contrast["p_value"]) >= result.contrast["p_floor"]
    assert result.contrast["p_floor"] == 0.5 ** 4  # four prompts of four concepts
    assert result.blocks_above_control == columns_above(result.contrast, result.blocks)
    where = describe_runs(result.blocks_above_control) or "no block"
    assert where in result.verdict and "Holm" in result.verdict
    assert_saved(result, tmp_path, AttentionShareResult)


# ---- the contrast both analyses report ------------------------------------------------------------------------


def test_paired_contrast_finds_a_real_difference_and_nothing_in_none():
    generator = torch.Generator().manual_seed(1)
    control = torch.rand(30, 4, generator=generator)
    clusters = [f"c{i // 2}" for i in range(30)]  # 15 clusters of two
    noise = 0.01 * torch.randn(30, 4, generator=generator)
    # All attention on the toxic span at blocks 2-3 (share 1), the control's level elsewhere.
    toxic = torch.where(torch.tensor([False, True, True, False]), torch.ones(30, 4), control + noise)
    contrast = paired_contrast(toxic.tolist(), control.tolist(), clusters, cluster_field="concept")
    assert columns_above(contrast, [1, 2, 3, 4]) == [2, 3]
    assert contrast["ci_low"][1] > 0 and contrast["ci_low"][2] > 0 and contrast["clusters_x"] == 15
    same = paired_contrast(control.tolist(), control.tolist(), clusters, cluster_field="concept")
    assert same["mean"] == [0.0] * 4 and same["ci_low"] == same["ci_high"] == [0.0] * 4
    assert same["p_holm"] == [1.0] * 4 and columns_above(same, [1, 2, 3, 4]) == []
    # Three concepts that all agree: the bootstrap alone says p = 1/2001; no sign test could say below 1/8.
    few = paired_contrast([[1.0], [1.0], [1.0]], [[0.0], [0.0], [0.0]], ["a", "b", "c"], cluster_field="concept")
    assert few["p_value"] == [0.125] and few["p_floor"] == 0.125 and columns_above(few, [1]) == []


def test_describe_runs():
    assert describe_runs([0, 1, 2, 4, 6, 7]) == "0-2, 4 and 6-7"
    assert describe_runs([3]) == "3" and describe_runs([]) == "" and describe_runs([5, 1]) == "1 and 5"


# ---- 3D: mismatched pairs -------------------------------------------------------------------------------------


def test_mismatch_partners_are_a_derangement_with_fewest_same_concept_pairs():
    rng = random.Random(0)
    for trial in range(300):
        b = rng.randint(2, 9)
        labels = [rng.choice("abcd"[: rng.randint(1, 4)]) for _ in range(b)]
        carried = [rng.choice("abcde") for _ in range(rng.randint(0, 3))]
        partners = batch_mismatch_partners(labels, carried, key=str(trial), seed=7)
        assert partners == batch_mismatch_partners(labels, carried, key=str(trial), seed=7)
        assert all(p is not None and p != i for i, p in enumerate(partners))
        assert len(set(partners)) == b  # every text (of the batch or carried) goes to one image at most
        pool = labels + carried
        same = sum(pool[p] == labels[i] for i, p in enumerate(partners))
        largest = max(labels.count(label) for label in labels)
        fewest = max(0, 2 * largest - b)  # the fewest possible inside the batch (carried texts may do better)
        assert same == fewest if not carried else same <= fewest
    assert batch_mismatch_partners(["a"], key="k") == [None]
    assert batch_mismatch_partners(["a"], ["a", "b", "a"], key="k") == [2]  # the carried text of another concept
    assert batch_mismatch_partners(["a"], ["a"], key="k") == [1]  # of the same concept rather than none
    assert batch_mismatch_partners(["a", "a"], key="k") == [1, 0]  # one concept: still never its own text


@pytest.fixture
def concept_samples(samples):
    """The five samples in three concepts: knife and blade one, pills and cup another, the dog its own."""
    concepts = {"knife": "blades", "blade": "blades", "pills": "containers", "cup": "containers", "dog": "dog"}
    return [dataclasses.replace(s, concept=concepts[s.id]) for s in samples]


def slow_pooled(model, processor, samples):
    """``(image [n, N+1, D], text [n, N+1, D])``: each sample's pooled image and text states from
    output_hidden_states on its unpadded prompts."""
    image_token_id = resolve(model).image_token_id
    images, texts = [], []
    with torch.no_grad():
        image_runs = one_by_one(processor, model, [s.to_prompt("image") for s in samples],
                                [s.load_image() for s in samples])
        text_runs = one_by_one(processor, model, [s.to_prompt("text") for s in samples])
        for image_encoded, text_encoded in zip(image_runs, text_runs):
            is_image = image_encoded.batch["input_ids"][0] == image_token_id
            start, end = text_encoded.spans["text"][0].tolist()
            image_states = model(**image_encoded.batch, output_hidden_states=True).hidden_states
            text_states = model(**text_encoded.batch, output_hidden_states=True).hidden_states
            images.append(torch.stack([h[0, is_image].mean(0) for h in image_states]))
            texts.append(torch.stack([h[0, start:end].mean(0) for h in text_states]))
    return torch.stack(images), torch.stack(texts)


@pytest.mark.parametrize("batch_size", [5, 2, 1])
def test_mismatched_cosine_agrees_with_output_hidden_states(llava, concept_samples, batch_size, tmp_path):
    """Batches of 5 (one batch: every pair can cross concepts), 2 and 1 (texts carried from the previous batch, the
    first image waiting for the second batch)."""
    from tests.retrieval.conftest import build_tiny_clip
    from tga_fast.retrieval.encoders import ImageEncoder, TextEncoder

    model, processor = llava
    clip = build_tiny_clip(tmp_path / "clip") if batch_size == 2 else None
    result = modality_similarity(model, processor, concept_samples, batch_size=batch_size, clip=clip,
                                 progress=False)
    image, text = slow_pooled(model, processor, concept_samples)
    index = {s.id: i for i, s in enumerate(concept_samples)}
    partner = [index[row["mismatched_with"]] for row in result.samples]
    assert all(p != i for i, p in enumerate(partner)) and not result.unpaired
    clusters = [row["cluster"] for row in result.samples]
    assert clusters == [s.concept for s in concept_samples]
    if batch_size == 5:
        assert all(clusters[p] != clusters[i] for i, p in enumerate(partner))
        assert len(set(partner)) == 5  # a derangement of the batch
    expected = torch.nn.functional.cosine_similarity(image, text[partner], dim=-1)  # [n, N+1]
    got = torch.tensor([row["mismatched_cosine"] for row in result.samples])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    matched = torch.tensor([row["cosine"] for row in result.samples])
    torch.testing.assert_close(matched, torch.nn.functional.cosine_similarity(image, text, dim=-1),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(result.contrast["mean"]), (matched - got).mean(0).float(),
                               rtol=1e-5, atol=1e-6)
    assert result.layers_above_mismatched == columns_above(result.contrast, result.layers)
    assert "Holm" in result.verdict and result.settings["seed"] == 0
    if clip is not None:
        image_embeddings = ImageEncoder(clip, progress=False).encode([s.load_image() for s in concept_samples])
        text_embeddings = TextEncoder(clip, progress=False).encode([s.text for s in concept_samples])
        clip_expected = (image_embeddings * text_embeddings[partner]).sum(-1)
        clip_got = torch.tensor([row["clip_mismatched_cosine"] for row in result.samples])
        torch.testing.assert_close(clip_got, clip_expected, rtol=1e-4, atol=1e-5)
        assert result.clip_mismatched_cosine_mean == pytest.approx(float(clip_expected.mean()), abs=1e-5)
        assert_saved(result, tmp_path, ModalitySimilarityResult)


def test_one_pair_alone_has_no_mismatch(llava, samples, tmp_path):
    model, processor = llava
    result = modality_similarity(model, processor, samples[:1], batch_size=1, progress=False)
    row = result.samples[0]
    assert row["mismatched_with"] is None and row["mismatched_cosine"] is None
    assert result.contrast is None and result.mismatched_cosine_mean is None and result.layers_above_mismatched == []
    assert [u["id"] for u in result.unpaired] == [samples[0].id]
    assert result.verdict.startswith("no verdict")
    assert_saved(result, tmp_path, ModalitySimilarityResult)
