"""The ``tga_fast::`` operators: one schema, fake kernel, default (reference) kernel and autograd each.

Device kernels register onto the same names when their library loads: the C++ extension with
``TORCH_LIBRARY_IMPL(tga_fast, CPU, m)``, Triton for CUDA below. A backend-specific registration outranks the
``CompositeExplicitAutograd`` reference, so the dispatcher picks the kernel by the tensors' device and user
code never branches on it.

    segment_pool(Tensor hidden, Tensor spans) -> Tensor
        hidden [B, T, D] f32/f16/bf16, spans [B, S, 2] int64 -> span means [B, S, D] in hidden's dtype
    segment_pool_backward(Tensor grad_pooled, Tensor spans, SymInt seq_len, ScalarType dtype) -> Tensor
        grad_pooled [B, S, D] -> grad_hidden [B, T, D] in dtype
    segment_cosine(Tensor hidden, Tensor spans, Tensor target, float eps) -> (Tensor, Tensor)
        target [B, D] -> (cos [B, S] f32, mean [B, S, D] f32); the mean is what the backward needs
"""

from __future__ import annotations

import importlib
import warnings

import torch

from tga_fast.ops import _backends
from tga_fast.ops.kernels.segment_cosine import reference as cosine_reference
from tga_fast.ops.kernels.segment_pool import reference as pool_reference

NAMESPACE = "tga_fast"
_lib = torch.library.Library(NAMESPACE, "DEF")

_lib.define("segment_pool(Tensor hidden, Tensor spans) -> Tensor")
_lib.define("segment_pool_backward(Tensor grad_pooled, Tensor spans, SymInt seq_len, ScalarType dtype) -> Tensor")
_lib.define("segment_cosine(Tensor hidden, Tensor spans, Tensor target, float eps) -> (Tensor, Tensor)")

OPS = ("segment_pool", "segment_pool_backward", "segment_cosine")


# --- reference kernels (the default for every device) ----------------------------------------------------


def _segment_pool_default(hidden, spans):
    _backends.check_fallback("segment_pool", hidden.device)
    return pool_reference.segment_pool(hidden, spans)


def _segment_pool_backward_default(grad_pooled, spans, seq_len, dtype):
    _backends.check_fallback("segment_pool_backward", grad_pooled.device)
    return pool_reference.segment_pool_backward(grad_pooled, spans, seq_len, dtype)


def _segment_cosine_default(hidden, spans, target, eps):
    _backends.check_fallback("segment_cosine", hidden.device)
    return cosine_reference.segment_cosine(hidden, spans, target, eps)


_lib.impl("segment_pool", _segment_pool_default, "CompositeExplicitAutograd")
_lib.impl("segment_pool_backward", _segment_pool_backward_default, "CompositeExplicitAutograd")
_lib.impl("segment_cosine", _segment_cosine_default, "CompositeExplicitAutograd")


# --- fake kernels (shapes and dtypes only: torch.compile, meta tensors) ------------------------------------


@torch.library.register_fake("tga_fast::segment_pool")
def _segment_pool_fake(hidden, spans):
    return hidden.new_empty((hidden.shape[0], spans.shape[1], hidden.shape[2]))


@torch.library.register_fake("tga_fast::segment_pool_backward")
def _segment_pool_backward_fake(grad_pooled, spans, seq_len, dtype):
    return grad_pooled.new_empty((grad_pooled.shape[0], seq_len, grad_pooled.shape[2]), dtype=dtype)


@torch.library.register_fake("tga_fast::segment_cosine")
def _segment_cosine_fake(hidden, spans, target, eps):
    batch, spans_per_sample, dim = hidden.shape[0], spans.shape[1], hidden.shape[2]
    accumulation = pool_reference.accumulation_dtype(hidden.dtype)  # fp32 (fp64 only for gradcheck)
    cos = hidden.new_empty((batch, spans_per_sample), dtype=accumulation)
    mean = hidden.new_empty((batch, spans_per_sample, dim), dtype=accumulation)
    return cos, mean


# --- autograd ------------------------------------------------------------------------------------------


def _pool_setup_context(ctx, inputs, output):
    hidden, spans = inputs
    ctx.save_for_backward(spans)
    ctx.seq_len, ctx.dtype = hidden.shape[1], hidden.dtype


def _pool_backward(ctx, grad_pooled):
    (spans,) = ctx.saved_tensors
    grad_hidden = torch.ops.tga_fast.segment_pool_backward(grad_pooled, spans, ctx.seq_len, ctx.dtype)
    return grad_hidden, None


torch.library.register_autograd("tga_fast::segment_pool", _pool_backward, setup_context=_pool_setup_context)


def _pool_backward_setup_context(ctx, inputs, output):
    grad_pooled, spans, _seq_len, _dtype = inputs
    ctx.save_for_backward(spans)
    ctx.dtype = grad_pooled.dtype


