"""knockout_attention on the GPU: a flash-attention forward with the knockout mask, grouped-query heads packed.

The specification is ``reference.py`` next to this file. One pass, online softmax in base 2, fp32 statistics
and accumulator; the ``[Tq, Tk]`` scores never leave the SM.

Grid ``(row blocks, B * Hkv)``. A program owns ``BLOCK_M`` rows of the *packed* query matrix of one kv head:
the ``G = H // Hkv`` query heads that share that kv head are interleaved position-major, so that each K/V
tile loaded from memory serves all ``G`` heads (for decoding, ``Tq = 1``, this turns ``G`` one-row programs
into one ``G``-row program)::

    packed row r = i * G + g   ->   query position i, head kv_head * G + g

    keys:   |  off-diagonal blocks: column mask only  | diagonal blocks: full mask | skipped (causal) |
            0                                        lo                            hi                 Tk

A key block that ends before the program's first query position needs only the per-key mask
(``key_valid & ~blocked``: every query there is later than every key); the blocks that meet the diagonal
add the position test ``j < p | j == p``; blocks after the program's last position are never loaded.
Rows with no visible key keep a -inf running max; the exponent is taken against 0 instead, so they stay
0/0 -> 0 rather than NaN.

K and V tiles are fetched by TMA (host-side tensor descriptors over ``[B, Hkv, Tk, d]``, zero fill past ``Tk``
and ``d``) on sm_90+ when the strides are 16-byte aligned, else by masked pointer loads. The descriptors free
the registers that a ``[BLOCK_N, BLOCK_D]`` tile of 64-bit addresses would hold: compiled for sm_90 (Triton
3.7, bf16, d = 128, the configuration below) the kernel uses 211 registers per thread and no spills, against
376 bytes of spills with pointer loads.

Meta-parameters by a heuristic (no autotune): on a GPU ``BLOCK_M`` 128 (64 for d > 128 or fp32) x
``BLOCK_N`` 64 (32 for fp32), 8 warps, 3 stages, the flash-attention-2 configuration for d = 128 on an H100;
``BLOCK_M`` shrinks to the packed row count for decoding. fp32 inputs use 3xTF32 products (fp32 accuracy on
tensor cores). Under the interpreter 16 x 16 blocks, so that small test shapes cross block and diagonal
boundaries. At the 7B shape (B 1, H 32, T 2048, d 128) the grid is 16 row blocks x 32 kv heads = 512
programs, about four waves on 132 SMs (one 8-warp program per SM); with Hkv 8 (G 4), 64 x 8 = 512 as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4 has no host-side descriptors: K and V are read with pointers
    TensorDescriptor = None

from tga_fast.ops import _triton_utils as tu
from tga_fast.ops.kernels.knockout_attention import reference

# --- kernel --------------------------------------------------------------------------------------------


@triton.jit
def packed_rows(row_block, num_queries, num_keys, GROUP: tl.constexpr, BLOCK_M: tl.constexpr):
    """Packed rows of a row block: ``(rows, query index, head in group, absolute position, row mask)``."""
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    query = rows // GROUP
    head_in_group = rows % GROUP
    row_mask = query < num_queries
    position = num_keys - num_queries + query
    return rows, query, head_in_group, position, row_mask


@triton.jit
def knockout_attention_kernel(
    q_ptr,  # [B, H, Tq, d], unit stride in d
    k_ptr,  # [B, Hkv, Tk, d], unit stride in d
    v_ptr,  # [B, Hkv, Tk, d], unit stride in d
    blocked_ptr,  # uint8 [B, Tk] (a bool view), unit stride
    key_valid_ptr,  # uint8 [B, Tk] or a dummy when HAS_KEY_VALID is False
    out_ptr,  # [B, H, Tq, d] contiguous
    num_queries,
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
    stride_vb,
    stride_vh,
    stride_vt,
    stride_mb,  # blocked
    stride_vmb,  # key_valid
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_KEY_VALID: tl.constexpr,
    USE_TMA: tl.constexpr,  # k_ptr / v_ptr are TensorDescriptors (Hopper and later)
    DOT_PRECISION: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    row_block = tl.program_id(0)
    pid = tl.program_id(1)
    sample = pid // kv_heads
    kv_head = pid % kv_heads

    rows, query, head_in_group, position, row_mask = packed_rows(row_block, num_queries, num_keys, GROUP, BLOCK_M)
    head = kv_head * GROUP + head_in_group
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < dim

    q_offsets = sample.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh + query.to(tl.int64) * stride_qt
    q = tl.load(q_ptr + q_offsets[:, None] + dims[None, :], mask=row_mask[:, None] & dim_mask[None, :], other=0.0)

    if USE_TMA:  # k_ptr and v_ptr are tensor descriptors over [B, Hkv, Tk, d]
        k_base = k_ptr
        v_base = v_ptr
    else:
        k_base = k_ptr + sample.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
        v_base = v_ptr + sample.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    blocked_base = blocked_ptr + sample.to(tl.int64) * stride_mb
    valid_base = key_valid_ptr + sample.to(tl.int64) * stride_vmb

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    first_row = row_block * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, num_queries * GROUP) - 1
    first_position = num_keys - num_queries + first_row // GROUP
    hi = num_keys - num_queries + last_row // GROUP + 1  # keys after the last position are never visible
    lo = (first_position // BLOCK_N) * BLOCK_N  # blocks before lo end before every query of the program

    for start in range(0, lo, BLOCK_N):
        m_i, l_i, acc = attend_block(
            q, k_base, v_base, blocked_base, valid_base, sample, kv_head, start, num_keys, position,
            dims, dim_mask, m_i, l_i, acc, qk_scale, stride_kt, stride_vt,
            BLOCK_N, BLOCK_D, HAS_KEY_VALID, False, USE_TMA, DOT_PRECISION, INTERPRETED,
        )  # fmt: skip
    for start in range(lo, hi, BLOCK_N):
        m_i, l_i, acc = attend_block(
            q, k_base, v_base, blocked_base, valid_base, sample, kv_head, start, num_keys, position,
            dims, dim_mask, m_i, l_i, acc, qk_scale, stride_kt, stride_vt,
            BLOCK_N, BLOCK_D, HAS_KEY_VALID, True, USE_TMA, DOT_PRECISION, INTERPRETED,
        )  # fmt: skip

    # A row with no visible key has l == 0 and acc == 0: output zeros.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_offsets = ((sample.to(tl.int64) * kv_heads * GROUP + head) * num_queries + query) * dim
    tl.store(
        out_ptr + out_offsets[:, None] + dims[None, :],
        tu.cast_to(out, out_ptr.dtype.element_ty, INTERPRETED),
        mask=row_mask[:, None] & dim_mask[None, :],
    )


@triton.jit
def attend_block(
    q, k_base, v_base, blocked_base, valid_base, sample, kv_head, start, num_keys, position,
    dims, dim_mask, m_i, l_i, acc, qk_scale, stride_kt, stride_vt,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_KEY_VALID: tl.constexpr, ON_DIAGONAL: tl.constexpr,
    USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax: returns the updated ``(m_i, l_i, acc)`` (base-2 statistics)."""
    keys = start + tl.arange(0, BLOCK_N)
    key_mask = keys < num_keys
    if USE_TMA:  # Hopper: the copy engine fetches the tile (zeros past Tk and d), no address registers
        k = k_base.load([sample, kv_head, start, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_base.load([sample, kv_head, start, 0]).reshape(BLOCK_N, BLOCK_D)
    else:
        tile_mask = key_mask[:, None] & dim_mask[None, :]
        k = tl.load(k_base + keys.to(tl.int64)[:, None] * stride_kt + dims[None, :], mask=tile_mask, other=0.0)
        v = tl.load(v_base + keys.to(tl.int64)[:, None] * stride_vt + dims[None, :], mask=tile_mask, other=0.0)
    scores = tu.matmul(q, tl.trans(k), None, DOT_PRECISION, INTERPRETED) * qk_scale  # [BLOCK_M, BLOCK_N] fp32

    blocked = tl.load(blocked_base + keys, mask=key_mask, other=1) != 0
    open_key = key_mask
    if HAS_KEY_VALID:
        open_key = open_key & (tl.load(valid_base + keys, mask=key_mask, other=0) != 0)
    if ON_DIAGONAL:
        earlier = keys[None, :] < position[:, None]
        visible = (earlier & ~blocked[None, :]) | (keys[None, :] == position[:, None])
        visible = visible & open_key[None, :]
    else:
        visible = (open_key & ~blocked)[None, :]
    scores = tl.where(visible, scores, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: exp2(-inf - 0) = 0, no NaN
    p = tl.exp2(scores - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    acc = tu.matmul(tu.cast_to(p, v.dtype, INTERPRETED), v, acc, DOT_PRECISION, INTERPRETED)
    return m_new, l_i, acc


# --- launcher ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionMeta:
    block_m: int
    block_n: int
    block_d: int
    num_warps: int
    num_stages: int


def attention_meta(packed_rows: int, dim: int, dtype: torch.dtype) -> AttentionMeta:
    """Block sizes for ``packed_rows = Tq * G`` rows per kv head and head size ``dim`` (a heuristic)."""
    block_d = max(16, triton.next_power_of_2(dim))
    if tu.interpreted():
        # Small blocks: cheap in NumPy, and the test shapes cross block and diagonal boundaries.
        return AttentionMeta(16, 16, block_d, 1, 1)
    fp32 = dtype == torch.float32
    wide = block_d > 128 or fp32  # registers: the accumulator is BLOCK_M x BLOCK_D fp32
    block_m = 32 if block_d > 128 and fp32 else 64 if wide else 128
    block_n = 32 if fp32 else 64  # shared memory: 2-3 stages of K and V tiles, at most ~200 KB on sm_90
    block_m = min(block_m, max(16, triton.next_power_of_2(packed_rows)))  # decoding: G rows, not 128
    num_warps = 4 if block_m <= 64 else 8
    return AttentionMeta(block_m, block_n, block_d, num_warps, 2 if wide else 3)


def tma_compatible(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether K and V can be read by the tensor memory accelerator: an sm_90+ GPU (or the interpreter, which
    emulates descriptors), 16-byte aligned base addresses and strides, a unit stride in d."""
    if TensorDescriptor is None:
        return False
    if not (tu.interpreted() or (k.is_cuda and torch.cuda.get_device_capability(k.device)[0] >= 9)):
        return False
    if triton.next_power_of_2(k.shape[-1]) > 256:  # a TMA box is at most 256 elements per dimension
        return False
    for x in (k, v):
        size = x.element_size()
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any((s * size) % 16 for s in x.stride()[:-1]):
            return False
    return True


def kv_descriptor(x: torch.Tensor, meta: AttentionMeta):
    """A TMA descriptor over ``x [B, Hkv, Tk, d]`` that loads ``[1, 1, BLOCK_N, BLOCK_D]`` tiles (zeros outside)."""
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, meta.block_n, meta.block_d])


def knockout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
    use_tma: bool | None = None,
) -> torch.Tensor:
    """Causal attention with knocked-out keys: q ``[B, H, Tq, d]``, k/v ``[B, Hkv, Tk, d]`` -> ``[B, H, Tq, d]``.

    ``use_tma``: read K/V through TMA descriptors (default: where :func:`tma_compatible`), else with pointers."""
    if q.dtype == torch.float64:  # fp64 (gradcheck) is the reference's
        return reference.knockout_attention(q, k, v, blocked, scale, key_valid)
    batch, heads, num_queries, dim = q.shape
    kv_heads, num_keys = k.shape[1], k.shape[2]
    out = torch.empty((batch, heads, num_queries, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    q, k, v = tu.unit_last_stride(q), tu.unit_last_stride(k), tu.unit_last_stride(v)
    blocked = tu.key_mask_bytes(blocked)
    valid = tu.key_mask_bytes(key_valid) if key_valid is not None else blocked
    group = heads // kv_heads
    meta = attention_meta(num_queries * group, dim, q.dtype)
    use_tma = tma_compatible(k, v) if use_tma is None else use_tma
    k_arg, v_arg = (kv_descriptor(k, meta), kv_descriptor(v, meta)) if use_tma else (k, v)
    qk_scale = reference.default_scale(scale, dim) * tu.LOG2E
    grid = (triton.cdiv(num_queries * group, meta.block_m), batch * kv_heads)
    with tu.device_guard(q):
        knockout_attention_kernel[grid](
            q, k_arg, v_arg, blocked, valid, out,
            num_queries, num_keys, dim, kv_heads, qk_scale,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            blocked.stride(0), valid.stride(0),
            GROUP=group,
            BLOCK_M=meta.block_m,
            BLOCK_N=meta.block_n,
            BLOCK_D=meta.block_d,
            HAS_KEY_VALID=key_valid is not None,
            USE_TMA=use_tma,
            DOT_PRECISION=tu.dot_precision(q.dtype),
            INTERPRETED=tu.interpreted(),
            num_warps=meta.num_warps,
            num_stages=meta.num_stages,
        )  # fmt: skip
    return out

