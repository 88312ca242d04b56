"""segment_cosine on the GPU: span means and their cosine with a target vector, fused.

The specification is ``reference.py`` next to this file. Two kernels, each span row read once::

    1. the span-row sums shared with segment_pool (``tga_fast/ops/_triton_span_sums.py``): programs (span, row chunk, column block) -> fp32 partial sums
       [B * S, num_splits, D] (with num_splits == 1 on large grids: one chunk per span)
    2. cosine_epilogue_kernel, one program per span: mean = sum of the span's partials / len, stored (fp32,
       the backward needs it), and in the same pass x.y, |x|^2, |y|^2 against target[b] ->
       cos = x.y / (max(|x|, eps) * max(|y|, eps)), as torch.nn.functional.cosine_similarity clamps

The only intermediates are the partial sums (one fp32 row per chunk of >= 128 bytes per column) and the
fp32 mean.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tga_fast.ops import _triton_span_sums as span_sums
from tga_fast.ops import _triton_utils as tu
from tga_fast.ops.kernels.segment_cosine import reference

# Elements of the epilogue's [CHUNK_TILE, BLOCK_D] step: 32 fp32 registers per thread at 8 warps.
EPILOGUE_TILE = 8192

# --- kernel --------------------------------------------------------------------------------------------


@triton.jit
def cosine_epilogue_kernel(
    partial_ptr,  # fp32 [B * S, num_splits, D]
    spans_ptr,  # int64 [B * S, 2]
    target_ptr,  # [B, D], any float dtype and strides
    mean_ptr,  # fp32 [B * S, D]
    cos_ptr,  # fp32 [B * S]
    seq_len,
    dim,
    spans_per_sample,
    num_splits,
    rows_per_split,
    stride_yb,
    stride_yd,
    eps,
    CHUNK_TILE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (span): the span's mean from its partial sums, then its cosine with the sample's target."""
    span = tl.program_id(0)
    sample = span // spans_per_sample
    start, end = span_sums.load_span(spans_ptr, span, seq_len)
    length = end - start
    num_chunks = tl.cdiv(length, rows_per_split).to(tl.int32)
    span_length = tl.maximum(length, 1).to(tl.float32)
    partial_base = partial_ptr + span.to(tl.int64) * num_splits * dim
    mean_base = mean_ptr + span.to(tl.int64) * dim
    target_base = target_ptr + sample.to(tl.int64) * stride_yb

    dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    xx = tl.zeros((BLOCK_D,), dtype=tl.float32)
    yy = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for col_start in range(0, dim, BLOCK_D):
        cols = col_start + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        total = span_sums.sum_chunks(partial_base + cols, num_chunks, dim, col_mask, CHUNK_TILE, BLOCK_D)
        x = tl.div_rn(total, span_length)
        tl.store(mean_base + cols, x, mask=col_mask)
        y = tl.load(target_base + cols * stride_yd, mask=col_mask, other=0.0).to(tl.float32)
        dot += x * y
        xx += x * x
        yy += y * y

    norm_x = tl.maximum(tl.sqrt_rn(tl.sum(xx, axis=0)), eps)
    norm_y = tl.maximum(tl.sqrt_rn(tl.sum(yy, axis=0)), eps)
    tl.store(cos_ptr + span, tl.div_rn(tl.sum(dot, axis=0), norm_x * norm_y))


# --- launcher ------------------------------------------------------------------------------------------


def segment_cosine(
    hidden: torch.Tensor, spans: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden ``[B, T, D]``, spans int64 ``[B, S, 2]``, target ``[B, D]``
    -> (cos ``[B, S]`` fp32, mean ``[B, S, D]`` fp32)."""
    if torch.float64 in (hidden.dtype, target.dtype):  # fp64 accumulation: the reference's job
        return reference.segment_cosine(hidden, spans, target, eps)
    batch, _, dim = hidden.shape
    spans_per_sample = spans.shape[1]
    cos = torch.empty((batch, spans_per_sample), dtype=torch.float32, device=hidden.device)
    mean = torch.empty((batch, spans_per_sample, dim), dtype=torch.float32, device=hidden.device)
    if cos.numel() == 0:
        return cos, mean
    if dim == 0:  # 0 / (eps * eps)
        return cos.zero_(), mean
    hidden, spans = tu.unit_last_stride(hidden), spans.contiguous()
    with tu.device_guard(hidden):
        sums, meta = span_sums.span_sums(hidden, spans, None)
        chunk_tile = span_sums.chunk_tile(meta.num_splits)
        block_d = min(max(triton.next_power_of_2(dim), 16), EPILOGUE_TILE // chunk_tile)
        cosine_epilogue_kernel[(batch * spans_per_sample,)](
            sums,
            spans,
            target,
            mean,
            cos,
            hidden.shape[1],
            dim,
            spans_per_sample,
            meta.num_splits,
            meta.rows_per_split,
            target.stride(0),
            target.stride(1),
            float(eps),
            CHUNK_TILE=chunk_tile,
            BLOCK_D=block_d,
            num_warps=tu.num_warps_for(chunk_tile * block_d),
        )
    return cos, mean
