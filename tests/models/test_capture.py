"""capture(): equals pooling of output_hidden_states (same layer numbering), gradients, stop_after, cleanup."""

import pytest
import torch

from tests.helpers import assert_within_budget
from tests.models.conftest import llm_batch, vlm_batch
from tga_fast.models import StopForward, capture, resolve
from tga_fast.ops.kernels.segment_cosine import reference as cosine_reference
from tga_fast.ops.kernels.segment_pool import reference as pool_reference


def hook_counts(model):
    """(forward hooks, pre-hooks) per module: transformers registers some of its own, so compare snapshots."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def oracle_pool(hidden_states, layers, spans):
    return torch.stack([pool_reference.segment_pool(hidden_states[k], spans.tensor) for k in layers])


def test_vlm_capture_equals_output_hidden_states(vlm):
    model, processor = vlm
    batch, spans, _, _ = vlm_batch(processor, model)
    parts = resolve(model)
    layers = [parts.num_layers, 0, 2, 1]  # any order, both ends included
    with torch.no_grad():
        oracle = model(**batch, output_hidden_states=True).hidden_states
        hooks_before = hook_counts(model)
        with capture(model, layers, spans, logit_lens=True) as cap:
            model(**batch)
    assert hook_counts(model) == hooks_before
    torch.testing.assert_close(cap.pooled, oracle_pool(oracle, layers, spans), rtol=1e-5, atol=1e-6)
    # Logit lens: lm_head(final_norm(h_last)); at layer N the final norm is already applied.
    expected = torch.stack(
        [parts.lm_head(oracle[k][:, -1] if k == parts.num_layers else parts.final_norm(oracle[k][:, -1])) for k in layers]
    )
    torch.testing.assert_close(cap.logits, expected, rtol=1e-5, atol=1e-5)


def test_llm_capture_with_lens_positions_and_cosines(llm):
    model, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer, "right")
    parts = resolve(model)
    last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token
    layers = [1, 3]
    targets = torch.randn(2, 3, model.config.hidden_size)
    with torch.no_grad():
        oracle = model(**batch, output_hidden_states=True).hidden_states
        with capture(model, layers, spans, logit_lens=True, lens_positions=last) as cap:
            model(**batch)
        with capture(model, layers, spans, targets=targets) as cos_cap:
            model(**batch)
    rows = torch.arange(3)
    expected = torch.stack([parts.lm_head(parts.final_norm(oracle[k][rows, last])) for k in layers])
    torch.testing.assert_close(cap.logits, expected, rtol=1e-5, atol=1e-5)
    expected_cos = torch.stack([cosine_reference.segment_cosine(oracle[k], spans.tensor, t, 1e-8)[0] for k, t in zip(layers, targets)])
    torch.testing.assert_close(cos_cap.cosines, expected_cos, rtol=1e-5, atol=1e-6)


def test_bf16_capture_within_budget():
    from tga_fast.models.tiny import tiny_vlm

    model, processor = tiny_vlm("llava", "qwen2")
    batch, spans, _, _ = vlm_batch(processor, model)
    model = model.to(torch.bfloat16)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        oracle = model(**batch, output_hidden_states=True).hidden_states
        with capture(model, [1, 4], spans) as cap:
            model(**batch)
    for i, k in enumerate([1, 4]):
        fp32 = pool_reference.segment_pool(oracle[k].float(), spans.tensor)
        assert_within_budget(cap.pooled[i], fp32, pool_reference.segment_pool(oracle[k], spans.tensor), torch.bfloat16)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_equal_output_hidden_states(checkpointing):
    from tga_fast.models.tiny import tiny_vlm

    model, processor = tiny_vlm("llava", "llama")
    batch, spans, _, _ = vlm_batch(processor, model)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    layers = [1, 2, 3]
    weights = torch.randn(len(layers), *spans.tensor.shape[:2], model.config.text_config.hidden_size)
    projector = resolve(model).projector

    def grads(use_capture: bool):
        model.zero_grad(set_to_none=True)
        if use_capture:
            with capture(model, layers, spans) as cap:
                model(**batch)
            pooled = cap.pooled
        else:
            pooled = oracle_pool(model(**batch, output_hidden_states=True).hidden_states, layers, spans)
        (pooled * weights).sum().backward()
        return [p.grad.clone() for p in projector.parameters()]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_stop_after_runs_no_later_layer(llm):
    model, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer)
    parts = resolve(model)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(parts.decoder_layers)]
    try:
        with torch.no_grad():
            oracle = model(**batch, output_hidden_states=True).hidden_states
            ran.clear()
            with capture(model, [1, 2], spans, stop_after=2) as cap:
                model(**batch)
                raise AssertionError("the forward should have stopped")  # noqa: B012 (never reached)
            assert ran == [0, 1]
            ran.clear()
            assert cap.run(model, **batch) is not None  # the context is closed: the hooks are gone
            assert ran == list(range(parts.num_layers))
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(cap.pooled, oracle_pool(oracle, [1, 2], spans), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stop_after=1 would end the forward before layer 2"):
        with capture(model, [2], spans, stop_after=1):
            pass


def test_capture_run_helper_and_errors(llm):
    model, tokenizer = llm
    batch, spans, _, _ = llm_batch(tokenizer)
    hooks_before = hook_counts(model)
    with capture(model, [1], spans, stop_after=1) as cap:
        assert cap.run(model, **batch) is None
        after = True
    assert after and cap.pooled.shape[:2] == (1, 3)
    with capture(model, [2], spans) as cap:
        pass
    with pytest.raises(RuntimeError, match="run the model's forward"):
        cap.pooled
    with pytest.raises(RuntimeError):  # hooks are removed when the body raises
        with capture(model, [1], spans):
            raise RuntimeError("boom")
    assert hook_counts(model) == hooks_before
    assert StopForward.__name__ == "StopForward"
