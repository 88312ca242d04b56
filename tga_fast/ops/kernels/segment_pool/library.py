"""The ``tga_fast::segment_pool`` operators: schema, fake kernel and autograd over the reference.

    segment_pool(Tensor hidden, Tensor spans) -> Tensor
        hidden [B, T, D] f32/f16/bf16, spans [B, S, 2] int64 -> span means [B, S, D] in hidden's dtype
    segment_pool_backward(Tensor grad_pooled, Tensor spans, SymInt seq_len, ScalarType dtype) -> Tensor
        grad_pooled [B, S, D] -> grad_hidden [B, T, D] in dtype

Kernels: the reference below on every device, C++ on the CPU (csrc/segment_pool.cpp), Triton on CUDA.
"""

from __future__ import annotations

import torch

from tga_fast.ops._registration import OpSpec, define
from tga_fast.ops.kernels.segment_pool import reference

TRITON = "tga_fast.ops.kernels.segment_pool.triton"


def _pool_fake(hidden, spans):
    return hidden.new_empty((hidden.shape[0], spans.shape[1], hidden.shape[2]))


def _pool_setup_context(ctx, inputs, output):
    hidden, spans = inputs
    ctx.save_for_backward(spans)
    ctx.seq_len, ctx.dtype = hidden.shape[1], hidden.dtype


def _pool_backward(ctx, grad_pooled):
    (spans,) = ctx.saved_tensors
    grad_hidden = torch.ops.tga_fast.segment_pool_backward(grad_pooled, spans, ctx.seq_len, ctx.dtype)
    return grad_hidden, None


def _backward_fake(grad_pooled, spans, seq_len, dtype):
    return grad_pooled.new_empty((grad_pooled.shape[0], seq_len, grad_pooled.shape[2]), dtype=dtype)


def _backward_setup_context(ctx, inputs, output):
    grad_pooled, spans, _seq_len, _dtype = inputs
    ctx.save_for_backward(spans)
    ctx.dtype = grad_pooled.dtype


def _backward_backward(ctx, grad_grad_hidden):
    # segment_pool_backward is linear in grad_pooled with the span means as its adjoint.
    (spans,) = ctx.saved_tensors
    grad_grad_pooled = torch.ops.tga_fast.segment_pool(grad_grad_hidden, spans).to(ctx.dtype)
    return grad_grad_pooled, None, None, None


define(
    OpSpec(
        schema="segment_pool(Tensor hidden, Tensor spans) -> Tensor",
        reference=reference.segment_pool,
        fake=_pool_fake,
        backward=_pool_backward,
        setup_context=_pool_setup_context,
        triton_module=TRITON,
    )
)
define(
    OpSpec(
        schema="segment_pool_backward(Tensor grad_pooled, Tensor spans, SymInt seq_len, ScalarType dtype) -> Tensor",
        reference=reference.segment_pool_backward,
        fake=_backward_fake,
        backward=_backward_backward,
        setup_context=_backward_setup_context,
        triton_module=TRITON,
    )
)