def _pool_backward_backward(ctx, grad_grad_hidden):
    # segment_pool_backward is linear in grad_pooled with the span means as its adjoint.
    (spans,) = ctx.saved_tensors
    grad_grad_pooled = torch.ops.tga_fast.segment_pool(grad_grad_hidden, spans).to(ctx.dtype)
    return grad_grad_pooled, None, None, None


torch.library.register_autograd(
    "tga_fast::segment_pool_backward", _pool_backward_backward, setup_context=_pool_backward_setup_context
)


def _cosine_setup_context(ctx, inputs, output):
    hidden, spans, target, eps = inputs
    cos, mean = output
    ctx.save_for_backward(spans, target, cos, mean)
    ctx.seq_len, ctx.dtype, ctx.eps = hidden.shape[1], hidden.dtype, eps


def _cosine_backward(ctx, grad_cos, grad_mean):
    spans, target, cos, mean = ctx.saved_tensors
    if grad_cos is None:
        grad_cos = torch.zeros_like(cos)
    grad_mean_from_cos, grad_target = cosine_reference.cosine_grads(grad_cos, mean, target, cos, ctx.eps)
    if grad_mean is not None:
        grad_mean_from_cos = grad_mean_from_cos + grad_mean
    grad_hidden = torch.ops.tga_fast.segment_pool_backward(grad_mean_from_cos, spans, ctx.seq_len, ctx.dtype)
    return grad_hidden, None, grad_target.to(target.dtype), None


torch.library.register_autograd("tga_fast::segment_cosine", _cosine_backward, setup_context=_cosine_setup_context)


# --- device kernels ------------------------------------------------------------------------------------


def _triton_kernel(op: str, module: str, function: str, reference):
    """A CUDA kernel that imports its Triton module on the first call; if that fails it warns once and
    serves the reference (or raises under TGA_FAST_STRICT=1)."""
    state: dict[str, object] = {}

    def kernel(*args):
        if "fn" not in state:
            try:
                state["fn"] = getattr(importlib.import_module(module), function)
            except Exception as error:  # an import error of triton or a driver error, reported once
                status = _backends.STATUS["cuda"]
                status.available, status.reason = False, f"importing {module} failed: {error!r}"
                _backends.check_fallback(op, torch.device("cuda"))
                warnings.warn(f"tga_fast::{op}: {status.reason}; using the PyTorch reference", stacklevel=2)
                state["fn"] = reference
        return state["fn"](*args)

    return kernel


def _register_triton() -> None:
    _lib.impl(
        "segment_pool",
        _triton_kernel("segment_pool", "tga_fast.ops.kernels.segment_pool.triton", "segment_pool", pool_reference.segment_pool),
        "CUDA",
    )
    _lib.impl(
        "segment_pool_backward",
        _triton_kernel(
            "segment_pool_backward",
            "tga_fast.ops.kernels.segment_pool.triton",
            "segment_pool_backward",
            pool_reference.segment_pool_backward,
        ),
        "CUDA",
    )
    _lib.impl(
        "segment_cosine",
        _triton_kernel(
            "segment_cosine", "tga_fast.ops.kernels.segment_cosine.triton", "segment_cosine", cosine_reference.segment_cosine
        ),
        "CUDA",
    )


STATUS = _backends.load()
if STATUS["cuda"].available:
    _register_triton()


# === attention ops =======================================================================================
#
#     knockout_attention(Tensor q, Tensor k, Tensor v, Tensor blocked, float? scale, Tensor? key_valid) -> Tensor
#         q [B, H, Tq, d], k/v [B, Hkv, Tk, d], blocked/key_valid [B, Tk] bool -> out [B, H, Tq, d] in q's dtype
#     knockout_attention_backward(grad_out, q, k, v, blocked, scale, key_valid) -> (grad_q, grad_k, grad_v)
#     attention_share(Tensor q, Tensor k, Tensor key_set, Tensor rows, float? scale, Tensor? key_valid) -> Tensor
#         q [B, H, T, d], k [B, Hkv, T, d], key_set/key_valid [B, T] bool, rows [B, R] int64 -> share [B, H, R] f32
#     attention_share_backward(grad_share, q, k, key_set, rows, scale, key_valid) -> (grad_q, grad_k)
#
# The forwards have Triton kernels for CUDA (no C++ CPU kernel: on a CPU the reference, SDPA for the
# knockout, is the fast path). The backwards are the reference on every device (the analyses run under
# no_grad; the gradients exist so that the ops compose with autograd like the SDPA they replace).

from tga_fast.ops.kernels.attention_share import reference as share_reference  # noqa: E402
from tga_fast.ops.kernels.knockout_attention import reference as knockout_reference  # noqa: E402

