"""segment_pool on the GPU: Triton kernels for the span means and their gradient.

The specification is ``reference.py`` next to this file: ``pooled[b, s] = mean(hidden[b, start:end])``
accumulated in fp32, zeros for an empty span, rows outside a span never read. Both directions are memory
bound; the kernels touch each span row once (forward) and write each gradient row once (backward).

Forward, ``hidden [B, T, D] -> pooled [B, S, D]``: the span-row sums of ``tga_fast/ops/_triton_span_sums.py``
(shared with segment_cosine: programs over (span, row chunk, column block), fp32 partial sums), then
``span_mean_epilogue_kernel`` per (span, column block): the span's partials summed and divided by its length.
When one chunk covers every span, the sum kernel writes the means itself and there is no epilogue.

Backward, ``grad_pooled [B, S, D] -> grad_hidden [B, T, D]``: one program per (b, row block, column block)
walks the S spans, adds ``grad_pooled[b, s] / len(s)`` to the rows of its tile the span covers and writes
the tile once; rows outside every span get zeros. No zero fill, no atomics, deterministic.

Spans are clamped into ``[0, T]`` (and ``end >= start``) inside the kernels: spans on the GPU are not
validated on the host, and a bad span must give a wrong number, never an out-of-bounds access.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tga_fast.ops import _triton_span_sums as span_sums
from tga_fast.ops import _triton_utils as tu
from tga_fast.ops.kernels.segment_pool import reference

# --- kernels -------------------------------------------------------------------------------------------


@triton.jit
def span_mean_epilogue_kernel(
    partial_ptr,  # fp32 [B * S, num_splits, D]
    spans_ptr,  # int64 [B * S, 2]
    out_ptr,  # [B * S, D] in hidden's dtype
    seq_len,
    dim,
    num_splits,
    rows_per_split,
    CHUNK_TILE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Program (span, column block): mean = sum of the span's written partials / len (zeros if empty)."""
    span = tl.program_id(0)
    start, end = span_sums.load_span(spans_ptr, span, seq_len)
    length = end - start
    num_chunks = tl.cdiv(length, rows_per_split).to(tl.int32)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < dim
    chunk_ptr = partial_ptr + span.to(tl.int64) * num_splits * dim + cols
    total = span_sums.sum_chunks(chunk_ptr, num_chunks, dim, col_mask, CHUNK_TILE, BLOCK_D)
    mean = tl.div_rn(total, tl.maximum(length, 1).to(tl.float32))
    tl.store(out_ptr + span.to(tl.int64) * dim + cols, tu.cast_to(mean, out_ptr.dtype.element_ty, INTERPRETED),
             mask=col_mask)


