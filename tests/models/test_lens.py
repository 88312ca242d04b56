"""logit_lens: the one lens of capture and the safety-layers analysis, against the model's own logits."""

import pytest
import torch

from tests.models.conftest import llm_batch
from tga_fast.models import capture, logit_lens, resolve, states_at
from tga_fast.models.tiny import tiny_llm


@pytest.fixture(scope="module")
def llama():
    return tiny_llm("llama")


def test_lens_of_every_layer_equals_capture_and_the_model_at_layer_n(llama):
    model, tokenizer = llama
    batch, spans, _, _ = llm_batch(tokenizer, "right")
    parts = resolve(model)
    last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token
    layers = list(range(parts.num_layers + 1))
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        states = torch.stack([states_at(out.hidden_states[k], last) for k in layers])  # [N+1, B, D]
        lens = logit_lens(model, states, layers)
        with capture(model, layers, spans, logit_lens=True, lens_positions=last) as cap:
            model(**batch)
    assert lens.shape == (len(layers), 3, model.config.vocab_size) and lens.dtype == torch.float32
    # The same modules on the same rows: only the batching of the norm/matmul differs (fp32 reassociation).
    torch.testing.assert_close(cap.logits, lens, rtol=1e-5, atol=1e-5)
    # Layer N is already normed: the lens there is the model's own next-token logits.
    torch.testing.assert_close(lens[-1], out.logits[torch.arange(3), last].float(), rtol=1e-5, atol=1e-5)
    # Any order, and ModelParts in place of the model.
    torch.testing.assert_close(logit_lens(parts, states[[3, 0]], [3, 0]), lens[[3, 0]])


def test_lens_checks_its_arguments(llama):
    model, _ = llama
    with pytest.raises(ValueError, match=r"states must be \[L=2, B, D\]"):
        logit_lens(model, torch.zeros(3, 1, model.config.hidden_size), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(model, torch.zeros(1, 1, model.config.hidden_size), [99])
