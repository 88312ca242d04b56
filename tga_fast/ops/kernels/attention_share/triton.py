"""attention_share on the GPU: the share of chosen query rows' attention on a key set, in one pass over K.

The specification is ``reference.py`` next to this file. The share is a ratio of two sums of the same
exponentials, so it needs no probabilities and no V: one online-softmax pass keeps, per row, the running max
``m``, the running denominator ``l = sum_j 2^(s_j - m)`` over the keys the row sees, and the running numerator
``n`` = the same sum restricted to ``key_set``; both are rescaled together when ``m`` grows, and
``share = n / l`` (0 for a row that sees nothing).

Grid ``(row blocks, B * Hkv)``; the ``G = H // Hkv`` query heads of a kv head are packed into the rows of one
program as in knockout_attention (packed row ``r * G + g`` = requested row ``r``, head ``kv_head * G + g``),
so each K tile is read once for all of them. A program walks the key blocks up to the largest position among
its rows (rows need not be sorted); positions are clamped into ``[0, T)`` in the kernel, as rows on the GPU
are not validated on the host. On a GPU ``BLOCK_N`` is 64 (32 for fp32 or d > 128) and ``BLOCK_M`` the packed
row count rounded up to 16..64: for the usual request (the last row, ``R = 1``) a program is ``G`` rows and
the pass is a K read at memory bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tga_fast.ops import _triton_utils as tu
from tga_fast.ops.kernels.attention_share import reference

# --- kernel --------------------------------------------------------------------------------------------


@triton.jit
def attention_share_kernel(
    q_ptr,  # [B, H, T, d], unit stride in d
    k_ptr,  # [B, Hkv, T, d], unit stride in d
    key_set_ptr,  # uint8 [B, T], unit stride
    key_valid_ptr,  # uint8 [B, T] or a dummy when HAS_KEY_VALID is False
    rows_ptr,  # int64 [B, R], any strides
    share_ptr,  # fp32 [B, H, R] contiguous
    num_rows,
    num_keys,
    dim,
    kv_heads,
    qk_scale,  # scale * log2(e)
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_sb,  # key_set
    stride_vb,  # key_valid
    stride_rb,
    stride_rr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_KEY_VALID: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    row_block = tl.program_id(0)
    pid = tl.program_id(1)
    sample = pid // kv_heads
    kv_head = pid % kv_heads

    packed = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    request = packed // GROUP
    head = kv_head * GROUP + packed % GROUP
    row_mask = request < num_rows
    position = tl.load(rows_ptr + sample.to(tl.int64) * stride_rb + request * stride_rr, mask=row_mask, other=0)
    position = tl.minimum(tl.maximum(position, 0), num_keys - 1).to(tl.int32)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < dim

    q_offsets = sample.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh + position.to(tl.int64) * stride_qt
    q = tl.load(q_ptr + q_offsets[:, None] + dims[None, :], mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    k_base = k_ptr + sample.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    set_base = key_set_ptr + sample.to(tl.int64) * stride_sb
    valid_base = key_valid_ptr + sample.to(tl.int64) * stride_vb

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    denominator = tl.zeros((BLOCK_M,), dtype=tl.float32)
    numerator = tl.zeros((BLOCK_M,), dtype=tl.float32)
    hi = tl.max(tl.where(row_mask, position, 0), axis=0) + 1
    for start in range(0, hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_mask = keys < num_keys
        k = tl.load(
            k_base + keys.to(tl.int64)[:, None] * stride_kt + dims[None, :],
            mask=key_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        scores = tu.matmul(q, tl.trans(k), None, DOT_PRECISION, INTERPRETED) * qk_scale  # [BLOCK_M, BLOCK_N]
        open_key = key_mask
        if HAS_KEY_VALID:
            open_key = open_key & (tl.load(valid_base + keys, mask=key_mask, other=0) != 0)
        in_set = tl.load(set_base + keys, mask=key_mask, other=0) != 0
        visible = (keys[None, :] <= position[:, None]) & open_key[None, :]
        scores = tl.where(visible, scores, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: no -inf - -inf
        p = tl.exp2(scores - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        denominator = denominator * alpha + tl.sum(p, axis=1)
        numerator = numerator * alpha + tl.sum(tl.where(in_set[None, :], p, 0.0), axis=1)
        m_i = m_new

    share = numerator / tl.where(denominator > 0, denominator, 1.0)
    offsets = (sample.to(tl.int64) * kv_heads * GROUP + head) * num_rows + request
    tl.store(share_ptr + offsets, share, mask=row_mask)


# --- launcher ------------------------------------------------------------------------------------------


def share_blocks(packed_rows: int, dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)`` for ``packed_rows = R * G`` rows per kv head (a heuristic)."""
    block_d = max(16, triton.next_power_of_2(dim))
    if tu.interpreted():
        return 16, 16, block_d, 1
    block_m = min(64, max(16, triton.next_power_of_2(packed_rows)))
    block_n = 32 if block_d > 128 or dtype == torch.float32 else 64
    return block_m, block_n, block_d, 4


def attention_share(
    q: torch.Tensor,
    k: torch.Tensor,
    key_set: torch.Tensor,
    rows: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Share of the requested rows' causal attention on ``key_set``: q ``[B, H, T, d]``, k ``[B, Hkv, T, d]``,
    rows int64 ``[B, R]`` -> ``[B, H, R]`` fp32."""
    if q.dtype == torch.float64:  # fp64 (gradcheck) is the reference's
        return reference.attention_share(q, k, key_set, rows, scale, key_valid)
    batch, heads, num_keys, dim = q.shape
    kv_heads, num_rows = k.shape[1], rows.shape[1]
    share = torch.empty((batch, heads, num_rows), dtype=torch.float32, device=q.device)
    if share.numel() == 0:
        return share
    if num_keys == 0:
        return share.zero_()
    q, k = tu.unit_last_stride(q), tu.unit_last_stride(k)
    key_set = tu.key_mask_bytes(key_set)
    valid = tu.key_mask_bytes(key_valid) if key_valid is not None else key_set
    group = heads // kv_heads
    block_m, block_n, block_d, num_warps = share_blocks(num_rows * group, dim, q.dtype)
    qk_scale = reference.default_scale(scale, dim) * tu.LOG2E
    grid = (triton.cdiv(num_rows * group, block_m), batch * kv_heads)
    with tu.device_guard(q):
        attention_share_kernel[grid](
            q, k, key_set, valid, rows, share,
            num_rows, num_keys, dim, kv_heads, qk_scale,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            key_set.stride(0), valid.stride(0),
            rows.stride(0), rows.stride(1),
            GROUP=group,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            HAS_KEY_VALID=key_valid is not None,
            DOT_PRECISION=tu.dot_precision(q.dtype),
            INTERPRETED=tu.interpreted(),
            num_warps=num_warps,
            num_stages=3,
        )  # fmt: skip
    return share
