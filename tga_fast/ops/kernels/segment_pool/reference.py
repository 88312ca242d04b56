"""segment_pool, the pure-PyTorch reference: the specification, the default kernel and the test oracle.

A span is a half-open row range ``[start, end)`` of one sample. The pooled vector of a span is the mean of
its rows, accumulated in fp32 and returned in the input's dtype; an empty span pools to zeros. Rows outside a
span are never read into it, so a NaN or inf outside every span does not leak into any mean; in the backward,
rows outside every span receive exact zeros.

    hidden  [B, T, D]        spans [B, S, 2] int64        pooled [B, S, D]

    t:       0 1 2 3 4 5 6 7
    span 0:  . . # # # # . .     [2, 6) -> mean of rows 2..5
    span 1:  . . . . . # # .     [5, 7) -> mean of rows 5..6 (spans may overlap)

Both directions walk the ``B * S`` spans with host integers and touch only the span rows: one sum per span
forward, one broadcast add into the span rows backward. ``B * S`` is small (4 samples x 2-3 spans in
TGA), so the loop costs a few microseconds per span, and reading only span rows is what makes this as fast as
the naive per-slice loop it replaces (a masked pass over ``[B, T, D]`` per span was 30x slower). Reading the
bounds costs one device synchronisation when the tensors are on a GPU; this code is the CPU default and the
GPU fallback only (the Triton kernels read the bounds on the device).
"""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs; fp64 stays fp64 (the reference also serves float64 gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def host_spans(spans: torch.Tensor, seq_len: int) -> list[list[tuple[int, int]]]:
    """spans ``[B, S, 2]`` -> per sample, per span ``(start, end)`` as Python ints clamped into ``[0, T]`` with
    ``end >= start`` (as the kernels clamp: the public functions reject bad spans, a direct op call with one
    gets a wrong number, never rows of another sample)."""
    clamped = []
    for sample in spans.tolist():
        row = []
        for start, end in sample:
            start = min(max(start, 0), seq_len)
            row.append((start, min(max(end, start), seq_len)))
        clamped.append(row)
    return clamped


def lengths_of(bounds: list[list[tuple[int, int]]], spans: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row counts ``[B, S]`` in ``dtype``, at least 1 so that an empty span divides a zero sum by one."""
    counts = [[max(end - start, 1) for start, end in sample] for sample in bounds]
    return torch.tensor(counts, dtype=dtype, device=spans.device).reshape(spans.shape[:2])


def segment_mean(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per-span means ``[B, S, D]`` in the accumulation dtype (fp32 for every supported input): each span's
    rows summed in the accumulation dtype, divided by the span's length (1 for an empty span: zeros)."""
    batch, seq_len, dim = hidden.shape
    acc = accumulation_dtype(hidden.dtype)
    bounds = host_spans(spans, seq_len)
    if batch * spans.shape[1] == 0:
        return hidden.new_zeros((batch, spans.shape[1], dim), dtype=acc)
    # fp32 rows: the sum as a product with a ones vector, which BLAS streams at memory bandwidth (~15% faster
    # than the reduction kernel at the LLaVA-7B shape on a CPU); 1 * NaN is NaN, so NaN inside a span still
    # propagates. Lower precisions: a reduction that accumulates in fp32 without an fp32 copy of the rows.
    ones = hidden.new_ones(seq_len, dtype=acc) if hidden.dtype == acc else None
    means = []
    for sample_rows, sample in zip(hidden, bounds):
        for start, end in sample:
            rows = sample_rows[start:end]
            total = torch.mv(rows.t(), ones[: end - start]) if ones is not None else rows.sum(dim=0, dtype=acc)
            means.append(total / max(end - start, 1))  # a Python int: divides in the accumulation dtype
    return torch.stack(means).view(batch, spans.shape[1], dim)


def segment_pool(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per-span means of hidden ``[B, T, D]`` over spans ``[B, S, 2]`` -> ``[B, S, D]`` in hidden's dtype."""
    return segment_mean(hidden, spans).to(hidden.dtype)


def segment_pool_backward(
    grad_pooled: torch.Tensor, spans: torch.Tensor, seq_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Gradient of the span means with respect to hidden.

    grad_pooled ``[B, S, D]`` -> grad_hidden ``[B, T, D]`` in ``dtype``: row t receives
    ``sum over spans s containing t of grad_pooled[b, s] / len(s)``, accumulated in fp32 (overlapping spans are
    summed before the one rounding to ``dtype``); rows outside every span receive zeros, so a non-finite
    ``grad_pooled[b, s]`` stays inside span s.
    """
    batch, spans_per_sample, dim = grad_pooled.shape
    acc = accumulation_dtype(grad_pooled.dtype)
    bounds = host_spans(spans, seq_len)
    grad_hidden = torch.zeros((batch, seq_len, dim), dtype=acc, device=grad_pooled.device)
    if batch * spans_per_sample == 0:
        return grad_hidden.to(dtype)
    scaled = grad_pooled.to(acc) / lengths_of(bounds, spans, acc)[..., None]
    for b, sample in enumerate(bounds):
        for s, (start, end) in enumerate(sample):
            grad_hidden[b, start:end] += scaled[b, s]
    return grad_hidden.to(dtype)
