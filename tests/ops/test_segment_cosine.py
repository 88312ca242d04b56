"""segment_cosine: the C++ and Triton kernels against the reference, the eps semantics, gradients, opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
from tga_fast.ops.kernels.segment_cosine import reference as ref
from tga_fast.ops.kernels.segment_pool import reference as pool_ref

IMPLEMENTATIONS = ("cpp", pytest.param("triton", marks=pytest.mark.triton))
EPS = 1e-8


def forward(impl, hidden, spans, target, eps=EPS):
    if impl == "reference":
        return ref.segment_cosine(hidden, spans, target, eps)
    if impl == "cpp":
        require_cpp()
        return torch.ops.tga_fast.segment_cosine(hidden, spans, target, eps)
    device = triton_device()
    cos, mean = triton_module("segment_cosine").segment_cosine(hidden.to(device), spans.to(device), target.to(device), eps)
    return cos.cpu(), mean.cpu()


def inputs(dtype, seq_len, spans, dim, seed=0, target_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(spans.shape[0], seq_len, dim, generator=gen).to(dtype)
    # A target correlated with the first span's mean, so cosines are far from 0 and the test is sharp.
    target = ref.segment_cosine(hidden.float(), spans[:, :1], torch.ones(spans.shape[0], dim), EPS)[1][:, 0]
    target = (target + 0.3 * torch.randn(spans.shape[0], dim, generator=gen)).to(target_dtype or dtype)
    return hidden, target


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SPAN_CASES))
@pytest.mark.parametrize("dim", [1, 37])
def test_forward_matches_reference(impl, dtype, case, dim):
    seq_len, spans = span_case(case)
    hidden, target = inputs(dtype, seq_len, spans, dim)
    cos, mean = forward(impl, hidden, spans, target)
    assert cos.dtype == mean.dtype == torch.float32
    assert cos.shape == spans.shape[:2] and mean.shape == (*spans.shape[:2], dim)
    oracle_cos, oracle_mean = ref.segment_cosine(hidden.float(), spans, target.float(), EPS)
    # Inputs are identical after the upcast, so the reference's own error is 0: the fp32 floor is the budget.
    assert_within_budget(cos, oracle_cos, oracle_cos, torch.float32)
    assert_within_budget(mean, oracle_mean, oracle_mean, torch.float32)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_eps_semantics_match_cosine_similarity(impl):
    hidden = torch.zeros(2, 4, 3)
    hidden[0, 0] = torch.tensor([3e-9, 0.0, 0.0])  # a mean far below eps
    hidden[1, 1:3] = torch.tensor([[1.0, 2.0, 2.0], [1.0, 2.0, 2.0]])
    spans = torch.tensor([[[0, 1], [1, 1]], [[1, 3], [0, 4]]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sample 1: a zero target
    cos, _ = forward(impl, hidden, spans, target, eps=1e-8)
    means = pool_ref.segment_mean(hidden, spans)
    expected = F.cosine_similarity(means, target[:, None], dim=-1, eps=1e-8)
    torch.testing.assert_close(cos, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SPAN_CASES))
def test_backward_matches_reference(impl, dtype, case):
    """The registered backward (cosine grads + segment_pool_backward) through each kernel, against autograd
    through the fp32 reference."""
    seq_len, spans = span_case(case)
    hidden, target = inputs(dtype, seq_len, spans, 37, seed=1)
    grad_cos = torch.randn(spans.shape[:2], generator=torch.Generator().manual_seed(7))
    cos, mean = forward(impl, hidden, spans, target)
    grad_mean, grad_target = ref.cosine_grads(grad_cos, mean, target, cos, EPS)
    if impl == "cpp":
        grad_hidden = torch.ops.tga_fast.segment_pool_backward(grad_mean, spans, seq_len, dtype)
    else:
        device = triton_device()
        launcher = triton_module("segment_pool").segment_pool_backward
        grad_hidden = launcher(grad_mean.to(device), spans.to(device), seq_len, dtype).cpu()

    h32 = hidden.float().requires_grad_()
    t32 = target.float().requires_grad_()
    oracle_cos, _ = ref.segment_cosine(h32, spans, t32, EPS)
    oracle_h, oracle_t = torch.autograd.grad(oracle_cos, (h32, t32), grad_cos)
    low_h, low_t = lowp_reference_grads(hidden, spans, target, grad_cos)
    assert grad_hidden.dtype == dtype
    assert_within_budget(grad_hidden, oracle_h, low_h, dtype)
    assert_within_budget(grad_target.to(dtype), oracle_t, low_t, dtype)


def lowp_reference_grads(hidden, spans, target, grad_cos):
    """The reference's own gradients in the low precision: fp32 math, rounded to the input dtype."""
    h = hidden.float().requires_grad_()
    t = target.float().requires_grad_()
    cos, _ = ref.segment_cosine(h, spans, t, EPS)
    grad_h, grad_t = torch.autograd.grad(cos, (h, t), grad_cos)
    return grad_h.to(hidden.dtype), grad_t.to(target.dtype)


