"""The logit lens: what the LM head reads from an intermediate hidden state, ``lm_head(final_norm(h))``.

One implementation for ``capture(logit_lens=True)`` (one layer at a time, inside its hook) and the safety-layers
analysis (every layer at once, after the forward). ``hidden_states[N]`` already went through the final norm, so
layer N's states are not normed again.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tga_fast.models.adapters import ModelParts, resolve

__all__ = ["logit_lens", "states_at"]


def states_at(hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, D]``: the row of ``hidden`` (``[B, T, D]``) at ``positions`` (int64 ``[B]``; default the last)."""
    if positions is None:
        return hidden[:, -1]
    index = positions.to(hidden.device).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index)[:, 0]


def logit_lens(model_or_parts: nn.Module | ModelParts, states: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """fp32 ``[L, B, V]`` logits ``lm_head(final_norm(h))`` of states ``[L, B, D]`` taken at HF ``layers`` (0..N,
    one per leading row of ``states``); the final norm is not applied again at layer N.

    One LM-head matmul for all layers: the head's ``[V, D]`` weight (65 MB for a 32k x 512 fp32 head, 0.5 GB at
    7B scale) is read once, not once per layer.
    """
    parts = model_or_parts if isinstance(model_or_parts, ModelParts) else resolve(model_or_parts)
    layers = list(layers)
    if states.dim() != 3 or states.shape[0] != len(layers):
        raise ValueError(f"states must be [L={len(layers)}, B, D] for layers {layers}, got {tuple(states.shape)}")
    parts.check_layers(layers)
    already_normed = [k == parts.num_layers for k in layers]
    if all(already_normed):  # only layer N: no norm call at all (it may be hooked, e.g. by capture)
        normed = states
    else:
        # One norm call over every layer (the norm is per row), then layer N's rows taken as they came.
        mask = torch.tensor(already_normed, device=states.device)
        normed = torch.where(mask[:, None, None], states, parts.final_norm(states))
    return parts.lm_head(normed).float()
