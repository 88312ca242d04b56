"""The ``tga_fast::segment_cosine`` operator: schema, fake kernel and autograd over the reference.

    segment_cosine(Tensor hidden, Tensor spans, Tensor target, float eps) -> (Tensor, Tensor)
        hidden [B, T, D], spans [B, S, 2] int64, target [B, D] -> (cos [B, S] f32, mean [B, S, D] f32);
        the mean is what the backward needs

Kernels: the reference below on every device, C++ on the CPU (csrc/segment_cosine.cpp), Triton on CUDA. The
backward is the closed-form cosine gradient followed by ``tga_fast::segment_pool_backward``.
"""

from __future__ import annotations

import torch

from tga_fast.ops._registration import OpSpec, define
from tga_fast.ops.kernels.segment_cosine import reference
from tga_fast.ops.kernels.segment_pool.reference import accumulation_dtype


def _fake(hidden, spans, target, eps):
    batch, spans_per_sample, dim = hidden.shape[0], spans.shape[1], hidden.shape[2]
    accumulation = accumulation_dtype(hidden.dtype)  # fp32 (fp64 only for gradcheck)
    cos = hidden.new_empty((batch, spans_per_sample), dtype=accumulation)
    mean = hidden.new_empty((batch, spans_per_sample, dim), dtype=accumulation)
    return cos, mean


def _setup_context(ctx, inputs, output):
    hidden, spans, target, eps = inputs
    cos, mean = output
    ctx.save_for_backward(spans, target, cos, mean)
    ctx.seq_len, ctx.dtype, ctx.eps = hidden.shape[1], hidden.dtype, eps


def _backward(ctx, grad_cos, grad_mean):
    spans, target, cos, mean = ctx.saved_tensors
    if grad_cos is None:
        grad_cos = torch.zeros_like(cos)
    grad_mean_from_cos, grad_target = reference.cosine_grads(grad_cos, mean, target, cos, ctx.eps)
    if grad_mean is not None:
        grad_mean_from_cos = grad_mean_from_cos + grad_mean
    grad_hidden = torch.ops.tga_fast.segment_pool_backward(grad_mean_from_cos, spans, ctx.seq_len, ctx.dtype)
    return grad_hidden, None, grad_target.to(target.dtype), None


define(
    OpSpec(
        schema="segment_cosine(Tensor hidden, Tensor spans, Tensor target, float eps) -> (Tensor, Tensor)",
        reference=reference.segment_cosine,
        fake=_fake,
        backward=_backward,
        setup_context=_setup_context,
        triton_module="tga_fast.ops.kernels.segment_cosine.triton",
    )
)
