"""attention_share, the pure-PyTorch reference: the specification, the default kernel and the test oracle.

For a few query rows (METHOD.md 3 B: usually the last prompt position), the fraction of their causal
attention probability, per head, that falls on a set of keys (the toxic tokens):

    share[b, h, r] = sum_{j in key_set[b], j <= p} softmax_j(q[b, h, p] . k[b, h // G, j] * scale),   p = rows[b, r]

over the keys the row sees (``j <= p`` and ``key_valid[b, j]``). Only the requested rows are scored: ``R x T``
scores, never ``T x T``. A row that sees no key has share 0. Grouped-query heads as in knockout_attention.

    q [B, H, T, d]   k [B, Hkv, T, d]   key_set, key_valid [B, T] bool   rows [B, R] int64   share [B, H, R] fp32
"""

from __future__ import annotations

import torch

from tga_fast.ops.kernels.knockout_attention.reference import default_scale


def row_visibility(rows: torch.Tensor, key_valid: torch.Tensor | None, num_keys: int) -> torch.Tensor:
    """bool ``[B, R, T]``: the keys that each requested row sees."""
    keys = torch.arange(num_keys, device=rows.device)
    visible = keys <= rows[..., None]
    if key_valid is not None:
        visible = visible & key_valid[:, None, :]
    return visible


def row_probabilities(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, scale: float | None, key_valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(probs [B, Hkv, G, R, T], q rows [B, Hkv, G, R, d])`` of the requested rows."""
    batch, heads, num_keys, dim = q.shape
    kv_heads, num_rows = k.shape[1], rows.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    index = rows[:, None, :, None].expand(batch, heads, num_rows, dim)
    q_rows = q.gather(2, index).to(acc).reshape(batch, kv_heads, heads // kv_heads, num_rows, dim)
    scores = (q_rows @ k.to(acc)[:, :, None].transpose(-1, -2)) * default_scale(scale, dim)
    visible = row_visibility(rows, key_valid, num_keys)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row that sees nothing: zeros, not NaN
    return probs, q_rows


def attention_share(
    q: torch.Tensor,
    k: torch.Tensor,
    key_set: torch.Tensor,
    rows: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Share of each requested row's attention on ``key_set``: ``[B, H, R]`` fp32 (fp64 for fp64 inputs)."""
    batch, heads = q.shape[:2]
    probs, _ = row_probabilities(q, k, rows, scale, key_valid)
    in_set = key_set[:, None, None, None, :]
    share = torch.where(in_set, probs, 0).sum(dim=-1)
    return share.reshape(batch, heads, rows.shape[1])


def attention_share_backward(
    grad_share: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    key_set: torch.Tensor,
    rows: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k)`` of :func:`attention_share`: d share / d score_j = p_j * (1[j in set] - share)."""
    batch, heads, num_keys, dim = q.shape
    kv_heads, num_rows = k.shape[1], rows.shape[1]
    scale = default_scale(scale, dim)
    probs, q_rows = row_probabilities(q, k, rows, scale, key_valid)
    acc = probs.dtype
    in_set = key_set[:, None, None, None, :]
    share = torch.where(in_set, probs, 0).sum(dim=-1, keepdim=True)
    grad = grad_share.to(acc).reshape(batch, kv_heads, heads // kv_heads, num_rows, 1)
    grad_scores = grad * probs * (in_set.to(acc) - share) * scale  # [B, Hkv, G, R, T]
    grad_q_rows = (grad_scores @ k.to(acc)[:, :, None]).reshape(batch, heads, num_rows, dim)
    grad_q = torch.zeros(q.shape, dtype=acc, device=q.device)
    grad_q.scatter_add_(2, rows[:, None, :, None].expand(batch, heads, num_rows, dim), grad_q_rows)
    grad_k = (grad_scores.transpose(-1, -2) @ q_rows).sum(dim=2)
    return grad_q.to(q.dtype), grad_k.to(k.dtype)
