"""The fused ops of tga_fast: public functions over ``torch.ops.tga_fast``.

Each function checks its arguments, then calls the dispatcher, which runs the C++ kernel for CPU tensors,
the Triton kernel for CUDA tensors and the pure-PyTorch reference elsewhere (see ``tga-fast env``).
"""

from __future__ import annotations

import torch

from tga_fast.ops import _library  # noqa: F401  (defines and registers the ops)
from tga_fast.ops._backends import STATUS as BACKENDS
from tga_fast.ops._validation import check_hidden, check_spans, check_target

__all__ = ["BACKENDS", "segment_cosine", "segment_pool"]


def segment_pool(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of each span's rows.

    Args:
        hidden: ``[B, T, D]`` float32, float16 or bfloat16.
        spans: int64 ``[B, S, 2]``, half-open ``[start, end)`` row ranges of each sample, ``0 <= start <= end <= T``;
            spans may be empty (pooled to zeros) and may overlap.

    Returns:
        ``[B, S, D]`` in hidden's dtype, accumulated in fp32. Differentiable in ``hidden``.
    """
    check_hidden(hidden)
    check_spans(spans, hidden)
    return torch.ops.tga_fast.segment_pool(hidden, spans)


def segment_cosine(
    hidden: torch.Tensor, spans: torch.Tensor, target: torch.Tensor, eps: float = 1e-8, *, return_mean: bool = False
):
    """Cosine similarity between each span's mean and the sample's target vector, fused.

    Args:
        hidden: ``[B, T, D]`` float32, float16 or bfloat16.
        spans: int64 ``[B, S, 2]`` half-open row ranges (see :func:`segment_pool`).
        target: ``[B, D]`` float32, float16 or bfloat16, on hidden's device.
        eps: as in ``torch.nn.functional.cosine_similarity``: each norm is clamped to at least ``eps``.
        return_mean: also return the fp32 span means ``[B, S, D]`` the kernel computed on the way.

    Returns:
        ``cos [B, S]`` float32 (and the means if asked). Differentiable in ``hidden`` and ``target``.
    """
    check_hidden(hidden)
    check_spans(spans, hidden)
    check_target(target, hidden)
    cos, mean = torch.ops.tga_fast.segment_cosine(hidden, spans, target, float(eps))
    return (cos, mean) if return_mean else cos
