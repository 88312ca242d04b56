"""safety_layers, attention_share and modality_similarity on a tiny random LLaVA: shapes, ranges, JSON round trip,
PNG, and agreement with a slow computation of the same quantities (output_hidden_states / output_attentions with
eager attention, one unpadded sample at a time)."""

import contextlib
import json

import pytest
import torch

from tga_fast.analysis import (
    AttentionShareResult,
    ModalitySimilarityResult,
    SafetyLayersResult,
    attention_share,
    locate_safety_layers,
    modality_similarity,
    safety_layers,
)
from tga_fast.models import resolve
from tga_fast.models.prompts import encode_prompts

TOXIC_WITH_MARKS = ["knife", "pills", "dog", "blade"]  # conftest ROWS: "cup" is a benign control


def assert_saved(result, tmp_path, cls):
    out = result.save(tmp_path / result.kind)
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(row)["id"] for row in rows] == [row["id"] for row in result.samples]
    again = cls.load(out)
    assert again.to_json() == result.to_json()
    assert again == cls.from_json(result.to_json()) == result


def one_by_one(processor, model, prompts, images=None):
    """Each prompt encoded alone (no padding): the slow path's inputs."""
    image_token_id = resolve(model).image_token_id
    for i, prompt in enumerate(prompts):
        image = None if images is None else [images[i]]
        yield encode_prompts(processor, [prompt], image, image_token_id=image_token_id)


@contextlib.contextmanager
def eager(model):
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation("sdpa")


@contextlib.contextmanager
def random_final_norm(model):
    """A final norm with random weights: a fresh model's are ones, and a ones-weight RMSNorm applied twice equals
    it applied once, so only a random weight lets the lens tests see a norm applied twice at layer N."""
    weight = resolve(model).final_norm.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(1.0 + 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)))
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def slow_lens(model, processor, samples, condition="text"):
    """``[N+1, n, V]`` softmax(lm_head(final_norm(h_k[-1]))) from output_hidden_states, norm not re-applied at N."""
    parts = resolve(model)
    rows = []
    images = [s.load_image() for s in samples] if condition == "image" else None
    with torch.no_grad():
        for encoded in one_by_one(processor, model, [s.to_prompt(condition) for s in samples], images):
            hidden = model(**encoded.batch, output_hidden_states=True).hidden_states
            rows.append(torch.stack([
                parts.lm_head(h[0, -1] if k == parts.num_layers else parts.final_norm(h[0, -1])).softmax(-1)
                for k, h in enumerate(hidden)
            ]))
    return torch.stack(rows, dim=1)


def test_safety_layers_agrees_with_output_hidden_states(llava, samples, tmp_path):
    """Toxic and benign prompts through the batched lens against the slow one: the mass on an explicit R per
    sample, the paper rule's layers with the paper's R (toxic samples), and the group means the contrast uses."""
    from tga_fast.evaluation.judges import PAPER_REFUSAL_STARTS, refusal_token_ids

    model, processor = llava
    toxic = [s for s in samples if s.toxic]
    with random_final_norm(model):
        lens = slow_lens(model, processor, samples)  # [N+1, n, V], every sample in order
        # Refusal ids that this random model does put on top somewhere, and the largest rise into layer 1 of the
        # first sample.
        refusal = sorted(set(lens[2].argmax(-1).tolist()) | set(lens[4, :1].argmax(-1).tolist())
                         | {int((lens[1, 0] - lens[0, 0]).argmax())})
        result = safety_layers(model, processor, samples, batch_size=3, refusal_ids=refusal, max_new_tokens=4,
                               progress=False)

    assert result.layers == list(range(resolve(model).num_layers + 1))
    assert [s["id"] for s in result.samples] == [s.id for s in samples] and result.skipped == []
    assert [s["toxic"] for s in result.samples] == [s.toxic for s in samples]
    assert result.refusal_source == "explicit" and result.refusal_ids == refusal
    mass = torch.tensor([s["refusal_mass"] for s in result.samples]).T  # [N+1, n]
    torch.testing.assert_close(mass, lens[..., refusal].sum(-1), rtol=1e-4, atol=1e-6)
    is_toxic = torch.tensor([s.toxic for s in samples])
    toxic_mean, benign_mean = mass[:, is_toxic].double().mean(1), mass[:, ~is_toxic].double().mean(1)
    as_double = dict(dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(result.toxic_mass_mean, **as_double), toxic_mean)
    torch.testing.assert_close(torch.tensor(result.benign_mass_mean, **as_double), benign_mean)
    torch.testing.assert_close(torch.tensor(result.contrast["mean"], **as_double), toxic_mean - benign_mean)
    paper = refusal_token_ids(processor.tokenizer, PAPER_REFUSAL_STARTS)
    assert result.paper_refusal_ids == paper
    start, end = locate_safety_layers(lens[:, is_toxic], paper, from_logits=False)
    assert result.starts == start.tolist() and result.ends == end.tolist()
    assert result.end_not_found == result.ends.count(-1) and len(result.starts) == len(toxic)
    assert 0.0 <= result.start_not_found_rate <= 1.0 and all(0 <= m <= 1 for m in result.refusal_mass_mean)
    assert result.refusal_tokens == [processor.tokenizer.decode([i]) for i in refusal]
    assert all(len(s["top_tokens"]) == len(result.layers) for s in result.samples)
    assert_saved(result, tmp_path, SafetyLayersResult)


