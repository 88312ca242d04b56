"""knockout_attention, the pure-PyTorch reference: the specification, the default kernel and the test oracle.

Causal attention with an information-flow knockout (METHOD.md 3 C): a blocked key ``j`` is invisible to
every query at a later position, while the blocked token itself still sees itself and what precedes it.
Queries are the last ``Tq`` of the ``Tk`` positions (bottom-right aligned, as in KV-cached decoding: query
``i`` sits at position ``Tk - Tq + i``). Padding keys (``key_valid`` False) are invisible to every query; a
query that sees no key at all outputs zeros, never NaN.

    q [B, H, Tq, d]   k, v [B, Hkv, Tk, d]   blocked, key_valid [B, Tk] bool   out [B, H, Tq, d]

    Tq = Tk = 6, blocked = {2}          key j ->  0 1 2 3 4 5
                                   query 0:      #
                                   query 1:      # #
                                   query 2:      # # #          (the blocked token sees itself)
                                   query 3:      # # . #
                                   query 4:      # # . # #
                                   query 5:      # # . # # #

Grouped-query attention: query head ``h`` reads kv head ``h // (H // Hkv)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def default_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def visibility(
    blocked: torch.Tensor, key_valid: torch.Tensor | None, num_queries: int
) -> torch.Tensor:
    """Which keys each query sees: bool ``[B, Tq, Tk]`` (True = attend), queries bottom-right aligned."""
    num_keys = blocked.shape[1]
    keys = torch.arange(num_keys, device=blocked.device)
    positions = torch.arange(num_keys - num_queries, num_keys, device=blocked.device)[:, None]  # [Tq, 1]
    earlier = keys < positions  # [Tq, Tk]
    visible = (earlier & ~blocked[:, None, :]) | (keys == positions)  # [B, Tq, Tk]
    if key_valid is not None:
        visible = visible & key_valid[:, None, :]
    return visible


def knockout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` through SDPA with a boolean mask; ``[B, H, Tq, d]`` contiguous.

    Differentiable in q, k and v when called directly (the op registers :func:`knockout_attention_backward`)."""
    visible = visibility(blocked, key_valid, q.shape[2])
    seen = visible.any(dim=-1)  # [B, Tq]: False only for a query whose every key is padding
    # A row with no visible key would be 0/0 in some SDPA backends (NaN, also in the gradient): let it see
    # every key, then zero its output.
    visible = visible | ~seen[..., None]
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=visible[:, None],
        scale=default_scale(scale, q.shape[-1]),
        enable_gqa=q.shape[1] != k.shape[1],
    )
    out = torch.where(seen[:, None, :, None], out, 0)
    return out.contiguous()


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, visible: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(probs [B, Hkv, G, Tq, Tk], q grouped [B, Hkv, G, Tq, d])``; rows with no visible key are zeros."""
    batch, heads, num_queries, dim = q.shape
    kv_heads = k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    grouped = q.to(acc).reshape(batch, kv_heads, heads // kv_heads, num_queries, dim)
    scores = (grouped @ k.to(acc)[:, :, None].transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an all -inf row is NaN: no visible key -> zeros
    return probs, grouped


def knockout_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k, grad_v)`` of :func:`knockout_attention`, materialising the ``[Tq, Tk]`` probabilities
    in fp32 (the textbook backward: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K, dK = dS^T Q)."""
    batch, heads, num_queries, dim = q.shape
    kv_heads = k.shape[1]
    scale = default_scale(scale, dim)
    probs, grouped_q = attention_probabilities(q, k, visibility(blocked, key_valid, num_queries), scale)
    acc = probs.dtype
    grad = grad_out.to(acc).reshape(batch, kv_heads, heads // kv_heads, num_queries, dim)
    v_acc = v.to(acc)[:, :, None]
    out = probs @ v_acc
    grad_v = (probs.transpose(-1, -2) @ grad).sum(dim=2)
    grad_probs = grad @ v_acc.transpose(-1, -2)
    grad_scores = probs * (grad_probs - (grad * out).sum(dim=-1, keepdim=True)) * scale
    grad_q = (grad_scores @ k.to(acc)[:, :, None]).reshape(q.shape)
    grad_k = (grad_scores.transpose(-1, -2) @ grouped_q).sum(dim=2)
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)
