"""The ``tga_fast::attention_share`` operators: schema, fake kernel and autograd over the reference.

    attention_share(Tensor q, Tensor k, Tensor key_set, Tensor rows, float? scale, Tensor? key_valid) -> Tensor
        q [B, H, T, d], k [B, Hkv, T, d], key_set/key_valid [B, T] bool, rows [B, R] int64 -> share [B, H, R] f32
    attention_share_backward(grad_share, q, k, key_set, rows, scale, key_valid) -> (grad_q, grad_k)

The forward has a Triton kernel for CUDA and no C++ one; the backward is the reference on every device.
"""

from __future__ import annotations

import torch

from tga_fast.ops._registration import OpSpec, define
from tga_fast.ops.kernels.attention_share import reference
from tga_fast.ops.kernels.segment_pool.reference import accumulation_dtype


def _fake(q, k, key_set, rows, scale=None, key_valid=None):
    accumulation = accumulation_dtype(q.dtype)  # fp32 (fp64 only for gradcheck)
    return q.new_empty((q.shape[0], q.shape[1], rows.shape[1]), dtype=accumulation)


def _setup_context(ctx, inputs, output):
    q, k, key_set, rows, scale, key_valid = inputs
    ctx.save_for_backward(q, k, key_set, rows, key_valid)
    ctx.scale = scale


def _backward(ctx, grad_share):
    q, k, key_set, rows, key_valid = ctx.saved_tensors
    grad_q, grad_k = torch.ops.tga_fast.attention_share_backward(grad_share, q, k, key_set, rows, ctx.scale, key_valid)
    return grad_q, grad_k, None, None, None, None


def _backward_fake(grad_share, q, k, key_set, rows, scale, key_valid):
    return q.new_empty(q.shape), k.new_empty(k.shape)


define(
    OpSpec(
        schema="attention_share(Tensor q, Tensor k, Tensor key_set, Tensor rows, float? scale=None, "
        "Tensor? key_valid=None) -> Tensor",
        reference=reference.attention_share,
        fake=_fake,
        kernel_devices=("cuda",),
        backward=_backward,
        setup_context=_setup_context,
        triton_module="tga_fast.ops.kernels.attention_share.triton",
    )
)
define(
    OpSpec(
        schema="attention_share_backward(Tensor grad_share, Tensor q, Tensor k, Tensor key_set, Tensor rows, "
        "float? scale, Tensor? key_valid) -> (Tensor, Tensor)",
        reference=reference.attention_share_backward,
        fake=_backward_fake,
        kernel_devices=(),
    )
)
