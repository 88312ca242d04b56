"""capture() on bitsandbytes 4-bit and 8-bit models (CPU support of bitsandbytes >= 0.45)."""

import importlib.util

import pytest
import torch

from tests.models.conftest import llm_batch
from tga_fast.models import capture
from tga_fast.models.tiny import tiny_llm
from tga_fast.ops.kernels.segment_pool import reference as pool_reference

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")


@pytest.mark.parametrize("bits", [4, 8])
def test_capture_on_quantized_layers(tmp_path, bits):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, tokenizer = tiny_llm("llama", hidden=128)
    model.save_pretrained(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu").eval()
    except Exception as error:  # bitsandbytes without a CPU backend for this mode
        pytest.skip(f"bitsandbytes {bits}-bit on CPU: {error}")
    linear_types = {type(m).__name__ for m in quantized.modules()}
    assert ("Linear4bit" if bits == 4 else "Linear8bitLt") in linear_types
    batch, spans, _, _ = llm_batch(tokenizer)
    with torch.no_grad():
        oracle = quantized(**batch, output_hidden_states=True).hidden_states
        with capture(quantized, [1, 3], spans) as cap:
            quantized(**batch)
    for i, k in enumerate([1, 3]):
        expected = pool_reference.segment_pool(oracle[k], spans.tensor)
        torch.testing.assert_close(cap.pooled[i], expected, rtol=1e-4, atol=1e-4)
