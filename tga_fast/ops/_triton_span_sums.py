"""The span-row reduction of segment_pool and segment_cosine on the GPU: fp32 sums of each span's rows.

Both ops start by summing the rows of every span of ``hidden [B, T, D]``; this module is that shared first
pass (segment_pool then divides by the length, segment_cosine also takes the cosine with a target). B * S is
small in TGA (4 samples x 2-3 spans) while spans are long (576 image rows), so one program per span would
leave most of an H100 idle. The span rows are cut into chunks instead::

    span [start, end):  |-- chunk 0 --|-- chunk 1 --|-- chunk 2 --|.....     chunk k >= cdiv(len, rows): exit
    program (span, chunk k, column block j): sum of its rows -> partial[b*S + s, k, j-th columns] (fp32)
    epilogue (op-specific), per span: sum of the cdiv(len, rows) partials (``sum_chunks``) / len -> ...

When the grid is large enough without cutting (many spans, or a short sequence), one program sums a whole
span and may write the mean directly, without partials or epilogue.

Spans are clamped into ``[0, T]`` (and ``end >= start``) inside the kernels (``load_span``): spans on the GPU
are not validated on the host, and a bad span must give a wrong number, never an out-of-bounds access.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tga_fast.ops import _triton_utils as tu

# Partial-sum rows an epilogue loads at once (a [32, BLOCK_D] tile).
MAX_CHUNK_TILE = 32

# --- meta-parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowReduceMeta:
    """How a span-row reduction over ``hidden [B, T, D]`` is cut up.

    Programs own ``(span, row chunk, column block)``: ``rows_per_split`` rows (a multiple of ``block_t``) of
    ``block_d`` columns. ``num_splits == 1`` means one program reads a whole span (no partial sums).
    """

    block_t: int
    block_d: int
    num_warps: int
    rows_per_split: int
    num_splits: int


def row_reduce_meta(num_spans: int, seq_len: int, dim: int, element_size: int, device: torch.device) -> RowReduceMeta:
    """Meta-parameters of the span-sum kernel for ``num_spans = B * S`` spans over ``[*, seq_len, dim]``.

    Span lengths are unknown on the host (reading them would synchronise), so the split assumes spans as
    long as the sequence: it cuts ``seq_len`` into chunks such that ``num_spans * column blocks * chunks``
    is about ``PROGRAMS_PER_SM`` programs per SM. Programs whose chunk lies past their span's end exit at
    once. A chunk is at least 128 bytes per column, so the fp32 partial sums (4 bytes per column, written
    and read back once) cost at most ~6% of the rows they summarise.
    """
    block_d = min(max(triton.next_power_of_2(dim), 16), tu.MAX_BLOCK_D)
    block_t = min(max(tu.TILE_ELEMENTS // block_d, 1), tu.MAX_BLOCK_T, max(triton.next_power_of_2(seq_len), 1))
    num_warps = tu.num_warps_for(block_t * block_d)
    column_blocks = triton.cdiv(dim, block_d)
    wanted_splits = triton.cdiv(tu.PROGRAMS_PER_SM * tu.sm_count(device), max(num_spans * column_blocks, 1))
    min_rows = max(128 // element_size, block_t)
    rows = max(triton.cdiv(seq_len, wanted_splits), min_rows)
    rows = triton.cdiv(rows, block_t) * block_t
    if rows >= seq_len:
        return RowReduceMeta(block_t, block_d, num_warps, max(seq_len, 1), 1)
    return RowReduceMeta(block_t, block_d, num_warps, rows, triton.cdiv(seq_len, rows))


def chunk_tile(num_splits: int) -> int:
    """Partial-sum rows an epilogue loads per step: all of a span's (``num_splits`` at most), up to 32."""
    return min(triton.next_power_of_2(num_splits), MAX_CHUNK_TILE)


# --- kernels -------------------------------------------------------------------------------------------


@triton.jit
def load_span(spans_ptr, span, seq_len):
    """``[start, end)`` of flat span ``span`` (``spans`` contiguous ``[B * S, 2]``), clamped into ``[0, T]``."""
    start = tl.load(spans_ptr + 2 * span)
    end = tl.load(spans_ptr + 2 * span + 1)
    start = tl.minimum(tl.maximum(start, 0), seq_len)
    end = tl.minimum(tl.maximum(end, start), seq_len)
    return start, end