def test_safety_layers_on_images_with_preset_refusal_ids(llava, samples):
    from tga_fast.evaluation.judges import refusal_token_ids

    model, processor = llava
    chosen = samples[2:]  # two toxic images and the benign one
    with random_final_norm(model):
        result = safety_layers(model, processor, chosen, batch_size=3, condition="image", refusal_source="preset",
                               max_new_tokens=4, progress=False)
        lens = slow_lens(model, processor, chosen, "image")
    assert result.refusal_ids == refusal_token_ids(processor.tokenizer) and result.refusal_source == "preset"
    assert result.settings["condition"] == "image" and len(result.samples) == 3
    mass = torch.tensor([s["refusal_mass"] for s in result.samples]).T
    torch.testing.assert_close(mass, lens[..., result.refusal_ids].sum(-1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="condition"):
        safety_layers(model, processor, samples, condition="audio", progress=False)
    with pytest.raises(ValueError, match="refusal_source"):
        safety_layers(model, processor, samples, refusal_source="guess", progress=False)


def test_attention_share_agrees_with_eager_output_attentions(llava, samples, tmp_path, monkeypatch):
    """Batches of 3 prompts of different lengths (padded) against one unpadded eager forward per prompt."""
    model, processor = llava
    monkeypatch.setattr(processor.tokenizer, "padding_side", "right")
    result = attention_share(model, processor, samples, batch_size=3, progress=False)
    assert processor.tokenizer.padding_side == "right"  # the analysis pads on the left, then restores the side
    toxic = [s for s in samples if s.toxic and s.toxic_ranges]
    assert [s["id"] for s in result.samples] == TOXIC_WITH_MARKS == [s.id for s in toxic]
    assert result.blocks == [1, 2, 3, 4]
    expected, expected_uniform = [], []
    with torch.no_grad(), eager(model):
        for encoded in one_by_one(processor, model, [s.to_prompt("text") for s in toxic]):
            attentions = model(**encoded.batch, output_attentions=True).attentions  # N x [1, H, T, T]
            marked = encoded.marked[0]
            expected.append(torch.stack([a[0, :, -1, marked].sum(-1) for a in attentions]))  # [N, H]
            expected_uniform.append(int(marked.sum()) / encoded.batch["input_ids"].shape[1])
    per_head = torch.tensor([s["share_per_head"] for s in result.samples]).transpose(0, 1)  # [N, n, H]
    torch.testing.assert_close(per_head, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-6)
    share = torch.tensor([s["share"] for s in result.samples])
    torch.testing.assert_close(share, per_head.mean(-1).T)
    torch.testing.assert_close(torch.tensor(result.share_mean, dtype=torch.float64), share.double().mean(0))
    assert result.uniform_share_mean == pytest.approx(sum(expected_uniform) / len(expected_uniform))
    assert all(lo <= m <= hi for lo, m, hi in zip(result.share_q10, result.share_mean, result.share_q90))
    assert all(s["toxic_tokens"] >= 1 for s in result.samples)
    assert_saved(result, tmp_path, AttentionShareResult)


def test_modality_similarity_agrees_with_output_hidden_states(llava, samples, tmp_path):
    from tests.retrieval.conftest import build_tiny_clip
    from tga_fast.retrieval.encoders import ImageEncoder, TextEncoder

    model, processor = llava
    clip = build_tiny_clip(tmp_path / "clip")
    result = modality_similarity(model, processor, samples, batch_size=2, clip=clip, progress=False)
    image_token_id = resolve(model).image_token_id
    images = [s.load_image() for s in samples]
    expected, text_lengths = [], []
    with torch.no_grad():
        image_runs = one_by_one(processor, model, [s.to_prompt("image") for s in samples], images)
        text_runs = one_by_one(processor, model, [s.to_prompt("text") for s in samples])
        for sample, image_encoded, text_encoded in zip(samples, image_runs, text_runs):
            is_image = image_encoded.batch["input_ids"][0] == image_token_id
            start, end = text_encoded.spans["text"][0].tolist()
            # the text span is the sample's text itself, and the text prompt carries no image at all
            ids = text_encoded.batch["input_ids"][0]
            assert processor.tokenizer.decode(ids[start:end]).strip() == sample.text
            assert "pixel_values" not in text_encoded.batch and not (ids == image_token_id).any()
            text_lengths.append(end - start)
            image_states = model(**image_encoded.batch, output_hidden_states=True).hidden_states
            text_states = model(**text_encoded.batch, output_hidden_states=True).hidden_states
            expected.append(torch.stack([
                torch.nn.functional.cosine_similarity(hi[0, is_image].mean(0), ht[0, start:end].mean(0), dim=0)
                for hi, ht in zip(image_states, text_states)
            ]))
    cosine = torch.tensor([s["cosine"] for s in result.samples])
    torch.testing.assert_close(cosine, torch.stack(expected), rtol=1e-4, atol=1e-5)
    assert result.layers == list(range(5)) and len(result.samples) == len(samples)  # benign pairs count too
    assert all(s["image_tokens"] == 16 for s in result.samples)
    assert [s["text_tokens"] for s in result.samples] == text_lengths
    clip_expected = (ImageEncoder(clip, progress=False).encode(images)
                     * TextEncoder(clip, progress=False).encode([s.text for s in samples])).sum(-1)
    clip_got = torch.tensor([s["clip_cosine"] for s in result.samples])
    torch.testing.assert_close(clip_got, clip_expected, rtol=1e-4, atol=1e-5)
    assert result.clip_cosine_mean == pytest.approx(float(clip_expected.mean()), abs=1e-5)
    assert result.clip_model == clip
    assert_saved(result, tmp_path, ModalitySimilarityResult)


def test_a_tokenizer_without_pad_token_still_batches(llava, samples, monkeypatch):
    """Llama-3 and Mistral tokenizers have no pad token: the forward analyses pad with EOS (as the generation
    does), give what a padded batch with a real pad token gives, and leave the tokenizer as it was."""
    model, processor = llava
    tokenizer = processor.tokenizer
    with_pad = safety_layers(model, processor, samples, batch_size=4, max_new_tokens=4, progress=False)
    monkeypatch.setattr(tokenizer, "padding_side", "right")
    pad = tokenizer.pad_token
    tokenizer.pad_token = None
    try:
        without_pad = safety_layers(model, processor, samples, batch_size=4, max_new_tokens=4, progress=False)
        similarity = modality_similarity(model, processor, samples[:3], batch_size=3, progress=False)
        assert tokenizer.pad_token is None and tokenizer.padding_side == "right"
    finally:
        tokenizer.pad_token = pad
    assert len(similarity.samples) == 3
    mass = [s["refusal_mass"] for s in without_pad.samples]
    torch.testing.assert_close(torch.tensor(mass), torch.tensor([s["refusal_mass"] for s in with_pad.samples]),
                               rtol=1e-4, atol=1e-6)


def test_no_usable_sample_is_a_clear_error(llava, samples):
    model, processor = llava
    benign = [s for s in samples if not s.toxic]
    with pytest.raises(ValueError, match="none of the 1 samples"):
        attention_share(model, processor, benign, progress=False)
    with pytest.raises(ValueError, match="samples is empty"):
        safety_layers(model, processor, [], progress=False)


@pytest.mark.parametrize("family, backbone", [("llava_next", "llama"), ("llava", "qwen2")])
def test_other_families(samples, family, backbone):
    from tga_fast.models.tiny import tiny_vlm

    model, processor = tiny_vlm(family, backbone, layers=2)
    lens = safety_layers(model, processor, samples, batch_size=2, max_new_tokens=4, progress=False)
    share = attention_share(model, processor, samples, batch_size=2, progress=False)
    similarity = modality_similarity(model, processor, samples, batch_size=2, progress=False)
    assert len(lens.refusal_mass_mean) == 3 and share.blocks == [1, 2] and len(similarity.cosine_mean) == 3
    assert all(s["image_tokens"] > 0 for s in similarity.samples)
    assert all(-1.0 <= c <= 1.0 for s in similarity.samples for c in s["cosine"])
    assert all(0.0 <= v <= 1.0 for s in share.samples for v in s["share"])
