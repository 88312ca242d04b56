"""Exact top-k inner-product search in plain torch: the reference every backend is tested against, and the
fallback when faiss is missing (or when k exceeds what faiss can select on a GPU).

Ranking rule, shared by every backend of ``Index``: scores descending, ties broken by the smaller corpus id. The
corpus is scanned in chunks (``[C, d] @ [d, Q]`` then ``topk`` over C), so memory stays at ``budget_bytes`` of
scores whatever N and Q are; on a GPU the corpus is usually fp16 (cuBLAS accumulates in fp32).
"""

from __future__ import annotations

import torch

# Scores held at once per (query block x corpus chunk); 64 MiB keeps a chunk in a CPU's last-level cache range
# and is a negligible slice of a GPU.
DEFAULT_BUDGET_BYTES = 64 * 2**20
# Query-block bound: beyond this a [C, Q] score chunk is short in C and topk's per-chunk overhead dominates.
MAX_QUERY_BLOCK = 4096


def canonical_order(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of ``scores``/``ids`` ``[Q, k]`` by score descending, then id ascending (two stable sorts)."""
    order = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, order), ids.gather(1, order)


def _chunk_topk(chunk_scores: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one ``[C, Q]`` score chunk as ``[Q, k']`` (k' = min(k, C)) under the ranking rule.

    ``topk`` alone may choose any of several equal scores at the k-th place, so it takes one extra candidate:
    where the k-th and (k+1)-th scores are equal, that row is re-ranked over every score >= the k-th (rare:
    duplicate texts in the corpus).
    """
    size = chunk_scores.shape[0]
    take = min(k + 1, size)
    values, rows = chunk_scores.topk(take, dim=0)  # [take, Q]
    values, rows = canonical_order(values.t(), rows.t())
    if take > k:
        tied = (values[:, k - 1] == values[:, k]).nonzero().flatten()
        if tied.numel():
            values, rows = values.clone(), rows.clone()
            for q in tied.tolist():
                column = chunk_scores[:, q]
                candidates = (column >= values[q, k - 1]).nonzero().flatten()  # ascending ids
                order = column[candidates].argsort(descending=True, stable=True)[:k]
                values[q, :k], rows[q, :k] = column[candidates[order]], candidates[order]
        values, rows = values[:, :k], rows[:, :k]
    return values, rows + offset


def brute_force_search(
    corpus: torch.Tensor, queries: torch.Tensor, k: int, *, budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product.

    Args:
        corpus: ``[N, d]`` on any device, any floating dtype (the matmul runs in it).
        queries: ``[Q, d]``, moved to the corpus's device and dtype.
        k: 1 <= k <= N.

    Returns:
        ``(scores fp32 [Q, k], ids int64 [Q, k])`` on the corpus's device, in the ranking rule's order.
    """
    n, q_total = corpus.shape[0], queries.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the corpus size), got {k}")
    queries = queries.to(device=corpus.device, dtype=corpus.dtype)
    out_scores = torch.empty(q_total, k, dtype=torch.float32, device=corpus.device)
    out_ids = torch.empty(q_total, k, dtype=torch.int64, device=corpus.device)
    item = corpus.element_size()
    q_block = max(1, min(q_total, MAX_QUERY_BLOCK, budget_bytes // (item * max(k + 1, 1024))))
    chunk = max(k + 1, budget_bytes // (item * q_block))
    for q0 in range(0, q_total, q_block):
        block_t = queries[q0 : q0 + q_block].t()  # [d, Qb]
        best_scores = best_ids = None
        for c0 in range(0, n, chunk):
            scores = corpus[c0 : c0 + chunk] @ block_t  # [C, Qb]: the faster layout for small Qb
            values, ids = _chunk_topk(scores, k, c0)
            values = values.float()
            if best_scores is None:
                best_scores, best_ids = values, ids
                continue
            # Earlier chunks hold smaller ids, so a stable sort of [best, new] keeps the ranking rule.
            merged_scores, merged_ids = torch.cat([best_scores, values], 1), torch.cat([best_ids, ids], 1)
            order = merged_scores.argsort(dim=1, descending=True, stable=True)[:, :k]
            best_scores, best_ids = merged_scores.gather(1, order), merged_ids.gather(1, order)
        out_scores[q0 : q0 + q_block], out_ids[q0 : q0 + q_block] = best_scores, best_ids
    return out_scores, out_ids
