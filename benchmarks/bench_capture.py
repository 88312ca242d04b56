"""Capture of 9 pooled layers against output_hidden_states and against the released approach.

Providers on the same random CPU-sized model and the same batch, at two lengths: a Llama (16 layers, D 512) and a
Qwen2-VL with the same text sizes whose prompt holds one image (64 merged image tokens, the first span; its 3-D
rotary positions and vision tower run in every provider):
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
MODELS = ("llama", "qwen2_vl")
LENGTHS = (512, 1024)
LAYERS = tuple(range(4, 13))  # 9 target layers, as the reference trains 10..18 of 32


TEXT_SIZES = dict(
    vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=16, num_attention_heads=8,
    num_key_value_heads=8, max_position_embeddings=2048,
)  # fmt: skip
# The benchmark's own vocabulary: its last four ids are Qwen2-VL's image/video markers.
QWEN_TOKENS = dict(video_token_id=996, vision_start_token_id=997, vision_end_token_id=998, image_token_id=999)
IMAGE_START, IMAGE_GRID = 35, (1, 16, 16)  # 16 x 16 patches of 14 px, merged 2 x 2: 64 image tokens at 35..98


def build(model_name: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    if model_name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TEXT_SIZES))
    else:
        text = dict(TEXT_SIZES, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [8, 12, 12]})  # sums to head_dim / 2 = 32
        vision = dict(depth=2, embed_dim=64, num_heads=2, mlp_ratio=2, hidden_size=512, patch_size=14)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **QWEN_TOKENS))
    return model.eval().to(torch.float32).requires_grad_(False)


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def model_for(provider: str, model_name: str = "llama"):
    attn = "eager" if provider == "released" else "sdpa"
    if (model_name, attn) not in _MODELS:
        model = build(model_name)
        model.set_attn_implementation(attn)
        _MODELS[model_name, attn] = model
    return _MODELS[model_name, attn]


def inputs_for(model_name: str, seq_len: int) -> dict:
    """One prompt of ``seq_len`` tokens (and, for Qwen2-VL, its image at ``IMAGE_START``)."""
    ids = torch.randint(0, 990, (1, seq_len), generator=torch.Generator().manual_seed(1))
    if model_name == "llama":
        return {"input_ids": ids}
    count = IMAGE_GRID[0] * IMAGE_GRID[1] * IMAGE_GRID[2] // 4
    ids[0, IMAGE_START - 1] = QWEN_TOKENS["vision_start_token_id"]
    ids[0, IMAGE_START : IMAGE_START + count] = QWEN_TOKENS["image_token_id"]
    ids[0, IMAGE_START + count] = QWEN_TOKENS["vision_end_token_id"]
    patches = IMAGE_GRID[0] * IMAGE_GRID[1] * IMAGE_GRID[2]
    pixels = torch.randn(patches, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": torch.tensor([IMAGE_GRID]),
            "mm_token_type_ids": (ids == QWEN_TOKENS["image_token_id"]).long()}


def workload(provider: str, seq_len: int, model_name: str = "llama"):
    """``(run, kept_bytes)`` for one provider: run() does one forward and returns what it keeps."""
    model = model_for(provider, model_name)
    inputs = inputs_for(model_name, seq_len)
    first = [IMAGE_START, IMAGE_START + 64] if model_name == "qwen2_vl" else [35, 95]
    spans = torch.tensor([[first, [100, 100 + seq_len // 2], [100 + seq_len // 2, seq_len - 4]]])

    def run():
        with torch.no_grad():
            if provider == "plain":
                return model(**inputs, use_cache=False).logits[:, -1]
            if provider == "capture":
                with capture(model, LAYERS, spans) as cap:
                    model(**inputs, use_cache=False)
                return cap.pooled
            out = model(**inputs, use_cache=False, output_hidden_states=True, output_attentions=provider == "released")
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
@pytest.mark.parametrize("model_name", MODELS)
def test_capture(benchmark, model_name, provider, seq_len):
    run, kept = workload(provider, seq_len, model_name)
    if provider == "capture":  # correctness first: equal to pooling output_hidden_states
        hidden, _ = workload("hidden_states", seq_len, model_name)
        torch.testing.assert_close(run(), hidden()[0], rtol=1e-5, atol=1e-6)
    benchmark.group = f"capture {model_name}-16x512 T={seq_len}"
    benchmark.extra_info.update(provider=provider, model=model_name, kept_mb=kept / 2**20)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_mb"] = peak_memory(provider, seq_len, model_name)


def peak_memory(provider: str, seq_len: int, model_name: str = "llama") -> float | None:
    if os.environ.get("TGA_FAST_BENCH_MEMORY", "1") == "0":
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-m", "benchmarks.bench_capture", "--provider", provider, "--seq-len", str(seq_len),
               "--model", model_name]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak memory of one capture provider, in a fresh process")
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--model", choices=MODELS, default="llama")
    args = parser.parse_args()
    run, _ = workload(args.provider, args.seq_len, args.model)
    print(json.dumps({"peak_bytes": peak_memory_here(run, "cpu")}))
