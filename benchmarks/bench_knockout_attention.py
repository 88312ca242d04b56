"""knockout_attention forward: eager vs reference vs plain causal SDPA vs triton, time and peak memory.

``eager``        what HF's eager attention does: the [B, H, T, T] scores materialised, a dense 4D additive mask
                 (the knockout + causal mask), softmax in fp32, grouped kv heads repeated
``reference``    tga_fast's reference: SDPA with a boolean [B, 1, T, T] mask (what a CPU tensor runs)
``sdpa_causal``  plain ``is_causal`` SDPA without any knockout: the speed of light for the shape
``triton``       the fused Triton kernel through the dispatcher (CUDA only)

The target (GPU): ``triton`` within 1.3x of ``sdpa_causal``'s time at the 7B shapes. ``bytes`` counts q, k, v
read and the output written once (attention is compute bound: the GB/s column is only a ratio to compare
providers); ``extra_info["tflops"]`` counts the causal half of the 4 * B * H * T^2 * d multiply-adds.

    python -m benchmarks.bench_knockout_attention --provider reference --shape cpu-small   # peak memory probe
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from benchmarks import measure, providers
from benchmarks.harness import check_within_budget
from benchmarks.shapes import ATTENTION_SHAPES as SHAPES
from benchmarks.shapes import AttentionShape

ROUNDS = {"cpu-small": 10, "7b-mha-t1200": 3, "7b-gqa-t2048": 3}
PROVIDERS = ("eager", "reference", "sdpa_causal", "triton")


def eager_knockout(q, k, v, blocked):
    """HF eager attention with the knockout as a dense 4D additive mask."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    seq_len = q.shape[2]
    keys = torch.arange(seq_len, device=q.device)
    visible = (keys[None, :] <= keys[:, None]) & ~(blocked[:, None, :] & (keys[None, :] < keys[:, None]))
    mask = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, torch.finfo(q.dtype).min)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask[:, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v


def provider_fn(provider: str):
    if provider == "eager":
        return eager_knockout
    if provider == "reference":
        from tga_fast.ops.kernels.knockout_attention.reference import knockout_attention

        return knockout_attention
    if provider == "sdpa_causal":
        return lambda q, k, v, blocked: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1]
        )
    from tga_fast.ops import knockout_attention

    return knockout_attention


def device_of(provider: str) -> str:
    """Every provider runs on the GPU when there is one (the comparison is on one device), else on the CPU."""
    return "cuda" if provider == "triton" or torch.cuda.is_available() else "cpu"


def skip_reason(provider: str, shape: str, dtype: torch.dtype) -> str | None:
    if provider == "triton":
        return providers.available("triton")
    if device_of(provider) == "cpu" and dtype != torch.float32 and shape != "cpu-small":
        return "bf16 attention at the 7B shapes on a CPU: minutes per provider, not a use case"
    return None


def workload(provider: str, shape: AttentionShape, dtype: torch.dtype):
    device = device_of(provider)
    fn = provider_fn(provider)
    inputs = shape.inputs(dtype, device)

    def run():
        with torch.no_grad():
            return fn(*inputs)

    return run


def peak_memory(provider: str, shape: str, dtype_name: str) -> int | None:
    """Peak bytes of one forward: in-process on CUDA, in a fresh process on the CPU (see benchmarks.measure)."""
    args = ["--provider", provider, "--shape", shape, "--dtype", dtype_name]
    return measure.probe_peak_memory(
        "benchmarks.bench_knockout_attention", args, device_of(provider),
        lambda: workload(provider, SHAPES[shape], measure.DTYPES[dtype_name]),
    )


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_knockout_attention(benchmark, copy_bandwidth, provider, shape, dtype_name):
    dtype = measure.DTYPES[dtype_name]
    reason = skip_reason(provider, shape, dtype)
    if reason:
        pytest.skip(f"{provider}: {reason}")
    device = device_of(provider)
    spec = SHAPES[shape]
    run = workload(provider, spec, dtype)
    if provider != "sdpa_causal":  # correctness first (sdpa_causal ignores the knockout by design)
        q, k, v, blocked = spec.inputs(dtype, device)
        reference = provider_fn("reference")
        check_within_budget(
            lambda q, k, v: provider_fn(provider)(q, k, v, blocked), lambda q, k, v: reference(q, k, v, blocked),
            [q, k, v], dtype, grad_inputs=0,
        )  # fmt: skip

    def timed():
        run()
        measure.synchronize(device)

    benchmark.group = f"knockout_attention {shape} {dtype_name} forward"
    copy_gbps = copy_bandwidth(device) / 1e9
    benchmark.extra_info.update(provider=provider, bytes=spec.bytes_moved(dtype), copy_gbps=copy_gbps)
    benchmark.pedantic(timed, rounds=ROUNDS[shape], warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["tflops"] = spec.causal_flops() / benchmark.stats.stats.median / 1e12
    peak = peak_memory(provider, shape, dtype_name)
    benchmark.extra_info["peak_mb"] = None if peak is None else peak / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", required=True, choices=PROVIDERS)
    parser.add_argument("--shape", required=True, choices=list(SHAPES))
    parser.add_argument("--dtype", default="float32", choices=list(measure.DTYPES))
    args = parser.parse_args(argv)
    run = workload(args.provider, SHAPES[args.shape], measure.DTYPES[args.dtype])
    print(json.dumps({"peak_bytes": measure.peak_memory_here(run, device_of(args.provider))}))


if __name__ == "__main__":
    main()
