"""Attention share to a key set, measured inside the model's own forward (METHOD.md 3 B).

``output_attentions=True`` forces eager attention and keeps every layer's ``[B, H, T, T]`` map to read one row
of each. Here a registered ``AttentionInterface`` function computes, at the probed layers, only the requested
rows' share with the ``attention_share`` op, then lets SDPA compute the layer's output as usual.

    with attention_shares(model, key_set=toxic_mask, rows=last_positions) as probe:
        model(**batch)
    probe.share           # [L, B, H, R] fp32, decoder blocks 1..N by default
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import resolve
from tga_fast.models.interventions import _block_indices, _text_config, key_valid_from_mask
from tga_fast.ops import attention_share

__all__ = ["AttentionShares", "attention_shares", "SHARE_ATTENTION"]

SHARE_ATTENTION = "tga_fast_share_probe"
_PROBES: dict[nn.Module, "_Probe"] = {}


@dataclass
class _Probe:
    block: int
    key_set: torch.Tensor
    rows: torch.Tensor
    result: "AttentionShares"


@dataclass
class AttentionShares:
    """``share``: ``[L, B, H, R]`` fp32, for the probed decoder blocks in the order given."""

    blocks: tuple[int, ...]
    _share: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def share(self) -> torch.Tensor:
        missing = [b for b in self.blocks if b not in self._share]
        if missing:
            raise RuntimeError(f"no share for blocks {missing}: run the model's forward inside the probe first")
        return torch.stack([self._share[b] for b in self.blocks])


def _share_probe_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    probe = _PROBES.get(module)
    if probe is not None and probe.block not in probe.result._share and query.shape[2] == key.shape[2]:
        key_valid = key_valid_from_mask(attention_mask, key.shape[2])
        share = attention_share(
            query, key, probe.key_set.to(query.device), probe.rows.to(query.device), scale=scaling, key_valid=key_valid
        )
        probe.result._share[probe.block] = share
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


@contextlib.contextmanager
def attention_shares(
    model: nn.Module, key_set: torch.Tensor, rows: torch.Tensor, blocks: Iterable[int] | None = None
) -> Iterator[AttentionShares]:
    """Records, at decoder blocks ``blocks`` (1-based; default all), the share of the attention of query rows
    ``rows`` (int64 ``[B, R]``) that falls on ``key_set`` (bool ``[B, T]``), per head (the paper averages over heads).
    The first full-sequence forward inside the context is recorded."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    parts = resolve(model)
    blocks = tuple(range(1, parts.num_layers + 1)) if blocks is None else tuple(int(b) for b in blocks)
    indices = _block_indices(parts, blocks, "blocks")
    AttentionInterface.register(SHARE_ATTENTION, _share_probe_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SHARE_ATTENTION, sdpa_mask)
    result = AttentionShares(blocks)
    modules = [parts.decoder_layers[i].self_attn for i in indices]
    for block, module in zip(blocks, modules):
        _PROBES[module] = _Probe(block, key_set, rows, result)
    text_config = _text_config(model)
    previous = text_config._attn_implementation
    text_config._attn_implementation = SHARE_ATTENTION
    try:
        yield result
    finally:
        text_config._attn_implementation = previous
        for module in modules:
            _PROBES.pop(module, None)
