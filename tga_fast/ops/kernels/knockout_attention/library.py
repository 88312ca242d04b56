"""The ``tga_fast::knockout_attention`` operators: schema, fake kernel and autograd over the reference.

    knockout_attention(Tensor q, Tensor k, Tensor v, Tensor blocked, float? scale, Tensor? key_valid) -> Tensor
        q [B, H, Tq, d], k/v [B, Hkv, Tk, d], blocked/key_valid [B, Tk] bool -> out [B, H, Tq, d] in q's dtype
    knockout_attention_backward(grad_out, q, k, v, blocked, scale, key_valid) -> (grad_q, grad_k, grad_v)

The forward has a Triton kernel for CUDA and no C++ one: on a CPU the reference (SDPA with a boolean mask) is
the fast path. The backward is the reference on every device (the analyses run under no_grad; the gradient
exists so that the op composes with autograd like the SDPA it replaces).
"""

from __future__ import annotations

import torch

from tga_fast.ops._registration import OpSpec, define
from tga_fast.ops.kernels.knockout_attention import reference


def _fake(q, k, v, blocked, scale=None, key_valid=None):
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, blocked, scale, key_valid = inputs
    ctx.save_for_backward(q, k, v, blocked, key_valid)
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k, v, blocked, key_valid = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.tga_fast.knockout_attention_backward(
        grad_out, q, k, v, blocked, ctx.scale, key_valid
    )
    return grad_q, grad_k, grad_v, None, None, None


def _backward_fake(grad_out, q, k, v, blocked, scale, key_valid):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


define(
    OpSpec(
        schema="knockout_attention(Tensor q, Tensor k, Tensor v, Tensor blocked, float? scale=None, "
        "Tensor? key_valid=None) -> Tensor",
        reference=reference.knockout_attention,
        fake=_fake,
        kernel_devices=("cuda",),
        backward=_backward,
        setup_context=_setup_context,
        triton_module="tga_fast.ops.kernels.knockout_attention.triton",
    )
)
define(
    OpSpec(
        schema="knockout_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor blocked, "
        "float? scale, Tensor? key_valid) -> (Tensor, Tensor, Tensor)",
        reference=reference.knockout_attention_backward,
        fake=_backward_fake,
        kernel_devices=(),
    )
)
