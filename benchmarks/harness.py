"""One benchmark body for every (workload, provider, shape, dtype, mode): check, time, record.

The correctness check before timing holds every provider to the tests' error budget
(``tga_fast.ops._error_budget``): its error against the reference on the fp32-upcast inputs at most twice the
reference's own error on the low-precision inputs, plus a per-dtype floor.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import measure, providers
from benchmarks.shapes import SHAPES
from tga_fast.ops._error_budget import assert_within_budget

# Rounds per shape: the LLaVA-7B shape takes seconds per round in the baseline on a 2-core CPU.
ROUNDS = {"llava7b": 5, "cpu-small": 20}


def as_list(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def check_within_budget(
    run, reference, inputs: list[torch.Tensor], dtype: torch.dtype, grad_inputs: int, output_floor: torch.dtype | None = None
) -> None:
    """``run(*inputs)`` and its gradients against ``reference(*inputs)`` under the error budget.

    inputs: floating tensors in ``dtype``; the oracle is ``reference`` on their fp32 upcast (exact), the
    reference's own low-precision error is ``reference`` on the inputs themselves. The gradients of the sum of
    the outputs with respect to the first ``grad_inputs`` inputs are compared too. Outputs are held to the
    floor of ``output_floor`` (default: their own dtype), gradients to the floor of ``dtype``.
    """

    def evaluate(fn, tensors):
        leaves = [t.detach().requires_grad_(i < grad_inputs) for i, t in enumerate(tensors)]
        with torch.set_grad_enabled(grad_inputs > 0):
            outs = as_list(fn(*leaves))
            grads = []
            if grad_inputs:
                loss = sum(out.float().sum() for out in outs)
                grads = torch.autograd.grad(loss, leaves[:grad_inputs])
        return [o.detach().cpu() for o in outs], [g.cpu() for g in grads]

    upcast = [t.float() if t.is_floating_point() else t for t in inputs]
    got, got_grads = evaluate(run, inputs)
    oracle, oracle_grads = evaluate(reference, upcast)
    lowp, lowp_grads = (oracle, oracle_grads) if dtype == torch.float32 else evaluate(reference, inputs)
    for kernel, exact, own in zip(got, oracle, lowp):
        assert_within_budget(kernel.float(), exact, own.to(kernel.dtype).float(), output_floor or kernel.dtype)
    for kernel, exact, own in zip(got_grads, oracle_grads, lowp_grads):
        assert_within_budget(kernel.float(), exact, own.to(dtype).float(), dtype)


def check_against_reference(name, provider, shape, mode, dtype):
    """Correctness before timing: the provider's result (and gradient) within the budget of the reference's."""
    if provider == "reference":
        return
    device = providers.device_of(provider)
    shape_ = SHAPES[shape]
    spans = shape_.spans(device)
    grad = mode == "forward+backward"
    if name == "alignment_loss":
        hidden = shape_.hidden(dtype, device)

        def as_fn(who):
            fn = providers.alignment_loss(who)
            return lambda *tensors: fn(list(tensors[:-1]), spans, tensors[-1])

        inputs, grad_inputs = [*hidden, shape_.targets(dtype, device)], len(hidden) if grad else 0
    elif name == "segment_cosine":

        def as_fn(who):
            fn = providers.segment_cosine(who)
            return lambda hidden, target: fn(hidden, spans, target)

        inputs = [shape_.hidden(dtype, device, layers=1)[0], shape_.targets(dtype, device)[0]]
        grad_inputs = int(grad)  # hidden (the target's gradient is the tests' business)
    else:

        def as_fn(who):
            fn = providers.segment_pool(who)
            return lambda hidden: fn(hidden, spans)

        inputs, grad_inputs = [shape_.hidden(dtype, device, layers=1)[0]], int(grad)
    check_within_budget(as_fn(provider), as_fn("reference"), inputs, dtype, grad_inputs)


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
