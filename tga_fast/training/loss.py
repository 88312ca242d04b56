"""The TGA alignment loss (METHOD.md section 4): the pair and hinge terms, without host synchronisation.

With t = step / max_steps, L the target layers, B the batch size and only non-toxic samples summed:

    L_pair  = (1 - t)   * w_pair  / (|L| B) * sum_l sum_b exp(-cos(v[l, b], c[l, b]))
    L_hinge = (1 - t)^2 * w_hinge / (|L| B) * sum_l sum_b exp(cos(r[l, b], c[l, b]) - cos(v[l, b], c[l, b]))

v: mean hidden state of the image tokens, r: of the retrieved-text tokens, c: of the caption tokens in the
teacher pass. The released code built both terms with ``math.exp`` on tensors, so they became Python floats
and trained nothing; ``faithful_reference=True`` reproduces those numbers (detached), the default trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.ops import segment_cosine


@dataclass
class AlignmentTerms:
    """The two alignment terms (scalars) and the cosines they were built from (``[L, B]`` fp32)."""

    pair: torch.Tensor
    hinge: torch.Tensor
    image_cos: torch.Tensor
    retrieved_cos: torch.Tensor | None

    @property
    def total(self) -> torch.Tensor:
        return self.pair + self.hinge


def schedule(progress: float | torch.Tensor, power: float) -> float | torch.Tensor:
    """The decay ``(1 - t) ** power``; t may be a float or a 0-dim tensor (no host read either way)."""
    if not isinstance(progress, torch.Tensor) and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be step / max_steps in [0, 1], got {progress}")
    return (1 - progress) ** power


def alignment_cosines(
    hidden: Sequence[torch.Tensor] | torch.Tensor,
    spans: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-layer cosines of the image span (and retrieved-text span) against the caption targets.

    Args:
        hidden: L tensors ``[B, T, D]`` (or one ``[L, B, T, D]``), the student's hidden states at the target layers.
        spans: int64 ``[B, 1, 2]`` (image span) or ``[B, 2, 2]`` (image span, then retrieved-text span).
        targets: ``[L, B, D]``, the caption's mean hidden state at the same layers (teacher pass).

    Returns:
        ``(image_cos [L, B], retrieved_cos [L, B] or None)``, fp32.
    """
    if spans.dim() != 3 or spans.shape[1] not in (1, 2):
        raise ValueError(f"spans must be [B, 1, 2] (image) or [B, 2, 2] (image, retrieved), got {tuple(spans.shape)}")
    if len(hidden) != len(targets):
        raise ValueError(f"hidden has {len(hidden)} layers but targets has {len(targets)}")
    if len(hidden) == 0:  # no target layer: [0, B] cosines, which the loss sums to zero
        cos = targets.new_zeros((0, spans.shape[0], spans.shape[1]), dtype=torch.float32)
    else:
        cos = torch.stack([segment_cosine(h, spans, c, eps) for h, c in zip(hidden, targets)])  # [L, B, S]
    return cos[..., 0], (cos[..., 1] if spans.shape[1] == 2 else None)


