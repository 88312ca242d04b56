"""Capture of 9 pooled layers against output_hidden_states and against the released approach.

Providers on the same random CPU-sized Llama (16 layers, D 512) and the same batch, at two lengths:
``plain`` (a forward, no capture: what the others are compared with), ``capture`` (tga_fast.capture, 9 layers x
3 spans, SDPA), ``hidden_states`` (``output_hidden_states=True``, then pooling), ``released`` (eager attention
with ``output_attentions=True`` and ``output_hidden_states=True``, then pooling, as the released code's caption
and training passes). ``kept_mb`` is what the provider keeps after the forward; ``peak_mb`` the peak growth of
the process during it. The issue's target: capture adds at most 5% to a plain forward's time.

    python -m pytest benchmarks/bench_capture.py -o python_files='bench_*.py' --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.measure import ROOT, peak_memory_here
from tga_fast.models import capture
from tga_fast.ops.kernels.segment_pool import reference as pool_reference

PROVIDERS = ("plain", "capture", "hidden_states", "released")
LENGTHS = (512, 1024)
LAYERS = tuple(range(4, 13))  # 9 target layers, as the reference trains 10..18 of 32


def build(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=16, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval().to(torch.float32).requires_grad_(False), config


_MODELS: dict[str, torch.nn.Module] = {}


def model_for(provider: str):
    attn = "eager" if provider == "released" else "sdpa"
    if attn not in _MODELS:
        model, _ = build(attn)
        model.set_attn_implementation(attn)
        _MODELS[attn] = model
    return _MODELS[attn]


def workload(provider: str, seq_len: int):
    """``(run, kept_bytes)`` for one provider: run() does one forward and returns what it keeps."""
    model = model_for(provider)
    ids = torch.randint(0, 1000, (1, seq_len), generator=torch.Generator().manual_seed(1))
    spans = torch.tensor([[[35, 95], [100, 100 + seq_len // 2], [100 + seq_len // 2, seq_len - 4]]])

    def run():
        with torch.no_grad():
            if provider == "plain":
                return model(input_ids=ids, use_cache=False).logits[:, -1]
            if provider == "capture":
                with capture(model, LAYERS, spans) as cap:
                    model(input_ids=ids, use_cache=False)
                return cap.pooled
            out = model(input_ids=ids, use_cache=False, output_hidden_states=True, output_attentions=provider == "released")
            pooled = torch.stack([pool_reference.segment_pool(out.hidden_states[k], spans) for k in LAYERS])
            return pooled, out.hidden_states, out.attentions  # what the approach holds while it pools

    heads, dim, layers = 8, 512, 16
    kept = {
        "plain": 0,
        "capture": len(LAYERS) * 3 * dim * 4,
        "hidden_states": (layers + 1) * seq_len * dim * 4,
        "released": (layers + 1) * seq_len * dim * 4 + layers * heads * seq_len * seq_len * 4,
    }[provider]
    return run, kept


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_capture(benchmark, provider, seq_len):
    run, kept = workload(provider, seq_len)
    if provider == "capture":  # correctness first: equal to pooling output_hidden_states
        hidden, _ = workload("hidden_states", seq_len)
        torch.testing.assert_close(run(), hidden()[0], rtol=1e-5, atol=1e-6)
    benchmark.group = f"capture llama-16x512 T={seq_len}"
    benchmark.extra_info.update(provider=provider, kept_mb=kept / 2**20)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_mb"] = peak_memory(provider, seq_len)


def peak_memory(provider: str, seq_len: int) -> float | None:
    if os.environ.get("TGA_FAST_BENCH_MEMORY", "1") == "0":
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-m", "benchmarks.bench_capture", "--provider", provider, "--seq-len", str(seq_len)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak memory of one capture provider, in a fresh process")
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    args = parser.parse_args()
    run, _ = workload(args.provider, args.seq_len)
    print(json.dumps({"peak_bytes": peak_memory_here(run, "cpu")}))
