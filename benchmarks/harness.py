"""One benchmark body for every (workload, provider, shape, dtype, mode): check, time, record."""

from __future__ import annotations

import pytest
import torch

from benchmarks import measure, providers
from benchmarks.shapes import SHAPES

# Rounds per shape: the LLaVA-7B shape takes seconds per round in the baseline on a 2-core CPU.
ROUNDS = {"llava7b": 5, "cpu-small": 20}


def check_against_reference(name, provider, shape, mode, dtype):
    """Correctness before timing: the provider's result (and gradient) equals the reference's."""
    if provider == "reference":
        return
    device = providers.device_of(provider)
    grad = mode == "forward+backward"
    shape_ = SHAPES[shape]
    layers = 1 if name == "segment_cosine" else None  # one layer is all segment_cosine reads
    hidden = shape_.hidden(dtype, device, requires_grad=grad, layers=layers)
    spans, targets = shape_.spans(device), shape_.targets(dtype, device)
    results = []
    for who in (provider, "reference"):
        with torch.set_grad_enabled(grad):
            if name == "segment_cosine":
                out = providers.segment_cosine(who)(hidden[0], spans, targets[0])
                grads = torch.autograd.grad(out.sum(), hidden[0]) if grad else ()
            else:
                out = providers.alignment_loss(who)(hidden, spans, targets)
                grads = torch.autograd.grad(out, hidden) if grad else ()
        results.append((out.detach().float().cpu(), [g.float().cpu() for g in grads]))
    (out, grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(out, ref_out, rtol=2e-3, atol=2e-5)
    for got, want in zip(grads, ref_grads):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


def run_benchmark(benchmark, copy_bandwidth, name, provider, shape, dtype_name, mode):
    reason = providers.available(provider)
    if reason:
        pytest.skip(f"{provider}: {reason}")
    dtype = measure.DTYPES[dtype_name]
    check_against_reference(name, provider, shape, mode, dtype)
    run, moved = measure.workload(name, provider, SHAPES[shape], mode, dtype)
    device = providers.device_of(provider)

    def timed():
        run()
        measure.synchronize(device)

    benchmark.group = f"{name} {shape} {dtype_name} {mode}"
    benchmark.extra_info.update(provider=provider, bytes=moved, copy_gbps=copy_bandwidth(device) / 1e9)
    benchmark.pedantic(timed, rounds=ROUNDS[shape], warmup_rounds=1)
    peak = measure.peak_memory(name, provider, shape, mode, dtype_name)
    benchmark.extra_info["peak_mb"] = None if peak is None else peak / 2**20