def tga_alignment_loss(
    image_cos: torch.Tensor | None = None,
    retrieved_cos: torch.Tensor | None = None,
    *,
    progress: float | torch.Tensor,
    toxic: torch.Tensor | None = None,
    pair_weight: float = 0.25,
    hinge_weight: float = 0.1,
    pair_power: float = 1.0,
    hinge_power: float = 2.0,
    faithful_reference: bool = False,
    hinge_mask: torch.Tensor | None = None,
    hidden: Sequence[torch.Tensor] | torch.Tensor | None = None,
    spans: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> AlignmentTerms:
    """The TGA pair and hinge terms.

    Give either the cosines, or the hidden states with their spans and targets (see :func:`alignment_cosines`).

    Args:
        image_cos: ``[L, B]`` cos(v, c) per target layer and sample.
        retrieved_cos: ``[L, B]`` cos(r, c), or None when there is no retrieved text (the hinge is then 0).
        progress: t = step / max_steps, a float in [0, 1] or a 0-dim tensor.
        toxic: bool ``[B]``; flagged samples (text-only safety data) add nothing, but still count in B.
        pair_weight, hinge_weight: w_pair (1/4) and w_hinge (1/10).
        pair_power, hinge_power: the exponents of (1 - t) (1 and 2 in the paper).
        faithful_reference: return the released code's numbers as constants (no gradient).
        hinge_mask: bool ``[B]``, optional; samples with False add no hinge term (a sample without retrieved text
            has an empty retrieved span, whose cosine 0 is no comparison), but still count in B.

    Returns:
        :class:`AlignmentTerms` with scalar ``pair`` and ``hinge`` (fp32) and the cosines. An empty batch (B = 0)
        or no target layer (L = 0) gives zero terms (sums over nothing), still attached to the graph.
    """
    if hidden is not None or spans is not None or targets is not None:
        if image_cos is not None or retrieved_cos is not None:
            raise ValueError("give either image_cos/retrieved_cos or hidden/spans/targets, not both")
        if hidden is None or spans is None or targets is None:
            raise ValueError("hidden, spans and targets must be given together")
        image_cos, retrieved_cos = alignment_cosines(hidden, spans, targets, eps)
    if image_cos is None:
        raise ValueError("image_cos is required (or hidden, spans and targets)")
    if image_cos.dim() != 2:
        raise ValueError(f"image_cos must be [L, B], got {tuple(image_cos.shape)}")
    if retrieved_cos is not None and retrieved_cos.shape != image_cos.shape:
        raise ValueError(f"retrieved_cos must match image_cos {tuple(image_cos.shape)}, got {tuple(retrieved_cos.shape)}")
    num_layers, batch = image_cos.shape
    image_cos = image_cos.float()
    keep = torch.ones(batch, dtype=torch.bool, device=image_cos.device)
    if toxic is not None:
        if toxic.shape != (batch,):
            raise ValueError(f"toxic must be a bool tensor of shape [B] = [{batch}], got {tuple(toxic.shape)}")
        keep = ~toxic.to(device=image_cos.device, dtype=torch.bool)
    # L and B are shape values (host ints, no sync); with either 0 every sum below is over nothing and is 0, so
    # any positive scale gives the defined result, zero, instead of a division by zero.
    scale = 1.0 / max(1, num_layers * batch)

    # Excluded samples are replaced before exp and dropped after it, not multiplied by 0: their cosine (NaN from a
    # broken image, say) must reach neither the loss nor, through exp's backward, the gradient.
    zero = image_cos.new_zeros(())
    image_cos_kept = torch.where(keep, image_cos, zero)
    pair_terms = torch.where(keep, torch.exp(-image_cos_kept), zero)
    pair = schedule(progress, pair_power) * pair_weight * scale * pair_terms.sum()
    if retrieved_cos is None:
        hinge = torch.zeros((), device=image_cos.device)
    else:
        hinge_keep = keep
        if hinge_mask is not None:
            if hinge_mask.shape != (batch,):
                raise ValueError(f"hinge_mask must be a bool tensor of shape [B] = [{batch}], got {tuple(hinge_mask.shape)}")
            hinge_keep = keep & hinge_mask.to(device=image_cos.device, dtype=torch.bool)
        margin = torch.where(hinge_keep, retrieved_cos.float(), zero) - image_cos_kept
        hinge_terms = torch.where(hinge_keep, torch.exp(margin), zero)
        hinge = schedule(progress, hinge_power) * hinge_weight * scale * hinge_terms.sum()
    if faithful_reference:
        pair, hinge = pair.detach(), hinge.detach()
    return AlignmentTerms(pair=pair, hinge=hinge, image_cos=image_cos, retrieved_cos=retrieved_cos)
