"""segment_pool: the C++ and Triton kernels against the reference, forward and backward, and opcheck."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import (
    DTYPES,
    OPCHECK_DTYPES,
    SPAN_CASES,
    assert_within_budget,
    random_spans,
    require_cpp,
    requires_cpp,
    span_case,
)
from tests.helpers import triton_device, triton_module
from tga_fast.ops.kernels.segment_pool import reference as ref

IMPLEMENTATIONS = ("cpp", pytest.param("triton", marks=pytest.mark.triton))
# The NaN/inf tests hold for the specification too: it is the default kernel on every device without another.
WITH_REFERENCE = ("reference", *IMPLEMENTATIONS)


def forward(impl: str, hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    if impl == "reference":
        return ref.segment_pool(hidden, spans)
    if impl == "cpp":
        require_cpp()
        return torch.ops.tga_fast.segment_pool(hidden, spans)
    device = triton_device()
    return triton_module("segment_pool").segment_pool(hidden.to(device), spans.to(device)).cpu()


def backward(impl: str, grad: torch.Tensor, spans: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    if impl == "reference":
        return ref.segment_pool_backward(grad, spans, seq_len, dtype)
    if impl == "cpp":
        require_cpp()
        return torch.ops.tga_fast.segment_pool_backward(grad, spans, seq_len, dtype)
    device = triton_device()
    return triton_module("segment_pool").segment_pool_backward(grad.to(device), spans.to(device), seq_len, dtype).cpu()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SPAN_CASES))
@pytest.mark.parametrize("dim", [1, 37])
def test_forward_matches_reference(impl, dtype, case, dim):
    seq_len, spans = span_case(case)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(spans.shape[0], seq_len, dim, generator=gen).to(dtype)
    out = forward(impl, hidden, spans)
    assert out.dtype == dtype
    assert_within_budget(out, ref.segment_pool(hidden.float(), spans), ref.segment_pool(hidden, spans), dtype)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SPAN_CASES))
@pytest.mark.parametrize("grad_dtype", ["same", "float32"])
def test_backward_matches_reference(impl, dtype, case, grad_dtype):
    seq_len, spans = span_case(case)
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(spans.shape[0], spans.shape[1], 37, generator=gen)
    grad = grad if grad_dtype == "float32" else grad.to(dtype)
    out = backward(impl, grad, spans, seq_len, dtype)
    assert out.dtype == dtype and out.shape == (spans.shape[0], seq_len, 37)
    oracle = ref.segment_pool_backward(grad.float(), spans, seq_len, torch.float32)
    assert_within_budget(out, oracle, ref.segment_pool_backward(grad, spans, seq_len, dtype), dtype)


@requires_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 257, 1031, 5), (1, 1200, 4096, 2), (4, 64, 4097, 3)])
def test_cpp_random_spans_and_autograd(dtype, shape):
    batch, seq_len, dim, count = shape
    gen = torch.Generator().manual_seed(2)
    spans = random_spans(batch, count, seq_len, gen)
    hidden = torch.randn(batch, seq_len, dim, generator=gen).to(dtype).requires_grad_()
    out = torch.ops.tga_fast.segment_pool(hidden, spans)
    assert_within_budget(out, ref.segment_pool(hidden.detach().float(), spans), ref.segment_pool(hidden, spans), dtype)
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    (grad_hidden,) = torch.autograd.grad(out, hidden, grad)
    oracle = ref.segment_pool_backward(grad.float(), spans, seq_len, torch.float32)
    assert_within_budget(grad_hidden, oracle, ref.segment_pool_backward(grad, spans, seq_len, dtype), dtype)


@pytest.mark.parametrize("impl", WITH_REFERENCE)
def test_nan_stays_in_its_span(impl):
    hidden = torch.randn(1, 8, 5)
    hidden[0, 1, 2] = float("nan")  # inside span 0 only
    hidden[0, 7, :] = float("inf")  # outside every span
    spans = torch.tensor([[[0, 3], [3, 6], [6, 6]]])
    out = forward(impl, hidden, spans)
    assert out[0, 0, 2].isnan() and out[0, 0, [0, 1, 3, 4]].isfinite().all()
    assert out[0, 1:].isfinite().all() and (out[0, 2] == 0).all()


@pytest.mark.parametrize("impl", WITH_REFERENCE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_keeps_a_non_finite_gradient_in_its_span(impl, dtype):
    """A NaN / inf gradient of one span reaches that span's rows only (no 0 * inf spread over the sample)."""
    seq_len, spans = span_case("both-ends-and-empty")  # sample 0: [0, 9), [3, 5), [9, 9); sample 1: [2, 2), [8, 9), [0, 1)
    grad = torch.randn(2, 3, 4)
    grad[1, 1, 0] = float("nan")  # span [8, 9) of sample 1
    grad[1, 2, 3] = float("inf")  # span [0, 1) of sample 1
    out = backward(impl, grad, spans, seq_len, dtype)
    assert out[1, 8, 0].isnan() and out[1, 0, 3].isinf()
    assert out[1, 1:8].eq(0).all() and out[0].isfinite().all()
    assert out[1, 8, 1:].isfinite().all() and out[1, 0, :3].isfinite().all()


def test_reference_reads_only_span_rows():
    """The forward of the specification never materialises a [B, T, D] temporary (the masked pass it replaced
    made one per span and was 30x slower than slicing): every tensor it creates is smaller than hidden."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
            return out

    hidden = torch.randn(4, 64, 16)
    spans = torch.tensor([[[2, 40], [40, 50]]] * 4)
    with LargestOutput() as mode:
        ref.segment_pool(hidden, spans)
    assert mode.largest <= hidden[0].numel()


@pytest.mark.parametrize("impl", WITH_REFERENCE)
def test_non_contiguous_hidden(impl):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 20, 26, generator=gen)
    hidden = base[:, ::2, ::2]  # [2, 10, 13] with strides in both T and D
    spans = torch.tensor([[[0, 10], [2, 5]], [[9, 10], [0, 0]]])
    torch.testing.assert_close(forward(impl, hidden, spans), ref.segment_pool(hidden, spans))


def test_reference_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    seq_len, spans = span_case("overlapping")
    hidden = torch.randn(spans.shape[0], seq_len, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: ref.segment_pool(h, spans), (hidden,))
    # The registered backward formula equals autograd through the reference.
    grad = torch.randn(spans.shape[0], spans.shape[1], 6, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad(ref.segment_pool(hidden, spans), hidden, grad)
    torch.testing.assert_close(ref.segment_pool_backward(grad, spans, seq_len, torch.float64), expected)


def test_op_double_backward_float64_reference_formula():
    """segment_pool_backward's own backward (registered for double backward) is segment_pool."""
    gen = torch.Generator().manual_seed(5)
    seq_len, spans = span_case("both-ends-and-empty")
    grad = torch.randn(spans.shape[0], spans.shape[1], 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: ref.segment_pool_backward(g, spans, seq_len, torch.float64), (grad,))


@requires_cpp
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
def test_opcheck(dtype):
    gen = torch.Generator().manual_seed(6)
    seq_len, spans = span_case("overlapping")
    hidden = torch.randn(spans.shape[0], seq_len, 9, generator=gen).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.tga_fast.segment_pool.default, (hidden, spans))
    grad = torch.randn(spans.shape[0], spans.shape[1], 9, generator=gen).requires_grad_()
    torch.library.opcheck(torch.ops.tga_fast.segment_pool_backward.default, (grad, spans, seq_len, dtype))
