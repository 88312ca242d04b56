"""knockout, steer, skip_layers and the attention-share probe on tiny models, against explicit computations."""

import pytest
import torch

from tests.models.conftest import llm_batch, vlm_batch
from tga_fast.models import attention_shares, capture, knockout, open_modifiers, resolve, skip_layers, steer
from tga_fast.models.tiny import tiny_llm


def explicit_mask(attention_mask: torch.Tensor, blocked: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive ``[B, 1, T, T]`` mask: causal, padding keys hidden, blocked keys hidden from later queries."""
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len)
    causal = positions[None, :] <= positions[:, None]  # [query, key]
    later = positions[None, :] < positions[:, None]
    visible = causal[None] & attention_mask.bool()[:, None, :] & ~(blocked[:, None, :] & later[None])
    # A padding query that sees nothing would give NaN in eager softmax; let it see itself (its output is unused).
    visible = visible | (torch.eye(seq_len, dtype=torch.bool)[None] & ~visible.any(-1, keepdim=True))
    return torch.where(visible, 0.0, torch.finfo(dtype).min)[:, None].to(dtype)


@pytest.fixture(scope="module")
def eager_and_sdpa():
    sdpa, tokenizer = tiny_llm("qwen2", attn_implementation="sdpa")
    eager, _ = tiny_llm("qwen2", attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager, tokenizer


def toxic_blocked(spans, seq_len):
    return spans.mask(seq_len, "retrieved")  # knock out the retrieved-text tokens


def test_nothing_blocked_is_the_plain_model(vlm):
    model, processor = vlm
    batch, spans, _, _ = vlm_batch(processor, model, "left")
    with torch.no_grad():
        plain = model(**batch).logits
        with knockout(model, range(1, resolve(model).num_layers + 1), torch.zeros_like(batch["attention_mask"], dtype=torch.bool)):
            knocked = model(**batch).logits
        restored = model(**batch).logits
    torch.testing.assert_close(knocked, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(restored, plain)


def test_knockout_equals_eager_with_explicit_mask(eager_and_sdpa):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left")
    blocked = toxic_blocked(spans, batch["input_ids"].shape[1])
    all_blocks = range(1, resolve(sdpa).num_layers + 1)
    with torch.no_grad():
        with knockout(sdpa, all_blocks, blocked):
            knocked = sdpa(**batch).logits
        expected = eager(input_ids=batch["input_ids"], attention_mask=explicit_mask(batch["attention_mask"], blocked)).logits
        plain = sdpa(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(knocked[real], expected[real], rtol=1e-4, atol=1e-5)
    assert (knocked[real] - plain[real]).abs().max() > 1e-3  # the knockout changed something


def test_knockout_in_generate_matches_a_recomputed_greedy_loop(eager_and_sdpa):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left", samples=[("what is in this image?", "a red knife.")])
    prompt_len = batch["input_ids"].shape[1]
    blocked = toxic_blocked(spans, prompt_len)
    with torch.no_grad():
        with knockout(sdpa, [2, 3], blocked):
            generated = sdpa.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        # Reference: no KV cache, the whole sequence re-run at each step (an explicit 4D mask cannot knock out
        # blocks 2-3 only, so the eager twin runs the same knockout); this checks the cached decoding path.
        ids = batch["input_ids"]
        for _ in range(5):
            mask = torch.ones_like(ids)
            padded = torch.nn.functional.pad(blocked, (0, ids.shape[1] - prompt_len), value=False)
            with knockout(eager, [2, 3], padded):
                logits = eager(input_ids=ids, attention_mask=mask).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


def test_knockout_layers_are_validated(llm):
    model, _ = llm
    with pytest.raises(ValueError, match="decoder blocks 1..4"):
        with knockout(model, [0], torch.zeros(1, 3, dtype=torch.bool)):
            pass
    with pytest.raises(ValueError, match="blocked must be a bool"):
        with knockout(model, [1], torch.zeros(1, 3)):
            pass


def test_attention_share_equals_output_attentions(eager_and_sdpa):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left")
    seq_len = batch["input_ids"].shape[1]
    key_set = spans.mask(seq_len, "retrieved")
    rows = torch.full((3, 1), seq_len - 1)  # the last prompt position (left padding)
    with torch.no_grad():
        with attention_shares(sdpa, key_set, rows) as probe:
            sdpa(**batch)
        attentions = eager(**batch, output_attentions=True).attentions  # N x [B, H, T, T]
    expected = torch.stack([(a[:, :, -1, :] * key_set[:, None, :]).sum(-1)[..., None] for a in attentions])
    torch.testing.assert_close(probe.share, expected, rtol=1e-4, atol=1e-5)


def test_steer_zero_is_identity_and_replace_writes_the_span(vlm):
    model, processor = vlm
    batch, spans, _, _ = vlm_batch(processor, model)
    image = spans.select("image")
    dim = model.config.text_config.hidden_size
    with torch.no_grad():
        plain = model(**batch).logits
        with steer(model, [0, 2], image, torch.zeros(3, dim)):
            same = model(**batch).logits
        vectors = torch.randn(2, 3, dim)
        with steer(model, [0, 2], image, vectors, mode="replace"):
            with capture(model, [0, 2], image) as cap:
                model(**batch)
        restored = model(**batch).logits
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(restored, plain)
    torch.testing.assert_close(cap.pooled[:, :, 0], vectors)


def test_steer_add_shifts_the_span_mean(llm):
    model, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer)
    question = spans.select("question")
    with torch.no_grad():
        with capture(model, [2], question) as before:
            model(**batch)
        shift = torch.randn(3, model.config.hidden_size)
        with steer(model, [2], question, shift), capture(model, [2], question) as after:
            model(**batch)
    torch.testing.assert_close(after.pooled - before.pooled, shift[None, :, None], rtol=1e-5, atol=1e-5)


def test_skip_layers_passes_the_input_through(llm):
    model, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer)
    with torch.no_grad():
        with skip_layers(model, [2]), capture(model, [1, 2], spans) as cap:
            model(**batch)
        with capture(model, [2], spans) as plain:
            model(**batch)
    torch.testing.assert_close(cap.pooled[1], cap.pooled[0])
    assert not torch.allclose(plain.pooled[0], cap.pooled[1])


def _share_oracle(eager, batch, blocked, key_set):
    """Logits and per-block shares ``[N, B, H, 2]`` of the last two positions on ``key_set`` from eager attention
    with the explicit knockout mask at every block (``output_attentions``: the probabilities the model really used)."""
    out = eager(
        input_ids=batch["input_ids"],
        attention_mask=explicit_mask(batch["attention_mask"], blocked),
        output_attentions=True,
    )
    shares = torch.stack([(a[:, :, -2:, :] * key_set[:, None, None, :]).sum(-1) for a in out.attentions])
    return out.logits, shares


@pytest.mark.parametrize("knockout_inside", [True, False], ids=["knockout-inside-probe", "probe-inside-knockout"])
def test_knockout_and_share_probe_nest_in_either_order(eager_and_sdpa, knockout_inside):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left")
    seq_len = batch["input_ids"].shape[1]
    blocked = toxic_blocked(spans, seq_len)
    # The probed keys include the knocked-out ones: their share must be 0 and the rest renormalised without them.
    key_set = spans.mask(seq_len, "retrieved", "question")
    rows = torch.tensor([[seq_len - 2, seq_len - 1]] * 3)  # the last two prompt positions (left padding)
    all_blocks = range(1, resolve(sdpa).num_layers + 1)
    with torch.no_grad():
        if knockout_inside:
            with attention_shares(sdpa, key_set, rows) as probe:
                with knockout(sdpa, all_blocks, blocked):
                    knocked = sdpa(**batch).logits
        else:
            with knockout(sdpa, all_blocks, blocked):
                with attention_shares(sdpa, key_set, rows) as probe:
                    knocked = sdpa(**batch).logits
        expected_logits, expected_share = _share_oracle(eager, batch, blocked, key_set)
    real = batch["attention_mask"].bool()
    # fp32 throughout: SDPA/fused-op vs eager differ by reassociation only (~1e-6 relative per layer, 4 layers).
    torch.testing.assert_close(knocked[real], expected_logits[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe.share, expected_share, rtol=1e-4, atol=1e-5)
    assert sdpa.config._attn_implementation == "sdpa"  # the model's own implementation is back


def test_inner_exit_keeps_the_outer_context_and_errors_restore_everything(eager_and_sdpa):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left")
    seq_len = batch["input_ids"].shape[1]
    blocked = toxic_blocked(spans, seq_len)
    all_blocks = range(1, resolve(sdpa).num_layers + 1)
    with torch.no_grad():
        plain = sdpa(**batch).logits
        with knockout(sdpa, all_blocks, blocked):
            with knockout(sdpa, [1], torch.zeros_like(blocked)):
                pass
            after_inner = sdpa(**batch).logits  # the outer knockout still holds
        expected = eager(input_ids=batch["input_ids"], attention_mask=explicit_mask(batch["attention_mask"], blocked)).logits
        with pytest.raises(RuntimeError, match="boom"):
            with attention_shares(sdpa, blocked, torch.full((3, 1), seq_len - 1)):
                with knockout(sdpa, all_blocks, blocked):
                    raise RuntimeError("boom")
        restored = sdpa(**batch).logits
        with knockout(eager, [2], blocked):  # an eager model gets eager back
            assert eager.config._attn_implementation != "eager"
        assert eager.config._attn_implementation == "eager"
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(after_inner[real], expected[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(restored, plain)
    assert sdpa.config._attn_implementation == "sdpa"
    assert not any(open_modifiers(layer.self_attn) for layer in resolve(sdpa).decoder_layers)


def test_two_knockouts_on_one_block_block_both_sets(eager_and_sdpa):
    sdpa, eager, tokenizer = eager_and_sdpa
    batch, spans, _, _ = llm_batch(tokenizer, "left")
    seq_len = batch["input_ids"].shape[1]
    retrieved, question = spans.mask(seq_len, "retrieved"), spans.mask(seq_len, "question")
    all_blocks = range(1, resolve(sdpa).num_layers + 1)
    with torch.no_grad():
        with knockout(sdpa, all_blocks, retrieved), knockout(sdpa, all_blocks, question):
            knocked = sdpa(**batch).logits
        expected = eager(
            input_ids=batch["input_ids"], attention_mask=explicit_mask(batch["attention_mask"], retrieved | question)
        ).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(knocked[real], expected[real], rtol=1e-4, atol=1e-5)
