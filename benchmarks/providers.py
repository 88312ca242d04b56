"""The implementations compared side by side, each on the same tensors.

``baseline``   the released reference code's approach on the same tensors: Python loops over layers and samples,
               slices, ``.mean``, ``F.cosine_similarity``, and ``torch.exp`` (so that it has a gradient)
``reference``  tga_fast's PyTorch reference with its registered backward (``TGA_FAST_BACKEND=reference``)
``cpp``        the C++ kernels through the dispatcher (CPU tensors)
``triton``     the Triton kernels through the dispatcher (CUDA tensors)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tga_fast.ops.kernels.segment_cosine import reference as cosine_reference
from tga_fast.ops.kernels.segment_pool import reference as pool_reference
from tga_fast.training.loss import tga_alignment_loss

PROVIDERS = ("baseline", "reference", "cpp", "triton")


class _ReferenceSegmentCosine(torch.autograd.Function):
    """What the dispatcher runs under TGA_FAST_BACKEND=reference, without the dispatcher."""

    @staticmethod
    def forward(ctx, hidden, spans, target, eps):
        cos, mean = cosine_reference.segment_cosine(hidden, spans, target, eps)
        ctx.save_for_backward(spans, target, cos, mean)
        ctx.seq_len, ctx.dtype, ctx.eps = hidden.shape[1], hidden.dtype, eps
        return cos

    @staticmethod
    def backward(ctx, grad_cos):
        spans, target, cos, mean = ctx.saved_tensors
        grad_mean, grad_target = cosine_reference.cosine_grads(grad_cos, mean, target, cos, ctx.eps)
        grad_hidden = pool_reference.segment_pool_backward(grad_mean, spans, ctx.seq_len, ctx.dtype)
        return grad_hidden, None, grad_target.to(target.dtype), None


class _ReferenceSegmentPool(torch.autograd.Function):
    """What the dispatcher runs for segment_pool under TGA_FAST_BACKEND=reference, without the dispatcher."""

    @staticmethod
    def forward(ctx, hidden, spans):
        ctx.save_for_backward(spans)
        ctx.seq_len, ctx.dtype = hidden.shape[1], hidden.dtype
        return pool_reference.segment_pool(hidden, spans)

    @staticmethod
    def backward(ctx, grad_pooled):
        (spans,) = ctx.saved_tensors
        return pool_reference.segment_pool_backward(grad_pooled, spans, ctx.seq_len, ctx.dtype), None


def baseline_segment_pool(hidden, spans):
    """pooled ``[B, S, D]`` the released way: one slice and fp32 mean per sample and span."""
    rows = []
    for b in range(hidden.shape[0]):
        row = []
        for s in range(spans.shape[1]):
            start, end = int(spans[b, s, 0]), int(spans[b, s, 1])
            row.append(hidden[b, start:end].float().mean(dim=0).to(hidden.dtype))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def segment_pool(provider: str):
    """``fn(hidden, spans) -> pooled [B, S, D]`` for a provider."""
    if provider == "baseline":
        return baseline_segment_pool
    if provider == "reference":
        return _ReferenceSegmentPool.apply
    return torch.ops.tga_fast.segment_pool


def baseline_segment_cosine(hidden, spans, target, eps=1e-8):
    """cos ``[B, S]`` the released way: one slice, mean and cosine per sample and span."""
    rows = []
    for b in range(hidden.shape[0]):
        row = []
        for s in range(spans.shape[1]):
            start, end = int(spans[b, s, 0]), int(spans[b, s, 1])
            mean = hidden[b, start:end].float().mean(dim=0)
            row.append(F.cosine_similarity(mean, target[b].float(), dim=0, eps=eps))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def segment_cosine(provider: str):
    """``fn(hidden, spans, target) -> cos [B, S]`` for a provider."""
    if provider == "baseline":
        return baseline_segment_cosine
    if provider == "reference":
        return lambda hidden, spans, target: _ReferenceSegmentCosine.apply(hidden, spans, target, 1e-8)
    return lambda hidden, spans, target: torch.ops.tga_fast.segment_cosine(hidden, spans, target, 1e-8)[0]


def baseline_alignment_loss(hidden, spans, targets, progress, pair_weight=0.25, hinge_weight=0.1):
    """The released loss loop with ``torch.exp`` in place of ``math.exp``: per layer, per sample, slices."""
    pair, hinge = 0.0, 0.0
    spans_host = spans.tolist()  # the released code indexes with host integers
    for layer, states in enumerate(hidden):
        for b in range(states.shape[0]):
            (image_start, image_end), (text_start, text_end) = spans_host[b]
            caption = targets[layer, b]
            cos_image = F.cosine_similarity(states[b, image_start:image_end].mean(0), caption, dim=0)
            cos_text = F.cosine_similarity(states[b, text_start:text_end].mean(0), caption, dim=0)
            pair = pair + torch.exp(-cos_image)
            hinge = hinge + torch.exp(cos_text - cos_image)
    scale = 1.0 / (len(hidden) * hidden[0].shape[0])
    return (1 - progress) * pair_weight * scale * pair + (1 - progress) ** 2 * hinge_weight * scale * hinge


def alignment_loss(provider: str):
    """``fn(hidden: list of [B, T, D], spans [B, 2, 2], targets [L, B, D]) -> scalar`` for a provider."""
    if provider == "baseline":
        return lambda hidden, spans, targets: baseline_alignment_loss(hidden, spans, targets, 0.25)
    if provider == "reference":
        cosine = segment_cosine(provider)

        def loss(hidden, spans, targets):
            cos = torch.stack([cosine(h, spans, c) for h, c in zip(hidden, targets)])  # [L, B, 2]
            return tga_alignment_loss(cos[..., 0], cos[..., 1], progress=0.25).total

        return loss
    # cpp and triton: the public path, argument checks included.
    return lambda hidden, spans, targets: tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.25).total


def device_of(provider: str) -> str:
    return "cuda" if provider == "triton" else "cpu"


def available(provider: str) -> str | None:
    """None when the provider can run here, else the reason it cannot."""
    from tga_fast.ops import BACKENDS

    if provider == "triton":
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None if BACKENDS["cuda"].available else BACKENDS["cuda"].reason
    if provider == "cpp":
        return None if BACKENDS["cpu"].available else BACKENDS["cpu"].reason
    return None