@requires_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# The LLaVA-7B-sized shape (2 s per dtype) runs in `make test`, not in the fast loop.
@pytest.mark.parametrize("shape", [(3, 257, 1031, 5), pytest.param((4, 1200, 4096, 2), marks=pytest.mark.slow)])
def test_cpp_autograd_random_spans(dtype, shape):
    batch, seq_len, dim, count = shape
    gen = torch.Generator().manual_seed(8)
    spans = random_spans(batch, count, seq_len, gen)
    hidden, target = inputs(dtype, seq_len, spans, dim, seed=9)
    hidden.requires_grad_()
    target.requires_grad_()
    cos, _ = torch.ops.tga_fast.segment_cosine(hidden, spans, target, EPS)
    grad_cos = torch.randn(cos.shape, generator=gen)
    grad_h, grad_t = torch.autograd.grad(cos, (hidden, target), grad_cos)
    h32 = hidden.detach().float().requires_grad_()
    t32 = target.detach().float().requires_grad_()
    oracle_cos, _ = ref.segment_cosine(h32, spans, t32, EPS)
    oracle_h, oracle_t = torch.autograd.grad(oracle_cos, (h32, t32), grad_cos)
    low_h, low_t = lowp_reference_grads(hidden.detach(), spans, target.detach(), grad_cos)
    assert_within_budget(cos, oracle_cos, oracle_cos, torch.float32)
    assert_within_budget(grad_h, oracle_h, low_h, dtype)
    assert_within_budget(grad_t, oracle_t, low_t, dtype)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_target_dtype_may_differ(impl):
    seq_len, spans = span_case("different-lengths")
    hidden, target = inputs(torch.bfloat16, seq_len, spans, 37, target_dtype=torch.float32)
    cos, _ = forward(impl, hidden, spans, target)
    expected, _ = ref.segment_cosine(hidden.float(), spans, target, EPS)
    assert_within_budget(cos, expected, expected, torch.float32)


@pytest.mark.parametrize("impl", ("reference", *IMPLEMENTATIONS))
def test_nan_propagates_only_to_its_span(impl):
    hidden = torch.randn(1, 6, 4)
    hidden[0, 0, 1] = float("nan")
    hidden[0, 5] = float("inf")  # outside every span
    spans = torch.tensor([[[0, 2], [2, 5]]])
    cos, _ = forward(impl, hidden, spans, torch.randn(1, 4))
    assert cos[0, 0].isnan() and cos[0, 1].isfinite()


def test_reference_gradcheck_float64():
    seq_len, spans = span_case("overlapping")
    hidden, target = inputs(torch.float64, seq_len, spans, 5, seed=10)
    hidden.requires_grad_()
    target.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, t: ref.segment_cosine(h, spans, t, EPS)[0], (hidden, target))


def test_cosine_grads_formula_equals_autograd_float64():
    """The closed-form gradient the op registers equals autograd of F.cosine_similarity, also where a norm
    is clamped to eps or exactly zero."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    x[0, 1] = 1e-10  # below eps
    x[1, 2] = 0.0  # exactly zero
    y = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    x.requires_grad_()
    y.requires_grad_()
    cos = F.cosine_similarity(x, y[:, None], dim=-1, eps=EPS)
    grad_cos = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    expected_x, expected_y = torch.autograd.grad(cos, (x, y), grad_cos)
    got_x, got_y = ref.cosine_grads(grad_cos, x.detach(), y.detach(), cos.detach(), EPS)
    torch.testing.assert_close(got_x, expected_x)
    torch.testing.assert_close(got_y, expected_y)


@requires_cpp
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
def test_opcheck(dtype):
    seq_len, spans = span_case("both-ends-and-empty")
    hidden, target = inputs(dtype, seq_len, spans, 7, seed=12)
    args = (hidden.requires_grad_(), spans, target.requires_grad_(), EPS)
    torch.library.opcheck(torch.ops.tga_fast.segment_cosine.default, args)
