"""segment_cosine, the pure-PyTorch reference: the specification, the default kernel and the test oracle.

For every span s of sample b: ``cos[b, s] = cosine(mean of hidden[b, span rows], target[b])`` with
``torch.nn.functional.cosine_similarity``'s eps semantics, ``x.y / (max(|x|, eps) * max(|y|, eps))``,
computed in fp32.

    hidden [B, T, D]    spans [B, S, 2] int64    target [B, D]    ->    cos [B, S] fp32, mean [B, S, D] fp32

The mean is returned too: the backward needs it, and it is ``B * S * D`` floats (12 KiB per layer for a
LLaVA-7B sample with 3 spans), never ``B * T * D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tga_fast.ops.kernels.segment_pool import reference as pool_reference


def segment_cosine(
    hidden: torch.Tensor, spans: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(cos [B, S] fp32, mean [B, S, D] fp32)``."""
    mean = pool_reference.segment_mean(hidden, spans)
    cos = F.cosine_similarity(mean, target.to(mean.dtype)[:, None, :], dim=-1, eps=eps)
    return cos, mean


def cosine_grads(
    grad_cos: torch.Tensor, mean: torch.Tensor, target: torch.Tensor, cos: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``cos = x.y / (nx * ny)`` with ``nx = max(|x|, eps)``, as PyTorch's autograd gives them.

    grad_cos ``[B, S]``, mean x ``[B, S, D]`` fp32, target y ``[B, D]``, cos ``[B, S]``
    -> (grad_mean ``[B, S, D]`` fp32, grad_target ``[B, D]`` fp32).

    ``d cos / dx = y / (nx * ny) - cos * (x / |x|) / nx`` (and symmetrically for y). The direction
    ``x / |x|`` is taken as zero at ``x = 0``, matching the subgradient of the norm in PyTorch.
    """
    x = mean
    y = target.to(mean.dtype)[:, None, :]
    norm_x = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    norm_y = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    clamped_x, clamped_y = norm_x.clamp_min(eps), norm_y.clamp_min(eps)
    unit_x = torch.where(norm_x > 0, x / norm_x, 0.0)
    unit_y = torch.where(norm_y > 0, y / norm_y, 0.0)
    g = grad_cos.to(mean.dtype)[..., None]
    c = cos[..., None]
    grad_mean = g * (y / (clamped_x * clamped_y) - c * unit_x / clamped_x)
    grad_target = (g * (x / (clamped_x * clamped_y) - c * unit_y / clamped_y)).sum(dim=1)
    return grad_mean, grad_target
