"""attention_share forward: eager vs reference vs triton, time and peak memory.

The share of the last prompt position's attention (per head) that falls on 8 blocked (toxic) tokens, the
quantity METHOD.md 3 B reads at every layer.

``eager``      the released approach (``output_attentions=True``): the full ``[B, H, T, T]`` causal attention
               probabilities materialised (grouped kv heads repeated), then the requested row summed over the
               key set
``reference``  tga_fast's reference: only the requested rows are scored (``R x T``, never ``T x T``)
``triton``     the fused Triton kernel through the dispatcher (CUDA only): one pass over K

``bytes`` counts K read once (the kernel's floor for one row); ``extra_info["tflops"]`` counts the
``2 * B * H * R * T * d`` multiply-adds of the requested rows' scores.

    python -m benchmarks.bench_attention_share --provider reference --shape cpu-small   # peak memory probe
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import measure, providers
from benchmarks.harness import check_within_budget
from benchmarks.shapes import ATTENTION_SHAPES as SHAPES
from benchmarks.shapes import AttentionShape

ROUNDS = {"cpu-small": 10, "7b-mha-t1200": 3, "7b-gqa-t2048": 3}
PROVIDERS = ("eager", "reference", "triton")


def eager_share(q, k, key_set, rows):
    """``[B, H, R]`` fp32 from the full causal attention map, as ``output_attentions`` returns it."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    seq_len = q.shape[2]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1, dtype=torch.float32)  # [B, H, T, T]
    index = rows[:, None, :, None].expand(-1, probs.shape[1], -1, seq_len)
    picked = probs.gather(2, index)  # [B, H, R, T]
    return (picked * key_set[:, None, None, :]).sum(dim=-1)


def provider_fn(provider: str):
    if provider == "eager":
        return eager_share
    if provider == "reference":
        from tga_fast.ops.kernels.attention_share.reference import attention_share

        return attention_share
    from tga_fast.ops import attention_share

    return attention_share


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
    fn = provider_fn(provider)
    inputs = shape.share_inputs(dtype, device_of(provider))

    def run():
        with torch.no_grad():
            return fn(*inputs)

    return run


def peak_memory(provider: str, shape: str, dtype_name: str) -> int | None:
    """Peak bytes of one forward: in-process on CUDA, in a fresh process on the CPU (see benchmarks.measure)."""
    args = ["--provider", provider, "--shape", shape, "--dtype", dtype_name]
    return measure.probe_peak_memory(
        "benchmarks.bench_attention_share", args, device_of(provider),
        lambda: workload(provider, SHAPES[shape], measure.DTYPES[dtype_name]),
    )


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_attention_share(benchmark, copy_bandwidth, provider, shape, dtype_name):
    dtype = measure.DTYPES[dtype_name]
    reason = skip_reason(provider, shape, dtype)
    if reason:
        pytest.skip(f"{provider}: {reason}")
    device = device_of(provider)
    spec = SHAPES[shape]
    run = workload(provider, spec, dtype)
    if provider != "reference":  # correctness first
        q, k, key_set, rows = spec.share_inputs(dtype, device)
        fn, reference = provider_fn(provider), provider_fn("reference")
        # eager rounds its scores to the input dtype (as HF's eager attention does): the input dtype's floor.
        check_within_budget(
            lambda q, k: fn(q, k, key_set, rows), lambda q, k: reference(q, k, key_set, rows), [q, k], dtype, 0,
            output_floor=dtype if provider == "eager" else None,
        )  # fmt: skip

    def timed():
        run()
        measure.synchronize(device)

    benchmark.group = f"attention_share {shape} {dtype_name} forward"
    copy_gbps = copy_bandwidth(device) / 1e9
    benchmark.extra_info.update(provider=provider, bytes=spec.share_bytes(dtype), copy_gbps=copy_gbps)
    benchmark.pedantic(timed, rounds=ROUNDS[shape], warmup_rounds=1)
    flops = 2 * spec.batch * spec.heads * spec.seq_len * spec.dim  # one row (R = 1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12
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