_lib.define(
    "knockout_attention(Tensor q, Tensor k, Tensor v, Tensor blocked, float? scale=None, Tensor? key_valid=None) "
    "-> Tensor"
)
_lib.define(
    "knockout_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor blocked, float? scale, "
    "Tensor? key_valid) -> (Tensor, Tensor, Tensor)"
)
_lib.define(
    "attention_share(Tensor q, Tensor k, Tensor key_set, Tensor rows, float? scale=None, Tensor? key_valid=None) "
    "-> Tensor"
)
_lib.define(
    "attention_share_backward(Tensor grad_share, Tensor q, Tensor k, Tensor key_set, Tensor rows, float? scale, "
    "Tensor? key_valid) -> (Tensor, Tensor)"
)

ATTENTION_OPS = ("knockout_attention", "knockout_attention_backward", "attention_share", "attention_share_backward")
OPS = OPS + ATTENTION_OPS

# Devices with a kernel for each forward; the backwards have none (kernel_devices=()).
ATTENTION_KERNEL_DEVICES = ("cuda",)


def _knockout_attention_default(q, k, v, blocked, scale=None, key_valid=None):
    _backends.check_fallback("knockout_attention", q.device, ATTENTION_KERNEL_DEVICES)
    return knockout_reference.knockout_attention(q, k, v, blocked, scale, key_valid)


def _knockout_attention_backward_default(grad_out, q, k, v, blocked, scale, key_valid):
    _backends.check_fallback("knockout_attention_backward", q.device, ())
    return knockout_reference.knockout_attention_backward(grad_out, q, k, v, blocked, scale, key_valid)


def _attention_share_default(q, k, key_set, rows, scale=None, key_valid=None):
    _backends.check_fallback("attention_share", q.device, ATTENTION_KERNEL_DEVICES)
    return share_reference.attention_share(q, k, key_set, rows, scale, key_valid)


def _attention_share_backward_default(grad_share, q, k, key_set, rows, scale, key_valid):
    _backends.check_fallback("attention_share_backward", q.device, ())
    return share_reference.attention_share_backward(grad_share, q, k, key_set, rows, scale, key_valid)


_lib.impl("knockout_attention", _knockout_attention_default, "CompositeExplicitAutograd")
_lib.impl("knockout_attention_backward", _knockout_attention_backward_default, "CompositeExplicitAutograd")
_lib.impl("attention_share", _attention_share_default, "CompositeExplicitAutograd")
_lib.impl("attention_share_backward", _attention_share_backward_default, "CompositeExplicitAutograd")


@torch.library.register_fake("tga_fast::knockout_attention")
def _knockout_attention_fake(q, k, v, blocked, scale=None, key_valid=None):
    return q.new_empty(q.shape)


@torch.library.register_fake("tga_fast::knockout_attention_backward")
def _knockout_attention_backward_fake(grad_out, q, k, v, blocked, scale, key_valid):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("tga_fast::attention_share")
def _attention_share_fake(q, k, key_set, rows, scale=None, key_valid=None):
    accumulation = pool_reference.accumulation_dtype(q.dtype)  # fp32 (fp64 only for gradcheck)
    return q.new_empty((q.shape[0], q.shape[1], rows.shape[1]), dtype=accumulation)


@torch.library.register_fake("tga_fast::attention_share_backward")
def _attention_share_backward_fake(grad_share, q, k, key_set, rows, scale, key_valid):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _knockout_setup_context(ctx, inputs, output):
    q, k, v, blocked, scale, key_valid = inputs
    ctx.save_for_backward(q, k, v, blocked, key_valid)
    ctx.scale = scale


def _knockout_backward(ctx, grad_out):
    q, k, v, blocked, key_valid = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.tga_fast.knockout_attention_backward(
        grad_out, q, k, v, blocked, ctx.scale, key_valid
    )
    return grad_q, grad_k, grad_v, None, None, None


torch.library.register_autograd(
    "tga_fast::knockout_attention", _knockout_backward, setup_context=_knockout_setup_context
)


def _share_setup_context(ctx, inputs, output):
    q, k, key_set, rows, scale, key_valid = inputs
    ctx.save_for_backward(q, k, key_set, rows, key_valid)
    ctx.scale = scale


def _share_backward(ctx, grad_share):
    q, k, key_set, rows, key_valid = ctx.saved_tensors
    grad_q, grad_k = torch.ops.tga_fast.attention_share_backward(grad_share, q, k, key_set, rows, ctx.scale, key_valid)
    return grad_q, grad_k, None, None, None, None


torch.library.register_autograd("tga_fast::attention_share", _share_backward, setup_context=_share_setup_context)


def _register_attention_triton() -> None:
    _lib.impl(
        "knockout_attention",
        _triton_kernel(
            "knockout_attention",
            "tga_fast.ops.kernels.knockout_attention.triton",
            "knockout_attention",
            knockout_reference.knockout_attention,
        ),
        "CUDA",
    )
    _lib.impl(
        "attention_share",
        _triton_kernel(
            "attention_share", "tga_fast.ops.kernels.attention_share.triton", "attention_share", share_reference.attention_share
        ),
        "CUDA",
    )


if STATUS["cuda"].available:
    _register_attention_triton()
