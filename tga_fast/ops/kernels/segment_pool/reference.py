"""segment_pool, the pure-PyTorch reference: the specification, the default kernel and the test oracle.

A span is a half-open row range ``[start, end)`` of one sample. The pooled vector of a span is the mean of
its rows, accumulated in fp32 and returned in the input's dtype; an empty span pools to zeros. Rows outside a
span are never read into it (a NaN outside every span does not leak into any mean), which is why the
forward masks with ``torch.where`` rather than multiplying by a 0/1 matrix (0 * NaN = NaN).

    hidden  [B, T, D]        spans [B, S, 2] int64        pooled [B, S, D]

    t:       0 1 2 3 4 5 6 7
    span 0:  . . # # # # . .     [2, 6) -> mean of rows 2..5
    span 1:  . . . . . # # .     [5, 7) -> mean of rows 5..6 (spans may overlap)
"""

from __future__ import annotations

import torch


def span_mask(spans: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Which rows each span covers: spans ``[B, S, 2]`` -> bool ``[B, S, T]``."""
    positions = torch.arange(seq_len, device=spans.device)
    starts, ends = spans[..., 0:1], spans[..., 1:2]
    return (positions >= starts) & (positions < ends)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs; fp64 stays fp64 (the reference also serves float64 gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def span_lengths(spans: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row counts ``[B, S]`` as floats, at least 1 so an empty span divides a zero sum by one."""
    return (spans[..., 1] - spans[..., 0]).clamp_min(1).to(dtype)


def segment_mean(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per-span means ``[B, S, D]`` in the accumulation dtype (fp32 for every supported input)."""
    batch, seq_len, dim = hidden.shape
    acc = accumulation_dtype(hidden.dtype)
    mask = span_mask(spans, seq_len)
    sums = hidden.new_zeros((batch, spans.shape[1], dim), dtype=acc)
    # One masked pass per span: S is a shape (2 or 3 in TGA), so the loop never syncs with the device.
    for s in range(spans.shape[1]):
        rows = torch.where(mask[:, s, :, None], hidden, 0)
        sums[:, s] = rows.sum(dim=1, dtype=acc)
    return sums / span_lengths(spans, acc)[..., None]


def segment_pool(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per-span means of hidden ``[B, T, D]`` over spans ``[B, S, 2]`` -> ``[B, S, D]`` in hidden's dtype."""
    return segment_mean(hidden, spans).to(hidden.dtype)


def segment_pool_backward(
    grad_pooled: torch.Tensor, spans: torch.Tensor, seq_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Gradient of the span means with respect to hidden.

    grad_pooled ``[B, S, D]`` -> grad_hidden ``[B, T, D]`` in ``dtype``: row t receives
    ``sum over spans s containing t of grad_pooled[b, s] / len(s)`` (fp32 accumulation), rows outside every
    span receive zeros. The sum over spans is one batched matmul with the 0/1 span mask (the backward is the
    hot half of the reference, so it stays fast); for a non-finite ``grad_pooled`` that spreads NaN
    (0 * inf) over the sample's other rows, where the kernels keep it inside the span.
    """
    acc = accumulation_dtype(grad_pooled.dtype)
    mask = span_mask(spans, seq_len).to(acc)
    scaled = grad_pooled.to(acc) / span_lengths(spans, acc)[..., None]
    return torch.bmm(mask.transpose(1, 2), scaled).to(dtype)
