"""The fused ops of tga_fast: public functions over ``torch.ops.tga_fast``.

Each function checks its arguments, then calls the dispatcher, which runs the C++ kernel for CPU tensors,
the Triton kernel for CUDA tensors and the pure-PyTorch reference elsewhere (see ``tga-fast env``).
"""

from __future__ import annotations

import torch

from tga_fast.ops import _library  # noqa: F401  (defines and registers the ops)
from tga_fast.ops._backends import STATUS as BACKENDS
from tga_fast.ops._validation import check_hidden, check_spans, check_target
from tga_fast.ops._validation import check_key_mask, check_query_key, check_rows, check_scale, check_value

__all__ = ["BACKENDS", "attention_share", "knockout_attention", "segment_cosine", "segment_pool"]


def segment_pool(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of each span's rows.

    Args:
        hidden: ``[B, T, D]`` float32, float16 or bfloat16.
        spans: int64 ``[B, S, 2]``, half-open ``[start, end)`` row ranges of each sample, ``0 <= start <= end <= T``;
            spans may be empty (pooled to zeros) and may overlap.

    Returns:
        ``[B, S, D]`` in hidden's dtype, accumulated in fp32. Differentiable in ``hidden``.
    """
    check_hidden(hidden)
    check_spans(spans, hidden)
    return torch.ops.tga_fast.segment_pool(hidden, spans)


def segment_cosine(
    hidden: torch.Tensor, spans: torch.Tensor, target: torch.Tensor, eps: float = 1e-8, *, return_mean: bool = False
):
    """Cosine similarity between each span's mean and the sample's target vector, fused.

    Args:
        hidden: ``[B, T, D]`` float32, float16 or bfloat16.
        spans: int64 ``[B, S, 2]`` half-open row ranges (see :func:`segment_pool`).
        target: ``[B, D]`` float32, float16 or bfloat16, on hidden's device.
        eps: as in ``torch.nn.functional.cosine_similarity``: each norm is clamped to at least ``eps``.
        return_mean: also return the fp32 span means ``[B, S, D]`` the kernel computed on the way.

    Returns:
        ``cos [B, S]`` float32 (and the means if asked). Differentiable in ``hidden`` and ``target``.
    """
    check_hidden(hidden)
    check_spans(spans, hidden)
    check_target(target, hidden)
    cos, mean = torch.ops.tga_fast.segment_cosine(hidden, spans, target, float(eps))
    return (cos, mean) if return_mean else cos


def knockout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    *,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention in which blocked keys are invisible to every later query (information-flow knockout).

    Args:
        q: ``[B, H, Tq, d]`` float32, float16 or bfloat16: the last ``Tq`` positions (``Tq == Tk`` for a
            prefill, ``Tq == 1`` for a decoding step with a KV cache).
        k, v: ``[B, Hkv, Tk, d]`` in q's dtype, ``H % Hkv == 0`` (query head ``h`` reads kv head ``h // (H // Hkv)``).
        blocked: bool ``[B, Tk]``: key ``j`` is invisible to every query at a position ``p > j`` (the blocked
            token still sees itself and what precedes it).
        scale: the score scale, ``1 / sqrt(d)`` by default.
        key_valid: optional bool ``[B, Tk]``; False marks a padding key, invisible to every query.

    Returns:
        ``[B, H, Tq, d]`` in q's dtype (softmax in fp32); a query that sees no key gets zeros.
        Differentiable in q, k and v (the backward is the PyTorch reference on every device).
    """
    check_query_key(q, k, same_length=False)
    check_value(v, k)
    check_key_mask(blocked, "blocked", k)
    if key_valid is not None:
        check_key_mask(key_valid, "key_valid", k)
    return torch.ops.tga_fast.knockout_attention(q, k, v, blocked, check_scale(scale), key_valid)


def attention_share(
    q: torch.Tensor,
    k: torch.Tensor,
    key_set: torch.Tensor,
    rows: torch.Tensor,
    *,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of the causal attention of the query rows ``rows`` that falls on the keys in ``key_set``.

    Args:
        q: ``[B, H, T, d]`` float32, float16 or bfloat16.
        k: ``[B, Hkv, T, d]`` in q's dtype, ``H % Hkv == 0`` (grouped-query heads as in :func:`knockout_attention`).
        key_set: bool ``[B, T]``: the keys whose share is measured (e.g. the toxic tokens).
        rows: int64 ``[B, R]``: the query positions, in ``[0, T)`` (checked for CPU tensors only).
        scale: the score scale, ``1 / sqrt(d)`` by default.
        key_valid: optional bool ``[B, T]``; False marks a padding key, invisible to every query.

    Returns:
        ``[B, H, R]`` float32 in ``[0, 1]``: per head, the softmax probability of each requested row summed over
        ``key_set``, without materialising a ``T x T`` matrix; 0 for a row that sees no key.
        Differentiable in q and k (the backward is the PyTorch reference on every device).
    """
    check_query_key(q, k, same_length=True)
    check_key_mask(key_set, "key_set", k)
    check_rows(rows, k)
    if key_valid is not None:
        check_key_mask(key_valid, "key_valid", k)
    return torch.ops.tga_fast.attention_share(q, k, key_set, rows, check_scale(scale), key_valid)