@triton.jit
def span_grad_kernel(
    grad_pooled_ptr,  # [B, S, D], any strides
    spans_ptr,  # int64 [B * S, 2]
    grad_hidden_ptr,  # [B, T, D] contiguous, in the requested dtype
    seq_len,
    dim,
    spans_per_sample,
    row_blocks,
    stride_gb,
    stride_gs,
    stride_gd,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Program (sample * row_blocks + row block, column block): one [BLOCK_T, BLOCK_D] tile of grad_hidden."""
    pid = tl.program_id(0)
    sample = pid // row_blocks
    row_start = (pid % row_blocks) * BLOCK_T
    rows = row_start + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < dim

    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for s in range(0, spans_per_sample):
        span = sample * spans_per_sample + s
        start, end = span_sums.load_span(spans_ptr, span, seq_len)
        start, end = start.to(tl.int32), end.to(tl.int32)  # in [0, T]: 32-bit row compares, half the registers
        if (start < row_start + BLOCK_T) & (end > row_start):  # the span meets this tile
            grad = tl.load(
                grad_pooled_ptr + sample.to(tl.int64) * stride_gb + s * stride_gs + cols * stride_gd,
                mask=col_mask,
                other=0.0,
            )
            scaled = tl.div_rn(grad.to(tl.float32), tl.maximum(end - start, 1).to(tl.float32))
            inside = (rows >= start) & (rows < end)
            acc += tl.where(inside[:, None], scaled[None, :], 0.0)

    offsets = (sample.to(tl.int64) * seq_len + rows[:, None]) * dim + cols[None, :]
    mask = (rows < seq_len)[:, None] & col_mask[None, :]
    tl.store(grad_hidden_ptr + offsets, tu.cast_to(acc, grad_hidden_ptr.dtype.element_ty, INTERPRETED), mask=mask)


# --- launchers -----------------------------------------------------------------------------------------


def segment_pool(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Span means: hidden ``[B, T, D]`` f32/f16/bf16, spans int64 ``[B, S, 2]`` -> ``[B, S, D]`` in hidden's dtype."""
    if hidden.dtype == torch.float64:  # fp64 (gradcheck) accumulates in fp64: the reference does that
        return reference.segment_pool(hidden, spans)
    batch, _, dim = hidden.shape
    pooled = torch.empty((batch, spans.shape[1], dim), dtype=hidden.dtype, device=hidden.device)
    if pooled.numel() == 0:
        return pooled
    hidden, spans = tu.unit_last_stride(hidden), spans.contiguous()
    with tu.device_guard(hidden):
        sums, meta = span_sums.span_sums(hidden, spans, pooled)
        if sums is pooled:
            return pooled
        chunk_tile = span_sums.chunk_tile(meta.num_splits)
        grid = (sums.shape[0], triton.cdiv(dim, meta.block_d))
        span_mean_epilogue_kernel[grid](
            sums,
            spans,
            pooled,
            hidden.shape[1],
            dim,
            meta.num_splits,
            meta.rows_per_split,
            CHUNK_TILE=chunk_tile,
            BLOCK_D=meta.block_d,
            INTERPRETED=tu.interpreted(),
            num_warps=tu.num_warps_for(chunk_tile * meta.block_d),
        )
    return pooled


def grad_meta(seq_len: int, dim: int) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_D, num_warps)`` of ``span_grad_kernel``: 8K-element tiles, 512-byte bf16 row chunks."""
    block_d = min(max(triton.next_power_of_2(dim), 16), tu.MAX_BLOCK_D)
    block_t = min(max(tu.TILE_ELEMENTS // block_d, 1), tu.MAX_BLOCK_T, max(triton.next_power_of_2(seq_len), 1))
    return block_t, block_d, tu.num_warps_for(block_t * block_d)


def segment_pool_backward(
    grad_pooled: torch.Tensor, spans: torch.Tensor, seq_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """grad_pooled ``[B, S, D]`` (any float dtype) -> grad_hidden ``[B, T, D]`` in ``dtype``; see the reference."""
    if torch.float64 in (grad_pooled.dtype, dtype):  # fp64 accumulation: the reference's job
        return reference.segment_pool_backward(grad_pooled, spans, seq_len, dtype)
    batch, _, dim = grad_pooled.shape
    grad_hidden = torch.empty((batch, seq_len, dim), dtype=dtype, device=grad_pooled.device)
    if grad_hidden.numel() == 0:
        return grad_hidden
    spans = spans.contiguous()
    block_t, block_d, num_warps = grad_meta(seq_len, dim)
    row_blocks = triton.cdiv(seq_len, block_t)
    with tu.device_guard(grad_pooled):
        span_grad_kernel[(batch * row_blocks, triton.cdiv(dim, block_d))](
            grad_pooled,
            spans,
            grad_hidden,
            seq_len,
            dim,
            spans.shape[1],
            row_blocks,
            grad_pooled.stride(0),
            grad_pooled.stride(1),
            grad_pooled.stride(2),
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            INTERPRETED=tu.interpreted(),
            num_warps=num_warps,
        )
    return grad_hidden