@triton.jit
def span_sum_kernel(
    hidden_ptr,  # [B, T, D], any strides with a unit column stride
    spans_ptr,  # int64 [B * S, 2], contiguous
    out_ptr,  # WRITE_MEAN: pooled [B * S, D]; else fp32 partial sums [B * S, num_splits, D]
    seq_len,
    dim,
    spans_per_sample,
    num_splits,
    rows_per_split,
    stride_hb,
    stride_ht,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WRITE_MEAN: tl.constexpr,  # one chunk covers the span: store the mean in out's dtype
    INTERPRETED: tl.constexpr,
):
    """Program (span * num_splits + chunk, column block): fp32 sum of the chunk's rows of one span."""
    pid = tl.program_id(0)
    span = pid // num_splits
    chunk = pid % num_splits
    sample = span // spans_per_sample

    start, end = load_span(spans_ptr, span, seq_len)
    chunk_start = start + chunk.to(tl.int64) * rows_per_split
    chunk_end = tl.minimum(end, chunk_start + rows_per_split)
    num_rows = tl.maximum(chunk_end - chunk_start, 0).to(tl.int32)

    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < dim
    row_offsets = tl.arange(0, BLOCK_T)
    # int64 row indices (spans are int64): B * T * D may exceed 2^31.
    base = hidden_ptr + sample.to(tl.int64) * stride_hb + cols[None, :]

    # A [BLOCK_T, BLOCK_D] accumulator, reduced over rows once after the loop (not once per tile).
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for i in range(0, tl.cdiv(num_rows, BLOCK_T)):
        rows = chunk_start + i * BLOCK_T + row_offsets
        # Masked-off rows are not read: a NaN outside the span cannot leak in.
        mask = (rows < chunk_end)[:, None] & col_mask[None, :]
        tile = tl.load(base + rows[:, None] * stride_ht, mask=mask, other=0.0, eviction_policy="evict_first")
        acc += tile.to(tl.float32)
    total = tl.sum(acc, axis=0)

    if WRITE_MEAN:
        length = tl.maximum(end - start, 1).to(tl.float32)
        mean = tl.div_rn(total, length)
        tl.store(out_ptr + span.to(tl.int64) * dim + cols, tu.cast_to(mean, out_ptr.dtype.element_ty, INTERPRETED),
                 mask=col_mask)
    else:
        # Chunks past the span's end write nothing; the epilogue reads only cdiv(len, rows) chunks. (Written as a
        # column limit: Triton 3.9's interpreter rejects a mask combining a block with a scalar condition.)
        offset = (span.to(tl.int64) * num_splits + chunk) * dim
        cols_to_write = tl.where(num_rows > 0, dim, 0)
        tl.store(out_ptr + offset + cols, total, mask=cols < cols_to_write)


@triton.jit
def sum_chunks(chunk_ptr, num_chunks, dim, col_mask, CHUNK_TILE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sum of the fp32 rows ``chunk_ptr + k * dim`` (a [BLOCK_D] pointer block) for ``k < num_chunks``.

    A [CHUNK_TILE, BLOCK_D] tile per step: all of a span's partials are requested at once, so the epilogue
    waits for one memory round trip per step rather than one per chunk."""
    chunks = tl.arange(0, CHUNK_TILE)
    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for first in range(0, num_chunks, CHUNK_TILE):
        mask = ((first + chunks) < num_chunks)[:, None] & col_mask[None, :]
        tile = tl.load(chunk_ptr[None, :] + (first + chunks)[:, None] * dim, mask=mask, other=0.0)
        total += tl.sum(tile, axis=0)
    return total


# --- launcher ------------------------------------------------------------------------------------------


def span_sums(
    hidden: torch.Tensor, spans: torch.Tensor, out: torch.Tensor | None
) -> tuple[torch.Tensor, RowReduceMeta]:
    """Launches ``span_sum_kernel`` over ``hidden [B, T, D]`` (unit column stride) and ``spans`` (contiguous).

    If ``out`` is given and one chunk covers every span, writes the means into ``out [B, S, D]`` and returns
    it; otherwise returns the fp32 partial sums ``[B * S, num_splits, D]``. Also returns the meta-parameters.
    """
    batch, seq_len, dim = hidden.shape
    num_spans = batch * spans.shape[1]
    meta = row_reduce_meta(num_spans, seq_len, dim, hidden.element_size(), hidden.device)
    write_mean = out is not None and meta.num_splits == 1
    if not write_mean:
        out = torch.empty((num_spans, meta.num_splits, dim), dtype=torch.float32, device=hidden.device)
    grid = (num_spans * meta.num_splits, triton.cdiv(dim, meta.block_d))
    span_sum_kernel[grid](
        hidden,
        spans,
        out,
        seq_len,
        dim,
        spans.shape[1],
        meta.num_splits,
        meta.rows_per_split,
        hidden.stride(0),
        hidden.stride(1),
        BLOCK_T=meta.block_t,
        BLOCK_D=meta.block_d,
        WRITE_MEAN=write_mean,
        INTERPRETED=tu.interpreted(),
        num_warps=meta.num_warps,
    )
    return out, meta
